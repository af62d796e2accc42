"""An update end to end: `openpole ota build --sim` makes the bundle, the real agent serves it over
a real Mosquitto to three nodes running the real firmware under MicroPython (each on its own
LittleFS flash), a canary of one first. Readings arrive throughout and none is lost; every node
ends on the new version. A bundle for other firmware is refused before anything changes."""

import time

import pytest
from helpers import wait
from ota_node import KEY, Board

from openpole.edge_agent.agent import Agent
from openpole.edge_agent.config import AgentConfig
from openpole.edge_agent.ota import OtaError, jobs
from openpole.ota import bundle as bundle_mod

NODES = ("e2e-1", "e2e-2", "e2e-3")


def runs(a, node):
    """{boot: sorted seqs} the agent stored for a node."""
    out = {}
    for boot, seq in a.store.db.execute("SELECT boot, seq FROM messages WHERE node = ? ORDER BY boot, seq", (node,)):
        out.setdefault(boot, []).append(seq)
    return out


def test_three_nodes_one_job_with_a_canary_readings_throughout_none_lost(app, tmp_path, mosquitto, world):
    out = tmp_path / "app-0.3.0.zip"
    bundle_mod.build("esp32-devkitc", out, version="0.3.0", sim=True)
    b = bundle_mod.read(out.read_bytes())
    old_range = tmp_path / "old.zip"
    bundle_mod.build("esp32-devkitc", old_range, version="0.3.0", sim=True, micropython=("1.22", "1.23"))
    cfg = AgentConfig(pole_id="e2e", broker_host=mosquitto.host, broker_port=mosquitto.port,
                      upstream="http://127.0.0.1:1", state_dir=tmp_path / "state", metrics_port=0,
                      node_keys={n: KEY for n in NODES}, ota_pace_ms=20, ota_trial_s=60)
    a = Agent(cfg)
    a.start()
    assert a.ingest.subscribed.wait(10)
    boards = [Board(tmp_path / n, app, mosquitto, world, node_id=n) for n in NODES]
    try:
        for bd in boards:
            bd.boot()
        assert wait(lambda: all(a.node_state(n)[0] and a.node_state(n)[1] for n in NODES), 90), \
            {n: a.node_info.get(n) for n in NODES}
        # The nodes' firmware (their diag) is outside this bundle's range: no job at all.
        with pytest.raises(OtaError, match=r"its firmware 1\.\d+\.\d+ is outside the bundle's MicroPython 1.22 to 1.23"):
            a.ota.push(bundle_mod.read(old_range.read_bytes()), list(NODES))
        with a.ota.lock:
            assert not jobs(a.ota.db)
        before = {n: a.nodes[n]["messages"] for n in NODES}
        t0 = time.monotonic()
        a.ota.push(b, list(NODES), canary=1, max_parallel=2)

        def state():
            with a.ota.lock:
                return {j["node"]: j for j in jobs(a.ota.db)}

        assert wait(lambda: state()["e2e-1"]["state"] in ("confirmed", "rolled_back", "failed"), 240), \
            (state(), boards[0].output()[-3000:])
        assert state()["e2e-1"]["state"] == "confirmed", (state()["e2e-1"], boards[0].output()[-3000:])
        assert all(state()[n]["state"] == "pending" or state()[n]["updated_ns"] >= state()["e2e-1"]["finished_ns"]
                   for n in NODES[1:])  # the others waited for the canary
        assert wait(lambda: all(state()[n]["state"] == "confirmed" for n in NODES), 300), \
            (state(), [bd.output()[-2000:] for bd in boards])
        took = time.monotonic() - t0
        for n in NODES:
            j = state()[n]
            assert j["app"] == "0.3.0" and j["done"] == j["total"] == b.total
        # Readings went on, and not one is missing: per boot, each node's sequence numbers are whole
        # (a message whose ack was lost comes again from the node's outbox: given 30 s).
        def whole(n):
            return all(seqs == list(range(seqs[0], seqs[0] + len(seqs))) for seqs in runs(a, n).values())

        time.sleep(3)  # readings from the new app
        wait(lambda: all(whole(n) for n in NODES), 30)
        for n in NODES:
            assert a.nodes[n]["messages"] > before[n] + 10, (n, a.nodes[n])
            r = runs(a, n)
            assert len(r) >= 2, f"{n} did not boot the new app: {r.keys()}"
            assert whole(n), (n, {boot: seqs[:8] for boot, seqs in r.items()},
                              a.store.db.execute("SELECT reason, detail FROM quarantine").fetchall()[:5])
        c = a.store.counters()
        assert c.get("ota_jobs_confirmed") == 3 and "ota_internal_error" not in c
        print(f"3 nodes updated in {took:.1f} s")
    finally:
        for bd in boards:
            bd.stop()
        a.stop()


def test_the_agent_killed_mid_transfer_resumes_and_the_real_node_completes(app, tmp_path, mosquitto, world):
    import json
    import subprocess
    import sys

    from openpole.sim.broker import free_port

    out = tmp_path / "app-0.3.0.zip"
    bundle_mod.build("esp32-devkitc", out, version="0.3.0", sim=True)
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[pole]\nid = "e2e-kill"\n[broker]\nhost = "{mosquitto.host}"\nport = {mosquitto.port}\n'
                    f'[upstream]\nurl = "http://127.0.0.1:1"\n[state]\ndir = "{tmp_path / "state"}"\n'
                    f'[metrics]\nport = {free_port()}\n[ota]\npace_ms = 20\ntrial_s = 60\n'
                    f'[nodes.keys]\n"e2e-1" = "{KEY.hex()}"\n')

    def start():
        return subprocess.Popen([sys.executable, "-m", "openpole", "edge", "run", "--config", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "openpole", "ota", *map(str, args)], capture_output=True,
                              text=True, timeout=60)

    def job():
        st = json.loads(cli("status", "--state", tmp_path / "state", "--json").stdout)
        return st["jobs"][0] if st["jobs"] else None

    proc = start()
    board = Board(tmp_path / "e2e-1", app, mosquitto, world, node_id="e2e-1")
    try:
        time.sleep(2)  # the agent subscribes before the node's first diag
        board.boot()
        r = None
        for _ in range(30):  # until the agent has heard the node's diag (its firmware version)
            r = cli("push", "--config", conf, "--bundle", out, "--nodes", "e2e-1")
            if r.returncode == 0 and "job" in r.stdout:
                break
            time.sleep(1)
        assert r.returncode == 0, r.stderr
        assert wait(lambda: (job() or {}).get("done", 0) > (job() or {}).get("total", 1) // 4, 120), job()
        proc.kill()
        proc.wait()
        half = job()["done"]
        time.sleep(2)
        proc = start()
        assert wait(lambda: job()["state"] == "confirmed", 240), (job(), board.output()[-3000:])
        j = job()
        assert j["app"] == "0.3.0" and j["done"] == j["total"] > half
    finally:
        board.stop()
        proc.kill()
        proc.wait()
