"""Migration 4 on a database that schema 3 filled: batches as poles send them, written the way
schema 3's loader wrote them (a row per reading, the message index, series, nodes, poles, loaders),
with the odd rows such a database can hold. `openpole city init --db` moves it to samples; every
reading is still there as it was, and `city latest`, `city export`, `city stats` and `city status`
give what schema 3 held; a message loaded before the migration and sent again is stored once."""

import collections
import csv
import datetime
import gzip
import json
import subprocess
import sys
import time

import cbor2
import pytest
from pgcluster import PgServer

from openpole.wire import batch, node_message, sign

UTC = datetime.timezone.utc
KEY = bytes(range(32))
JANUARY = datetime.datetime(2026, 1, 15, 12, 0, tzinfo=UTC)  # a month of its own, with its partition


def openpole(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def pg():
    server = PgServer()
    yield server
    server.stop()


def signed(pole, node, boot, seqs, receive_ns, values=lambda s: {1: 20.0 + s % 7 + 0.25, 2: 45.5, 3: 1013.27, 16: 61.3}):
    """A batch as the edge agent sends it: (batch id, payload)."""
    blobs, n = [], 0
    for s in seqs:
        m = node_message.decode(cbor2.dumps({0: 1, 1: node, 2: boot, 3: s, 4: [[0, values(s)]]}))
        k, senml = batch.senml_records(pole, m, receive_ns + s * 1_000_000)
        blobs.append(senml)
        n += k
    bid = batch.new_batch_id()
    return bid, sign.sign(batch.encode(bid, pole, blobs, n, receive_ns), pole, KEY)


def schema3(dsn):
    """A database at schema 3, made by migrations 1 to 3 as `city init` applied them."""
    import psycopg

    from openpole.city.db import MIGRATIONS

    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied timestamptz NOT NULL "
                     "DEFAULT now())")
        for version, sql in MIGRATIONS[:3]:
            conn.execute(sql)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))


def load_as_schema3(conn, payloads, name="loader-3"):
    """What schema 3's loader wrote for these batches, in one transaction: the message index, the
    readings of the messages it did not hold (COPY), series, nodes, poles and its loaders row."""
    received = unique = 0
    with conn.transaction(), conn.cursor() as cur:
        for payload in payloads:
            batch_id, pole, messages, _ = batch.decode_signed(payload, {"p1": KEY, "p2": KEY})
            cur.execute("INSERT INTO poles (pole, last_batch) VALUES (%s, now()) ON CONFLICT (pole) DO UPDATE SET "
                        "last_batch = now()", (pole,))
            for mpole, node, boot, seq, _, readings in messages:
                received += len(readings)
                cur.execute("INSERT INTO nodes (pole, node) VALUES (%s, %s) ON CONFLICT DO NOTHING", (mpole, node))
                cur.execute("INSERT INTO messages (pole, node, boot, seq, batch_id, readings) VALUES (%s, %s, %s, %s, "
                            "%s, %s) ON CONFLICT DO NOTHING", (mpole, node, boot, seq, batch_id, len(readings)))
                if not cur.rowcount:
                    continue
                unique += len(readings)
                with cur.copy("COPY readings (pole, node, quantity, time, value, unit, flags, time_quality, boot, seq) "
                              "FROM STDIN") as copy:
                    for q, unit, value, t, flags, tq, _ in readings:
                        copy.write_row((mpole, node, q, datetime.datetime.fromtimestamp(t, UTC), float(value), unit,
                                        flags, tq, boot, seq))
        cur.execute("INSERT INTO series (pole, node, quantity) SELECT DISTINCT pole, node, quantity FROM readings "
                    "ON CONFLICT DO NOTHING")
        cur.execute("INSERT INTO loaders (name, started, seen, batches, received, loaded) VALUES (%s, now(), now(), %s, "
                    "%s, %s) ON CONFLICT (name) DO UPDATE SET batches = loaders.batches + excluded.batches, received = "
                    "loaders.received + excluded.received, loaded = loaders.loaded + excluded.loaded",
                    (name, len(payloads), received, unique))


# Rows schema 3 took that a sample cannot hold: they stay, in readings_legacy.
ODD = [("p1", "n1", "wind", "m/s", 3.5, 0),  # a quantity the registry lacks
       ("p1", "n1", "temperature", "degC", 21.5, 0),  # another unit than the registry's
       ("p1", "n1", "humidity", "%RH", 40.0, 5)]  # flags other than out of range


def fill(dsn):
    """Schema 3 with data: batches from two poles (one node message sent twice under another batch
    id), a month of its own (January, its partition made), a clock of 1990 (the default partition),
    a value a real does not give back, and the ODD rows."""
    import psycopg

    now_ns = time.time_ns() - 3600 * 10**9
    payloads = [signed("p1", f"n{i % 3}", 1, range(i * 5, i * 5 + 5), now_ns + i * 10**9)[1] for i in range(6)]
    payloads.append(signed("p2", "n0", 7, range(3), now_ns)[1])  # p2's n0 is another thing than p1's
    payloads.append(signed("p1", "n0", 1, range(0, 3), now_ns)[1])  # re-sent: duplicates
    payloads.append(signed("p1", "n9", 2, range(2), int(JANUARY.timestamp() * 1e9))[1])
    payloads.append(signed("p1", "old", 1, range(2), int(datetime.datetime(1990, 6, 1, tzinfo=UTC).timestamp() * 1e9))[1])
    payloads.append(signed("p1", "big", 1, range(1), now_ns, values=lambda s: {3: 12345678.91, 1: 21.5})[1])
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE readings_2026_01 PARTITION OF readings FOR VALUES FROM ('2026-01-01 00:00+00') TO "
                     "('2026-02-01 00:00+00')")
        month = datetime.datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (month + datetime.timedelta(days=32)).replace(day=1)
        conn.execute(f"CREATE TABLE readings_{month:%Y_%m} PARTITION OF readings FOR VALUES FROM ('{month.isoformat()}') "
                     f"TO ('{nxt.isoformat()}')")
        conn.commit()
        load_as_schema3(conn, payloads[:4])
        load_as_schema3(conn, payloads[4:], name="loader-3b")
        t = datetime.datetime.now(UTC) - datetime.timedelta(minutes=30)
        for i, (pole, node, q, unit, value, flags) in enumerate(ODD):
            conn.execute("INSERT INTO readings VALUES (%s, %s, %s, %s, %s, %s, %s, 0, 1, %s)",
                         (pole, node, q, t, value, unit, flags, 900 + i))
        # a second temperature at one time in one message: schema 3 stored both
        conn.execute("INSERT INTO readings SELECT pole, node, quantity, time, value + 1, unit, flags, time_quality, boot, "
                     "seq FROM readings WHERE node = 'n1' AND quantity = 'temperature' AND seq = 5")
        conn.commit()
    return payloads


def everything(dsn):
    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute("SET TimeZone TO 'UTC'")
        return collections.Counter(conn.execute("SELECT pole, node, quantity, time, value, unit, flags, time_quality, "
                                                "boot, seq FROM readings").fetchall())


def test_migration_4_moves_schema_3_data_and_every_query_still_answers(pg, tmp_path):
    import psycopg

    schema3(pg.dsn)
    payloads = fill(pg.dsn)
    before = everything(pg.dsn)
    assert sum(before.values()) == 6 * 5 * 4 + 3 * 4 + 2 * 4 + 2 * 4 + 2 + len(ODD) + 1
    with psycopg.connect(pg.dsn) as conn:
        stats_before = conn.execute("SELECT sum(batches), sum(received), sum(loaded) FROM loaders").fetchone()
        nodes_before = conn.execute("SELECT count(*) FROM nodes").fetchone()[0]
    now = datetime.datetime.now(UTC)
    latest_before = {}
    for (pole, node, q, t, value, unit, *_), n in before.items():
        key = (pole, node, q)
        if t < now + datetime.timedelta(days=1) and (key not in latest_before or latest_before[key][0] <= t):
            latest_before[key] = (t, value, unit)

    r = openpole("city", "init", "--db", pg.dsn)
    assert r.returncode == 0 and "applied migration(s) 4" in r.stdout, r.stdout + r.stderr

    after = everything(pg.dsn)
    assert after == before  # every reading, as it was: time to the microsecond, value to the last digit
    with psycopg.connect(pg.dsn) as conn:
        legacy = conn.execute("SELECT quantity, unit, flags, seq FROM readings_legacy ORDER BY seq").fetchall()
        assert legacy == [("temperature", "Cel", 0, 5)] + [(q, u, f, 900 + i) for i, (_, _, q, u, _, f) in enumerate(ODD)]
        assert conn.execute("SELECT count(*) FROM samples_2026_01").fetchone()[0] == 2  # January's, in January
        assert conn.execute("SELECT count(*) FROM samples_other").fetchone()[0] == 2  # 1990's, in the default
        assert conn.execute("SELECT vals, vals8 FROM samples s JOIN things t ON t.id = s.thing_id WHERE t.node = 'big'"
                            ).fetchall() == [(None, [21.5, None, 12345678.91])]  # float8 where a real gives other digits
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM samples").fetchone() == (
            6 * 5 + 3 + 2 + 2 + 1, 6 * 5 + 3 + 2 + 2 + 1)
        things = conn.execute("SELECT pole, node FROM things ORDER BY 1, 2").fetchall()
        assert ("p2", "n0") in things and ("p1", "n0") in things and len(things) == nodes_before
        assert conn.execute("SELECT count(*) FROM thing_poles").fetchone()[0] == len(things)
        assert conn.execute("SELECT count(*) FROM series").fetchone()[0] == len(
            {(p, n, q) for p, n, q, u, *_ in before if q in ("temperature", "humidity", "pressure", "laeq")})
        tables = {t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert not {"messages", "nodes", "readings", "readings_2026_01"} & tables

    st = json.loads(openpole("city", "stats", "--db", pg.dsn, "--json").stdout)
    assert (st["batches"], st["records"], st["unique"], st["nodes"]) == (*map(int, stats_before), nodes_before), st
    latest = json.loads(openpole("city", "latest", "--db", pg.dsn, "--json").stdout)
    got = {(r["pole"], r["node"], r["name"]): (r["time"], r["value"], r["unit"]) for r in latest}
    assert got == {k: (t.timestamp(), v, u) for k, (t, v, u) in latest_before.items()}
    r = openpole("city", "export", "--db", pg.dsn, "--out", tmp_path / "csv")
    assert r.returncode == 0 and f"wrote {sum(before.values())} records" in r.stdout, r.stdout + r.stderr
    with gzip.open(tmp_path / "csv" / "data.csv.gz", "rt") as f:
        rows = list(csv.reader(f))[1:]
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert collections.Counter((r[1], r[2], r[4], float(r[5])) for r in rows) == collections.Counter(
        (node, pole, q, value) for (pole, node, q, _, value, *_), n in before.items() for _ in range(n))
    status = json.loads(openpole("city", "status", "--db", pg.dsn, "--json").stdout)
    assert {l["name"] for l in status["loaders"]} == {"loader-3", "loader-3b"}
    assert status["aggregates"]["blocks_waiting"] >= 1  # the migrated samples wait for the first fold

    # The hourly aggregates of the migrated samples, folded as a loader's are.
    from openpole.city import load, maintain

    with psycopg.connect(pg.dsn) as conn:
        while maintain.fold(conn):
            pass
        hourly = conn.execute("SELECT sum(count) FROM hourly").fetchone()[0]
        in_range = conn.execute("SELECT count(*) FROM readings r JOIN quantities q ON q.name = r.quantity AND "
                                "q.unit = r.unit WHERE r.flags = 0 AND r.value BETWEEN q.min AND q.max").fetchone()[0]
        assert hourly == in_range - 1  # all but the second temperature at one time, which is legacy

    # Loaded before the migration, sent again after it: stored once.
    loader = load.Loader(pg.dsn, {"p1": KEY, "p2": KEY}, name="loader-4")
    try:
        counts = loader.store([("s", payloads[0], None), ("s", payloads[6], None)])
        assert counts["records_unique"] == 0 and counts["records_received"] == 5 * 4 + 3 * 4, counts
        fresh = signed("p1", "n0", 1, range(100, 102), time.time_ns())[1]
        assert loader.store([("s", fresh, None)])["records_unique"] == 8
    finally:
        loader.close()
    assert sum(everything(pg.dsn).values()) == sum(before.values()) + 8
