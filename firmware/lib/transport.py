# MQTT for the node: umqtt.simple (frozen into the stock ESP32 firmware) made safe for a pole.
# umqtt.simple waits for PUBACK with no timeout, resets its socket to blocking after every read,
# sends no PINGREQ by itself, and old releases overflow the packet id after 65535 publishes.
# This wrapper gives it a socket with a timeout that stays set, TCP_NODELAY (QoS 1 on loopback:
# 44-88 ms without, 0.1 ms with), keepalive pings, and reconnects with backoff and jitter.
import random
import socket
import time

import umqtt.simple as _umqtt

_IPPROTO_TCP = 6  # lwIP and Linux
_TCP_NODELAY = 1
_BACKOFF_MIN_MS = 500
_BACKOFF_MAX_MS = 60000


class _TimedSocket:
    """A socket whose timeout survives umqtt's setblocking(True)."""

    def __init__(self, sock, timeout_s):
        self.s = sock
        self.timeout = timeout_s
        self.blocking = True
        sock.settimeout(timeout_s)
        try:
            sock.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
        except OSError:
            pass  # not every stack lets it be set before connect; the write path still works

    def connect(self, addr):
        self.s.connect(addr)

    def read(self, n):
        data = self.s.read(n)
        if data is None and self.blocking:
            raise OSError(110)  # ETIMEDOUT: umqtt would index into None
        return data

    def write(self, buf, n=None):
        return self.s.write(buf) if n is None else self.s.write(buf, n)

    def setblocking(self, flag):
        self.blocking = flag
        self.s.settimeout(self.timeout if flag else 0)

    def close(self):
        self.s.close()


class _SocketModule:
    """Stands in for umqtt.simple's `socket` module name: same calls, timed sockets."""

    def __init__(self, timeout_s):
        self.timeout = timeout_s

    def getaddrinfo(self, *args):
        return socket.getaddrinfo(*args)

    def socket(self, *args):
        return _TimedSocket(socket.socket(*args), self.timeout)


class Transport:
    def __init__(self, client_id, host, port=1883, user=None, password=None, keepalive_s=60, timeout_s=5, cmd_topic=None,
                 backoff_max_ms=_BACKOFF_MAX_MS):
        _umqtt.socket = _SocketModule(timeout_s)
        self.client = _umqtt.MQTTClient(client_id, host, port, user=user, password=password, keepalive=keepalive_s)
        self.cmd_topic = cmd_topic
        self.commands = []  # received command payloads, run by the node loop (never inside a read)
        self.client.set_callback(self._on_message)
        self.keepalive_ms = keepalive_s * 1000
        self.backoff_max_ms = backoff_max_ms
        self.connected = False
        self.backoff_ms = 0
        self.next_try = time.ticks_ms()
        self.last_io = time.ticks_ms()
        self.errors = 0
        self.last_error = None

    def _on_message(self, topic, msg):
        if len(self.commands) < 4:
            self.commands.append(msg)

    def set_last_will(self, topic, msg):
        self.client.set_last_will(topic, msg, retain=True, qos=1)

    def _failed(self, e):
        self.errors += 1
        self.last_error = repr(e)
        self.connected = False
        try:
            self.client.sock.close()
        except Exception:
            pass
        # Exponential backoff with full jitter: many nodes on one pole must not reconnect in step.
        self.backoff_ms = min(self.backoff_max_ms, max(_BACKOFF_MIN_MS, self.backoff_ms * 2))
        self.next_try = time.ticks_add(time.ticks_ms(), random.getrandbits(16) % self.backoff_ms + 1)

    def ensure(self, on_connect=None):
        """Connect when down and the backoff allows; True when connected."""
        if self.connected:
            return True
        if time.ticks_diff(self.next_try, time.ticks_ms()) > 0:
            return False
        try:
            self.client.connect(clean_session=True)
            if self.cmd_topic:
                self.client.subscribe(self.cmd_topic, qos=0)
            self.connected = True
            self.backoff_ms = 0
            self.last_io = time.ticks_ms()
            if on_connect:
                on_connect()
        except Exception as e:  # OSError, MQTTException, umqtt's asserts on a bad CONNACK
            self._failed(e)
        return self.connected

    def publish(self, topic, payload, qos=1, retain=False):
        """Publish and, at QoS 1, wait (bounded) for PUBACK. False when the link failed."""
        if not self.connected:
            return False
        c = self.client
        if c.pid >= 65535:
            c.pid = 0
        try:
            c.publish(topic, payload, retain=retain, qos=qos)
            self.last_io = time.ticks_ms()
            return True
        except Exception as e:
            self._failed(e)
            return False

    def poll(self):
        """Take in commands; keep the connection alive: ping when idle for half the keepalive."""
        if not self.connected:
            return
        try:
            if time.ticks_diff(time.ticks_ms(), self.last_io) > self.keepalive_ms // 2:
                self.client.ping()
                self.last_io = time.ticks_ms()
            self.client.check_msg()  # a command or the PINGRESP, if one is waiting
        except Exception as e:
            self._failed(e)

    def close(self):
        if self.connected:
            try:
                self.client.disconnect()
            except Exception:
                pass
        self.connected = False
