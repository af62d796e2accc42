# MQTT 3.1.1 for the node (OASIS mqtt-v3.1.1-os), written for a pole: QoS 0 and 1, non-blocking from
# the TCP connect to the CONNACK, a bounded window of publishes awaiting PUBACK, DUP on a re-send,
# keepalive pings, reconnects with backoff and jitter. Why not the firmware's umqtt.simple: each
# stock firmware freezes another release (1.4.0 in v1.24, 1.6.0 in v1.25/1.26, 1.7.0 in v1.27/1.28)
# with another socket surface, and every release blocks on connect and on each PUBACK, which stalls
# the 10 ms audio loop. This client uses only the socket calls listed in SOCKET_CALLS.
import errno
import random
import struct
import sys
import time

try:
    from micropython import const
except ImportError:  # CPython (the host's tests and tools)

    def const(x):
        return x


_BACKOFF_MIN_MS = const(500)
_RESOLVE_AFTER = const(3)  # failed connects in a row before the broker's name is looked up again
DOWN, CONNECTING, WAIT_CONNACK, UP = 0, 1, 2, 3
# What this client calls on a socket: a test checks it against a fake socket with only these.
SOCKET_CALLS = ("setblocking", "setsockopt", "connect", "write", "readinto", "close")


def since(t0, ms):
    """True once ms have passed since ticks t0 (or t0 is None). A span that wrapped past half the
    ticks period (about 3 days on an ESP32) counts as passed: a stale timer never waits days."""
    if t0 is None:
        return True
    d = time.ticks_diff(time.ticks_ms(), t0)
    return d < 0 or d >= ms


def _str(out, s):
    if isinstance(s, str):
        s = s.encode()
    out.extend(struct.pack(">H", len(s)))
    out.extend(s)


def _packet(first, body, more=0):
    """Fixed header (type and flags, remaining length as a varint) + body; `more`: bytes that
    follow in writes of their own (a publish's payload is never copied into the packet)."""
    out = bytearray((first,))
    n = len(body) + more
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            break
    out.extend(body)
    return out


class Transport:
    def __init__(self, client_id, host, port=1883, **kw):
        """An MQTT client for client_id at host:port, not yet connected (ensure() connects). The
        rest (user, password, keepalive_s, timeout_s, subscribe, backoff_max_ms, window, rx_bytes,
        resolve, tls, will) is set by transport_connect.setup(), loaded for it: start-up code the
        running node does not keep."""
        _connect().setup(self, client_id, host, port, **kw)

    def _failed(self, why, e=None):
        """The connection is gone: why ("connect", "publish", "link") and e, the exception (put in
        words by transport_connect.reason(), loaded for it: a reconnect loads it anyway)."""
        self.errors += 1
        self.fails_in_row += 1
        if e is None:
            self.last_error = why
        else:
            try:
                self.last_error = "%s: %s" % (why, (self.conn or _connect()).reason(e))
            except MemoryError:
                self.last_error = why  # no room for the words: where it failed, allocating nothing
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = self.poller = None
        self.state = DOWN
        self.connected = False
        self.rxn = self.skip = 0
        self.unacked = []
        self.ping_sent = None
        if self.fails_in_row >= _RESOLVE_AFTER:
            self.addr = None  # the broker may have moved: look its name up again
        # Exponential backoff with full jitter: many nodes on one pole must not reconnect in step.
        self.backoff_ms = min(self.backoff_max_ms, max(_BACKOFF_MIN_MS, self.backoff_ms * 2))
        self.wait_ms = random.getrandbits(16) % self.backoff_ms + 1
        self.failed_at = time.ticks_ms()

    def _send(self, buf, stall_ms=200):
        """Write a whole packet. The socket is non-blocking; a packet of a few hundred bytes fits
        the TCP send buffer, so a short write means the link is stuck: give it 200 ms, then fail."""
        mv = memoryview(buf)
        t0 = time.ticks_ms()
        while len(mv):
            n = self.sock.write(mv)
            if n:
                mv = mv[n:]
            elif time.ticks_diff(time.ticks_ms(), t0) > stall_ms:
                raise OSError(errno.ETIMEDOUT)
            else:
                time.sleep_ms(1)
        self.written += len(buf)
        self.last_out = time.ticks_ms()

    def ensure(self, on_connect=None):
        """One non-blocking step towards a connection; True when connected. The connect code
        (transport_connect.py) is loaded for an attempt and let go when it ends, so neither a
        connected node nor one waiting out its backoff holds it."""
        if self.state == UP:
            return True
        if on_connect is not None:
            self.on_connect = on_connect
        if self.state == DOWN and not since(self.failed_at, self.wait_ms):
            return False
        if self.conn is None:
            # Loading the connect code is a step of its own (a loop tick's work). A heap too full
            # for it is a failed attempt like any other: counted, and tried again after a backoff.
            try:
                self.conn = _connect()
            except MemoryError:
                self._failed("connect: out of heap")
            return False
        self.conn.step(self)
        if self.state in (UP, DOWN):
            self.conn = None
        return self.state == UP

    def publish(self, topic, payload, qos=1, retain=False, dup=False, length=None):
        """Send one PUBLISH without waiting; True when written. At QoS 1 the broker's PUBACK is
        taken in by poll(); at most `window` wait for it. payload: bytes; a list of bytes written
        one after another; or a function given a write function, which writes exactly `length`
        bytes (a large report goes out as it is made, never whole in the heap)."""
        if self.state != UP or qos and len(self.unacked) >= self.window:
            return False
        if not callable(payload):
            parts = payload if isinstance(payload, list) else (payload,)
            length = sum(len(p) for p in parts)
        body = bytearray()
        _str(body, topic)
        if qos:
            pid = self.pid = self.pid % 65535 + 1  # 1..65535: 0 is not a packet id
            body.extend(struct.pack(">H", pid))
        try:
            self._send(_packet(0x30 | (0x08 if dup else 0) | qos << 1 | (1 if retain else 0), body, length))
            if callable(payload):
                self.written = 0
                payload(self._send)
                if self.written != length:  # the stream would be out of step: start a new connection
                    raise OSError("payload of %d bytes, %d announced" % (self.written, length))
            else:
                for p in parts:
                    self._send(p)
        except (OSError, MemoryError) as e:  # a packet cut short: the connection cannot go on
            self._failed("publish", e)
            return False
        if qos:
            self.unacked.append(pid)
        return True

    def poll(self):
        """Take in what the broker sent (PUBACKs, messages, PINGRESP); ping when idle. Never blocks."""
        if self.state != UP:
            return
        try:
            self._read()
            now = time.ticks_ms()
            if self.ping_sent is not None:
                if time.ticks_diff(now, self.ping_sent) > max(self.timeout_ms, self.keepalive_s * 500):
                    raise OSError(errno.ETIMEDOUT)
            elif time.ticks_diff(now, self.last_out) > self.keepalive_s * 500:
                self._send(b"\xc0\x00")
                self.ping_sent = now
        except (OSError, ValueError) as e:
            self._failed("link", e)

    def _read(self):
        while True:
            n = self.sock.readinto(memoryview(self.rx)[self.rxn:]) if self.rxn < len(self.rx) else 0
            if n is None:
                return  # nothing more for now
            if n == 0 and self.rxn < len(self.rx):
                raise OSError(errno.ECONNRESET)  # the broker closed the connection
            self.rxn += n
            self._packets()

    def _packets(self):
        rx = self.rx
        while self.rxn:
            if self.skip:
                k = min(self.skip, self.rxn)
                rx[0 : self.rxn - k] = rx[k : self.rxn]  # dropped: the rest moves to the front
                self.rxn -= k
                self.skip -= k
                continue
            length, i, mult = 0, 1, 1
            while True:
                if i >= self.rxn:
                    return  # the length is not all here yet
                b = rx[i]
                length += (b & 0x7F) * mult
                mult <<= 7
                i += 1
                if not b & 0x80:
                    break
                if i > 4:
                    raise ValueError("malformed packet length")
            if i + length > len(rx):
                self.oversized += 1  # a message larger than the node takes: dropped, counted
                self.skip = i + length
                continue
            if i + length > self.rxn:
                return
            self._handle(rx[0], i, length)
            k = i + length
            rx[0 : self.rxn - k] = rx[k : self.rxn]  # taken in: the rest moves to the front
            self.rxn -= k

    def _handle(self, first, i, length):
        rx = self.rx
        kind = first & 0xF0
        if kind == 0x20:  # CONNACK
            if self.conn is not None:  # else not asked for: ignored
                self.conn.connack(self, rx[i + 1])
        elif kind == 0x40:  # PUBACK
            pid = (rx[i] << 8) | rx[i + 1]
            if pid in self.unacked:
                self.unacked.remove(pid)
                if self.on_puback:
                    self.on_puback(pid)
        elif kind == 0xD0:  # PINGRESP
            self.ping_sent = None
        elif kind == 0x30:  # PUBLISH to us (commands, acks of the pole)
            qos = (first >> 1) & 3
            tl = (rx[i] << 8) | rx[i + 1]
            p = i + 2 + tl
            topic = bytes(rx[i + 2 : p])
            if qos:
                pid = (rx[p] << 8) | rx[p + 1]
                p += 2
                self._send(struct.pack(">BBH", 0x40, 2, pid))
            if self.on_message:
                self.on_message(topic, bytes(rx[p : i + length]))
        # SUBACK and anything else: nothing to do

    def close(self):
        """Say goodbye to the broker (DISCONNECT) and close the socket."""
        _connect().close(self)


def _connect():
    """The connect code (transport_connect.py), loaded for the moment and not kept in sys.modules."""
    try:
        return __import__("transport_connect")
    finally:
        sys.modules.pop("transport_connect", None)  # a module half-loaded goes too
