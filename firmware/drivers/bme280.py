# Bosch BME280 temperature, humidity and pressure sensor on I2C.
# Usage: BME280(i2c, address=0x76).read() -> {"temperature": degC, "humidity": %RH, "pressure": hPa}
# Forced mode: one conversion per read(), then the chip sleeps (datasheet 3.3.3).
# Compensation: the datasheet's integer formulas (section 4.2.3, appendix 8.2), exact on the
# ESP32's single-precision floats because only the last scaling step is a float.

import struct
import time

from micropython import const

_REG_CALIB00 = const(0x88)  # 0x88..0xA1: dig_T1..dig_P9, dig_H1
_REG_CHIP_ID = const(0xD0)
_REG_CALIB26 = const(0xE1)  # 0xE1..0xE7: dig_H2..dig_H6
_REG_CTRL_HUM = const(0xF2)  # [2:0] osrs_h
_REG_STATUS = const(0xF3)  # [3] measuring, [0] im_update
_REG_CTRL_MEAS = const(0xF4)  # [7:5] osrs_t, [4:2] osrs_p, [1:0] mode
_REG_CONFIG = const(0xF5)  # [7:5] t_sb, [4:2] filter, [0] spi3w_en
_REG_DATA = const(0xF7)  # press[19:0], temp[19:0], hum[15:0]: 8 bytes
_CHIP_ID = const(0x60)
_MODE_FORCED = const(0x01)
_STATUS_MEASURING = const(0x08)
_OSRS = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}  # oversampling -> register code
_FILTER = {0: 0, 2: 1, 4: 2, 8: 3, 16: 4}


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
        try:
            i2c.readfrom_mem_into(address, _REG_CHIP_ID, self._buf1)
        except OSError:
            raise OSError("BME280: no device at I2C address 0x%02x" % address)
        if self._buf1[0] != _CHIP_ID:
            raise OSError("BME280: chip id 0x%02x at 0x%02x, expected 0x60" % (self._buf1[0], address))
        if osrs_t not in _OSRS or osrs_p not in _OSRS or osrs_h not in _OSRS or iir_filter not in _FILTER:
            raise ValueError("BME280: oversampling must be 0/1/2/4/8/16 and filter 0/2/4/8/16")
        self._meas = (_OSRS[osrs_t] << 5) | (_OSRS[osrs_p] << 2) | _MODE_FORCED
        # Datasheet 9.1: t_measure,max = 1.25 + 2.3 osrs_t + (2.3 osrs_p + 0.575) + (2.3 osrs_h + 0.575)
        # ms, a term left out when its measurement is skipped: 9.3 ms at 1x, 112.8 ms at 16x. Twice
        # that before a conversion counts as stuck.
        us = 1250 + 2300 * osrs_t + (2300 * osrs_p + 575 if osrs_p else 0) + (2300 * osrs_h + 575 if osrs_h else 0)
        self.timeout_ms = 2 * us // 1000 + 2
        self._t0 = 0
        self._read_calibration()
        self._write(_REG_CONFIG, _FILTER[iir_filter] << 2)
        # ctrl_hum takes effect only after a write to ctrl_meas (datasheet 5.4.3).
        self._write(_REG_CTRL_HUM, _OSRS[osrs_h])

    def _write(self, reg, value):
        self._buf1[0] = value
        self.i2c.writeto_mem(self.address, reg, self._buf1)

    def _read_calibration(self):
        c = bytearray(26)
        self.i2c.readfrom_mem_into(self.address, _REG_CALIB00, c)
        (self.t1, self.t2, self.t3, self.p1, self.p2, self.p3, self.p4, self.p5, self.p6,
         self.p7, self.p8, self.p9) = struct.unpack_from("<HhhHhhhhhhhh", c)
        self.h1 = c[25]
        h = bytearray(7)
        self.i2c.readfrom_mem_into(self.address, _REG_CALIB26, h)
        self.h2, self.h3 = struct.unpack_from("<hB", h)
        e4 = h[3] - 256 if h[3] > 127 else h[3]  # dig_H4 and dig_H5 are signed 12-bit
        e6 = h[5] - 256 if h[5] > 127 else h[5]
        self.h4 = (e4 << 4) | (h[4] & 0x0F)
        self.h5 = (e6 << 4) | (h[4] >> 4)
        self.h6 = h[6] - 256 if h[6] > 127 else h[6]

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

    def read_raw(self):
        """Run one forced conversion, waiting for it; return (adc_T, adc_P, adc_H)."""
        self.request()
        while True:
            time.sleep_ms(2)
            self.i2c.readfrom_mem_into(self.address, _REG_STATUS, self._buf1)
            if not self._buf1[0] & _STATUS_MEASURING:
                return self._adc()
            if time.ticks_diff(time.ticks_ms(), self._t0) > self.timeout_ms:
                raise OSError("BME280: conversion did not finish in %d ms" % self.timeout_ms)

    def _adc(self):
        d = self._data
        self.i2c.readfrom_mem_into(self.address, _REG_DATA, d)
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        return adc_t, adc_p, adc_h

    def compensate(self, adc_t, adc_p, adc_h):
        """Datasheet 4.2.3: (T in 0.01 degC, P in Pa/256, H in %RH/1024), all integers."""
        var1 = (((adc_t >> 3) - (self.t1 << 1)) * self.t2) >> 11
        var2 = (((((adc_t >> 4) - self.t1) * ((adc_t >> 4) - self.t1)) >> 12) * self.t3) >> 14
        t_fine = var1 + var2
        t = (t_fine * 5 + 128) >> 8

        var1 = t_fine - 128000
        var2 = var1 * var1 * self.p6
        var2 = var2 + ((var1 * self.p5) << 17)
        var2 = var2 + (self.p4 << 35)
        var1 = ((var1 * var1 * self.p3) >> 8) + ((var1 * self.p2) << 12)
        var1 = (((1 << 47) + var1) * self.p1) >> 33
        if var1 == 0:
            p = 0  # avoid division by zero (datasheet)
        else:
            p = 1048576 - adc_p
            p = _tdiv(((p << 31) - var2) * 3125, var1)
            var1 = (self.p9 * (p >> 13) * (p >> 13)) >> 25
            var2 = (self.p8 * p) >> 19
            p = ((p + var1 + var2) >> 8) + (self.p7 << 4)

        x = t_fine - 76800
        x = ((((adc_h << 14) - (self.h4 << 20) - (self.h5 * x)) + 16384) >> 15) * (
            ((((((x * self.h6) >> 10) * (((x * self.h3) >> 11) + 32768)) >> 10) + 2097152) * self.h2 + 8192) >> 14
        )
        x = x - (((((x >> 15) * (x >> 15)) >> 7) * self.h1) >> 4)
        x = 0 if x < 0 else (419430400 if x > 419430400 else x)
        return t, p, x >> 12

    def read(self):
        """One reading, waiting for the conversion: temperature (degC), humidity (%RH), pressure (hPa)."""
        return self._values(*self.compensate(*self.read_raw()))

    @staticmethod
    def _values(t, p, h):
        return {"temperature": t / 100, "humidity": h / 1024, "pressure": p / 25600}
