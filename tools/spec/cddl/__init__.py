"""The published CDDL checked by an independent validator: zcbor (PyPI), not openpole's decoder.

zcbor runs in a venv of its own, .venv-cddl (see requirements.txt for why), which `make install`
makes. validate() sends it a batch of items at once: parsing the CDDL takes most of a call.
"""

import json
import subprocess
from pathlib import Path

from ... import paths
from ...errors import UserError

HERE = Path(__file__).resolve().parent
VENV = paths.ROOT / ".venv-cddl" if paths.CHECKOUT else paths.CACHE / "venv-cddl"
INSTALL = (f"python3 -m venv {VENV} && {VENV}/bin/pip install -r {HERE / 'requirements.txt'} "
           "(in a checkout, make install does this)")


def available():
    return (VENV / "bin" / "python").exists()


def validate(cddl_path, type_name, items, timeout=300):
    """[None or the reason it is invalid] for each CBOR item (bytes), by zcbor against the CDDL
    file's type_name."""
    if not available():
        raise UserError(f"the independent CDDL validator (zcbor) is not installed: {INSTALL}")
    req = {"cddl": Path(cddl_path).read_text(), "type": type_name, "items": [bytes(i).hex() for i in items]}
    r = subprocess.run([str(VENV / "bin" / "python"), str(HERE / "zcbor_check.py")], input=json.dumps(req),
                       capture_output=True, text=True, timeout=timeout)
    try:
        out = json.loads(r.stdout)
    except ValueError:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"zcbor could not check {Path(cddl_path).name}: {last}") from None
    if isinstance(out, dict):
        raise UserError(f"zcbor: {out['error']}")
    return out
