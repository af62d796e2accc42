# PMS5003 model for simulation and tests: answers mode, read, sleep and wake commands with the
# 32-byte frames of the Plantower manual (header 0x42 0x4D, length 28, 13 words, checksum).
import struct

_KEYS = ("pm1_cf1", "pm2_5_cf1", "pm10_cf1", "pm1", "pm2_5", "pm10", "pc0_3", "pc0_5", "pc1", "pc2_5", "pc5", "pc10")


def frame(values):
    """A valid frame for {key: int} (missing keys are 0)."""
    body = b"\x42\x4d\x00\x1c" + struct.pack(">13H", *([values.get(k, 0) for k in _KEYS] + [0x9700]))
    return body + struct.pack(">H", sum(body) & 0xFFFF)


class FakePMS5003:
    def __init__(self, env):
        self.env = env  # callable -> {key: value}
        self.passive = False
        self.asleep = False

    def receive(self, cmd):
        if len(cmd) != 7 or cmd[:2] != b"\x42\x4d":
            return b""
        c, d = cmd[2], cmd[4]
        if c == 0xE1:
            self.passive = d == 0
            return b"\x42\x4d\x00\x04\xe1" + bytes((d,)) + struct.pack(">H", 0x42 + 0x4D + 4 + 0xE1 + d)
        if c == 0xE4:
            self.asleep = d == 0
            return b""
        if c == 0xE2 and not self.asleep:
            return frame({k: int(v) for k, v in self.env().items()})
        return b""
