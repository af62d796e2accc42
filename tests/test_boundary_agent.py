"""The agent's boundary: whatever a node (or anything on the broker) sends, the agent keeps running,
stores and acknowledges the good messages around a bad one, and keeps the bad one in quarantine with
its reason; what it stores is always a batch the receivers can read. Property-based (hypothesis),
through Agent.process with a real queue, and through a real Mosquitto into a running agent."""

import math
import sqlite3
import struct
import threading

import cbor2
import pytest
from helpers import Collector, publish_all, wait
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cbor  # firmware/lib: the node's own encoder, on CPython
import cose
import message
from openpole.edge_agent.agent import Agent
from openpole.edge_agent.config import AgentConfig
from openpole.receiver.server import Receiver
from openpole.sim.broker import free_port
from openpole.wire import batch

KEY = bytes(range(32))
# What a bad payload may be refused for: a refusal the decoder names. "internal_error" is not among
# them: it says this code met something it did not foresee.
REASONS = {"malformed", "schema", "version", "oversized", "unknown_quantity", "not_finite", "topic_mismatch",
           "unsigned", "unknown_node", "bad_mac"}
NOW = 1_800_000_000 * 10**9


class Ingest:
    """The broker's side of the agent, for Agent.process without one: what it acknowledges."""

    connected = True

    def __init__(self, cfg, deliver):
        self.acked = []
        self.node_acks = []

    def ack_group(self, items, node_acks=None):
        self.acked += items
        self.node_acks.append(node_acks)

    def start(self):
        pass

    def stop(self):
        pass


def agent(state, **kw):
    cfg = AgentConfig(pole_id="pb", broker_host="127.0.0.1", broker_port=1, upstream="http://127.0.0.1:1",
                      state_dir=state, metrics_port=0, node_keys={"pk": KEY}, **kw)
    return Agent(cfg, sink=None, ingest_factory=Ingest, clock=lambda: NOW)


def encoded(node, seq, boot=7, values=None, status=None, age=1500):
    """A message as the firmware encodes it."""
    v = message.encode_values(values or {"temperature": 21.37, "humidity": 45.5, "pm2_5": 7})
    return message.encode(node, boot, seq, [(age, v)], cbor.dumps(status or {"bme280": [0, 0]}))


def stored(a, node):
    return [r[0] for r in a.store.db.execute("SELECT seq FROM messages WHERE node = ? ORDER BY seq", (node,))]


def quarantined(a):
    return [r[0] for r in a.store.db.execute("SELECT reason FROM quarantine ORDER BY id")]


def test_a_seq_sqlite_cannot_hold_is_refused_and_the_messages_around_it_are_stored(tmp_path):
    """The crash loop met in the field: seq 2^63 killed the writer, and came back after each restart."""
    a = agent(tmp_path)
    a.process([(NOW, "openpole/v1/pg/data", encoded("pg", 0), 1, 1),
               (NOW, "openpole/v1/pg/data", encoded("pg", 2**63), 2, 1),
               (NOW, "openpole/v1/pg/data", encoded("pg", 1), 3, 1)])
    assert [mid for mid, _ in a.ingest.acked] == [1, 2, 3]
    assert a.ingest.node_acks == [{"pg": [[7, 0, 1]]}]
    assert stored(a, "pg") == [0, 1]
    detail = a.store.db.execute("SELECT reason, detail FROM quarantine").fetchall()
    assert detail == [("schema", "schema: seq must be an unsigned integer that fits a signed 64-bit integer")]
    assert a.store.counters()["rejected_schema"] == 1
    a.store.close()


BAD_STATUS = {  # what sensor_specs/node_message.cddl refuses: sensor-state = 0..3, sensor-name = tstr .size (1..16)
    "a state of 4": ({"bme280": [4, 0]}, "sensor 'bme280': state 4 is not 0..3 (ok, warming, degraded, failed)"),
    "a state of -1": ({"bme280": [-1, 0]}, "sensor 'bme280': state -1 is not 0..3 (ok, warming, degraded, failed)"),
    "a name of 17 characters": ({"b" * 17: [0, 0]}, "a sensor name in the status must be text of 1..16 bytes"),
    "a name of 9 characters and 17 bytes": ({"\u00e9" * 8 + "b": [0, 0]},
                                            "a sensor name in the status must be text of 1..16 bytes"),
    "an empty name": ({"": [0, 0]}, "a sensor name in the status must be text of 1..16 bytes"),
}


@pytest.mark.parametrize("case", BAD_STATUS)
def test_a_sensor_state_or_name_the_cddl_refuses_is_quarantined_and_counted(tmp_path, case):
    """From a node's own encoder, between good messages: kept in quarantine with its reason, counted
    as rejected_schema, acknowledged to the broker but not to the node; its neighbours stored."""
    status, why = BAD_STATUS[case]
    a = agent(tmp_path)
    bad = encoded("pg", 1, status=status)
    a.process([(NOW, "openpole/v1/pg/data", encoded("pg", 0), 1, 1), (NOW, "openpole/v1/pg/data", bad, 2, 1),
               (NOW, "openpole/v1/pg/data", encoded("pg", 2), 3, 1)])
    assert stored(a, "pg") == [0, 2]
    assert a.store.db.execute("SELECT reason, detail, payload FROM quarantine").fetchall() == [("schema", f"schema: {why}", bad)]
    c = a.store.counters()
    assert c["rejected_schema"] == 1 and c["messages_accepted"] == 2
    assert [mid for mid, _ in a.ingest.acked] == [1, 2, 3] and a.ingest.node_acks == [{"pg": [[7, 0, 0], [7, 2, 2]]}]
    a.store.close()


def refuse_seq(a, seq):
    """A real constraint in the agent's queue that refuses one well-formed message: what a value
    SQLite cannot hold, or any fault of one row, looks like to the writer."""
    a.store.db.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.seq = {seq} "
                       "BEGIN SELECT RAISE(ABORT, 'refused by the test''s constraint'); END")


def test_a_message_the_queue_refuses_is_quarantined_and_the_rest_of_its_group_stored(tmp_path):
    a = agent(tmp_path)
    refuse_seq(a, 2)
    a.process([(NOW, "openpole/v1/pg/data", encoded("pg", s), s + 1, 1) for s in range(5)])
    assert [mid for mid, _ in a.ingest.acked] == [1, 2, 3, 4, 5]  # every one: stored or quarantined
    assert a.ingest.node_acks == [{"pg": [[7, 0, 1], [7, 3, 4]]}]  # the node keeps seq 2... and sends it again
    assert stored(a, "pg") == [0, 1, 3, 4]
    row = a.store.db.execute("SELECT reason, detail, payload FROM quarantine").fetchone()
    assert row == ("internal_error", "IntegrityError: refused by the test's constraint", encoded("pg", 2))
    c = a.store.counters()
    assert c["messages_accepted"] == 4 and c["rejected_internal_error"] == 1
    # Only what was stored counts as seen: four readings of each quantity in the minute, not five.
    assert {k[1]: v[0] for k, v in a.minutes.open.items()} == {1: 4, 2: 4, 5: 4}
    assert a.nodes["pg"]["messages"] == 4
    a.process([(NOW, "openpole/v1/pg/data", encoded("pg", 5), 6, 1)])  # the next group: one transaction again
    assert stored(a, "pg") == [0, 1, 3, 4, 5] and a.ingest.node_acks[-1] == {"pg": [[7, 5, 5]]}
    a.store.close()


def test_one_bad_message_in_a_big_group_costs_a_few_commits_not_one_per_message(tmp_path):
    """The group is halved around the message the queue refuses: a pole catching up after an outage
    (groups of hundreds) does not fall to a commit (and an fsync) per message for one bad one."""
    a = agent(tmp_path)
    refuse_seq(a, 137)
    appends, real = [], a.store.append
    a.store.append = lambda *args: (appends.append(len(args[0])), real(*args))[1]
    a.process([(NOW, "openpole/v1/pg/data", encoded("pg", s), s + 1, 1) for s in range(256)])
    assert stored(a, "pg") == [s for s in range(256) if s != 137]
    assert a.store.counters()["rejected_internal_error"] == 1
    # the whole group, then two halves at each of 8 levels, the quarantine: 18 commits, not 256
    assert len(appends) <= 2 + 2 * 8, appends
    a.store.close()


def test_a_locked_queue_is_not_blamed_on_a_message(tmp_path, caplog):
    """Another process holding the queue's write lock is no message's fault: nothing is quarantined,
    nothing acknowledged (the broker keeps the group), no message is tried on its own."""
    a = agent(tmp_path)
    other = sqlite3.connect(a.store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            a.process([(NOW, "openpole/v1/pg/data", encoded("pg", s), s + 1, 1) for s in range(3)])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert a.ingest.acked == [] and quarantined(a) == [] and stored(a, "pg") == []
    assert "one by one" not in caplog.text
    a.store.close()


def big(node, seq):
    """A message of 40 samples: a few kilobytes of records in the queue."""
    v = message.encode_values({"temperature": 21.37, "humidity": 45.5, "pressure": 1013.2, "pm2_5": 7})
    return message.encode(node, 7, seq, [(1000 * i, v) for i in range(40)], cbor.dumps({"bme280": [0, 0]}))


def test_a_full_queue_is_waited_out_not_blamed_on_a_message(tmp_path, caplog):
    """SQLite's own SQLITE_FULL (the file may not grow past max_page_count): the writer holds the
    group and waits for room, then stores all of it; stopping meanwhile, it leaves the group to the
    broker. Never a message quarantined for it."""
    a = agent(tmp_path)
    pages = a.store.db.execute("PRAGMA page_count").fetchone()[0]
    a.store.db.execute(f"PRAGMA max_page_count = {pages}")
    items = [(NOW, "openpole/v1/pg/data", big("pg", s), s + 1, 1) for s in range(5)]
    writer = threading.Thread(target=a.process, args=(items,))
    writer.start()
    assert wait(lambda: a.disk_low, timeout=10), "the writer did not find the queue full"
    assert a.ingest.acked == [] and quarantined(a) == []
    a.store.db.execute("PRAGMA max_page_count = 1000000")  # room again
    writer.join(timeout=10)
    assert stored(a, "pg") == [0, 1, 2, 3, 4] and len(a.ingest.acked) == 5 and quarantined(a) == []

    a.store.db.execute(f"PRAGMA max_page_count = {a.store.db.execute('PRAGMA page_count').fetchone()[0]}")
    a.stopping.set()
    with pytest.raises(sqlite3.OperationalError, match="full"):
        a.process([(NOW, "openpole/v1/pg/data", big("pg", s), s + 1, 1) for s in range(5, 10)])
    assert stored(a, "pg") == [0, 1, 2, 3, 4] and len(a.ingest.acked) == 5 and quarantined(a) == []
    assert "one by one" not in caplog.text
    a.store.close()


# --- hypothesis: anything between two good messages ---

EXTREME_INTS = [0, 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64,
                -(2**63), -(2**63) - 1, -(2**64), 2**100, -(2**100)]
EXTREME_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -1e308, -0.0, 5e-324, 2.2250738585072014e-308, 3.4e38,
                  1e-45, 65504.0, struct.unpack(">f", b"\x7f\xc0\x00\x01")[0]]
# and a bignum past what str() of an int takes (4300 digits), made where hypothesis need not show it
ints = st.sampled_from(EXTREME_INTS) | st.integers() | st.sampled_from([1, -1]).map(lambda sign: sign * 2**20000)
floats = st.sampled_from(EXTREME_FLOATS) | st.floats()
scalars = (st.none() | st.booleans() | ints | floats | st.text(max_size=40) | st.binary(max_size=40)
           | st.just(cbor2.undefined) | st.just("x" * 5000))


def deep(n):
    v = 0
    for _ in range(n):
        v = [v]
    return v


def cbor_values():
    """Any CBOR data item: scalars, arrays, maps (keys of any kind), tags, and deep nesting."""
    return st.recursive(
        scalars | st.integers(1, 300).map(deep),
        lambda inner: (st.lists(inner, max_size=6)
                       | st.dictionaries(ints | st.text(max_size=10) | st.booleans(), inner, max_size=6)
                       | st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 3, 4, 5, 17, 24, 30, 55799, 2**40]), inner)),
        max_leaves=16)


def shaped():
    """Maps shaped like a node message, each field drawn from its likely values or from anything:
    random CBOR alone seldom gets past the version and the node id."""
    anything = cbor_values()
    value = ints | floats | anything
    sample = (st.tuples(ints, st.dictionaries(st.integers(0, 40) | scalars, value, max_size=4)).map(list)
              | st.lists(value, max_size=3))
    return st.fixed_dictionaries(
        {0: st.just(1) | anything, 1: st.sampled_from(["px1", "pk", "x" * 33]) | anything, 2: value, 3: value,
         4: st.lists(sample, max_size=4) | anything},
        optional={5: st.dictionaries(st.text(max_size=20) | scalars, st.lists(ints, max_size=4) | anything, max_size=3)
                  | anything, 6: value, 7: value, 8: anything})


def dump(value):
    try:
        return cbor2.dumps(value)
    except (ValueError, TypeError, OverflowError, cbor2.CBOREncodeError):
        return b"\xf7"  # a value cbor2 will not encode (a bad tag's content): CBOR undefined instead


NODE = cbor2.loads(encoded("px1", 3, status={"bme280": [0, 0], "noise": [1, 2, 3]}))
PATHS = [(k,) for k in range(9)] + [(4, 0), (4, 0, 0), (4, 0, 1), (4, 0, 1, 1), (4, 0, 1, 2), (4, 0, 1, 999),
                                   (5, "bme280"), (5, "bme280", 0), (5, "bme280", 1), (5, "noise", 2), (5, "x" * 17)]


@st.composite
def mutated(draw):
    """A valid message (the firmware's own encoding) with one place set to something nasty, plain
    or signed with the node's key so that the change reaches the checks behind the MAC."""
    m = cbor2.loads(cbor2.dumps(NODE))
    path = draw(st.sampled_from(PATHS))
    value = draw(ints | floats | cbor_values())
    target = m
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value  # a list's index or a map's key
    payload = dump(m)
    if draw(st.booleans()):
        m[1] = "pk"
        return "pk", cose.sign(dump(m), KEY)
    return "px1", payload


BOUNDED = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Round:
    """Runs groups of [good, poison, good] through one agent and checks what a boundary promises."""

    def __init__(self, state):
        self.a = agent(state)
        self.seq = 0
        self.mid = 0

    def __call__(self, topic_node, poison):
        a = self.a
        before = a.store.counters()
        quarantine_before = a.store.db.execute("SELECT max(id) FROM quarantine").fetchone()[0] or 0
        s1, s2 = self.seq, self.seq + 1
        self.seq += 2
        items = [(NOW, "openpole/v1/pg/data", encoded("pg", s1), self.mid + 1, 1),
                 (NOW, f"openpole/v1/{topic_node}/data", poison, self.mid + 2, 1),
                 (NOW, "openpole/v1/pg/data", encoded("pg", s2), self.mid + 3, 1)]
        self.mid += 3
        a.process(items)
        assert [mid for mid, _ in a.ingest.acked[-3:]] == [self.mid - 2, self.mid - 1, self.mid]
        runs = a.ingest.node_acks[-1]["pg"]
        assert any(r[0] == 7 and r[1] <= s1 and s2 <= r[2] for r in runs), runs
        both = a.store.db.execute("SELECT count(*) FROM messages WHERE node = 'pg' AND seq IN (?, ?)", (s1, s2))
        assert both.fetchone()[0] == 2
        after = a.store.counters()
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        refused = {k[len("rejected_"):]: v for k, v in delta.items() if k.startswith("rejected_") and v}
        assert delta["messages_accepted"] + delta.get("messages_duplicate", 0) + sum(refused.values()) == 3
        assert set(refused) <= REASONS, refused
        reasons = [r[0] for r in a.store.db.execute("SELECT reason FROM quarantine WHERE id > ?", (quarantine_before,))]
        assert sorted(reasons) == sorted(k for k, v in refused.items() for _ in range(v))
        # Whatever was stored is a batch every receiver reads: the queue's rows, sent and decoded.
        rows, _ = a.store.pending(10_000)
        body = batch.encode(batch.new_batch_id(), "pb", [r[2] for r in rows], sum(r[1] for r in rows), NOW)
        batch.decode_messages(body)
        a.store.acknowledged(rows[-1][0], sum(r[1] for r in rows))


def test_any_cbor_value_between_good_messages(tmp_path):
    run = Round(tmp_path)

    @BOUNDED
    @given(cbor_values() | shaped())
    def check(value):
        run("px1", dump(value))

    check()
    run.a.store.close()


def test_any_bytes_between_good_messages(tmp_path):
    run = Round(tmp_path)

    @BOUNDED
    @given(st.binary(max_size=400) | st.binary(max_size=40).map(lambda b: b"\x81" * 5000 + b))
    def check(raw):
        run("px1", raw)

    check()
    run.a.store.close()


def test_a_valid_message_with_one_nasty_value_between_good_messages(tmp_path):
    run = Round(tmp_path)

    @BOUNDED
    @given(mutated())
    def check(case):
        run(*case)

    check()
    run.a.store.close()


def test_a_running_agent_keeps_going_past_poison_on_its_broker(tmp_path, mosquitto):
    """Through Mosquitto into a running agent: poison between good messages (a seq past SQLite's
    range, one the queue refuses, garbage), and the agent stores, acks and sends the good ones."""
    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "receiver").start()
    cfg = AgentConfig(pole_id="pb", broker_host=mosquitto.host, broker_port=mosquitto.port, upstream=receiver.url,
                      state_dir=tmp_path / "edge", batch_interval_s=0.2, metrics_port=0)
    a = Agent(cfg)
    refuse_seq(a, 666)
    acks = Collector(mosquitto, "openpole/v1/+/ack")
    a.start()
    try:
        assert a.ingest.subscribed.wait(10), "the agent did not subscribe"
        topic = "openpole/v1/pg/data"
        publish_all(mosquitto, [(topic, encoded("pg", 0)), (topic, encoded("pg", 2**63)),
                                (topic, encoded("pg", 1)), (topic, encoded("pg", 666)),
                                (topic, encoded("pg", 2)), (topic, b"\xa6\x00\x01\x01"),
                                (topic, encoded("pg", 3))])

        def acked(msgs):
            seqs = set()
            for t, p, _ in msgs:
                seqs |= {s for boot, first, last in cbor2.loads(p) for s in range(first, min(last, 10**4) + 1)}
            return seqs

        assert wait(lambda: acked(acks.messages) >= {0, 1, 2, 3}, timeout=20), acks.messages
        assert wait(lambda: sorted(quarantined(a)) == ["internal_error", "malformed", "schema"], timeout=10), quarantined(a)
        assert acked(acks.messages) == {0, 1, 2, 3}  # neither 666 nor 2^63: the node keeps them
        assert all(t.is_alive() for t in a._threads)
        assert stored(a, "pg") == [0, 1, 2, 3]
        assert wait(lambda: receiver.store.stats()["unique"] == 4 * 3, timeout=20), receiver.store.stats()
        c = a.store.counters()
        assert c["messages_accepted"] == 4 and c["rejected_schema"] == c["rejected_internal_error"] == 1
    finally:
        acks.close()
        a.stop()
        receiver.stop()
