"""City scale, the PostgreSQL half: `openpole city init --db` applies the schema's migrations once,
and `openpole city load` takes the stream into it, against a real PostgreSQL server of the test's
own and a real nats-server."""

import json
import signal
import subprocess
import sys
import time

import urllib.request

import pytest
from pgcluster import PgServer

from openpole.sim.broker import free_port


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
    assert r.returncode == 0 and "applied migration(s) 1, 2, 3, 4" in r.stdout, r.stdout + r.stderr
    r = openpole("city", "init", "--db", pg.dsn)
    assert r.returncode == 0 and "database schema: up to date (version 4)" in r.stdout, r.stdout + r.stderr
    import psycopg

    with psycopg.connect(pg.dsn) as conn:
        tables = {t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"poles", "things", "thing_poles", "locations", "series", "quantities", "samples_other", "hourly",
                "daily", "aggregate_queue", "readings_legacy", "rejected", "loaders", "dead_letters",
                "schema_migrations"} <= tables
        assert not {"messages", "nodes", "readings"} & tables  # schema 3's, now views or gone
        views = {t for (t,) in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
        assert views == {"readings", "nodes", "observations"}, views
        kind = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'samples'").fetchone()[0]
        assert kind == "p"  # partitioned by time
        from openpole.spec.registry import REGISTRY

        keys = dict(conn.execute("SELECT key, name FROM quantities").fetchall())
        assert keys == {q.key: q.name for q in REGISTRY.by_key.values()}  # the registry, synced
    r = openpole("city", "init", "--db", "postgresql://openpole@127.0.0.1:9/none")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot connect to PostgreSQL" in r.stderr
    r = openpole("city", "init")
    assert r.returncode == 2 and "give --nats URL" in r.stderr


BASE_NS = time.time_ns() - 3600 * 10**9  # node message s was received at BASE_NS + s ms, whichever batch carries it


def signed_batch(pole, key, node, boot, seqs, batch_id=None):
    """A signed batch of node messages seqs, each with the records the pole made of it when it came
    in (so a message sent again in another batch is the same message, as a pole re-sends its queue)."""
    import cbor2

    from openpole.wire import batch, node_message, sign

    now = BASE_NS
    blobs, n = [], 0
    for s in seqs:
        m = node_message.decode(cbor2.dumps({0: 1, 1: node, 2: boot, 3: s, 4: [[0, {1: 20.0 + s % 10, 2: 50.0, 3: 1000.0}]]}))
        k, senml = batch.senml_records(pole, m, now + s * 1_000_000)  # a node message each millisecond
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
        from openpole.wire import sign

        sink.send(b"\x01" * 16, sign.sign(b"\xa1\x00", "p1", key))  # signed right, but not a batch
        metrics = free_port()
        r = openpole("city", "load", "--nats", lone.url, "--db", pg.dsn, "--keys", keys, "--exit-when-idle", "2",
                     "--name", "loader-a", "--metrics", f"127.0.0.1:{metrics}")
        assert r.returncode == 0, r.stdout + r.stderr
        st = json.loads(openpole("city", "stats", "--db", pg.dsn, "--json").stdout)
        assert st["unique"] == 600 and st["duplicates"] == 15 and st["batches_rejected"] == 3 and st["nodes"] == 4, st
        import psycopg

        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 600
            reasons = [r for (r,) in conn.execute("SELECT reason FROM rejected ORDER BY id")]
            assert "bad signature for pole 'p1'" in reasons[0] and "no key for pole 'p9'" in reasons[1]
            assert len(reasons) == 3 and reasons[2]
            month = f"samples_{time.gmtime().tm_year:04d}_{time.gmtime().tm_mon:02d}"
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = %s", (month,)).fetchone()[0] == 1

        # Each series' newest value: node n0 carried messages 0-9, 40-49, ..., 160-169 (boot 1).
        latest = json.loads(openpole("city", "latest", "--db", pg.dsn, "--pole", "p1", "--json").stdout)
        assert {(r["node"], r["name"]) for r in latest} == {(f"n{i}", q) for i in range(4)
                                                            for q in ("temperature", "humidity", "pressure")}
        t0 = [r for r in latest if r["node"] == "n0" and r["name"] == "temperature"][0]
        assert t0["value"] == 20.0 + 169 % 10 and t0["unit"] == "Cel", t0
        assert "no readings loaded yet for pole p9" in openpole("city", "latest", "--db", pg.dsn, "--pole", "p9").stdout
        # The receiver's CSV layout, from PostgreSQL.
        r = openpole("city", "export", "--db", pg.dsn, "--out", tmp_path / "csv", "--since", "2020-01-01")
        assert r.returncode == 0 and "wrote 600 records" in r.stdout, r.stdout + r.stderr
        import csv
        import gzip

        with gzip.open(tmp_path / "csv" / "data.csv.gz", "rt") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["timestamp", "node_id", "subsystem", "sensor", "parameter", "value_raw", "value_hrf"]
        assert len(rows) == 601 and {r[2] for r in rows[1:]} == {"p1"} and rows[1:] == sorted(rows[1:], key=lambda r: r[0])
        r = openpole("city", "export", "--db", pg.dsn, "--out", tmp_path / "none", "--until", "2020-01-01")
        assert "wrote 0 records" in r.stdout
        r = openpole("city", "export", "--db", pg.dsn, "--out", tmp_path / "x", "--since", "yesterday")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--since yesterday" in r.stderr
        # The loader that stopped: its row, with what it did.
        st = json.loads(openpole("city", "status", "--db", pg.dsn, "--json").stdout)
        a = [l for l in st["loaders"] if l["name"] == "loader-a"][0]
        assert a["readings"] == 600 and a["duplicates"] == 15 and a["rejected"] == 3 and a["live"], a

        # A loader SIGKILLed between its COMMIT and its acks, or mid-group: nothing lost, nothing doubled.
        for b in range(20, 60):
            sink.send(*signed_batch("p1", key, f"n{b % 4}", 2, range(b * 10, b * 10 + 10)))
        p = subprocess.Popen([sys.executable, "-m", "openpole", "city", "load", "--nats", lone.url, "--db", pg.dsn,
                              "--keys", str(keys), "--group", "3", "--metrics", f"127.0.0.1:{metrics}"],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().startswith("loaded ")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as m:
            text = m.read().decode()
        assert "openpole_city_readings_loaded_total " in text and 'openpole_city_errors_total{kind="db_reconnects"} 0' in text
        count = [ln for ln in text.splitlines() if ln.startswith("openpole_city_load_latency_seconds_count")][0]
        assert int(count.split()[1]) >= 3, text
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


def test_an_older_schema_is_brought_up_to_date_and_tools_refuse_a_missing_one(pg):
    from openpole.city import db

    r = openpole("city", "stats", "--db", pg.dsn)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no openpole schema" in r.stderr, r.stderr
    import psycopg

    with psycopg.connect(pg.dsn) as conn:  # a database at version 1, with counts in its counters table
        conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, applied timestamptz NOT NULL "
                     "DEFAULT now())")
        conn.execute(db.MIGRATIONS[0][1])
        conn.execute("INSERT INTO schema_migrations (version) VALUES (1)")
        conn.execute("INSERT INTO counters VALUES ('batches', 7), ('records_received', 90), ('records_unique', 80)")
    r = openpole("city", "latest", "--db", pg.dsn)
    assert r.returncode == 2 and "schema version 1, this openpole needs version 4" in r.stderr, r.stderr
    r = openpole("city", "init", "--db", pg.dsn)
    assert r.returncode == 0 and "applied migration(s) 2, 3, 4" in r.stdout, r.stdout + r.stderr
    st = json.loads(openpole("city", "stats", "--db", pg.dsn, "--json").stdout)
    assert (st["batches"], st["records"], st["unique"], st["duplicates"]) == (7, 90, 80, 10), st


def test_a_group_holding_a_message_twice_and_a_clock_years_ahead(pg):
    """In one group the same node message twice (a pole re-sent it under a new batch id) is stored
    once; a reading stamped years ahead waits in the default partition and moves into its month's
    partition when that is made."""
    import datetime

    import psycopg

    from openpole.city import db, load, samples

    db.migrate(pg.dsn)
    key = bytes(32)
    loader = load.Loader(pg.dsn, {"p1": key}, name="t")
    try:
        first = signed_batch("p1", key, "n1", 1, range(5))
        again = signed_batch("p1", key, "n1", 1, range(3, 8))
        counts = loader.store([("s", first[1], None), ("s", again[1], None)])
        assert counts["records_received"] == 30 and counts["records_unique"] == 24, counts
        ahead = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=3 * 365)
        import cbor2

        from openpole.wire import batch, node_message, sign

        m = node_message.decode(cbor2.dumps({0: 1, 1: "n2", 2: 1, 3: 1, 4: [[0, {1: 21.5}]]}))
        _, senml = batch.senml_records("p1", m, int(ahead.timestamp() * 1e9))
        bid = batch.new_batch_id()
        loader.store([("s", sign.sign(batch.encode(bid, "p1", [senml], 1), "p1", key), None)])
        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("SELECT count(*) FROM samples_other").fetchone()[0] == 1
            (sample_id,), = conn.execute("SELECT id FROM samples_other").fetchall()
            month = samples.month(ahead)
            with conn.transaction(), conn.cursor() as cur:
                loader._partition(cur, month)
            name = f"samples_{month:%Y_%m}"
            assert conn.execute(f"SELECT id FROM {name}").fetchall() == [(sample_id,)]  # moved, its id kept
            assert conn.execute("SELECT count(*) FROM samples_other").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 25
    finally:
        loader.close()


def _js(url, work):
    """Run work(js) against the stream's servers with a plain NATS client (what a loader is to the stream)."""
    import asyncio

    import nats

    async def main():
        nc = await nats.connect(url.split(","))
        try:
            return await work(nc.jetstream(timeout=10))
        finally:
            await nc.close()

    return asyncio.run(main())


def test_a_batch_no_loader_could_ack_goes_to_dead_letters_and_the_loaders_go_on(pg, tmp_path):
    """A batch delivered MAX_DELIVER times without an ack (loaders that each failed on it) is given
    up by the stream; its advisory waits in the dead letters' stream although no loader ran then, and
    the next loader records it (once), shows it in `city status` and loads the batches after it."""
    import nats.errors
    import psycopg
    from helpers import wait
    from natscluster import NatsCluster

    from openpole.city.stream import (CONSUMER, DEAD_STREAM, DEAD_SUBJECTS, MAX_DELIVER, STREAM, SUBJECTS,
                                      consumer_config)
    from openpole.edge_agent.sinks import NatsSink

    lone = NatsCluster(tmp_path / "nats", 1)
    key = bytes(range(32))
    keys = tmp_path / "poles.toml"
    keys.write_text(f'p1 = "{key.hex()}"\n')
    try:
        r = openpole("city", "init", "--nats", lone.url, "--replicas", "1", "--db", pg.dsn)
        assert r.returncode == 0 and f"stream {DEAD_STREAM} made" in r.stdout, r.stdout + r.stderr
        sink = NatsSink(lone.url, pole="p1")
        stuck = signed_batch("p1", key, "stuck", 1, range(3))
        sink.send(*stuck)

        async def fail_on_it(js):  # each delivery to a loader that fails on the batch and says so (a NAK)
            sub = await js.pull_subscribe(SUBJECTS[0], durable=CONSUMER, stream=STREAM, config=consumer_config())
            deliveries = []
            while len(deliveries) <= MAX_DELIVER + 2:  # without max_deliver, for ever
                try:
                    (m,) = await sub.fetch(1, timeout=2)
                except nats.errors.TimeoutError:
                    return deliveries
                deliveries.append(m.metadata.num_delivered)
                await m.nak()
            return deliveries

        assert _js(lone.url, fail_on_it) == list(range(1, MAX_DELIVER + 1))

        async def held(js):
            return (await js.stream_info(DEAD_STREAM)).state.messages

        assert wait(lambda: _js(lone.url, held) == 1), "no max-deliveries advisory in the dead letters' stream"
        for b in range(2):  # the batches after it
            sink.send(*signed_batch("p1", key, "after", 1, range(b * 10, b * 10 + 10)))
        metrics = free_port()
        p = subprocess.Popen([sys.executable, "-m", "openpole", "city", "load", "--nats", lone.url, "--db", pg.dsn,
                              "--keys", str(keys), "--metrics", f"127.0.0.1:{metrics}", "--quiet"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def scraped(metric):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as m:
                    return f"\n{metric}\n" in m.read().decode()
            except OSError:
                return False

        try:
            assert wait(lambda: scraped("openpole_city_dead_letters_total 1") and scraped(
                "openpole_city_readings_loaded_total 60"), timeout=60), p.poll() and p.communicate()
        finally:
            p.terminate()
            p.wait(timeout=30)
        with psycopg.connect(pg.dsn) as conn:
            (seq, deliveries, consumer, subject, reason, payload), = conn.execute(
                "SELECT stream_seq, deliveries, consumer, subject, reason, payload FROM dead_letters").fetchall()
            nodes = dict(conn.execute("SELECT node, count(*) FROM readings GROUP BY node").fetchall())
        assert (seq, deliveries, consumer, subject, reason) == (1, MAX_DELIVER, CONSUMER, "openpole.batches.p1",
                                                                 "max_deliver")
        assert bytes(payload) == stuck[1] and nodes == {"after": 60}, nodes

        r = openpole("city", "status", "--nats", lone.url, "--db", pg.dsn)
        assert "dead letters: 1 batch(es)" in r.stdout, r.stdout + r.stderr
        # given up within the last day: a problem (exit 1) until it is a day old
        assert r.returncode == 1 and "problem: 1 batch(es) given up by the stream in the last 24 h" in r.stdout, r.stdout
        assert f"#1 openpole.batches.p1: stream seq 1, max_deliver after {MAX_DELIVER} deliveries" in r.stdout, r.stdout
        assert "consumer loaders: 0 batches waiting (lag), 0 in flight" in r.stdout, r.stdout
        st = json.loads(openpole("city", "status", "--nats", lone.url, "--db", pg.dsn, "--json").stdout)
        assert st["dead_letters"]["count"] == 1 and st["dead_letters"]["newest"][0]["stream_seq"] == 1, st
        assert st["dead_letters"]["newest"][0]["bytes"] == len(stuck[1]), st
        assert json.loads(openpole("city", "stats", "--db", pg.dsn, "--json").stdout)["dead_letters"] == 1

        async def again(js):  # the same advisory twice (an ack lost), and one that is not an advisory at all
            first = await js.get_msg(DEAD_STREAM, 1)
            await js.publish(DEAD_SUBJECTS[0], first.data)
            await js.publish(DEAD_SUBJECTS[0], b"\xff not json")

        _js(lone.url, again)
        r = openpole("city", "load", "--nats", lone.url, "--db", pg.dsn, "--keys", keys, "--exit-when-idle", "2")
        assert r.returncode == 0, r.stdout + r.stderr
        with psycopg.connect(pg.dsn) as conn:
            reasons = [r for (r,) in conn.execute("SELECT reason FROM dead_letters ORDER BY id")]
        assert reasons[0] == "max_deliver" and len(reasons) == 2 and "not a max-deliveries advisory" in reasons[1], reasons
    finally:
        lone.stop()


def test_an_older_consumer_gets_max_deliver_from_city_init_and_from_a_loader(pg, tmp_path):
    """Cities made by an older openpole have a loaders' consumer that redelivers a batch for ever."""
    from natscluster import NatsCluster
    from nats.js.api import AckPolicy, ConsumerConfig

    from openpole.city.stream import CONSUMER, DEAD_STREAM, MAX_DELIVER, STREAM, SUBJECTS

    async def older(js):  # the consumer as loaders before MAX_DELIVER made it
        try:
            await js.delete_consumer(STREAM, CONSUMER)
        except Exception:
            pass
        await js.pull_subscribe(SUBJECTS[0], durable=CONSUMER, stream=STREAM,
                                config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=20.0, max_ack_pending=20000))
        return (await js.consumer_info(STREAM, CONSUMER)).config.max_deliver

    async def max_deliver(js):
        return (await js.consumer_info(STREAM, CONSUMER)).config.max_deliver

    lone = NatsCluster(tmp_path / "nats", 1)
    try:
        assert openpole("city", "init", "--nats", lone.url, "--replicas", "1", "--db", pg.dsn).returncode == 0
        assert _js(lone.url, older) == -1
        r = openpole("city", "init", "--nats", lone.url, "--replicas", "1")
        assert r.returncode == 0 and f"consumer {CONSUMER} updated" in r.stdout, r.stdout + r.stderr
        assert _js(lone.url, max_deliver) == MAX_DELIVER
        r = openpole("city", "init", "--nats", lone.url, "--replicas", "1")
        assert r.returncode == 0 and "consumer" not in r.stdout and f"stream {DEAD_STREAM} unchanged" in r.stdout, r.stdout
        assert _js(lone.url, older) == -1
        r = openpole("city", "load", "--nats", lone.url, "--db", pg.dsn, "--exit-when-idle", "1")
        assert r.returncode == 0, r.stdout + r.stderr
        assert _js(lone.url, max_deliver) == MAX_DELIVER

        async def drop_dead_letters(js):
            await js.delete_stream(DEAD_STREAM)

        _js(lone.url, drop_dead_letters)  # an upgraded loader on a stream `city init` has not brought up to date
        r = openpole("city", "load", "--nats", lone.url, "--db", pg.dsn, "--exit-when-idle", "1")
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"no stream {DEAD_STREAM}" in r.stderr, r.stderr
        assert "openpole city init --nats URL" in r.stderr
    finally:
        lone.stop()


def test_batches_the_stream_delivers_again_are_each_written_alone(pg, tmp_path):
    """A group a loader took and never acked (it died with it) comes again: the next loader writes
    each of those batches in a group of its own, so the one that stopped the first loader cannot take
    its neighbours down with it again, and every reading is stored once."""
    import psycopg
    from natscluster import NatsCluster

    from openpole.city.stream import CONSUMER, STREAM, SUBJECTS, consumer_config
    from openpole.edge_agent.sinks import NatsSink

    lone = NatsCluster(tmp_path / "nats", 1)
    key = bytes(range(32))
    keys = tmp_path / "poles.toml"
    keys.write_text(f'p1 = "{key.hex()}"\n')
    try:
        assert openpole("city", "init", "--nats", lone.url, "--replicas", "1", "--db", pg.dsn).returncode == 0
        sink = NatsSink(lone.url, pole="p1")
        for b in range(3):
            sink.send(*signed_batch("p1", key, f"n{b}", 1, range(10)))

        async def die_with_them(js):  # a loader that fetched the group and went away (NAK: again at once)
            sub = await js.pull_subscribe(SUBJECTS[0], durable=CONSUMER, stream=STREAM, config=consumer_config())
            msgs = await sub.fetch(3, timeout=5)
            for m in msgs:
                await m.nak()
            return len(msgs)

        assert _js(lone.url, die_with_them) == 3
        sink.send(*signed_batch("p1", key, "fresh", 1, range(10)))
        r = openpole("city", "load", "--nats", lone.url, "--db", pg.dsn, "--keys", keys, "--exit-when-idle", "2")
        assert r.returncode == 0, r.stdout + r.stderr
        with psycopg.connect(pg.dsn) as conn:
            nodes = dict(conn.execute("SELECT node, count(*) FROM readings GROUP BY node").fetchall())
            (errors,), = conn.execute("SELECT errors FROM loaders").fetchall()
            batches = conn.execute("SELECT sum(batches) FROM loaders").fetchone()[0]
        assert nodes == {"n0": 30, "n1": 30, "n2": 30, "fresh": 30}, nodes  # 10 messages of 3 readings each
        assert errors["redelivered_alone"] == 3 and batches == 4, errors
    finally:
        lone.stop()
