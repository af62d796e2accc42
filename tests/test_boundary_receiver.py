"""The receiver's boundary: whatever is posted, the answer is 200 (stored once) or 400 (counted, with
the reason), never a closed connection; a fault of its own is a 500 the pole retries; and whatever
it accepted, signed or not, export, stats and latest read back. Property-based (hypothesis) through
real HTTP POSTs, and `openpole receiver` run as a pole's city would run it."""

import csv
import gzip
import http.client
import json
import logging
import math
import sqlite3
import subprocess
import sys

import cbor2
import pytest
from helpers import wait
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cbor  # firmware/lib: the node's own encoder, on CPython
import message
from openpole.edge_agent.agent import Agent
from openpole.edge_agent.config import AgentConfig
from openpole.receiver.export import export
from openpole.receiver.server import Receiver
from openpole.receiver.store import ReceiverStore
from openpole.sim.broker import free_port
from openpole.wire import batch, node_message, sign

KEY = bytes(range(32))
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
    "flags a string": (lambda b: reading(b).update({"fl": "1"}), "fl must be"),
    "flags negative": (lambda b: reading(b).update({"fl": -1}), "fl must be"),
    "flags past an int4": (lambda b: reading(b).update({"fl": 2**31}), "fl must be"),
    "flags a float": (lambda b: reading(b).update({"fl": 1.0}), "fl must be"),
    "time quality 4": (lambda b: first(b).update({"tq": 4}), "tq must be"),
    "time quality text": (lambda b: first(b).update({"tq": "0"}), "tq must be"),
    "no receive time": (lambda b: first(b).pop("rt"), "rt must be"),
    "receive time 2^63": (lambda b: first(b).update({"rt": 2**63}), "rt must be"),
    "receive time negative": (lambda b: first(b).update({"rt": -1}), "rt must be"),
    "receive time a float": (lambda b: first(b).update({"rt": 1.8e18}), "rt must be"),
    "node clock 2^63": (lambda b: first(b).update({"nc": 2**63}), "nc must be"),
    "node clock text": (lambda b: first(b).update({"nc": "now"}), "nc must be"),
    "boot 2^63": (lambda b: first(b).update({"boot": 2**63}), "boot must be"),
    "seq negative": (lambda b: first(b).update({"seq": -1}), "seq must be"),
    "seq true": (lambda b: first(b).update({"seq": True}), "seq must be"),
    "a node id with capitals": (lambda b: first(b).update({-2: "urn:openpole:p1:Node 1!:"}), "node id"),
    "a node id of 33": (lambda b: first(b).update({-2: "urn:openpole:p1:" + "n" * 33 + ":"}), "node id"),
    "an empty node id": (lambda b: first(b).update({-2: "urn:openpole:p1::"}), "node id"),
    "another pole's base name": (lambda b: first(b).update({-2: "urn:openpole:p2:n1:"}), "in a batch of pole 'p1'"),
    # (str() refuses an integer past 4300 digits: the reason must not show it)
    "a base name of 20000 bits": (lambda b: first(b).update({-2: 2**20000}), "is not urn:openpole:"),
    "a base name of 100 kB": (lambda b: first(b).update({-2: "urn:" * 25000}), "is not urn:openpole:"),
    "bt NaN": (lambda b: first(b).update({-3: math.nan}), "bt must be"),
    "bt infinite": (lambda b: first(b).update({-3: math.inf}), "bt must be"),
    "bt past year 9999": (lambda b: first(b).update({-3: 1e308}), "outside the years 1 to 9999"),
    "bt text": (lambda b: first(b).update({-3: "now"}), "bt must be"),
    "t NaN": (lambda b: reading(b).update({6: math.nan}), "t must be"),
    "t minus infinity": (lambda b: reading(b).update({6: -math.inf}), "t must be"),
    "t before year 1": (lambda b: reading(b).update({6: -1e12}), "outside the years 1 to 9999"),
    "a value NaN": (lambda b: reading(b).update({2: math.nan}), "the value of 'humidity'"),
    "a value infinite": (lambda b: reading(b).update({2: -math.inf}), "the value of 'humidity'"),
    "a value 2^63": (lambda b: reading(b).update({2: 2**63}), "the value of 'humidity'"),
    "a value true": (lambda b: reading(b).update({2: True}), "a numeric value"),
    "no unit": (lambda b: reading(b).pop(1), "a unit"),
    "a unit that is a number": (lambda b: reading(b).update({1: 7}), "a unit"),
    "an aggregate's count negative": (lambda b: b[5][0].__setitem__(3, -1), "count must be"),
    "an aggregate's mean NaN": (lambda b: b[5][0].__setitem__(4, math.nan), "mean, min and max"),
    "an aggregate's max 2^64": (lambda b: b[5][0].__setitem__(6, 2**64), "mean, min and max"),
    "an aggregate's minute text": (lambda b: b[5][0].__setitem__(2, "x"), "minute must be"),
    "an aggregate's node id": (lambda b: b[5][0].__setitem__(0, "../n1"), "a node id"),
    "version true": (lambda b: b.update({0: True}), "not an openpole upstream batch v1"),
}


@pytest.mark.parametrize("name", BAD_BATCHES)
def test_a_batch_with_a_field_out_of_its_range_is_refused_with_a_reason(name):
    change, says = BAD_BATCHES[name]
    with pytest.raises(ValueError) as e:
        batch.decode_messages(changed(change))
    assert says in str(e.value) and len(str(e.value)) < 200 and "\n" not in str(e.value), str(e.value)


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


# --- HTTP ---


def post(url, body, headers=None):
    """(status, JSON answer); a closed connection or a non-JSON answer fails the test."""
    host, port = url.removeprefix("http://").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        c.request("POST", "/v1/batches", body, {"Content-Type": "application/cbor", **(headers or {})})
        r = c.getresponse()
        return r.status, json.loads(r.read(), parse_constant=_no_constant)
    finally:
        c.close()


def get(url, path):
    host, port = url.removeprefix("http://").split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        c.request("GET", path)
        r = c.getresponse()
        assert r.status == 200
        return json.loads(r.read(), parse_constant=_no_constant)
    finally:
        c.close()


def _no_constant(name):
    raise AssertionError(f"{name} in a JSON answer: not JSON")


EXTREME_INTS = [0, -1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 2**100]
EXTREME_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -1e308, -0.0, 5e-324, 2.2250738585072014e-308]
# and a bignum past what str() of an int takes (4300 digits), made where hypothesis need not show it
ints = st.sampled_from(EXTREME_INTS) | st.integers() | st.sampled_from([1, -1]).map(lambda sign: sign * 2**20000)
floats = st.sampled_from(EXTREME_FLOATS) | st.floats()
scalars = (st.none() | st.booleans() | ints | floats | st.text(max_size=30) | st.binary(max_size=30)
           | st.just("x" * 5000))


def deep(n):
    v = 0
    for _ in range(n):
        v = [v]
    return v


anything = st.recursive(
    scalars | st.integers(1, 100).map(deep),
    lambda inner: (st.lists(inner, max_size=5) | st.dictionaries(ints | st.text(max_size=8), inner, max_size=5)
                   | st.builds(cbor2.CBORTag, st.sampled_from([1, 2, 4, 17, 24, 55799]), inner)),
    max_leaves=12)
RECORD_KEYS = [-2, -3, 0, 1, 2, 6, "boot", "seq", "rt", "nc", "tq", "fl", "xx"]
PLACES = ([("env", k) for k in range(7)] + [("rec", i, k) for i in (0, 1, 2, 3) for k in RECORD_KEYS]
          + [("min", j) for j in range(8)] + [("pack",), ("mins",)])


def dump(value):
    try:
        return cbor2.dumps(value)
    except (ValueError, TypeError, OverflowError, cbor2.CBOREncodeError):
        return b"\xf7"


@st.composite
def bad_batches(draw):
    """A batch the agent's own encoder made, with one place set to something nasty; or random CBOR,
    or random bytes. Signed with the pole's key (or a wrong one), plain, or gzipped."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "cbor", "bytes"]))
    wraps = st.sampled_from(["signed", "signed", "signed", "signed", "wrong key", "plain", "gzip"])
    if kind == "bytes":
        return draw(st.binary(max_size=300)), draw(wraps)
    if kind == "cbor":
        return dump(draw(anything)), draw(wraps)
    b = cbor2.loads(good_batch(seqs=(draw(st.integers(10**6, 10**7)), draw(st.integers(10**7, 10**8)))))
    place, value = draw(st.sampled_from(PLACES)), draw(ints | floats | anything)
    if place[0] == "env":
        b[place[1]] = value
    elif place[0] == "rec":
        b[4][place[1]][place[2]] = value
    elif place[0] == "min":
        b[5][0][place[1] % 7] = value
    elif place[0] == "pack":
        b[4].insert(draw(st.integers(0, 4)), value)
    else:
        b[5].append(value)
    return dump(b), draw(wraps)


def wrapped(body, how):
    if how in ("signed", "gzip"):
        body = sign.sign(body, "p1", KEY)
    if how == "wrong key":
        body = sign.sign(body, "p1", bytes(32))
    if how == "gzip":
        body = gzip.compress(body)
    return body, {"Content-Encoding": "gzip"} if how == "gzip" else {}


def test_whatever_is_posted_the_answer_is_200_or_400_and_what_is_stored_reads_back(tmp_path):
    r = Receiver("127.0.0.1", free_port(), tmp_path / "r", keys={"p1": KEY}).start()
    refused, unauthorized, good, seq = [0], [0], [0], [0]
    try:
        @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(bad_batches())
        def check(case):
            body, headers = wrapped(*case)
            code, answer = post(r.url, body, headers)
            # Unsigned or wrongly signed, to a receiver that takes signed batches: 403 (the pole keeps it);
            # an empty body is no batch at all, signed or not: 400
            if not body or (case[1] == "plain" and body[:1] == b"\xd1"):
                # no batch at all; or bytes that open as a COSE_Mac0 (tag 17) and are none: 400
                assert code in ((400,) if not body else (400, 403)), (code, answer)
            else:
                assert code in ((403,) if case[1] in ("wrong key", "plain") else (200, 400)), (code, answer)
            unauthorized[0] += code == 403
            if code == 400:
                refused[0] += 1
                assert answer["error"] and len(answer["error"]) <= 300
            # and a good batch after it, signed: stored whole, once (a re-send after a lost answer too)
            seq[0] += 2
            body = sign.sign(good_batch(seqs=(seq[0], seq[0] + 1)), "p1", KEY)
            code, answer = post(r.url, body)
            assert (code, answer["stored"], answer["duplicates"]) == (200, 6, 0)
            good[0] += 1
            if good[0] % 10 == 0:
                code, answer = post(r.url, body)
                assert (code, answer["stored"], answer["duplicates"]) == (200, 0, 6)

        check()
        stats = get(r.url, "/v1/stats")
        assert stats["batches_rejected"] == refused[0] and stats["batches_failed"] == 0
        assert stats["batches_unauthorized"] == unauthorized[0]
        assert stats["batches"] + stats["batches_duplicate"] + refused[0] + unauthorized[0] == 2 * good[0] + good[0] // 10
        latest = get(r.url, "/v1/latest")
        assert {x["name"] for x in latest if x["node"] == "n1"} == {"temperature", "humidity", "pm2_5"}
        assert export(tmp_path / "r", tmp_path / "out") == stats["unique"] >= 6 * good[0]
    finally:
        r.stop()


def test_a_fault_of_the_receivers_own_is_a_500_the_pole_retries_logged_once(tmp_path, caplog):
    r = Receiver("127.0.0.1", free_port(), tmp_path / "r").start()
    other = sqlite3.connect(tmp_path / "r" / "receiver.sqlite", isolation_level=None)
    body = good_batch()
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the receiver's database
        with caplog.at_level(logging.ERROR, logger="openpole.receiver"):
            for _ in range(2):  # the pole's first try and its retry
                code, answer = post(r.url, body)
                assert code == 500 and "database is locked" in answer["error"] and "send it again" in answer["error"]
        assert [rec.getMessage().startswith("could not take a batch") for rec in caplog.records] == [True]
        other.execute("ROLLBACK")
        code, answer = post(r.url, body)  # and once the database is free again
        assert (code, answer["stored"]) == (200, 6)
        stats = get(r.url, "/v1/stats")
        assert (stats["batches_failed"], stats["unique"], stats["batches_rejected"]) == (2, 6, 0)
    finally:
        other.close()
        r.stop()


def openpole(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


class Ingest:
    """The broker's side of the agent (none here): messages go in through the agent's inbox."""

    connected = True

    def __init__(self, cfg, deliver):
        pass

    def ack_group(self, items, node_acks=None):
        pass

    def start(self):
        pass

    def stop(self):
        pass


def test_signed_batches_from_an_agent_are_exported_by_openpole_receiver(tmp_path):
    """The pole signs (upstream.key), `openpole receiver --keys` verifies and stores, and `openpole
    receiver export` and `stats` read what it stored."""
    keys = tmp_path / "poles.toml"
    keys.write_text(f'p1 = "{KEY.hex()}"\n')
    port = free_port()
    data = tmp_path / "data"
    server = subprocess.Popen([sys.executable, "-m", "openpole", "receiver", "--listen", f"127.0.0.1:{port}",
                               "--data", data, "--keys", keys], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    cfg = AgentConfig(pole_id="p1", broker_host="127.0.0.1", broker_port=1, upstream=url, upstream_key=KEY,
                      state_dir=tmp_path / "edge", batch_interval_s=0.2, metrics_port=0)
    a = Agent(cfg, ingest_factory=Ingest)
    try:
        assert wait(lambda: _healthy(url), timeout=20), server.stderr.read() if server.poll() is not None else "down"
        assert post(url, good_batch())[0] == 403  # unsigned, to a receiver that takes signed batches only
        a.start()
        for s in range(20):
            v = message.encode_values({"temperature": 20.0 + s / 10, "humidity": 40.0})
            a._deliver("openpole/v1/n1/data", message.encode("n1", 7, s, [(1000, v)], cbor.dumps({})), s + 1, 1)
        assert wait(lambda: a.store.counters().get("records_delivered", 0) == 40, timeout=20), a.store.counters()
    finally:
        a.stop()
        server.terminate()
        server.wait(timeout=20)
    out = openpole("receiver", "export", "--data", data, "--out", tmp_path / "out")
    assert out.returncode == 0, out.stderr
    with gzip.open(tmp_path / "out" / "data.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and {r["node_id"] for r in rows} == {"n1"} and {r["subsystem"] for r in rows} == {"p1"}
    temperatures = sorted(round(float(r["value_raw"]), 2) for r in rows if r["parameter"] == "temperature")
    assert temperatures == [round(20.0 + s / 10, 2) for s in range(20)]
    stats = openpole("receiver", "stats", "--data", data, "--json")
    st = json.loads(stats.stdout)
    assert (st["unique"], st["batches_rejected"], st["batches_unauthorized"]) == (40, 0, 1)


def _healthy(url):
    try:
        return get(url, "/healthz")["ok"]
    except OSError:
        return False


def test_signed_batches_a_receiver_kept_whole_are_still_exported(tmp_path):
    """A receiver with --keys used to keep the signed body as it came: export reads the batch inside."""
    body = good_batch()
    store = ReceiverStore(tmp_path)
    batch_id, pole, messages, minutes = batch.decode_messages(body)
    store.add_batch(batch_id, pole, sign.sign(body, "p1", KEY), messages, minutes)
    store.close()
    assert export(tmp_path, tmp_path / "out") == 6


BAD_KEYS = {  # the line, and what of it must never be shown
    "empty": ('p1 = ""', KEY.hex()),
    "not hex": ('p1 = "00112233445566778899aabbccddeezz"', "00112233445566778899aabbccddeezz"),
    "short": ('p1 = "0011223344556677"', "0011223344556677"),
    "a number": ("p1 = 7", KEY.hex()),
}


@pytest.mark.parametrize("name", BAD_KEYS)
@pytest.mark.parametrize("command", [["receiver", "--listen", "127.0.0.1:0", "--data", "{data}"],
                                     ["city", "load", "--nats", "nats://127.0.0.1:1", "--db", "postgresql://127.0.0.1:1/x"]],
                         ids=["receiver", "city load"])
def test_a_pole_key_that_is_empty_short_or_not_hex_is_refused_in_one_line(tmp_path, name, command):
    keys = tmp_path / "poles.toml"
    line, secret = BAD_KEYS[name]
    keys.write_text(f'good = "{KEY.hex()}"\n{line}\n')
    r = openpole(*[c.format(data=tmp_path / "d") for c in command], "--keys", keys, timeout=60)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(keys) in lines[0] and "pole 'p1'" in lines[0], lines
    assert secret not in r.stderr and KEY.hex() not in r.stderr  # a key is never shown


def test_a_keys_file_without_a_pole_is_refused_not_taken_for_no_signatures(tmp_path):
    keys = tmp_path / "poles.toml"
    keys.write_text("# the poles come here\n")
    r = openpole("receiver", "--listen", "127.0.0.1:0", "--data", tmp_path / "d", "--keys", keys, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == f"openpole: {keys}: no pole keys in it; expected lines like  " \
                                                    'pole-7 = "00112233..."  (the key in hex)'


def test_a_stored_batch_that_todays_checks_refuse_is_left_out_of_the_export_with_a_line(tmp_path):
    """A receiver of an older release stored what its decoder let through (a NaN, say): the export
    says so in one line and goes on with the rest, instead of stopping."""
    store = ReceiverStore(tmp_path / "data")
    good = good_batch(seqs=(0,))
    bid, pole, msgs, minutes = batch.decode_messages(good)
    store.add_batch(bid, pole, good, msgs, minutes)
    bad = changed(lambda b: reading(b).__setitem__(2, math.nan), good_batch(seqs=(1,)))
    with pytest.raises(ValueError):
        batch.decode_messages(bad)
    bid2 = batch.new_batch_id()
    store.add_batch(bid2, "p1", bad, [("p1", "n1", 7, 1, None, [])], [])  # as an older decoder let it in
    store.close()
    out = openpole("receiver", "export", "--data", tmp_path / "data", "--out", tmp_path / "out")
    assert out.returncode == 0, out.stderr
    assert f"batch {bid2.hex()}" in out.stderr and "left out" in out.stderr and "Traceback" not in out.stderr
    with gzip.open(tmp_path / "out" / "data.csv.gz", "rt") as f:
        rows = list(csv.reader(f))[1:]
    assert len(rows) == 3 and {r[4] for r in rows} == {"temperature", "humidity", "pm2_5"}


@pytest.mark.parametrize("name, unit, why", [
    ("a\x00b", "Cel", "quantity name"), ("x" * 65, "Cel", "quantity name"), ("Temp", "Cel", "quantity name"),
    ("temperature", "", "unit"), ("temperature", "C" * 33, "unit"), ("temperature", "C\x00", "unit"),
])
def test_quantity_names_and_units_are_what_the_registry_makes(name, unit, why):
    """A receiver and the city store and index these and write them into CSV files: a NUL, a control
    character or 100,000 characters of name is refused, as the published contract says."""
    body = changed(lambda b: reading(b).update({0: name, 1: unit}))
    with pytest.raises(ValueError, match=why):
        batch.decode_messages(body)


def test_a_receiver_reads_a_bounded_number_of_batches_at_once(tmp_path):
    """Each batch in hand may take MAX_BODY of memory: past TAKING_AT_ONCE the answer is 503 with
    Retry-After at once (the pole retries), and a Content-Length that is not one plain number is
    refused before any body is read."""
    import socket

    from openpole.receiver import server

    r = Receiver("127.0.0.1", free_port(), tmp_path / "r").start()
    port = int(r.url.rsplit(":", 1)[1])
    stalled = []
    try:
        for _ in range(server.TAKING_AT_ONCE):  # clients that announce a body and never send it
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            stalled.append(s)
        assert wait(lambda: post(r.url, good_batch())[0] == 503, timeout=10)
        code, _ = post(r.url, good_batch())
        assert code == 503
        for s in stalled:
            s.close()
        assert wait(lambda: post(r.url, good_batch())[0] == 200, timeout=20)
        for value in ("1_0", "+10", " 1e3", "0x10"):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(f"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n".encode() + b"0" * 10)
            assert s.recv(100).startswith(b"HTTP/1.0 400"), value
            s.close()
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.0 400")
        s.close()
    finally:
        for s in stalled:
            s.close()
        r.stop()


def test_the_export_writes_four_digit_years_at_the_ends_of_the_range():
    import datetime

    from openpole.receiver.export import stamp

    utc = datetime.timezone.utc
    assert stamp(datetime.datetime(1, 1, 1, tzinfo=utc)) == "0001/01/01 00:00:00"
    assert stamp(datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=utc)) == "9999/12/31 23:59:59"
