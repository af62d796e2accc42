# The MQTT client's start-up and connect (transport.py): its fields, name lookup, a non-blocking TCP
# connect, TLS, CONNECT, the CONNACK and the subscriptions, and the goodbye. Transport loads this
# module for its set-up, ensure() while the link is down, and lets it go once it is up: a node that
# is connected does not hold this code.
import errno
import select
import socket
import struct
import time

from transport import CONNECTING, DOWN, UP, WAIT_CONNACK, _packet, _str

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_IPPROTO_TCP = const(6)  # lwIP and Linux
_TCP_NODELAY = const(1)  # QoS 1 on loopback: 44-88 ms per publish without, 0.1 ms with
_HANDSHAKE_MAX_MS = const(5000)  # an ESP32 does an EC P-256 handshake in about a second
_BACKOFF_MAX_MS = const(60000)
_CONNACK_CODES = ("accepted", "unacceptable protocol version", "client id rejected", "server unavailable",
                  "bad user name or password", "not authorised")


def setup(t, client_id, host, port=1883, user=None, password=None, keepalive_s=60, timeout_s=10, subscribe=(),
          backoff_max_ms=_BACKOFF_MAX_MS, window=8, rx_bytes=512, resolve=None, tls=None, will=None):
    """Transport t's fields. will: (topic, message) the broker publishes when t goes silent."""
    t.client_id = client_id
    t.broker = (host, port)
    t.user, t.password = user, password
    t.keepalive_s = keepalive_s
    t.timeout_ms = int(timeout_s * 1000)  # TCP connect + CONNACK, and a PINGRESP: fits Wi-Fi power save
    t.topics = subscribe
    t.backoff_max_ms = backoff_max_ms
    t.window = window
    t.resolve = resolve  # the node gives one that holds the watchdog; None: socket.getaddrinfo
    t.tls = tls  # None: plain TCP; else (socket, host) -> TLS socket (brokertls.Wrap)
    t.will = will
    t.on_message = None  # (topic bytes, payload bytes): called from poll(), never inside a write
    t.on_puback = None  # (packet id): the broker has a QoS 1 publish; PUBACKs come in order
    t.on_connect = None
    t.addr = None
    t.fails_in_row = 0
    t.sock = None
    t.poller = None
    t.conn = None  # this module while the link is down
    t.state = DOWN
    t.connected = False  # state == UP, kept as a field: the loop asks every tick
    t.deadline = 0
    t.rx = bytearray(rx_bytes)
    t.rxn = 0
    t.skip = 0  # bytes of an oversized incoming packet still to drop
    t.pid = 0
    t.unacked = []  # packet ids published at QoS 1 and not yet PUBACKed by the broker
    t.backoff_ms = 0
    t.failed_at = None  # ticks of the last failure; the next try waits `wait_ms` after it
    t.wait_ms = 0
    t.last_out = time.ticks_ms()
    t.written = 0  # bytes _send() wrote (a streamed payload's check)
    t.ping_sent = None
    t.errors = 0
    t.oversized = 0
    t.last_error = None


def close(t):
    if t.state == UP:
        try:
            t._send(b"\xe0\x00")
        except OSError:
            pass
    if t.sock is not None:
        try:
            t.sock.close()
        except OSError:
            pass
    t.sock = None
    t.state = DOWN
    t.connected = False


def step(t):
    """One non-blocking step of Transport t towards a connection."""
    now = time.ticks_ms()
    try:
        if t.state == DOWN:  # (Transport.ensure waited out the backoff)
            _start(t, now)
        if t.state == CONNECTING:
            for _, ev in t.poller.ipoll(0):
                if ev & (select.POLLERR | select.POLLHUP):
                    raise OSError(errno.ECONNREFUSED)
                if ev & select.POLLOUT:
                    if t.tls:
                        t.sock = t.tls(t.sock, t.broker[0])
                    # A TLS handshake runs inside this first write: give it the connect's time,
                    # but never as long as the node's 8 s watchdog.
                    left = max(0, time.ticks_diff(t.deadline, now))
                    t._send(_connect_packet(t), min(_HANDSHAKE_MAX_MS, left))
                    t.state = WAIT_CONNACK
        if t.state == WAIT_CONNACK:
            t._read()  # a CONNACK comes back here, to connack()
        if t.state != UP and time.ticks_diff(now, t.deadline) > 0:
            raise OSError(errno.ETIMEDOUT)
    except (OSError, ValueError, MemoryError) as e:  # a heap too full for a step: a failed attempt too
        t._failed("connect", e)


def _start(t, now):
    if t.addr is None:
        t.addr = (t.resolve or socket.getaddrinfo)(*t.broker)[0][-1]
    s = socket.socket()
    t.sock = s
    s.setblocking(False)
    try:
        s.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
    except OSError:
        pass  # a stack without the option still works, slower
    try:
        s.connect(t.addr)
    except OSError as e:
        if e.args[0] not in (errno.EINPROGRESS, errno.EAGAIN):
            raise
    t.poller = select.poll()
    t.poller.register(s, select.POLLOUT)
    t.state = CONNECTING
    t.deadline = time.ticks_add(now, t.timeout_ms)


def _connect_packet(t):
    flags = 0x02  # clean session: the node keeps its own queue
    body = bytearray(b"\x00\x04MQTT\x04\x00")
    body.extend(struct.pack(">H", t.keepalive_s))
    _str(body, t.client_id)
    if t.will:
        flags |= 0x04 | 0x08 | 0x20  # will, QoS 1, retained
        _str(body, t.will[0])
        _str(body, t.will[1])
    if t.user:
        flags |= 0x80
        _str(body, t.user)
        if t.password:
            flags |= 0x40
            _str(body, t.password)
    body[7] = flags
    return _packet(0x10, body)


def connack(t, code):
    """The broker's CONNACK: up, subscribed, and the node told; or refused, with its reason."""
    if code:
        raise ValueError("broker refused: %s" % (_CONNACK_CODES[code] if code < 6 else code))
    t.state = UP
    t.connected = True
    t.fails_in_row = 0
    t.backoff_ms = 0
    t.failed_at = None
    if t.topics:
        t.pid = t.pid % 65535 + 1
        body = bytearray(struct.pack(">H", t.pid))
        for topic in t.topics:
            _str(body, topic)
            body.append(0)  # QoS 0: a lost command or ack is asked again, never queued for a node
        t._send(_packet(0x82, body))
    if t.on_connect:
        t.on_connect()


def reason(e):
    """A failure in words, for last_error (the diag, the log)."""
    if isinstance(e, MemoryError):
        return "out of heap"
    if isinstance(e, OSError) and e.args and isinstance(e.args[0], int):
        return {errno.ECONNREFUSED: "connection refused", errno.ETIMEDOUT: "timed out",
                errno.ECONNRESET: "connection closed by the broker", errno.EHOSTUNREACH: "host unreachable"}.get(
            e.args[0], "OSError %d" % e.args[0])
    return str(e)
