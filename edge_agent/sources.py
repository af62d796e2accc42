"""Sources besides the MQTT broker, feeding the same pipeline as node messages v1:
- `bme280`: a BME280 wired to the Pi's I2C bus, read with Adafruit's CircuitPython driver through
  smbus2 (no Blinka board detection needed);
- `pms5003`: a PMS5003 on a serial port, read with pyserial and Adafruit's PM25 driver;
- `node-serial`: a node on a USB serial line whose config says "uplink": "serial"; it prints each
  node message as `OPMSG <base64>` on its console.
Configured as [[sources]] tables in the agent config (edge_agent/sample.toml).
"""

import base64
import logging
import threading
from pathlib import Path

import cbor2

from openpole.spec.registry import REGISTRY

log = logging.getLogger("openpole.edge.sources")
PM_NAMES = {"pm10 standard": "pm1_cf1", "pm25 standard": "pm2_5_cf1", "pm100 standard": "pm10_cf1",
            "pm10 env": "pm1", "pm25 env": "pm2_5", "pm100 env": "pm10", "particles 03um": "pc0_3",
            "particles 05um": "pc0_5", "particles 10um": "pc1", "particles 25um": "pc2_5",
            "particles 50um": "pc5", "particles 100um": "pc10"}


class SMBusI2C:
    """busio.I2C's surface (what Adafruit's I2CDevice calls) over an smbus2.SMBus."""

    def __init__(self, bus):
        from smbus2 import i2c_msg

        self.bus, self.msg = bus, i2c_msg

    def try_lock(self):
        return True

    def unlock(self):
        pass

    def writeto(self, address, buf, *, start=0, end=None):
        self.bus.i2c_rdwr(self.msg.write(address, bytes(buf[start:end])))

    def readfrom_into(self, address, buf, *, start=0, end=None):
        end = len(buf) if end is None else end
        m = self.msg.read(address, end - start)
        self.bus.i2c_rdwr(m)
        buf[start:end] = bytes(m)

    def writeto_then_readfrom(self, address, out, inp, *, out_start=0, out_end=None, in_start=0, in_end=None):
        in_end = len(inp) if in_end is None else in_end
        w = self.msg.write(address, bytes(out[out_start:out_end]))
        r = self.msg.read(address, in_end - in_start)
        self.bus.i2c_rdwr(w, r)
        inp[in_start:in_end] = bytes(r)


class Source:
    """A thread that reads something every interval and delivers node messages v1."""

    def __init__(self, agent, node_id, interval_s):
        self.agent, self.node_id, self.interval = agent, node_id, interval_s
        self.boot = _next_boot(Path(agent.cfg.state_dir) / f"boot-{node_id}")
        self.seq = 0
        self.errors = 0
        self.stop = threading.Event()

    def deliver(self, readings, status_ok=True):
        values = {REGISTRY.by_name[k].key: v for k, v in readings.items() if k in REGISTRY.by_name and v is not None}
        if not values:
            return
        payload = cbor2.dumps({0: 1, 1: self.node_id, 2: self.boot, 3: self.seq, 4: [[0, values]],
                               5: {self.kind: [0 if status_ok else 2, self.errors]}})
        self.seq += 1
        self.agent._deliver(f"openpole/v1/{self.node_id}/data", payload, None, 0)

    def run(self):
        while not self.stop.is_set():
            try:
                self.deliver(self.read())
            except (OSError, RuntimeError, ValueError) as e:  # a sensor fault: counted, retried
                self.errors += 1
                self.agent.store.count(f"source_{self.kind}_errors")
                log.warning("%s: %s", self.node_id, e)
            self.stop.wait(self.interval)

    def start(self):
        threading.Thread(target=self.run, name=f"openpole-source-{self.node_id}", daemon=True).start()


class Bme280Source(Source):
    kind = "bme280"

    def __init__(self, agent, node_id, interval_s, bus=1, address=0x76, smbus=None):
        super().__init__(agent, node_id, interval_s)
        from adafruit_bme280.basic import Adafruit_BME280_I2C

        if smbus is None:
            from smbus2 import SMBus

            smbus = SMBus(bus)
        self.sensor = Adafruit_BME280_I2C(SMBusI2C(smbus), address)

    def read(self):
        s = self.sensor
        return {"temperature": round(s.temperature, 2), "humidity": round(s.humidity, 2), "pressure": round(s.pressure, 2)}


class Pms5003Source(Source):
    kind = "pms5003"

    def __init__(self, agent, node_id, interval_s, port="/dev/serial0"):
        super().__init__(agent, node_id, interval_s)
        import serial
        from adafruit_pm25.uart import PM25_UART

        self.serial = serial.Serial(port, 9600, timeout=2)
        self.sensor = PM25_UART(self.serial)

    def read(self):
        self.serial.reset_input_buffer()  # the newest frame, not one from minutes ago
        for attempt in range(3):  # Adafruit's reader does not resynchronise: a damaged frame costs a try
            try:
                data = self.sensor.read()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        return {PM_NAMES[k]: v for k, v in data.items() if k in PM_NAMES}


class SerialNodeSource(Source):
    """A node on a serial line: its OPMSG lines are node messages, delivered as they are."""

    kind = "node-serial"

    def __init__(self, agent, node_id, interval_s=0, port="/dev/ttyUSB0"):
        super().__init__(agent, node_id, interval_s)
        import serial

        self.serial = serial.Serial(port, 115200, timeout=1)

    def run(self):
        while not self.stop.is_set():
            try:
                line = self.serial.readline()
            except OSError as e:
                self.errors += 1
                log.warning("%s: %s", self.node_id, e)
                self.stop.wait(1)
                continue
            at = line.find(b"OPMSG ")
            if at < 0:
                continue  # console chatter (a message may follow the prompt on its line)
            try:
                payload = base64.b64decode(line[at + 6 :].strip(), validate=True)
            except ValueError:
                self.agent.store.count("source_node_serial_bad_lines")
                continue
            try:
                node = cbor2.loads(payload).get(1, self.node_id)
            except Exception:
                node = self.node_id  # the pipeline quarantines it with its reason
            self.agent._deliver(f"openpole/v1/{node}/data", payload, None, 0)


SOURCES = {"bme280": Bme280Source, "pms5003": Pms5003Source, "node-serial": SerialNodeSource}


def from_config(agent, tables):
    out = []
    for t in tables:
        t = dict(t)
        kind = t.pop("kind", None)
        if kind not in SOURCES:
            from openpole.errors import UserError

            raise UserError(f"sources: kind must be one of {', '.join(SOURCES)}, not {kind!r}")
        node = t.pop("node_id", f"{agent.cfg.pole_id}-{kind}")
        out.append(SOURCES[kind](agent, node, t.pop("interval_s", 60), **t))
    return out


def _next_boot(path):
    try:
        n = int(path.read_text()) + 1
    except (OSError, ValueError):
        n = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(n))
    tmp.replace(path)
    return n
