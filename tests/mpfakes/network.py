# The ESP32's `network`, as far as firmware/hw/esp32.py uses it. A test sets `link` (the cable or
# the access point) and reads `log`.
STA_IF = 0
PHY_LAN8710, PHY_LAN8720, PHY_IP101, PHY_RTL8201, PHY_DP83848, PHY_KSZ8041, PHY_KSZ8081 = 0, 1, 2, 3, 4, 5, 6
log = []
link = [False]


class _NIC:
    def active(self, on=None):
        log.append(("active", on))

    def isconnected(self):
        return link[0]

    def ifconfig(self):
        return ("10.0.0.7", "255.255.255.0", "10.0.0.1", "10.0.0.1")


class WLAN(_NIC):
    PM_NONE, PM_PERFORMANCE = 0, 1

    def __init__(self, interface):
        log.append(("WLAN", interface))

    def config(self, *args, **kw):
        if kw:
            log.append(("config", kw))
        return "street"

    def connect(self, ssid, password):
        log.append(("connect", ssid))

    def status(self, what=None):
        return -61


class LAN(_NIC):
    def __init__(self, **kw):
        log.append(("LAN", sorted((k, repr(v)) for k, v in kw.items())))
