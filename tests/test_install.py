"""openpole as a user installs it: the wheel built from this checkout, installed with pip in a fresh
venv outside the checkout, and every command run from a directory with no source tree in reach. A
technician's laptop flashes a node through a virtual board; the pole runs its agent against
Mosquitto into a receiver; the city sets up its stream and database. Then the service unit, as
`edge install-service` writes it for a config, checked against that config and by systemd itself."""

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pytest
from helpers import wait
from natscluster import NatsCluster
from pgcluster import PgServer

from openpole import __version__, paths
from openpole.sim.board import stand_in_firmware
from openpole.sim.broker import free_port


class Installed:
    """A venv holding the built wheel; run() is a user's shell there, outside the checkout."""

    def __init__(self, venv, work):
        self.venv, self.work = venv, work
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MICROPYPATH")}
        self.env["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"

    def run(self, *args, timeout=300, **kw):
        return subprocess.run([str(self.venv / "bin" / "openpole"), *map(str, args)], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=timeout, **kw)

    def popen(self, *args, **kw):
        return subprocess.Popen([str(self.venv / "bin" / "openpole"), *map(str, args)], cwd=self.work, env=self.env,
                                text=True, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("installed")
    dist = root / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(paths.ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    wheel = next(dist.glob("openpole-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for part in ("openpole/sensor_specs/quantities.toml", "openpole/board_defs/esp32-devkitc.toml",
                 "openpole/firmware/main.py", "openpole/firmware/lib/noise.py", "openpole/docs/specs/payload.md",
                 "openpole/edge_agent/openpole-edge.service", "openpole/spec/cddl/zcbor_check.py"):
        assert part in names, f"the wheel lacks {part}"
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                        f"{wheel}[field,sim,city,ota]"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    work = root / "work"
    work.mkdir()
    return Installed(venv, work)


def test_the_installed_package_reads_its_own_data(installed):
    r = subprocess.run([str(installed.venv / "bin" / "python"), "-c",
                        "import openpole, openpole.paths as p; print(openpole.__file__, p.CHECKOUT, p.SENSOR_SPECS)"],
                       cwd=installed.work, env=installed.env, capture_output=True, text=True, timeout=60)
    where, checkout, specs = r.stdout.split()
    assert where.startswith(str(installed.venv)) and checkout == "False" and specs.startswith(str(installed.venv))
    assert installed.run("--version").stdout.strip() == f"openpole {__version__}"
    r = installed.run("spec", "check")
    assert r.returncode == 0 and r.stdout.startswith("specs ok:"), r.stdout + r.stderr
    r = installed.run("spec", "build", "--check")
    assert r.returncode == 0 and "are fresh" in r.stdout, r.stdout + r.stderr
    r = installed.run("spec", "build", "--site", installed.work / "site")
    assert r.returncode == 0, r.stderr
    assert (installed.work / "site" / "payload.html").is_file() and not list(installed.venv.rglob("build/site"))


def test_a_laptop_flashes_a_node_and_a_pole_carries_its_readings_to_the_city(installed, mosquitto, tmp_path):
    """`image build --sim`, then `flash` through a virtual board, whose node (the wheel's firmware under
    the wheel's MicroPython) publishes to Mosquitto; `edge run` and `receiver` from the wheel carry its
    readings into the receiver's store."""
    work = installed.work
    (work / "site.toml").write_text(f'interval_s = 0.5\n[broker]\nhost = "{mosquitto.host}"\nport = {mosquitto.port}\n'
                                    '[sensors.bme280]\n[sensors.noise]\n')
    r = installed.run("image", "build", "--board", "esp32-devkitc", "--node-id", "inst-0", "--config", "site.toml",
                      "--site", "site", "--out", "inst-0.bin", "--sim")
    assert r.returncode == 0 and "mounted and checked" in r.stdout, r.stdout + r.stderr

    firmware = stand_in_firmware(work / "ESP32_GENERIC.bin")
    board = installed.popen("sim", "board", "--flash", tmp_path / "board.bin", stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    port = free_port()
    receiver = installed.popen("receiver", "--listen", f"127.0.0.1:{port}", "--data", tmp_path / "city",
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    agent = None
    try:
        url = board.stdout.readline().strip()
        assert url.startswith("rfc2217://127.0.0.1:"), url
        r = installed.run("flash", "--port", url, "--board", "esp32-devkitc", "--node-id", "inst-1", "--firmware",
                          firmware, "--config", "site.toml", "--site", "site", "--sim")
        assert r.returncode == 0, r.stdout + r.stderr
        # The pole's files from the site (the node's key for the agent: the node signs), then its agent.
        r = installed.run("pole", "init", "--site", "site", "--out", tmp_path / "pole", "--pole-id", "inst")
        assert r.returncode == 0, r.stdout + r.stderr
        agent = installed.popen("edge", "run", "--config", tmp_path / "pole" / "etc" / "openpole" / "agent.toml",
                                "--broker", f"{mosquitto.host}:{mosquitto.port}", "--upstream",
                                f"http://127.0.0.1:{port}", "--state", tmp_path / "edge", "--batch-interval", "0.5",
                                "--metrics-port", "0", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def stored():
            r = installed.run("receiver", "stats", "--data", tmp_path / "city", "--json", timeout=60)
            return json.loads(r.stdout) if r.returncode == 0 else {}

        st = wait(lambda: stored().get("unique", 0) >= 5, timeout=120)
        assert st, f"no readings reached the receiver: {stored()}"
        assert agent.poll() is None and receiver.poll() is None
        assert stored()["nodes"] == 1
        r = installed.run("receiver", "export", "--data", tmp_path / "city", "--out", tmp_path / "export")
        assert r.returncode == 0, r.stderr
        assert any((tmp_path / "export").rglob("*.csv*"))
    finally:
        for p in (agent, receiver, board):
            if p is not None:
                p.terminate()
                p.wait(timeout=30)


def test_an_update_bundle_is_built_signed_and_inspected_outside_the_checkout(installed, tmp_path):
    r = installed.run("ota", "keygen", tmp_path / "release.key")
    assert r.returncode == 0, r.stdout + r.stderr
    r = installed.run("ota", "build", "--board", "esp32-devkitc", "--sim", "--version", "9.9.9", "--sign",
                      tmp_path / "release.key", "--out", tmp_path / "app.zip")
    assert r.returncode == 0, r.stdout + r.stderr
    r = installed.run("ota", "inspect", "--json", tmp_path / "app.zip")
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads(r.stdout)
    assert info["version"] == "9.9.9" and info["kind"] == "app", info
    paths_in = {f["path"] for f in info["files"]}
    assert "main.py" not in paths_in and any(p.endswith(".mpy") for p in paths_in), paths_in


def test_a_city_sets_up_its_stream_and_database(installed, tmp_path):
    nats = NatsCluster(tmp_path / "nats", n=1)
    pg = PgServer()
    try:
        r = installed.run("city", "init", "--nats", nats.url, "--db", pg.dsn, "--replicas", "1")
        assert r.returncode == 0, r.stdout + r.stderr
        r = installed.run("city", "stats", "--db", pg.dsn, "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["records"] == 0, r.stdout + r.stderr
        # the public's SensorThings API, as the installed package serves it
        port = free_port()
        serve = installed.popen("city", "serve", "--db", pg.dsn, "--listen", f"127.0.0.1:{port}",
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            def get(path):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1.1{path}", timeout=5) as f:
                        return json.loads(f.read())
                except OSError:
                    return None

            assert wait(lambda: get("") is not None, timeout=60), serve.poll() and serve.communicate()
            names = {e["name"] for e in get("")["value"]}
            assert {"Things", "Datastreams", "Observations", "ObservedProperties"} <= names, names
            assert get("/Things?$count=true")["@iot.count"] == 0
        finally:
            serve.terminate()
            serve.wait(timeout=30)
    finally:
        pg.stop()
        nats.stop()


# --- the service unit, as `openpole edge install-service` writes it ---

def install_service(*args):
    return subprocess.run([sys.executable, "-m", "openpole", "edge", "install-service", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def unit_lines(path):
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def test_the_unit_follows_the_config(tmp_path):
    cfg = tmp_path / "agent.toml"
    state = Path("/srv") / f"openpole-test-{uuid.uuid4().hex[:8]}"
    cfg.write_text(f'[pole]\nid = "p7"\n[state]\ndir = "{state}"\n[page]\nlisten = "0.0.0.0:80"\n'
                   '[[sources]]\nkind = "pms5003"\nport = "/dev/serial0"\n')
    r = install_service("--config", cfg, "--unit-dir", tmp_path, "--no-start", "--user", "daemon")
    assert r.returncode == 0, r.stderr
    assert "cannot see" in r.stdout and "/tmp" in r.stdout  # the config in /tmp is hidden from the service
    shutil.rmtree(state, ignore_errors=True)
    lines = unit_lines(tmp_path / "openpole-edge.service")
    assert f"ReadWritePaths={state}" in lines and not any(x.startswith("StateDirectory=") for x in lines)
    assert "User=daemon" in lines and any(x.endswith(f"edge run --config {cfg}") for x in lines)
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in lines  # port 80 for the page
    try:
        grp.getgrnam("dialout")
        assert "SupplementaryGroups=dialout" in lines  # the PMS5003 on a serial port
    except KeyError:
        assert not any(x.startswith("SupplementaryGroups=") for x in lines)
    # systemd reads every line (a comment after a value, say, would be dropped with a warning).
    v = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "openpole-edge.service")], capture_output=True,
                       text=True, timeout=60)
    assert "openpole-edge.service:" not in v.stderr, v.stderr

    # A state directory under /var/lib (the default's place) is systemd's to make and hand to the user.
    state = Path("/var/lib") / f"openpole-test-{uuid.uuid4().hex[:8]}"
    cfg.write_text(f'[pole]\nid = "p7"\n[state]\ndir = "{state}"\n')
    assert install_service("--config", cfg, "--unit-dir", tmp_path, "--no-start", "--user", "daemon").returncode == 0
    shutil.rmtree(state, ignore_errors=True)
    lines = unit_lines(tmp_path / "openpole-edge.service")
    assert f"StateDirectory={state.name}" in lines and f"ReadWritePaths={state}" in lines
    assert not any("CAP_NET_BIND_SERVICE" in x or x.startswith("SupplementaryGroups=") for x in lines)
    assert "PrivateDevices=false" in lines and "ProtectSystem=strict" in lines and "MemoryMax=256M" in lines


def test_install_service_makes_the_user_and_hands_it_its_files(tmp_path):
    user = f"op-{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    keys = tmp_path / "node-keys.toml"
    keys.write_text('[nodes.keys]\nn1 = "' + "ab" * 32 + '"\n')
    keys.chmod(0o600)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[pole]\nid = "p7"\n[state]\ndir = "{state}"\n[nodes]\nkeys_file = "{keys}"\n')
    r = install_service("--config", cfg, "--unit-dir", tmp_path, "--no-start", "--user", user)
    assert r.returncode == 0, r.stderr
    if os.geteuid() != 0:  # a technician without root is told the one command to run
        assert f"sudo useradd --system" in r.stdout and user in r.stdout
        return
    try:
        pw = pwd.getpwnam(user)
        assert pw.pw_shell.endswith(("nologin", "false")) and pw.pw_uid < 1000, pw
        for p in (state, keys, cfg):
            assert p.stat().st_uid == pw.pw_uid, p
        assert state.stat().st_mode & 0o777 == 0o700
        # Run again: the user exists, nothing is made twice.
        r = install_service("--config", cfg, "--unit-dir", tmp_path, "--no-start", "--user", user)
        assert r.returncode == 0 and "made the system user" not in r.stdout, r.stdout + r.stderr
    finally:
        subprocess.run(["userdel", user], capture_output=True)


def test_install_service_refuses_what_is_not_the_agents_and_says_what_it_cannot_do(tmp_path):
    cfg = tmp_path / "agent.toml"
    for state, why in (("/var/lib", "is a system directory"), (tmp_path / "shared", "holds files that are not the agent's")):
        (tmp_path / "shared").mkdir(exist_ok=True)
        (tmp_path / "shared" / "photos").write_text("someone else's")
        cfg.write_text(f'[pole]\nid = "p7"\n[state]\ndir = "{state}"\n')
        r = install_service("--config", cfg, "--unit-dir", tmp_path, "--no-start", "--user", "daemon")
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "shared" / "photos").stat().st_uid == os.geteuid()  # left alone
    # A state directory the agent already used is its own.
    (tmp_path / "mine").mkdir()
    for name in ("queue.sqlite", "queue.sqlite-wal", "boot-p7-bme280"):
        (tmp_path / "mine" / name).write_text("")
    cfg.write_text(f'[pole]\nid = "p7"\n[state]\ndir = "{tmp_path / "mine"}"\n')
    # Asked to start it too, but never systemctl on a machine systemd runs: that would be real.
    start = [] if os.geteuid() != 0 or not Path("/run/systemd/system").is_dir() else ["--no-start"]
    r = install_service("--config", cfg, "--unit-dir", tmp_path, "--user", "daemon", *start)
    lines = unit_lines(tmp_path / "openpole-edge.service")
    assert f"Group={grp.getgrgid(pwd.getpwnam('daemon').pw_gid).gr_name}" in lines
    assert "the openpole command" not in r.stdout or "/tmp" in sys.executable
    if os.geteuid() == 0 and not Path("/run/systemd/system").is_dir():  # a container: no systemd to start it
        assert r.returncode == 2 and "systemd does not run this machine" in r.stderr and "edge run --config" in r.stderr
    elif os.geteuid() != 0:
        assert r.returncode == 2 and "systemctl needs root" in r.stderr
