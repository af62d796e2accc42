# The hardware layer: the only code that differs between an ESP32 and the simulated node.
# platform(cfg, wdt) returns an object with i2c(), uart_pm(), i2s(), pin(), reset_cause(),
# net_info(), network_up(), resolve(), feed(), at_repl() and reset().
import sys


def platform(cfg, wdt=None):
    if sys.platform == "esp32":
        from hw.esp32 import Hardware
    else:
        from hw.sim import Hardware
    return Hardware(cfg, wdt)


def unique_id():
    try:
        import machine

        return machine.unique_id()
    except (ImportError, AttributeError):
        return b"\x02\x00\x00\x00\x00\x01"


def hard_reset():
    """Reset the board (the simulator: end this process so `openpole sim node` boots it again)."""
    if sys.platform == "esp32":
        import machine

        machine.reset()
    from hw.sim import board_reset

    board_reset()
