"""The agent's MQTT ingest reads the socket ahead (64 KB at a time) and hands paho every packet it
holds per wake-up: a burst that arrives in one read is delivered whole, at once, not one packet per
select() with the rest stranded until the next byte arrives; a reconnect starts clean; a trickle
is parsed from the buffer, a few packets a wake-up."""

import socket
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from openpole.edge_agent import config
from openpole.edge_agent.ingest import MqttIngest


class Sink:
    def __init__(self):
        self.got = []
        self.seen = []
        self.lock = threading.Lock()
        self.ingest = None

    def __call__(self, topic, payload, mid, qos):
        with self.lock:
            self.got.append(bytes(payload))
            self.seen.append((topic, len(payload), qos))
        self.ingest.ack_group([(mid, qos)])

    def count(self):
        with self.lock:
            return len(self.got)


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not pred():
        time.sleep(0.02)
    return pred()


def publish_burst(broker, n, start=0):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"burst-{start}")
    c.connect(broker.host, broker.port)
    c.loop_start()
    infos = [c.publish("openpole/v1/n1/data", b"%08d" % i + b"x" * 90, qos=1) for i in range(start, start + n)]
    for info in infos:
        info.wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


@pytest.fixture
def sink(mosquitto):
    """The agent's ingest on the test broker, delivering to a Sink that acknowledges."""
    s = Sink()
    cfg = config.load(broker_host=mosquitto.host, broker_port=mosquitto.port, pole_id="ingest-test")
    s.ingest = MqttIngest(cfg, s)
    s.ingest.start()
    try:
        assert s.ingest.subscribed.wait(10), "the ingest did not subscribe at the broker"
        yield s
    finally:
        s.ingest.stop()


def test_a_burst_is_delivered_whole_and_a_reconnect_starts_clean(sink, mosquitto):
    ingest = sink.ingest
    publish_burst(mosquitto, 2000)
    # Stranded packets would wait for the 30 s keepalive's PINGRESP: 5 s is plenty.
    assert wait_for(lambda: sink.count() >= 2000, 5), sink.count()
    assert sorted(sink.got) == sorted(b"%08d" % i + b"x" * 90 for i in range(2000))

    ingest.subscribed.clear()  # set again by the SUBACK on the new connection
    ingest.client.socket().shutdown(socket.SHUT_RDWR)  # the connection drops; paho reconnects
    assert wait_for(lambda: not ingest.connected, 10)
    assert ingest.subscribed.wait(15), "the ingest did not subscribe again after the reconnect"
    publish_burst(mosquitto, 500, start=2000)
    assert wait_for(lambda: sink.count() >= 2500, 5), sink.count()
    assert len(set(sink.got)) == 2500


def test_every_kind_of_publish_arrives_intact(sink, mosquitto):
    """QoS 0 and 1, retained, a topic in UTF-8, and a payload larger than the read-ahead buffer
    (parsed by paho across several reads) among small ones parsed from the buffer."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="kinds")
    c.connect(mosquitto.host, mosquitto.port)
    c.loop_start()
    big = bytes(range(256)) * 400  # 102,400 bytes
    sent = [("openpole/v1/n1/data", b"a" * 50, 1, False), ("openpole/v1/n1/data", b"b" * 50, 0, False),
            ("openpole/v1/n2/data", big, 1, False), ("openpole/v1/n1/data", b"c" * 50, 1, True),
            ("openpole/v1/straße-1/data", b"d" * 50, 1, False)]
    for topic, payload, qos, retain in sent:
        c.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()
    assert wait_for(lambda: sink.count() >= len(sent), 10), sink.seen
    assert sink.got == [p for _, p, _, _ in sent]
    assert [s[0] for s in sink.seen][-1] == "openpole/v1/straße-1/data"
    assert [s[2] for s in sink.seen] == [1, 0, 1, 1, 1]


def test_a_trickle_is_parsed_from_the_buffer_a_few_packets_a_wake_up(sink, mosquitto):
    """1,000 nodes at 1 msg/s reach the agent as a packet about every millisecond: each is parsed
    from the read-ahead buffer, none by paho's own reader (three recv() calls and an MQTTMessage per
    packet), and a wake-up waits a moment for a few more instead of taking them one by one."""
    client = sink.ingest.client
    by_paho, wakes = [], []
    handle_publish, loop_read = client._handle_publish, client.loop_read

    def paho_parses():
        by_paho.append(1)
        return handle_publish()

    def counted(*a):
        wakes.append(1)
        return loop_read(*a)

    client._handle_publish, client.loop_read = paho_parses, counted
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="trickle")
    c.connect(mosquitto.host, mosquitto.port)
    c.loop_start()
    n = 300
    infos = []
    for i in range(n):
        infos.append(c.publish("openpole/v1/n1/data", b"%08d" % i + b"x" * 70, qos=1))
        time.sleep(0.001)
    for info in infos:
        info.wait_for_publish(10)
    c.loop_stop()
    c.disconnect()
    assert wait_for(lambda: sink.count() >= n, 10), sink.count()
    assert sorted(sink.got) == sorted(b"%08d" % i + b"x" * 70 for i in range(n))
    assert by_paho == []
    assert len(wakes) < 0.6 * n, f"{len(wakes)} reads for {n} messages"
