"""Field tools against MicroPython on a pty running the real firmware with simulated hardware
(`openpole sim node --serial-pty --fs-app`): deploy onto a blank node, then diag, monitor, log,
config and selftest while it keeps publishing; several ports at once."""

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import Collector

from openpole.errors import UserError
from openpole.field import deploy as fdeploy
from openpole.field import appbuild


def openpole(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


class SimNode:
    """`openpole sim node --serial-pty --fs-app`: a board whose filesystem starts blank."""

    def __init__(self, broker, state, node_id, sensors="bme280,noise", extra=("--fs-app",)):
        self.state = state
        self.node_id = node_id
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "openpole", "sim", "node", "--serial-pty", "--broker",
             f"{broker.host}:{broker.port}", "--node-id", node_id, "--interval", "0.5", "--state", str(state),
             "--sensors", sensors, *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.port = self.proc.stdout.readline().strip()
        assert self.port.startswith("/dev/pts/"), self.port

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def blank(mosquitto, tmp_path):
    n = SimNode(mosquitto, tmp_path / "node", "fa-1")
    yield n
    n.close()


def wait_ready(port, timeout=30):
    end = time.monotonic() + timeout
    while True:
        r = openpole("diag", "--port", port, "--json")
        if r.returncode in (0, 1) or time.monotonic() > end:  # the node answered: healthy (0) or not (1)
            return r
        time.sleep(0.5)


def test_deploy_onto_a_blank_node_then_every_console_tool(blank, mosquitto, tmp_path):
    r = openpole("diag", "--port", blank.port)
    assert r.returncode == 2
    assert "the node is at the MicroPython REPL, its app is not running" in r.stderr and "Traceback" not in r.stderr

    sub = Collector(mosquitto, "openpole/v1/fa-1/data")
    r = openpole("deploy", "--port", blank.port, "--sim")
    assert r.returncode == 0, r.stderr
    app = appbuild.build_app(arch="x64", include_sim=True)
    n_files = len(appbuild.app_files(app))
    assert f"{n_files} file(s) sent" in r.stdout and "0 unchanged" in r.stdout and "restarted: node fa-1 ok" in r.stdout
    assert len(sub.wait_for(lambda m: len(m) >= 3, timeout=30)) >= 3, "the deployed app does not publish"
    sub.close()

    # Nothing changed: nothing travels. A damaged file, a stale module and a shadowing source are fixed.
    r = openpole("deploy", "--port", blank.port, "--sim")
    assert r.returncode == 0 and "0 file(s) sent" in r.stdout and f"{n_files} unchanged" in r.stdout, r.stdout + r.stderr
    (blank.state / "lib" / "cbor.mpy").write_bytes(b"damaged")
    (blank.state / "retired.mpy").write_bytes(b"old module")
    (blank.state / "node.py").write_text("raise ImportError('a stale source shadowing node.mpy')\n")
    (blank.state / "boot.py").write_text("# the maker's own\n")
    r = openpole("deploy", "--port", blank.port, "--sim")
    assert r.returncode == 0, r.stderr
    assert "1 file(s) sent" in r.stdout and f"{n_files - 1} unchanged" in r.stdout and "2 removed" in r.stdout
    assert not (blank.state / "retired.mpy").exists() and not (blank.state / "node.py").exists()
    assert (blank.state / "boot.py").exists() and (blank.state / "config.json").exists()
    assert (blank.state / "lib" / "cbor.mpy").read_bytes() == (app / "lib" / "cbor.mpy").read_bytes()

    # diag, human and JSON
    r = wait_ready(blank.port)
    d = json.loads(r.stdout)
    assert d["node"] == "fa-1" and d["mqtt"]["connected"] and d["sensors"]["bme280"]["state"] == "ok"
    r = openpole("diag", "--port", blank.port)
    assert r.returncode == 0 and "node fa-1 on esp32-devkitc" in r.stdout and "ok: network, MQTT and every sensor" in r.stdout

    r = openpole("monitor", "--port", blank.port, "--count", "3")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if " bme280 " in ln or " noise " in ln]
    assert len(lines) >= 3 and any("temperature" in ln for ln in lines), r.stdout

    r = openpole("log", "--port", blank.port)
    assert r.returncode == 0 and "openpole node fa-1" in r.stdout and "no crash recorded" in r.stdout

    assert openpole("config", "get", "interval_s", "--port", blank.port).stdout.strip() == "0.5"
    r = openpole("config", "set", "interval_s", "2", "--port", blank.port)
    assert r.returncode == 0 and "ok: interval_s saved" in r.stdout
    assert openpole("config", "get", "interval_s", "--port", blank.port).stdout.strip() == "2"
    r = openpole("config", "set", "interval_s", "0", "--port", blank.port)
    assert r.returncode == 2 and r.stderr.strip().endswith("interval_s: a number from 0.1 to 86400")
    assert json.loads((blank.state / "config.json").read_text())["interval_s"] == 2

    r = openpole("selftest", "--port", blank.port)
    assert r.returncode == 0 and "bme280: ok" in r.stdout and "selftest: PASS" in r.stdout, r.stdout

    # Without --board, deploy asks the node which board it is and compiles for that board's chip.
    import argparse

    from openpole.field.cli import _deploy_target

    files, _ = _deploy_target(argparse.Namespace(sim=False, board=None), blank.port)
    assert files["lib/noise.mpy"][2] >> 2 == 10  # xtensawin: the ESP32-DevKitC the node says it is
    assert "hw/sim.mpy" not in files and "ca.der" not in files
    # A node switched to TLS gets the site's CA with its app, or a line saying how to make one.
    from openpole.field.site import Site

    site = Site(tmp_path / "site")
    assert openpole("config", "set", "broker.tls", "true", "--port", blank.port).returncode == 0
    with pytest.raises(UserError, match="pole init"):
        _deploy_target(argparse.Namespace(sim=False, board=None, site=site.root), blank.port)
    site.ca()
    files, _ = _deploy_target(argparse.Namespace(sim=False, board=None, site=site.root), blank.port)
    assert files["ca.der"] == site.node_ca()

    # What `openpole flash` does once esptool has reset the node: its console, its diag, its name.
    from openpole.field.flash import verify_console

    assert verify_console(blank.port, "fa-1") == ("ok", True)
    verdict, ok = verify_console(blank.port, "fa-9", timeout=2)
    assert not ok and "the node calls itself 'fa-1', not 'fa-9'" in verdict


def test_a_failing_sensor_is_reported_first_and_selftest_fails(mosquitto, tmp_path):
    # The sht31 is configured but not on the simulated bus: the technician must see it first.
    node = SimNode(mosquitto, tmp_path / "node", "fa-2", sensors="bme280,sht31")
    try:
        assert openpole("deploy", "--port", node.port, "--sim").returncode == 0
        r = wait_ready(node.port)
        assert r.returncode == 1 and json.loads(r.stdout)["sensors"]["sht31"]["state"] == "failed"  # --json: 1 too
        r = openpole("diag", "--port", node.port)
        assert r.returncode == 1
        first = r.stdout.splitlines()[1]
        assert "sensor sht31 failed" in first and "wiring" in first, r.stdout
        r = openpole("selftest", "--port", node.port)
        assert r.returncode == 1 and "sht31: missing" in r.stdout and "selftest: FAIL" in r.stdout
    finally:
        node.close()


def test_several_ports_at_once_get_a_summary(mosquitto, tmp_path):
    nodes = [SimNode(mosquitto, tmp_path / f"n{i}", f"multi-{i}") for i in (1, 2)]
    try:
        r = openpole("deploy", *sum((["--port", n.port] for n in nodes), []), "--sim", timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "deploy: 2 of 2 ok" in r.stdout
        for n in nodes:
            wait_ready(n.port)
        r = openpole("diag", "--port", nodes[0].port, "--port", nodes[1].port, "--json")
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert {d["node"] for d in got.values()} == {"multi-1", "multi-2"}
        r = openpole("selftest", "--port", nodes[0].port, "--port", nodes[1].port)
        assert r.returncode == 0 and "selftest: 2 of 2 ok" in r.stdout
        # One port unplugged: its row says so, the others still get done, the status says not all ok.
        r = openpole("selftest", "--port", nodes[0].port, "--port", nodes[1].port, "--port", "/dev/ttyUSB-none")
        assert r.returncode == 1 and "selftest: 2 of 3 ok" in r.stdout and "no such port" in r.stdout
    finally:
        for n in nodes:
            n.close()


def test_deploy_plan_skips_unchanged_and_removes_only_stale_code():
    files = {"main.py": b"m", "node.mpy": b"n2", "lib/cbor.mpy": b"c"}
    import hashlib

    h = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    on_node = {"main.py": h(b"m"), "node.mpy": h(b"n1"), "lib/cbor.mpy": h(b"c"), "lib/old.mpy": h(b"x"),
               "lib/cbor.py": h(b"src"), "boot.py": h(b"b"), "run_node.py": h(b"r")}
    send, remove = fdeploy.plan(files, on_node)
    assert send == ["node.mpy"]
    assert remove == ["lib/cbor.py", "lib/old.mpy"]


def test_port_errors_are_one_line_with_the_fix(blank, tmp_path):
    import serial

    # busy: another program holds the port
    holder = serial.Serial(blank.port, exclusive=True)
    try:
        r = openpole("diag", "--port", blank.port)
        assert r.returncode == 2 and "port busy" in r.stderr and "Traceback" not in r.stderr
        r = openpole("deploy", "--port", blank.port, "--sim")
        assert r.returncode == 2 and "port busy" in r.stderr
    finally:
        holder.close()
    r = openpole("diag", "--port", "/dev/ttyUSB-openpole-none")
    assert r.returncode == 2 and "no such port" in r.stderr
    r = openpole("diag", "--port", "/dev/ttyUSB-openpole-none*")
    assert r.returncode == 2 and "no port matches" in r.stderr
    # permission denied: the pty's permissions taken away; root (CI) overrides them, except from a
    # user namespace where root is not mapped (unshare -U), which gives the real EACCES
    os.chmod(blank.port, 0)
    try:
        prefix = ["unshare", "-U"] if os.geteuid() == 0 else []
        r = subprocess.run(prefix + [sys.executable, "-m", "openpole", "diag", "--port", blank.port],
                           capture_output=True, text=True, timeout=60)
    finally:
        os.chmod(blank.port, 0o620)
    assert r.returncode == 2 and "permission denied: add yourself to the dialout group" in r.stderr, r.stderr


def test_ports_expand_globs_and_repeats(tmp_path):
    from openpole.errors import UserError
    from openpole.field import ports

    for name in ("ttyUSB1", "ttyUSB0", "ttyACM0"):
        (tmp_path / name).touch()
    got = ports.expand([str(tmp_path / "ttyUSB*"), str(tmp_path / "ttyACM0"), str(tmp_path / "ttyUSB0")])
    assert got == [str(tmp_path / "ttyUSB0"), str(tmp_path / "ttyUSB1"), str(tmp_path / "ttyACM0")]
    with pytest.raises(UserError, match="no --port given"):
        ports.expand([])


def test_monitor_stops_cleanly_on_ctrl_c(mosquitto, tmp_path):
    import signal

    node = SimNode(mosquitto, tmp_path / "node", "mon-1", extra=())  # the app served from the build
    try:
        wait_ready(node.port)
        mon = subprocess.Popen([sys.executable, "-m", "openpole", "monitor", "--port", node.port],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = mon.stdout.readline()
        assert " bme280 " in first or " noise " in first, first
        mon.send_signal(signal.SIGINT)
        out, err = mon.communicate(timeout=20)
        assert mon.returncode == 0 and "Traceback" not in err, err
        r = openpole("log", "--port", node.port)  # the node's monitor is off: no reading lines mixed in
        assert r.returncode == 0 and "reading " not in r.stdout, r.stdout
    finally:
        node.close()
