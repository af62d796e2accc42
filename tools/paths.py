"""Where openpole's sources of truth are: the installed package's data, or a checkout's folders.

`pip install openpole` ships firmware/, sensor_specs/, board_defs/ and docs/specs/ inside the
package (read through importlib.resources); in a checkout (or an editable install) they are the
repository's own folders, so an edit there is what the tools use. CHECKOUT says which.
"""

import os
from importlib import resources
from pathlib import Path

_PACKAGE = Path(str(resources.files("openpole")))
# An installed wheel holds its data beside the code; an editable install's package is tools/,
# with the data one level up, at the repository's root.
CHECKOUT = not (_PACKAGE / "sensor_specs").is_dir()
ROOT = _PACKAGE.parent if CHECKOUT else _PACKAGE
FIRMWARE = ROOT / "firmware"
SENSOR_SPECS = ROOT / "sensor_specs"
BOARD_DEFS = ROOT / "board_defs"
DOCS = ROOT / "docs"
# What openpole builds for itself (compiled apps, the CDDL validator's venv): the checkout's build/,
# else the user's cache directory, never the installed package.
CACHE = ROOT / "build" if CHECKOUT else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "openpole"
