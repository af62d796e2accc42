"""MQTT ingest: a fixed client id and a persistent session, QoS 1, manual acknowledgement.

paho-mqtt 2.x with manual_ack=True: the PUBACK for a node message is sent by ack() only after the
writer has committed it. A broker stops sending at its in-flight limit (max_inflight_messages:
20 per client by default in Mosquitto) while acks wait for a group commit: the pole's broker
config raises it, and the writer commits early when the stream pauses. A persistent session keeps
the subscription and the queue across reconnects. MQTT v5 (ingest.mqtt_version = 5) asks for the
window itself (Receive Maximum), at a price in CPU: paho builds a Properties object per message.
"""

import logging
import select
import ssl
import struct
import threading
import time

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from openpole.wire.batch import cbor_uint

_PUBACK = struct.Struct("!BBH").pack
ACK_TOPIC = "openpole/v1/{}/ack"
ACK_HEADS_MAX = 4096  # ack topics kept encoded; past that (made-up node ids) each is encoded again

DATA_TOPIC = "openpole/v1/+/data"
# QoS 0, for the pole's page and status: each node's diag reports and command replies, and its
# retained online/offline (the last will says offline).
SIDE_TOPICS = ("openpole/v1/+/diag", "openpole/v1/+/status")
CMD_TOPIC = "openpole/v1/{}/cmd"
# Over-the-air updates (edge_agent/ota.py): the nodes' chunk requests (QoS 0: a node asks again) and
# their reports (QoS 1, acknowledged once the job's state is on disk).
OTA_TOPICS = (("openpole/v1/+/ota/get", 0), ("openpole/v1/+/ota/report", 1))
log = logging.getLogger("openpole.edge.ingest")


class _ReadAheadClient(mqtt.Client):
    """paho reads each packet with three recv() calls (command, length, body), one packet per
    select() wake-up, and builds an MQTTMessage through several layers: at thousands of messages a
    second its network thread cost more than the agent's own work. This reads the socket 64 KB at
    a time, before paho does; the QoS 0/1 PUBLISH packets complete in that buffer are parsed here
    (MQTT 3.1.1 section 3.3) and handed to on_parsed, not on_message (no MQTTMessage is built, and
    the callback lock is taken once a read, not once a packet); every other packet, a partial one and
    anything v5 or TLS goes to paho as before, through the same buffer. After a short read the
    thread waits gather_s before its next select(), so a trickle comes a few packets a wake-up, and
    when nothing came meanwhile it sets paused: the writer commits its group then.
    paho's private _sock_recv, _in_packet and locks are the seam: paho's minor version is pinned
    in pyproject.toml (2.2.*, the one tested)."""

    READ = 65536
    SMALL_READ = 4096  # a read this short is a trickle, not a burst

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._rbuf, self._rpos, self._rsock = b"", 0, None
        self.on_parsed = None  # on_parsed(topic, payload, mid, qos): the PUBLISH packets parsed here
        self.gather_s = 0.0  # after a short read, wait this long before the next select()
        # Set once a gather brought nothing: the stream paused (a broker at its in-flight limit looks
        # so until the agent acks), so the writer commits its group now instead of at its deadline.
        self.paused = threading.Event()
        self.paused.set()
        # Set by a publish from another thread that should not wait out a gather (an OTA chunk:
        # its node waits for it); readings' acks do not set it.
        self.wake = threading.Event()

    def _sock_recv(self, bufsize):
        if self._sock is not self._rsock:  # a new connection: nothing of the old one is kept
            self._rbuf, self._rpos, self._rsock = b"", 0, self._sock
        if isinstance(self._sock, ssl.SSLSocket):
            return super()._sock_recv(bufsize)
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(self.READ)  # BlockingIOError when there is nothing
            if not data:
                return data  # closed by the broker
            self._rbuf, self._rpos = data, 0
        end = self._rpos + bufsize
        out = self._rbuf[self._rpos:end]
        self._rpos = min(end, len(self._rbuf))
        return out

    def _publishes(self):
        """Deliver the complete QoS 0/1 PUBLISH packets at the head of the buffer to on_parsed."""
        buf, pos, end = self._rbuf, self._rpos, len(self._rbuf)
        start = pos
        deliver = self.on_parsed
        with self._in_callback_mutex:
            while pos + 2 <= end:
                cmd = buf[pos]
                if cmd & 0xF0 != 0x30 or cmd & 4:
                    break  # not a PUBLISH, or one at QoS 2 (or the invalid 3): paho's
                i = pos + 1
                length = buf[i]
                i += 1
                if length & 128:  # more than one byte of remaining length
                    length &= 127
                    mult, whole = 128, False
                    while i < end and i - pos <= 4:
                        b = buf[i]
                        length += (b & 127) * mult
                        mult *= 128
                        i += 1
                        if not b & 128:
                            whole = True
                            break
                    if not whole:
                        break  # the length is not all here (or is malformed): paho's
                last = i + length
                if last > end:
                    break  # the packet is not all here: paho finishes it
                tlen = buf[i] << 8 | buf[i + 1] if i + 2 <= last else last
                body = i + 2 + tlen
                if cmd & 2:  # QoS 1: a message id follows the topic
                    body += 2
                    if body > last:
                        break  # malformed: paho reports it
                    mid, qos = buf[body - 2] << 8 | buf[body - 1], 1
                elif body > last:
                    break
                else:
                    mid = qos = 0
                self._rpos = pos = last
                deliver(buf[i + 2: i + 2 + tlen].decode("utf-8", "replace"), buf[body:last], mid, qos)
        if pos != start:
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()  # what paho uses for keepalive

    def _handle_on_message(self, message):
        # The agent adds no per-topic callbacks: skip paho's walk of its topic matcher per message.
        with self._in_callback_mutex:
            self.on_message(self, self._userdata, message)

    def ack_many(self, mids, publishes=()):
        """PUBACK a group of QoS 1 messages (after their group commit), and send the QoS 0 PUBLISH
        packets `publishes`, as one write: paho queues and wakes its loop once per call, which per
        message costs the agent two system calls."""
        if mids or publishes:
            packet = b"".join([_PUBACK(0x40, 2, mid) for mid in mids] + list(publishes))
            self._packet_queue(mqtt.PUBACK, packet, 0, 0)

    def loop_read(self, max_packets=1):
        if self.on_parsed is None or self._protocol == mqtt.MQTTv5 or isinstance(self._sock, ssl.SSLSocket):
            while True:  # paho parses every packet, from the buffer
                rc = super().loop_read(max_packets)
                if rc != mqtt.MQTT_ERR_SUCCESS or self._sock is None or self._rpos >= len(self._rbuf):
                    return rc
        got = last = 0
        while True:
            if self._in_packet["command"] == 0:  # between packets: what the buffer holds is ours first
                if self._sock is not self._rsock:
                    self._rbuf, self._rpos, self._rsock = b"", 0, self._sock
                if self._rpos >= len(self._rbuf):
                    if got and last < self.READ:
                        break  # a short read emptied the socket: back to select()
                    try:
                        data = mqtt.Client._sock_recv(self, self.READ)
                    except BlockingIOError:
                        break
                    except OSError:
                        data = b""
                    if not data:  # paho meets the error or the end of the stream itself and reports it
                        return super().loop_read(max_packets)
                    self._rbuf, self._rpos, last = data, 0, len(data)
                    got += last
                    if self.paused.is_set():
                        self.paused.clear()
                self._publishes()
                if self._rpos >= len(self._rbuf):
                    continue
            # A packet that is not a PUBLISH we parse, or one the buffer holds only part of: paho's.
            rc = super().loop_read(max_packets)
            if rc != mqtt.MQTT_ERR_SUCCESS or self._sock is None or self._in_packet["command"] != 0:
                return rc
        if self.gather_s and 0 < got < self.SMALL_READ:
            # A trickle (1,000 nodes at 1 msg/s is a packet a millisecond): a wake-up per packet costs
            # the agent more than the packet. Let a few gather; the group commit waits longer anyway.
            if self.wake.wait(self.gather_s):
                self.wake.clear()
            try:
                quiet = not select.select([self._sock], [], [], 0)[0]
            except (OSError, ValueError, TypeError):  # closed meanwhile: nothing more comes on it
                quiet = True
            if quiet:
                self.paused.set()
        return mqtt.MQTT_ERR_SUCCESS


def _topic_head(topic, v5=False):
    """What a PUBLISH to topic at QoS 0 carries before its payload (MQTT 3.1.1 section 3.3.2; v5
    adds an empty property length)."""
    t = topic.encode()
    return struct.pack("!H", len(t)) + t + (b"\x00" if v5 else b"")


def _publish0(head, payload):
    """A QoS 0 PUBLISH packet: its topic's head (_topic_head), then the payload."""
    n = len(head) + len(payload)
    if n < 128:  # a node's ack: the remaining length fits one byte
        return b"\x30" + bytes((n,)) + head + payload
    length = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        length.append(b | 0x80 if n else b)
        if not n:
            return b"\x30" + bytes(length) + head + payload


def _runs(runs):
    """A node ack (sensor_specs/node_ack.cddl) in CBOR: one run, the common case, by hand."""
    if len(runs) != 1:
        return cbor2.dumps(runs)
    boot, first, last = runs[0]
    return b"\x81\x83" + cbor_uint(boot) + cbor_uint(first) + cbor_uint(last)


class MqttIngest:
    def __init__(self, cfg, deliver):
        self.deliver = deliver  # deliver(topic, payload, mid, qos), called on paho's thread
        self.on_side = None  # on_side(topic, payload) for SIDE_TOPICS, on paho's thread
        self.on_ota = None  # on_ota(topic, payload, mid, qos) -> True for an OTA topic (edge_agent/ota.py)
        self.connected = False
        self.subscribed = threading.Event()
        self.stopping = False
        self.v5 = cfg.mqtt_version == 5
        self.ack_heads = {}  # node -> _topic_head of its ack topic
        if self.v5:
            c = _ReadAheadClient(mqtt.CallbackAPIVersion.VERSION2, client_id=f"openpole-edge-{cfg.pole_id}",
                                 manual_ack=True, protocol=mqtt.MQTTv5)
            self.props = Properties(PacketTypes.CONNECT)
            self.props.SessionExpiryInterval = 7 * 86400  # the broker keeps our subscription and queue
            self.props.ReceiveMaximum = cfg.receive_maximum
        else:  # MQTT 3.1.1: a persistent session; the window is the broker's max_inflight_messages
            c = _ReadAheadClient(mqtt.CallbackAPIVersion.VERSION2, client_id=f"openpole-edge-{cfg.pole_id}",
                                 manual_ack=True, protocol=mqtt.MQTTv311, clean_session=False)
            self.props = None
        if cfg.broker_user:
            c.username_pw_set(cfg.broker_user, cfg.broker_password)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_parsed = self._on_publish
        # What the writer's idle close waits for: nothing arrived while the ingest gathered (paused).
        c.gather_s = cfg.group_commit_idle_ms / 1000
        self.paused = None if self.v5 else c.paused  # v5 goes through paho: the writer watches the inbox
        c.on_subscribe = self._on_subscribe
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        self.client = c
        self.host, self.port = cfg.broker_host, cfg.broker_port

    def _on_connect(self, client, userdata, flags, reason, properties):
        if reason.is_failure:
            log.warning("broker %s:%d refused the connection: %s", self.host, self.port, reason)
            return
        self.connected = True
        log.info("connected to broker %s:%d", self.host, self.port)
        client.subscribe([(DATA_TOPIC, 1)] + [(t, 0) for t in SIDE_TOPICS] + list(OTA_TOPICS))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.subscribed.set()  # the broker holds our subscription: what is published now reaches us

    def _on_disconnect(self, client, userdata, flags, reason, properties):
        self.connected = False
        if self.stopping:
            return
        log.warning("disconnected from broker %s:%d (%s); reconnecting", self.host, self.port, reason)

    def _on_message(self, client, userdata, msg):
        self._on_publish(msg.topic, msg.payload, msg.mid, msg.qos)

    def _on_publish(self, topic, payload, mid, qos):
        if topic.endswith("/data"):
            self.deliver(topic, payload, mid, qos)
        elif self.on_ota is not None and self.on_ota(topic, payload, mid, qos):
            pass
        elif self.on_side is not None:
            try:
                self.on_side(topic, bytes(payload))
            except Exception:  # a report the page cannot read must not stop the ingest
                log.exception("report on %s could not be read", topic)

    def command(self, node, payload):
        """Publish a command to a node's cmd topic (QoS 1); False when the broker is not connected."""
        if not self.connected:
            return False
        return self.client.publish(CMD_TOPIC.format(node), payload, qos=1).rc == mqtt.MQTT_ERR_SUCCESS

    def publish(self, topic, payload, qos=0):
        """Publish to a node (an OTA ticket, chunk or cancel); False when the broker is not connected."""
        if not self.connected:
            return False
        ok = self.client.publish(topic, payload, qos=qos).rc == mqtt.MQTT_ERR_SUCCESS
        self.client.wake.set()  # out now, not after the network thread's gather
        return ok

    def ack(self, mid):
        """PUBACK one QoS 1 message handled off the writer's path (an OTA report)."""
        self.client.ack_many([mid])

    def ack_group(self, items, node_acks=None):
        """items: (mid, qos) of the messages of one group commit, in the order they arrived;
        node_acks: {node: runs} for the nodes' ack topics (QoS 0: a lost one is asked again by the
        node's re-send). Both go after the commit, in one write."""
        heads = self.ack_heads
        pubs = []
        for node, runs in (node_acks or {}).items():
            head = heads.get(node)
            if head is None:
                head = _topic_head(ACK_TOPIC.format(node), self.v5)
                if len(heads) < ACK_HEADS_MAX:
                    heads[node] = head
            pubs.append(_publish0(head, _runs(runs)))
        self.client.ack_many([mid for mid, qos in items if qos == 1], pubs)

    def start(self):
        if self.v5:
            self.client.connect_async(self.host, self.port, keepalive=30, clean_start=False, properties=self.props)
        else:
            self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self):
        self.stopping = True
        self.client.disconnect()
        self.client.loop_stop()
