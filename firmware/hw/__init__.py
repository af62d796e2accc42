# The hardware layer: the only code that differs between an ESP32 and the simulated node.
# hw.esp32.Hardware or hw.sim.Hardware (chosen at boot: bringup.platform(cfg, wdt)) has i2c(),
# uart_pm(), i2s(), pin(), reset_cause(), net_info(), network_up(), resolve(), feed(), at_repl(),
# reset() and sim_us. The package itself keeps only what main.py's guard needs at a crash.
import sys


def hard_reset():
    """Reset the board (the simulator: end this process so `openpole sim node` boots it again)."""
    if sys.platform == "esp32":
        import machine

        machine.reset()
    from hw.sim import board_reset

    board_reset()
