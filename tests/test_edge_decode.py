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
    # Numbers past what the pole's SQLite, the batch and the city hold (sensor_specs/node_message.cddl)
    "seq 2^63": cbor2.dumps(good({3: 2**63})),
    "boot 2^64 - 1": cbor2.dumps(good({2: 2**64 - 1})),
    "boot a bignum": cbor2.dumps(good({2: 2**70})),
    "seq a float": cbor2.dumps(good({3: 7.0})),
    "age 2^32 ms": cbor2.dumps(good({4: [[2**32, {1: 21.5}]]})),
    "age 10^14 ms": cbor2.dumps(good({4: [[10**14, {1: 21.5}]]})),
    "age negative": cbor2.dumps(good({4: [[-1, {1: 21.5}]]})),
    "clock 2^63": cbor2.dumps(good({6: 2**63})),
    "flags 2^64 - 1": cbor2.dumps(good({7: 2**64 - 1})),
    "a flag v1 has not": cbor2.dumps(good({7: 2})),
    "version true": cbor2.dumps(good({0: True})),
    "version 1.0": cbor2.dumps(good({0: 1.0})),
    "a key that is a float": cbor2.dumps({**good(), 7.0: 1}),
    # Reasons name what was wrong in a few characters: str() refuses an int past 4300 digits
    "version a bignum of 20000 bits": cbor2.dumps(good({0: 2**20000})),
    "a quantity key of 20000 bits": cbor2.dumps(good({4: [[0, {2**20000: 1.0}]]})),
    "a field key of 20000 bits": cbor2.dumps({**good(), 2**20000: 1}),
    "a sensor state of 20000 bits": cbor2.dumps(good({5: {"bme280": [2**20000, 0]}})),
    "version a long text": cbor2.dumps(good({0: "v" * 10000})),  # Python takes 7.0 for the flags' key 7
    # The status map as the CDDL has it: state 0..3, a name of 1..16 bytes, counts that fit 64 bits
    "sensor state 4": cbor2.dumps(good({5: {"bme280": [4, 0]}})),
    "sensor state -1": cbor2.dumps(good({5: {"bme280": [-1, 0]}})),
    "sensor name of 17 characters": cbor2.dumps(good({5: {"b" * 17: [0, 0]}})),
    "sensor name of 17 bytes": cbor2.dumps(good({5: {"\u00e9" * 8 + "b": [0, 0]}})),  # RFC 8610 3.8.1: .size in bytes
    "empty sensor name": cbor2.dumps(good({5: {"": [0, 0]}})),
    "sensor errors 2^63": cbor2.dumps(good({5: {"noise": [0, 2**63]}})),
    "lost blocks negative": cbor2.dumps(good({5: {"noise": [0, 0, -3]}})),
}
REASONS = {"oversized": "oversized", "wrong version": "version", "unknown quantity": "unknown_quantity",
           "NaN": "not_finite", "infinity": "not_finite", "malformed": "malformed", "random bytes": "malformed",
           "deep nesting": "malformed", "duplicate map keys": "malformed", "trailing bytes": "malformed",
           "version true": "version", "version 1.0": "version", "version a bignum of 20000 bits": "version",
           "version a long text": "version", "a quantity key of 20000 bits": "unknown_quantity"}


@pytest.mark.parametrize("name", BAD)
def test_bad_messages_are_rejected_with_a_reason(name):
    with pytest.raises(node_message.Rejected) as e:
        node_message.decode(BAD[name])
    assert e.value.reason == REASONS.get(name, "schema")
    assert len(str(e.value)) < 200 and "\n" not in str(e.value)


EDGES = {  # the largest of each that the contract allows: decoded, stored and sent upstream
    "seq 2^63 - 1": {3: 2**63 - 1},
    "boot 2^63 - 1": {2: 2**63 - 1},
    "age 2^32 - 1 ms": {4: [[2**32 - 1, {1: 21.5}]]},
    "clock 2^63 - 1": {6: 2**63 - 1},
    "state 3, errors 2^63 - 1": {5: {"pms5003": [3, 2**63 - 1, 2**63 - 1]}},
    "a sensor name of 16 bytes": {5: {"\u00e9" * 8: [0, 0]}},
    "flag 1": {7: 1},
}


@pytest.mark.parametrize("name", EDGES)
def test_the_edges_of_each_range_are_kept_stored_and_sent(name, tmp_path):
    from openpole.edge_agent.store import Store
    from openpole.wire import batch

    m = node_message.decode(cbor2.dumps(good(EDGES[name])))
    n, senml = batch.senml_records("p1", m, 1_800_000_000 * 10**9)
    s = Store(tmp_path)
    s.append([(m.node, m.boot, m.seq, 1_800_000_000 * 10**9, n, senml)], [])
    rows, _ = s.pending(100)
    s.close()
    msgs = batch.decode_messages(batch.encode(b"\x01" * 16, "p1", [r[2] for r in rows], n))[2]
    assert [tuple(x[:5]) for x in msgs] == [("p1", m.node, m.boot, m.seq, m.clock_ms)]


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
