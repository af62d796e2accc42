"""One message never stops the agent, a quiet day never hides data, a healthy queue is never moved
aside: defects a field pole met, each with the test that failed before its fix."""

import sqlite3
import time

import cbor2
import pytest

from openpole.wire import batch, node_message
from openpole.edge_agent.agent import Agent
from openpole.edge_agent.config import AgentConfig
from openpole.edge_agent.store import Store
from openpole.spec.registry import REGISTRY


class Ingest:
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


class Sink:
    def __init__(self):
        self.bodies = []

    def describe(self):
        return "test sink"

    def send(self, batch_id, body):
        self.bodies.append(body)


def agent(tmp_path):
    cfg = AgentConfig(pole_id="px", broker_host="127.0.0.1", broker_port=1, upstream="http://127.0.0.1:1",
                      state_dir=tmp_path / "edge", metrics_port=0)
    return Agent(cfg, sink=Sink(), ingest_factory=Ingest)


def msg(seq, values, node="px1"):
    return cbor2.dumps({0: 1, 1: node, 2: 7, 3: seq, 4: [[0, values]], 5: {}})


def test_a_poison_message_is_quarantined_and_the_next_ones_are_stored(tmp_path):
    a = agent(tmp_path)
    now = time.time_ns()
    laeq = REGISTRY.by_name["laeq"].key
    items = [
        (now, "openpole/v1/px1/data", msg(0, {laeq: 4000.0}), 1, 1),  # accepted, flagged: 10**400 in the minute means
        (now, "openpole/v1/px1/data", msg(1, {1: 2**2000}), 2, 1),  # a bignum
        (now, "openpole/v1/px1/data", msg(2, {1: 21.5}), 3, 1),
    ]
    a.process(items)
    assert [mid for mid, _ in a.ingest.acked] == [1, 2, 3]  # every message acked: stored or quarantined
    assert a.ingest.node_acks[-1] == {"px1": [[7, 0, 0], [7, 2, 2]]}
    c = a.store.counters()
    assert c["messages_accepted"] == 2 and c["rejected_not_finite"] == 1
    closed = a.minutes.close(now + 10 * 60 * 10**9)
    assert all(row[1] != "laeq" for row in closed)  # the out-of-range level is kept out of the means
    a.store.close()


def test_an_unexpected_error_in_one_message_is_quarantined_not_fatal(tmp_path, monkeypatch):
    a = agent(tmp_path)
    real = batch.senml_records

    def boom(pole, m, receive_ns, tq=0):
        if m.seq == 1:
            raise ZeroDivisionError("a bug met in the field")
        return real(pole, m, receive_ns, tq)

    monkeypatch.setattr(batch, "senml_records", boom)
    now = time.time_ns()
    a.process([(now, "openpole/v1/px1/data", msg(s, {1: 20.0}), s + 1, 1) for s in range(3)])
    c = a.store.counters()
    assert c["messages_accepted"] == 2 and c["rejected_internal_error"] == 1
    assert len(a.ingest.acked) == 3
    a.store.close()


def entry(seq, receive_ns):
    m = node_message.decode(msg(seq, {1: 20.0}))
    n, senml = batch.senml_records("px", m, receive_ns)
    return ("px1", 7, seq, receive_ns, n, senml)


def test_after_a_quiet_day_new_data_is_still_sent(tmp_path):
    now = time.time_ns()
    s = Store(tmp_path / "q")
    s.append([entry(i, now) for i in range(5)], [])
    rows, _ = s.pending(100)
    s.acknowledged(rows[-1][0], 5)
    day = 25 * 3600 * 10**9
    s.enforce_limits(now + day)  # a quiet day: every sent row is pruned, the table is empty
    s.append([entry(100 + i, now + day) for i in range(3)], [])
    rows, _ = s.pending(100)
    assert len(rows) == 3, "rows stored after the table emptied must still be above the upload cursor"
    s.close()
    again = Store(tmp_path / "q")  # and across a restart
    assert len(again.pending(100)[0]) == 3
    again.close()


def test_a_queue_made_before_autoincrement_is_rebuilt_and_its_cursor_respected(tmp_path):
    path = tmp_path / "q"
    path.mkdir()
    db = sqlite3.connect(path / "queue.sqlite")
    db.executescript("""
        CREATE TABLE messages (id INTEGER PRIMARY KEY, node TEXT NOT NULL, boot INTEGER NOT NULL,
            seq INTEGER NOT NULL, receive_ns INTEGER NOT NULL, records INTEGER NOT NULL, senml BLOB NOT NULL,
            UNIQUE (node, boot, seq));
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO meta VALUES ('cursor', 40);
    """)
    db.commit()
    db.close()
    s = Store(path)
    s.append([entry(1, time.time_ns())], [])
    rows, _ = s.pending(100)
    assert len(rows) == 1 and rows[0][0] > 40
    s.close()


@pytest.mark.parametrize("error", [sqlite3.OperationalError("database is locked"),
                                   sqlite3.OperationalError("attempt to write a readonly database")])
def test_a_busy_or_read_only_queue_is_not_moved_aside(tmp_path, monkeypatch, error):
    state = tmp_path / "q"
    Store(state).close()

    def refuse(self):
        raise error

    monkeypatch.setattr(Store, "_open", refuse)
    with pytest.raises(sqlite3.OperationalError):
        Store(state)
    assert not list(state.glob("queue.sqlite.damaged-*"))


def test_a_worker_thread_that_dies_takes_the_process_down_with_a_non_zero_exit(tmp_path):
    import subprocess
    import sys

    code = (
        "import threading, time\n"
        "from openpole.edge_agent.agent import Agent\n"
        "class A(Agent):\n"
        "    def __init__(self): pass\n"
        "def _writer():\n"
        "    raise sqlite3_error\n"
        "import sqlite3; sqlite3_error = sqlite3.OperationalError('disk I/O error')\n"
        "_writer.__name__ = '_writer'\n"
        "threading.Thread(target=A()._guarded(_writer)).start()\n"
        "time.sleep(10)\n"
        "print('still running')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 70 and "still running" not in r.stdout
    assert "the writer thread died; exiting so the service restarts" in r.stderr


def test_the_quarantine_has_its_own_cap(tmp_path):
    s = Store(tmp_path / "q", quota_bytes=100_000)
    now = time.time_ns()
    for _ in range(30):
        s.append([], [(now, "openpole/v1/x/data", "schema", "garbage", b"\x00" * 1000)])
    dropped = s.enforce_limits(now)
    kept = s.db.execute("SELECT count(*), sum(length(payload) + length(detail)) FROM quarantine").fetchone()
    assert dropped["dropped_quarantine"] == 21 and kept[1] <= 10_000 and s.counters()["dropped_quarantine"] == 21
    s.close()


@pytest.mark.parametrize("text, said", [
    ('[nodes]\nrequire_mac = "false"\n', "nodes.require_mac must be true or false, not 'false'"),
    ("[upstream]\nbatch_max = 2000.5\n", "upstream.batch_max must be a whole number, not 2000.5"),
    ('[broker]\nhots = "pi"\n', "unknown setting broker.hots (known in [broker]: host, password, port, user)"),
    ("[uplink]\nurl = 1\n", "unknown section [uplink]"),
    ("[broker]\nport = true\n", "broker.port must be a whole number, not True"),
])
def test_unknown_settings_and_wrong_types_fail_at_start_with_file_key_and_reason(tmp_path, text, said):
    from openpole.edge_agent import config
    from openpole.errors import UserError

    f = tmp_path / "agent.toml"
    f.write_text(text)
    with pytest.raises(UserError) as e:
        config.load(f)
    assert str(e.value).startswith(f"config {f}: {said}")


def test_the_sample_config_loads_with_every_setting_uncommented(tmp_path):
    import re

    from openpole.edge_agent import config

    text = (config.Path(config.__file__).with_name("sample.toml")).read_text()
    lines = [re.sub(r"^# (\w+ = )", r"\1", ln) for ln in text.splitlines()]
    body = "\n".join(ln for ln in lines if not ln.startswith(("kind", "bus", "address", 'port = "/dev')))
    f = tmp_path / "agent.toml"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    release = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    body = body.replace("<64 hex digits from openpole ota keygen>", release)  # the placeholder, as a user fills it
    f.write_text(body.replace('keys_file = "/etc/openpole/node-keys.toml"', ""))
    cfg = config.load(f)
    assert cfg.batch_max == 2000 and cfg.require_mac is False and release in str(cfg.ota_release_keys)


def test_a_clock_step_neither_ages_out_unsynced_rows_nor_skips_newer_ones(tmp_path):
    now = time.time_ns()
    year = 365 * 86400 * 10**9
    s = Store(tmp_path / "q", max_age_s=7 * 86400)
    s.append([entry(0, now - 30 * 86400 * 10**9)], [])  # a month old by a synced clock: past the maximum age
    s.append([entry(1, now)], [])  # fresh
    s.append([(*entry(2, now - year)[:6], 0)], [])  # received under fake-hwclock a "year" ago, before NTP
    s.append([entry(3, now - 8 * 86400 * 10**9)], [])  # old again, after a newer row
    dropped = s.enforce_limits(now)
    assert dropped == {"dropped_max_age": 2}
    rows, _ = s.pending(100)
    seqs = [decode_seq(r[2]) for r in rows]
    assert seqs == [1, 2], "the fresh row and the one dated by an unsynced clock stay pending"
    s.close()


def decode_seq(senml):
    return cbor2.loads(b"\x9f" + senml + b"\xff")[0]["seq"]  # the first record of a message carries it


def test_a_scrape_does_not_wait_for_the_writer(tmp_path):
    from openpole.edge_agent import observe

    a = agent(tmp_path)
    a.process([(time.time_ns(), "openpole/v1/px1/data", msg(0, {1: 21.5}), 1, 1)])
    with a.store._lock:  # the writer in the middle of a group commit
        t0 = time.monotonic()
        st = observe.status(a)
        assert time.monotonic() - t0 < 1.0
    assert st["queue"]["messages"] == 1 and st["counters"]["messages_accepted"] == 1
    assert "openpole_edge_ack_latency_seconds_count 1" in observe.metrics(st)
    a.store.close()


def test_node_reports_on_the_side_topics_never_wait_for_a_full_disk(tmp_path):
    """Diag reports arrive on paho's thread: with the disk full they are shown but not kept, and
    counted; garbage on those topics is counted too. Nothing raises, nothing waits."""
    import sqlite3

    a = agent(tmp_path)

    def full(*args):
        raise sqlite3.OperationalError("database or disk is full")

    a.store.keep_diag = full
    a._side("openpole/v1/px1/diag", b'{"fw": "0.2.0", "heap_min_free": 30000}')
    assert a.node_info["px1"]["diag"]["fw"] == "0.2.0"
    a._side("openpole/v1/px1/diag", b"\xff not json")
    a._side("openpole/v1/../diag", b"{}")
    a._side("openpole/v1/px1/status", b"offline")
    assert a.node_info["px1"]["online"] is False
    a._side("openpole/v1/px1/diag", b"[" * 4000 + b"]" * 4000)  # JSON nested past Python's parser
    a._side("openpole/v1/px1\n/diag", b"{}")  # a node id with a newline is no node id
    counters = a.store.counters()
    assert counters["diag_not_kept_disk_full"] == 1 and counters["side_rejected"] == 4, counters
    assert "px1\n" not in a.node_info
