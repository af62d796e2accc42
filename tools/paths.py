"""Where the repository's sources of truth live, for an editable install or a checkout."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
SENSOR_SPECS = ROOT / "sensor_specs"
BOARD_DEFS = ROOT / "board_defs"
DOCS = ROOT / "docs"
