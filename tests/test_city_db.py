"""City scale, the PostgreSQL half: `openpole city init --db` applies the schema's migrations once,
and `openpole city load` takes the stream into it, against a real PostgreSQL server of the test's
own and a real nats-server."""

import json
import signal
import subprocess
import sys
import time

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


def signed_batch(pole, key, node, boot, seqs, batch_id=None):
    import cbor2

    from openpole.edge_agent import batch, decode, sign

    now = time.time_ns()
    blobs, n = [], 0
    for s in seqs:
        m = decode.decode(cbor2.dumps({0: 1, 1: node, 2: boot, 3: s, 4: [[0, {1: 20.0 + s % 10, 2: 50.0, 3: 1000.0}]]}))
        k, senml = batch.senml_records(pole, m, now)
        blobs.append(senml)
        n += k
    bid = batch_id or batch.new_batch_id()
    return bid, sign.sign(batch.encode(bid, pole, blobs, n, now), pole, key)


def test_the_loader_stores_each_reading_once_rejects_what_fails_and_survives_a_kill(pg, tmp_path):
    from natscluster import NatsCluster

    from openpole.edge_agent.sinks import NatsSink

    lone = NatsCluster(tmp_path / "nats", 1)
    key = bytes(range(32))
    keys = tmp_path / "poles.toml"
    keys.write_text(f'p1 = "{key.hex()}"\n')
    try:
        assert openpole("city", "init", "--nats", lone.url, "--replicas", "1", "--db", pg.dsn).returncode == 0
        sink = NatsSink(lone.url, pole="p1")
        for b in range(20):  # 20 batches of 10 messages of 3 readings: 600 readings
            sink.send(*signed_batch("p1", key, f"n{b % 4}", 1, range(b * 10, b * 10 + 10)))
        # the same five messages again under another batch id (a pole re-sent them after a crash)
        sink.send(*signed_batch("p1", key, "n0", 1, range(0, 5)))
        sink.send(*signed_batch("p1", bytes(32), "n1", 1, [999]))  # a bad MAC
        sink.send(*signed_batch("p9", key, "n1", 1, [999]))  # a pole with no key here
        r = openpole("city", "load", "--nats", lone.url, "--db", pg.dsn, "--keys", keys, "--exit-when-idle", "2")
        assert r.returncode == 0, r.stdout + r.stderr
        st = json.loads(openpole("city", "stats", "--db", pg.dsn, "--json").stdout)
        assert st["unique"] == 600 and st["duplicates"] == 15 and st["batches_rejected"] == 2 and st["nodes"] == 4, st
        import psycopg

        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 600
            reasons = [r for (r,) in conn.execute("SELECT reason FROM rejected ORDER BY id")]
            assert "bad signature for pole 'p1'" in reasons[0] and "no key for pole 'p9'" in reasons[1]
            month = f"readings_{time.gmtime().tm_year:04d}_{time.gmtime().tm_mon:02d}"
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = %s", (month,)).fetchone()[0] == 1

        # A loader SIGKILLed between its COMMIT and its acks, or mid-group: nothing lost, nothing doubled.
        for b in range(20, 60):
            sink.send(*signed_batch("p1", key, f"n{b % 4}", 2, range(b * 10, b * 10 + 10)))
        p = subprocess.Popen([sys.executable, "-m", "openpole", "city", "load", "--nats", lone.url, "--db", pg.dsn,
                              "--keys", str(keys), "--group", "3"], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().startswith("loaded ")
        p.send_signal(signal.SIGKILL)
        p.wait()
        r = openpole("city", "load", "--nats", lone.url, "--db", pg.dsn, "--keys", keys, "--exit-when-idle",
                     str(load_ack_wait() + 5), timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        st = json.loads(openpole("city", "stats", "--db", pg.dsn, "--json").stdout)
        with psycopg.connect(pg.dsn) as conn:
            stored = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        assert st["unique"] == stored == 600 + 1200, (st, stored)
    finally:
        lone.stop()


def load_ack_wait():
    from openpole.city.load import ACK_WAIT_S

    return ACK_WAIT_S
