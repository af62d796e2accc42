"""City scale, the NATS half: `openpole city init` makes the JetStream stream idempotently, and
edge agents with a nats:// upstream put every reading in it exactly once while a server of the
three is SIGKILLed. Real nats-server processes (Debian's), clustered on loopback."""

import asyncio
import subprocess
import sys
import time

import pytest
from helpers import agent_subscribed as subscribed
from helpers import wait
from natscluster import NatsCluster

from openpole.wire import batch
from openpole.edge_agent.sinks import NatsSink, Transient
from openpole.sim.broker import free_port


def openpole(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def cluster(tmp_path):
    c = NatsCluster(tmp_path / "nats", 3)
    yield c
    c.stop()


def stream_batches(url):
    """Every message in the stream, decoded: [(batch_id, pole, records)]."""
    import nats

    async def quiet(*_):
        pass

    async def read():
        nc = await nats.connect(url.split(","), error_cb=quiet, disconnected_cb=quiet)
        try:
            js = nc.jetstream()
            info = await js.stream_info("OPENPOLE_BATCHES")
            out = []
            if not info.state.messages:
                return out
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                m = await js.get_msg("OPENPOLE_BATCHES", seq)
                out.append(batch.decode(m.data)[:3])
            return out
        finally:
            await nc.close()

    import nats.errors

    for _ in range(20):  # while a server dies the stream's leader moves: its API may time out meanwhile
        try:
            return asyncio.run(read())
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, asyncio.TimeoutError):
            time.sleep(0.5)
    return asyncio.run(read())


def test_city_init_makes_the_stream_once_and_brings_it_up_to_date(cluster):
    r = openpole("city", "init", "--nats", cluster.url)
    assert r.returncode == 0 and "stream OPENPOLE_BATCHES made" in r.stdout and "3 replica(s)" in r.stdout, r.stdout + r.stderr
    r = openpole("city", "init", "--nats", cluster.url)
    assert r.returncode == 0 and "stream OPENPOLE_BATCHES unchanged" in r.stdout, r.stdout + r.stderr
    r = openpole("city", "init", "--nats", cluster.url, "--max-age-days", "3")
    assert r.returncode == 0 and "updated" in r.stdout and "max age 3 days" in r.stdout, r.stdout + r.stderr
    r = openpole("city", "init", "--nats", "nats://127.0.0.1:9")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no NATS server answers" in r.stderr


def test_every_reading_reaches_the_stream_once_while_a_server_dies(cluster, tmp_path, mosquitto):
    assert openpole("city", "init", "--nats", cluster.url).returncode == 0
    cfg = tmp_path / "agent.toml"
    metrics = free_port()
    cfg.write_text(f'[pole]\nid = "city-1"\n[broker]\nhost = "{mosquitto.host}"\nport = {mosquitto.port}\n'
                   f'[upstream]\nurl = "{cluster.url}"\nbatch_interval_s = 0.3\nbatch_max = 300\n'
                   f'[state]\ndir = "{tmp_path / "edge"}"\n[metrics]\nport = {metrics}\n')
    agent = subprocess.Popen([sys.executable, "-m", "openpole", "edge", "run", "--config", str(cfg)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait(lambda: subscribed(metrics), timeout=30), "the agent did not subscribe"
        loader = subprocess.Popen([sys.executable, "-m", "openpole", "sim", "load", "--broker",
                                   f"{mosquitto.host}:{mosquitto.port}", "--nodes", "5", "--messages", "3000",
                                   "--rate", "600"], stdout=subprocess.DEVNULL)
        assert wait(lambda: len(stream_batches(cluster.url)) >= 3, timeout=60), "no batches reached the stream"
        cluster.kill(1)  # a NATS server dies mid-stream: the other two keep the R3 stream's quorum
        assert loader.wait(timeout=120) == 0
        want = 3 * 3000

        def stored():
            recs = [r for _, _, rs in stream_batches(cluster.url) for r in rs]
            return recs

        ok = wait(lambda: len({(r["node"], r["boot"], r["seq"], r["name"]) for r in stored()}) >= want, timeout=120)
        recs = stored()
        if not ok:
            agent.terminate()
            assert ok, (len(recs), agent.communicate(timeout=30)[1][-3000:])
        assert len({(r["node"], r["boot"], r["seq"], r["name"]) for r in recs}) == want
        assert all(pole == "city-1" for _, pole, _ in stream_batches(cluster.url))
        cluster.start(1)  # it comes back and catches up
        cluster.wait_ready()
    finally:
        agent.terminate()
        agent.wait(timeout=30)


def test_a_resent_batch_is_stored_once_and_a_missing_stream_is_a_transient_error(tmp_path):
    lone = NatsCluster(tmp_path / "lone", 1)
    try:
        sink = NatsSink(lone.url, timeout_s=5, pole="p1")
        with pytest.raises(Transient, match="openpole city init"):
            sink.send(batch.new_batch_id(), b"x")
        assert openpole("city", "init", "--nats", lone.url, "--replicas", "1").returncode == 0
        bid = batch.new_batch_id()
        body = batch.encode(bid, "p1", [], 0)
        assert sink.send(bid, body)["duplicate"] is False
        assert sink.send(bid, body)["duplicate"] is True  # a re-send after a lost ack
        assert [b[0] for b in stream_batches(lone.url)] == [bid]
    finally:
        lone.stop()


def test_a_password_protected_cluster_and_no_password_in_any_message(tmp_path):
    lone = NatsCluster(tmp_path / "auth", 1, auth="authorization { user: openpole, password: s3cret }\n")
    port = lone.ports[0]
    try:
        good, bad = f"nats://openpole:s3cret@127.0.0.1:{port}", f"nats://openpole:wr0ng@127.0.0.1:{port}"
        r = openpole("city", "init", "--nats", good, "--replicas", "1")
        assert r.returncode == 0 and "made" in r.stdout, r.stdout + r.stderr
        for cmd in (("city", "init", "--nats", bad), ("city", "status", "--nats", bad)):
            r = openpole(*cmd)
            assert r.returncode == 2 and r.stderr.count("\n") == 1 and "refused the credentials" in r.stderr, r.stderr
            assert "wr0ng" not in r.stderr and "***@" in r.stderr
        r = openpole("city", "init", "--nats", good, "--replicas", "1", "--nats-creds", tmp_path / "none.creds")
        assert r.returncode == 2 and "--nats-creds" in r.stderr and "no such file" in r.stderr
        # The agent's sink: user and password from its config, never in what it shows.
        sink = NatsSink(f"nats://127.0.0.1:{port}", pole="p1", nats_user="openpole", nats_password="s3cret")
        bid = batch.new_batch_id()
        assert sink.send(bid, batch.encode(bid, "p1", [], 0))["duplicate"] is False
        assert "s3cret" not in NatsSink(good, pole="p1").describe()
    finally:
        lone.stop()


def test_a_stream_larger_than_the_servers_allow_is_refused_in_one_line_that_says_what_to_change(tmp_path):
    small = NatsCluster(tmp_path / "small", 1, max_store="1G")
    try:
        r = openpole("city", "init", "--nats", small.url, "--replicas", "1")
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
        assert "insufficient storage" in r.stderr and "cap of 50 GiB" in r.stderr and "--max-gb" in r.stderr, r.stderr
        r = openpole("city", "init", "--nats", small.url, "--replicas", "1", "--max-gb", "0.5")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        small.stop()
