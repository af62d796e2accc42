"""The pole power-cut soak, shared by tests/test_pole_powercut.py and bench/edge.py: real nodes
(the firmware under MicroPython, end-to-end acks) publish while the pole loses power again and
again: Mosquitto (persistence on, the stock 30-minute autosave) and the agent SIGKILLed together,
and every write of theirs not yet fsynced lost (their files on tests/volatile_fs.py)."""

import subprocess
import time

from helpers import AgentProcess, wait
from volatile_fs import PowerCutFS

from openpole.receiver.server import Receiver
from openpole.sim import node as simnode
from openpole.sim.broker import Broker, free_port


def soak(app, world, workdir, nodes=2, cycles=400, cuts=20, interval_s=0.2, every_s=1.5):
    """Run it; returns {cuts, lost_bytes (unsynced, thrown away), lost_each (per cut), readings (taken by the nodes),
    unique (stored at the receiver), duplicates (removed by the receiver), node_outs}."""
    out = {"cuts": 0, "lost_bytes": 0, "lost_each": []}
    with PowerCutFS(workdir / "pole-disk") as fs:
        broker = Broker(fs.path / "broker", kind="mosquitto", persistent=True, autosave_s=1800).start()
        receiver = Receiver("127.0.0.1", free_port(), workdir / "receiver").start()
        agent = AgentProcess(broker, receiver.url, fs.path / "edge", pole_id="cut")
        procs = []
        try:
            for i in range(nodes):
                name = f"pc-{i + 1}"
                cfg = simnode.node_config(name, broker.host, broker.port, interval_s=interval_s, cycles=cycles,
                                          world=f"{world.host}:{world.port}", sensors=("bme280",))
                cfg["broker"]["backoff_max_s"] = 1
                # A broker that restarts before the agent subscribes again drops what nodes send
                # meanwhile: the node sends it again when no ack came for this long (30 s by default).
                cfg["ack_timeout_s"] = 3
                state = simnode.write_config(workdir / name, cfg)
                procs.append(simnode.start(state, app, heap="128k", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True))
            assert wait(lambda: receiver.store.stats()["unique"] >= 30, timeout=30), "no data reached the receiver"
            for _ in range(cuts):
                time.sleep(every_s)
                broker.kill()  # the pole loses power: broker and agent at once,
                agent.kill()
                out["cuts"], lost = fs.cut()  # and every write of theirs not yet on the card
                out["lost_each"].append(lost - out["lost_bytes"])
                out["lost_bytes"] = lost
                time.sleep(0.5)
                broker.start()
                agent.start()
            out["node_outs"] = [p.communicate(timeout=120)[0] for p in procs]
            out["readings"] = 3 * cycles * nodes  # BME280: three readings a message
            wait(lambda: receiver.store.stats()["unique"] >= out["readings"], timeout=60)
            time.sleep(1.0)
            out.update(receiver.store.stats())
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            agent.stop()
            receiver.stop()
            broker.stop()
    return out
