"""The simulated world around a node, served at the bus: the node's hardware layer (firmware/hw/sim.py)
sends each I2C, UART, I2S and pin operation here over a loopback socket; chip models answer.

Keeping the world out of the node keeps the node's heap what an ESP32's would be, and lets tests
and the demo change the world (a missing chip, bus errors, a PM episode) while the node runs.
The chip models are the register and frame models in firmware/hw/fake_*.py.
"""

import math
import random
import socket
import struct
import sys
import threading
import time

from .. import paths

if str(paths.FIRMWARE) not in sys.path:
    sys.path.append(str(paths.FIRMWARE))
from hw.fake_bme280 import FakeBME280  # noqa: E402
from hw.fake_pms5003 import FakePMS5003  # noqa: E402
from hw.fake_sht31 import FakeSHT31  # noqa: E402
from hw.fakebus import FakeI2C, FakeUART  # noqa: E402

# Operations (firmware/hw/sim.py speaks the same): request = op, a, b, n (u16 big-endian), payload.
OP_I2C_READ_MEM, OP_I2C_WRITE_MEM, OP_I2C_WRITE, OP_I2C_READ = 1, 2, 3, 4
OP_UART_WRITE, OP_UART_ANY, OP_UART_READ = 5, 6, 7
OP_I2S_READ, OP_PIN = 8, 9
FS = 48000
_DAY = 86400.0


class Street:
    """Plausible, slowly varying weather, particles and traffic noise; time runs `speed` x."""

    def __init__(self, seed=0, speed=600.0, start_hour=6.0):
        self.rng = random.Random(seed)
        self.speed = speed
        self.t0 = time.monotonic()
        self.start_s = start_hour * 3600.0
        self.offset = (seed * 7919 % 100) / 100.0
        self.episode = 0.0  # extra PM2.5 from an episode (smoke, dust), decays

    def clock_s(self):
        return (self.start_s + (time.monotonic() - self.t0) * self.speed) % _DAY

    def weather(self):
        s = self.clock_s()
        day = math.sin(2 * math.pi * (s - 9 * 3600) / _DAY)
        return 14.0 + 6.0 * day + self.offset, 62.0 - 18.0 * day - 3 * self.offset, 1013.0 + 4 * math.sin(2 * math.pi * s / (3 * _DAY)) + self.offset

    def particles(self):
        s = self.clock_s()
        rush = math.exp(-(((s - 8.5 * 3600) / 5400) ** 2)) + math.exp(-(((s - 17.5 * 3600) / 5400) ** 2))
        if self.rng.random() < 0.01:
            self.episode += self.rng.uniform(20, 80)
        self.episode *= 0.97
        pm25 = 6.0 + 14.0 * rush + self.episode + self.rng.uniform(0, 2)
        pm1, pm10 = 0.7 * pm25, 1.5 * pm25 + 3
        counts = [pm25 * k for k in (180, 55, 12, 1.6, 0.4, 0.1)]
        vals = [pm1, pm25, pm10, pm1 * 1.1, pm25 * 1.1, pm10 * 1.1] + counts
        keys = ("pm1", "pm2_5", "pm10", "pm1_cf1", "pm2_5_cf1", "pm10_cf1", "pc0_3", "pc0_5", "pc1", "pc2_5", "pc5", "pc10")
        return {k: min(65535, int(v)) for k, v in zip(keys, vals)}

    def noise_level(self, t):
        """Traffic: about 55 dB(A) at night to 68 by day, with cars passing every ~8 s."""
        s = (self.start_s + t * self.speed) % _DAY
        base = 55.0 + 13.0 * max(0.0, math.sin(math.pi * (s - 5 * 3600) / (18 * 3600)))
        car = 12.0 * math.exp(-((((t + self.offset * 8) % 8.0) - 4.0) / 1.2) ** 2)
        return 10 * math.log10(10 ** (base / 10) + 10 ** ((base - 3 + car) / 10))


class Microphone:
    """I2S words from a -26 dBFS/94 dB SPL microphone hearing the street, paced in real time, through
    a DMA buffer of an ESP32's size: audio the node leaves unread past it is lost, and counted."""

    DMA_FRAMES = 2500  # ibuf=20000 bytes of 32-bit stereo frames (hw/esp32.py)

    def __init__(self, street, sensitivity_dbfs=-26.0, seed=0):
        self.street = street
        self.sens = sensitivity_dbfs
        self.rng = random.Random(seed)
        self.n = 0
        self.t0 = None
        self.lp = 0.0
        self.lost = 0  # samples overwritten in the DMA buffer before the node read them

    def read(self, nbytes):
        k = nbytes // 4
        if self.t0 is None:
            self.t0 = time.monotonic()
        behind = int((time.monotonic() - self.t0) * FS) - self.n - self.DMA_FRAMES
        if behind > 0:  # the DMA kept only its newest DMA_FRAMES: the older audio is gone
            self.lost += behind
            self.n += behind
        due = self.t0 + (self.n + k) / FS  # an ESP32's I2S DMA delivers audio at the audio rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        level = self.street.noise_level(self.n / FS)
        amp = 2**31 * 10 ** ((level - (94 - self.sens)) / 20) * 1.8  # rms of this noise ~ 0.55 of amp
        out = bytearray(nbytes)
        lp, g = self.lp, self.rng.gauss
        for i in range(k):
            lp = 0.7 * lp + 0.3 * g(0.0, 1.0)  # a little low-pass: traffic is bassy
            v = int(max(-(2**31), min(2**31 - 1, amp * lp)))
            struct.pack_into("<i", out, 4 * i, v)
        self.lp = lp
        self.n += k
        return bytes(out)


class NodeWorld:
    """Everything one node's buses reach."""

    def __init__(self, seed=1, speed=600.0, chips=("bme280", "pms5003", "noise")):
        self.street = Street(seed, speed)
        self.i2c = FakeI2C()
        self.i2c_delay_s = 0.0  # a slow bus (clock stretching, a long cable): each I2C transfer waits
        self.uart = FakeUART()
        self.mic = None
        self.pins = {}
        self.pin_log = []  # (pin, value) in order: pin 1 is the PMS5003's SET (low = asleep)
        self.lock = threading.Lock()
        if "bme280" in chips:
            self.i2c.attach(0x76, FakeBME280(self.street.weather))
        if "sht31" in chips:
            self.i2c.attach(0x44, FakeSHT31(lambda: self.street.weather()[:2]))
        if "pms5003" in chips:
            self.uart.chip = FakePMS5003(self.street.particles)
        if "noise" in chips:
            self.mic = Microphone(self.street, seed=seed)

    def handle(self, op, a, b, payload, n):
        """One bus operation -> (status, reply bytes). Status is 0 or an errno (19 no device, 5 I/O)."""
        try:
            if op <= OP_I2C_READ and self.i2c_delay_s:
                time.sleep(self.i2c_delay_s)
            with self.lock:
                if op == OP_I2C_READ_MEM:
                    buf = bytearray(n)
                    self.i2c.readfrom_mem_into(a, b, buf)
                    return 0, bytes(buf)
                if op == OP_I2C_WRITE_MEM:
                    self.i2c.writeto_mem(a, b, payload)
                    return 0, b""
                if op == OP_I2C_WRITE:
                    self.i2c.writeto(a, payload)
                    return 0, b""
                if op == OP_I2C_READ:
                    buf = bytearray(n)
                    self.i2c.readfrom_into(a, buf)
                    return 0, bytes(buf)
                if op == OP_UART_WRITE:
                    self.uart.write(payload)
                    return 0, b""
                if op == OP_UART_ANY:
                    return 0, struct.pack(">H", min(65535, self.uart.any()))
                if op == OP_UART_READ:
                    data = self.uart.read(n) or b""
                    return 0, struct.pack(">H", len(data)) + data
                if op == OP_PIN:
                    self.pins[a] = b
                    self.pin_log.append((a, b))
                    if a == 1 and self.uart.chip is not None:
                        self.uart.chip.asleep = b == 0  # SET low: fan and laser off, no frames
                    return 0, b""
            if op == OP_I2S_READ:
                if self.mic is None:
                    return 19, bytes(n)
                return 0, self.mic.read(n)
        except OSError as e:
            return (e.args[0] if e.args and isinstance(e.args[0], int) else 5), bytes(n if op in (OP_I2C_READ_MEM, OP_I2C_READ, OP_I2S_READ) else 0)
        return 22, b""


class WorldServer:
    """Serves NodeWorlds on a loopback port: the node sends its node id first, then operations."""

    def __init__(self, host="127.0.0.1", port=0, **world_kw):
        self.world_kw = world_kw
        self.worlds = {}
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.host, self.port = self.sock.getsockname()
        self._stop = False
        threading.Thread(target=self._accept, name="openpole-world", daemon=True).start()

    def world(self, node_id, **kw):
        if node_id not in self.worlds:
            args = dict(self.world_kw)
            args.update(kw)
            args.setdefault("seed", sum(node_id.encode()))
            self.worlds[node_id] = NodeWorld(**args)
        return self.worlds[node_id]

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _recv(conn, n):
        data = b""
        while len(data) < n:
            part = conn.recv(n - len(data))
            if not part:
                raise ConnectionError
            data += part
        return data

    def _serve(self, conn):
        try:
            (k,) = self._recv(conn, 1)
            world = self.world(self._recv(conn, k).decode())
            while True:
                op, a, b, n = struct.unpack(">BBBH", self._recv(conn, 5))
                payload = self._recv(conn, n) if op in (OP_I2C_WRITE_MEM, OP_I2C_WRITE, OP_UART_WRITE) else b""
                status, reply = world.handle(op, a, b, payload, n)
                conn.sendall(bytes((status,)) + reply)
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            conn.close()

    def close(self):
        self._stop = True
        self.sock.close()
