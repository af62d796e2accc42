# The hardware layer: the only code that differs between an ESP32 and the simulated node.
# hw.esp32.Hardware or hw.sim.Hardware (chosen at boot: bringup.platform(cfg, wdt)) has i2c(),
# uart_pm(), i2s(), pin(), reset_cause(), net_info(), network_up(), resolve(), feed(), at_repl(),
# reset() and sim_us. main.py's guard resets a board with machine.reset(), the simulator with
# hw.sim.board_reset(). The package itself holds no code: a running node keeps none of it.
