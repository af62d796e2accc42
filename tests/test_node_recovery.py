"""The recovery paths the README promises, on the real firmware under MicroPython and a real
Mosquitto: selftest and reboot over MQTT, the last will `offline` of a node that drops off, and
Ctrl-D at the REPL restarting the app. (A crash kept in crash.txt, then a reset after a growing
delay: tests/test_node_field.py.)"""

import json
import signal
import subprocess
import sys
import time

import serial
from helpers import Collector, publish_all

from openpole.wire import node_message
from openpole.sim import node as simnode

HEAP = "128k"


def status(msgs, node):
    return [p for t, p, _ in msgs if t == f"openpole/v1/{node}/status"]


def test_selftest_and_reboot_over_mqtt_then_the_last_will_of_a_dropped_node(app, tmp_path, mosquitto, world):
    state = tmp_path / "node"
    cfg = simnode.node_config("rc-1", mosquitto.host, mosquitto.port, interval_s=0.3, world=f"{world.host}:{world.port}",
                              sensors=("bme280",), ack="broker")
    cfg["broker"]["keepalive_s"] = 2  # the broker gives up on it after 3 s of silence
    simnode.write_config(state, cfg)
    sub = Collector(mosquitto, "openpole/v1/rc-1/#")
    node = simnode.start(state, app, heap=HEAP, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        msgs = sub.wait_for(lambda m: status(m, "rc-1")[-1:] == [b"online"], timeout=30)
        assert status(msgs, "rc-1")[-1:] == [b"online"]
        cmd = "openpole/v1/rc-1/cmd"
        publish_all(mosquitto, [(cmd, b'{"cmd": "selftest"}')])
        msgs = sub.wait_for(lambda m: any(b'"selftest"' in p for t, p, _ in m if t.endswith("/diag")), timeout=20)
        reply = next(json.loads(p) for t, p, _ in msgs if t.endswith("/diag") and b'"selftest"' in p)
        assert reply["ok"] and reply["selftest"] == {"bme280": "ok"}

        first_boot = next(node_message.decode(p).boot for t, p, _ in msgs if t.endswith("/data"))
        publish_all(mosquitto, [(cmd, b'{"cmd": "reboot"}')])
        assert node.wait(timeout=20) == -signal.SIGUSR1, "reboot resets the board (the simulator's reset line)"
        msgs = sub.wait_for(lambda m: any(b'"reboot"' in p for t, p, _ in m if t.endswith("/diag")), timeout=5)
        said = next(p for t, p, _ in msgs if t.endswith("/diag") and b'"reboot"' in p)
        assert json.loads(said) == {"cmd": "reboot", "ok": True}

        n = len(sub.messages)
        node = simnode.start(state, app, heap=HEAP, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def data(m):
            return [node_message.decode(p) for t, p, _ in m[n:] if t.endswith("/data")]

        msgs = sub.wait_for(lambda m: any(d.boot == first_boot + 1 for d in data(m)), timeout=30)
        again = data(msgs)
        new = [d for d in again if d.boot == first_boot + 1]
        assert new and new[0].seq == 0
        # What the reboot saved to flash (sent, its ack not yet in) goes first, its age a lower bound.
        before = again[: again.index(new[0])]
        assert all(d.boot == first_boot and d.age_lower_bound for d in before), before

        n = len(sub.messages)
        node.kill()  # the node drops off the network mid-sentence: no DISCONNECT, no "offline" of its own
        node.wait()
        msgs = sub.wait_for(lambda m: b"offline" in status(m[n:], "rc-1"), timeout=15)
        assert status(msgs[n:], "rc-1") == [b"offline"], "the broker sends the node's last will"
    finally:
        if node.poll() is None:
            node.kill()
        sub.close()


def test_ctrl_d_at_the_repl_restarts_the_app(mosquitto):
    proc = subprocess.Popen([sys.executable, "-m", "openpole", "sim", "node", "--serial-pty", "--broker",
                             f"{mosquitto.host}:{mosquitto.port}", "--node-id", "rc-2", "--interval", "0.5",
                             "--sensors", "bme280", "--ack", "broker"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = proc.stdout.readline().strip()
        with serial.Serial(port, 115200, timeout=0.2) as s:
            seen = read_until(s, b"openpole node rc-2", 30)
            assert b"openpole node rc-2" in seen, seen[-500:]
            s.write(b"\x03")  # Ctrl-C: the app stops, MicroPython's REPL takes the console
            seen = read_until(s, b">>> ", 15)
            assert b">>> " in seen, seen[-500:]
            s.write(b"\x04")  # Ctrl-D: a soft reset, and the app starts again
            seen = read_until(s, b"openpole node rc-2", 30)
            assert b"openpole node rc-2" in seen, seen[-500:]
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def read_until(s, marker, timeout):
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got and time.monotonic() < deadline:
        got += s.read(4096)
    return got
