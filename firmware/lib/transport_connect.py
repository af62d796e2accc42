# The MQTT client's connect (transport.py): name lookup, a non-blocking TCP connect, TLS, CONNECT,
# the CONNACK and the subscriptions. Transport.ensure() loads this module while the link is down
# and lets it go once it is up: a node that is connected does not hold this code.
import errno
import select
import socket
import struct
import time

from transport import CONNECTING, DOWN, UP, WAIT_CONNACK, _packet, _reason, _str

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_IPPROTO_TCP = const(6)  # lwIP and Linux
_TCP_NODELAY = const(1)  # QoS 1 on loopback: 44-88 ms per publish without, 0.1 ms with
_HANDSHAKE_MAX_MS = const(5000)  # an ESP32 does an EC P-256 handshake in about a second
_CONNACK_CODES = ("accepted", "unacceptable protocol version", "client id rejected", "server unavailable",
                  "bad user name or password", "not authorised")


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
                        t.sock = t.tls(t.sock, t.host)
                    # A TLS handshake runs inside this first write: give it the connect's time,
                    # but never as long as the node's 8 s watchdog.
                    left = max(0, time.ticks_diff(t.deadline, now))
                    t._send(_connect_packet(t), min(_HANDSHAKE_MAX_MS, left))
                    t.state = WAIT_CONNACK
        if t.state == WAIT_CONNACK:
            t._read()  # a CONNACK comes back here, to connack()
        if t.state != UP and time.ticks_diff(now, t.deadline) > 0:
            raise OSError(errno.ETIMEDOUT)
    except (OSError, ValueError) as e:
        t._failed("connect: %s" % _reason(e))


def _start(t, now):
    if t.addr is None:
        t.addr = (t.resolve or socket.getaddrinfo)(t.host, t.port)[0][-1]
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
    t.fails_in_row = 0
    t.backoff_ms = 0
    t.failed_at = None
    if t.topics:
        body = bytearray(struct.pack(">H", t._next_pid()))
        for topic in t.topics:
            _str(body, topic)
            body.append(0)  # QoS 0: a lost command or ack is asked again, never queued for a node
        t._send(_packet(0x82, body))
    if t.on_connect:
        t.on_connect()
