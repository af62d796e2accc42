# Bosch BME280 temperature, humidity and pressure sensor on I2C.
# Usage: BME280(i2c, address=0x76).read() -> {"temperature": degC, "humidity": %RH, "pressure": hPa}
# Forced mode: one conversion per read(), then the chip sleeps (datasheet 3.3.3).
# Compensation: the datasheet's integer formulas (section 4.2.3, appendix 8.2), exact on the
# ESP32's single-precision floats because only the last scaling step is a float.

import sys
import time

from micropython import const

_REG_STATUS = const(0xF3)  # [3] measuring, [0] im_update
_REG_CTRL_MEAS = const(0xF4)  # [7:5] osrs_t, [4:2] osrs_p, [1:0] mode
_REG_DATA = const(0xF7)  # press[19:0], temp[19:0], hum[15:0]: 8 bytes
_STATUS_MEASURING = const(0x08)


def _setup():
    """bme280_setup.py, loaded for the call and let go (from sys.modules and the package)."""
    try:
        return __import__("drivers.bme280_setup", None, None, ["start"])
    finally:
        sys.modules.pop("drivers.bme280_setup", None)
        pkg = sys.modules.get("drivers")
        if pkg is not None and hasattr(pkg, "bme280_setup"):
            delattr(pkg, "bme280_setup")


def _tdiv(a, b):
    """C integer division (truncates toward zero), as the datasheet's int64 code does."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


class BME280:
    def __init__(self, i2c, address=0x76, osrs_t=1, osrs_p=1, osrs_h=1, iir_filter=0):
        self.i2c = i2c
        self.address = address
        self._buf1 = bytearray(1)
        self._data = bytearray(8)
        self._t0 = 0
        # The chip check, calibration and configuration are start-up code (bme280_setup.py in this
        # folder), loaded for it and let go: a running node's heap does not keep them.
        _setup().start(self, osrs_t, osrs_p, osrs_h, iir_filter)

    def _write(self, reg, value):
        self._buf1[0] = value
        self.i2c.writeto_mem(self.address, reg, self._buf1)

    def request(self):
        """Start one forced conversion; poll() takes it in once done (the node never waits for it)."""
        self._write(_REG_CTRL_MEAS, self._meas)
        self._t0 = time.ticks_ms()

    def poll(self):
        """The reading request() started, or None while the chip is converting; OSError past the
        conversion's time limit (from the oversampling)."""
        self.i2c.readfrom_mem_into(self.address, _REG_STATUS, self._buf1)
        if self._buf1[0] & _STATUS_MEASURING:
            if time.ticks_diff(time.ticks_ms(), self._t0) > self.timeout_ms:
                raise OSError("BME280: conversion did not finish in %d ms" % self.timeout_ms)
            return None
        return self._values(*self.compensate(*self._adc()))

    def _adc(self):
        d = self._data
        self.i2c.readfrom_mem_into(self.address, _REG_DATA, d)
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        return adc_t, adc_p, adc_h

    def compensate(self, adc_t, adc_p, adc_h):
        """Datasheet 4.2.3: (T in 0.01 degC, P in Pa/256, H in %RH/1024), all integers."""
        t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, h1, h2, h3, h4, h5, h6 = self.cal
        var1 = (((adc_t >> 3) - (t1 << 1)) * t2) >> 11
        var2 = (((((adc_t >> 4) - t1) * ((adc_t >> 4) - t1)) >> 12) * t3) >> 14
        t_fine = var1 + var2
        t = (t_fine * 5 + 128) >> 8

        var1 = t_fine - 128000
        var2 = var1 * var1 * p6
        var2 = var2 + ((var1 * p5) << 17)
        var2 = var2 + (p4 << 35)
        var1 = ((var1 * var1 * p3) >> 8) + ((var1 * p2) << 12)
        var1 = (((1 << 47) + var1) * p1) >> 33
        if var1 == 0:
            p = 0  # avoid division by zero (datasheet)
        else:
            p = 1048576 - adc_p
            p = _tdiv(((p << 31) - var2) * 3125, var1)
            var1 = (p9 * (p >> 13) * (p >> 13)) >> 25
            var2 = (p8 * p) >> 19
            p = ((p + var1 + var2) >> 8) + (p7 << 4)

        x = t_fine - 76800
        x = ((((adc_h << 14) - (h4 << 20) - (h5 * x)) + 16384) >> 15) * (
            ((((((x * h6) >> 10) * (((x * h3) >> 11) + 32768)) >> 10) + 2097152) * h2 + 8192) >> 14
        )
        x = x - (((((x >> 15) * (x >> 15)) >> 7) * h1) >> 4)
        x = 0 if x < 0 else (419430400 if x > 419430400 else x)
        return t, p, x >> 12

    def read(self):
        """One reading, waiting for the conversion: temperature (degC), humidity (%RH), pressure (hPa).
        For tools and tests (the node asks with request() and takes it in with poll(), never
        waiting): the waiting is in bme280_setup.py, loaded for it."""
        return self._values(*self.compensate(*_setup().read_raw(self)))

    @staticmethod
    def _values(t, p, h):
        return {"temperature": t / 100, "humidity": h / 1024, "pressure": p / 25600}
