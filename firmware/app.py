# The openpole node app, started by main.py at boot on the ESP32, and under the Unix port for
# simulation (`openpole sim node`). The config sits beside it on the node's filesystem.
# An unhandled exception is kept in crash.txt (shown by the console's `log`), then the node resets.
import gc
import sys

import config
from console import CRASH_FILE, LazyConsole
from hw import platform
from node import Node


def main():
    node = None
    try:
        import hw

        cfg = config.load(unique_id=hw.unique_id())
        gc.collect()  # the JSON text and import buffers, before the long-lived objects
        node = Node(cfg, platform(cfg))
        node.console = LazyConsole(node)
        done = node.run((cfg.get("sim") or {}).get("cycles"))
        print("done cycles=%d published=%d queued=%d dropped=%d heap_live=%d" % (
            done, node.published, len(node.outbox), node.outbox.dropped, node.heap_live))
        return 0
    except KeyboardInterrupt:  # Ctrl-C (a technician, `openpole deploy`): on to the REPL
        if node is not None:
            node.hw.at_repl()
        raise
    except Exception as e:
        with open(CRASH_FILE, "w") as f:
            sys.print_exception(e, f)
        sys.print_exception(e)
        print("crash: kept in %s; resetting" % CRASH_FILE)
        if node is not None:
            node.hw.reset()
        return 1
