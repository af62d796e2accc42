"""What every part of openpole shares, the Pi's agent included: a HOST:PORT parser, the one way a URL
is shown with its credentials hidden, and a Prometheus histogram. Standard library only."""

import bisect
import re

from .errors import UserError


def parse_hostport(text, default_port=1883, flag="--broker"):
    """HOST:PORT as the user typed it after `flag` ('[::1]:1883' for IPv6); a one-line error naming that flag."""
    text = str(text)
    if ":" not in text or (text.count(":") > 1 and not text.startswith("[")):  # no port, or a bare IPv6 address
        host, port = text, str(default_port)
    else:
        host, _, port = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
    try:
        port = int(port)
        if not host or not 0 <= port <= 65535:
            raise ValueError
        return host, port
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected HOST:PORT, e.g. 127.0.0.1:{default_port or 1883}") from None


# Up to the last @ before the host: a password may hold an @ itself ("nats://u:p@ss@host").
_CREDENTIALS = re.compile(r"//[^/,?#]*@")


def redact_url(url):
    """A URL (or several, comma-separated) as logs, pages and errors may show it: user:password@ -> ***@."""
    return _CREDENTIALS.sub("//***@", str(url))


class Histogram:
    """A Prometheus histogram kept by one thread and read by the scrape."""

    BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

    def __init__(self):
        self.counts = [0] * (len(self.BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds):
        self.counts[bisect.bisect_left(self.BUCKETS, seconds)] += 1
        self.sum += seconds

    def snapshot(self):
        """{"buckets": [[le, cumulative count], ...], "sum": s, "count": n}."""
        out, total = [], 0
        for le, n in zip(list(self.BUCKETS) + ["+Inf"], list(self.counts)):
            total += n
            out.append([le, total])
        return {"buckets": out, "sum": round(self.sum, 6), "count": total}
