# The ESP32's `machine`, as far as firmware/hw/esp32.py uses it, recording what it is asked:
# the simulated hardware layer for tests of the board code itself (watchdog, pins, network bring-up).
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
log = []


class WDT:
    def __init__(self, id=0, timeout=5000):
        log.append(("WDT", timeout))
        self.timeout = timeout

    def feed(self):
        pass


class Pin:
    IN, OUT = 1, 3

    def __init__(self, num, mode=None, value=None):
        self.num = num

    def __repr__(self):
        return "Pin(%d)" % self.num

    def __call__(self, v=None):
        return 0


def reset():
    log.append(("reset",))
    raise SystemExit("machine.reset")


def reset_cause():
    return PWRON_RESET


def unique_id():
    return b"\x24\x0a\xc4\x00\x00\x01"


def freq(hz=None):
    if hz is None:
        return 160000000
    log.append(("freq", hz))
