"""Test helpers shared by the MQTT tests: a paho subscriber that records what arrives."""

import signal
import subprocess
import sys
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt


class Collector:
    """Subscribe at QoS 1 and keep (topic, payload, retain) in arrival order."""

    def __init__(self, broker, topic="openpole/#", persistent=False):
        self.messages = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        # persistent: a fixed session the broker keeps (with its own persistence) across a restart
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="openpole-test-collector", clean_session=not persistent)
        c.reconnect_delay_set(min_delay=1, max_delay=2)
        c.on_connect = lambda cl, *a: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *a: self._subscribed.set()
        c.on_message = self._on_message
        c.connect(broker.host, broker.port)
        c.loop_start()
        assert self._subscribed.wait(10), "collector could not subscribe"
        self.client = c

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), msg.retain))

    def wait_for(self, predicate, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if predicate(self.messages):
                    return list(self.messages)
            time.sleep(0.05)
        with self._lock:
            return list(self.messages)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def publish_all(broker, items, client_id="openpole-test-publisher"):
    """Publish [(topic, payload)] at QoS 1 and wait for every PUBACK."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.connect(broker.host, broker.port)
    c.loop_start()
    infos = [c.publish(t, p, qos=1) for t, p in items]
    for info in infos:
        info.wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


class BusioI2C:
    """busio.I2C's surface (what Adafruit's I2CDevice calls) over a firmware FakeI2C."""

    def __init__(self, fake):
        self.fake = fake

    def try_lock(self):
        return True

    def unlock(self):
        pass

    def scan(self):
        return self.fake.scan()

    def writeto(self, address, buf, *, start=0, end=None):
        self.fake.writeto(address, bytes(buf[start:end]))

    def readfrom_into(self, address, buf, *, start=0, end=None):
        end = len(buf) if end is None else end
        tmp = bytearray(end - start)
        if tmp:
            self.fake.readfrom_into(address, tmp)
        buf[start:end] = tmp

    def writeto_then_readfrom(self, address, out_buf, in_buf, *, out_start=0, out_end=None, in_start=0, in_end=None):
        self.writeto(address, out_buf, start=out_start, end=out_end)
        self.readfrom_into(address, in_buf, start=in_start, end=in_end)


def wait(predicate, timeout=20):
    """Poll predicate until it holds or timeout seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class AgentProcess:
    """`openpole edge run` as a pole runs it: a process that can be killed."""

    def __init__(self, broker, upstream, state, pole_id="dur", start=True):
        self.args = [sys.executable, "-m", "openpole", "edge", "run", "--broker", f"{broker.host}:{broker.port}",
                     "--upstream", upstream, "--state", str(state), "--pole-id", pole_id, "--batch-interval", "0.5"]
        self.proc = None
        if start:
            self.start()

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def agent_subscribed(port):
    """Has the agent with this metrics port subscribed at its broker? (False while it is not up.)"""
    import json

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
            return json.load(r)["broker"]["subscribed"]
    except OSError:
        return False
