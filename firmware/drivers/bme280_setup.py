# Start-up of a BME280 (drivers/bme280.py): the chip id check, the calibration read (datasheet
# 4.2.2) and the configuration; and the waiting read tools use. BME280() (and BME280.read()) loads
# this module for it and lets it go after.

import struct
import time

from micropython import const

_REG_CALIB00 = const(0x88)  # 0x88..0xA1: dig_T1..dig_P9, dig_H1
_REG_STATUS = const(0xF3)  # [3] measuring, [0] im_update (as in bme280.py)
_STATUS_MEASURING = const(0x08)
_REG_CHIP_ID = const(0xD0)
_REG_CALIB26 = const(0xE1)  # 0xE1..0xE7: dig_H2..dig_H6
_REG_CTRL_HUM = const(0xF2)  # [2:0] osrs_h
_REG_CONFIG = const(0xF5)  # [7:5] t_sb, [4:2] filter, [0] spi3w_en
_CHIP_ID = const(0x60)
_MODE_FORCED = const(0x01)
_OSRS = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}  # oversampling -> register code
_FILTER = {0: 0, 2: 1, 4: 2, 8: 3, 16: 4}


def start(d, osrs_t, osrs_p, osrs_h, iir_filter):
    """Check the chip at d.address, read its calibration into d, configure it for forced mode."""
    i2c, address, b = d.i2c, d.address, d._buf1
    try:
        i2c.readfrom_mem_into(address, _REG_CHIP_ID, b)
    except OSError:
        raise OSError("BME280: no device at I2C address 0x%02x" % address)
    if b[0] != _CHIP_ID:
        raise OSError("BME280: chip id 0x%02x at 0x%02x, expected 0x60" % (b[0], address))
    if osrs_t not in _OSRS or osrs_p not in _OSRS or osrs_h not in _OSRS or iir_filter not in _FILTER:
        raise ValueError("BME280: oversampling must be 0/1/2/4/8/16 and filter 0/2/4/8/16")
    d._meas = (_OSRS[osrs_t] << 5) | (_OSRS[osrs_p] << 2) | _MODE_FORCED
    # Datasheet 9.1: t_measure,max = 1.25 + 2.3 osrs_t + (2.3 osrs_p + 0.575) + (2.3 osrs_h + 0.575)
    # ms, a term left out when its measurement is skipped: 9.3 ms at 1x, 112.8 ms at 16x. Twice
    # that before a conversion counts as stuck.
    us = 1250 + 2300 * osrs_t + (2300 * osrs_p + 575 if osrs_p else 0) + (2300 * osrs_h + 575 if osrs_h else 0)
    d.timeout_ms = 2 * us // 1000 + 2
    c = bytearray(26)
    i2c.readfrom_mem_into(address, _REG_CALIB00, c)
    h = bytearray(7)
    i2c.readfrom_mem_into(address, _REG_CALIB26, h)
    e4 = h[3] - 256 if h[3] > 127 else h[3]  # dig_H4 and dig_H5 are signed 12-bit
    e6 = h[5] - 256 if h[5] > 127 else h[5]
    # dig_T1..T3, dig_P1..P9, dig_H1..H6: one tuple, not 18 attributes (a smaller instance)
    d.cal = struct.unpack_from("<HhhHhhhhhhhh", c) + (c[25],) + struct.unpack_from("<hB", h) + (
        (e4 << 4) | (h[4] & 0x0F), (e6 << 4) | (h[4] >> 4), h[6] - 256 if h[6] > 127 else h[6])
    d._write(_REG_CONFIG, _FILTER[iir_filter] << 2)
    # ctrl_hum takes effect only after a write to ctrl_meas (datasheet 5.4.3).
    d._write(_REG_CTRL_HUM, _OSRS[osrs_h])


def read_raw(d):
    """Run one forced conversion on BME280 d, waiting for it; return (adc_T, adc_P, adc_H)."""
    d.request()
    while True:
        time.sleep_ms(2)
        d.i2c.readfrom_mem_into(d.address, _REG_STATUS, d._buf1)
        if not d._buf1[0] & _STATUS_MEASURING:
            return d._adc()
        if time.ticks_diff(time.ticks_ms(), d._t0) > d.timeout_ms:
            raise OSError("BME280: conversion did not finish in %d ms" % d.timeout_ms)
