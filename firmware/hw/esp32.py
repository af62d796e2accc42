# ESP32 hardware: real buses on the board's pins (board_defs/, via lib/boards.py), the network
# (Wi-Fi, or Ethernet where the board file has an [ethernet] table), the watchdog main.py armed.
import machine
import network
import socket
import sys
import time

from transport import since

_RESET_CAUSES = {
    machine.PWRON_RESET: "power_on",  # also reported after a brownout on the ESP32
    machine.HARD_RESET: "hard",  # also reported after a panic
    machine.WDT_RESET: "watchdog",
    machine.DEEPSLEEP_RESET: "deepsleep",
    machine.SOFT_RESET: "soft",
}
WDT_MS = 8000  # the loop feeds it every 10 ms
DNS_WDT_MS = 30000  # lwIP's resolver retries for up to ~20 s: the one call allowed to outlast WDT_MS
REPL_WDT_MS = 3600000  # at the REPL nothing feeds it, and an ESP32's WDT cannot be stopped
WIFI_RETRY_MS = 10000
CPU_HZ = 240000000


class Hardware:
    name = "esp32"
    sim_us = 0  # no simulated buses here: a tick's time is all the node's (node.pace)

    def __init__(self, cfg, wdt=None):
        from boards import BOARDS

        board = BOARDS[cfg["board"]]  # config.validate() has checked it is known
        del sys.modules["boards"]  # keep this board's pins, not every board's
        self.pins = board["pins"]
        self.eth = board.get("ethernet") if board["network"] == "ethernet" else None
        self.cfg = cfg
        self._nic = None
        self._net_try = None
        self._i2c = None
        self._wdt = wdt or machine.WDT(timeout=WDT_MS)
        # The stock ESP32_GENERIC, _S3 and OLIMEX_ESP32_POE firmwares keep ESP-IDF's 160 MHz; on pole
        # power the node runs at 240: each loop tick's work takes two thirds of the time, further
        # from the 52 ms its audio DMA holds (bench/node.py's estimate is for 160 MHz).
        try:
            machine.freq(CPU_HZ)
        except (AttributeError, ValueError):
            pass

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
        # The RX DMA is 32-bit stereo whatever the mode: 20000 bytes hold 2500 frames, 52 ms at
        # 48 kHz. The node keeps every tick's work well under that and counts what overflows.
        return machine.I2S(0, sck=machine.Pin(p["i2s.sck"]), ws=machine.Pin(p["i2s.ws"]), sd=machine.Pin(p["i2s.sd"]),
                           mode=machine.I2S.RX, bits=bits, format=machine.I2S.MONO, rate=rate, ibuf=20000)

    def pin(self, role):
        num = self.pins.get(role)
        return None if num is None else machine.Pin(num, machine.Pin.OUT, value=1)

    def reset_cause(self):
        return _RESET_CAUSES.get(machine.reset_cause(), "unknown")

    def net_info(self):
        n = self._nic
        kind = "ethernet" if self.eth else "wifi"
        if n is None or not n.isconnected():
            info = {"type": kind, "connected": False}
            if not self.eth:
                info["ssid"] = (self.cfg.get("wifi") or {}).get("ssid")
            return info
        info = {"type": kind, "connected": True, "ip": n.ifconfig()[0]}
        if not self.eth:
            info["ssid"], info["rssi"] = n.config("essid"), n.status("rssi")
        return info

    def _lan(self):
        e = self.eth
        kw = {"mdc": machine.Pin(e["mdc"]), "mdio": machine.Pin(e["mdio"]), "phy_addr": e["phy_addr"],
              "phy_type": getattr(network, "PHY_" + e["phy"])}
        if "power" in e:
            kw["power"] = machine.Pin(e["power"])
        if "ref_clk" in e:
            kw["ref_clk"] = machine.Pin(e["ref_clk"])
            kw["ref_clk_mode"] = machine.Pin.OUT if e.get("ref_clk_mode") == "out" else machine.Pin.IN
        lan = network.LAN(**kw)
        lan.active(True)  # DHCP starts by itself once the link is up
        return lan

    def _wlan(self):
        w = network.WLAN(network.STA_IF)
        w.active(True)
        try:
            # Pole power, not a battery: power save delays every received packet by up to a DTIM
            # beacon interval (100-300 ms), longer than the pole's ack round trip should take.
            w.config(pm=network.WLAN.PM_NONE)
        except (AttributeError, ValueError, OSError):
            pass
        return w

    def network_up(self):
        """Start or check the network without blocking the loop; True when it has an address.
        Wi-Fi: after a drop, connect() again every 10 s (it returns at once; the driver does the rest)."""
        if self._nic is None:
            self._nic = self._lan() if self.eth else self._wlan()
        if self._nic.isconnected():
            self._net_try = None  # a connected spell of days must not leave a stale retry timer
            return True
        wifi = self.cfg.get("wifi") or {}
        if not self.eth and wifi.get("ssid") and since(self._net_try, WIFI_RETRY_MS):
            self._net_try = time.ticks_ms()
            try:
                self._nic.connect(wifi["ssid"], wifi.get("password") or "")
            except OSError:
                pass
        return False

    def resolve(self, host, port):
        """getaddrinfo with the watchdog held longer: the resolver can block for many seconds."""
        self._wdt = machine.WDT(timeout=DNS_WDT_MS)
        try:
            return socket.getaddrinfo(host, port)
        finally:
            self._wdt = machine.WDT(timeout=WDT_MS)

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
