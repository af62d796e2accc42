"""The agent's side of OTA against a real Mosquitto: a rollout with a canary, max-parallel, a
canary's rollback stopping the rest, firmware ranges, and the network's worst: malformed, replayed,
oversized and foreign requests and reports are counted and dropped while real nodes go on."""

import json

import pytest
from helpers import publish_all, wait
from ota_pull import OtaNode

from openpole.edge_agent import observe
from openpole.edge_agent.agent import Agent
from openpole.edge_agent.config import AgentConfig
from openpole.ota import bundle as bundle_mod
from openpole.wire import ota

KEYS = {f"pole17-{i}": bytes([i]) * 32 for i in range(1, 4)}
KEYS["other-1"] = bytes([9]) * 32


@pytest.fixture(scope="module")
def bundle_bytes(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "app.zip"
    bundle_mod.build("esp32-devkitc", out, version="0.3.0")
    return out.read_bytes()


def agent(tmp_path, mosquitto, **kw):
    cfg = AgentConfig(pole_id="ota", broker_host=mosquitto.host, broker_port=mosquitto.port,
                      upstream="http://127.0.0.1:1", state_dir=tmp_path / "state", metrics_port=0,
                      node_keys=dict(KEYS), ota_pace_ms=0, **kw)
    a = Agent(cfg)
    a.start()
    assert a.ingest.subscribed.wait(10)
    return a


def nodes_known(a, names):
    assert wait(lambda: all(a.node_state(n)[0] and a.node_state(n)[1] for n in names), 10), "the agent never heard the nodes"


def jobs(a):
    with a.ota.lock:
        return {j["node"]: j for j in __import__("openpole.edge_agent.ota", fromlist=["jobs"]).jobs(a.ota.db)}


def test_a_canary_confirms_before_the_rest_start_and_every_node_gets_the_bundle_byte_for_byte(tmp_path, mosquitto,
                                                                                                   bundle_bytes):
    a = agent(tmp_path, mosquitto)
    names = ["pole17-1", "pole17-2", "pole17-3"]
    nodes = [OtaNode(mosquitto, n, KEYS[n]) for n in names]
    try:
        nodes_known(a, names)
        b = bundle_mod.read(bundle_bytes)
        out = a.ota.push(b, a.ota.match(["pole17-*"]), canary=1, max_parallel=2)
        assert sorted(out["jobs"]) == names and not out["skipped"]
        canary = nodes[0]
        assert wait(lambda: canary.tickets, 10)
        # The rest wait for the canary's confirmation.
        assert not nodes[1].tickets and not nodes[2].tickets
        assert wait(lambda: all(n.done.is_set() for n in nodes), 60)
        first_other = min(j["updated_ns"] for n, j in jobs(a).items() if n != names[0])
        assert jobs(a)[names[0]]["finished_ns"] <= first_other
        assert wait(lambda: all(j["state"] == "confirmed" for j in jobs(a).values()), 10), jobs(a)
        for n in nodes:
            files = {p: bytes(n.files[i]) for i, (_, _, p) in enumerate(n.manifest["files"], 1)}
            assert files == {p: b.objects[i] for i, (_, _, p) in enumerate(b.manifest["files"], 1)}
            assert "main.py" not in files
        assert all(j["done"] == j["total"] == b.total and j["app"] == "0.3.0" for j in jobs(a).values())
        # What `openpole edge status` and /metrics show of it.
        assert wait(lambda: observe.status(a)["ota"]["rollouts"][0]["state"] == "done", 5)
        st = observe.status(a)
        assert st["ota"]["jobs_by_state"]["confirmed"] == 3
        m = observe.metrics(st)
        assert 'openpole_edge_ota_jobs{state="confirmed"} 3' in m and "openpole_edge_ota_chunks_sent_total" in m
        text = observe.human(st)
        assert "rollout 1: app 0.3.0, done" in text and "pole17-2" in text and "pole17-2             confirmed    100%" in text
    finally:
        for n in nodes:
            n.close()
        a.stop()


def test_a_rollback_in_the_canary_stops_the_rollout_with_its_reason(tmp_path, mosquitto, bundle_bytes):
    a = agent(tmp_path, mosquitto)
    names = ["pole17-1", "pole17-2", "pole17-3"]
    nodes = [OtaNode(mosquitto, names[0], KEYS[names[0]], outcome="import: ImportError: no module named 'x'")]
    nodes += [OtaNode(mosquitto, n, KEYS[n]) for n in names[1:]]
    try:
        nodes_known(a, names)
        a.ota.push(bundle_mod.read(bundle_bytes), names, canary=1, max_parallel=3)
        assert wait(lambda: jobs(a)[names[0]]["state"] == "rolled_back", 60)
        assert wait(lambda: all(jobs(a)[n]["state"] == "cancelled" for n in names[1:]), 10)
        j = jobs(a)
        assert j[names[0]]["reason"] == "import: ImportError: no module named 'x'"
        assert all(j[n]["reason"].startswith("rollout stopped: canary pole17-1 rolled_back") for n in names[1:])
        assert not nodes[1].tickets and not nodes[2].tickets  # they never started
    finally:
        for n in nodes:
            n.close()
        a.stop()


def test_no_job_for_a_node_whose_firmware_is_outside_the_bundles_range(tmp_path, mosquitto, bundle_bytes):
    a = agent(tmp_path, mosquitto)
    old = OtaNode(mosquitto, "pole17-1", KEYS["pole17-1"], fw="1.22.2")
    ok = OtaNode(mosquitto, "pole17-2", KEYS["pole17-2"])
    try:
        nodes_known(a, ["pole17-1", "pole17-2"])
        out = a.ota.push(bundle_mod.read(bundle_bytes), ["pole17-1", "pole17-2"], canary=0)
        assert list(out["jobs"]) == ["pole17-2"]
        assert out["skipped"]["pole17-1"] == "its firmware 1.22.2 is outside the bundle's MicroPython 1.24 to 1.29"
        with pytest.raises(Exception, match="no node can take this bundle: pole17-1: its firmware 1.22.2"):
            a.ota.push(bundle_mod.read(bundle_bytes), ["pole17-1"])
        assert wait(lambda: ok.done.is_set(), 60) and not old.tickets
    finally:
        old.close()
        ok.close()
        a.stop()


HOSTILE_GETS = [b"", b"\x01", b"\x00" * 13, b"\x02" + bytes(12), ota.request(1, 0, 0, 0), b"\x01" * 14,
                b"\xff" * 13, bytes(100000)]


def hostile_reports(job):
    return [b"", b"{", b"[]", b"null", b'"x"', b"1e999", b"[" * 5000 + b"]" * 5000, b'{"job": "1", "state": "staged"}',
            json.dumps({"job": job, "state": "exploded"}).encode(), json.dumps({"job": 2**70, "state": "staged"}).encode(),
            b'{"job": NaN, "state": "staged"}', json.dumps({"job": job, "state": "staged", "reason": "x" * 5000}).encode(),
            json.dumps({"job": 99999, "state": "confirmed"}).encode(), bytes(range(256)) * 10,
            json.dumps({"job": job, "state": "transferring", "obj": 2**40, "offset": -5}).encode(),
            json.dumps({"job": job, "state": True}).encode()]


def test_hostile_requests_and_reports_are_counted_and_dropped_and_real_nodes_go_on(tmp_path, mosquitto, bundle_bytes):
    a = agent(tmp_path, mosquitto)
    node = OtaNode(mosquitto, "pole17-1", KEYS["pole17-1"], stop_after=20)
    try:
        nodes_known(a, ["pole17-1"])
        out = a.ota.push(bundle_mod.read(bundle_bytes), ["pole17-1"], canary=1)
        job = out["jobs"]["pole17-1"]
        assert wait(lambda: node.chunks >= 20, 30)
        items = [("openpole/v1/pole17-1/ota/get", p) for p in HOSTILE_GETS]
        # Another node asking for this node's job, and a job that does not exist.
        items += [("openpole/v1/pole17-2/ota/get", ota.request(job, 0, 0, 384)),
                  ("openpole/v1/pole17-1/ota/get", ota.request(job + 1000, 0, 0, 384)),
                  ("openpole/v1/pole17-1/ota/get", ota.request(job, 777, 0, 384)),
                  ("openpole/v1/pole17-1/ota/get", ota.request(job, 0, 2**32 - 1, 65535))]
        items += [("openpole/v1/pole17-1/ota/report", p) for p in hostile_reports(job)]
        # The other node reporting on this node's job; topics with wrong levels.
        items += [("openpole/v1/pole17-2/ota/report", json.dumps({"job": job, "state": "confirmed"}).encode()),
                  ("openpole/v1/bad id!/ota/report", b"{}"), ("openpole/v1/x/y/ota/get", bytes(13))]
        publish_all(mosquitto, items)
        expected = {"ota_get_rejected_malformed": 7, "ota_report_rejected_malformed": 9, "ota_get_unknown_job": 2,
                    "ota_report_unknown_job": 2, "ota_get_unknown_object": 1, "ota_report_rejected_size": 1,
                    "ota_rejected_topic": 1}
        assert wait(lambda: all(a.store.counters().get(k, 0) >= n for k, n in expected.items()), 10), a.store.counters()
        c = a.store.counters()
        assert "ota_internal_error" not in c
        assert jobs(a)["pole17-1"]["state"] == "transferring"  # nothing foreign moved it
        m = observe.metrics(observe.status(a))
        line = next(x for x in m.splitlines() if x.startswith("openpole_edge_ota_job_progress_ratio{node=\"pole17-1\""))
        assert 0 < float(line.split()[-1]) < 1
        node.stop_after = None
        assert wait(lambda: node.done.is_set(), 60)
        assert wait(lambda: jobs(a)["pole17-1"]["state"] == "confirmed", 10)
        assert a.ota.thread.is_alive()
    finally:
        node.close()
        a.stop()


def test_a_node_offline_at_the_push_gets_its_job_when_it_returns(tmp_path, mosquitto, bundle_bytes):
    a = agent(tmp_path, mosquitto)
    try:
        out = a.ota.push(bundle_mod.read(bundle_bytes), ["pole17-3"], canary=1)
        assert out["jobs"] and jobs(a)["pole17-3"]["state"] == "pending"
        import time

        time.sleep(1.5)  # ticks pass: no ticket goes to a node the agent has not heard
        assert a.store.counters().get("ota_tickets_sent", 0) == 0
        node = OtaNode(mosquitto, "pole17-3", KEYS["pole17-3"])
        try:
            assert wait(lambda: node.done.is_set(), 60)
            assert wait(lambda: jobs(a)["pole17-3"]["state"] == "confirmed", 10)
        finally:
            node.close()
    finally:
        a.stop()


def agent_process(tmp_path, mosquitto):
    import subprocess
    import sys

    from openpole.sim.broker import free_port

    conf = tmp_path / "agent.toml"
    keys = "\n".join(f'"{n}" = "{k.hex()}"' for n, k in KEYS.items())
    conf.write_text(f'[pole]\nid = "ota-restart"\n[broker]\nhost = "{mosquitto.host}"\nport = {mosquitto.port}\n'
                    f'[upstream]\nurl = "http://127.0.0.1:1"\n[state]\ndir = "{tmp_path / "state"}"\n'
                    f'[metrics]\nport = {free_port()}\n[ota]\npace_ms = 0\n[nodes.keys]\n{keys}\n')
    return conf, lambda: subprocess.Popen([sys.executable, "-m", "openpole", "edge", "run", "--config", str(conf)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True, timeout=60)


def test_the_agent_killed_mid_transfer_resumes_from_its_state_and_never_reuses_a_ticket_number(tmp_path, mosquitto,
                                                                                                   bundle_bytes):
    conf, start = agent_process(tmp_path, mosquitto)
    bundle = tmp_path / "app.zip"
    bundle.write_bytes(bundle_bytes)
    proc = start()
    node = OtaNode(mosquitto, "pole17-1", KEYS["pole17-1"], stop_after=40)
    try:
        # The agent subscribes, then hears the node's status (retained) and, once asked, its diag.
        r = None
        for _ in range(100):
            r = cli("ota", "push", "--config", conf, "--bundle", bundle, "--nodes", "pole17-*", "--canary", "1")
            if r.returncode == 0:
                break
            __import__("time").sleep(0.2)
        assert r.returncode == 0, r.stderr
        assert "rollout 1: app 0.3.0 to 3 nodes, canary 1" in r.stdout
        assert wait(lambda: node.chunks >= 40, 30)
        proc.kill()
        proc.wait()
        node.stop_after = None  # it asks on while the agent is down, and again until it answers
        proc = start()
        assert wait(lambda: node.done.is_set(), 90), proc.stderr.read() if proc.poll() is not None else "no end"
        st = json.loads(cli("ota", "status", "--state", tmp_path / "state", "--json").stdout)
        job = {j["node"]: j for j in st["jobs"]}["pole17-1"]
        assert job["state"] == "confirmed" and job["done"] == job["total"]
        b = bundle_mod.read(bundle_bytes)
        files = {p: bytes(node.files[i]) for i, (_, _, p) in enumerate(node.manifest["files"], 1)}
        assert files == {p: b.objects[i] for i, (_, _, p) in enumerate(b.manifest["files"], 1)}
        # Cancel the two jobs still pending (their nodes never came): a second push then goes to
        # pole17-1 with a ticket number above the first, after a restart.
        r = cli("ota", "cancel", "--config", conf, "--rollout", "1")
        assert r.returncode == 0 and "cancelled" in r.stdout, r.stderr
        proc.kill()
        proc.wait()
        proc = start()
        node.thread = None
        node.done.clear()
        node.files = {}
        r = None
        for _ in range(100):
            r = cli("ota", "push", "--config", conf, "--bundle", bundle, "--nodes", "pole17-1")
            if r.returncode == 0:
                break
        assert r.returncode == 0, r.stderr
        assert wait(lambda: len(node.seq_seen) >= 2, 30)
        assert node.seq_seen[-1] > node.seq_seen[0]
        status = cli("ota", "status", "--state", tmp_path / "state")
        assert "rollout 1: app 0.3.0, cancelled" in status.stdout and "pole17-2" in status.stdout, status.stdout
    finally:
        node.close()
        proc.kill()
        proc.wait()


def test_the_pages_push_and_cancel_need_the_password_and_it_shows_progress_node_by_node(tmp_path, mosquitto,
                                                                                          bundle_bytes):
    import requests

    from openpole.edge_agent.page import serve
    from openpole.edge_agent.password import hash_password

    a = agent(tmp_path, mosquitto, page_password_hash=hash_password("lift-17"))
    page = serve(a, "127.0.0.1:0")
    node = OtaNode(mosquitto, "pole17-1", KEYS["pole17-1"])
    try:
        nodes_known(a, ["pole17-1"])
        url = page.url
        r = requests.get(url + "updates", timeout=10)
        assert r.status_code == 200 and "No update has been pushed" in r.text
        form = {"nodes": "pole17-1 pole17-2", "canary": "1", "password": "wrong"}
        r = requests.post(url + "updates/push", data=form, files={"bundle": ("app.zip", bundle_bytes)}, timeout=30)
        assert r.status_code == 403 and "Wrong password: nothing was done" in r.text
        assert a.store.counters().get("ota_tickets_sent", 0) == 0 and not jobs(a)
        r = requests.post(url + "updates/push", data={**form, "password": "lift-17"},
                          files={"bundle": ("app.zip", b"PK not a zip")}, timeout=30)
        assert r.status_code == 400 and "Nothing pushed: not a bundle" in r.text
        r = requests.post(url + "updates/push", data={**form, "password": "lift-17"},
                          files={"bundle": ("app.zip", bundle_bytes)}, timeout=30)
        assert r.status_code == 200 and "rollout 1: app 0.3.0 to 2 nodes" in r.text, r.text[-500:]
        assert wait(lambda: node.done.is_set(), 60)
        assert wait(lambda: "pole17-1</th><td>1 (canary)</td><td class=\"ok\">confirmed" in
                    requests.get(url + "updates", timeout=10).text, 10)
        body = requests.get(url + "updates", timeout=10).text
        assert 'value="100">100%</progress>' in body and "pole17-2</th><td>2</td><td class=\"\">pending" in body
        r = requests.post(url + "updates/cancel", data={"rollout": "1", "password": "lift-17"}, timeout=30)
        assert r.status_code == 200 and "job 1 already confirmed, job 2 cancelled" in r.text, r.text[-800:]
        assert "Updates</a>: none under way" in requests.get(url, timeout=10).text
    finally:
        node.close()
        page.stop()
        a.stop()


def test_the_ota_settings_are_checked_with_one_line(tmp_path):
    from openpole.edge_agent import config
    from openpole.errors import UserError

    f = tmp_path / "agent.toml"
    for text, match in (('[ota]\nrelease_keys = ["abc"]\n', "not an Ed25519 public key"),
                        ('[ota]\nrelease_keys = "x"\n', "must be a list of keys"),
                        ("[ota]\npace_ms = -1\n", "ota.pace_ms must be 0 to 60000"),
                        ("[ota]\nmax_parallel = 0\n", "ota.max_parallel must be 1 to 1000"),
                        ('[ota]\nrequire_signed = "yes"\n', "ota.require_signed must be true or false"),
                        ("[ota]\nsigned = true\n", "unknown setting ota.signed")):
        f.write_text(text)
        with pytest.raises(UserError, match=match):
            config.load(f)
    f.write_text(f'[ota]\nrelease_keys = ["{"AB" * 32}"]\nrequire_signed = true\nmax_parallel = 4\n')
    cfg = config.load(f)
    assert cfg.ota_release_keys == ["ab" * 32] and cfg.ota_require_signed and cfg.ota_max_parallel == 4


def test_an_agent_that_requires_signatures_refuses_an_unsigned_or_foreign_bundle_before_anything_changes(
        tmp_path, mosquitto, bundle_bytes):
    from openpole.edge_agent.ota import objects_dir
    from openpole.errors import UserError

    key = tmp_path / "release.key"
    pub = bundle_mod.keygen(key)
    signed = tmp_path / "signed.zip"
    bundle_mod.build("esp32-devkitc", signed, version="0.3.0", sign=key)
    other = tmp_path / "other.key"
    bundle_mod.keygen(other)
    foreign = tmp_path / "foreign.zip"
    bundle_mod.build("esp32-devkitc", foreign, version="0.3.0", sign=other)
    unsigned = tmp_path / "unsigned.zip"
    unsigned.write_bytes(bundle_bytes)
    a = agent(tmp_path, mosquitto, ota_release_keys=[pub], ota_require_signed=True)
    try:
        for path, match in ((unsigned, "not signed by a release key"), (foreign, "not by any key in \\[ota\\] release_keys")):
            with pytest.raises(UserError, match=match):
                a.ota._call(a.ota.command, {"cmd": "push", "nodes": ["pole17-*"]}, path)
            assert not jobs(a) and not list(objects_dir(a.cfg.state_dir).iterdir())
        out = a.ota._call(a.ota.command, {"cmd": "push", "nodes": ["pole17-1"]}, signed)
        assert list(out["jobs"]) == ["pole17-1"]
        with a.ota.lock:
            assert a.ota.db.execute("SELECT signed_by FROM ota_bundles").fetchone()[0] == pub
    finally:
        a.stop()


def test_a_node_asking_faster_than_its_pace_is_held_to_it_and_counted(tmp_path, bundle_bytes):
    """The engine alone, on a real SQLite: what it publishes is kept in a list."""
    from openpole.edge_agent.ota import Engine

    sent, counts = [], {}
    cfg = AgentConfig(pole_id="pace", state_dir=tmp_path, node_keys=dict(KEYS), ota_pace_ms=100)
    e = Engine(cfg, lambda t, p, q: sent.append(p) or True, lambda mid: None,
               lambda n, k: counts.__setitem__(n, counts.get(n, 0) + k), lambda n: (True, "1.26.0", None))
    job = e.push(bundle_mod.read(bundle_bytes), ["pole17-1"], canary=1)["jobs"]["pole17-1"]
    for i in range(50):  # 50 requests in the same instant: a burst of 10 is served
        e.serve("pole17-1", (1000.0, ota.request(job, 0, 0, 384)))
    e.serve("pole17-1", (1001.0, ota.request(job, 0, 0, 384)))  # a second later: 20 more tokens, capped at 10
    for i in range(12):
        e.serve("pole17-1", (1001.0, ota.request(job, 0, 0, 384)))
    e._flush_counts()
    assert counts["ota_chunks_sent"] == 10 + 10 and counts["ota_get_too_fast"] == 40 + 3
    assert all(ota.read_chunk(p)[0] == ota.OK for p in sent)
    e.stop()
