"""End-to-end acknowledgement: a node frees a message only when the pole's agent has it on disk.
Power cuts of the pole (Mosquitto, with the stock 30-minute autosave, and the agent SIGKILLed
together) while real nodes publish: every reading a node took arrives exactly once. With the
broker's PUBACK alone, what Mosquitto held between saves would be lost with it."""

import subprocess
import time

from helpers import AgentProcess, wait

from openpole.receiver.server import Receiver
from openpole.sim import node as simnode
from openpole.sim.broker import Broker, free_port

NODES = ("pc-1", "pc-2")
CYCLES = 150  # at 0.2 s: 30 s of sampling
CUTS = 3


def test_pole_power_cuts_lose_no_reading_and_store_none_twice(app, tmp_path, world):
    broker = Broker(tmp_path / "broker", kind="mosquitto", persistent=True, autosave_s=1800).start()
    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "receiver").start()
    agent = AgentProcess(broker, receiver.url, tmp_path / "edge", pole_id="cut")
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
        for _ in range(CUTS):
            time.sleep(2.5)
            broker.kill()  # the pole loses power: broker and agent at once
            agent.kill()
            time.sleep(1.0)
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
