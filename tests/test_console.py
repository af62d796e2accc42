"""The node's serial console over a pty, driven with pyserial as from a technician's laptop, while
the node keeps sampling and publishing (`openpole sim node --serial-pty`)."""

import json
import subprocess
import sys
import time

import pytest
import serial
from helpers import Collector

PROMPT = b"openpole> "


class Node:
    def __init__(self, broker, tmp_path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "openpole", "sim", "node", "--serial-pty", "--broker", f"{broker.host}:{broker.port}",
             "--node-id", "pty-1", "--interval", "0.5", "--state", str(tmp_path / "node")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        path = self.proc.stdout.readline().strip()
        assert path.startswith("/dev/pts/"), path
        self.ser = serial.Serial(path, 115200, timeout=10)
        banner = self.ser.read_until(PROMPT)
        assert b"openpole node pty-1" in banner, banner

    def cmd(self, line):
        self.ser.write(line.encode() + b"\r")
        out = self.ser.read_until(PROMPT)
        assert out.endswith(PROMPT), out
        return out[: -len(PROMPT)].decode()

    def close(self):
        self.ser.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def node(mosquitto, tmp_path):
    n = Node(mosquitto, tmp_path)
    yield n
    n.close()


def test_console_commands_while_the_node_keeps_publishing(node, mosquitto):
    sub = Collector(mosquitto, "openpole/v1/pty-1/data")
    help_text = node.cmd("help")
    for name in ("status", "diag", "sensors", "config", "log", "selftest", "reboot"):
        assert name in help_text
    status = node.cmd("status")
    assert "node pty-1" in status and "mqtt connected" in status and "sensor bme280" in status
    diag = json.loads(node.cmd("diag").strip())
    assert diag["node"] == "pty-1" and diag["fw"] and diag["board"] == "esp32-devkitc"
    assert set(diag) >= {"uptime_s", "reset_cause", "boot", "heap_free", "heap_min_free", "net", "mqtt", "queue", "sensors", "clock", "config"}
    assert diag["sensors"]["bme280"]["state"] == "ok" and diag["config"]["broker"].get("password") is None
    assert "bme280: ok" in node.cmd("sensors")
    assert node.cmd("config get interval_s").strip() == "0.5"
    assert "ok: interval_s saved" in node.cmd("config set interval_s 2")
    assert node.cmd("config get interval_s").strip() == "2"
    assert node.cmd("config set interval_s 0").strip() == "error: config failed: interval_s: a number from 0.1 to 86400"
    assert "openpole node pty-1" in node.cmd("log")
    assert node.cmd("bogus thing").strip() == "error: unknown command 'bogus': type help for the list"
    selftest = ""
    deadline = time.monotonic() + 20
    while "noise: ok" not in selftest and time.monotonic() < deadline:  # the noise meter reports after its first interval
        selftest = node.cmd("selftest")
    assert "bme280: ok" in selftest and "noise: ok" in selftest, selftest
    msgs = sub.wait_for(lambda m: len(m) >= 5, timeout=20)
    sub.close()
    assert len(msgs) >= 5, "sampling stopped while the console was in use"


def test_ctrl_c_reaches_the_repl(node):
    node.ser.write(b"\x03")
    out = node.ser.read_until(b">>> ")
    assert b"KeyboardInterrupt" in out and out.endswith(b">>> ")
    node.ser.write(b"print(6 * 7)\r")
    assert b"42" in node.ser.read_until(b">>> ")


SHORT_OF_HEAP = """
import gc, sys
from console import LazyConsole
class Node:
    short_of_heap = 0
    watch = False
    def pace(self, did=0):  # the node's loop: a tick ends (the console's module is loaded)
        pass
node = Node()
con = LazyConsole(node)
hold = [None] * 3000
i = 0
gc.collect()
while gc.mem_free() > 1500:  # the heap taken but for less than the shell needs
    hold[i] = bytearray(16)
    i += 1
con.run("help")
hold = None
gc.collect()
print(node.short_of_heap, "shell" in sys.modules)
con.run("help")
"""


def test_a_line_that_finds_no_heap_gets_one_error_line_and_the_node_goes_on(mp):
    out = mp.run(SHORT_OF_HEAP, heap="48k").splitlines()
    assert out[0] == "error: help: not enough heap free now; try again in a moment"
    assert out[1] == "1 False"  # counted; the half-loaded shell is not kept
    assert any(line.strip().startswith("help") for line in out[2:])  # the next try works
