"""Upstream: signed batches (COSE_Mac0) verified by the receiver, gzip over HTTP, and the MQTT sink."""

import csv
import gzip
import subprocess
import sys
import time
import urllib.error
import urllib.request

import cbor2
from helpers import Collector, publish_all, wait

from openpole.wire import batch, node_message, sign
from openpole.edge_agent.agent import Agent
from openpole.edge_agent.config import AgentConfig
from openpole.receiver.server import Receiver
from openpole.sim.broker import free_port

KEY = bytes(range(32))


def node_msgs(n, node="n1"):
    return [(f"openpole/v1/{node}/data", cbor2.dumps({0: 1, 1: node, 2: 1, 3: s, 4: [[0, {1: 20.0 + s}]], 5: {}})) for s in range(n)]


def run_agent(mosquitto, tmp_path, upstream, **kw):
    cfg = AgentConfig(pole_id="p1", broker_host=mosquitto.host, broker_port=mosquitto.port, upstream=upstream,
                      state_dir=tmp_path / "edge", batch_interval_s=0.2, metrics_port=0, **kw)
    agent = Agent(cfg)
    agent.start()
    if not agent.ingest.subscribed.wait(10):
        agent.stop()
        raise AssertionError("the agent did not subscribe at the broker")
    return agent




def test_signed_compressed_batches_reach_a_receiver_that_checks_them(tmp_path, mosquitto):
    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "r", keys={"p1": KEY}).start()
    agent = run_agent(mosquitto, tmp_path, receiver.url, upstream_key=KEY, compress=True)
    try:
        publish_all(mosquitto, node_msgs(20))
        assert wait(lambda: receiver.store.stats()["unique"] == 20)
    finally:
        agent.stop()
        receiver.stop()


def test_a_receiver_refuses_unsigned_wrongly_signed_and_bomb_batches(tmp_path):
    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "r", keys={"p1": KEY}).start()
    msg = node_message.decode(node_msgs(1)[0][1])
    n, senml = batch.senml_records("p1", msg, time.time_ns())
    body = batch.encode(b"\x02" * 16, "p1", [senml], n)

    def post(data, headers=()):
        req = urllib.request.Request(receiver.url + "/v1/batches", data=data, method="POST")
        for k, v in headers:
            req.add_header(k, v)
        try:
            urllib.request.urlopen(req)
            return 200, ""
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    try:
        assert post(body) == (400, '{"error": "this upstream takes signed batches only"}')
        assert post(sign.sign(body, "p1", b"x" * 32))[1] == '{"error": "bad signature for pole \'p1\'"}'
        assert "no key for pole 'p9'" in post(sign.sign(body, "p9", KEY))[1]
        bomb = gzip.compress(b"\0" * (100 * 1024 * 1024))
        assert "inflates past" in post(bomb, [("Content-Encoding", "gzip")])[1]
        assert post(sign.sign(body, "p1", KEY)) == (200, "")
        assert receiver.store.stats()["unique"] == 1 and receiver.store.stats()["batches_rejected"] == 4
    finally:
        receiver.stop()


def test_batches_to_an_mqtt_upstream(tmp_path, mosquitto):
    city = Collector(mosquitto, "city/p1/batches")
    agent = run_agent(mosquitto, tmp_path, f"mqtt://{mosquitto.host}:{mosquitto.port}/city")
    try:
        publish_all(mosquitto, node_msgs(10))
        msgs = city.wait_for(lambda m: sum(len(batch.decode(p)[2]) for _, p, _ in m) >= 10)
        assert wait(lambda: agent.store.depth()[0] == 0)  # acknowledged by the city's broker: off the queue
        assert agent.sink.describe() == f"mqtt://{mosquitto.host}:{mosquitto.port}/city/p1/batches"
    finally:
        city.close()
        agent.stop()
    records = [r for _, p, _ in msgs for r in batch.decode(p)[2]]
    assert sorted(r["seq"] for r in records) == list(range(10))


def export(tmp_path):
    """`openpole receiver export` of the receiver data in tmp_path/r: the output directory."""
    out = tmp_path / "aot"
    r = subprocess.run([sys.executable, "-m", "openpole", "receiver", "export", "--data", str(tmp_path / "r"), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def test_export_in_the_array_of_things_layout(tmp_path):
    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "r").start()
    try:
        msgs = [node_message.decode(p) for _, p in node_msgs(3, "n1") + node_msgs(2, "n2")]
        blobs = [batch.senml_records("p1", m, 1_700_000_000 * 10**9 + i * 10**9) for i, m in enumerate(msgs)]
        body = batch.encode(b"\x03" * 16, "p1", [b for _, b in blobs], sum(n for n, _ in blobs))
        urllib.request.urlopen(urllib.request.Request(receiver.url + "/v1/batches", data=body, method="POST"))
    finally:
        receiver.stop()
    out = export(tmp_path)
    rows = list(csv.reader(gzip.open(out / "data.csv.gz", "rt")))
    assert rows[0] == ["timestamp", "node_id", "subsystem", "sensor", "parameter", "value_raw", "value_hrf"]
    assert rows[1] == ["2023/11/14 22:13:20", "n1", "p1", "bme280", "temperature", "20.0", "20.0"]
    assert len(rows) == 6
    nodes = list(csv.reader(open(out / "nodes.csv")))
    assert [n[0] for n in nodes[1:]] == ["n1", "n2"]
    sensors = list(csv.reader(open(out / "sensors.csv")))
    assert ["/sensing/level/laeq", "openpole", "noise", "laeq", "dB(A)", "0", "140"] == sensors[-6][:7]
    prov = list(csv.reader(open(out / "provenance.csv")))
    assert prov[1][2] == "2023/11/14 22:13:20"


def test_the_receiver_keeps_each_message_once_across_batches(tmp_path):
    def body(batch_id, seqs):
        msgs = [node_message.decode(p) for _, p in node_msgs(6)]
        blobs = [batch.senml_records("p1", msgs[s], 1_700_000_000 * 10**9 + s * 10**9) for s in seqs]
        return batch.encode(batch_id * 16, "p1", [b for _, b in blobs], sum(n for n, _ in blobs))

    def post(data):
        try:
            return urllib.request.urlopen(urllib.request.Request(receiver.url + "/v1/batches", data=data, method="POST")).status
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "r").start()
    try:
        assert post(body(b"\x0a", [0, 1, 2])) == 200
        assert post(body(b"\x0a", [0, 1, 2])) == 200  # the same batch again: its acknowledgement was lost
        assert post(body(b"\x0b", [1, 2, 3, 4])) == 200  # a pole re-sending after a crash, under a new batch id
        s = receiver.store.stats()
        assert (s["unique"], s["records"], s["duplicates"], s["batches"], s["batches_duplicate"]) == (5, 10, 5, 2, 1)
        assert sorted(r["seq"] for r in receiver.store.readings()) == [0, 1, 2, 3, 4]
        assert receiver.store.per_node() == {"n1": 5}
        assert [(r["name"], r["value"]) for r in receiver.store.latest()] == [("temperature", 24.0)]
        bad = cbor2.loads(body(b"\x0c", [5]))
        bad[4][0]["boot"] = "1"
        assert post(cbor2.dumps(bad)) == (400, '{"error": "boot must be an unsigned integer up to 9223372036854775807, not str"}')
        del bad[4][0][-2]
        assert post(cbor2.dumps(bad)) == (400, '{"error": "the first SenML record needs a base name"}')
    finally:
        receiver.stop()
    rows = list(csv.reader(gzip.open(export(tmp_path) / "data.csv.gz", "rt")))[1:]
    assert [row[5] for row in rows] == ["20.0", "21.0", "22.0", "23.0", "24.0"]


def test_install_service_writes_a_unit(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"[pole]\nid = \"p7\"\n[state]\ndir = \"{tmp_path / 'state'}\"\n")
    r = subprocess.run([sys.executable, "-m", "openpole", "edge", "install-service", "--config", str(cfg), "--unit-dir",
                        str(tmp_path), "--no-start", "--user", "daemon"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    unit = (tmp_path / "openpole-edge.service").read_text()
    assert f"edge run --config {cfg}" in unit and "User=daemon" in unit and "Restart=always" in unit
    r = subprocess.run([sys.executable, "-m", "openpole", "edge", "install-service", "--config", str(tmp_path / "none.toml"),
                        "--unit-dir", str(tmp_path), "--no-start"], capture_output=True, text=True)
    assert r.returncode == 2 and "no such config" in r.stderr
