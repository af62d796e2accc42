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
import sys, drivers
print("setup kept:", "drivers.bme280_setup" in sys.modules or hasattr(drivers, "bme280_setup"))
"""


def test_missing_or_wrong_chip_raises_oserror_naming_the_address(mp):
    out = mp.run(MISSING, heap="48k").splitlines()
    assert out == ["missing: BME280: no device at I2C address 0x76", "wrong chip: BME280: chip id 0x58 at 0x77, expected 0x60",
                   "setup kept: False"]  # start-up code is let go, even when the start fails


PMS_SCENARIOS = r"""
import sys, json
from hw.fakebus import FakeUART
from hw.fake_pms5003 import FakePMS5003
from drivers.pms5003 import PMS5003

class Scripted(FakePMS5003):
    def __init__(self, chunks):
        FakePMS5003.__init__(self, lambda: {})
        self.chunks = chunks
    def receive(self, cmd):
        if cmd[2] == 0xE2:
            return self.chunks.pop(0) if self.chunks else b""
        return FakePMS5003.receive(self, cmd)

out = []
for chunks in json.loads(sys.stdin.read()):
    dev = PMS5003(FakeUART(Scripted([bytes.fromhex(c) for c in chunks])), timeout_ms=300)
    try:
        r = dev.read()
        out.append([r[k] for k in ("pm1_cf1", "pm2_5_cf1", "pm10_cf1", "pm1", "pm2_5", "pm10", "pc0_3", "pc0_5", "pc1", "pc2_5", "pc5", "pc10")])
    except OSError as e:
        out.append(str(e))
print(json.dumps(out))
"""


def test_pms5003_under_micropython_resynchronises_and_times_out(mp):
    import random

    from test_drivers_reference import KEYS, damage, random_values

    from hw.fake_pms5003 import frame

    rng = random.Random(42)
    scenarios, expected = [], []
    for _ in range(60):
        v = random_values(rng)
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 8)))
        scenarios.append([(noise + damage(rng, frame(random_values(rng))) + frame(v)).hex()])
        expected.append([v[k] for k in KEYS])
    v = random_values(rng)
    scenarios.append([frame(v)[:17].hex(), frame(v).hex()])  # cut short, then asked again
    expected.append([v[k] for k in KEYS])
    scenarios.append([])  # silence
    expected.append("PMS5003: no valid frame in 300 ms (0 damaged)")
    import json

    assert mp.json(PMS_SCENARIOS, heap="48k", stdin=json.dumps(scenarios)) == expected


SHT31_RUN = """
import json
from hw.fakebus import FakeI2C
from hw.fake_sht31 import FakeSHT31
from drivers.sht31 import SHT31
bus = FakeI2C()
env = [(21.5, 40.0)]
chip = bus.attach(0x44, FakeSHT31(lambda: env[0]))
dev = SHT31(bus)
out = [dev.read()]
chip.corrupt = 1
try:
    dev.read()
except OSError as e:
    out.append(str(e))
bus.fail[0x44] = 1
try:
    dev.read()
except OSError as e:
    out.append(e.args[0])
env[0] = (-10.0, 95.0)
out.append(dev.read())
print(json.dumps(out))
"""


def test_sht31_under_micropython(mp):
    got = mp.json(SHT31_RUN, heap="48k")
    assert got[0]["temperature"] == pytest.approx(21.5, abs=0.003) and got[0]["humidity"] == pytest.approx(40.0, abs=0.002)
    assert got[1] == "SHT31: CRC mismatch in measurement from 0x44"
    assert got[2] == 5  # EIO from the bus reaches the caller as OSError
    assert got[3]["temperature"] == pytest.approx(-10.0, abs=0.003)


SETTINGS = """
import json
from hw.fakebus import FakeI2C
from hw.fake_bme280 import FakeBME280
from drivers.bme280 import BME280
from sensor_facts import SENSORS
bus = FakeI2C()
chip = bus.attach(0x76, FakeBME280(lambda: (20.0, 50.0, 1000.0)))
BME280(bus, **SENSORS["bme280"]["settings"]).read()
print(json.dumps([chip.regs[0xF2], chip.regs[0xF4], chip.regs[0xF5]]))
"""


def test_bme280_runs_with_the_settings_from_its_spec(mp):
    from openpole import paths
    from openpole.spec import model

    s = model.load(paths.SENSOR_SPECS, paths.BOARD_DEFS).sensors["bme280"]["settings"]
    code = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}
    ctrl_hum, ctrl_meas, config = mp.json(SETTINGS, heap="48k")
    assert ctrl_hum == code[s["osrs_h"]]
    assert ctrl_meas == (code[s["osrs_t"]] << 5) | (code[s["osrs_p"]] << 2)  # back to sleep after forced
    assert config >> 2 == {0: 0, 2: 1, 4: 2, 8: 3, 16: 4}[s["iir_filter"]]


STUCK = """
import json, time
from hw.fakebus import FakeI2C
from hw.fake_bme280 import FakeBME280
from drivers.bme280 import BME280
bus = FakeI2C()
chip = bus.attach(0x76, FakeBME280(lambda: (20.0, 50.0, 1000.0)))
limits = [BME280(bus, osrs_t=o, osrs_p=o, osrs_h=o).timeout_ms for o in (1, 16)]
dev = BME280(bus, osrs_t=16, osrs_p=16, osrs_h=16)
dev.request()
first = dev.poll()  # the fake converts at once: the reading is in at the first look
chip.regs[0xF3] = 0x08  # measuring, and it stays so
dev.request()
t0 = time.ticks_ms()
err = None
while err is None and time.ticks_diff(time.ticks_ms(), t0) < 1000:
    try:
        assert dev.poll() is None
    except OSError as e:
        err = [str(e), time.ticks_diff(time.ticks_ms(), t0)]
print(json.dumps([limits, sorted(first), err]))
"""


def test_bme280_polls_its_conversion_with_a_time_limit_from_its_oversampling(mp):
    limits, first, (err, waited) = mp.json(STUCK, heap="48k")
    # Datasheet 9.1: 9.3 ms at 1x and 112.8 ms at 16x, doubled.
    assert limits == [20, 227]
    assert first == ["humidity", "pressure", "temperature"]
    assert err == "BME280: conversion did not finish in 227 ms" and 227 <= waited < 400


def test_bme280_and_its_start_up_module_agree_on_the_registers_they_both_name():
    """drivers/bme280_setup.py repeats the two status-register constants its waiting read (for
    tools) needs as const()s of its own: they must be the driver's."""
    import ast

    from openpole import paths

    def consts(path):
        return {n.targets[0].id: n.value.args[0].value for n in ast.parse(path.read_text()).body
                if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call) and getattr(n.value.func, "id", "") == "const"}

    driver = consts(paths.FIRMWARE / "drivers" / "bme280.py")
    setup = consts(paths.FIRMWARE / "drivers" / "bme280_setup.py")
    shared = set(driver) & set(setup)
    assert shared >= {"_REG_STATUS", "_STATUS_MEASURING"}
    assert {k: driver[k] for k in shared} == {k: setup[k] for k in shared}
