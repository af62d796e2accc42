# The openpole node app, started by main.py at boot on the ESP32, and under the Unix port for
# simulation (`openpole sim node`). The config sits beside it on the node's filesystem.
# An unhandled exception goes up to main.py's guard (crash.txt, a delayed hard reset); what the
# outbox holds in RAM is saved to flash first.
import gc

import config
from console import LazyConsole
from hw import platform
from node import Node


def main(wdt=None):
    node = None
    try:
        import hw

        cfg = config.load(unique_id=hw.unique_id())
        gc.collect()  # the JSON text and import buffers, before the long-lived objects
        node = Node(cfg, platform(cfg, wdt))
        node.console = LazyConsole(node)
        done = node.run((cfg.get("sim") or {}).get("cycles"))
        print("done cycles=%d published=%d delivered=%d queued=%d dropped=%d heap_live=%d" % (
            done, node.published, node.delivered, len(node.outbox), node.outbox.dropped, node.heap_live))
        return 0
    except KeyboardInterrupt:
        if node is not None:
            node.hw.at_repl()
        raise
    except Exception:
        if node is not None:
            try:
                node.outbox.save()
            except Exception:
                pass  # the crash may be the filesystem itself
        raise
