"""The OTA wire formats of wire/ota.py, as the agent makes them and the node reads them (docs/ota.md)."""

import hashlib

import cbor2
import pytest

from openpole.wire import ota

KEY = bytes(range(32))


def test_ticket_round_trips_under_the_key_and_a_wrong_key_or_byte_is_refused():
    man = ota.manifest_text("app", "0.3.0", "esp32-devkitc", 11014, ("1.24", "1.29"), [("node.mpy", b"x" * 5000)])
    t = ota.ticket(KEY, "sk-1", 7, 3, "app", "0.3.0", ("1.24", "1.29"), man, 5000 + len(man), 50, 120)
    assert t[0] == ota.TICKET and len(t) < ota.TICKET_MAX
    f = ota.read_ticket(t, KEY)
    assert f == {1: "sk-1", 2: 7, 3: 3, 4: "app", 5: "0.3.0", 6: ["1.24", "1.29"], 7: hashlib.sha256(man).digest(),
                 8: len(man), 9: 5000 + len(man), 10: 50, 11: 120}
    assert cbor2.loads(t[1:]).tag == 17
    with pytest.raises(ValueError, match="bad MAC"):
        ota.read_ticket(t, bytes(32))
    bad = bytearray(t)
    bad[-40] ^= 1
    with pytest.raises(ValueError):
        ota.read_ticket(bytes(bad), KEY)


def test_manifest_lines_and_paths():
    files = [("node.mpy", b"a" * 10), ("lib/noise.mpy", b"b" * 3)]
    text = ota.manifest_text("app", "0.3.0", "esp32-devkitc", 11014, ("1.24", "1.29"), files)
    assert text.startswith(b"openpole-ota 1\nkind app\n") and text.endswith(b"\nend\n")
    m = ota.parse_manifest(text)
    assert m["files"] == [(hashlib.sha256(b"a" * 10).hexdigest(), 10, "node.mpy"),
                          (hashlib.sha256(b"b" * 3).hexdigest(), 3, "lib/noise.mpy")]
    assert (m["kind"], m["mpy"], m["micropython"]) == ("app", 11014, ("1.24", "1.29"))
    for p in ("main.py", "otaboot.mpy", "config.json", "ota/seq", "../x", "/abs", "UPPER.py", "a" * 49):
        with pytest.raises(ValueError):
            ota.check_path(p)


def test_request_chunk_and_cancel_layouts():
    r = ota.request(7, 2, 4096, 1024)
    assert len(r) == 13 and ota.read_request(r) == (7, 2, 4096, 1024)
    c = ota.chunk(ota.OK, 7, 2, 4096, b"hello")
    assert len(c) == 1 + 17 + 5 and ota.read_chunk(c) == (0, 7, 2, 4096, b"hello")
    with pytest.raises(ValueError, match="CRC"):
        ota.read_chunk(c[:-1] + b"X")
    assert ota.cancel(7) == b"\x03\x07\x00\x00\x00"
