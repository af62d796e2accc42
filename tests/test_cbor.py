"""The node's CBOR codec (firmware/lib/cbor.py) against RFC 8949 Appendix A, cbor2 and malformed
input: on CPython, and the same vectors under the MicroPython VM with the heap capped."""

import json
import math

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cbor  # firmware/lib/cbor.py

# RFC 8949 Appendix A: encodings that are already preferred serialization (round-trip exactly).
CANONICAL = """
00 01 0a 17 1818 1819 1864 1903e8 1a000f4240 1b000000e8d4a51000 1bffffffffffffffff
20 29 3863 3903e7 3bffffffffffffffff
f90000 f98000 f93c00 fb3ff199999999999a f93e00 f97bff fa47c35000 fa7f7fffff fb7e37e43c8800759c
f90001 f90400 f9c400 fbc010666666666666 f97c00 f97e00 f9fc00
f4 f5 f6 40 4401020304 60 6161 6449455446 62225c 62c3bc 63e6b0b4 64f0908591
80 83010203 8301820203820405 98190102030405060708090a0b0c0d0e0f101112131415161718181819
a0 a201020304 a26161016162820203 826161a161626163 a56161614161626142616361436164614461656145
""".split()

# Appendix A items that decode to the same value as a shorter or definite-length encoding.
REENCODED = {
    "f7": "f6",  # undefined -> None
    "fa7f800000": "f97c00", "fa7fc00000": "f97e00", "fb7ff0000000000000": "f97c00",
    "fb7ff8000000000000": "f97e00", "fbfff0000000000000": "f9fc00",
    "5f42010243030405ff": "450102030405",
    "7f657374726561646d696e67ff": "6973747265616d696e67",
    "9fff": "80",
    "9f018202039f0405ffff": "8301820203820405",
    "9f01820203820405ff": "8301820203820405",
    "83018202039f0405ff": "8301820203820405",
    "83019f0203ff820405": "8301820203820405",
    "bf61610161629f0203ffff": "a26161016162820203",
    "826161bf61626163ff": "826161a161626163",
    "bf6346756ef563416d7421ff": "a26346756ef563416d7421",
}

MALFORMED = {
    "truncated uint": "19 01",
    "truncated bytes": "44 0102",
    "truncated array": "83 0102",
    "truncated float": "fa 7f80",
    "reserved additional info": "1c",
    "lone break": "ff",
    "unterminated indefinite array": "9f 01 02",
    "indefinite uint": "1f",
    "bad chunk in indefinite bytes": "5f 61 61 ff",
    "bytes length past the data (2**64-1)": "5b ffffffffffffffff",
    "array count past the data (2**32)": "9b 0000000100000000",
    "map count past the data": "ba 7fffffff",
    "invalid utf-8": "62 c328",
    "trailing bytes": "01 02",
    "too deep": "81" * 40 + "00",
    "empty input": "",
    "simple value 0": "e0",
    "map as map key": "a1 a0 01",
}


def h(s):
    return bytes.fromhex(s.replace(" ", ""))


def same(a, b):
    """Equality that treats NaN as equal to NaN and tells 0.0 from -0.0."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("vector", CANONICAL)
def test_rfc8949_vectors_round_trip(vector):
    assert cbor.dumps(cbor.loads(h(vector))).hex() == vector
    assert same(cbor.loads(h(vector)), cbor2.loads(h(vector))) or vector == "f7"


@pytest.mark.parametrize("vector,expected", REENCODED.items())
def test_rfc8949_decode_only_vectors(vector, expected):
    assert cbor.dumps(cbor.loads(h(vector))).hex() == expected


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_input_raises_value_error(name):
    with pytest.raises(ValueError):
        cbor.loads(h(MALFORMED[name]))


def test_every_truncation_of_a_message_is_refused():
    data = cbor.dumps({0: 1, 1: "node-1", 4: [[1200, {1: 21.5, 2: 40.25, 3: 1013.1}]], 5: {"bme280": [0, 0]}})
    for n in range(len(data)):
        with pytest.raises(ValueError):
            cbor.loads(data[:n])


def test_oversized_input_is_refused_before_decoding():
    with pytest.raises(ValueError, match="limit"):
        cbor.loads(b"\x40" * (cbor.MAX_SIZE + 1))


def test_64_bit_range_is_enforced_on_encode():
    assert cbor.loads(cbor.dumps(2**64 - 1)) == 2**64 - 1
    assert cbor.loads(cbor.dumps(-(2**64))) == -(2**64)
    for bad in (2**64, -(2**64) - 1):
        with pytest.raises(ValueError):
            cbor.dumps(bad)


def test_floats_take_the_shortest_form_that_keeps_the_value():
    assert cbor.dumps(1.5).hex() == "f93e00"  # half
    assert cbor.dumps(100000.0).hex() == "fa47c35000"  # single
    assert cbor.dumps(21.37)[0] == 0xFB  # needs double
    assert cbor.dumps(5.960464477539063e-8).hex() == "f90001"  # smallest half subnormal
    assert cbor.dumps(65504.0).hex() == "f97bff" and cbor.dumps(65520.0)[0] == 0xFA  # half max, just past


scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True) | st.binary(max_size=40) | st.text(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.integers(-100, 100) | st.text(max_size=8), inner, max_size=6),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_cbor2_reads_what_we_write_and_we_read_what_cbor2_writes(obj):
    ours = cbor.dumps(obj)
    assert same(cbor2.loads(ours), obj)
    for theirs in (cbor2.dumps(obj), cbor2.dumps(obj, canonical=True)):
        assert same(cbor.loads(theirs), obj)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False) | scalars.filter(lambda x: not isinstance(x, float)))
def test_scalar_encoding_matches_cbor2_canonical(obj):
    assert cbor.dumps(obj) == cbor2.dumps(obj, canonical=True)


# --- the same codec under MicroPython ---

MP_VECTORS = r"""
import sys, json, cbor
cases = json.loads(sys.stdin.read())
out = []
for hx in cases["roundtrip"]:
    try:
        out.append(cbor.dumps(cbor.loads(bytes.fromhex(hx))).hex())
    except Exception as e:
        out.append("error " + repr(e))
bad = []
for hx in cases["malformed"]:
    try:
        cbor.loads(bytes.fromhex(hx))
        bad.append("accepted")
    except ValueError:
        bad.append("ValueError")
    except Exception as e:
        bad.append(type(e).__name__)
print(json.dumps({"roundtrip": out, "malformed": bad}))
"""


@settings(max_examples=1, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(values, min_size=150, max_size=150))
def test_micropython_codec_agrees_with_cbor2(mp_runner, objs):
    vectors = CANONICAL + list(REENCODED)
    expected = CANONICAL + list(REENCODED.values())
    # cbor2's canonical encoding of generated values: we must decode it and re-encode the same value.
    generated = [cbor2.dumps(o, canonical=True).hex() for o in objs]
    malformed = [MALFORMED[k].replace(" ", "") for k in MALFORMED]
    # The heap holds the whole vector list as JSON here; the small-heap test below is the codec's own.
    got = mp_runner.json(MP_VECTORS, heap="2m", stdin=json.dumps({"roundtrip": vectors + generated, "malformed": malformed}))
    # MicroPython dicts do not keep insertion order: a map may come back with its keys in another
    # order, which is the same CBOR value. Same value and same length pins preferred serialization.
    for hx, want in zip(got["roundtrip"], expected):
        assert len(hx) == len(want) and same(cbor2.loads(bytes.fromhex(hx)), cbor2.loads(bytes.fromhex(want))), (hx, want)
    for obj, hx in zip(objs, got["roundtrip"][len(vectors):]):
        assert not hx.startswith("error"), hx
        assert same(cbor2.loads(bytes.fromhex(hx)), obj)
    assert got["malformed"] == ["ValueError"] * len(malformed)


@pytest.fixture
def mp_runner(app, tmp_path_factory):
    from conftest import MicroPython

    return MicroPython(app, tmp_path_factory.mktemp("mp"))


def test_hostile_lengths_fail_cleanly_in_a_32k_heap(mp):
    out = mp.run(
        "import cbor\n"
        "for hx in ('5bffffffffffffffff', '9b0000000100000000', 'ba7fffffff', '7b00000000ffffffff', '" + "81" * 40 + "00'):\n"
        "    try:\n"
        "        cbor.loads(bytes.fromhex(hx))\n"
        "        print('accepted')\n"
        "    except ValueError:\n"
        "        print('refused')\n",
        heap="32k",
    )
    assert out.split() == ["refused"] * 5
