"""The city's JetStream stream of pole batches: its settings, made or brought up to date idempotently.

Poles publish each signed SenML-CBOR batch to openpole.batches.<pole> with the batch id as
Nats-Msg-Id (edge_agent/sinks.py NatsSink). The stream keeps them on file storage, replicated, until
the loaders have taken them and for max_age at most, so a loader outage of that long loses nothing.
The loaders share the durable consumer CONSUMER; a batch it delivered MAX_DELIVER times without an
ack is given up, and the stream's advisory of it is kept in DEAD_STREAM for the loaders to record.
"""

import asyncio
import os
from dataclasses import dataclass

from ..common import redact_url
from ..errors import UserError

STREAM = "OPENPOLE_BATCHES"
SUBJECTS = ["openpole.batches.>"]
CONSUMER = "loaders"
ACK_WAIT_S = 20.0  # an unacknowledged group comes again this long after a loader died with it
# A batch that crashed or stalled this many loaders in turn is given up rather than let it stop every
# loader of the city for ever: with the 20 s ack wait, within two minutes.
MAX_DELIVER = 5
# JetStream announces each given-up message once, on a plain subject: a stream keeps the announcement
# until a loader has recorded it, even when every loader was down (crashed by that very batch).
DEAD_STREAM = "OPENPOLE_DEAD_LETTERS"
DEAD_SUBJECTS = [f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.{CONSUMER}"]
DEAD_CONSUMER = "dead-letters"


@dataclass
class StreamSettings:
    replicas: int = 3
    # Re-sends of a batch come within the pole's retry gap (30 s at most between tries): ten minutes
    # covers a flapping link. The window's ids are held in memory: about 100 bytes per batch.
    duplicate_window_s: float = 600.0
    max_age_s: float = 7 * 86400.0  # what a week-long loader outage may leave waiting
    max_bytes: int = 50 * 1024**3
    max_msg_size: int = 1024 * 1024  # a 2,000-record batch is about 100 KB

    def config(self):
        from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

        return StreamConfig(name=STREAM, subjects=SUBJECTS, storage=StorageType.FILE, num_replicas=self.replicas,
                            retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.OLD,
                            duplicate_window=self.duplicate_window_s, max_age=self.max_age_s,
                            max_bytes=self.max_bytes, max_msg_size=self.max_msg_size)

    def dead_config(self):
        """The stream of max-deliveries advisories (about 250 bytes each), as replicated as the batches'."""
        from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

        return StreamConfig(name=DEAD_STREAM, subjects=DEAD_SUBJECTS, storage=StorageType.FILE,
                            num_replicas=self.replicas, retention=RetentionPolicy.LIMITS, discard=DiscardPolicy.OLD,
                            max_age=self.max_age_s, max_bytes=64 * 1024**2, duplicate_window=120.0)


def consumer_config():
    """The loaders' durable consumer, as a loader makes it when the stream has none."""
    from nats.js.api import AckPolicy, ConsumerConfig

    return ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S, max_ack_pending=20000,
                          max_deliver=MAX_DELIVER)


def dead_consumer_config():
    from nats.js.api import AckPolicy, ConsumerConfig

    return ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=60.0, max_ack_pending=1000)


async def update_consumer(js):
    """A loaders' consumer made before MAX_DELIVER (redelivering a batch for ever) gets it:
    "updated", "unchanged", or None when there is no consumer yet."""
    import nats.js.errors

    try:
        info = await js.consumer_info(STREAM, CONSUMER)
    except nats.js.errors.NotFoundError:
        return None
    if info.config.max_deliver == MAX_DELIVER:
        return "unchanged"
    await js.add_consumer(STREAM, info.config.evolve(max_deliver=MAX_DELIVER))  # a durable's create updates it
    return "updated"


async def _quiet(*_):
    """nats-py logs every connection error with a traceback; the one-line UserError says it."""


def options(creds=None, tls_ca=None):
    """nats.connect's keyword arguments for a credentials file (nkey/JWT) and a private CA."""
    opts = {}
    if creds:
        if not os.path.exists(creds):
            raise UserError(f"--nats-creds {creds}: no such file")
        opts["user_credentials"] = creds
    if tls_ca:
        import ssl

        try:
            opts["tls"] = ssl.create_default_context(cafile=tls_ca)
        except (OSError, ssl.SSLError) as e:
            raise UserError(f"--nats-tls-ca {tls_ca}: not a readable CA certificate ({e})") from None
    return opts


def servers(url):
    """'nats://a:4222,nats://b:4222' as NATS clients take it -> a list."""
    out = [s.strip() for s in url.split(",") if s.strip()]
    for s in out:
        if not s.startswith(("nats://", "tls://")):
            raise UserError(f"--nats {redact_url(url)}: each server is nats://HOST:PORT (comma-separated for several)")
    return out


async def _connect(url, timeout_s=5.0, opts=None, keep=False):
    """A NATS connection, or a one-line UserError. keep: reconnect for ever (a loader), else give up
    at once (a command)."""
    import nats
    import nats.errors

    again = {"max_reconnect_attempts": -1, "reconnect_time_wait": 1, "reconnected_cb": _quiet} if keep else \
        {"max_reconnect_attempts": 1, "allow_reconnect": False}
    try:
        return await nats.connect(servers(url), connect_timeout=timeout_s, error_cb=_quiet, disconnected_cb=_quiet,
                                  **again, **(opts or {}))
    except (nats.errors.NoServersError, OSError, asyncio.TimeoutError) as e:
        raise UserError(f"--nats {redact_url(url)}: no NATS server answers ({type(e).__name__}): is nats-server running "
                        f"with JetStream (-js)?") from None
    except nats.errors.Error as e:
        if "authorization" in str(e).lower() or "authentication" in str(e).lower():
            raise UserError(f"--nats {redact_url(url)}: the server refused the credentials: check the user and password in "
                            f"the URL (nats://user:pass@host:4222) or --nats-creds") from None
        raise UserError(f"--nats {redact_url(url)}: {e}") from None


async def _ensure_stream(js, url, want):
    import nats.js.errors

    try:
        info = await js.stream_info(want.name)
    except nats.js.errors.NotFoundError:
        info = None
    except nats.js.errors.ServiceUnavailableError:
        raise UserError(f"--nats {redact_url(url)}: JetStream is not enabled on the server (start nats-server with -js)") from None
    try:
        if info is None:
            await js.add_stream(want)
            return "made", want
        have = info.config
        fields = ("subjects", "num_replicas", "duplicate_window", "max_age", "max_bytes", "max_msg_size")
        if all(getattr(have, f) == getattr(want, f) for f in fields if getattr(want, f) is not None):
            return "unchanged", have
        await js.update_stream(want)
        return "updated", want
    except nats.js.errors.APIError as e:
        why = e.description or str(e)
        if "insufficient storage" in why:
            why += (f" for its cap of {want.max_bytes / 1024**3:g} GiB: give city init a smaller --max-gb, or the "
                    f"servers a larger jetstream max_file_store (by default 75 % of the disk that is free)")
        raise UserError(f"--nats {redact_url(url)}: the stream {want.name} was refused: {why}") from None


async def _ensure(url, settings, opts):
    import nats.js.errors

    nc = await _connect(url, opts=opts)
    try:
        js = nc.jetstream(timeout=10)
        what, cfg = await _ensure_stream(js, url, settings.config())
        dead, _ = await _ensure_stream(js, url, settings.dead_config())
        try:
            consumer = await update_consumer(js)
        except nats.js.errors.APIError as e:
            raise UserError(f"--nats {redact_url(url)}: the consumer {CONSUMER} could not be updated: "
                            f"{e.description or e}") from None
        return what, cfg, {"dead_letters": dead, "consumer": consumer}
    finally:
        await nc.close()


def ensure(url, settings=None, opts=None):
    """Make the stream and the dead letters' stream, or bring their settings up to date, and give an
    existing loaders' consumer MAX_DELIVER; returns ("made"|"updated"|"unchanged", config, {"dead_letters":
    the same for DEAD_STREAM, "consumer": "updated"|"unchanged"|None})."""
    return asyncio.run(_ensure(url, settings or StreamSettings(), opts))
