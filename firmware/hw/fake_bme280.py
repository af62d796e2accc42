# BME280 register model for simulation and tests: calibration in NVM, forced-mode conversions,
# raw ADC values found by inverting the datasheet's floating-point compensation (appendix 8.1),
# so the driver's integer path is checked against an independent formula.

import struct

# Calibration of a real chip (datasheet-like values); tests may pass their own.
DEFAULT_CALIB = {
    "t1": 27504, "t2": 26435, "t3": -1000,
    "p1": 36477, "p2": -10685, "p3": 3024, "p4": 2855, "p5": 140, "p6": -7, "p7": 15500, "p8": -14600, "p9": 6000,
    "h1": 75, "h2": 362, "h3": 0, "h4": 313, "h5": 50, "h6": 30,
}


class FakeBME280:
    def __init__(self, env, calib=None, chip_id=0x60):
        self.env = env  # callable -> (temperature degC, humidity %RH, pressure hPa)
        self.c = dict(DEFAULT_CALIB)
        if calib:
            self.c.update(calib)
        self.regs = bytearray(256)
        self.regs[0xD0] = chip_id
        c = self.c
        struct.pack_into("<HhhHhhhhhhhh", self.regs, 0x88, c["t1"], c["t2"], c["t3"], c["p1"], c["p2"],
                         c["p3"], c["p4"], c["p5"], c["p6"], c["p7"], c["p8"], c["p9"])
        self.regs[0xA1] = c["h1"]
        struct.pack_into("<hB", self.regs, 0xE1, c["h2"], c["h3"])
        h4, h5 = c["h4"] & 0xFFF, c["h5"] & 0xFFF
        self.regs[0xE4] = h4 >> 4
        self.regs[0xE5] = (h4 & 0x0F) | ((h5 & 0x0F) << 4)
        self.regs[0xE6] = h5 >> 4
        self.regs[0xE7] = c["h6"] & 0xFF
        self.conversions = 0
        self.raw = None  # (adc_t, adc_p, adc_h) to convert to instead of the environment

    def read_reg(self, reg):
        return self.regs[reg]

    def write_reg(self, reg, value):
        if reg == 0xE0 and value == 0xB6:  # soft reset: registers back to defaults
            for r in (0xF2, 0xF4, 0xF5):
                self.regs[r] = 0
            return
        self.regs[reg] = value
        if reg == 0xF4 and value & 0x03 in (1, 2):  # forced mode: convert, then sleep
            self._convert()
            self.regs[0xF4] = value & 0xFC

    def _convert(self):
        if self.raw is not None:
            adc_t, adc_p, adc_h = self.raw
        else:
            t, h, p = self.env()
            osrs_t = self.regs[0xF4] >> 5
            osrs_p = (self.regs[0xF4] >> 2) & 7
            osrs_h = self.regs[0xF2] & 7
            adc_t = self.invert(lambda a: self.temp(a)[0], t, 1 << 20) if osrs_t else 0x80000
            t_fine = self.temp(adc_t)[1]
            adc_p = self.invert(lambda a: -self.press(a, t_fine), -p * 100.0, 1 << 20) if osrs_p else 0x80000
            adc_h = self.invert(lambda a: self.hum(a, t_fine), h, 1 << 16) if osrs_h else 0x8000
        d = self.regs
        d[0xF7], d[0xF8], d[0xF9] = adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4
        d[0xFA], d[0xFB], d[0xFC] = adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4
        d[0xFD], d[0xFE] = adc_h >> 8, adc_h & 0xFF
        self.conversions += 1

    @staticmethod
    def invert(f, target, limit):
        """Smallest raw value in [0, limit) whose increasing f reaches target (bisection)."""
        lo, hi = 0, limit - 1
        while lo < hi:
            mid = (lo + hi) >> 1
            if f(mid) < target:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def temp(self, adc):
        c = self.c
        v1 = (adc / 16384.0 - c["t1"] / 1024.0) * c["t2"]
        v2 = (adc / 131072.0 - c["t1"] / 8192.0) ** 2 * c["t3"]
        return (v1 + v2) / 5120.0, int(v1 + v2)

    def press(self, adc, t_fine):
        c = self.c
        v1 = t_fine / 2.0 - 64000.0
        v2 = v1 * v1 * c["p6"] / 32768.0 + v1 * c["p5"] * 2.0
        v2 = v2 / 4.0 + c["p4"] * 65536.0
        v1 = (c["p3"] * v1 * v1 / 524288.0 + c["p2"] * v1) / 524288.0
        v1 = (1.0 + v1 / 32768.0) * c["p1"]
        if v1 == 0:
            return 0.0
        p = 1048576.0 - adc
        p = (p - v2 / 4096.0) * 6250.0 / v1
        v1 = c["p9"] * p * p / 2147483648.0
        v2 = p * c["p8"] / 32768.0
        return p + (v1 + v2 + c["p7"]) / 16.0

    def hum(self, adc, t_fine):
        c = self.c
        h = t_fine - 76800.0
        h = (adc - (c["h4"] * 64.0 + c["h5"] / 16384.0 * h)) * (
            c["h2"] / 65536.0 * (1.0 + c["h6"] / 67108864.0 * h * (1.0 + c["h3"] / 67108864.0 * h)))
        h = h * (1.0 - c["h1"] * h / 524288.0)
        return 0.0 if h < 0 else (100.0 if h > 100 else h)
