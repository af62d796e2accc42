"""A full disk on the pole: below the free-disk floor, or with SQLite out of room, the agent stores
and acknowledges nothing (counted, alarmed), the broker holds the messages, and once there is room
again every one arrives. The queue lives on a small tmpfs mounted in a user namespace of its own
(unshare -Urm), so this runs as root in CI and as a developer alike."""

import json
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import wait

from openpole.receiver.server import Receiver
from openpole.sim.broker import Broker, free_port

SCRIPT = """
set -e
mount -t tmpfs -o size=4m tmpfs "$STATE"
dd if=/dev/zero of="$STATE/filler" bs=1024 count=$FILL 2>/dev/null
( while [ ! -e "$STATE/../free-now" ]; do sleep 0.2; done; rm -f "$STATE/filler" ) &
exec "$PY" -m openpole edge run --config "$CFG"
"""


def status(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        return json.load(r)


@pytest.mark.parametrize("floor, fill_kb", [(1024 * 1024, 2900), (0, 3900)], ids=["floor", "sqlite_full"])
def test_a_full_disk_holds_the_messages_and_loses_none(tmp_path, floor, fill_kb):
    broker = Broker(tmp_path / "broker", kind="mosquitto", persistent=True).start()
    receiver = Receiver("127.0.0.1", free_port(), tmp_path / "receiver").start()
    state = tmp_path / "edge" / "state"
    state.mkdir(parents=True)
    metrics = free_port()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[pole]\nid = "disk"\n[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
                   f'[upstream]\nurl = "{receiver.url}"\nbatch_interval_s = 0.5\n'
                   f'[state]\ndir = "{state}"\nmin_free_bytes = {floor}\n[metrics]\nport = {metrics}\n')
    env = {"STATE": str(state), "FILL": str(fill_kb), "PY": sys.executable, "CFG": str(cfg), "PATH": "/usr/bin:/bin"}
    agent = subprocess.Popen(["unshare", "-Urm", "sh", "-c", SCRIPT], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert wait(lambda: _up(metrics), timeout=20), agent.stderr.read() if agent.poll() is not None else "no agent"
        n = 6000
        loader = subprocess.Popen([sys.executable, "-m", "openpole", "sim", "load", "--broker",
                                   f"{broker.host}:{broker.port}", "--nodes", "20", "--messages", str(n)],
                                  stdout=subprocess.DEVNULL)
        assert wait(lambda: agent.poll() is not None or status(metrics)["disk"]["low"], timeout=60)
        assert agent.poll() is None, agent.stderr.read()[-3000:]
        time.sleep(2)
        held = status(metrics)
        assert agent.poll() is None and held["disk"]["waits"] > 0
        stored = held["counters"].get("messages_accepted", 0)
        assert stored < n, "the disk should have filled before every message was stored"
        (state.parent / "free-now").touch()  # room again
        assert loader.wait(timeout=120) == 0  # every PUBACK came, in the end
        assert wait(lambda: receiver.store.stats()["unique"] >= 3 * n, timeout=120), receiver.store.stats()
        assert receiver.store.stats()["unique"] == 3 * n and not status(metrics)["disk"]["low"]
    finally:
        agent.terminate()
        agent.wait(timeout=20)
        receiver.stop()
        broker.stop()


def _up(port):
    try:
        status(port)
        return True
    except OSError:
        return False
