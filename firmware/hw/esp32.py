# ESP32 hardware: real buses from the board's pins (board_defs/, via lib/registry.py), Wi-Fi, WDT.
import machine
import network
import time

from boards import BOARDS

_RESET_CAUSES = {
    machine.PWRON_RESET: "power_on",  # also reported after a brownout on the ESP32
    machine.HARD_RESET: "hard",  # also reported after a panic
    machine.WDT_RESET: "watchdog",
    machine.DEEPSLEEP_RESET: "deepsleep",
    machine.SOFT_RESET: "soft",
}


class Hardware:
    name = "esp32"

    def __init__(self, cfg):
        board = BOARDS.get(cfg["board"])
        if board is None:
            raise ValueError("unknown board %r in config" % cfg["board"])
        self.pins = board["pins"]
        self.cfg = cfg
        self._wlan = None
        self._i2c = None

    def i2c(self):
        if self._i2c is None:
            p = self.pins
            self._i2c = machine.I2C(0, sda=machine.Pin(p["i2c.sda"]), scl=machine.Pin(p["i2c.scl"]), freq=100000)
        return self._i2c

    def reset_cause(self):
        return _RESET_CAUSES.get(machine.reset_cause(), "unknown")

    def unique_id(self):
        return machine.unique_id()

    def network_up(self, timeout_ms=10000):
        """Connect Wi-Fi if needed; True when the station has an address."""
        wifi = self.cfg.get("wifi") or {}
        if self._wlan is None:
            self._wlan = network.WLAN(network.STA_IF)
            self._wlan.active(True)
        if self._wlan.isconnected():
            return True
        if not wifi.get("ssid"):
            return False
        self._wlan.connect(wifi["ssid"], wifi.get("password") or "")
        t0 = time.ticks_ms()
        while not self._wlan.isconnected() and time.ticks_diff(time.ticks_ms(), t0) < timeout_ms:
            time.sleep_ms(100)
        return self._wlan.isconnected()

    def feed(self):
        pass  # the watchdog arrives with the node runtime
