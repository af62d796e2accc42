"""The firmware's BME280 driver against the simulated chip, under MicroPython with the heap capped.
The chip model inverts the datasheet's floating-point formulas; the driver uses the integer ones."""

import pytest

READ_AT = """
import json
from hw.fakebus import FakeI2C
from hw.fake_bme280 import FakeBME280
from drivers.bme280 import BME280
cases = %r
bus = FakeI2C()
env = [cases[0]]
chip = bus.attach(0x76, FakeBME280(lambda: env[0]))
dev = BME280(bus)
out = []
for c in cases:
    env[0] = c
    out.append(dev.read())
print(json.dumps(out))
"""

CASES = [(-39.5, 5.0, 310.0), (0.0, 50.0, 1013.25), (21.37, 45.2, 1001.9), (45.0, 95.0, 1090.0), (84.0, 99.0, 700.0)]


def test_driver_reads_what_the_chip_simulates(mp):
    got = mp.json(READ_AT % (CASES,), heap="48k")
    for (t, h, p), r in zip(CASES, got):
        assert r["temperature"] == pytest.approx(t, abs=0.011)  # the 0.01 degC output step
        assert r["humidity"] == pytest.approx(h, abs=0.05)
        assert r["pressure"] == pytest.approx(p, abs=0.02)


MISSING = """
from hw.fakebus import FakeI2C
from hw.fake_bme280 import FakeBME280
from drivers.bme280 import BME280
bus = FakeI2C()
try:
    BME280(bus)
except OSError as e:
    print("missing:", e)
bus.attach(0x77, FakeBME280(lambda: (20.0, 50.0, 1000.0), chip_id=0x58))  # a BMP280 answering
try:
    BME280(bus, address=0x77)
except OSError as e:
    print("wrong chip:", e)
"""


def test_missing_or_wrong_chip_raises_oserror_naming_the_address(mp):
    out = mp.run(MISSING, heap="48k").splitlines()
    assert out == ["missing: BME280: no device at I2C address 0x76", "wrong chip: BME280: chip id 0x58 at 0x77, expected 0x60"]
