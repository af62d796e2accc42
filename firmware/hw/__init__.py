# The hardware layer: the only code that differs between an ESP32 and the simulated node.
# platform(cfg) returns an object with i2c(), uart_pm(), i2s(), pin(), reset_cause(), net_info(),
# network_up(), feed() and reset().
import sys


def platform(cfg):
    if sys.platform == "esp32":
        from hw.esp32 import Hardware
    else:
        from hw.sim import Hardware
    return Hardware(cfg)


def unique_id():
    try:
        import machine

        return machine.unique_id()
    except (ImportError, AttributeError):
        return b"\x02\x00\x00\x00\x00\x01"
