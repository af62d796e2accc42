# The node loop: sample the sensors, encode node messages, publish them at QoS 1, keep what
# could not be sent yet. Drivers come from the config through DRIVERS; hardware from hw/.
import gc
import os
import time

import message
from registry import SENSORS
from transport import Transport

VERSION = "0.1.0"
QUEUE_MAX = 600  # messages kept in RAM while the broker is unreachable
# Registry: sensor name -> (module, class). Adding a sensor is a driver file and a line here.
DRIVERS = {"bme280": ("drivers.bme280", "BME280")}
OK, WARMING, DEGRADED, FAILED = 0, 1, 2, 3


def _next_boot(path="boot_count"):
    try:
        with open(path) as f:
            n = int(f.read()) + 1
    except (OSError, ValueError):
        n = 1
    with open(path + ".tmp", "w") as f:
        f.write(str(n))
    os.rename(path + ".tmp", path)  # atomic on LittleFS and POSIX
    return n


class Sensor:
    def __init__(self, name, settings):
        self.name = name
        self.settings = settings
        self.driver = None
        self.state = FAILED
        self.errors = 0
        self.last = None
        self.last_error = None

    def start(self, hw):
        module, cls = DRIVERS[self.name]
        spec = SENSORS.get(self.name, {})
        kwargs = dict(spec.get("settings", {}))  # from sensor_specs/: oversampling, filters
        if spec.get("bus") == "i2c":
            kwargs["address"] = self.settings.get("address", spec.get("address"))
        try:
            mod = __import__(module, None, None, [cls])
            self.driver = getattr(mod, cls)(hw.i2c(), **kwargs)
            self.state = OK
        except (OSError, ValueError) as e:
            self._fault(e)

    def _fault(self, e):
        self.errors += 1
        self.last_error = str(e)
        self.state = FAILED if self.driver is None else DEGRADED

    def read(self, hw):
        """Return {quantity: value} or None; a fault is counted and the node goes on."""
        if self.driver is None:
            self.start(hw)
            if self.driver is None:
                return None
        try:
            values = self.driver.read()
        except (OSError, ValueError) as e:
            self._fault(e)
            return None
        self.state = OK
        self.last = values
        return values


class Node:
    def __init__(self, cfg, hw, log=print):
        self.cfg = cfg
        self.hw = hw
        self.log = log
        self.node_id = cfg["node_id"]
        self.boot = _next_boot()
        self.seq = 0
        self.queue = []  # [(seq, [(ticks, values_cbor)], status)] oldest first
        self.dropped = 0
        self.published = 0
        self.heap_peak = 0  # GC heap in use before each collection: an upper bound of the peak
        self.sensors = [Sensor(name, s or {}) for name, s in cfg["sensors"].items() if name in DRIVERS]
        for name in cfg["sensors"]:
            if name not in DRIVERS:
                log("config: unknown sensor %r ignored (known: %s)" % (name, ", ".join(DRIVERS)))
        key = cfg.get("key")
        self.key = bytes.fromhex(key) if key else None
        b = cfg["broker"]
        self.topic = "openpole/v1/%s/data" % self.node_id
        self.status_topic = "openpole/v1/%s/status" % self.node_id
        self.mqtt = Transport(self.node_id, b["host"], b.get("port", 1883), b.get("user"), b.get("password"))
        self.mqtt.set_last_will(self.status_topic, b"offline")

    def start(self):
        for s in self.sensors:
            s.start(self.hw)
        self.log("openpole node %s: firmware %s on %s, boot %d, sensors %s" % (
            self.node_id, VERSION, self.hw.name, self.boot,
            ", ".join("%s=%s" % (s.name, "ok" if s.state == OK else "failed") for s in self.sensors)))

    def sample(self):
        now = time.ticks_ms()
        samples = []
        for s in self.sensors:
            values = s.read(self.hw)
            if values is not None:
                samples.append((now, message.encode_values(values)))
        status = {s.name: [s.state, s.errors] for s in self.sensors}
        if len(self.queue) >= QUEUE_MAX:
            self.queue.pop(0)
            self.dropped += 1
        if samples:
            self.queue.append((self.seq, samples, status))
            self.seq += 1

    def _online(self):
        self.mqtt.publish(self.status_topic, b"online", retain=True)

    def flush(self):
        """Publish queued messages oldest first; stop at the first failure."""
        if not self.queue or not self.hw.network_up() or not self.mqtt.ensure(self._online):
            return
        while self.queue:
            seq, samples, status = self.queue[0]
            payload = message.encode(self.node_id, self.boot, seq, samples, time.ticks_ms(), status)
            if self.key:
                payload = message.sign(payload, self.key)
            if not self.mqtt.publish(self.topic, payload):
                self.log("mqtt: publish failed (%s); %d message(s) kept" % (self.mqtt.last_error, len(self.queue)))
                return
            self.queue.pop(0)
            self.published += 1
            self.log("published seq=%d bytes=%d queue=%d" % (seq, len(payload), len(self.queue)))

    def run(self, cycles=None):
        self.start()
        gc.collect()  # start-up garbage (config text, import buffers) out of the way
        interval_ms = int(self.cfg["interval_s"] * 1000)
        done = 0
        due = time.ticks_ms()
        while cycles is None or done < cycles:
            self.hw.feed()
            if time.ticks_diff(time.ticks_ms(), due) >= 0:
                due = time.ticks_add(due, interval_ms)
                self.sample()
                self.flush()
                done += 1
                self.heap_peak = max(self.heap_peak, gc.mem_alloc())
                gc.collect()
            else:
                self.mqtt.poll()
                time.sleep_ms(min(50, max(1, time.ticks_diff(due, time.ticks_ms()))))
        self.flush()
        self.mqtt.close()
        return done
