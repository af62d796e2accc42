"""The pole's wall clock steps while the agent runs: NTP correcting a clock a day off either way,
a Pi that booted under fake-hwclock a month behind, and a quiet day. A real agent process, real
Mosquitto, the real receiver. This machine's own clock is not the test's to step, so the agent
process reads the wall clock (time.time_ns and time.time) plus an offset the test writes to a file;
its monotonic clock is left alone, as a real step leaves it. (libfaketime would do this from
outside, but its clock_nanosleep fails with EINVAL under Python 3.11's time.sleep.) What the NTP
daemon says (timedatectl) comes from a file the test writes too."""

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import wait

from openpole.receiver.server import Receiver
from openpole.sim.broker import Broker, free_port

DAY = 86400

# The agent's process, with the wall clock moved by the offset in seconds that OFFSET_FILE holds.
STEPPED = """
import sys, time
_real, _file = time.time_ns, sys.argv.pop(1)
time.time_ns = lambda: _real() + int(float(open(_file).read()) * 1e9)
time.time = lambda: time.time_ns() / 1e9
import runpy
sys.argv[0] = "openpole"
runpy.run_module("openpole", run_name="__main__", alter_sys=True)
"""


class SteppedAgent:
    """`openpole edge run` with a wall clock the test steps and an NTP state the test sets."""

    def __init__(self, tmp, broker, upstream_url, offset=0, synced=True):
        self.offset_file = tmp / "faketime"
        self.ntp_file = tmp / "ntp"
        self.step(offset)
        self.ntp(synced)
        shims = tmp / "shims"
        shims.mkdir()
        (shims / "timedatectl").write_text(f'#!/bin/sh\ncat "{self.ntp_file}"\n')
        (shims / "timedatectl").chmod(0o755)
        self.state = tmp / "state"
        self.metrics = free_port()
        cfg = tmp / "agent.toml"
        cfg.write_text(f'[pole]\nid = "clk"\n[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
                       f'[upstream]\nurl = "{upstream_url}"\nbatch_interval_s = 0.5\n'
                       f'[state]\ndir = "{self.state}"\n[metrics]\nport = {self.metrics}\n')
        env = dict(os.environ, PATH=f"{shims}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        cmd = [sys.executable, "-c", STEPPED, str(self.offset_file), "edge", "run", "--config", str(cfg)]
        self.proc = subprocess.Popen(cmd, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert wait(lambda: self.proc.poll() is not None or self._up(), timeout=30), "the agent did not come up"
        assert self.proc.poll() is None, self.proc.stderr.read()[-3000:]

    def step(self, offset):
        """Set the wall clock to the real one plus offset seconds (written whole, then renamed)."""
        tmp = self.offset_file.with_suffix(".new")
        tmp.write_text(f"{offset}\n")
        tmp.replace(self.offset_file)

    def ntp(self, synced):
        self.ntp_file.write_text("yes\n" if synced else "no\n")

    def status(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/status", timeout=5) as r:
            return json.load(r)

    def _up(self):
        try:
            return self.status()["broker"]["connected"]
        except OSError:
            return False

    def rows(self):
        """Rows in the queue, sent or not (a read-only look at the agent's SQLite)."""
        db = sqlite3.connect(f"file:{self.state / 'queue.sqlite'}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute("SELECT count(*) FROM messages").fetchone()[0]
        finally:
            db.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def load(broker, boot, messages=150, nodes=3):
    """Node messages v1 (3 readings each) from `openpole sim load`; returns the readings sent."""
    subprocess.run([sys.executable, "-m", "openpole", "sim", "load", "--broker", f"{broker.host}:{broker.port}",
                    "--nodes", str(nodes), "--messages", str(messages), "--boot", str(boot)],
                   check=True, stdout=subprocess.DEVNULL, timeout=60)
    return 3 * messages


def minute_starts(receiver):
    with receiver.store._lock:
        return [r[0] for r in receiver.store.db.execute("SELECT DISTINCT start FROM minutes")]


@pytest.fixture
def pole(tmp_path):
    broker = Broker(tmp_path / "broker", kind="mosquitto", persistent=True).start()
    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "receiver").start()
    made = []

    def agent(**kw):
        made.append(SteppedAgent(tmp_path, broker, receiver.url, **kw))
        return made[-1]

    yield broker, receiver, agent
    for a in made:
        a.stop()
    receiver.stop()
    broker.stop()


def delivered(receiver, n):
    assert wait(lambda: receiver.store.stats()["unique"] >= n, timeout=60), receiver.store.stats()
    assert receiver.store.stats()["unique"] == n and receiver.store.stats()["duplicates"] == 0


def test_a_clock_stepped_a_day_each_way_loses_nothing_and_holds_no_minute_back(pole):
    broker, receiver, start_agent = pole
    agent = start_agent()
    sent = load(broker, boot=1)
    delivered(receiver, sent)
    agent.step(DAY)  # NTP finds the clock a day slow
    sent += load(broker, boot=2)
    delivered(receiver, sent)
    ahead = time.time() + DAY / 2
    agent.step(0)  # and then a day fast: the minutes it opened now lie a day ahead
    sent += load(broker, boot=3)
    delivered(receiver, sent)
    # The receiver has stored the last batch a moment before the agent reads its answer and empties
    # its queue: wait for that, then read the status.
    assert wait(lambda: agent.status()["queue"]["messages"] == 0, timeout=30), agent.status()["queue"]
    st = agent.status()
    assert not any(k.startswith("dropped") for k in st["counters"]), st["counters"]
    assert 0 <= st["uptime_s"] < 600, "uptime must not follow the wall clock"
    # The minutes taken while the clock was a day ahead go upstream with the next batch, not a
    # day later when the clock catches up with them.
    assert wait(lambda: any(s > ahead for s in minute_starts(receiver)), timeout=20), minute_starts(receiver)
    assert agent.proc.poll() is None


def test_after_a_quiet_day_new_data_still_goes_upstream(pole):
    broker, receiver, start_agent = pole
    agent = start_agent()
    sent = load(broker, boot=1)
    delivered(receiver, sent)
    assert agent.rows() > 0  # sent rows stay a day, so a replay in that time is still caught
    agent.step(25 * 3600)  # nothing arrives for a day
    assert wait(lambda: agent.rows() == 0, timeout=30), "the storage limits should prune a day-old sent row"
    sent += load(broker, boot=2)
    delivered(receiver, sent)
    # The receiver has every reading before the agent marks the batch sent: wait for that too.
    assert wait(lambda: agent.status()["queue"]["messages"] == 0, timeout=10), agent.status()["queue"]


def test_data_taken_under_fake_hwclock_is_not_aged_out_when_ntp_steps_the_clock(pole, tmp_path):
    broker, receiver, start_agent = pole
    agent = start_agent(offset=-30 * DAY, synced=False)  # booted a month behind, NTP not yet synced
    sent = load(broker, boot=1)
    delivered(receiver, sent)
    port = int(receiver.url.rsplit(":", 1)[1])
    receiver.stop()  # the city's upstream is away while more arrives
    waiting = load(broker, boot=2)
    assert wait(lambda: agent.status()["queue"]["records"] == waiting, timeout=30), agent.status()["queue"]
    before = agent.rows()
    agent.step(0)  # NTP syncs: the clock jumps a month ahead, past the 7-day maximum age
    agent.ntp(True)
    # The limits pass runs after the step (it prunes the month-old rows already upstream) and
    # keeps the unsent ones, dated by a clock that was not synced when they came.
    assert wait(lambda: agent.rows() < before, timeout=30), "the storage limits did not run after the step"
    st = agent.status()
    assert st["queue"]["records"] == waiting and "dropped_max_age" not in st["counters"], st
    back = Receiver("127.0.0.1", port, tmp_path / "receiver").start()
    try:
        delivered(back, sent + waiting)
    finally:
        back.stop()
