"""The published CDDL (sensor_specs/*.cddl) judged by an independent validator, zcbor from PyPI in
.venv-cddl, not by openpole's own decoder: what the node's encoder, the agent's acks and its
upstream batches produce is valid, and what breaks the spec is refused.

(zcbor has no .regexp: a node id is checked as a text string there; see tools/spec/cddl/.)"""

import time

import cbor2

import cbor  # firmware/lib: the node's own encoder
import cose
import message
from openpole import paths
from openpole.wire import batch, node_message
from openpole.edge_agent.agent import node_acks
from openpole.spec import cddl

NODE_CDDL = paths.SENSOR_SPECS / "node_message.cddl"
ACK_CDDL = paths.SENSOR_SPECS / "node_ack.cddl"
BATCH_CDDL = paths.SENSOR_SPECS / "upstream_batch.cddl"


def test_the_independent_validator_is_installed():
    # make install (and so make test) creates .venv-cddl: a missing one fails here, never skips.
    assert cddl.available(), cddl.INSTALL


def encoded_message(seq=0, flags=0, lost=False):
    values = message.encode_values({"temperature": 21.53, "humidity": 40.2, "pressure": 1013.25, "pm2_5": 7,
                                    "laeq": 55.3, "lamax": 71.0, "la90": 41.2})
    status = {"bme280": [0, 0], "pms5003": [1, 2], "noise": [0, 0, 3] if lost else [0, 0]}
    return message.encode("pole1-a", 123456789, seq, [(61000, values), (1000, values)], cbor.dumps(status), flags)


def test_what_the_node_encodes_is_a_node_payload():
    plain = [encoded_message(), encoded_message(1, flags=message.FLAG_AGE_LOWER_BOUND), encoded_message(2, lost=True)]
    signed = [cose.sign(p, bytes(range(16))) for p in plain]
    clocked = cbor2.loads(plain[0])
    clocked[6] = 1_796_000_000_000  # the node's wall clock at send time, when it has one
    assert cddl.validate(NODE_CDDL, "node-payload", plain + signed + [cbor2.dumps(clocked)]) == [None] * 7


BAD_NODE = {
    "no node id": lambda m: m.pop(1),
    "a boot that is negative": lambda m: m.update({2: -1}),
    "no samples": lambda m: m.update({4: []}),
    "a sample without its age": lambda m: m.update({4: [[{1: 20.5}]]}),
    "a value that is text": lambda m: m.update({4: [[0, {1: "20.5"}]]}),
    "a sensor state of 4": lambda m: m.update({5: {"bme280": [4, 0]}}),
    "an empty sensor name": lambda m: m.update({5: {"": [0, 0]}}),
    "version 2": lambda m: m.update({0: 2}),
    "a field the spec has not": lambda m: m.update({8: 1}),
}


def test_what_breaks_the_node_message_spec_is_refused():
    items = []
    for change in BAD_NODE.values():
        m = cbor2.loads(encoded_message())
        change(m)
        items.append(cbor2.dumps(m))
    mac0 = list(cbor2.loads(cose.sign(encoded_message(), bytes(16))).value)
    mac0[3] = mac0[3][:7]  # a MAC tag of 7 bytes, not 8
    items += [cbor2.dumps(cbor2.CBORTag(17, mac0)), encoded_message()[:-2], b"\xff"]
    got = cddl.validate(NODE_CDDL, "node-payload", items)
    names = list(BAD_NODE) + ["a short MAC tag", "truncated", "not CBOR"]
    assert [n for n, why in zip(names, got) if why is None] == []


AT_THE_EDGES = {  # each range's last value in, and the first out
    "seq 2^63 - 1": lambda m: m.update({3: 2**63 - 1}),
    "seq 2^63": lambda m: m.update({3: 2**63}),
    "boot 2^63 - 1": lambda m: m.update({2: 2**63 - 1}),
    "boot 2^64 - 1": lambda m: m.update({2: 2**64 - 1}),
    "age 2^32 - 1 ms": lambda m: m[4][0].__setitem__(0, 2**32 - 1),
    "age 2^32 ms": lambda m: m[4][0].__setitem__(0, 2**32),
    "clock 2^63 - 1": lambda m: m.update({6: 2**63 - 1}),
    "clock 2^63": lambda m: m.update({6: 2**63}),
    "flags 1": lambda m: m.update({7: 1}),
    "flags 2": lambda m: m.update({7: 2}),
    "state 3": lambda m: m.update({5: {"bme280": [3, 0]}}),
    "state 4": lambda m: m.update({5: {"bme280": [4, 0]}}),
    # ASCII: zcbor 0.9.1 sizes a tstr in characters, RFC 8610 (3.8.1) and openpole's decoder in bytes
    "a sensor name of 16 bytes": lambda m: m.update({5: {"b" * 16: [0, 0]}}),
    "a sensor name of 17 bytes": lambda m: m.update({5: {"b" * 17: [0, 0]}}),
    "errors 2^63 - 1": lambda m: m.update({5: {"noise": [0, 2**63 - 1, 2**63 - 1]}}),
    "errors 2^63": lambda m: m.update({5: {"noise": [0, 2**63]}}),
    "lost 2^64 - 1": lambda m: m.update({5: {"noise": [0, 0, 2**64 - 1]}}),
}


def test_the_decoder_and_the_published_cddl_agree_at_the_edge_of_every_range():
    items = []
    for change in AT_THE_EDGES.values():
        m = cbor2.loads(encoded_message())
        change(m)
        items.append(cbor2.dumps(m))
    by_cddl = [why is None for why in cddl.validate(NODE_CDDL, "node-payload", items)]
    by_decoder = []
    for item in items:
        try:
            node_message.decode(item)
            by_decoder.append(True)
        except node_message.Rejected:
            by_decoder.append(False)
    assert dict(zip(AT_THE_EDGES, by_decoder)) == dict(zip(AT_THE_EDGES, by_cddl))
    assert by_cddl == [True, False] * 7 + [True, False, False], dict(zip(AT_THE_EDGES, by_cddl))


def test_the_agents_acks_are_node_acks():
    accepted = [("n1", 7, s) for s in (0, 1, 2, 5, 6)] + [("n1", 8, 0)]
    acks = node_acks(accepted)["n1"]
    assert acks == [[7, 0, 2], [7, 5, 6], [8, 0, 0]]
    good = [cbor2.dumps(acks), cbor2.dumps([[0, 0, 0]])]
    bad = [cbor2.dumps([]), cbor2.dumps([[7, 0]]), cbor2.dumps([[7, -1, 2]]), cbor2.dumps({7: [0, 2]})]
    got = cddl.validate(ACK_CDDL, "node-ack", good + bad)
    assert got[:2] == [None, None]
    assert all(got[2:]), got


def upstream_batch(minutes=()):
    msgs = [node_message.decode(encoded_message(s)) for s in range(3)]
    blobs = [batch.senml_records("pole1", m, time.time_ns(), time_quality=q) for q, m in enumerate(msgs)]
    return batch.encode(batch.new_batch_id(), "pole1", [b for _, b in blobs], sum(n for n, _ in blobs), minutes=minutes)


def test_what_the_agent_sends_upstream_is_an_upstream_batch():
    minute = ["pole1-a", "laeq", 1_796_000_040, 12, 55.1, 41.0, 71.5]
    assert cddl.validate(BATCH_CDDL, "upstream-batch", [upstream_batch(), upstream_batch([minute])]) == [None, None]


def test_a_batch_of_minute_aggregates_alone_is_an_upstream_batch_the_receivers_read():
    """The last minutes before a quiet spell go without records: the spec's record list may be
    empty (4 => [* senml-record]), and the decoder the receiver and the city's loaders share reads it."""
    minute = ["pole1-a", "temperature", 1_796_000_040, 12, 21.5, 21.1, 21.9]
    body = batch.encode(batch.new_batch_id(), "pole1", [], 0, minutes=[minute])
    assert cddl.validate(BATCH_CDDL, "upstream-batch", [body]) == [None]
    _, pole, messages, minutes = batch.decode_signed(body)
    assert (pole, messages, minutes) == ("pole1", [], [tuple(minute)])


def test_what_breaks_the_upstream_batch_spec_is_refused():
    good = cbor2.loads(upstream_batch())
    changes = {
        "a batch id of 15 bytes": lambda b: b.update({1: b[1][:15]}),
        "no pole id": lambda b: b.pop(2),
        "a record without its quantity name": lambda b: b[4][1].pop(0),
        "a record value that is text": lambda b: b[4][1].update({2: "7"}),
        "a minute without its max": lambda b: b.update({5: [["n", "laeq", 0, 1, 50.0, 40.0]]}),
        "a seq past 64 signed bits": lambda b: b[4][0].update({"seq": 2**63}),
        "a receive time past 64 signed bits": lambda b: b[4][0].update({"rt": 2**63}),
        "a time quality of 4": lambda b: b[4][0].update({"tq": 4}),
        "flags past 32 signed bits": lambda b: b[4][1].update({"fl": 2**31}),
    }
    items = []
    for change in changes.values():
        b = cbor2.loads(cbor2.dumps(good))
        change(b)
        items.append(cbor2.dumps(b))
    got = cddl.validate(BATCH_CDDL, "upstream-batch", items)
    assert [n for n, why in zip(changes, got) if why is None] == []


def test_without_the_validator_conformance_says_how_to_get_it_in_one_line(monkeypatch, tmp_path):
    from openpole import conformance
    from openpole.errors import UserError

    monkeypatch.setattr(cddl, "VENV", tmp_path / "none")
    records = [(0, "openpole/v1/pole1-a/data", encoded_message(), False)]
    try:
        conformance.check(records, "pole1-a")
    except UserError as e:
        assert "zcbor" in str(e) and "pip install -r" in str(e) and "\n" not in str(e)
    else:
        raise AssertionError("no error without the validator")
    assert conformance.check(records, "pole1-a", independent=False).results["cddl"] is None


def test_the_agents_tickets_are_ota_tickets():
    from openpole.wire import ota

    key = bytes(32)
    man = ota.manifest_text("app", "0.3.0", "esp32-devkitc", 11014, ("1.24", "1.29"), [("node.mpy", b"x")])
    good = ota.ticket(key, "n1", 1, 2, "app", "0.3.0", ("1.24", "1.29"), man, 100)[1:]
    bad = ota.ticket(key, "n1", 1, 2, "app", "0.3.0", ("1.24",), man, 100)[1:]  # one version, not a range
    got = cddl.validate(paths.SENSOR_SPECS / "ota_ticket.cddl", "ota-ticket", [good, bad])
    assert got[0] is None and got[1] is not None
