"""The city's JetStream stream of pole batches: its settings, made or brought up to date idempotently.

Poles publish each signed SenML-CBOR batch to openpole.batches.<pole> with the batch id as
Nats-Msg-Id (edge_agent/sinks.py NatsSink). The stream keeps them on file storage, replicated, until
the loaders have taken them and for max_age at most, so a loader outage of that long loses nothing.
"""

import asyncio
import os
from dataclasses import dataclass

from ..common import redact_url
from ..errors import UserError

STREAM = "OPENPOLE_BATCHES"
SUBJECTS = ["openpole.batches.>"]


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


async def _ensure(url, settings, opts):
    import nats.js.errors

    nc = await _connect(url, opts=opts)
    try:
        js = nc.jetstream(timeout=10)
        want = settings.config()
        try:
            info = await js.stream_info(STREAM)
        except nats.js.errors.NotFoundError:
            info = None
        except nats.js.errors.ServiceUnavailableError:
            raise UserError(f"--nats {redact_url(url)}: JetStream is not enabled on the server (start nats-server with -js)") from None
        try:
            if info is None:
                await js.add_stream(want)
                return "made", want
            have = info.config
            same = (have.subjects == want.subjects and have.num_replicas == want.num_replicas
                    and have.duplicate_window == want.duplicate_window and have.max_age == want.max_age
                    and have.max_bytes == want.max_bytes and have.max_msg_size == want.max_msg_size)
            if same:
                return "unchanged", have
            await js.update_stream(want)
            return "updated", want
        except nats.js.errors.APIError as e:
            raise UserError(f"--nats {redact_url(url)}: the stream {STREAM} was refused: {e.description or e}") from None
    finally:
        await nc.close()


def ensure(url, settings=None, opts=None):
    """Make the stream, or bring its settings up to date; returns ("made"|"updated"|"unchanged", config)."""
    return asyncio.run(_ensure(url, settings or StreamSettings(), opts))
