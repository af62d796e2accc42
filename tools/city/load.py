"""`openpole city load`: the stream of pole batches into PostgreSQL.

A loader reads the stream through one durable pull consumer ("loaders"); several loaders share it,
so adding one adds throughput. Each fetched group is checked (the pole's signature when keys are
given, then the shared decoder: wire/batch.py decode_signed, then every field against the column
it goes to: a time a timestamp holds, a finite value, boot and seq of 64 bits, flags of 32 and the
time quality of 16, text without NUL); a batch that fails any check goes to `rejected` whole, with
the reason, and is acknowledged: a batch is loaded or kept whole, never in part, so a re-delivery
does the same again. Should PostgreSQL still refuse a group for its content, each of its batches
is written alone and the ones it refuses go to `rejected` too. A group is one transaction: the
message index first (COPY into a session table, then one INSERT ... ON CONFLICT DO NOTHING), then
the readings of the messages the index did not hold, with COPY; a node message already there
(re-sent past the stream's duplicate window, or in another batch after a pole crash) is counted as
a duplicate and its readings are skipped. Every statement touches its rows in key order, so
loaders sharing the tables cannot deadlock each other.

The NATS messages are acknowledged only after COMMIT: a loader killed mid-group loses nothing (the
stream sends the group again after the consumer's ack wait) and doubles nothing (the index). While
PostgreSQL is away (a restart, a failover) the loader keeps the group, tells the stream it is still
working on it, and writes it once the database answers again.

A batch the stream delivered MAX_DELIVER times without an ack (one that crashed or stalled each
loader it reached) is given up: the stream's advisory waits in DEAD_STREAM until a loader records
the batch, fetched by its sequence, in `dead_letters` (reason "max_deliver").
"""

import asyncio
import collections
import datetime
import json
import math
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openpole.common import Histogram, redact_url
from openpole.wire import batch

from ..errors import UserError
from .db import connect, require_schema
from .stream import (ACK_WAIT_S, CONSUMER, DEAD_CONSUMER, DEAD_STREAM, DEAD_SUBJECTS, STREAM, SUBJECTS, _connect,
                     consumer_config, dead_consumer_config, update_consumer)

POLE_EVERY_S = 60.0  # poles.last_batch: at most this stale
HEARTBEAT_S = 10.0  # an idle loader still refreshes its row in `loaders` (city status: alive, rate 0)
RETRY_S = (0.5, 1.0, 2.0, 5.0)  # PostgreSQL unreachable: the waits between tries, the last repeated
PLAUSIBLE_FROM_S = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc).timestamp()
UTC = datetime.timezone.utc
# Binary COPY: the columns' types, in order.
INDEX_TYPES = ["text", "text", "int8", "int8", "bytea", "int4"]
READING_TYPES = ["text", "text", "text", "timestamptz", "float8", "text", "int4", "int2", "int8", "int8"]
INT8, INT4, INT2 = 1 << 63, 1 << 31, 1 << 15  # a binary COPY wraps an int4 or int2 out of range without a word
MAX_TEXT = 256  # characters in a node id, quantity or unit: the indexes on them take at most 2,704 bytes a row
COUNTS = ("batches", "records_received", "records_unique", "rejected")


def _content_errors():
    """What a group's content (not the database's state) can make the COPY or PostgreSQL raise: the
    checks should leave none, and when one comes the group's batches are written one by one."""
    import psycopg
    import psycopg.errors

    # ProgramLimitExceeded: an index row over its size. It is an OperationalError, not a reason to reconnect.
    return (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded, ValueError, TypeError,
            OverflowError)


def _show(x):
    """x as a reason quotes it: short, ASCII, and never a 4,300-digit integer."""
    if type(x) is int:
        return str(x) if -INT8 <= x < 2 * INT8 else f"an integer of {x.bit_length()} bits"
    if type(x) is float:
        return repr(x)
    if type(x) is str:
        return ascii(x[:40]) + ("..." if len(x) > 40 else "")
    return "none" if x is None else f"a {type(x).__name__}"


def _ascii(text, limit=500):
    """Text for `rejected` and `dead_letters` that any database encoding holds."""
    return text.replace("\x00", "\\x00").encode("ascii", "backslashreplace").decode()[:limit]


def _where(node, boot, seq, name=None):
    return f"node {_show(node)} boot {_show(boot)} seq {_show(seq)}" + ("" if name is None else f", {_show(name)}")


def _why(e):
    try:
        text = " ".join(str(e).split())
    except Exception:  # str() of an exception holding a 5,000-digit integer raises
        text = ""
    return text or type(e).__name__


class LatencyHistogram(Histogram):
    """From the stream's acceptance of a pole's batch (the pole's publish ack) to its COMMIT."""

    BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _month(t):
    return datetime.datetime(t.year, t.month, 1, tzinfo=UTC)


def _next_month(m):
    return m.replace(year=m.year + (m.month == 12), month=m.month % 12 + 1)


class Loader:
    def __init__(self, dsn, keys=None, name=None):
        self.dsn = dsn
        self.keys = keys or {}
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.partitions = set()
        self.totals = {"batches": 0, "records_received": 0, "records_unique": 0, "rejected": 0}
        self.errors = {"db_reconnects": 0, "db_retries": 0, "ack_failures": 0, "fetch_errors": 0}
        self.latency = LatencyHistogram()
        self.started = datetime.datetime.now(UTC)
        self.last_commit = None
        self._recent = collections.deque()  # (monotonic, readings loaded) over the last minute
        self._t0 = time.monotonic()
        self.known_series, self.known_nodes = set(), set()  # already in the database: not inserted again
        self._texts = set()  # node ids, quantities and units already checked
        self.dead_letters = 0  # batches the stream gave up on that this loader recorded
        self._dead_conn = None  # dead letters have a connection of their own: a group's thread holds self.conn
        self.pole_written = {}  # pole -> when this loader last wrote its row (monotonic)
        month = _month(self.started)
        self.partitions.add(month)  # made at connect, below
        self._month_span = (month.timestamp(), _next_month(month).timestamp())
        self.conn = None
        self._connect()  # a wrong DSN or a database without the schema says so at once

    def _connect(self):
        self.conn = connect(self.dsn)
        require_schema(self.conn)
        # Session tables: the group's node messages and new series, before they meet their tables.
        self.conn.execute("CREATE TEMP TABLE incoming (pole text, node text, boot bigint, seq bigint, batch_id bytea, "
                          "readings integer) ON COMMIT DELETE ROWS")
        self.conn.execute("CREATE TEMP TABLE incoming_series (pole text, node text, quantity text) ON COMMIT DELETE ROWS")
        with self.conn.transaction(), self.conn.cursor() as cur:
            self._partition(cur, _month(self.started))  # this month's, before the first group needs it
        self.conn.commit()

    def rate(self, pending=0):
        """Readings loaded per second over the last minute (or since the start, when younger);
        pending: those of the group being committed."""
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - 60:
            self._recent.popleft()
        return (pending + sum(n for _, n in self._recent)) / max(1.0, min(60.0, now - self._t0))

    def decode(self, items):
        """items: [(subject, payload, stream timestamp or None)] -> (good, bad, stamps): the checked
        batches [(subject, payload, batch id, pole, messages as check() gives them)], the rejected ones
        [(subject, reason, payload)], and the stream timestamps."""
        good, bad = [], []
        plausible_to = time.time() + 730 * 86400
        for subject, payload, _ in items:
            try:
                decoded = batch.decode_signed(payload, self.keys)
            except Exception as e:  # a decoder's ValueError says why; anything else it raises is the batch's doing too
                why = _why(e) if isinstance(e, ValueError) else f"cannot decode the batch ({type(e).__name__}: {_why(e)})"
                bad.append((_ascii(subject), _ascii(why), payload))
                continue
            try:
                good.append((subject, payload, decoded[0], decoded[1], self.check(decoded, plausible_to)))
            except Exception as e:
                bad.append((_ascii(subject), _ascii(f"batch not loaded: {_why(e)}"), payload))
        return good, bad, [stamp for _, _, stamp in items]

    def check(self, decoded, plausible_to):
        """A decoded batch -> its messages as the COPY takes them: [(pole, node, boot, seq, rows,
        quantities, months the rows need)]. ValueError naming the first field its column cannot
        hold (READING_TYPES, INDEX_TYPES), which rejects the whole batch."""
        batch_id, pole, messages, _ = decoded
        if type(batch_id) is not bytes:
            raise ValueError(f"the batch id is {_show(batch_id)}, not bytes")
        texts = self._texts
        if type(pole) is not str or pole not in texts:
            self._text(pole, "the pole id")
        lo, hi = self._month_span
        fromts, isfinite = datetime.datetime.fromtimestamp, math.isfinite
        out = []
        for mpole, node, boot, seq, _, readings in messages:
            if mpole != pole:
                raise ValueError(f"a message of pole {_show(mpole)} in a batch of pole {_show(pole)}")
            if type(node) is not str or node not in texts:
                self._text(node, "a node id")
            if type(boot) is not int or type(seq) is not int or not (-INT8 <= boot < INT8 and -INT8 <= seq < INT8):
                raise ValueError(f"{_where(node, boot, seq)}: boot and seq must be integers of 64 bits")
            rows, names, months = [], set(), set()
            for name, unit, value, t, flags, tq, _rt in readings:
                # The reasons are made only for a batch that fails: this runs for every reading.
                if type(name) is not str or name not in texts:
                    self._text(name, f"{_where(node, boot, seq)}: a quantity name")
                if unit is not None and (type(unit) is not str or unit not in texts):
                    self._text(unit, f"{_where(node, boot, seq, name)}: the unit")
                kind = type(value)
                try:
                    v = value if kind is float else float(value) if kind is int else None
                except OverflowError:
                    v = math.inf
                if v is None or not isfinite(v):
                    raise ValueError(f"{_where(node, boot, seq, name)}: the value {_show(value)} is not a finite number")
                if type(t) is not float and type(t) is not int:
                    raise ValueError(f"{_where(node, boot, seq, name)}: the time is {_show(t)}, not a number")
                try:
                    when = fromts(t, UTC)
                except (OverflowError, ValueError, OSError):
                    raise ValueError(f"{_where(node, boot, seq, name)}: the time {_show(t)} s is outside years 1 to "
                                     f"9999 (a node's age or a pole's clock gone wrong)") from None
                if type(flags) is not int or not -INT4 <= flags < INT4:
                    raise ValueError(f"{_where(node, boot, seq, name)}: the flags {_show(flags)} are not an integer "
                                     f"of 32 bits")
                if type(tq) is not int or not -INT2 <= tq < INT2:
                    raise ValueError(f"{_where(node, boot, seq, name)}: the time quality {_show(tq)} is not an integer "
                                     f"of 16 bits")
                if not lo <= t < hi and PLAUSIBLE_FROM_S <= t < plausible_to:
                    months.add(_month(when))
                rows.append((pole, node, name, when, v, unit, flags, tq, boot, seq))
                names.add(name)
            out.append((pole, node, boot, seq, rows, names, months))
        return out

    def _text(self, s, what):
        """ValueError unless s is a str a text column holds (no NUL, no lone surrogate) and the
        indexes take (MAX_TEXT characters at most); remembered when it is."""
        if type(s) is not str:
            raise ValueError(f"{what} is {_show(s)}, not a string")
        if len(s) > MAX_TEXT:
            raise ValueError(f"{what} of {len(s)} characters is over {MAX_TEXT}")
        if "\x00" in s:
            raise ValueError(f"{what} {_show(s)} holds a NUL character, which PostgreSQL text cannot")
        try:
            s.encode()
        except UnicodeEncodeError:
            raise ValueError(f"{what} {_show(s)} is not valid Unicode (a lone surrogate)") from None
        if len(self._texts) > 100_000:  # names are few; a flood of new ones only costs checks again
            self._texts.clear()
        self._texts.add(s)

    def store(self, items):
        """items: [(subject, payload, stream timestamp or None)] -> the counts this group added."""
        return self.write(self.decode(items))

    def write(self, decoded):
        """One transaction for a checked group; tried again (the same group) when PostgreSQL drops
        the connection, and again when it reports a deadlock."""
        import psycopg
        import psycopg.errors

        good, bad, stamps = decoded
        tries = 0
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self._connect()
                counts = self._write_isolated(good, bad)
                break
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                self.errors["db_retries"] += 1
            except (psycopg.OperationalError, psycopg.InterfaceError, UserError) as e:
                if isinstance(e, UserError) and "schema" in str(e):
                    raise
                self.errors["db_reconnects"] += 1
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                time.sleep(RETRY_S[min(tries, len(RETRY_S) - 1)])
                tries += 1
        done = time.time()
        for stamp in stamps:
            if stamp is not None:
                self.latency.observe(max(0.0, done - stamp))
        for k, v in counts.items():
            self.totals[k] += v
        self._recent.append((time.monotonic(), counts["records_unique"]))
        self.last_commit = done
        return counts

    def _write_isolated(self, good, bad):
        """The group in one transaction. Should its content still make PostgreSQL or the COPY refuse
        it, each batch alone, and the ones refused go to `rejected`: no batch stops its group."""
        refusals = _content_errors()
        try:
            return self._write(good, bad)
        except refusals:
            pass
        counts = dict.fromkeys(COUNTS, 0)
        bad = list(bad)
        for b in good:
            try:
                one = self._write([b], [])
            except refusals as e:
                bad.append((_ascii(b[0]), _ascii(f"batch not loaded: PostgreSQL refused it: {_why(e)}"), b[1]))
                continue
            for k, v in one.items():
                counts[k] += v
        for k, v in self._write([], bad).items():
            counts[k] += v
        return counts

    def heartbeat(self):
        """Refresh this loader's row while idle (rate and errors as they stand). False: no database."""
        import psycopg

        try:
            if self.conn is None or self.conn.closed:
                self._connect()
            with self.conn.transaction(), self.conn.cursor() as cur:
                self._loader_row(cur, {"batches": 0, "records_received": 0, "records_unique": 0, "rejected": 0})
            return True
        except (psycopg.OperationalError, psycopg.InterfaceError, UserError):
            self.errors["db_reconnects"] += 1
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return False

    def _loader_row(self, cur, counts):
        import json

        cur.execute("INSERT INTO loaders (name, started, seen, batches, received, loaded, rejected, rate, errors) "
                    "VALUES (%s, %s, now(), %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET seen = now(), "
                    "batches = loaders.batches + excluded.batches, received = loaders.received + excluded.received, "
                    "loaded = loaders.loaded + excluded.loaded, rejected = loaders.rejected + excluded.rejected, "
                    "rate = excluded.rate, errors = excluded.errors",
                    (self.name, self.started, counts["batches"], counts["records_received"], counts["records_unique"],
                     counts["rejected"], self.rate(counts["records_unique"]), json.dumps(self.errors)))

    def _partition(self, cur, month):
        """The month's partition of readings, made before any row of it is written. Rows that waited
        in the default partition for that month (a node's clock far ahead) move into it."""
        name = f"readings_{month:%Y_%m}"
        cur.execute("SELECT pg_advisory_xact_lock(7062)")  # loaders making the same month: one does
        if cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]:
            return
        a, b = month.isoformat(), _next_month(month).isoformat()
        cur.execute(f"CREATE TEMP TABLE moved ON COMMIT DROP AS WITH d AS (DELETE FROM readings_other WHERE time >= "
                    f"'{a}' AND time < '{b}' RETURNING *) SELECT * FROM d")
        cur.execute(f"CREATE TABLE {name} PARTITION OF readings FOR VALUES FROM ('{a}') TO ('{b}')")
        cur.execute("INSERT INTO readings SELECT * FROM moved")
        cur.execute("DROP TABLE moved")

    def _write(self, good, bad):
        counts = {"batches": len(good), "records_received": 0, "records_unique": 0, "rejected": len(bad)}
        rows, new_series, months = [], set(), set()
        with self.conn.transaction(), self.conn.cursor() as cur:
            if bad:
                cur.executemany("INSERT INTO rejected (subject, reason, payload) VALUES (%s, %s, %s)", bad)
            # A pole's row is written when it is new and then once a minute: every group updating
            # it would make loaders that share the pole wait on each other's row lock.
            mono = time.monotonic()
            poles = sorted(p for p in {b[3] for b in good} if mono - self.pole_written.get(p, -1e9) > POLE_EVERY_S)
            if poles:
                cur.executemany("INSERT INTO poles (pole, last_batch) VALUES (%s, now()) ON CONFLICT (pole) DO UPDATE "
                                "SET last_batch = now()", [(p,) for p in poles])
            nodes = sorted({(m[0], m[1]) for b in good for m in b[4]} - self.known_nodes)
            if nodes:
                cur.executemany("INSERT INTO nodes (pole, node) VALUES (%s, %s) ON CONFLICT DO NOTHING", nodes)
            with cur.copy("COPY incoming FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(INDEX_TYPES)
                for _, _, batch_id, _, messages in good:
                    for m in messages:
                        copy.write_row((m[0], m[1], m[2], m[3], batch_id, len(m[4])))
            cur.execute("INSERT INTO messages (pole, node, boot, seq, batch_id, readings) SELECT DISTINCT ON (pole, node, "
                        "boot, seq) * FROM incoming ORDER BY pole, node, boot, seq ON CONFLICT DO NOTHING "
                        "RETURNING pole, node, boot, seq")
            fresh = set(cur.fetchall())  # the messages the index did not hold
            for _, _, _, _, messages in good:
                for pole, node, boot, seq, message_rows, names, message_months in messages:
                    counts["records_received"] += len(message_rows)
                    key = (pole, node, boot, seq)
                    if key not in fresh:
                        continue
                    fresh.discard(key)  # twice in one group: the first copy only
                    rows += message_rows
                    months |= message_months
                    for name in names:
                        if (pole, node, name) not in self.known_series:
                            new_series.add((pole, node, name))
            for month in sorted(months - self.partitions):
                self._partition(cur, month)
            counts["records_unique"] = len(rows)
            with cur.copy("COPY readings (pole, node, quantity, time, value, unit, flags, time_quality, boot, seq) "
                          "FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(READING_TYPES)
                for row in rows:
                    copy.write_row(row)
            if new_series:
                with cur.copy("COPY incoming_series FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["text", "text", "text"])
                    for row in new_series:
                        copy.write_row(row)
                cur.execute("INSERT INTO series (pole, node, quantity) SELECT * FROM incoming_series "
                            "ORDER BY 1, 2, 3 ON CONFLICT DO NOTHING")
            self._loader_row(cur, counts)
        # Committed: what the database now holds, remembered.
        self.partitions |= months
        self.known_nodes.update(nodes)
        self.pole_written.update((p, mono) for p in poles)
        self.known_series |= new_series
        return counts

    def dead_letter(self, letters):
        """Record the batches the stream gave up on: [(advisory id, stream seq, consumer, deliveries,
        subject, reason, payload)], each once. False: no database (the advisories come again)."""
        import psycopg

        try:
            if self._dead_conn is None or self._dead_conn.closed:
                self._dead_conn = connect(self.dsn)
            new = 0
            with self._dead_conn.transaction(), self._dead_conn.cursor() as cur:
                for letter in letters:
                    cur.execute("INSERT INTO dead_letters (advisory, stream_seq, consumer, deliveries, subject, reason, "
                                "payload) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (advisory) DO NOTHING", letter)
                    new += cur.rowcount
            self.dead_letters += new
            return True
        except (psycopg.OperationalError, psycopg.InterfaceError, UserError):
            self.errors["db_reconnects"] += 1
            if self._dead_conn is not None:
                self._dead_conn.close()
            self._dead_conn = None
            return False

    def close(self):
        for conn in (self.conn, self._dead_conn):
            if conn is not None:
                conn.close()


def metrics(loader):
    """Prometheus text: the loader's counters, errors by kind, rate and commit latency."""
    t = loader.totals
    lines = [
        "# HELP openpole_city_batches_total Batches loaded (decoded and committed).",
        "# TYPE openpole_city_batches_total counter", f"openpole_city_batches_total {t['batches']}",
        "# HELP openpole_city_readings_received_total Readings in the loaded batches, duplicates included.",
        "# TYPE openpole_city_readings_received_total counter",
        f"openpole_city_readings_received_total {t['records_received']}",
        "# HELP openpole_city_readings_loaded_total Readings written to PostgreSQL (each once).",
        "# TYPE openpole_city_readings_loaded_total counter", f"openpole_city_readings_loaded_total {t['records_unique']}",
        "# HELP openpole_city_batches_rejected_total Batches with a bad signature, an unknown pole, a malformed body or "
        "a field no column holds.",
        "# TYPE openpole_city_batches_rejected_total counter", f"openpole_city_batches_rejected_total {t['rejected']}",
        "# HELP openpole_city_dead_letters_total Batches the stream gave up on (MAX_DELIVER deliveries, no ack), "
        "recorded in dead_letters.",
        "# TYPE openpole_city_dead_letters_total counter", f"openpole_city_dead_letters_total {loader.dead_letters}",
        "# HELP openpole_city_errors_total Database reconnects and retries, failed acks and fetches.",
        "# TYPE openpole_city_errors_total counter",
    ]
    lines += [f'openpole_city_errors_total{{kind="{k}"}} {v}' for k, v in sorted(loader.errors.items())]
    lines += ["# HELP openpole_city_load_rate_readings Readings loaded per second over the last minute.",
              "# TYPE openpole_city_load_rate_readings gauge", f"openpole_city_load_rate_readings {loader.rate():.1f}",
              "# TYPE openpole_city_last_commit_timestamp_seconds gauge",
              f"openpole_city_last_commit_timestamp_seconds {loader.last_commit or 0:.3f}",
              "# HELP openpole_city_load_latency_seconds From the stream's acceptance of a batch to its COMMIT.",
              "# TYPE openpole_city_load_latency_seconds histogram"]
    h = loader.latency.snapshot()
    lines += [f'openpole_city_load_latency_seconds_bucket{{le="{le}"}} {n}' for le, n in h["buckets"]]
    lines += [f"openpole_city_load_latency_seconds_sum {h['sum']}", f"openpole_city_load_latency_seconds_count {h['count']}"]
    return "\n".join(lines) + "\n"


class _Metrics(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path != "/metrics":
            self.send_error(404, "GET /metrics")
            return
        body = metrics(self.server.loader).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve_metrics(loader, host, port):
    try:
        httpd = ThreadingHTTPServer((host, port), _Metrics)
    except OSError as e:
        raise UserError(f"--metrics {host}:{port}: {e.strerror}; choose another port") from None
    httpd.daemon_threads = True
    httpd.loader = loader
    threading.Thread(target=httpd.serve_forever, name="openpole-city-metrics", daemon=True).start()
    return httpd


async def _store_keeping_claim(loader, msgs, decoded):
    """Write the group in a thread; meanwhile tell the stream every third of the ack wait that the
    group is still being worked on, so a slow or reconnecting database does not make it redeliver."""
    work = asyncio.ensure_future(asyncio.to_thread(loader.write, decoded))
    while True:
        done, _ = await asyncio.wait({work}, timeout=ACK_WAIT_S / 3)
        if done:
            return work.result()
        for m in msgs:
            try:
                await m.in_progress()
            except Exception:  # the connection is away: the stream may redeliver; the index de-duplicates
                loader.errors["ack_failures"] += 1


async def _fetch(sub, group, loader):
    """(messages, decoded) for up to `group` messages, decoded here while the previous group is being
    written in its thread (which waits on PostgreSQL most of the time). ([], None) after a second
    with none, or when a server went away mid-fetch (the client reconnects to another)."""
    import nats.errors

    try:
        msgs = await sub.fetch(group, timeout=1)
    except (nats.errors.TimeoutError, asyncio.TimeoutError):
        return [], None
    except nats.errors.Error:
        loader.errors["fetch_errors"] += 1
        await asyncio.sleep(0.5)
        return [], None
    items = [(m.subject, m.data, m.metadata.timestamp.timestamp() if m.metadata.timestamp else None) for m in msgs]
    return msgs, loader.decode(items)


async def _subscribe(js, nats_url):
    """The pull subscriptions to the loaders' consumer (made, or given MAX_DELIVER when an older
    openpole made it) and to the dead letters' advisories; a UserError when a stream is missing."""
    import nats.js.errors

    try:
        await update_consumer(js)
        sub = await js.pull_subscribe(SUBJECTS[0], durable=CONSUMER, stream=STREAM, config=consumer_config())
    except nats.js.errors.NotFoundError:
        raise UserError(f"--nats {redact_url(nats_url)}: no stream {STREAM}: run `openpole city init --nats URL` first") from None
    try:
        dead = await js.pull_subscribe(DEAD_SUBJECTS[0], durable=DEAD_CONSUMER, stream=DEAD_STREAM,
                                       config=dead_consumer_config())
    except nats.js.errors.NotFoundError:
        raise UserError(f"--nats {redact_url(nats_url)}: no stream {DEAD_STREAM}, where the batches no loader could "
                        f"take are kept: run `openpole city init --nats URL` (again, after an upgrade)") from None
    return sub, dead


async def _letter(js, m):
    """A max-deliveries advisory -> the dead_letters row of the batch it names, fetched from the
    stream by its sequence (no subject and payload when its max age or size cap took it first)."""
    import nats.js.errors

    try:
        adv = json.loads(m.data)
        aid, seq, deliveries, consumer = adv["id"], adv["stream_seq"], adv.get("deliveries"), adv.get("consumer")
        if type(aid) is not str or type(seq) is not int or not 0 < seq < INT8:
            raise ValueError("no advisory id or stream sequence")
    except Exception as e:  # anyone allowed to publish on the advisory subject may put anything there
        return (f"{DEAD_STREAM}:{m.metadata.sequence.stream}", None, None, None, None,
                _ascii(f"not a max-deliveries advisory: {_why(e)}"), m.data)
    deliveries = deliveries if type(deliveries) is int and 0 <= deliveries < INT4 else None
    consumer = _ascii(consumer, 100) if type(consumer) is str else None
    try:
        raw = await js.get_msg(STREAM, seq)
    except nats.js.errors.NotFoundError:
        return (_ascii(aid, 100), seq, consumer, deliveries, None, "max_deliver", None)
    return (_ascii(aid, 100), seq, consumer, deliveries, _ascii(raw.subject or "", 1000), "max_deliver", raw.data)


async def _record_dead_letters(js, sub, loader, state):
    """Record each batch the stream gave up on in dead_letters, then let its advisory go (loaders
    that both take one record it once). state["idle"]: the last look found none."""
    import nats.errors

    while True:
        try:
            msgs = await sub.fetch(20, timeout=2)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            state["idle"] = True
            continue
        except nats.errors.Error:
            loader.errors["fetch_errors"] += 1
            await asyncio.sleep(1)
            continue
        state["idle"] = False
        try:
            letters = [await _letter(js, m) for m in msgs]
        except nats.errors.Error:  # the stream did not answer: the advisories come again after their ack wait
            loader.errors["fetch_errors"] += 1
            await asyncio.sleep(1)
            continue
        tries = 0
        while not await asyncio.to_thread(loader.dead_letter, letters):
            await asyncio.sleep(RETRY_S[min(tries, len(RETRY_S) - 1)])
            tries += 1
        for m in msgs:
            try:
                await m.ack()
            except Exception:  # it comes again; dead_letters holds it once
                loader.errors["ack_failures"] += 1


async def _run(nats_url, dsn, keys, group, idle_exit_s, report, metrics_at=None, name=None, nats_opts=None):
    loader = Loader(dsn, keys, name)
    httpd = serve_metrics(loader, *metrics_at) if metrics_at else None
    try:
        nc = await _connect(nats_url, opts=nats_opts, keep=True)
    except UserError:
        loader.close()
        if httpd:
            httpd.shutdown()
        raise
    try:
        js = nc.jetstream(timeout=10)
        sub, dead = await _subscribe(js, nats_url)
        watch = {"idle": False}
        watcher = asyncio.ensure_future(_record_dead_letters(js, dead, loader, watch))
        idle_since = beat = time.monotonic()
        pending = None
        try:
            while True:
                if watcher.done():
                    watcher.result()  # its error, rather than dead letters silently no longer recorded
                msgs, decoded = await (pending or _fetch(sub, group, loader))
                pending = None
                if not msgs:
                    now = time.monotonic()
                    if now - beat > HEARTBEAT_S:
                        await asyncio.to_thread(loader.heartbeat)
                        beat = now
                    if idle_exit_s is not None and now - idle_since > idle_exit_s and watch["idle"]:
                        return loader.totals
                    continue
                idle_since = beat = time.monotonic()
                pending = asyncio.ensure_future(_fetch(sub, group, loader))  # the next group, while this one is written
                counts = await _store_keeping_claim(loader, msgs, decoded)  # committed ...
                for m in msgs:
                    try:
                        await m.ack()  # ... before the stream lets them go
                    except Exception:  # not acked: redelivered after the ack wait, a duplicate for the index
                        loader.errors["ack_failures"] += 1
                report(counts)
        finally:
            watcher.cancel()  # an advisory it held comes again after its ack wait
            if pending is not None:
                pending.cancel()  # what it may have fetched comes again after the ack wait
    finally:
        if httpd:
            httpd.shutdown()
        loader.close()
        await nc.close()


def run(nats_url, dsn, keys=None, group=200, idle_exit_s=None, report=lambda counts: None, metrics_at=None, name=None,
        nats_opts=None):
    return asyncio.run(_run(nats_url, dsn, keys, group, idle_exit_s, report, metrics_at, name, nats_opts))


def stats(dsn):
    """The same keys as `openpole receiver stats`: records, unique, duplicates, nodes (and more)."""
    with connect(dsn) as conn:
        require_schema(conn)
        batches, received, unique = conn.execute("SELECT coalesce(sum(batches), 0), coalesce(sum(received), 0), "
                                                 "coalesce(sum(loaded), 0) FROM loaders").fetchone()
        nodes = conn.execute("SELECT count(*) FROM nodes").fetchone()[0]
        rejected = conn.execute("SELECT count(*) FROM rejected").fetchone()[0]
        dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
    return {"records": int(received), "unique": int(unique), "duplicates": int(received - unique), "nodes": nodes,
            "batches": int(batches), "batches_rejected": rejected, "dead_letters": dead}
