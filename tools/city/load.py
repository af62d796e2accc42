"""`openpole city load`: the stream of pole batches into PostgreSQL.

A loader reads the stream through one durable pull consumer ("loaders"); several loaders share it,
so adding one adds throughput. Each fetched group is checked (the pole's signature when keys are
given, then the shared decoder: wire/batch.py decode_signed, then every field against the column
it goes to and the registry: tools/city/samples.py); a batch that fails any check goes to
`rejected` whole, with the reason, and is acknowledged: a batch is loaded or kept whole, never in
part, so a re-delivery does the same again. Should PostgreSQL still refuse a group for its
content, each of its batches is written alone and the ones it refuses go to `rejected` too.

A group is one transaction: new things and series, then the samples with one COPY, in the key
order of `samples_key` (thing, time, boot, seq), inside a savepoint. A sample the key already holds
(a node message re-sent past the stream's duplicate window, or in another batch after a pole
crash, or a group delivered again) makes that COPY fail: the group's samples then go through a
session table and one INSERT ... ON CONFLICT DO NOTHING, and the ones already held count as
duplicates. The group's id blocks go to `aggregate_queue` for the hourly aggregates
(tools/city/maintain.py, which one loader at a time runs on a timer). Every statement touches its
rows in key order, so loaders sharing the tables cannot deadlock each other.

The NATS messages are acknowledged only after COMMIT: a loader killed mid-group loses nothing (the
stream sends the group again after the consumer's ack wait) and doubles nothing (the key). While
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
import logging
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from openpole.common import Histogram, redact_url
from openpole.wire import batch

from ..errors import UserError
from .db import connect, require_schema, sync_quantities
from .maintain import fold, make_partition, partition_ahead
from .samples import INT4, INT8, Checker, RowEncoder, month, next_month
from .stream import (ACK_WAIT_S, CONSUMER, DEAD_CONSUMER, DEAD_STREAM, DEAD_SUBJECTS, STREAM, SUBJECTS, _connect,
                     consumer_config, dead_consumer_config, update_consumer)

POLE_EVERY_S = 60.0  # poles.last_batch: at most this stale
HEARTBEAT_S = 10.0  # an idle loader still refreshes its row in `loaders` (city status: alive, rate 0)
RETRY_S = (0.5, 1.0, 2.0, 5.0)  # PostgreSQL unreachable: the waits between tries, the last repeated
UTC = datetime.timezone.utc
BLOCK = 4096  # sample ids per block of sample_blocks (fixed by migration 4)
# Binary COPY into samples (samples.RowEncoder): the columns, in order, and their types.
SAMPLE_COLUMNS = "id, time, received, boot, seq, thing_id, tq, vals, vals8, flagged"
SAMPLE_TYPES = ["int8", "timestamptz", "timestamptz", "int8", "int8", "int4", "int2", "float4[]", "float8[]", "int2[]"]
log = logging.getLogger("openpole.city")
COUNTS = ("batches", "records_received", "records_unique", "rejected")


def _content_errors():
    """What a group's content (not the database's state) can make the COPY or PostgreSQL raise: the
    checks should leave none, and when one comes the group's batches are written one by one."""
    import psycopg
    import psycopg.errors

    # ProgramLimitExceeded: an index row over its size. It is an OperationalError, not a reason to reconnect.
    return (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded, ValueError, TypeError,
            OverflowError)


def _ascii(text, limit=500):
    """Text for `rejected` and `dead_letters` that any database encoding holds."""
    return text.replace("\x00", "\\x00").encode("ascii", "backslashreplace").decode()[:limit]


def _why(e):
    try:
        text = " ".join(str(e).split())
    except Exception:  # str() of an exception holding a 5,000-digit integer raises
        text = ""
    return text or type(e).__name__


class LatencyHistogram(Histogram):
    """From the stream's acceptance of a pole's batch (the pole's publish ack) to its COMMIT."""

    BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Loader:
    def __init__(self, dsn, keys=None, name=None):
        self.dsn = dsn
        self.keys = keys or {}
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.partitions = set()
        self.totals = {"batches": 0, "records_received": 0, "records_unique": 0, "rejected": 0}
        self.errors = {"db_reconnects": 0, "db_retries": 0, "ack_failures": 0, "fetch_errors": 0, "maintenance": 0,
                       "redelivered_alone": 0}
        self.latency = LatencyHistogram()
        self.started = datetime.datetime.now(UTC)
        self.last_commit = None
        self._recent = collections.deque()  # (monotonic, readings loaded) over the last minute
        self._t0 = time.monotonic()
        self.things = {}  # (pole, node) -> thing id, as committed
        self.known_series = set()  # (thing id, key) already in the database: not inserted again
        self.checker = Checker()
        self.encoder = RowEncoder()
        self.dead_letters = 0  # batches the stream gave up on that this loader recorded
        self._dead_conn = None  # dead letters have a connection of their own: a group's thread holds self.conn
        self._maint_conn = None  # and so has the upkeep (maintain)
        self.maintaining = threading.Lock()  # held while a round of upkeep runs
        self._made_ahead = set()  # months whose partition the upkeep made ahead
        self.folded = 0  # id blocks this loader folded into the aggregates
        self.pole_written = {}  # pole -> when this loader last wrote its row (monotonic)
        this_month = month(self.started)
        self.partitions.add(this_month)  # made at connect, below
        self._month_span = (this_month.timestamp(), next_month(this_month).timestamp())
        self.conn = None
        self._connect()  # a wrong DSN or a database without the schema says so at once

    def _connect(self):
        """self.conn: a connection checked for the schema and ready for groups, or none at all (a
        connection left inside a failed transaction would turn every group's COMMIT into a savepoint's)."""
        conn = connect(self.dsn)
        try:
            require_schema(conn)
            with conn.transaction(), conn.cursor() as cur:
                # The session's table for a group whose samples the key partly holds already.
                cur.execute("CREATE TEMP TABLE incoming_samples (LIKE samples) ON COMMIT DELETE ROWS")
                sync_quantities(conn)  # keys this openpole's registry has, before a series names one
                self._partition(cur, month(self.started))  # this month's, before the first group needs it
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def rate(self, pending=0):
        """Readings loaded per second over the last minute (or since the start, when younger);
        pending: those of the group being committed."""
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - 60:
            self._recent.popleft()
        return (pending + sum(n for _, n in self._recent)) / max(1.0, min(60.0, now - self._t0))

    def decode(self, items):
        """items: [(subject, payload, stream timestamp or None)] -> (good, bad, stamps): the checked
        batches [(subject, payload, batch id, pole, messages as Checker.check gives them)], the rejected ones
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
                good.append((subject, payload, decoded[0], decoded[1],
                             self.checker.check(decoded, self._month_span, plausible_to)))
            except Exception as e:
                bad.append((_ascii(subject), _ascii(f"batch not loaded: {_why(e)}"), payload))
        return good, bad, [stamp for _, _, stamp in items]

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
                elif self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    self.conn.rollback()  # each group in a transaction of its own, never inside another
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

    @staticmethod
    def _partition(cur, m):
        """The month's partition of samples (maintain.make_partition)."""
        make_partition(cur, m)

    def _things(self, cur, pairs):
        """Thing ids for (pole, node) pairs, made (with their thing_poles row) when new: {pair: id}."""
        new = sorted(pairs - self.things.keys())
        if not new:
            return {}
        poles, nodes = [p for p, _ in new], [n for _, n in new]
        cur.execute("WITH n AS (INSERT INTO things (pole, node) SELECT * FROM unnest(%s::text[], %s::text[]) "
                    "ORDER BY 1, 2 ON CONFLICT DO NOTHING RETURNING id, pole, first_seen) "
                    "INSERT INTO thing_poles (thing_id, pole, since) SELECT id, pole, first_seen FROM n ORDER BY id",
                    (poles, nodes))
        cur.execute("SELECT pole, node, id FROM things WHERE (pole, node) IN (SELECT * FROM unnest(%s::text[], "
                    "%s::text[]))", (poles, nodes))
        return {(p, n): i for p, n, i in cur.fetchall()}

    def _write(self, good, bad):
        import psycopg.errors

        counts = {"batches": len(good), "records_received": 0, "records_unique": 0, "rejected": len(bad)}
        with self.conn.transaction(), self.conn.cursor() as cur:
            # Partitions first: their lock is then the first a group takes, so loaders wait, never deadlock.
            months = {smp[4] for b in good for m in b[4] for smp in m[6] if smp[4] is not None} - self.partitions
            for m in sorted(months):
                make_partition(cur, m)
            if bad:
                cur.executemany("INSERT INTO rejected (subject, reason, payload) VALUES (%s, %s, %s)", bad)
            # A pole's row is written when it is new and then once a minute: every group updating
            # it would make loaders that share the pole wait on each other's row lock.
            mono = time.monotonic()
            poles = sorted(p for p in {b[3] for b in good} if mono - self.pole_written.get(p, -1e9) > POLE_EVERY_S)
            if poles:
                cur.executemany("INSERT INTO poles (pole, last_batch) VALUES (%s, now()) ON CONFLICT (pole) DO UPDATE "
                                "SET last_batch = now()", [(p,) for p in poles])
            new_things = self._things(cur, {(m[0], m[1]) for b in good for m in b[4]})
            things = self.things if not new_things else {**self.things, **new_things}
            rows, new_series, seen = [], set(), set()
            for _, _, _, _, messages in good:
                for pole, node, boot, seq, tq, received, samples, n, keys in messages:
                    counts["records_received"] += n
                    thing = things[(pole, node)]
                    for key in keys:
                        if (thing, key) not in self.known_series:
                            new_series.add((thing, key))
                    for us, vals, exact, flagged, _ in samples:
                        if (thing, us, boot, seq) in seen:
                            continue  # twice in one group: the first copy only, as across groups
                        seen.add((thing, us, boot, seq))
                        rows.append((thing, us, boot, seq, received, tq, vals, exact, flagged))
            if new_series:
                ts, ks = zip(*sorted(new_series))
                cur.execute("INSERT INTO series (thing_id, key, unit) SELECT u.t, u.k, q.unit FROM unnest(%s::int[], "
                            "%s::int2[]) AS u(t, k) JOIN quantities q ON q.key = u.k ORDER BY 1, 2 ON CONFLICT DO "
                            "NOTHING", (list(ts), list(ks)))
            if rows:
                rows.sort(key=lambda r: r[:4])  # samples_key's order: loaders wait on each other, never deadlock
                cur.execute("SELECT nextval('sample_blocks') FROM generate_series(1, %s)", (-(-len(rows) // BLOCK),))
                blocks = [b for (b,) in cur.fetchall()]
                ids = [blocks[i // BLOCK] * BLOCK + i % BLOCK for i in range(len(rows))]
                data = self.encoder.encode([(i, us, received, boot, seq, thing, tq, vals, exact, flagged) for i, (
                    thing, us, boot, seq, received, tq, vals, exact, flagged) in zip(ids, rows)])
                try:
                    with self.conn.transaction():
                        self._copy(cur, "samples", data)
                    counts["records_unique"] = sum(len(r[6]) for r in rows)
                except psycopg.errors.UniqueViolation:  # some are there already: keep the others
                    self._copy(cur, "incoming_samples", data)
                    cur.execute(f"INSERT INTO samples ({SAMPLE_COLUMNS}) SELECT {SAMPLE_COLUMNS} FROM incoming_samples "
                                "ORDER BY thing_id, time, boot, seq ON CONFLICT DO NOTHING RETURNING id")
                    fresh = {i for (i,) in cur.fetchall()}
                    counts["records_unique"] = sum(len(r[6]) for r, i in zip(rows, ids) if i in fresh)
                cur.execute("INSERT INTO aggregate_queue (block) SELECT unnest(%s::int8[])", (blocks,))
            self._loader_row(cur, counts)
        # Committed: what the database now holds, remembered.
        self.partitions |= months
        self.things.update(new_things)
        self.pole_written.update((p, mono) for p in poles)
        self.known_series |= new_series
        return counts

    @staticmethod
    def _copy(cur, table, data):
        with cur.copy(f"COPY {table} ({SAMPLE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(data)

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

    def maintain(self, until=None):
        """One round of upkeep (tools/city/maintain.py) on a connection of its own: fold queued
        samples into the aggregates until none wait, another loader is folding, or the monotonic
        time `until` passes; and make next month's partition in this month's last week. The blocks
        folded, or None when the database was away or refused."""
        import psycopg

        with self.maintaining:
            try:
                if self._maint_conn is None or self._maint_conn.closed:
                    self._maint_conn = connect(self.dsn)
                folded = 0
                while True:
                    n = fold(self._maint_conn)
                    folded += n or 0
                    if not n or (until is not None and time.monotonic() > until):
                        break
                now = datetime.datetime.now(UTC)
                if next_month(month(now)) not in self._made_ahead:
                    with self._maint_conn.transaction(), self._maint_conn.cursor() as cur:
                        made = partition_ahead(cur, now)
                    if made is not None:
                        self._made_ahead.add(made)
                self.folded += folded
                return folded
            except (psycopg.OperationalError, psycopg.InterfaceError, UserError) as e:
                if not isinstance(e, psycopg.errors.ProgramLimitExceeded):
                    self.errors["db_reconnects"] += 1
                    self._close_maint()
                    return None
                error = e
            except psycopg.Error as e:
                error = e
            self.errors["maintenance"] += 1
            log.warning("aggregates: PostgreSQL refused the fold: %s", _why(error))
            self._close_maint()
            return None

    def _close_maint(self):
        if self._maint_conn is not None:
            self._maint_conn.close()
        self._maint_conn = None

    def close(self):
        for conn in (self.conn, self._dead_conn, self._maint_conn):
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
        "# HELP openpole_city_aggregate_blocks_folded_total Blocks of samples (up to 4,096 each) this loader folded into "
        "the hourly and daily aggregates.",
        "# TYPE openpole_city_aggregate_blocks_folded_total counter",
        f"openpole_city_aggregate_blocks_folded_total {loader.folded}",
        "# HELP openpole_city_errors_total Database reconnects and retries, failed acks and fetches, batches the stream delivered again (each written alone).",
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
    """[(messages, decoded)] for up to `group` messages, decoded in a thread (the event loop goes on
    telling the stream that the group being written is in progress) while the previous group is
    being written in its own. A message the stream delivers again goes in a group of its own: were
    it what stopped a loader mid-group, it cannot take its neighbours with it again. [] after a
    second with none, or when a server went away mid-fetch (the client reconnects to another)."""
    import nats.errors

    try:
        msgs = await sub.fetch(group, timeout=1)
    except (nats.errors.TimeoutError, asyncio.TimeoutError):
        return []
    except nats.errors.Error:
        loader.errors["fetch_errors"] += 1
        await asyncio.sleep(0.5)
        return []
    fresh = [m for m in msgs if _deliveries(m) <= 1]
    groups = ([fresh] if fresh else []) + [[m] for m in msgs if _deliveries(m) > 1]
    loader.errors["redelivered_alone"] += len(msgs) - len(fresh)
    out = []
    for g in groups:
        items = [(m.subject, m.data, m.metadata.timestamp.timestamp() if m.metadata.timestamp else None) for m in g]
        out.append((g, await asyncio.to_thread(loader.decode, items)))
    return out


def _deliveries(m):
    try:
        return m.metadata.num_delivered or 1
    except Exception:  # a message without JetStream metadata: as delivered once
        return 1


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


async def _maintain(loader, every_s):
    """Every every_s seconds, one round of upkeep (Loader.maintain) in a thread of its own."""
    while True:
        await asyncio.sleep(every_s)
        await asyncio.to_thread(loader.maintain, time.monotonic() + every_s)


async def _run(nats_url, dsn, keys, group, idle_exit_s, report, metrics_at=None, name=None, nats_opts=None,
               aggregate_every_s=10.0):
    loader = Loader(dsn, keys, name)
    httpd = serve_metrics(loader, *metrics_at) if metrics_at else None
    try:
        nc = await _connect(nats_url, opts=nats_opts, keep=True)
    except UserError:
        loader.close()
        if httpd:
            httpd.shutdown()
        raise
    upkeep = None
    try:
        js = nc.jetstream(timeout=10)
        sub, dead = await _subscribe(js, nats_url)
        watch = {"idle": False}
        watcher = asyncio.ensure_future(_record_dead_letters(js, dead, loader, watch))
        if aggregate_every_s:
            upkeep = asyncio.ensure_future(_maintain(loader, aggregate_every_s))
        idle_since = beat = time.monotonic()
        pending = None
        try:
            while True:
                for task in (watcher, upkeep):
                    if task is not None and task.done():
                        task.result()  # its error, rather than its work silently no longer done
                groups = await (pending or _fetch(sub, group, loader))
                pending = None
                if not groups:
                    now = time.monotonic()
                    if now - beat > HEARTBEAT_S:
                        await asyncio.to_thread(loader.heartbeat)
                        beat = now
                    if idle_exit_s is not None and now - idle_since > idle_exit_s and watch["idle"]:
                        if upkeep is not None:  # what waits for the aggregates, folded before leaving
                            upkeep.cancel()
                            await asyncio.to_thread(loader.maintain)
                        return loader.totals
                    continue
                idle_since = beat = time.monotonic()
                pending = asyncio.ensure_future(_fetch(sub, group, loader))  # the next group, while this one is written
                for msgs, decoded in groups:
                    counts = await _store_keeping_claim(loader, msgs, decoded)  # committed ...
                    for m in msgs:
                        try:
                            await m.ack()  # ... before the stream lets them go
                        except Exception:  # not acked: redelivered after the ack wait, a duplicate for the key
                            loader.errors["ack_failures"] += 1
                    report(counts)
        finally:
            watcher.cancel()  # an advisory it held comes again after its ack wait
            if pending is not None:
                pending.cancel()  # what it may have fetched comes again after the ack wait
    finally:
        if upkeep is not None:
            upkeep.cancel()
        loader.maintaining.acquire()  # a fold under way in its thread ends (commits or not) first
        if httpd:
            httpd.shutdown()
        loader.close()
        await nc.close()


def run(nats_url, dsn, keys=None, group=200, idle_exit_s=None, report=lambda counts: None, metrics_at=None, name=None,
        nats_opts=None, aggregate_every_s=10.0):
    return asyncio.run(_run(nats_url, dsn, keys, group, idle_exit_s, report, metrics_at, name, nats_opts,
                            aggregate_every_s))


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
