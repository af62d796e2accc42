# The openpole node app, started by main.py at boot on the ESP32, and under the Unix port for
# simulation (`openpole sim node`). The config sits beside it on the node's filesystem.
# An unhandled exception goes up to main.py's guard (crash.txt, a delayed hard reset); what the
# outbox holds in RAM is saved to flash first.
import gc
import sys


def lazy(name):
    """Import a module used now and then (config, diag, commands) and drop it from sys.modules, so
    the heap holds it only while it is in use: the node lives in the ESP32's 56 KB starting heap."""
    mod = __import__(name)
    del sys.modules[name]
    return mod


def main(wdt=None):
    node = None
    try:
        import hw

        # The config first, while the heap is empty: its module and the JSON text go before the
        # long-lived modules and objects are laid out.
        cfg = lazy("config").load(unique_id=hw.unique_id())
        gc.collect()
        from console import LazyConsole

        node = lazy("bringup").node(cfg, hw.platform(cfg, wdt))
        node.console = LazyConsole(node)
        gc.collect()  # start-up garbage (config text, import buffers, the bring-up code) out of the way
        done = node.run((cfg.get("sim") or {}).get("cycles"))
        print("done cycles=%d published=%d delivered=%d queued=%d dropped=%d heap_live=%d tick_max_ms=%d audio_lost=%d" % (
            done, node.published, node.delivered, len(node.outbox), node.outbox.dropped, node.heap_live,
            node.tick_max_ms, node.noise.lost if node.noise else 0))
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
