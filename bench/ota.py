"""Over-the-air update figures of the pole's agent, each printed with the command that made it.

    .venv/bin/python bench/ota.py [--nodes 10] [--rounds 3]

1. transfer rate: one node, then --nodes at once, pulling a real bundle (the app for the ESP32)
   through the agent at pace 0 with the node's chunk size (384 bytes) and the largest (4096),
   against the same broker's raw request/response throughput in the same run (a bare paho
   responder answering the same 13-byte requests with as many bytes: what MQTT alone allows);
2. from push to every node confirmed: --nodes nodes, canary 1, the default pace (100 ms), max
   parallel = --nodes, so the time is the canary's transfer then the others' together;
3. time to roll back: from the canary's rolled_back report to the rollout stopped and every other
   job cancelled.
The nodes here are tests/ota_pull.py (the contract in Python, no sampling): the agent's side is
what is measured. The firmware's heap and audio figures under an update are bench/node.py's.
Everything runs on loopback against a real Mosquitto.
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import paho.mqtt.client as mqtt  # noqa: E402
from helpers import wait  # noqa: E402
from ota_pull import OtaNode  # noqa: E402

from openpole.edge_agent.agent import Agent  # noqa: E402
from openpole.edge_agent.config import AgentConfig  # noqa: E402
from openpole.ota import bundle as bundle_mod  # noqa: E402
from openpole.sim.broker import Broker  # noqa: E402
from openpole.wire import ota  # noqa: E402


def raw_rate(broker, n_clients, total_bytes, chunk):
    """Bytes/s of request/response over the bare broker: a responder answers each 13-byte request on
    x/<i>/get with a chunk of `chunk` bytes on x/<i>/ota; each client keeps one request outstanding."""
    resp = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="raw-responder")
    body = b"\x02" + bytes(18) + bytes(chunk)
    resp.on_message = lambda c, u, m: c.publish(m.topic[:-4] + "/ota", body)
    ready = threading.Event()
    resp.on_connect = lambda c, *a: c.subscribe("x/+/get")
    resp.on_subscribe = lambda *a: ready.set()
    resp.connect(broker.host, broker.port)
    resp.loop_start()
    ready.wait(10)
    done = []

    def client(i):
        got = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"raw-{i}")
        sub = threading.Event()
        c.on_connect = lambda cl, *a: cl.subscribe(f"x/{i}/ota")
        c.on_subscribe = lambda *a: sub.set()
        c.on_message = lambda *a: got.set()
        c.connect(broker.host, broker.port)
        c.loop_start()
        sub.wait(10)
        barrier.wait()
        n = 0
        while n < total_bytes:
            got.clear()
            c.publish(f"x/{i}/get", ota.request(1, 1, n, chunk))
            got.wait(3)
            n += chunk
        done.append(time.monotonic())
        c.disconnect()
        c.loop_stop()

    barrier = threading.Barrier(n_clients + 1)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    resp.disconnect()
    resp.loop_stop()
    return n_clients * total_bytes / (max(done) - t0)


def agent_for(broker, state, names, pace_ms):
    cfg = AgentConfig(pole_id="bench-ota", broker_host=broker.host, broker_port=broker.port,
                      upstream="http://127.0.0.1:1", state_dir=state, metrics_port=0,
                      node_keys={n: bytes([i + 1]) * 32 for i, n in enumerate(names)}, ota_pace_ms=pace_ms)
    a = Agent(cfg)
    a.start()
    assert a.ingest.subscribed.wait(10)
    return a


def rollout(broker, tmp, b, n, pace_ms, max_len, canary, outcome="confirmed"):
    """(seconds from push to every job ended, jobs' states, the agent's OTA counters, per-node
    transfer seconds)."""
    names = [f"bench-{i:02d}" for i in range(n)]
    a = agent_for(broker, Path(tempfile.mkdtemp(dir=tmp)), names, pace_ms)
    nodes = [OtaNode(broker, nm, a.cfg.node_keys[nm], max_len=max_len,
                     outcome=outcome if i == 0 else "confirmed") for i, nm in enumerate(names)]
    try:
        assert wait(lambda: all(a.node_state(x)[1] for x in names), 10)
        t0 = time.monotonic()
        a.ota.push(b, names, canary=canary, max_parallel=n)
        ends = ("confirmed", "rolled_back", "failed", "cancelled")

        def states():
            with a.ota.lock:
                return [r[0] for r in a.ota.db.execute("SELECT state FROM ota_jobs ORDER BY id")]

        assert wait(lambda: all(s in ends for s in states()), 600), states()
        secs = time.monotonic() - t0
        with a.ota.lock:
            spread = a.ota.db.execute("SELECT max(finished_ns) - min(finished_ns) FROM ota_jobs").fetchone()[0]
        return secs, states(), spread
    finally:
        for x in nodes:
            x.close()
        a.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import logging

    logging.getLogger("openpole").setLevel(logging.ERROR)  # the figures are the output
    tmp = Path(tempfile.mkdtemp(prefix="bench-ota-"))
    out = tmp / "app.zip"
    bundle_mod.build("esp32-devkitc", out, version="0.3.0")
    b = bundle_mod.read(out.read_bytes())
    print(f"$ .venv/bin/python bench/ota.py --nodes {args.nodes} --rounds {args.rounds}")
    print(f"bundle: the app for esp32-devkitc, {len(b.objects) - 1} files, {b.total} bytes; Mosquitto on loopback")
    with Broker(tmp / "broker", kind="mosquitto") as broker:
        print("\n1. transfer rate (pace 0), median of rounds, KB/s: through the agent | raw request/response, same broker")
        for max_len in (384, 4096):
            for n in (1, args.nodes):
                via, raw = [], []
                for _ in range(args.rounds):
                    secs, states, _ = rollout(broker, tmp, b, n, 0, max_len, canary=0)
                    assert states == ["confirmed"] * n, states
                    via.append(n * b.total / secs / 1024)
                    raw.append(raw_rate(broker, n, b.total, max_len) / 1024)
                v, r = statistics.median(via), statistics.median(raw)
                print(f"   {n:>2} node(s), {max_len:>4}-byte chunks: {v:8.0f} | {r:8.0f}  ({100 * v / r:.0f} % of raw; "
                      f"{v / n:.0f} KB/s a node)")
        print(f"\n2. push to all confirmed: {args.nodes} nodes, canary 1, pace 100 ms, 384-byte chunks")
        times = []
        for _ in range(args.rounds):
            secs, states, _ = rollout(broker, tmp, b, args.nodes, 100, 384, canary=1)
            assert states == ["confirmed"] * args.nodes, states
            times.append(secs)
        chunks = -(-b.total // 384) + len(b.objects)
        print(f"   median {statistics.median(times):.1f} s (rounds: {', '.join(f'{t:.1f}' for t in times)}); the pace "
              f"alone is {chunks} requests x 100 ms = {chunks * 0.1:.1f} s for the canary, as much again for the rest")
        print(f"\n3. a canary rolls back: {args.nodes} nodes, canary 1 -> the rollout stopped, the rest cancelled")
        times = []
        for _ in range(args.rounds):
            secs, states, spread = rollout(broker, tmp, b, args.nodes, 0, 4096, canary=1, outcome="watchdog")
            assert states == ["rolled_back"] + ["cancelled"] * (args.nodes - 1), states
            times.append(spread / 1e6)
        print(f"   from the canary's rolled_back report to the last job cancelled: median {statistics.median(times):.1f} ms")


if __name__ == "__main__":
    main()
