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
    """`openpole edge run` as a pole runs it: a process that can be killed. Its /status is on a free
    port of its own (`metrics_port`): agents of tests run side by side must not share 9108."""

    def __init__(self, broker, upstream, state, pole_id="dur", start=True):
        from openpole.sim.broker import free_port

        self.metrics_port = free_port()
        self.args = [sys.executable, "-m", "openpole", "edge", "run", "--broker", f"{broker.host}:{broker.port}",
                     "--upstream", upstream, "--state", str(state), "--pole-id", pole_id, "--batch-interval", "0.5",
                     "--metrics-port", str(self.metrics_port)]
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

    def wait_subscribed(self, timeout=30):
        """Wait until the agent holds its subscription at the broker; fail the test if it does not."""
        ok = wait(lambda: self.proc.poll() is not None or agent_subscribed(self.metrics_port), timeout)
        if self.proc.poll() is not None:
            raise AssertionError(f"the agent exited {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}")
        assert ok, f"the agent did not subscribe at its broker within {timeout} s"

    def status(self):
        return agent_status(self.metrics_port)


def agent_status(port):
    """The /status of the agent with this metrics port, or None while it does not answer."""
    import json

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
            return json.load(r)
    except OSError:
        return None


def agent_subscribed(port):
    """Has the agent with this metrics port subscribed at its broker? (False while it is not up.)"""
    st = agent_status(port)
    return bool(st and st["broker"]["subscribed"])
