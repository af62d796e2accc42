"""Shared fixtures: the firmware compiled for the MicroPython Unix port, a runner with a capped
heap, and a real Mosquitto on a free loopback port (missing Mosquitto fails, never skips).

`make test` runs the suite on pytest-xdist workers (the Makefile's XDIST, `--dist loadgroup`): every
service a test starts listens on a free port of its own and keeps its files under the test's
tmp_path (each worker has its own basetemp), so tests run side by side. pytest run by hand on a
file or a test runs in one process, as before."""

import json
import subprocess
import sys

import pytest

from openpole import paths
from openpole.field import appbuild
from openpole.sim import node as simnode
from openpole.sim.broker import Broker, mosquitto_path

sys.path.insert(0, str(paths.FIRMWARE / "lib"))  # pure firmware logic (cbor) on CPython too
sys.path.append(str(paths.FIRMWARE))  # drivers/ and hw/, after everything else on the path


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the xdist_group marks
def pytest_collection_modifyitems(items):
    """The tests of a module that share a module-scoped fixture (a PostgreSQL server with a city's
    data, an installed wheel, a built site) run on one worker: that fixture is made once, not once
    per worker that happens to get one of them. The others are spread one by one."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d[-1].scope in ("module", "class", "package") for d in defs if d):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


class FakeClock:
    """MicroPython's time.ticks_ms/sleep_ms on CPython, on a clock that only sleeping advances."""

    def __init__(self):
        self.ms = 0

    def ticks_ms(self):
        return self.ms

    def sleep_ms(self, ms):
        self.ms += ms

    @staticmethod
    def ticks_diff(a, b):
        return a - b

    @staticmethod
    def ticks_add(a, b):
        return a + b


@pytest.fixture
def mp_time(monkeypatch):
    """Let firmware drivers run on CPython: time.sleep_ms and the ticks functions, on a fake clock."""
    import time

    clock = FakeClock()
    for name in ("ticks_ms", "sleep_ms", "ticks_diff", "ticks_add"):
        monkeypatch.setattr(time, name, getattr(clock, name), raising=False)
    return clock


@pytest.fixture(scope="session")
def app(tmp_path_factory):
    """The firmware and umqtt compiled with mpy-cross, as a board gets them."""
    return appbuild.build_app(tmp_path_factory.mktemp("node-app"))


class MicroPython:
    def __init__(self, app, workdir):
        self.app = app
        self.workdir = workdir

    def run(self, code, heap="64k", timeout=60, stdin=None):
        """Run code under the MicroPython Unix port with the firmware on its path; return stdout.
        A non-zero exit fails the test with the VM's output."""
        script = self.workdir / "snippet.py"
        script.write_text(code)
        r = subprocess.run(
            [simnode.micropython(), "-X", f"heapsize={heap}", str(script)],
            cwd=self.workdir, env=simnode.node_env(self.app), capture_output=True, text=True, timeout=timeout, input=stdin,
        )
        if r.returncode != 0:
            raise AssertionError(f"MicroPython exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r.stdout

    def json(self, code, **kw):
        """Run code whose last output line is JSON; return it decoded."""
        return json.loads(self.run(code, **kw).strip().splitlines()[-1])


@pytest.fixture
def mp(app, tmp_path):
    return MicroPython(app, tmp_path)


@pytest.fixture
def world():
    """The simulated world the node's buses reach (tools/sim/world.py)."""
    from openpole.sim.world import WorldServer

    w = WorldServer()
    yield w
    w.close()


@pytest.fixture
def mosquitto(tmp_path):
    if mosquitto_path() is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (.ci/run does this as root)")
    with Broker(tmp_path / "broker", kind="mosquitto") as b:
        yield b
