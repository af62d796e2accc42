"""Per node, quantity and minute: count, mean, min, max of the readings the pole received.

Decibel quantities (kind "level" in the registry: LAeq and friends) are averaged as energy,
10 log10(mean of 10^(L/10)): averaging dB values would understate loud minutes. A minute is closed
(and sent upstream with the next batch) once readings for it have stopped arriving for a minute.
"""

import math

from openpole.spec.registry import REGISTRY


class Minutes:
    def __init__(self):
        self.open = {}  # (node, key, minute) -> [count, sum (or energy sum), min, max]
        # The earliest and the latest minute open: close() looks at every key only when one is done.
        self.first = self.last = None

    def add(self, node, readings, receive_ns):
        levels = REGISTRY.level_keys
        opened = self.open
        age_of, minute = None, 0
        for key, _, value, age, flags in readings:
            if flags:
                continue  # out of the quantity's range: sent upstream flagged, kept out of the means
            if age != age_of:  # a sample's readings share their age
                age_of = age
                minute = (receive_ns - age * 1_000_000) // 60_000_000_000 * 60
            if minute < 0:
                continue  # sampled "before 1970": a Pi without a clock yet; its readings go up flagged tq
            k = (node, key, minute)
            acc = opened.get(k)
            v = 10 ** (value / 10) if key in levels else value
            if acc is None:
                opened[k] = [1, v, value, value]
                if self.first is None or minute < self.first:
                    self.first = minute
                if self.last is None or minute > self.last:
                    self.last = minute
            else:
                acc[0] += 1
                acc[1] += v
                if value < acc[2]:
                    acc[2] = value
                elif value > acc[3]:
                    acc[3] = value

    def close(self, now_ns, grace_s=60):
        """Minutes that ended more than grace_s ago, as rows (node, name, minute, count, mean, min, max).
        A minute that starts after now + grace_s was opened before the clock stepped back: it closes
        now, not when the clock catches up with it (a day later, for a clock a day fast)."""
        now_s = now_ns // 1_000_000_000
        limit, ahead = now_s - 60 - grace_s, now_s + grace_s
        if self.first is None or limit < self.first <= self.last <= ahead:
            return []
        done = [k for k in self.open if k[2] <= limit or k[2] > ahead]
        rows = []
        for k in done:
            count, total, lo, hi = self.open.pop(k)
            q = REGISTRY.by_key[k[1]]
            mean = 10 * math.log10(total / count) if q.kind == "level" else total / count
            rows.append((k[0], q.name, k[2], count, round(mean, 6), lo, hi))
        minutes = {k[2] for k in self.open}
        self.first, self.last = (min(minutes), max(minutes)) if minutes else (None, None)
        return rows
