# Fake buses for simulation and tests, with the small surfaces of machine.I2C and machine.UART.
# I2C: register chips (read_reg/write_reg: BME280) and command chips (command/read_into: SHT31).
# A missing address raises OSError(ENODEV) like the ESP32 port; `fail` injects EIO glitches.
# Runs under MicroPython and CPython.

_ENODEV = 19
_EIO = 5


class FakeI2C:
    def __init__(self):
        self.devices = {}
        self.fail = {}  # address -> remaining transfers that raise EIO (bus glitches)
        self._ptr = {}  # register pointer per address, for plain writeto/readfrom_into

    def attach(self, address, chip):
        self.devices[address] = chip
        return chip

    def detach(self, address):
        self.devices.pop(address, None)

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

    def writeto(self, address, buf, stop=True):
        dev = self._dev(address)
        if hasattr(dev, "command"):
            dev.command(bytes(buf))
        elif len(buf):
            self._ptr[address] = buf[0]
            if len(buf) > 1:
                self.writeto_mem(address, buf[0], buf[1:])
        return len(buf)

    def readfrom_into(self, address, buf, stop=True):
        dev = self._dev(address)
        if hasattr(dev, "read_into"):
            dev.read_into(buf)
        else:
            self.readfrom_mem_into(address, self._ptr.get(address, 0), buf)


class FakeUART:
    """A UART whose far end is a chip model: write() goes to chip.receive(bytes); the chip
    answers with chip.rx (a bytearray) that read/readinto/any consume."""

    def __init__(self, chip=None):
        self.chip = chip
        self.rx = bytearray()
        self.written = bytearray()

    def inject(self, data):
        self.rx.extend(data)

    def write(self, buf):
        self.written.extend(buf)
        if self.chip is not None:
            out = self.chip.receive(bytes(buf))
            if out:
                self.rx.extend(out)
        return len(buf)

    def any(self):
        return len(self.rx)

    def read(self, n=-1):
        if not self.rx:
            return None  # machine.UART returns None on timeout with nothing read
        if n is None or n < 0:
            n = len(self.rx)
        out = bytes(self.rx[:n])
        self.rx = self.rx[n:]
        return out

    def readinto(self, buf, n=-1):
        if not self.rx:
            return None
        if n < 0 or n > len(buf):
            n = len(buf)
        n = min(n, len(self.rx))
        buf[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n

    def reset_input_buffer(self):  # busio.UART, for Adafruit's library in tests
        self.rx = bytearray()
