# Sensirion SHT31 temperature and humidity sensor on I2C.
# Usage: SHT31(i2c, address=0x44).read() -> {"temperature": degC, "humidity": %RH}
# Single shot, high repeatability, no clock stretching (datasheet table 9, command 0x2400);
# every 16-bit word is followed by a CRC-8 (poly 0x31, init 0xFF; datasheet 4.12).

import time

from micropython import const

_CMD_MEASURE = b"\x24\x00"
_CMD_STATUS = b"\xf3\x2d"
_MEASURE_MS = const(16)  # high repeatability: 15.5 ms max (datasheet table 4)


def crc8(buf, start=0, n=2):
    crc = 0xFF
    for i in range(start, start + n):
        crc ^= buf[i]
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


class SHT31:
    def __init__(self, i2c, address=0x44):
        self.i2c = i2c
        self.address = address
        self._buf = bytearray(6)
        self._status = bytearray(3)
        try:
            i2c.writeto(address, _CMD_STATUS)
            i2c.readfrom_into(address, self._status)
        except OSError:
            raise OSError("SHT31: no device at I2C address 0x%02x" % address)
        if crc8(self._status) != self._status[2]:
            raise OSError("SHT31: bad CRC in status from 0x%02x (not an SHT3x?)" % address)

    def read(self):
        """One reading: temperature (degC), humidity (%RH)."""
        b = self._buf
        self.i2c.writeto(self.address, _CMD_MEASURE)
        time.sleep_ms(_MEASURE_MS)
        self.i2c.readfrom_into(self.address, b)
        if crc8(b, 0) != b[2] or crc8(b, 3) != b[5]:
            raise OSError("SHT31: CRC mismatch in measurement from 0x%02x" % self.address)
        t_raw = (b[0] << 8) | b[1]
        h_raw = (b[3] << 8) | b[4]
        # Datasheet 4.13: T = -45 + 175 * St / (2^16 - 1), RH = 100 * Srh / (2^16 - 1)
        return {"temperature": -45.0 + 175.0 * t_raw / 65535.0, "humidity": 100.0 * h_raw / 65535.0}
