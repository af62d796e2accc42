"""Per-minute aggregates (decibels as energy means), `openpole edge status` and /metrics."""

import json
import math
import subprocess
import sys
import time
import urllib.request

import cbor2

from helpers import agent_subscribed, publish_all, wait
from hypothesis import given, settings
from hypothesis import strategies as st
from openpole.wire import node_message
from openpole.edge_agent.aggregate import Minutes
from openpole.receiver.server import Receiver
from openpole.sim.broker import free_port


def msg(node, seq, values, age_ms=0):
    return node_message.decode(cbor2.dumps({0: 1, 1: node, 2: 1, 3: seq, 4: [[age_ms, values]], 5: {}}))


def test_minutes_average_linear_quantities_and_decibels_as_energy():
    m = Minutes()
    t0 = 1_700_000_020 * 10**9  # 40 s into a minute (1_699_999_980 is a whole minute)
    m.add("n1", msg("n1", 0, {1: 20.0, 16: 60.0}).readings, t0)
    m.add("n1", msg("n1", 1, {1: 22.0, 16: 80.0}).readings, t0 + 10 * 10**9)
    m.add("n1", msg("n1", 3, {1: 18.0}).readings, t0 + 15 * 10**9)  # a new low after a new high
    m.add("n1", msg("n1", 2, {1: 30.0}).readings, t0 + 30 * 10**9)  # the next minute
    assert m.close(t0 + 60 * 10**9) == []  # not yet: readings may still come in
    rows = {(r[0], r[1], r[2]): r[3:] for r in m.close(t0 + 200 * 10**9)}
    minute = t0 // 10**9 // 60 * 60
    assert rows[("n1", "temperature", minute)] == (3, 20.0, 18.0, 22.0)
    count, mean, lo, hi = rows[("n1", "laeq", minute)]
    assert count == 2 and (lo, hi) == (60.0, 80.0)
    assert mean == round(10 * math.log10((1e6 + 1e8) / 2), 6)  # 77.0 dB, not the 70 of a plain mean
    assert rows[("n1", "temperature", minute + 60)] == (1, 30.0, 30.0, 30.0)


def test_a_minute_opened_before_the_clock_stepped_back_closes_at_once():
    m = Minutes()
    t0 = 1_700_000_020 * 10**9
    m.add("n1", msg("n1", 0, {1: 20.0}).readings, t0)
    m.add("n1", msg("n1", 1, {1: 21.0}).readings, t0 + 86400 * 10**9)  # the clock a day fast
    back = t0 + 30 * 10**9  # NTP steps it back
    assert [r[2] for r in m.close(back)] == [(t0 + 86400 * 10**9) // 10**9 // 60 * 60]
    assert m.close(back + 5 * 10**9) == []  # the minute now being filled stays open


def test_a_pi_without_its_clock_yet_makes_no_minute_before_1970():
    """Just after boot a Pi with no RTC reads 1970: a sample a minute old would fall in a negative
    minute, which no aggregate row (a uint in upstream_batch.cddl) can carry."""
    m = Minutes()
    m.add("n1", msg("n1", 0, {1: 20.0}, age_ms=60_000).readings, 5 * 10**9)
    m.add("n1", msg("n1", 1, {1: 21.0}).readings, 5 * 10**9)
    assert [(r[1], r[2], r[3]) for r in m.close(10**12)] == [("temperature", 0, 1)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "close"]), st.integers(0, 400) | st.integers(-600, 86400 + 600)), max_size=40))
def test_a_minute_closes_when_done_and_not_before_whatever_the_order_of_adds_and_closes(steps):
    """close() skips its look at every open minute while none can be done: what it closes (and
    keeps) is what a look at every one would close."""
    m = Minutes()
    t0 = 1_700_000_000 * 10**9
    for i, (what, offset_s) in enumerate(steps):
        now = t0 + offset_s * 10**9
        if what == "add":
            m.add(f"n{i % 3}", msg(f"n{i % 3}", i, {1: 20.0 + i}).readings, now)
            continue
        now_s = now // 10**9
        due = {k for k in m.open if k[2] <= now_s - 120 or k[2] > now_s + 60}
        kept = set(m.open) - due
        assert {(r[0], r[2]) for r in m.close(now)} == {(k[0], k[2]) for k in due}
        assert set(m.open) == kept


def test_status_metrics_and_aggregates_from_a_running_agent(tmp_path, mosquitto):
    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "receiver").start()
    port = free_port()
    agent = subprocess.Popen([sys.executable, "-m", "openpole", "edge", "run", "--broker", f"{mosquitto.host}:{mosquitto.port}",
                              "--upstream", receiver.url, "--state", str(tmp_path / "edge"), "--pole-id", "obs",
                              "--batch-interval", "0.3", "--metrics-port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait(lambda: agent_subscribed(port) or agent.poll() is not None, timeout=30), "the agent did not subscribe"
        assert agent.poll() is None, f"the agent exited {agent.returncode}"
        old = time.time_ns() // 1_000_000 - 300_000  # readings from five minutes ago: their minute is closed
        items = [(f"openpole/v1/n{k}/data", cbor2.dumps({0: 1, 1: f"n{k}", 2: 1, 3: s, 4: [[300_000, {1: 20.0 + s}]], 5: {},
                                                         6: old})) for k in range(2) for s in (0, 1, 3)]
        items.append(("openpole/v1/n0/data", b"\x00junk"))
        publish_all(mosquitto, items)
        assert wait(lambda: receiver.store.stats()["unique"] >= 6), receiver.store.stats()
        st = json.loads(subprocess.run([sys.executable, "-m", "openpole", "edge", "status", "--json", "--port", str(port)],
                                       capture_output=True, text=True, check=True).stdout)
        assert st["pole"] == "obs" and st["broker"]["connected"] and st["upstream"]["ok"]
        assert st["nodes"]["n0"]["missing"] == 1 and st["nodes"]["n0"]["seq"] == 3  # seq 2 never came
        assert abs(st["nodes"]["n1"]["clock_offset_ms"] + 300_000) < 5_000  # the node's clock is 5 min slow
        assert st["counters"]["rejected_malformed"] == 1 and st["queue"]["messages"] == 0
        human = subprocess.run([sys.executable, "-m", "openpole", "edge", "status", "--port", str(port)],
                               capture_output=True, text=True, check=True).stdout
        assert "broker" in human and "connected" in human and "n0" in human
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert "openpole_edge_messages_accepted_total 6" in text and "openpole_edge_rejected_malformed_total 1" in text
        assert 'openpole_edge_node_missing_messages_total{node="n0"} 1' in text
        assert "openpole_edge_inbox_messages 0" in text
        assert 'openpole_edge_ack_latency_seconds_bucket{le="+Inf"} 7' in text  # the junk was acked too
        assert "openpole_edge_ack_latency_seconds_count 7" in text
        seen = [line for line in text.splitlines() if line.startswith('openpole_edge_node_last_seen_timestamp_seconds{node="n1"}')]
        assert seen and abs(float(seen[0].split()[-1]) - time.time()) < 60  # a timestamp, not an age
        types = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
        assert len(types) == len([line for line in text.splitlines() if line.startswith("# TYPE")])  # each once
        # The closed minute went upstream with a batch.
        def minutes():
            rows = receiver.store.db.execute("SELECT node, quantity, count, mean, min, max FROM minutes ORDER BY node")
            return [(r[0], r[1], r[2], round(r[3], 6), r[4], r[5]) for r in rows.fetchall()]

        assert wait(lambda: ("n0", "temperature", 3, 21.333333, 20.0, 23.0) in minutes(), timeout=10), minutes()
    finally:
        agent.terminate()
        agent.wait(timeout=20)
        receiver.stop()
    r = subprocess.run([sys.executable, "-m", "openpole", "edge", "status", "--port", str(port)], capture_output=True, text=True)
    assert r.returncode == 2 and "no edge agent answers" in r.stderr


def test_the_last_minutes_before_a_quiet_spell_go_upstream_without_a_new_reading(tmp_path, mosquitto, monkeypatch):
    """A node stops (the evening's last reading): its minute closes on the agent's timer and goes to
    the receiver in a batch of its own, aggregates and no records, before any new reading. A real
    broker, agent and receiver; the agent's clock is the test's, so the quiet spell is 3 minutes
    long without taking them."""
    import openpole.edge_agent.agent as agent_mod
    from openpole.edge_agent.agent import Agent
    from openpole.edge_agent.config import AgentConfig

    monkeypatch.setattr(agent_mod, "LIMITS_EVERY_S", 0.2)
    now = [1_800_000_005 * 10**9]  # 5 s into a minute (1_800_000_000 is a whole one)
    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "receiver").start()
    cfg = AgentConfig(pole_id="quiet", broker_host=mosquitto.host, broker_port=mosquitto.port, upstream=receiver.url,
                      state_dir=tmp_path / "edge", batch_interval_s=0.2, metrics_port=0)
    a = Agent(cfg, clock=lambda: now[0])
    a.start()

    def minutes():
        return receiver.store.db.execute("SELECT node, quantity, start, count, mean, min, max FROM minutes").fetchall()

    def batches():
        return receiver.store.db.execute("SELECT records FROM batches ORDER BY received_ns").fetchall()

    try:
        assert a.ingest.subscribed.wait(10), "the agent did not subscribe"
        publish_all(mosquitto, [("openpole/v1/q1/data", cbor2.dumps({0: 1, 1: "q1", 2: 1, 3: s, 4: [[0, {1: 20.0 + s}]], 5: {}}))
                                for s in range(3)])
        assert wait(lambda: receiver.store.stats()["unique"] == 3), receiver.store.stats()
        time.sleep(1)  # the agent's timers go round a few times: the minute is not done yet
        assert minutes() == [] and a.store.depth()[0] == 0
        sent = len(batches())
        now[0] += 180 * 10**9  # the quiet spell: no reading comes
        assert wait(lambda: minutes(), timeout=10), "the closed minute did not go upstream"
        assert minutes() == [("q1", "temperature", 1_800_000_000 // 60 * 60, 3, 21.0, 20.0, 22.0)]
        assert batches()[sent:] == [(0,)]  # one batch, of aggregates alone
        assert wait(lambda: a.store.counters()["batches_sent"] == sent + 1), a.store.counters()
        assert receiver.store.stats()["unique"] == 3
    finally:
        a.stop()
        receiver.stop()


def test_edge_status_reads_the_queue_from_the_state_directory_when_the_agent_is_down(tmp_path):
    from openpole.wire import batch
    from openpole.edge_agent.store import Store

    s = Store(tmp_path / "state")
    now = time.time_ns()
    rows = []
    for seq in range(5):
        n, senml = batch.senml_records("p1", msg("n1", seq, {1: 20.0}), now)
        rows.append(("n1", 1, seq, now, n, senml))
    s.append(rows, [])
    s.close()
    r = subprocess.run([sys.executable, "-m", "openpole", "edge", "status", "--state", str(tmp_path / "state")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "read from disk" in r.stdout and "queue 5 messages (5 records" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-m", "openpole", "edge", "status", "--state", str(tmp_path), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no queue here" in r.stderr and "Traceback" not in r.stderr
