# A clock for firmware tests under MicroPython: ticks as an ESP32 counts them (a 2**30 ms period,
# wrapping after 12.4 days), moved only by sleep_ms() and advance(). START sets where it begins,
# e.g. just before the wrap. Shadows the built-in `time` (an extensible module) when on the path.
from utime import *  # noqa: F401,F403  (what is not replaced below)

PERIOD = 1 << 30
_now = [0]
slept = [0]


def start_at(ticks):
    _now[0] = ticks


def ticks_ms():
    return _now[0] % PERIOD


def ticks_add(a, b):
    return (a + b) % PERIOD


def ticks_diff(a, b):
    d = (a - b) % PERIOD
    return d - PERIOD if d >= PERIOD // 2 else d


def sleep_ms(ms):
    slept[0] += ms
    _now[0] += ms


def advance(ms):
    _now[0] += ms
