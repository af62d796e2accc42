# The hardware layer: the only code that differs between an ESP32 and the simulated node.
# platform() returns an object with i2c(), reset_cause(), network_up(), unique_id(), feed().
import sys


def platform(cfg):
    if sys.platform == "esp32":
        from hw.esp32 import Hardware
    else:
        from hw.sim import Hardware
    return Hardware(cfg)
