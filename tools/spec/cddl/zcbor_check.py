"""Validate CBOR items against a CDDL type with zcbor. Runs in .venv-cddl (zcbor and cbor2 < 6),
never imports openpole: stdin {"cddl": text, "type": name, "items": [hex, ...]}, stdout a JSON
list with null (valid) or the reason for each item.

Where zcbor 0.9.1 falls short, and what this runner does about it:
- it has no .regexp control: dropped here, so a string with one is checked as a tstr only
  (openpole's own decoder checks node ids against the pattern);
- its Python validator checks a uint's type but not its sign: the sign is checked here;
- it names a result's fields from their types, and a map with two `number` values of labels
  that begin alike ("mean", "min") crashes it after validating: those names are made unique.
"""

import collections
import contextlib
import io
import json
import re
import sys

from zcbor.zcbor import zcbor
from zcbor.zcbor.zcbor import PRELUDE_PATH, DataTranslator

_check_value = DataTranslator._check_value


def _signed_check_value(self, obj):
    if self.type == "UINT":
        self._decode_assert(obj >= 0, "%s: %d is negative, not a uint" % (self, obj))
    elif self.type == "NINT":
        self._decode_assert(obj < 0, "%s: %d is not a nint" % (self, obj))
    _check_value(self, obj)


DataTranslator._check_value = _signed_check_value
zcbor.namedtuple = lambda name, fields: collections.namedtuple(name, fields, rename=True)


def main():
    req = json.load(sys.stdin)
    cddl = re.sub(r'\s*\.regexp\s+"(?:[^"\\]|\\.)*"', "", req["cddl"])
    with open(PRELUDE_PATH, encoding="utf-8") as f:
        cddl += "\n" + f.read()
    noise = io.StringIO()  # zcbor prints each union branch it tried
    with contextlib.redirect_stdout(noise):
        types = DataTranslator.from_cddl(cddl, 1 << 16).my_types
    if req["type"] not in types:
        json.dump({"error": "no type %r in the CDDL" % req["type"]}, sys.stdout)
        return
    out = []
    for item in req["items"]:
        try:
            with contextlib.redirect_stdout(noise):
                types[req["type"]].validate_str(bytes.fromhex(item))
            out.append(None)
        except Exception as e:  # zcbor raises its own and plain errors alike for invalid data
            out.append(" ".join(str(e).split())[:300] or type(e).__name__)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
