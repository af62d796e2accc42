"""The agent's MQTT ingest reads the socket ahead (64 KB at a time) and hands paho every packet it
holds per wake-up: a burst that arrives in one read is delivered whole, at once, not one packet per
select() with the rest stranded until the next byte arrives; a reconnect starts clean; a trickle
is parsed from the buffer, a few packets a wake-up."""

import socket
import threading
import time

import cbor2
import paho.mqtt.client as mqtt
import pytest
from helpers import publish_all

from openpole.edge_agent import config
from openpole.edge_agent import ingest
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


@pytest.mark.parametrize("runs", [[[0, 0, 0]], [[23, 24, 255]], [[256, 65535, 65536]], [[2**32 - 1, 2**32, 2**63 - 1]],
                                  [[7, 0, 3], [7, 5, 9]]])
def test_a_node_ack_is_the_cbor_of_its_runs(runs):
    """The ack topic's payload, encoded by hand for one run: what cbor2 makes of the runs, byte for byte."""
    assert ingest._runs(runs) == cbor2.dumps(runs)


@pytest.mark.parametrize("payload_bytes", [10, 200, 20000])
def test_an_ack_publish_packet_reads_back(payload_bytes):
    """A QoS 0 PUBLISH as the ingest builds it (MQTT 3.1.1 section 3.3), short and with a remaining
    length of two and three bytes."""
    topic, payload = ingest.ACK_TOPIC.format("n-17"), bytes(range(256)) * (payload_bytes // 256) + b"x" * (payload_bytes % 256)
    packet = ingest._publish0(ingest._topic_head(topic), payload)
    assert packet[0] == 0x30
    length, mult, i = 0, 1, 1
    while True:
        length += (packet[i] & 127) * mult
        mult *= 128
        i += 1
        if not packet[i - 1] & 128:
            break
    assert length == len(packet) - i
    tlen = packet[i] << 8 | packet[i + 1]
    assert packet[i + 2: i + 2 + tlen].decode() == topic and packet[i + 2 + tlen:] == payload


def publish_packet(topic, payload, qos=0, mid=0, dup=False, retain=False):
    """A PUBLISH packet as a broker sends it (MQTT 3.1.1 section 3.3)."""
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + (mid.to_bytes(2, "big") if qos else b"") + payload
    n, length = len(body), bytearray()
    while True:
        n, b = n >> 7, n & 127
        length.append(b | (128 if n else 0))
        if not n:
            break
    return bytes((0x30 | dup << 3 | qos << 1 | retain,)) + bytes(length) + body


def test_the_buffer_parser_takes_qos_0_and_1_publishes_and_leaves_paho_the_rest():
    """QoS 0 and 1, a re-send (DUP), retained, a remaining length of one, two and three bytes: parsed
    from the buffer; a QoS 2 PUBLISH, any other packet, or a packet cut short stops the parse there."""
    c = ingest._ReadAheadClient(mqtt.CallbackAPIVersion.VERSION2, client_id="parser", manual_ack=True)
    got = []
    c.on_parsed = lambda topic, payload, mid, qos: got.append((topic, bytes(payload), mid, qos))
    taken = [("openpole/v1/n1/data", b"a" * 50, 1, 7, False, False), ("openpole/v1/n1/diag", b"{}", 0, 0, False, False),
             ("openpole/v1/n1/data", b"b" * 50, 1, 7, True, False), ("openpole/v1/n2/status", b"online", 0, 0, False, True),
             ("openpole/v1/n1/data", b"c" * 300, 1, 65535, False, False), ("openpole/v1/n1/data", b"d" * 20000, 1, 8, False, False)]
    head = b"".join(publish_packet(*p) for p in taken)
    for rest in (publish_packet("openpole/v1/n1/data", b"q2", 2, 9), b"\xd0\x00",  # a QoS 2 PUBLISH, a PINGRESP
                 publish_packet("openpole/v1/n1/data", b"e" * 300, 1, 10)[:-1],  # cut short
                 publish_packet("openpole/v1/n1/data", b"e" * 300, 1, 10)[:2]):  # cut inside the length
        got.clear()
        c._rbuf, c._rpos = head + rest, 0
        c._publishes()
        assert got == [(t, p, m, q) for t, p, q, m, _, _ in taken]
        assert c._rpos == len(head)


def test_an_ingest_on_mqtt_v5_delivers_a_burst_through_paho(mosquitto):
    """ingest.mqtt_version = 5: paho parses every packet (the read-ahead parser is 3.1.1 only) and
    the writer watches its inbox (paused is None)."""
    s = Sink()
    cfg = config.load(broker_host=mosquitto.host, broker_port=mosquitto.port, pole_id="ingest-v5")
    cfg.mqtt_version = 5
    s.ingest = MqttIngest(cfg, s)
    assert s.ingest.paused is None
    s.ingest.start()
    try:
        assert s.ingest.subscribed.wait(10), "the ingest did not subscribe at the broker"
        publish_burst(mosquitto, 300)
        assert wait_for(lambda: s.count() >= 300, 10), s.count()
        assert sorted(s.got) == sorted(b"%08d" % i + b"x" * 90 for i in range(300))
    finally:
        s.ingest.stop()


def stored_in(a):
    return a.store.db.execute("SELECT count(*) FROM messages").fetchone()[0]


def test_the_writer_commits_once_the_ingest_finds_the_stream_paused_not_at_its_deadline(tmp_path):
    """A group closes at ingest.group_commit_ms, or as soon as the ingest says nothing came while it
    gathered."""
    from openpole.edge_agent.agent import Agent

    class Paused:
        def __init__(self, cfg, deliver):
            self.paused = threading.Event()
            self.acked = []

        def ack_group(self, items, node_acks=None):
            self.acked.append(time.monotonic())

        def start(self):
            pass

        def stop(self):
            pass

    cfg = config.load(broker_host="127.0.0.1", broker_port=1, pole_id="pause", upstream="http://127.0.0.1:1",
                      state_dir=tmp_path, metrics_port=0)
    cfg.group_commit_ms = 100
    a = Agent(cfg, sink=None, ingest_factory=Paused)
    a.start()
    try:
        message = cbor2.dumps({0: 1, 1: "p1", 2: 1, 3: 0, 4: [[0, {1: 20.0}]], 5: {}})
        t0 = time.monotonic()
        a._deliver("openpole/v1/p1/data", message, 1, 1)  # the stream has not paused: the group waits
        assert wait_for(lambda: a.ingest.acked, 2)
        assert a.ingest.acked[0] - t0 >= 0.09
        a.ingest.paused.set()
        t0 = time.monotonic()
        a._deliver("openpole/v1/p1/data", cbor2.dumps({**cbor2.loads(message), 3: 1}), 2, 1)
        assert wait_for(lambda: len(a.ingest.acked) == 2, 2)
        assert a.ingest.acked[1] - t0 < 0.05
        assert stored_in(a) == 2
    finally:
        a.stop()


def test_a_quiet_poles_message_is_acked_once_the_stream_pauses_not_a_group_window_later(tmp_path, mosquitto):
    """A pole's dozen nodes send a message now and then: each is alone in its group. The ingest
    gathers for ingest.group_commit_idle_ms, finds nothing more and the writer commits then, not
    at the end of the group window (100 ms here)."""
    from openpole.edge_agent.agent import Agent

    cfg = config.load(broker_host=mosquitto.host, broker_port=mosquitto.port, pole_id="quiet", upstream="http://127.0.0.1:1",
                      state_dir=tmp_path / "edge", metrics_port=0)
    cfg.group_commit_ms = 100
    a = Agent(cfg, sink=None)
    a.start()
    try:
        assert a.ingest.subscribed.wait(10), "the agent did not subscribe"
        for seq in range(5):
            publish_all(mosquitto, [("openpole/v1/q1/data", cbor2.dumps({0: 1, 1: "q1", 2: 1, 3: seq, 4: [[0, {1: 20.0}]], 5: {}}))])
            assert wait_for(lambda: stored_in(a) == seq + 1, 5)
            time.sleep(0.2)
        buckets = dict((le, n) for le, n in a.ack_latency.snapshot()["buckets"])
        assert buckets["+Inf"] == 5 and buckets[0.05] >= 3, buckets  # most well inside the 100 ms window
    finally:
        a.stop()
