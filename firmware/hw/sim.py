# Simulated hardware for the MicroPython Unix port: the buses are proxies to the simulated world
# (`openpole sim`, tools/sim/world.py) over a loopback socket, so the drivers and everything above
# them are the code that runs on an ESP32, and the node's heap holds no simulated world.
import socket
import struct
import time

from micropython import const

_I2C_READ_MEM = const(1)
_I2C_WRITE_MEM = const(2)
_I2C_WRITE = const(3)
_I2C_READ = const(4)
_UART_WRITE = const(5)
_UART_ANY = const(6)
_UART_READ = const(7)
_I2S_READ = const(8)
_PIN = const(9)


class _World:
    def __init__(self, addr, node_id):
        host, _, port = addr.rpartition(":")
        self.s = socket.socket()
        self.s.connect(socket.getaddrinfo(host, int(port))[0][-1])
        self.s.setsockopt(6, 1, 1)  # TCP_NODELAY: one round trip per bus operation
        self.s.write(bytes((len(node_id),)) + node_id.encode())
        self.hdr = bytearray(5)
        self.st = bytearray(1)
        self.n2 = bytearray(2)
        self.us = 0  # spent in round trips to the world, as ticks (us): a board has none (Hardware.sim_us)

    def op(self, op, a, b, n, payload=None, into=None):
        """One bus operation; raises OSError(errno) like machine's buses do."""
        t0 = time.ticks_us()
        try:
            struct.pack_into(">BBBH", self.hdr, 0, op, a, b, n)
            self.s.write(self.hdr)
            if payload is not None:
                self.s.write(payload)
            self.s.readinto(self.st)
            if into is not None:
                self.s.readinto(into)
            if self.st[0]:
                raise OSError(self.st[0])
        finally:
            self.us = time.ticks_add(self.us, time.ticks_diff(time.ticks_us(), t0))


class SimI2C:
    def __init__(self, world):
        self.w = world

    def readfrom_mem_into(self, addr, reg, buf):
        self.w.op(_I2C_READ_MEM, addr, reg, len(buf), into=buf)

    def writeto_mem(self, addr, reg, buf):
        self.w.op(_I2C_WRITE_MEM, addr, reg, len(buf), buf)

    def writeto(self, addr, buf, stop=True):
        self.w.op(_I2C_WRITE, addr, 0, len(buf), buf)
        return len(buf)

    def readfrom_into(self, addr, buf, stop=True):
        self.w.op(_I2C_READ, addr, 0, len(buf), into=buf)


class SimUART:
    def __init__(self, world):
        self.w = world

    def write(self, buf):
        self.w.op(_UART_WRITE, 0, 0, len(buf), buf)
        return len(buf)

    def any(self):
        self.w.op(_UART_ANY, 0, 0, 0, into=self.w.n2)
        return (self.w.n2[0] << 8) | self.w.n2[1]

    def readinto(self, buf, n=-1):
        n = min(len(buf), self.any()) if n < 0 else min(n, len(buf), self.any())
        if n <= 0:
            return None
        w = self.w
        w.op(_UART_READ, 0, 0, n, into=w.n2)
        got = (w.n2[0] << 8) | w.n2[1]
        t0 = time.ticks_us()
        w.s.readinto(memoryview(buf)[:got])
        w.us = time.ticks_add(w.us, time.ticks_diff(time.ticks_us(), t0))
        return got


class SimI2S:
    def __init__(self, world):
        self.w = world

    def readinto(self, buf):
        """Fill buf with 32-bit samples; blocks at the audio rate, as the ESP32's DMA does."""
        self.w.op(_I2S_READ, 0, 0, len(buf), into=buf)
        return len(buf)


class SimPin:
    def __init__(self, world, num):
        self.w = world
        self.num = num

    def __call__(self, v):
        self.w.op(_PIN, self.num, v, 0)


class Hardware:
    name = "sim"

    @property
    def sim_us(self):
        """Time spent in round trips to the simulated world (us): the node leaves it out of its
        ticks' work, as a board's buses have none (the transfers on a board's bus take their own)."""
        return self.world.us

    def __init__(self, cfg, wdt=None):
        import os

        sim = cfg.get("sim") or {}
        # OPENPOLE_WORLD: set by `openpole sim node --image`, whose config was made for a board.
        self.world = _World(os.getenv("OPENPOLE_WORLD") or sim.get("world", "127.0.0.1:7450"), cfg["node_id"])

    def i2c(self):
        return SimI2C(self.world)

    def uart_pm(self):
        return SimUART(self.world)

    def i2s(self, rate, bits):
        return SimI2S(self.world)

    def pin(self, role):
        return SimPin(self.world, {"pm.set": 1, "pm.reset": 2}.get(role, 0))

    def reset_cause(self):
        import os

        return os.getenv("OPENPOLE_RESET_CAUSE") or "power_on"  # what the simulated board's restart says

    def net_info(self):
        return {"ssid": "simulated", "connected": True, "rssi": -60, "ip": "127.0.0.1"}

    def network_up(self):
        return True

    def resolve(self, host, port):
        return socket.getaddrinfo(host, port)

    def feed(self):
        pass

    def at_repl(self):
        pass  # no watchdog in the simulator

    def reset(self):
        board_reset()


def board_reset():
    # A board's reset line: the process ends with SIGUSR1 (its shell's parent is this MicroPython)
    # and `openpole sim node` starts it again, as a board reboots.
    import os
    import sys

    os.system("kill -USR1 $PPID")
    sys.exit(3)
