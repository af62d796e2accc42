# A plausible street for simulated sensors: a diurnal temperature cycle, humidity that falls as it
# warms, slowly wandering pressure. Time runs `speed` times faster than the node's clock so a demo
# shows movement; `seed` makes nodes on one pole differ a little.

import math
import time

_DAY_S = 86400.0


class Street:
    def __init__(self, seed=0, speed=600.0, start_hour=6.0):
        self.seed = seed
        self.speed = speed
        self.t0 = time.ticks_ms()
        self.start_s = start_hour * 3600.0
        self.offset = ((seed * 7919) % 100) / 100.0  # 0..1: each node a little different

    def clock_s(self):
        """Simulated time of day in seconds."""
        return (self.start_s + time.ticks_diff(time.ticks_ms(), self.t0) / 1000.0 * self.speed) % _DAY_S

    def weather(self):
        """(temperature degC, humidity %RH, pressure hPa) now."""
        s = self.clock_s()
        day = math.sin(2.0 * math.pi * (s - 9.0 * 3600.0) / _DAY_S)  # warmest mid-afternoon
        t = 14.0 + 6.0 * day + self.offset
        h = 62.0 - 18.0 * day - 3.0 * self.offset
        p = 1013.0 + 4.0 * math.sin(2.0 * math.pi * s / (3.0 * _DAY_S)) + self.offset
        return t, h, p
