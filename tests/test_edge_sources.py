"""Other sources feed the same pipeline: a BME280 on the Pi's I2C (smbus2, faked at the bus), a
PMS5003 on a serial port (a pty, real pyserial), and a node on a serial line (the firmware under
MicroPython, uplink "serial")."""

import ctypes
import os
import threading
import time
import tty

from hw.fake_bme280 import FakeBME280
from hw.fake_pms5003 import frame
from hw.fakebus import FakeI2C

from helpers import wait

from openpole.edge_agent import sources
from openpole.edge_agent.agent import Agent
from openpole.edge_agent.config import AgentConfig
from openpole.receiver.server import Receiver
from openpole.sim import node as simnode
from openpole.sim.broker import free_port


class FakeSMBus:
    """smbus2.SMBus's i2c_rdwr over a register model: the lowest level this machine lacks."""

    def __init__(self, bus):
        self.bus = bus

    def i2c_rdwr(self, *msgs):
        for m in msgs:
            if m.flags & 1:  # I2C_M_RD
                data = bytearray(m.len)
                self.bus.readfrom_into(m.addr, data)
                ctypes.memmove(m.buf, bytes(data), m.len)
            else:
                self.bus.writeto(m.addr, bytes(list(m)))


def agent_and_receiver(tmp_path, mosquitto):
    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "r").start()
    cfg = AgentConfig(pole_id="pi", broker_host=mosquitto.host, broker_port=mosquitto.port, upstream=receiver.url,
                      state_dir=tmp_path / "edge", batch_interval_s=0.2, metrics_port=0)
    agent = Agent(cfg)
    agent.start()
    return agent, receiver


def latest(receiver):
    return {(r["node"], r["name"]): r["value"] for r in receiver.store.latest()}




def test_a_bme280_on_the_pis_i2c(tmp_path, mosquitto):
    bus = FakeI2C()
    bus.attach(0x76, FakeBME280(lambda: (18.25, 61.5, 1007.3)))
    agent, receiver = agent_and_receiver(tmp_path, mosquitto)
    src = sources.Bme280Source(agent, "pi-bme280", 0.2, smbus=FakeSMBus(bus))
    try:
        src.start()
        assert wait(lambda: ("pi-bme280", "pressure") in latest(receiver))
        got = latest(receiver)
        assert abs(got[("pi-bme280", "temperature")] - 18.25) < 0.02
        assert abs(got[("pi-bme280", "humidity")] - 61.5) < 0.1 and abs(got[("pi-bme280", "pressure")] - 1007.3) < 0.02
    finally:
        src.stop.set()
        agent.stop()
        receiver.stop()


def test_a_pms5003_on_a_serial_port(tmp_path, mosquitto):
    master, slave = os.openpty()
    tty.setraw(slave)
    values = {"pm1": 5, "pm2_5": 9, "pm10": 14, "pm1_cf1": 6, "pm2_5_cf1": 10, "pm10_cf1": 15,
              "pc0_3": 1500, "pc0_5": 450, "pc1": 90, "pc2_5": 12, "pc5": 3, "pc10": 1}
    stop = threading.Event()

    def sensor():  # active mode: a frame every 200 ms, some line noise between
        while not stop.is_set():
            os.write(master, b"\x00\x13" + frame(values))
            time.sleep(0.2)

    threading.Thread(target=sensor, daemon=True).start()
    agent, receiver = agent_and_receiver(tmp_path, mosquitto)
    src = sources.Pms5003Source(agent, "pi-pms", 0.3, port=os.ttyname(slave))
    try:
        src.start()
        assert wait(lambda: ("pi-pms", "pc10") in latest(receiver))
        got = latest(receiver)
        assert {k: got[("pi-pms", k)] for k in values} == values
    finally:
        src.stop.set()
        stop.set()
        agent.stop()
        receiver.stop()


def test_a_node_on_a_serial_line(app, tmp_path, mosquitto, world):
    master, slave = os.openpty()
    tty.setraw(slave)
    state = tmp_path / "node"
    simnode.write_config(state, simnode.node_config("usb-1", "127.0.0.1", free_port(), interval_s=0.3, cycles=4,
                                                    world=f"{world.host}:{world.port}", sensors=("bme280",), uplink="serial"))
    agent, receiver = agent_and_receiver(tmp_path, mosquitto)
    src = sources.SerialNodeSource(agent, "usb", port=os.ttyname(slave))
    try:
        src.start()
        node = simnode.start(state, app, heap="128k", stdin=master, stdout=master, stderr=master)
        assert node.wait(timeout=60) == 0
        assert wait(lambda: receiver.store.stats()["unique"] >= 12)  # 4 messages of 3 readings
        assert ("usb-1", "temperature") in latest(receiver)
    finally:
        src.stop.set()
        agent.stop()
        receiver.stop()
