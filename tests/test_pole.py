"""The pole end to end on loopback: real Mosquitto, the edge agent, the reference receiver.
Duplicates are stored once, garbage is quarantined and counted, the agent stays up, and records
wait on disk while the upstream is down."""

import json
import urllib.request

import cbor2

import message
from helpers import publish_all, wait
from openpole.edge_agent.agent import Agent
from openpole.edge_agent.config import AgentConfig
from openpole.receiver.server import Receiver
from openpole.sim.broker import free_port


def node_msg(node, boot, seq, t=20.0):
    values = message.encode_values({"temperature": t, "humidity": 50.0, "pressure": 1000.0})
    return f"openpole/v1/{node}/data", message.encode(node, boot, seq, [(250, values)], cbor2.dumps({"bme280": [0, 0]}))




def make_agent(broker, upstream, state):
    cfg = AgentConfig(pole_id="test-pole", broker_host=broker.host, broker_port=broker.port, upstream=upstream,
                      state_dir=state, batch_interval_s=0.2)
    agent = Agent(cfg)
    agent.start()
    assert agent.ingest.subscribed.wait(10), "the agent's subscription was not confirmed"
    return agent


def test_messages_reach_the_receiver_once_and_garbage_is_quarantined(tmp_path, mosquitto):
    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "receiver").start()
    agent = make_agent(mosquitto, receiver.url, tmp_path / "edge")
    try:
        good = [node_msg(f"n{n}", 1, s) for n in range(3) for s in range(20)]
        garbage = [("openpole/v1/n0/data", b"\xff\x00garbage"), ("openpole/v1/n0/data", b""),
                   ("openpole/v1/n9/data", cbor2.dumps({0: 1, 1: "n9", 2: 1, 3: 0, 4: [[0, {1: "hot"}]]})),
                   ("openpole/v1/n1/data", node_msg("n2", 1, 99)[1])]  # published on another node's topic
        publish_all(mosquitto, good[:30] + garbage + good[30:] + good[:10])  # the last 10 are replays
        assert wait(lambda: receiver.store.stats()["unique"] >= 180), receiver.store.stats()
        # Every published message handled (accepted, duplicate or rejected) and the queue sent.
        handled = ("messages_accepted", "messages_duplicate", "rejected_malformed", "rejected_schema",
                   "rejected_topic_mismatch")
        assert wait(lambda: sum(agent.store.counters().get(k, 0) for k in handled) == 74 and not agent.store.depth()[0])
        stats = receiver.store.stats()
        assert stats["unique"] == 180 and stats["nodes"] == 3 and stats["duplicates"] == 0
        counters = agent.store.counters()
        assert counters["messages_accepted"] == 60
        assert counters["messages_duplicate"] == 10
        assert counters["rejected_malformed"] == 2
        assert counters["rejected_schema"] == 1
        assert counters["rejected_topic_mismatch"] == 1
        assert agent.store.depth()[0] == 0
        quarantined = agent.store.db.execute("SELECT reason, payload FROM quarantine ORDER BY id").fetchall()
        assert [r for r, _ in quarantined] == ["malformed", "malformed", "schema", "topic_mismatch"]
        assert quarantined[0][1] == b"\xff\x00garbage"
        latest = json.load(urllib.request.urlopen(receiver.url + "/v1/latest"))
        assert {(r["node"], r["name"]) for r in latest} == {(f"n{n}", q) for n in range(3) for q in ("temperature", "humidity", "pressure")}
    finally:
        agent.stop()
        receiver.stop()


def test_records_wait_on_disk_while_the_upstream_is_down(tmp_path, mosquitto):
    port = free_port()
    agent = make_agent(mosquitto, f"http://127.0.0.1:{port}", tmp_path / "edge")
    receiver = None
    try:
        publish_all(mosquitto, [node_msg("n1", 1, s, t=10.0 + s) for s in range(15)])
        assert wait(lambda: agent.store.counters().get("upstream_retries", 0) >= 1)
        assert agent.store.depth()[:2] == (15, 45) and agent.upstream_ok is False
        receiver = Receiver("127.0.0.1", port, tmp_path / "receiver").start()
        assert wait(lambda: agent.store.depth()[0] == 0, timeout=40)
        rows = sorted((r["seq"], r["value"]) for r in receiver.store.readings() if r["name"] == "temperature")
        assert rows == [(s, 10.0 + s) for s in range(15)]
    finally:
        agent.stop()
        if receiver:
            receiver.stop()


def test_a_re_sent_batch_is_stored_once(tmp_path):
    from openpole.wire import batch

    from openpole.wire import node_message

    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "receiver").start()
    try:
        msg = node_message.decode(node_msg("n1", 1, 0)[1])
        count, senml = batch.senml_records("p1", msg, 1_700_000_001 * 10**9)
        body = batch.encode(b"\x01" * 16, "p1", [senml], count)
        for _ in range(3):
            req = urllib.request.Request(receiver.url + "/v1/batches", data=body, method="POST")
            json.load(urllib.request.urlopen(req))
        s = receiver.store.stats()
        assert (s["unique"], s["records"], s["duplicates"], s["batches"], s["batches_duplicate"]) == (3, 9, 6, 1, 2)
        req = urllib.request.Request(receiver.url + "/v1/batches", data=b"\xa0not a batch", method="POST")
        try:
            urllib.request.urlopen(req)
            raise AssertionError("a malformed batch was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 400
        assert receiver.store.stats()["batches_rejected"] == 1
    finally:
        receiver.stop()
