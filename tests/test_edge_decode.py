"""Verify/decode/validate: every kind of bad node message gets a clear, named rejection."""

import math

import cbor2
import pytest

import cose
import message  # firmware/lib/message.py: the node's own encoder
from openpole.wire import node_message


def good(fields=None):
    m = {0: 1, 1: "n1", 2: 3, 3: 7, 4: [[1500, {1: 21.37, 2: 45.5, 3: 1013.2}]], 5: {"bme280": [0, 0]}}
    m.update(fields or {})
    return {k: v for k, v in m.items() if v is not None}


def test_the_firmware_encoder_output_decodes():
    values = message.encode_values({"temperature": 21.374, "humidity": 45.51, "pressure": 1013.249})
    payload = message.encode("n1", 3, 7, [(1500, values)], cbor2.dumps({"bme280": [0, 0]}))
    m = node_message.decode(payload)
    assert (m.node, m.boot, m.seq) == ("n1", 3, 7)
    assert {r.name: r.value for r in m.readings} == {"temperature": 21.37, "humidity": 45.51, "pressure": 1013.25}
    assert {r.age_ms for r in m.readings} == {1500}
    assert not m.age_lower_bound
    flagged = node_message.decode(message.encode("n1", 3, 8, [(10, values)], cbor2.dumps({}), flags=message.FLAG_AGE_LOWER_BOUND))
    assert flagged.age_lower_bound


def test_out_of_range_values_are_kept_and_flagged():
    m = node_message.decode(cbor2.dumps(good({4: [[0, {1: 150.0, 2: 50.0}]]})))
    flags = {r.name: r.flags for r in m.readings}
    assert flags == {"temperature": node_message.FLAG_OUT_OF_RANGE, "humidity": 0}
    assert [r.value for r in m.readings if r.name == "temperature"] == [150.0]


BAD = {
    "malformed": b"\xa6\x00\x01\x01",
    "random bytes": bytes(range(256)) * 3,
    "oversized": cbor2.dumps({0: 1, 1: "n1", 9: b"x" * 20000}),
    "deep nesting": b"\x81" * 200 + b"\x00",
    "not a map": cbor2.dumps([1, 2, 3]),
    "wrong version": cbor2.dumps(good({0: 2})),
    "bad node id": cbor2.dumps(good({1: "Node 1!"})),
    "boot not uint": cbor2.dumps(good({2: -1})),
    "seq a string": cbor2.dumps(good({3: "7"})),
    "no samples": cbor2.dumps(good({4: []})),
    "sample not a pair": cbor2.dumps(good({4: [[1, 2, 3]]})),
    "unknown quantity": cbor2.dumps(good({4: [[0, {999: 1.0}]]})),
    "value a string": cbor2.dumps(good({4: [[0, {1: "21.3"}]]})),
    "value a bool": cbor2.dumps(good({4: [[0, {1: True}]]})),
    "NaN": cbor2.dumps(good({4: [[0, {1: math.nan}]]})),
    "infinity": cbor2.dumps(good({4: [[0, {1: math.inf}]]})),
    "unknown field": cbor2.dumps(good({42: 1})),
    "bad status": cbor2.dumps(good({5: {"bme280": "ok"}})),
    "other tag": cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"", b""])),
    "trailing bytes": cbor2.dumps(good()) + b"\x00",
    "duplicate map keys": bytes.fromhex("a2 0001 0002".replace(" ", "")),
}
REASONS = {"oversized": "oversized", "wrong version": "version", "unknown quantity": "unknown_quantity",
           "NaN": "not_finite", "infinity": "not_finite", "malformed": "malformed", "random bytes": "malformed",
           "deep nesting": "malformed", "duplicate map keys": "malformed", "trailing bytes": "malformed"}


@pytest.mark.parametrize("name", BAD)
def test_bad_messages_are_rejected_with_a_reason(name):
    with pytest.raises(node_message.Rejected) as e:
        node_message.decode(BAD[name])
    assert e.value.reason == REASONS.get(name, "schema")
    assert len(str(e.value)) < 200 and "\n" not in str(e.value)


def test_a_keyed_node_must_sign():
    with pytest.raises(node_message.Rejected) as e:
        node_message.decode(cbor2.dumps(good()), keys={"n1": b"k" * 16})
    assert e.value.reason == "unsigned"


def test_signed_message_round_trip_on_cpython():
    payload = cose.sign(cbor2.dumps(good()), b"k" * 16)
    assert node_message.decode(payload, keys={"n1": b"k" * 16}).signed
    tampered = bytearray(payload)
    tampered[-12] ^= 1  # inside the node message
    with pytest.raises(node_message.Rejected) as e:
        node_message.decode(bytes(tampered), keys={"n1": b"k" * 16})
    assert e.value.reason in ("bad_mac", "malformed", "schema")
