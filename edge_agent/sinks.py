"""Where batches go upstream. SINKS maps a URL scheme to a sink class; each sink's send(batch_id,
body) returns normally once the upstream acknowledged, raises Transient (retry) or Permanent."""

import gzip
import json
import urllib.error
import urllib.request


class Transient(Exception):
    """Worth retrying, as an alarm: network down, timeout, 5xx, 429, and 401/403/404 (a credential
    or URL the city will fix: emptying the queue into quarantine would lose the data meanwhile)."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


class Permanent(Exception):
    """Retrying will not help: the upstream refused this batch's content (400, 422)."""


class TooLarge(Exception):
    """413: the batch is too large for the upstream; smaller ones may pass."""


PERMANENT = (400, 422)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # a 3xx then comes back as an HTTPError: a captive portal's 200 is no delivery


_opener = urllib.request.build_opener(_NoRedirects)


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
            with _opener.open(req, timeout=self.timeout) as r:
                answer = r.read(65536)
        except urllib.error.HTTPError as e:
            if e.code in PERMANENT:
                raise Permanent(f"upstream refused the batch: {e.code} {e.reason}") from None
            if e.code == 413:
                raise TooLarge(f"upstream: batch of {len(body)} bytes too large (413)") from None
            if 300 <= e.code < 400:
                raise Transient(f"upstream redirected ({e.code}) to {e.headers.get('Location')}: check the upstream URL "
                                f"(a captive portal or a moved receiver)", e.code) from None
            raise Transient(f"upstream answered {e.code} {e.reason}", e.code) from None
        except (urllib.error.URLError, OSError) as e:
            raise Transient(f"upstream unreachable: {getattr(e, 'reason', e)}") from None
        # Delivered only when the answer names the batch: a proxy or portal that says 200 to
        # anything would otherwise empty the queue.
        try:
            echoed = json.loads(answer).get("batch")
        except (ValueError, AttributeError):
            echoed = None
        if echoed != batch_id.hex():
            raise Transient(f"upstream answered {r.status} without this batch's id: not counted as delivered", r.status)

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
