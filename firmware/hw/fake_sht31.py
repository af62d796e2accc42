# SHT31 model for simulation and tests: single-shot measurements and the status register,
# every word followed by its CRC-8 (poly 0x31, init 0xFF), as the datasheet specifies.


def crc8(data):
    crc = 0xFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class FakeSHT31:
    def __init__(self, env):
        self.env = env  # callable -> (temperature degC, humidity %RH)
        self.out = b""
        self.corrupt = 0  # next N reads get a flipped CRC

    @staticmethod
    def _word(v):
        b = bytes(((v >> 8) & 0xFF, v & 0xFF))
        return b + bytes((crc8(b),))

    def command(self, cmd):
        if cmd == b"\xf3\x2d":  # read status
            self.out = self._word(0x8010)
        elif cmd in (b"\x24\x00", b"\x24\x0b", b"\x24\x16"):  # single shot, no clock stretching
            t, h = self.env()
            t_raw = max(0, min(65535, int(round((t + 45.0) * 65535.0 / 175.0))))
            h_raw = max(0, min(65535, int(round(h * 65535.0 / 100.0))))
            self.out = self._word(t_raw) + self._word(h_raw)
        elif cmd == b"\x30\xa2":  # soft reset
            self.out = b""

    def read_into(self, buf):
        out = bytearray(self.out[: len(buf)])
        if self.corrupt and len(out) >= 3:
            self.corrupt -= 1
            out[2] ^= 0xFF
        for i in range(len(buf)):
            buf[i] = out[i] if i < len(out) else 0xFF
