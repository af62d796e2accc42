"""Where batches go upstream. SINKS maps a URL scheme to a sink class; each sink's send(batch_id,
body) returns normally once the upstream acknowledged, raises Transient (retry) or Permanent."""

import urllib.error
import urllib.request


class Transient(Exception):
    """Worth retrying: network down, timeout, 5xx, 429."""


class Permanent(Exception):
    """Retrying will not help: the upstream refused this batch (4xx)."""


class HttpSink:
    def __init__(self, url, timeout_s=10.0, token=None):
        self.url = url.rstrip("/") + "/v1/batches"
        self.timeout = timeout_s
        self.token = token

    def send(self, batch_id, body):
        req = urllib.request.Request(self.url, data=body, method="POST")
        req.add_header("Content-Type", "application/cbor")
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


SINKS = {"http": HttpSink, "https": HttpSink}


def sink_for(url, **kw):
    scheme = url.split(":", 1)[0].lower()
    if scheme not in SINKS:
        raise ValueError(f"upstream {url!r}: scheme must be one of {', '.join(SINKS)}")
    return SINKS[scheme](url, **kw)
