"""Where batches go upstream. SINKS maps a URL scheme to a sink class; each sink's send(batch_id,
body) returns normally once the upstream acknowledged, raises Transient (retry) or Permanent."""

import gzip
import urllib.error
import urllib.request


class Transient(Exception):
    """Worth retrying: network down, timeout, 5xx, 429."""


class Permanent(Exception):
    """Retrying will not help: the upstream refused this batch (4xx)."""


class HttpSink:
    def __init__(self, url, timeout_s=10.0, token=None, compress=False, **_):
        self.url = url.rstrip("/") + "/v1/batches"
        self.timeout = timeout_s
        self.token = token
        self.compress = compress

    def send(self, batch_id, body):
        if self.compress:
            body = gzip.compress(body, compresslevel=6)
        req = urllib.request.Request(self.url, data=body, method="POST")
        req.add_header("Content-Type", "application/cbor")
        if self.compress:
            req.add_header("Content-Encoding", "gzip")
        req.add_header("Idempotency-Key", batch_id.hex())
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                r.read()
        except urllib.error.HTTPError as e:
            if e.code == 429 or e.code >= 500:
                raise Transient(f"upstream answered {e.code}") from None
            raise Permanent(f"upstream refused the batch: {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise Transient(f"upstream unreachable: {getattr(e, 'reason', e)}") from None

    def describe(self):
        return self.url


class MqttSink:
    """mqtt://HOST:PORT/PREFIX: each batch is published at QoS 1 to PREFIX/<pole>/batches on the
    city's broker (or cluster); its PUBACK is the acknowledgement. Batch ids let the consumer
    de-duplicate a batch re-sent after a lost PUBACK."""

    def __init__(self, url, timeout_s=10.0, pole="pole", **_):
        import urllib.parse

        import paho.mqtt.client as mqtt

        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 1883
        self.topic = f"{(u.path.strip('/') or 'openpole')}/{pole}/batches"
        self.timeout = timeout_s
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"openpole-uplink-{pole}")
        if u.username:
            self.client.username_pw_set(u.username, u.password)
        self.client.reconnect_delay_set(1, 30)
        self.started = False

    def send(self, batch_id, body):
        if not self.started:
            try:
                self.client.connect(self.host, self.port, keepalive=30)
            except OSError as e:
                raise Transient(f"upstream broker {self.host}:{self.port} unreachable: {e}") from None
            self.client.loop_start()
            self.started = True
        info = self.client.publish(self.topic, body, qos=1)
        try:
            info.wait_for_publish(self.timeout)
        except (RuntimeError, ValueError) as e:  # paho: not connected, or the queue is full
            raise Transient(f"upstream broker {self.host}:{self.port}: {e}") from None
        if not info.is_published():
            raise Transient(f"upstream broker {self.host}:{self.port} did not acknowledge in {self.timeout:.0f} s")

    def describe(self):
        return f"mqtt://{self.host}:{self.port}/{self.topic}"


SINKS = {"http": HttpSink, "https": HttpSink, "mqtt": MqttSink}


def sink_for(url, **kw):
    from openpole.errors import UserError

    scheme = url.split(":", 1)[0].lower()
    if scheme not in SINKS:
        raise UserError(f"upstream {url!r}: the scheme must be one of {', '.join(SINKS)}")
    return SINKS[scheme](url, **kw)
