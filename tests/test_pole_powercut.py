"""End-to-end acknowledgement: a node frees a message only when the pole's agent has it on disk.
Power cuts of the pole while real nodes publish: Mosquitto (with the stock 30-minute autosave) and
the agent SIGKILLed together, and every write of theirs not yet fsynced lost (their files sit on
tests/volatile_fs.py). Every reading a node took arrives exactly once. With the broker's PUBACK
alone, what Mosquitto held between saves would be lost with it."""

import os
import subprocess
import time

import pytest
from helpers import AgentProcess, wait
from volatile_fs import PowerCutFS, VolatileOps

from openpole.receiver.server import Receiver
from openpole.sim import node as simnode
from openpole.sim.broker import Broker, free_port

NODES = ("pc-1", "pc-2")
CYCLES = 400  # at 0.2 s: 80 s of sampling, the cuts inside it
CUTS = 20


def test_the_layer_loses_unsynced_writes_and_keeps_synced_ones(tmp_path):
    ops = VolatileOps(tmp_path)
    for name in ("kept", "lost"):
        (tmp_path / name).write_bytes(b"old")
        ops.write("/" + name, b"new data, longer than the old" * 300, 0, None)
    ops.fsync("/kept", False, None)
    ops.truncate("/lost", 1)
    assert ops.read("/lost", 10, 0, None) == b"n"
    ops.cut()
    assert ops.read("/kept", 8, 0, None) == b"new data" and (tmp_path / "kept").stat().st_size == 29 * 300
    assert ops.read("/lost", 10, 0, None) == b"old" and ops.getattr("/lost")["st_size"] == 3
    assert ops.lost_bytes == 4096


@pytest.fixture
def powercut_fs(tmp_path):
    with PowerCutFS(tmp_path / "pole-disk") as fs:
        yield fs


def test_the_mounted_layer_loses_what_a_process_never_synced(powercut_fs):
    with open(powercut_fs.path / "synced", "wb") as f:
        f.write(b"kept")
        f.flush()
        os.fsync(f.fileno())
    (powercut_fs.path / "unsynced").write_bytes(b"x" * 10000)  # written and closed, never fsynced
    assert (powercut_fs.path / "unsynced").stat().st_size == 10000
    cuts, lost = powercut_fs.cut()
    assert (cuts, lost) == (1, 12288)
    assert (powercut_fs.path / "unsynced").read_bytes() == b""
    assert (powercut_fs.path / "synced").read_bytes() == b"kept"


def test_pole_power_cuts_lose_no_reading_and_store_none_twice(app, tmp_path, world, powercut_fs):
    disk = powercut_fs.path  # the pole's SD card: the broker's store and the agent's queue
    broker = Broker(disk / "broker", kind="mosquitto", persistent=True, autosave_s=1800).start()
    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "receiver").start()
    agent = AgentProcess(broker, receiver.url, disk / "edge", pole_id="cut")
    nodes = []
    try:
        for n in NODES:
            cfg = simnode.node_config(n, broker.host, broker.port, interval_s=0.2, cycles=CYCLES,
                                      world=f"{world.host}:{world.port}", sensors=("bme280",))
            cfg["broker"]["backoff_max_s"] = 1
            # A broker that restarts before the agent subscribes again drops what nodes send meanwhile:
            # the node sends it again when no ack came for this long (30 s by default).
            cfg["ack_timeout_s"] = 3
            state = simnode.write_config(tmp_path / n, cfg)
            nodes.append(simnode.start(state, app, heap="128k", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        assert wait(lambda: receiver.store.stats()["unique"] >= 30, timeout=30), "no data reached the receiver"
        lost = 0
        for _ in range(CUTS):
            time.sleep(1.5)
            broker.kill()  # the pole loses power: broker and agent at once,
            agent.kill()
            cuts, now_lost = powercut_fs.cut()  # and every write of theirs not yet on the card
            assert now_lost > lost, "a cut found nothing unsynced: the layer is not in the way"
            lost = now_lost
            time.sleep(0.5)
            broker.start()
            agent.start()
        outs = [p.communicate(timeout=120)[0] for p in nodes]
        expected = 3 * CYCLES * len(NODES)  # BME280: three readings a message
        assert wait(lambda: receiver.store.stats()["unique"] >= expected, timeout=60), receiver.store.stats()
        time.sleep(1.0)
        stats = receiver.store.stats()
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
        agent.stop()
        receiver.stop()
        broker.stop()
    assert stats["unique"] == expected, stats  # every reading, once
    for out in outs:
        assert f"done cycles={CYCLES} published={CYCLES} delivered={CYCLES} queued=0 dropped=0" in out, out[-1500:]
