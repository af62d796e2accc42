"""The receiver's boundary: whatever is posted, the answer is 200 (stored once) or 400 (counted, with
the reason), never a closed connection; a fault of its own is a 500 the pole retries; and whatever
it accepted, signed or not, export, stats and latest read back. Property-based (hypothesis) through
real HTTP POSTs, and `openpole receiver` run as a pole's city would run it."""

import math

import cbor2
import pytest

import cbor  # firmware/lib: the node's own encoder, on CPython
import message
from openpole.receiver.export import export
from openpole.receiver.store import ReceiverStore
from openpole.wire import batch, node_message

NOW = 1_800_000_000 * 10**9


def node_msg(node, seq, boot=7, age=1500, flags=0):
    v = message.encode_values({"temperature": 21.37, "humidity": 45.5, "pm2_5": 7})
    return node_message.decode(message.encode(node, boot, seq, [(age, v)], cbor.dumps({"bme280": [0, 0]}), flags))


def good_batch(pole="p1", seqs=(0, 1), batch_id=None, node="n1", tq=0):
    blobs = [batch.senml_records(pole, node_msg(node, s), NOW, tq) for s in seqs]
    return batch.encode(batch_id or batch.new_batch_id(), pole, [b for _, b in blobs], sum(n for n, _ in blobs), NOW,
                        [(node, "temperature", 1_799_999_940, 2, 21.4, 21.3, 21.5)])


def changed(change, body=None):
    b = cbor2.loads(body or good_batch())
    change(b)
    return cbor2.dumps(b)


def first(b):
    return b[4][0]  # a message's first record: bn, bt and the message's fields


def reading(b):
    return b[4][1]  # a further reading of the same message


BAD_BATCHES = {
    "flags a string": lambda b: reading(b).update({"fl": "1"}),
    "flags negative": lambda b: reading(b).update({"fl": -1}),
    "flags past an int4": lambda b: reading(b).update({"fl": 2**31}),
    "flags a float": lambda b: reading(b).update({"fl": 1.0}),
    "time quality 4": lambda b: first(b).update({"tq": 4}),
    "time quality text": lambda b: first(b).update({"tq": "0"}),
    "no receive time": lambda b: first(b).pop("rt"),
    "receive time 2^63": lambda b: first(b).update({"rt": 2**63}),
    "receive time negative": lambda b: first(b).update({"rt": -1}),
    "receive time a float": lambda b: first(b).update({"rt": 1.8e18}),
    "node clock 2^63": lambda b: first(b).update({"nc": 2**63}),
    "node clock text": lambda b: first(b).update({"nc": "now"}),
    "boot 2^63": lambda b: first(b).update({"boot": 2**63}),
    "seq negative": lambda b: first(b).update({"seq": -1}),
    "seq true": lambda b: first(b).update({"seq": True}),
    "a node id with capitals": lambda b: first(b).update({-2: "urn:openpole:p1:Node 1!:"}),
    "a node id of 33": lambda b: first(b).update({-2: "urn:openpole:p1:" + "n" * 33 + ":"}),
    "an empty node id": lambda b: first(b).update({-2: "urn:openpole:p1::"}),
    "another pole's base name": lambda b: first(b).update({-2: "urn:openpole:p2:n1:"}),
    "bt NaN": lambda b: first(b).update({-3: math.nan}),
    "bt infinite": lambda b: first(b).update({-3: math.inf}),
    "bt past year 9999": lambda b: first(b).update({-3: 1e308}),
    "bt text": lambda b: first(b).update({-3: "now"}),
    "t NaN": lambda b: reading(b).update({6: math.nan}),
    "t minus infinity": lambda b: reading(b).update({6: -math.inf}),
    "t before year 1": lambda b: reading(b).update({6: -1e12}),
    "a value NaN": lambda b: reading(b).update({2: math.nan}),
    "a value infinite": lambda b: reading(b).update({2: -math.inf}),
    "a value 2^63": lambda b: reading(b).update({2: 2**63}),
    "a value true": lambda b: reading(b).update({2: True}),
    "no unit": lambda b: reading(b).pop(1),
    "a unit that is a number": lambda b: reading(b).update({1: 7}),
    "an aggregate's count negative": lambda b: b[5][0].__setitem__(3, -1),
    "an aggregate's mean NaN": lambda b: b[5][0].__setitem__(4, math.nan),
    "an aggregate's max 2^64": lambda b: b[5][0].__setitem__(6, 2**64),
    "an aggregate's minute text": lambda b: b[5][0].__setitem__(2, "x"),
    "an aggregate's node id": lambda b: b[5][0].__setitem__(0, "../n1"),
    "version true": lambda b: b.update({0: True}),
}


@pytest.mark.parametrize("name", BAD_BATCHES)
def test_a_batch_with_a_field_out_of_its_range_is_refused_with_a_reason(name):
    body = changed(BAD_BATCHES[name])
    with pytest.raises(ValueError) as e:
        batch.decode_messages(body)
    assert 0 < len(str(e.value)) < 200 and "\n" not in str(e.value), str(e.value)


GOOD_EDGES = {
    "flags at an int4's top": lambda b: reading(b).update({"fl": 2**31 - 1}),
    "time quality 3": lambda b: first(b).update({"tq": 3}),
    "boot and seq 2^63 - 1": lambda b: first(b).update({"boot": 2**63 - 1, "seq": 2**63 - 1}),
    "a value 2^53": lambda b: reading(b).update({2: 2**53}),
    "a value -0.0 and a subnormal": lambda b: (reading(b).update({2: -0.0}), first(b).update({2: 5e-324})),
    "a time in year 1": lambda b: reading(b).update({6: batch.TIME_MIN_S - NOW / 1e9}),
    "a pole clock in 1970": lambda b: (first(b).update({-3: 60.0, "rt": 60 * 10**9}), reading(b).update({6: -120.0})),
}


@pytest.mark.parametrize("name", GOOD_EDGES)
def test_the_edges_of_each_range_are_accepted_and_read_back(name, tmp_path):
    body = changed(GOOD_EDGES[name])
    batch_id, pole, messages, minutes = batch.decode_messages(body)
    store = ReceiverStore(tmp_path)
    assert store.add_batch(batch_id, pole, body, messages, minutes) == (6, 0)
    assert len(list(store.readings())) == 6 and len(store.latest()) == 3
    store.close()
    assert export(tmp_path, tmp_path / "out") == 6
