# The openpole node app, started by main.py at boot on the ESP32, and under the Unix port for
# simulation (`openpole sim node`). The config sits beside it on the node's filesystem.
# An unhandled exception goes up to main.py's guard (crash.txt, a delayed hard reset); what the
# outbox holds in RAM is saved to flash first. The boot itself is bringup.py, loaded for it.
import sys


def lazy(name):
    """Import a module used now and then (config, diag, commands) and drop it from sys.modules, so
    the heap holds it only while it is in use: the node lives in the ESP32's 56 KB starting heap."""
    try:
        return __import__(name)
    finally:
        sys.modules.pop(name, None)  # a module whose import failed half-way goes too


def main(wdt=None):
    node = None
    try:
        node = lazy("bringup").boot(wdt)
        sys.modules["app"].running = True  # started: a failure now is a crash, not an import error (main.py)
        done = node.run((node.cfg.get("sim") or {}).get("cycles"))
        lazy("commands").summary(node, done)  # the simulator's --cycles ended the run
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
