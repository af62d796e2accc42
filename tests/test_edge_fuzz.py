"""Fuzzed payloads through a running agent: every one rejected and counted, the agent alive, and
nothing valid lost in between."""

import random

import cbor2
from helpers import publish_all, wait

from openpole.edge_agent.agent import Agent
from openpole.edge_agent.config import AgentConfig
from openpole.receiver.server import Receiver
from openpole.sim.broker import free_port


def valid(seq):
    return cbor2.dumps({0: 1, 1: "fz", 2: 1, 3: seq, 4: [[seq, {1: 20.5, 2: 40.0}]], 5: {"bme280": [0, 0]}})


def fuzz(rng):
    base = valid(rng.randrange(1000))
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
    if kind == 1:
        return base[: rng.randrange(len(base))]  # truncated
    if kind == 2:
        b = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)  # corrupted
        return bytes(b)
    if kind == 3:
        return b"\x81" * rng.randrange(10, 5000) + b"\x00"  # deep
    if kind == 4:
        return b"\x5a\xff\xff\xff\xff" + b"x" * 100  # claims 4 GB
    return cbor2.dumps({0: 1, 1: "fz", 2: 1, 3: 5, 4: [[0, {1: float("nan")}]]})


def test_fuzzed_payloads_are_rejected_counted_and_valid_ones_all_arrive(tmp_path, mosquitto):
    rng = random.Random(8949)
    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "r").start()
    cfg = AgentConfig(pole_id="fz", broker_host=mosquitto.host, broker_port=mosquitto.port, upstream=receiver.url,
                      state_dir=tmp_path / "edge", batch_interval_s=0.2, metrics_port=0)
    agent = Agent(cfg)
    agent.start()
    try:
        assert agent.ingest.subscribed.wait(10), "the agent did not subscribe at the broker"
        items, n_valid = [], 0
        for i in range(600):
            if i % 3 == 0:
                items.append(("openpole/v1/fz/data", valid(10_000 + n_valid)))
                n_valid += 1
            else:
                items.append(("openpole/v1/fz/data", fuzz(rng)))
        publish_all(mosquitto, items)

        def accounted():
            counters = agent.store.counters()
            rejected = sum(v for k, v in counters.items() if k.startswith("rejected_"))
            return counters.get("messages_accepted", 0) + counters.get("messages_duplicate", 0), rejected

        assert wait(lambda: sum(accounted()) == 600, timeout=30), accounted()  # every payload accounted for
        assert wait(lambda: receiver.store.stats()["unique"] >= 2 * n_valid, timeout=30), receiver.store.stats()
        rejected = accounted()[1]
        assert all(t.is_alive() for t in agent._threads)
        quarantined = agent.store.db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        assert quarantined == rejected
    finally:
        agent.stop()
        receiver.stop()
