"""Where batches go upstream. SINKS maps a URL scheme to a sink class; each sink's send(batch_id,
body) returns normally once the upstream acknowledged (a dict with "duplicate": True when the
upstream already held the batch), raises Transient (retry), TooLarge or Permanent."""

import gzip
import json
import urllib.error
import urllib.request

from openpole.common import redact_url


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
        import base64
        import urllib.parse

        # A user and password in the URL are sent as HTTP Basic auth (urllib would take them for
        # the host), and kept out of the URL every message and page shows.
        u = urllib.parse.urlsplit(url)
        self.auth = None
        if u.username is not None:
            creds = f"{urllib.parse.unquote(u.username)}:{urllib.parse.unquote(u.password or '')}"
            self.auth = "Basic " + base64.b64encode(creds.encode()).decode()
            url = urllib.parse.urlunsplit(u._replace(netloc=u.netloc.rpartition("@")[2]))
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
        elif self.auth:
            req.add_header("Authorization", self.auth)
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
        return redact_url(self.url.replace("//", "//***@", 1) if self.auth else self.url)


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


class NatsSink:
    """nats://a:4222,nats://b:4222: each batch is published to openpole.batches.<pole> on the city's
    JetStream stream (made by `openpole city init`) with the batch id as Nats-Msg-Id. The stream's
    publish ack (stream, sequence) is the acknowledgement; a re-sent batch inside the stream's
    duplicate window comes back acked as a duplicate and is stored once. Several servers are
    listed for failover. nats-py is asyncio: its loop runs on a thread of this sink's own."""

    SUBJECT = "openpole.batches.{pole}"

    def __init__(self, url, timeout_s=10.0, pole="pole", nats_user=None, nats_password=None, nats_creds=None,
                 nats_tls_ca=None, **_):
        import asyncio
        import threading

        self.servers = [s.strip() for s in url.split(",") if s.strip()]
        self.subject = self.SUBJECT.format(pole=pole)
        self.timeout = timeout_s
        self.options = {"user": nats_user, "password": nats_password, "user_credentials": nats_creds}
        self.tls_ca = nats_tls_ca
        self.duplicates = 0  # batches the stream already held (a re-send after a lost ack)
        self.last_ack = None  # (stream, sequence) of the last batch acknowledged
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="openpole-nats", daemon=True).start()
        self.nc = self.js = None

    async def _publish(self, batch_id, body):
        import nats

        if self.nc is None or self.nc.is_closed:
            opts = {k: v for k, v in self.options.items() if v}
            if self.tls_ca:
                import ssl

                opts["tls"] = ssl.create_default_context(cafile=self.tls_ca)
            # Keep reconnecting in the background; a send waits at most its own timeout.
            self.nc = await nats.connect(self.servers, connect_timeout=min(self.timeout, 5), max_reconnect_attempts=-1,
                                         reconnect_time_wait=1, allow_reconnect=True, error_cb=_quiet,
                                         disconnected_cb=_quiet, reconnected_cb=_quiet, **opts)
            self.js = self.nc.jetstream(timeout=self.timeout)
        return await self.js.publish(self.subject, body, timeout=self.timeout, headers={"Nats-Msg-Id": batch_id.hex()})

    def send(self, batch_id, body):
        import asyncio
        import concurrent.futures

        import nats.errors
        import nats.js.errors

        fut = asyncio.run_coroutine_threadsafe(self._publish(batch_id, body), self.loop)
        try:
            ack = fut.result(self.timeout + 5)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise Transient(f"upstream NATS {self.describe()}: no publish ack in {self.timeout:.0f} s") from None
        except nats.js.errors.NoStreamResponseError:
            raise Transient(f"upstream NATS: no stream takes {self.subject}: run `openpole city init --nats ...`") from None
        except nats.js.errors.APIError as e:
            if e.err_code == 10054 or e.code == 413:  # message size exceeds the stream's maximum
                raise TooLarge(f"upstream NATS: batch of {len(body)} bytes over the stream's max_msg_size") from None
            raise Transient(f"upstream NATS: {e.description or e}") from None
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as e:
            if self.nc is not None and not self.nc.is_connected:
                self._reset()
            raise Transient(f"upstream NATS {self.describe()} unreachable: {type(e).__name__} {e}".strip()) from None
        if ack.duplicate:
            self.duplicates += 1
        self.last_ack = (ack.stream, ack.seq)
        return {"duplicate": bool(ack.duplicate), "stream": ack.stream, "seq": ack.seq}

    def _reset(self):
        """A connection that never came up is dropped; the next send connects again."""
        if self.nc is not None and not self.nc.is_reconnecting:
            import asyncio

            nc, self.nc = self.nc, None
            asyncio.run_coroutine_threadsafe(nc.close(), self.loop)

    def describe(self):
        return redact_url(",".join(self.servers)) + f" ({self.subject})"


async def _quiet(*_):
    """nats-py's callbacks: the sender reports what matters, as a Transient, with backoff."""


SINKS = {"http": HttpSink, "https": HttpSink, "mqtt": MqttSink, "nats": NatsSink}


def sink_for(url, **kw):
    from openpole.errors import UserError

    scheme = url.split(":", 1)[0].lower()
    if scheme not in SINKS:
        raise UserError(f"upstream {redact_url(url)!r}: the scheme must be one of {', '.join(SINKS)}")
    return SINKS[scheme](url, **kw)
