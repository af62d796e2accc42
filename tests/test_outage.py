"""Store and forward on the node: a broker outage of minutes loses nothing and keeps the order; a
node reset during an outage keeps what was spilled to flash (the bound: the RAM queue is lost)."""

import os
import signal
import subprocess
import time

from helpers import Collector, wait

from openpole.wire import node_message
from openpole.sim import node as simnode
from openpole.sim.broker import Broker, free_port

OUTAGE_S = 120
INTERVAL_S = 0.25


def config(node_id, host, port, world, **kw):
    """No edge agent here: the broker's PUBACK frees a message (test_pole_powercut.py has the agent)."""
    cfg = simnode.node_config(node_id, host, port, interval_s=INTERVAL_S, world=f"{world.host}:{world.port}",
                              ack="broker", **kw)
    cfg["broker"]["backoff_max_s"] = 2  # reconnect within 2 s of the broker coming back
    return cfg


def data(msgs):
    return [node_message.decode(p) for t, p, _ in msgs if t.endswith("/data")]


def spilled_records(state):
    """Records in the node's flash segments (lib/outbox.py: each starts with its u16 length)."""
    n = 0
    for name in sorted(os.listdir(state / "spill")):
        raw = (state / "spill" / name).read_bytes()
        pos = 0
        while pos + 2 <= len(raw):
            pos += int.from_bytes(raw[pos : pos + 2], "big")
            n += 1
    return n


def test_broker_down_for_minutes_then_every_reading_arrives_in_order(app, tmp_path, world):
    broker = Broker(tmp_path / "broker", kind="mosquitto", persistent=True).start()
    sub = Collector(broker, "openpole/v1/out-1/data", persistent=True)
    cycles = int((5 + OUTAGE_S + 10) / INTERVAL_S)
    state = tmp_path / "node"
    simnode.write_config(state, config("out-1", broker.host, broker.port, world, cycles=cycles, sensors=("bme280", "noise")))
    node = simnode.start(state, app, heap="128k", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # The node is up and delivering before the outage (5 s of the run are meant for it).
        assert len(sub.wait_for(lambda m: len(m) >= 10, timeout=30)) >= 10, "the node delivered no 10 messages before the outage"
        broker.stop()  # the pole's broker goes away while the node keeps sampling
        time.sleep(OUTAGE_S)  # on purpose: the outage itself
        spilled = spilled_records(state)
        broker.start()
        out, _ = node.communicate(timeout=120)
        msgs = sub.wait_for(lambda m: len(m) >= cycles, timeout=60)
    finally:
        sub.close()
        broker.stop()
    assert f"done cycles={cycles} published={cycles} delivered={cycles} queued=0 dropped=0" in out, out[-2000:]
    assert spilled > 100, "the outage should have filled RAM and spilled to flash"
    got = data(msgs)
    seqs = [m.seq for m in got]
    firsts = [s for i, s in enumerate(seqs) if s not in seqs[:i]]
    assert firsts == list(range(cycles))  # every reading, in order
    # At least once: the message in flight when the broker went away is re-sent (same seq, so the
    # agent stores it once); nothing else repeats.
    assert len(seqs) - cycles <= 2
    assert len({m.boot for m in got}) == 1
    # Replayed samples keep their time: ages grow with the time they waited.
    assert max(m.readings[0].age_ms for m in got) > (OUTAGE_S - 10) * 1000


def test_node_reset_during_an_outage_keeps_what_was_spilled(app, tmp_path, world):
    port = free_port()
    state = tmp_path / "node"
    simnode.write_config(state, config("out-2", "127.0.0.1", port, world, sensors=("bme280",)))
    node = simnode.start(state, app, heap="128k", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait(lambda: (state / "spill").exists() and spilled_records(state) >= 60, timeout=60), \
        "the node did not spill 60 records to flash in 60 s with no broker"
    node.send_signal(signal.SIGKILL)  # power cut, broker still down
    node.wait()
    spilled = spilled_records(state)
    assert spilled >= 60
    broker = Broker(tmp_path / "broker", port=port, kind="mosquitto").start()
    sub = Collector(broker, "openpole/v1/out-2/data")
    try:
        simnode.write_config(state, config("out-2", "127.0.0.1", port, world, cycles=5, sensors=("bme280",)))
        node = simnode.start(state, app, heap="128k", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = node.communicate(timeout=60)
        msgs = sub.wait_for(lambda m: len(m) >= spilled + 5, timeout=30)
    finally:
        sub.close()
        broker.stop()
    got = data(msgs)
    first = min(m.boot for m in got)
    before = [m for m in got if m.boot == first]
    # The bound: what was on flash survives, whole and in order; what was still in RAM (at most
    # one RAM queue: 6 KB, about 90 BME280 messages) is lost with the power.
    assert [m.seq for m in before] == list(range(spilled))
    assert all(m.age_lower_bound for m in before)  # the node cannot know how long it was off
    after = [m for m in got if m.boot == first + 1]
    assert [m.seq for m in after] == list(range(5)) and not any(m.age_lower_bound for m in after)
    assert got.index(after[0]) > got.index(before[-1])  # the backlog first
    assert "queued %d" % spilled in out
