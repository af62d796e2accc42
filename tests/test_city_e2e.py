"""City scale end to end, with the failures a city's servers meet: poles (real edge agents, each with
its own Mosquitto and `openpole sim load` behind it) publish into a 3-server NATS cluster, two
loaders write PostgreSQL, and meanwhile a NATS server is SIGKILLed and restarted, a loader is
SIGKILLed mid-stream and PostgreSQL restarts. Every reading must arrive exactly once."""

import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import agent_subscribed as subscribed
from helpers import wait
from natscluster import NatsCluster
from pgcluster import PgServer

from openpole.sim.broker import Broker, free_port


def openpole(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def stats(dsn):
    r = openpole("city", "stats", "--db", dsn, "--json")
    return json.loads(r.stdout) if r.returncode == 0 else {}


class Pole:
    """A pole: Mosquitto, the edge agent with a nats:// upstream, and simulated nodes behind it."""

    def __init__(self, root, pole_id, nats_url):
        self.broker = Broker(root / "broker", kind="mosquitto")
        self.broker.start()
        self.metrics = free_port()
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "openpole", "edge", "run", "--broker", f"{self.broker.host}:{self.broker.port}",
             "--upstream", nats_url, "--state", str(root / "edge"), "--pole-id", pole_id, "--batch-interval", "0.3",
             "--metrics-port", str(self.metrics)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.load = None

    def run_nodes(self, nodes, messages, rate):
        self.load = subprocess.Popen([sys.executable, "-m", "openpole", "sim", "load", "--broker",
                                      f"{self.broker.host}:{self.broker.port}", "--nodes", str(nodes), "--messages",
                                      str(messages), "--rate", str(rate)], stdout=subprocess.DEVNULL)

    def stop(self):
        for p in (self.load, self.agent):
            if p and p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
        self.broker.stop()


def loader(nats_url, dsn, name, metrics=None):
    cmd = [sys.executable, "-m", "openpole", "city", "load", "--nats", nats_url, "--db", dsn, "--group", "4",
           "--name", name]
    return subprocess.Popen(cmd + (["--metrics", f"127.0.0.1:{metrics}"] if metrics else []), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def city(tmp_path):
    pg = PgServer()
    cluster = NatsCluster(tmp_path / "nats", 3)
    yield cluster, pg
    cluster.stop()
    pg.stop()


def test_every_reading_arrives_once_while_a_nats_server_a_loader_and_postgresql_fail(city, tmp_path):
    cluster, pg = city
    r = openpole("city", "init", "--nats", cluster.url, "--db", pg.dsn)
    assert r.returncode == 0, r.stdout + r.stderr
    poles = [Pole(tmp_path / f"pole{i}", f"pole{i}", cluster.url) for i in range(2)]
    metrics = free_port()
    a = loader(cluster.url, pg.dsn, "loader-a")
    b = loader(cluster.url, pg.dsn, "loader-b", metrics)
    try:
        for p in poles:
            assert wait(lambda: subscribed(p.metrics), timeout=30), p.agent.stderr.read() if p.agent.poll() else ""
        plan = [(3, 2400), (2, 1600)]  # (nodes, messages) per pole, 3 readings per message
        want = sum(3 * m for _, m in plan)
        for p, (nodes, messages) in zip(poles, plan):
            p.run_nodes(nodes, messages, rate=200)
        assert a.stdout.readline().startswith("loaded "), a.stderr.read()
        cluster.kill(1)  # a NATS server dies: the R3 stream keeps its quorum on the other two
        assert wait(lambda: stats(pg.dsn).get("unique", 0) > want // 5, timeout=60)
        a.send_signal(signal.SIGKILL)  # a loader dies with a group fetched, perhaps half-written
        a.wait()
        killed = time.monotonic()
        pg.restart()  # every connection cut: loader-b keeps its group and writes it when the database is back
        cluster.start(1)  # the dead server returns and catches up
        for p in poles:
            assert p.load.wait(timeout=120) == 0
        ok = wait(lambda: stats(pg.dsn).get("unique", 0) >= want, timeout=150)
        st = stats(pg.dsn)
        assert ok, (st, want)
        import psycopg

        with psycopg.connect(pg.dsn) as conn:
            stored = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
            doubled = conn.execute("SELECT count(*) FROM (SELECT 1 FROM readings GROUP BY pole, node, boot, seq, quantity "
                                   "HAVING count(*) > 1) d").fetchone()[0]
            per_pole = dict(conn.execute("SELECT pole, count(*) FROM readings GROUP BY pole").fetchall())
        assert stored == want and doubled == 0, (stored, doubled)
        assert per_pole == {"pole0": 3 * 2400, "pole1": 3 * 1600}
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as m:
            text = m.read().decode()
        reconnects = [ln for ln in text.splitlines() if ln.startswith('openpole_city_errors_total{kind="db_reconnects"}')]
        assert int(reconnects[0].split()[1]) >= 1, text  # it did meet the restart
        cluster.wait_ready()
        assert wait(lambda: json.loads(openpole("city", "status", "--nats", cluster.url, "--db", pg.dsn,
                                                "--json").stdout)["consumers"][0]["pending"] == 0, timeout=30)
        # loader-a's row was last written before its SIGKILL: once that is LIVE_S old, status says it stopped.
        from openpole.city.query import LIVE_S

        def status():
            return openpole("city", "status", "--nats", cluster.url, "--db", pg.dsn).stdout

        left = LIVE_S - (time.monotonic() - killed)
        assert wait(lambda: "  loader-a: stopped (last seen" in status(), timeout=max(0, left) + 30), status()
        text = status()
        assert "consumer loaders: 0 batches waiting" in text and "loaders: 1 running" in text, text
        (b_line,) = [ln for ln in text.splitlines() if ln.startswith("  loader-b: ")]
        assert "readings/s" in b_line and "stopped" not in b_line, text  # the loader that lived is still live
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
        for p in poles:
            p.stop()


def test_a_batch_resent_after_the_duplicate_window_is_stored_once(tmp_path):
    from test_city_db import signed_batch

    from openpole.edge_agent.sinks import NatsSink

    pg = PgServer()
    lone = NatsCluster(tmp_path / "nats", 1)
    try:
        r = openpole("city", "init", "--nats", lone.url, "--replicas", "1", "--duplicate-window-s", "1", "--db", pg.dsn)
        assert r.returncode == 0, r.stdout + r.stderr
        sink = NatsSink(lone.url, pole="p1")
        bid, body = signed_batch("p1", bytes(32), "n1", 1, range(10))
        assert sink.send(bid, body)["duplicate"] is False
        time.sleep(1.5)  # the stream has forgotten the id: it takes the same batch again
        assert sink.send(bid, body)["duplicate"] is False
        keys = tmp_path / "poles.toml"
        keys.write_text(f'p1 = "{bytes(32).hex()}"\n')
        r = openpole("city", "load", "--nats", lone.url, "--db", pg.dsn, "--keys", keys, "--exit-when-idle", "2")
        assert r.returncode == 0, r.stdout + r.stderr
        st = stats(pg.dsn)
        assert st["batches"] == 2 and st["unique"] == 30 and st["duplicates"] == 30, st
    finally:
        lone.stop()
        pg.stop()
