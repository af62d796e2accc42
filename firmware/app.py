# The openpole node app, started by main.py at boot on the ESP32, and under the Unix port for
# simulation (`openpole sim node`). The config sits beside it on the node's filesystem.
# An unhandled exception goes up to main.py's guard (crash.txt, a delayed hard reset); what the
# outbox holds in RAM is saved to flash first.
import gc
import sys


def lazy(name):
    """Import a module used now and then (config, diag, commands) and drop it from sys.modules, so
    the heap holds it only while it is in use: the node lives in the ESP32's 56 KB starting heap."""
    try:
        return __import__(name)
    finally:
        sys.modules.pop(name, None)  # a module whose import failed half-way goes too


WARM = ("shell", "diag", "commands", "ranges", "transport_connect", "redact")


def main(wdt=None):
    node = None
    try:
        import hw

        # The modules the node loads now and then, each loaded once and let go while the heap is
        # empty: the names they intern (kept for good) are laid down at its bottom now, not later
        # between the running node's objects, where they would cut its free space into pieces
        # too small for the next module (at 56k the console's first line had failed so).
        for name in WARM:
            lazy(name)
            gc.collect()

        # The config first, while the heap is empty: its module and the JSON text go before the
        # long-lived modules and objects are laid out.
        cfg = lazy("config").load(unique_id=hw.unique_id())
        gc.collect()
        from console import LazyConsole

        node = lazy("bringup").node(cfg, hw.platform(cfg, wdt))
        node.console = LazyConsole(node)
        gc.collect()  # start-up garbage (config text, import buffers, the bring-up code) out of the way
        done = node.run((cfg.get("sim") or {}).get("cycles"))
        print("done cycles=%d published=%d delivered=%d queued=%d dropped=%d spilled=%d heap_live=%d tick_max_ms=%d "
              "audio_lost=%d short_of_heap=%d" % (
                  done, node.published, node.delivered, len(node.outbox), node.outbox.dropped, node.outbox.spilled,
                  node.heap_live, node.tick_max_ms, node.noise.lost if node.noise else 0, node.short_of_heap))
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
