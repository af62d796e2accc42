"""City scale, the PostgreSQL half: `openpole city init --db` applies the schema's migrations once,
against a real PostgreSQL server of the test's own."""

import subprocess
import sys

import pytest
from pgcluster import PgServer


def openpole(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def pg():
    server = PgServer()
    yield server
    server.stop()


def test_city_init_applies_the_schema_once(pg):
    r = openpole("city", "init", "--db", pg.dsn)
    assert r.returncode == 0 and "applied migration(s) 1" in r.stdout, r.stdout + r.stderr
    r = openpole("city", "init", "--db", pg.dsn)
    assert r.returncode == 0 and "database schema: up to date (version 1)" in r.stdout, r.stdout + r.stderr
    import psycopg

    with psycopg.connect(pg.dsn) as conn:
        tables = {t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"poles", "nodes", "messages", "readings_other", "rejected", "counters", "schema_migrations"} <= tables
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'readings'").fetchone()[0]
        assert kind == "p"  # partitioned by time
    r = openpole("city", "init", "--db", "postgresql://openpole@127.0.0.1:9/none")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot connect to PostgreSQL" in r.stderr
    r = openpole("city", "init")
    assert r.returncode == 2 and "give --nats URL" in r.stderr
