# ESP32 hardware: real buses on the board's pins (board_defs/, via lib/boards.py), Wi-Fi, watchdog.
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
WDT_MS = 8000  # the loop feeds it every 10 ms; 8 s covers a slow Wi-Fi reconnect step
REPL_WDT_MS = 3600000  # at the REPL nothing feeds it, and an ESP32's WDT cannot be stopped


class Hardware:
    name = "esp32"

    def __init__(self, cfg):
        board = BOARDS.get(cfg["board"])
        if board is None:
            raise ValueError("unknown board %r in config" % cfg["board"])
        self.pins = board["pins"]
        self.cfg = cfg
        self._wlan = None
        self._wifi_try = 0
        self._i2c = None
        self._wdt = machine.WDT(timeout=WDT_MS)

    def i2c(self):
        if self._i2c is None:
            p = self.pins
            self._i2c = machine.I2C(0, sda=machine.Pin(p["i2c.sda"]), scl=machine.Pin(p["i2c.scl"]), freq=100000)
        return self._i2c

    def uart_pm(self):
        p = self.pins
        return machine.UART(2, baudrate=9600, tx=p["uart_pm.tx"], rx=p["uart_pm.rx"], timeout=0)

    def i2s(self, rate, bits):
        p = self.pins
        return machine.I2S(0, sck=machine.Pin(p["i2s.sck"]), ws=machine.Pin(p["i2s.ws"]), sd=machine.Pin(p["i2s.sd"]),
                           mode=machine.I2S.RX, bits=bits, format=machine.I2S.MONO, rate=rate,
                           ibuf=20000)  # 100 ms of audio: a slow loop step loses none

    def pin(self, role):
        num = self.pins.get(role)
        return None if num is None else machine.Pin(num, machine.Pin.OUT, value=1)

    def reset_cause(self):
        return _RESET_CAUSES.get(machine.reset_cause(), "unknown")

    def net_info(self):
        w = self._wlan
        if w is None or not w.isconnected():
            return {"ssid": (self.cfg.get("wifi") or {}).get("ssid"), "connected": False}
        return {"ssid": w.config("essid"), "connected": True, "rssi": w.status("rssi"), "ip": w.ifconfig()[0]}

    def network_up(self):
        """Start or check Wi-Fi without blocking the loop; True when the station has an address.
        After a drop it asks again every 10 s (connect() returns at once; the driver does the rest)."""
        wifi = self.cfg.get("wifi") or {}
        if self._wlan is None:
            self._wlan = network.WLAN(network.STA_IF)
            self._wlan.active(True)
        if self._wlan.isconnected():
            return True
        if wifi.get("ssid") and time.ticks_diff(time.ticks_ms(), self._wifi_try) >= 0:
            self._wifi_try = time.ticks_add(time.ticks_ms(), 10000)
            try:
                self._wlan.connect(wifi["ssid"], wifi.get("password") or "")
            except OSError:
                pass
        return False

    def feed(self):
        self._wdt.feed()

    def at_repl(self):
        """The app stopped for the REPL (Ctrl-C): give the technician an hour before the watchdog
        resets the node; an update over the raw REPL takes a minute."""
        self._wdt = machine.WDT(timeout=REPL_WDT_MS)
        print("at the REPL: the watchdog resets the node in 60 min; Ctrl-D restarts the app now")

    def reset(self):
        time.sleep_ms(100)  # let the console's last line out
        machine.reset()
