"""A city database for the SensorThings tests: readings stored by the real loader (tools/city/load.py),
then the tables of the schema-3 contract (research/city-v3.md) that the API reads.

Until the city store's schema 3 lands, `contract_tables()` makes those tables from what the loader
stored (schema 2): things, thing_poles, series, samples, hourly and daily, plus locations from the
poles registry the test gives. The role openpole_reader gets SELECT only.
"""

import math

import numpy

import cbor2

from openpole.spec.registry import REGISTRY
from openpole.wire import batch, node_message, sign

KEY = bytes(range(32))
T0 = 1_790_000_000  # 2026-09-21T13:33:20Z: a whole number of seconds
POLES = {"p1": (37.5665, 126.9780, "Main St / 3rd Ave", "north-east corner"),
         "p2": (37.5700, 126.9900, "Park Rd 12", None)}


def node_batch(pole, node, boot, samples, receive_s):
    """samples: [(seq, age_s, {quantity name: value})] -> a signed batch, one node message each."""
    by_name = REGISTRY.by_name
    blobs, n = [], 0
    for seq, age_s, values in samples:
        m = node_message.decode(cbor2.dumps({0: 1, 1: node, 2: boot, 3: seq,
                                             4: [[int(age_s * 1000), {by_name[q].key: v for q, v in values.items()}]]}))
        k, senml = batch.senml_records(pole, m, int(receive_s * 1e9))
        blobs.append(senml)
        n += k
    return sign.sign(batch.encode(batch.new_batch_id(), pole, blobs, n, int(receive_s * 1e9)), pole, KEY)


def dataset():
    """[(pole, node, boot, [(seq, age_s, values)], receive_s)]: three nodes, two poles, a node moved.

    n1 (p1): a BME280 and a PMS5003, 30 samples a minute apart; n2 (p2): an SHT31, 12 samples;
    n3: on p2 for its first 6 samples, then on p1 (a HistoricalLocation each). A value out of range
    is flagged (pm2_5 of 1500 µg/m³)."""
    out = []
    for i in range(30):
        v = {"temperature": 20.0 + i * 0.25, "humidity": 50.0 + i, "pressure": 1000.0 + i, "pm2_5": float(i)}
        if i == 10:
            v["pressure"] = 16777217.0  # 2^24 + 1: far out of range, and no single-precision float holds it
        if i == 7:
            v["pm2_5"] = 1500.0
        out.append(("p1", "n1", 1, [(i, 5, v)], T0 + 60 * i + 5))
    for i in range(12):
        out.append(("p2", "n2", 4, [(i, 2, {"temperature": float(i + 1), "humidity": 40.0 + i})], T0 + 60 * i + 2))
    for i in range(12):
        pole = "p2" if i < 6 else "p1"
        out.append((pole, "n3", 9, [(i, 1, {"laeq": 50.0 + i, "lamax": 60.0 + i})], T0 + 3600 + 60 * i + 1))
    return out


def load(dsn, data=None):
    """Store the dataset's batches through the real loader; -> readings stored."""
    from openpole.city.load import Loader

    loader = Loader(dsn, keys={"p1": KEY, "p2": KEY})
    total = 0
    try:
        for pole, node, boot, samples, rs in data or dataset():
            c = loader.store([(f"openpole.batches.{pole}", node_batch(pole, node, boot, samples, rs), None)])
            total += c["records_unique"]
    finally:
        loader.close()
    return total


# In a schema of its own, first on the reader's search_path: the loader goes on writing schema 2's tables.
CONTRACT = """
CREATE SCHEMA contract;
SET search_path = contract, public;
CREATE TABLE things (id serial PRIMARY KEY, node text UNIQUE NOT NULL, first_seen timestamptz NOT NULL);
CREATE TABLE locations (id serial PRIMARY KEY, pole text NOT NULL, lat double precision, lon double precision,
    address text, description text, valid_from timestamptz NOT NULL);
CREATE TABLE thing_poles (id serial PRIMARY KEY, thing_id int NOT NULL, pole text NOT NULL, since timestamptz NOT NULL);
CREATE INDEX ON thing_poles (thing_id, since);
CREATE TABLE series (id serial PRIMARY KEY, thing_id int NOT NULL, key smallint NOT NULL, unit text,
    first_seen timestamptz NOT NULL, UNIQUE (thing_id, key));
CREATE TABLE samples (id bigint NOT NULL, thing_id int NOT NULL, time timestamptz NOT NULL, received timestamptz,
    tq smallint NOT NULL, vals real[], flagged smallint[], boot bigint NOT NULL, seq bigint NOT NULL,
    vals8 double precision[]) PARTITION BY RANGE (time);
CREATE TABLE samples_2026_09 PARTITION OF samples FOR VALUES FROM ('2026-09-01') TO ('2026-10-01');
CREATE TABLE samples_2026_10 PARTITION OF samples FOR VALUES FROM ('2026-10-01') TO ('2026-11-01');
CREATE TABLE samples_other PARTITION OF samples DEFAULT;
CREATE INDEX samples_by_thing ON samples (thing_id, time);
CREATE INDEX samples_by_id ON samples (id);
CREATE TABLE hourly (series_id int NOT NULL, hour timestamptz NOT NULL, count int NOT NULL, mean double precision,
    min real, max real, PRIMARY KEY (series_id, hour));
CREATE TABLE daily (series_id int NOT NULL, day timestamptz NOT NULL, count int NOT NULL, mean double precision,
    min real, max real, PRIMARY KEY (series_id, day));
"""


def contract_tables(dsn, poles=POLES, moves=()):
    """The schema-3 tables from what the loader stored; moves: [(pole, lat, lon, valid_from)] added later."""
    import datetime

    import psycopg

    with psycopg.connect(dsn) as conn:
        conn.execute(CONTRACT)
        conn.execute("SET search_path = contract, public")
        t_first = datetime.datetime.fromtimestamp(T0 - 86400, datetime.timezone.utc)
        for pole, (lat, lon, addr, desc) in poles.items():
            conn.execute("INSERT INTO locations (pole, lat, lon, address, description, valid_from) "
                         "VALUES (%s, %s, %s, %s, %s, %s)", (pole, lat, lon, addr, desc, t_first))
        for pole, lat, lon, at in moves:
            conn.execute("INSERT INTO locations (pole, lat, lon, address, description, valid_from) "
                         "VALUES (%s, %s, %s, NULL, NULL, %s)", (pole, lat, lon, at))
    ids = sync(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'openpole_reader') THEN "
                     "CREATE ROLE openpole_reader LOGIN; END IF; END $$")
        conn.execute("GRANT USAGE ON SCHEMA contract TO openpole_reader")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA contract, public TO openpole_reader")
        conn.execute("ALTER ROLE openpole_reader SET search_path = contract, public")
    return ids


def sync(dsn):
    """Readings the loader stored since the last sync -> samples (one transaction: its COMMIT is when
    they become Observations), and the hourly and daily means made again."""
    import datetime

    import psycopg

    keys = {q.name: q.key for q in REGISTRY.by_key.values()}
    levels = REGISTRY.level_keys
    with psycopg.connect(contract_dsn(dsn)) as conn:
        things = dict(conn.execute("SELECT node, id FROM things").fetchall())
        where = dict(conn.execute("SELECT DISTINCT ON (thing_id) thing_id, pole FROM thing_poles "
                                  "ORDER BY thing_id, since DESC, id DESC").fetchall())
        series = {(t, k): i for i, t, k in conn.execute("SELECT id, thing_id, key FROM series").fetchall()}
        done = {(t, b, q) for t, b, q in conn.execute("SELECT DISTINCT thing_id, boot, seq FROM samples").fetchall()}
        rows = conn.execute("SELECT pole, node, quantity, time, value, unit, flags, time_quality, boot, seq "
                            "FROM readings ORDER BY time, node, boot, seq").fetchall()
        samples = {}
        for pole, node, q, t, v, unit, flags, tq, boot, seq in rows:
            if node not in things:
                things[node] = conn.execute("INSERT INTO things (node, first_seen) VALUES (%s, %s) RETURNING id",
                                            (node, t)).fetchone()[0]
            tid = things[node]
            if (tid, boot, seq) in done:
                continue
            if where.get(tid) != pole:
                where[tid] = pole
                conn.execute("INSERT INTO thing_poles (thing_id, pole, since) VALUES (%s, %s, %s)", (tid, pole, t))
            if (tid, keys[q]) not in series:
                series[(tid, keys[q])] = conn.execute(
                    "INSERT INTO series (thing_id, key, unit, first_seen) VALUES (%s, %s, %s, %s) RETURNING id",
                    (tid, keys[q], unit, t)).fetchone()[0]
            s = samples.setdefault((tid, boot, seq, t), {"vals": [None] * max(keys.values()), "flagged": [], "tq": tq})
            s["vals"][keys[q] - 1] = v
            if flags & 1:
                s["flagged"].append(keys[q])
        first = conn.execute("SELECT coalesce(max(id), 0) FROM samples").fetchone()[0] + 1
        for i, ((tid, boot, seq, t), s) in enumerate(sorted(samples.items(), key=lambda x: (x[0][3], x[0][0])), first):
            # as schema 4 stores them: in real when each value prints back as it was, else all in float8
            exact = all(v is None or float(str(numpy.float32(v))) == v for v in s["vals"])
            conn.execute("INSERT INTO samples VALUES (%s, %s, %s, %s, %s, %s::real[], %s::smallint[], %s, %s, "
                         "%s::float8[])", (i, tid, t, t + datetime.timedelta(seconds=1), s["tq"],
                                           s["vals"] if exact else None, s["flagged"] or None, boot, seq,
                                           None if exact else s["vals"]))
        conn.execute("DELETE FROM hourly")
        conn.execute("DELETE FROM daily")
        everything = conn.execute("SELECT thing_id, time, coalesce(vals8, vals::text[]::float8[]) FROM samples").fetchall()
        for table, unit in (("hourly", 3600), ("daily", 86400)):
            agg = {}
            for tid, t, vals in everything:
                for k, v in enumerate(vals, 1):
                    if v is not None and (tid, k) in series:
                        start = int(t.timestamp()) // unit * unit
                        agg.setdefault((series[(tid, k)], start, k), []).append(v)
            for (sid, start, k), vs in sorted(agg.items()):
                mean = (10 * math.log10(sum(10 ** (x / 10) for x in vs) / len(vs)) if k in levels
                        else sum(vs) / len(vs))
                conn.execute(f"INSERT INTO {table} VALUES (%s, to_timestamp(%s), %s, %s, %s, %s)",
                             (sid, start, len(vs), mean, min(vs), max(vs)))
        conn.execute("ANALYZE")
        total = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    return {"things": things, "series": series, "samples": total}


def contract_dsn(dsn):
    """The database as its owner, with the contract's tables first on the path."""
    return dsn + "?options=-csearch_path%3Dcontract,public"


def reader_dsn(dsn):
    return dsn.replace("postgresql://openpole@", "postgresql://openpole_reader@")
