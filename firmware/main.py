# Boots the node. It stays source (MicroPython boots main.py, never main.mpy) and does only what
# cannot fail: arm the watchdog, then start the compiled app inside a guard. Any failure, a missing
# app module included, ends in a hard reset after a growing delay (1 s, 2 s, 4 s ... 5 min; the run
# is counted in crashes.txt, and crash.txt keeps its first traceback), never in a soft-reset loop.
import sys
import time

try:
    import machine

    wdt = machine.WDT(timeout=8000)  # before anything that can fail or hang
except (ImportError, AttributeError):  # the Unix port (the simulator) has no watchdog
    wdt = None


def hard_reset():
    if sys.platform == "esp32":
        machine.reset()
    import gc

    gc.collect()  # what the failed app left: the simulator's reset line needs a little heap
    from hw.sim import board_reset  # the simulator's reset line (not on a board)

    board_reset()


def failed(e):
    try:  # an app on trial after an update (otaboot.py) is rolled back at once
        if __import__("otaboot").crashed(e, getattr(sys.modules.get("app"), "running", False), hard_reset):
            return
    except (ImportError, MemoryError):  # no otaboot (flashed before OTA), or no heap to load it: on
        pass  # trial, the boot count rolls it back at the next boot
    sys.modules.pop("otaboot", None)
    n = 1
    try:
        with open("crashes.txt") as f:
            n = int(f.read()) + 1
    except (OSError, ValueError):
        pass
    try:
        with open("crashes.txt", "w") as f:
            f.write(str(n))
        if n == 1:
            with open("crash.txt", "w") as f:
                sys.print_exception(e, f)
    except OSError:
        pass  # a full or broken filesystem must not stop the reset
    sys.print_exception(e)
    delay = min(300, 1 << min(n - 1, 9))
    print("crash %d in a row (first kept in crash.txt): hard reset in %d s" % (n, delay))
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < delay * 1000:
        if wdt:
            wdt.feed()
        time.sleep_ms(50)
    hard_reset()


try:
    # An app update's recovery and trial count, before the app is imported (otaboot.py; a node
    # flashed before OTA has none). It leaves the heap before the app comes in.
    try:
        __import__("otaboot").boot(hard_reset)
    except ImportError:
        pass
    finally:
        sys.modules.pop("otaboot", None)
    import app

    rc = app.main(wdt)
except KeyboardInterrupt:  # Ctrl-C (a technician, `openpole deploy`): on to the REPL
    raise
except Exception as e:
    failed(e)
else:
    sys.exit(rc)  # only the simulator's --cycles ends the app
