# Simulated hardware for the MicroPython Unix port: fake buses with plausible, slowly varying
# values. The drivers and everything above them are the code that runs on the ESP32.
from hw.environment import Street
from hw.fake_bme280 import FakeBME280
from hw.fakebus import FakeI2C


class Hardware:
    name = "sim"

    def __init__(self, cfg):
        sim = cfg.get("sim") or {}
        self.street = Street(seed=sim.get("seed", 0), speed=sim.get("speed", 600.0))
        self.bus = FakeI2C()
        if "bme280" not in sim.get("missing", ()):
            address = (cfg.get("sensors", {}).get("bme280") or {}).get("address", 0x76)
            self.bus.attach(address, FakeBME280(self.street.weather))

    def i2c(self):
        return self.bus

    def reset_cause(self):
        return "power_on"

    def unique_id(self):
        return b"\x02\x00\x00\x00\x00\x01"

    def network_up(self, timeout_ms=0):
        return True

    def feed(self):
        pass
