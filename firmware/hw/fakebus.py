# Fake I2C bus for simulation and tests: the same small surface as machine.I2C
# (readfrom_mem_into, writeto_mem, scan), routing each address to a register-model chip.
# Runs under MicroPython and CPython. A missing address raises OSError(ENODEV) like the ESP32 port.

_ENODEV = 19
_EIO = 5


class FakeI2C:
    def __init__(self):
        self.devices = {}
        self.fail = {}  # address -> remaining transfers that raise EIO (bus glitches)

    def attach(self, address, chip):
        self.devices[address] = chip
        return chip

    def _dev(self, address):
        dev = self.devices.get(address)
        if dev is None:
            raise OSError(_ENODEV)
        n = self.fail.get(address, 0)
        if n:
            self.fail[address] = n - 1
            raise OSError(_EIO)
        return dev

    def scan(self):
        return sorted(self.devices)

    def readfrom_mem_into(self, address, reg, buf):
        dev = self._dev(address)
        for i in range(len(buf)):
            buf[i] = dev.read_reg((reg + i) & 0xFF)

    def writeto_mem(self, address, reg, buf):
        dev = self._dev(address)
        for i in range(len(buf)):
            dev.write_reg((reg + i) & 0xFF, buf[i])
