"""The edge agent keeps its promises through crashes: SIGKILL mid-stream, a broker restart, a torn
queue tail, a damaged queue file; the queue's quota and maximum age drop the oldest, counted."""

import os
import subprocess
import sys
import time

import cbor2
from helpers import AgentProcess, wait
import pytest

from openpole.wire import batch, node_message
from openpole.edge_agent.store import Store
from openpole.receiver.server import Receiver
from openpole.sim import load
from openpole.sim.broker import Broker, free_port




@pytest.fixture
def pole(tmp_path):
    broker = Broker(tmp_path / "broker", kind="mosquitto", persistent=True).start()
    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "receiver").start()
    agent = AgentProcess(broker, receiver.url, tmp_path / "edge", pole_id="dur")
    agent.wait_subscribed()
    yield broker, receiver, agent
    agent.stop()
    receiver.stop()
    broker.stop()


def unique(receiver):
    return receiver.store.stats()["unique"]


def test_sigkill_during_a_stream_loses_nothing(pole):
    broker, receiver, agent = pole
    m = 3000
    loader = subprocess.Popen([sys.executable, "-m", "openpole", "sim", "load", "--broker", f"{broker.host}:{broker.port}",
                               "--nodes", "50", "--messages", str(m), "--rate", "600"], stdout=subprocess.DEVNULL)
    for _ in range(4):  # four power cuts while the nodes keep publishing
        time.sleep(1.0)  # on purpose: the agent runs a second of the stream between cuts,
        agent.kill()
        time.sleep(0.3)  # and is down for a moment while the broker keeps what comes
        agent.start()
    assert loader.wait(timeout=60) == 0
    assert wait(lambda: unique(receiver) >= 3 * m, timeout=60), receiver.store.stats()
    # Nothing more is on its way once the agent's queue is empty: only then is "once" final.
    assert wait(lambda: (agent.status() or {}).get("queue", {}).get("messages") == 0, timeout=30), agent.status()
    s = receiver.store.stats()
    assert s["unique"] == 3 * m  # every reading of every message, once


def test_broker_restart_mid_stream_loses_nothing(pole):
    broker, receiver, agent = pole
    load.run(broker.host, broker.port, nodes=20, messages=500, boot=1)
    broker.stop()
    broker.start()
    load.run(broker.host, broker.port, nodes=20, messages=500, boot=2)
    assert wait(lambda: unique(receiver) >= 3000, timeout=60), receiver.store.stats()


def test_a_torn_queue_tail_is_recovered_at_start(pole, tmp_path):
    broker, receiver, agent = pole
    load.run(broker.host, broker.port, nodes=10, messages=300, boot=1)
    assert wait(lambda: unique(receiver) >= 900)
    agent.kill()
    wal = tmp_path / "edge" / "queue.sqlite-wal"
    with open(wal, "ab") as f:
        f.write(os.urandom(3000))  # a frame half written when the power went
    agent.start()
    load.run(broker.host, broker.port, nodes=10, messages=300, boot=2)
    assert wait(lambda: unique(receiver) >= 1800, timeout=60), receiver.store.stats()
    assert agent.proc.poll() is None


def test_a_damaged_queue_file_is_moved_aside_and_the_agent_starts(tmp_path):
    state = tmp_path / "edge"
    state.mkdir()
    (state / "queue.sqlite").write_bytes(b"this is not a database" * 100)
    store = Store(state)
    assert store.counters()["queue_database_replaced"] == 1
    assert list(state.glob("queue.sqlite.damaged-*"))
    store.close()


def message(node, seq, receive_ns):
    payload = cbor2.dumps({0: 1, 1: node, 2: 1, 3: seq, 4: [[0, {1: 20.0, 2: 50.0, 3: 1000.0}]], 5: {}})
    msg = node_message.decode(payload)
    n, senml = batch.senml_records("p", msg, receive_ns)
    return (node, 1, seq, receive_ns, n, senml)


def test_quota_and_maximum_age_drop_the_oldest_and_count_it(tmp_path):
    now = time.time_ns()
    store = Store(tmp_path / "q", quota_bytes=2000, max_age_s=3600)
    old = [message("n1", i, now - 7200 * 10**9) for i in range(5)]
    fresh = [message("n1", 100 + i, now) for i in range(40)]
    store.append(old + fresh, [])
    dropped = store.enforce_limits(now)
    assert dropped["dropped_max_age"] == 15  # 5 messages of 3 readings, past the maximum age
    assert dropped["dropped_quota"] > 0  # then the oldest of the rest, down to the quota
    messages, records, size, oldest = store.depth()
    assert size <= 2000 and messages < 40
    rows, _ = store.pending(10**6)
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)  # what remains is the newest, in order
    counters = store.counters()
    assert counters["dropped_max_age"] == 15 and counters["dropped_quota"] == dropped["dropped_quota"]
    assert store.append([message("n1", 100, now)], []) == 1  # a replay is still recognised
    store.close()
