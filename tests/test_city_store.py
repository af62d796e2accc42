"""The city's schema 4 as the SensorThings API and the city's SQL read it, against a real PostgreSQL:
hourly and daily aggregates folded in incrementally (and only once), Observation ids that lead
back to their reading, the API's hot queries as index scans, the read-only role, and a loader whose
reconnection fails halfway losing nothing."""

import datetime
import json
import math
import subprocess
import sys

import pytest
from pgcluster import PgServer
from test_boundary_city import KEY, POLE, message, records_batch

UTC = datetime.timezone.utc


def openpole(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def pg():
    server = PgServer()
    yield server
    server.stop()


@pytest.fixture
def loader(pg):
    from openpole.city import db, load

    db.migrate(pg.dsn)
    loader = load.Loader(pg.dsn, {POLE: KEY}, name="store")
    yield loader
    loader.close()


def hour_start(t):
    return t.replace(minute=0, second=0, microsecond=0)


def batch_of(readings, seq0):
    """One batch: a message per (node, time, [(name, unit, value, flags)]), seq from seq0."""
    records = []
    for i, (node, when, values) in enumerate(readings):
        records += message(node, 1, seq0 + i, [(n, u, v, 0, f) for n, u, v, f in values], bt=when.timestamp())
    return records_batch(records)[1]


def oracle(readings, by):
    """Per (node, quantity, period): count, mean (energy mean for laeq), min, max, first, last of the
    readings within the registry's range and not flagged; by: the period's start of a time."""
    from openpole.spec.registry import REGISTRY

    q = REGISTRY.by_name
    acc = {}
    for node, when, values in readings:
        for name, _, v, flags in values:
            if flags or not q[name].min <= v <= q[name].max:
                continue
            acc.setdefault((node, name, by(when)), []).append((when, v))
    out = {}
    for k, got in acc.items():
        vs = [v for _, v in got]
        mean = (10 * math.log10(sum(10 ** (v / 10) for v in vs) / len(vs)) if q[k[1]].kind == "level"
                else sum(vs) / len(vs))
        out[k] = (len(vs), mean, min(vs), max(vs), min(t for t, _ in got), max(t for t, _ in got))
    return out


def aggregates(conn, table, period):
    rows = conn.execute(f"SELECT t.node, q.name, a.{period}, a.count, a.mean, a.min, a.max, a.first, a.last FROM {table} a "
                        "JOIN series se ON se.id = a.series_id JOIN things t ON t.id = se.thing_id JOIN quantities q "
                        "ON q.key = se.key").fetchall()
    return {(n, q, p): tuple(rest) for n, q, p, *rest in rows}


def same(got, want):
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    for k in want:
        (c1, m1, lo1, hi1, f1, l1), (c2, m2, lo2, hi2, f2, l2) = got[k], want[k]
        assert (c1, lo1, hi1, f1, l1) == (c2, lo2, hi2, f2, l2) and math.isclose(m1, m2, rel_tol=1e-12), (k, got[k], want[k])


def test_hourly_and_daily_aggregates_are_folded_from_new_samples_only(pg, loader):
    import psycopg

    from openpole.city import maintain

    h = hour_start(datetime.datetime.now(UTC)) - datetime.timedelta(hours=30)  # across a UTC midnight or two
    first = []
    for i in range(40):  # a reading every 17 minutes: several hours, a day boundary
        when = h + datetime.timedelta(minutes=17 * i, seconds=i)
        values = [("temperature", "Cel", 20.0 + (i % 9) * 0.25, 0), ("laeq", "dBA", 40.0 + (i * 7) % 45, 0)]
        if i % 10 == 3:
            values.append(("humidity", "%RH", 55.5, 1))  # flagged by its pole: left out
        if i % 10 == 4:
            values.append(("humidity", "%RH", 101.0, 0))  # outside the registry's range: left out
        if i % 10 == 5:
            values.append(("humidity", "%RH", 60.25, 0))
        first.append(("n1" if i % 3 else "n2", when, values))
    assert loader.store([("s", batch_of(first[:20], 0), None), ("s", batch_of(first[20:], 20), None)])["rejected"] == 0
    with psycopg.connect(pg.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM hourly").fetchone()[0] == 0  # folded by the upkeep, not by a group
        assert loader.maintain() >= 1
        assert conn.execute("SELECT count(*) FROM aggregate_queue").fetchone()[0] == 0
        same(aggregates(conn, "hourly", "hour"), oracle(first, hour_start))
        day = lambda t: t.replace(hour=0, minute=0, second=0, microsecond=0)  # noqa: E731
        same(aggregates(conn, "daily", "day"), oracle(first, day))
        # A folded sample changed behind the store's back: the next fold adds only the new samples.
        conn.execute("UPDATE samples SET vals[1] = 80 WHERE vals[1] IS NOT NULL")
        conn.commit()
    more = [("n1", h + datetime.timedelta(minutes=17 * i, seconds=30), [("temperature", "Cel", 30.5, 0),
                                                                         ("laeq", "dBA", 85.0, 0)]) for i in range(0, 40, 4)]
    loader.store([("s", batch_of(more, 100), None)])
    with psycopg.connect(pg.dsn) as conn:
        assert maintain.fold(conn) >= 1 and maintain.fold(conn) == 0
        same(aggregates(conn, "hourly", "hour"), oracle(first + more, hour_start))
        same(aggregates(conn, "daily", "day"), oracle(first + more, day))


def test_one_fold_at_a_time(pg, loader):
    import psycopg

    from openpole.city import maintain

    now = datetime.datetime.now(UTC)
    loader.store([("s", batch_of([("n1", now, [("temperature", "Cel", 21.5, 0)])], 0), None)])
    with psycopg.connect(pg.dsn) as holder, psycopg.connect(pg.dsn) as other:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (maintain.FOLD_LOCK,))  # another loader folding
        assert maintain.fold(other) is None
        assert other.execute("SELECT count(*) FROM aggregate_queue").fetchone()[0] == 1
        holder.rollback()
        assert maintain.fold(other) == 1


def test_an_observation_id_leads_back_to_its_reading_and_stays(pg, loader):
    import psycopg

    ahead = datetime.datetime.now(UTC) + datetime.timedelta(days=900)  # waits in the default partition
    now = datetime.datetime.now(UTC) - datetime.timedelta(minutes=1)
    loader.store([("s", batch_of([("n1", now, [("temperature", "Cel", 21.5, 0), ("pressure", "hPa", 1013.27, 1)]),
                                  ("n1", ahead, [("pm2_5", "ug/m3", 12, 0)])], 0), None)])
    with psycopg.connect(pg.dsn) as conn:
        obs = conn.execute("SELECT id, series_id, result, flags, time FROM observations ORDER BY id").fetchall()
        assert [(r, f) for _, _, r, f, _ in obs] == [(21.5, 0), (1013.27, 1), (12.0, 0)]  # the digits the pole sent
        for oid, series, result, _, t in obs:
            (back,) = conn.execute("SELECT series_id, result, time FROM observations WHERE sample_id = %s AND key = %s",
                                   (oid >> 8, oid & 255)).fetchall()
            assert back == (series, result, t)
        from openpole.city import samples

        with conn.transaction(), conn.cursor() as cur:
            loader._partition(cur, samples.month(ahead))  # its month comes: the sample moves, its id stays
        assert conn.execute("SELECT id, result FROM observations ORDER BY id").fetchall() == [(o[0], o[2]) for o in obs]
        assert conn.execute("SELECT count(*) FROM samples_other").fetchone()[0] == 0


def _plan(conn, sql, params=()):
    return "\n".join(r for (r,) in conn.execute("EXPLAIN " + sql, params).fetchall())


def test_the_apis_hot_queries_are_index_scans(pg):
    """On a few months of samples, the planner takes each query of the API (sta.md §8) through an
    index: a Datastream's time range and an Observation by id through the observations view, the
    latest Observation of every Datastream of a Thing, a bounding box's poles, a bounded count."""
    import psycopg

    from openpole.city import db, load, maintain

    db.migrate(pg.dsn)
    start = datetime.datetime(2026, 3, 1, tzinfo=UTC)
    with psycopg.connect(pg.dsn) as conn:
        with conn.cursor() as cur:
            for m in range(3):
                maintain.make_partition(cur, start.replace(month=3 + m))
            cur.execute("INSERT INTO things (pole, node) SELECT 'p' || i / 5, 'n' || i % 5 FROM generate_series(0, 9999) i")
            cur.execute("INSERT INTO series (thing_id, key, unit) SELECT t.id, q.key, q.unit FROM things t, quantities q "
                        "WHERE q.key <= 5")
            cur.execute("INSERT INTO poles (pole, lat, lon) SELECT pole, 37 + random(), 126 + random() FROM (SELECT DISTINCT pole FROM things) p")
            cur.execute("INSERT INTO poles (pole, lat, lon) SELECT 'x' || i, 30 + 10 * random(), 120 + 10 * random() FROM "
                        "generate_series(1, 20000) i")  # a city of poles
            with cur.copy(f"COPY samples ({load.SAMPLE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(load.SAMPLE_TYPES)
                i = 0
                for thing in range(1, 201):
                    for k in range(400):  # one sample every 5.4 hours a thing over three months
                        t = start + datetime.timedelta(hours=5.4 * k, seconds=thing)
                        copy.write_row((i, t, t, 1, k, thing, 0, [20.0, 50.0, 1000.0, 5.0, 7.0], None, None))
                        i += 1
        conn.commit()
        conn.execute("ANALYZE")
        window = (start + datetime.timedelta(days=20), start + datetime.timedelta(days=25))
        plan = _plan(conn, "SELECT id, time, result FROM observations WHERE series_id = %s AND time >= %s AND time < %s "
                           "ORDER BY time", (7, *window))
        assert "Index Scan" in plan and "samples_2026_03_thing_id_time_boot_seq_idx" in plan, plan
        assert "samples_2026_05" not in plan and "Seq Scan" not in plan, plan  # one month's index, no other
        plan = _plan(conn, "SELECT result FROM observations WHERE sample_id = %s AND key = %s", (12345, 3))
        assert "samples_2026_04_id_idx" in plan and "Seq Scan on samples_2" not in plan, plan
        assert "Seq Scan on series" not in plan, plan
        plan = _plan(conn, "SELECT se.id, o.time, o.result FROM series se CROSS JOIN LATERAL (SELECT s.time, "
                           "s.vals[se.key] AS result FROM samples s WHERE s.thing_id = se.thing_id AND s.vals[se.key] IS "
                           "NOT NULL ORDER BY s.time DESC LIMIT 1) o WHERE se.thing_id = %s", (9,))
        assert "Index Scan Backward" in plan and "Seq Scan on samples_2" not in plan, plan
        plan = _plan(conn, "SELECT pole FROM poles WHERE point(lon, lat) <@ box(point(126.2, 37.2), point(126.4, 37.4))")
        assert "poles_position" in plan, plan
        plan = _plan(conn, "SELECT count(*) FROM (SELECT 1 FROM observations WHERE series_id = %s LIMIT 10001) c", (7,))
        assert "Seq Scan on samples_2" not in plan, plan


def test_city_init_makes_the_read_only_role_or_says_how(pg):
    import psycopg

    r = openpole("city", "init", "--db", pg.dsn)
    assert r.returncode == 0 and "read-only role openpole_reader made" in r.stdout, r.stdout + r.stderr
    assert "read-only role openpole_reader updated" in openpole("city", "init", "--db", pg.dsn).stdout
    reader = pg.dsn.replace("openpole@", "openpole_reader@")
    with psycopg.connect(reader) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "30s"
        assert conn.execute("SELECT count(*) FROM observations").fetchone()[0] == 0
        for sql in ("INSERT INTO poles (pole) VALUES ('x')", "DELETE FROM samples", "CREATE TABLE x (i int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
            conn.rollback()
    from openpole.city import db, maintain

    with psycopg.connect(pg.dsn) as conn, conn.cursor() as cur:  # a month made later, by a loader
        maintain.make_partition(cur, datetime.datetime(2031, 1, 1, tzinfo=UTC))
    with psycopg.connect(reader) as conn:
        assert conn.execute("SELECT count(*) FROM samples_2031_01").fetchone()[0] == 0
    # A login that may not make roles: the schema is applied and the SQL to run is printed.
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CREATE ROLE plain LOGIN")
        conn.execute("CREATE DATABASE plain OWNER plain")
    r = openpole("city", "init", "--db", pg.dsn.replace("openpole@", "plain@").rsplit("/", 1)[0] + "/plain")
    assert r.returncode == 0 and "applied migration(s) 1, 2, 3, 4" in r.stdout, r.stdout + r.stderr
    assert "this login may not make roles; as a PostgreSQL superuser, run:" in r.stdout
    sql = r.stdout.split("run:\n", 1)[1]
    assert sql.strip() == ";\n".join(db.reader_sql("public", "plain")) + ";"


def test_a_reconnection_that_fails_halfway_loses_nothing(pg, loader, monkeypatch):
    """PostgreSQL drops the loader's connection, and the reconnection fails after it began its setup
    (here a deadlock on the registry's rows): the next try connects afresh, and the group is
    committed, not left in a transaction that never ends."""
    import psycopg

    from openpole.city import load

    now = datetime.datetime.now(UTC)
    loader.conn.close()
    calls = []

    def sync_once_refused(conn):
        calls.append(1)
        if len(calls) == 1:
            conn.execute("SELECT 1")  # the connection is inside a transaction now
            raise psycopg.errors.DeadlockDetected("deadlock detected")

    monkeypatch.setattr(load, "sync_quantities", sync_once_refused)
    counts = loader.store([("s", batch_of([("n1", now, [("temperature", "Cel", 21.5, 0)])], 0), None)])
    assert counts["records_unique"] == 1 and len(calls) == 2 and loader.errors["db_retries"] == 1, counts
    with psycopg.connect(pg.dsn) as conn:  # another session sees it: committed
        assert conn.execute("SELECT count(*) FROM readings WHERE node = 'n1'").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'").fetchone()[0] == 0


def test_city_status_shows_the_aggregates_backlog(pg, loader):
    now = datetime.datetime.now(UTC)
    loader.store([("s", batch_of([("n1", now, [("temperature", "Cel", 21.5, 0)])], 0), None)])
    st = json.loads(openpole("city", "status", "--db", pg.dsn, "--json").stdout)
    assert st["aggregates"]["blocks_waiting"] == 1 and st["problems"] == [], st
    assert "aggregates: 1 blocks of samples wait for the hourly fold" in openpole("city", "status", "--db", pg.dsn).stdout
    import psycopg

    with psycopg.connect(pg.dsn) as conn:
        conn.execute("UPDATE aggregate_queue SET queued = now() - interval '1 hour'")
    r = openpole("city", "status", "--db", pg.dsn)
    assert r.returncode == 1 and "problem: the hourly aggregates are 60 min behind (1 blocks" in r.stdout, r.stdout
    loader.maintain()
    st = json.loads(openpole("city", "status", "--db", pg.dsn, "--json").stdout)
    assert st["aggregates"] == {"blocks_waiting": 0, "oldest_s": 0} and st["problems"] == [], st


def test_a_fold_postgresql_refuses_is_counted_and_its_blocks_wait(pg, loader):
    import psycopg

    now = datetime.datetime.now(UTC)
    loader.store([("s", batch_of([("n1", now, [("temperature", "Cel", 21.5, 0)])], 0), None)])
    with psycopg.connect(pg.dsn) as conn:
        conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION "
                     "'hourly is read-only today'; END $$")
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON hourly FOR EACH ROW EXECUTE FUNCTION refuse()")
    assert loader.maintain() is None and loader.errors["maintenance"] == 1
    with psycopg.connect(pg.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM aggregate_queue").fetchone()[0] == 1  # kept for the next fold
        conn.execute("DROP TRIGGER refuse ON hourly")
    assert loader.maintain() == 1 and loader.errors["maintenance"] == 1
    from openpole.city.load import metrics

    assert 'openpole_city_errors_total{kind="maintenance"} 1' in metrics(loader)


def test_next_months_partition_is_made_in_the_last_week_of_this_one(pg, loader):
    import psycopg

    from openpole.city import maintain

    with psycopg.connect(pg.dsn) as conn:
        with conn.transaction(), conn.cursor() as cur:
            assert maintain.partition_ahead(cur, datetime.datetime(2031, 5, 24, 23, 59, tzinfo=UTC)) is None
            assert maintain.partition_ahead(cur, datetime.datetime(2031, 5, 25, 0, 1, tzinfo=UTC)) == datetime.datetime(
                2031, 6, 1, tzinfo=UTC)
            assert maintain.partition_ahead(cur, datetime.datetime(2031, 12, 31, 12, tzinfo=UTC)) == datetime.datetime(
                2032, 1, 1, tzinfo=UTC)
        made = {t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE 'samples_203%'")}
        assert made == {"samples_2031_06", "samples_2032_01"}
