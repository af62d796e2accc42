# MicroPython manifest: the node app frozen into a Unix-port VM, as a custom ESP32 firmware would
# carry it (bench/node.py --frozen-micropython). Paths are relative to this file. The simulated
# hardware layer stands in for hw/esp32.py, as in every bench run.
freeze("../firmware", ("main.py", "app.py", "bringup.py", "commands.py", "diag.py", "config.py", "console.py", "node.py", "sensors.py"))
freeze("../firmware", ("hw/__init__.py", "hw/sim.py", "drivers/bme280.py", "drivers/bme280_setup.py", "drivers/pms5003.py", "drivers/sht31.py"))
freeze("../firmware/lib")
