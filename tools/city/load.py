"""`openpole city load`: the stream of pole batches into PostgreSQL.

A loader reads the stream through one durable pull consumer ("loaders"); several loaders share it,
so adding one adds throughput. Each fetched group is checked (the pole's signature when keys are
given, then the shared decoder: edge_agent/batch.py decode_signed); what fails goes to `rejected`
with the reason. Readings and the message index are written in one transaction, the readings with
COPY; a node message already in the index (re-sent past the stream's duplicate window, or in
another batch after a pole crash) is counted as a duplicate and its readings are skipped. The NATS
messages are acknowledged only after COMMIT: a loader killed mid-group loses nothing (the stream
sends the group again after the consumer's ack wait) and doubles nothing (the index).
"""

import asyncio
import datetime
import time

from openpole.edge_agent import batch

from .db import connect
from .stream import STREAM, SUBJECTS, _quiet, servers

CONSUMER = "loaders"
ACK_WAIT_S = 20.0  # an unacknowledged group comes again this long after a loader died with it
PLAUSIBLE_FROM = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)


def _month(t):
    return datetime.datetime(t.year, t.month, 1, tzinfo=datetime.timezone.utc)


def _next_month(m):
    return m.replace(year=m.year + (m.month == 12), month=m.month % 12 + 1)


class Loader:
    def __init__(self, dsn, keys=None):
        self.conn = connect(dsn)
        self.keys = keys or {}
        self.partitions = set()
        self.totals = {"batches": 0, "records_received": 0, "records_unique": 0, "rejected": 0}

    def _partition(self, cur, month):
        """The month's partition of readings, made on first use (before any row of it is written)."""
        if month in self.partitions:
            return
        name = f"readings_{month:%Y_%m}"
        cur.execute(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF readings FOR VALUES FROM ('{month.isoformat()}') "
                    f"TO ('{_next_month(month).isoformat()}')")
        self.partitions.add(month)

    def store(self, items):
        """items: [(subject, payload)] -> the counts this group added. One transaction."""
        good, bad = [], []
        for subject, payload in items:
            try:
                good.append(batch.decode_signed(payload, self.keys))
            except ValueError as e:
                bad.append((subject, str(e)[:500], payload))
        latest = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=730)
        counts = {"batches": len(good), "records_received": 0, "records_unique": 0, "rejected": len(bad)}
        with self.conn.transaction(), self.conn.cursor() as cur:
            for subject, why, payload in bad:
                cur.execute("INSERT INTO rejected (subject, reason, payload) VALUES (%s, %s, %s)", (subject, why, payload))
            rows = []
            for batch_id, pole, messages, _minutes in good:
                cur.execute("INSERT INTO poles (pole, last_batch) VALUES (%s, now()) ON CONFLICT (pole) DO UPDATE SET "
                            "last_batch = now()", (pole,))
                cur.executemany("INSERT INTO nodes (pole, node) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                                sorted({(m[0], m[1]) for m in messages}))
                fresh = set()  # the messages the index did not hold: one pipelined statement for the batch
                cur.executemany("INSERT INTO messages (pole, node, boot, seq, batch_id, readings) VALUES "
                                "(%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING pole, node, boot, seq",
                                [(m[0], m[1], m[2], m[3], batch_id, len(m[5])) for m in messages], returning=True)
                while True:
                    fresh.update(cur.fetchall())
                    if not cur.nextset():
                        break
                for m in messages:
                    counts["records_received"] += len(m[5])
                    if (m[0], m[1], m[2], m[3]) not in fresh:
                        continue
                    for name, unit, value, t, flags, tq, _rt in m[5]:
                        when = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
                        if PLAUSIBLE_FROM <= when < latest:
                            self._partition(cur, _month(when))
                        rows.append((m[0], m[1], name, when, float(value), unit, flags, tq, m[2], m[3]))
            counts["records_unique"] = len(rows)
            with cur.copy("COPY readings (pole, node, quantity, time, value, unit, flags, time_quality, boot, seq) "
                          "FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cur.executemany("INSERT INTO counters (name, value) VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET "
                            "value = counters.value + excluded.value", [(k, v) for k, v in counts.items() if v])
        for k, v in counts.items():
            self.totals[k] += v
        return counts

    def close(self):
        self.conn.close()


async def _run(nats_url, dsn, keys, group, idle_exit_s, report):
    import nats
    import nats.errors
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(servers(nats_url), error_cb=_quiet, disconnected_cb=_quiet, reconnected_cb=_quiet,
                            max_reconnect_attempts=-1, reconnect_time_wait=1)
    loader = Loader(dsn, keys)
    try:
        js = nc.jetstream(timeout=10)
        sub = await js.pull_subscribe(SUBJECTS[0], durable=CONSUMER, stream=STREAM,
                                      config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S,
                                                            max_ack_pending=20000))
        idle_since = time.monotonic()
        while True:
            try:
                msgs = await sub.fetch(group, timeout=1)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                    return loader.totals
                continue
            idle_since = time.monotonic()
            counts = loader.store([(m.subject, m.data) for m in msgs])  # committed ...
            for m in msgs:
                await m.ack()  # ... before the stream lets them go
            report(counts)
    finally:
        loader.close()
        await nc.close()


def run(nats_url, dsn, keys=None, group=100, idle_exit_s=None, report=lambda counts: None):
    return asyncio.run(_run(nats_url, dsn, keys, group, idle_exit_s, report))


def stats(dsn):
    """The same keys as `openpole receiver stats`: records, unique, duplicates, nodes (and more)."""
    with connect(dsn) as conn:
        c = dict(conn.execute("SELECT name, value FROM counters").fetchall())
        nodes = conn.execute("SELECT count(*) FROM nodes").fetchone()[0]
        rejected = conn.execute("SELECT count(*) FROM rejected").fetchone()[0]
    received, unique = c.get("records_received", 0), c.get("records_unique", 0)
    return {"records": received, "unique": unique, "duplicates": received - unique, "nodes": nodes,
            "batches": c.get("batches", 0), "batches_rejected": rejected}
