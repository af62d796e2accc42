"""The city loader's boundary: whatever a pole with a valid key signs (extreme integers and floats,
times no timestamp holds, wrong types, readings the registry cannot key, arbitrary CBOR) goes into
Loader.store() against a real PostgreSQL, and through a real nats-server into `openpole city load`.
Nothing crashes; each bad batch is rejected with its reason; the good batches around it are stored
exactly once, and a stored reading reads back as it was sent."""

import collections
import datetime
import json
import math
import subprocess
import sys
import time

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pgcluster import PgServer

from openpole.spec.registry import REGISTRY
from openpole.wire import batch, node_message, sign

POLE, KEY = "p1", bytes(range(32))
UNITS_OF = {q.name: q.unit for q in REGISTRY.by_key.values()}  # a reading the registry keys: its name and unit
NOW = time.time()
UTC = datetime.timezone.utc
OK, ODD, BAD = 0, 1, 2  # stored; stored or rejected (representable, but odd: a decoder may refuse it); rejected
FIRST_S, LAST_S = -62135596800, 253402300800  # 0001-01-01 and 10000-01-01, UTC: what a timestamp holds
INT8, INT4, INT2 = 1 << 63, 1 << 31, 1 << 15


def openpole(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "openpole", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def pg():
    from openpole.city import db

    server = PgServer()
    db.migrate(server.dsn)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def loader(pg):
    from openpole.city import load

    loader = load.Loader(pg.dsn, {POLE: KEY}, name="boundary")
    yield loader
    loader.close()


def good_batch(node, seqs=range(3)):
    """A batch as the edge agent sends it: (payload, readings), 3 readings a message."""
    blobs, n = [], 0
    for s in seqs:
        m = node_message.decode(cbor2.dumps({0: 1, 1: node, 2: 1, 3: s, 4: [[s, {1: 20.0 + s, 2: 50.0, 3: 1000.0}]]}))
        k, senml = batch.senml_records(POLE, m, time.time_ns())
        blobs.append(senml)
        n += k
    return sign.sign(batch.encode(batch.new_batch_id(), POLE, blobs, n), POLE, KEY), 3 * len(seqs)


def records_batch(records, pole=POLE, key=KEY):
    """Hand-made SenML records (maps, as cbor2 writes them) in a signed batch: shapes the encoder refuses."""
    bid = batch.new_batch_id()
    return bid, sign.sign(batch.encode(bid, pole, [cbor2.dumps(r) for r in records], len(records)), pole, key)


def message(node, boot, seq, readings, bt=None, tq=None, pole=POLE):
    """One node message's records: readings [(name, unit, value, t, flags)], None leaving a label out."""
    out = []
    for i, (name, unit, value, t, flags) in enumerate(readings):
        rec = {0: name, 2: value, 6: t}
        if unit is not None:
            rec[1] = unit
        if flags is not None:
            rec["fl"] = flags
        if i == 0:
            rec.update({-2: f"urn:openpole:{pole}:{node}:", -3: NOW if bt is None else bt, "boot": boot, "seq": seq,
                        "rt": time.time_ns()})
            if tq is not None:
                rec["tq"] = tq
        out.append(rec)
    return out


NOT_INTS = [2**63, 2**64 - 1, -(2**63) - 1, 10**30, -(10**30), "1", 1.5, True, None]
# One field's values the loader must refuse whatever the rest of the batch holds ...
BAD_FIELDS = {
    "node": ["a\x00b", "x" * 257, "a:b"],  # a node id with a colon is another base name
    "name": ["a\x00b", "x" * 257, 1, b"n1", [1], 1.5, None],
    "unit": ["a\x00b", "x" * 257, 1, b"Cel", ["Cel"], 1.5],
    "value": [math.nan, math.inf, -math.inf, 2**1024, -(10**400), "21.5", None, True, [1.0], {2: 1.0}, b"\x01"],
    "boot": NOT_INTS,
    "seq": NOT_INTS,
    "flags": [INT4, -INT4 - 1, 2**64, "1", 1.5, True],
    "tq": [INT2, -INT2 - 1, 2**32, "1", 1.5, True],
    "pole": ["p2", "p1 "],
    "bt": [1e20, -1e20, 2**64, math.nan, "now"],
    "t": [-1e11, 1e20, -(10**14), math.inf, math.nan, 2**40, 2**64, -(2**1030), "-1"],  # -1e11 s: an age of 10^14 ms
}
# ... and values a timestamp, a double, an int8/int4/int2 or text holds, odd as they are (a decoder
# may still refuse them: either way the batch is stored exactly as sent, or rejected with a reason).
ODD_FIELDS = {
    "node": ["\u0443\u0437\u0435\u043b", "", "x" * 256, "\U0001f4a9" * 256, "N 1.x"],
    "name": ["pm2_5", "\u0443\u0437\u0435\u043b", "", "x" * 256, "\U0001f4a9" * 256],
    "unit": [None, "", "\U0001f4a9" * 256],
    "value": [2**63 - 1, 2**63, 2**64 - 1, -(2**63), -0.0, 1e308, -1e308, 5e-324, 2**1023, 0],
    "boot": [0, -1, 2**63 - 1, -(2**63)],
    "seq": [0, -1, 2**63 - 1, -(2**63)],
    "flags": [-1, INT4 - 1, -INT4],
    "tq": [-1, INT2 - 1, -INT2],
    "bt": [0, 1e10, FIRST_S + 1, LAST_S - 2, 946684800.5, 2**31],
    "t": [-1e9, 3e10, -0.0, 2**33],
}
PLAIN = {"node": "n1", "boot": 1, "seq": 1, "bt": None, "tq": None, "pole": POLE, "name": "temperature", "unit": "Cel",
         "value": 21.5, "t": 0, "flags": None}


def field(ok, odd, bad, judge=None):
    """A field's values, tagged with what the loader must do with them: mostly plain, now and then
    odd or bad (a batch holds some 20 fields). judge(value, tag): the tag when content decides it."""
    def tag(c):
        return lambda v: (v, c if judge is None else judge(v, c))
    return st.integers(0, 99).flatmap(lambda i: ok.map(tag(OK)) if i < 90 else odd.map(tag(ODD)) if i < 97 else
                                      bad.map(tag(BAD)))


def _text(s, c):
    return BAD if type(s) is not str or "\x00" in s or len(s) > 256 else c


def _fields(kind, ok, odd=st.nothing(), judge=None):
    return field(ok, odd | st.sampled_from(ODD_FIELDS[kind]), st.sampled_from(BAD_FIELDS[kind]), judge)


ODD_TEXT = st.text(max_size=300)
NODES = _fields("node", st.sampled_from(["n1", "n2"]), ODD_TEXT.filter(lambda s: ":" not in s),
                judge=lambda s, c: BAD if ":" in s else _text(s, c))
NAMES = _fields("name", st.sampled_from(["temperature", "humidity"]), ODD_TEXT, judge=_text)
UNITS = _fields("unit", st.sampled_from(["Cel", "%RH"]), ODD_TEXT, judge=lambda u, c: c if u is None else _text(u, c))
VALUES = _fields("value", st.sampled_from([21.5, 0, 1013.25]),
                 st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**1023), 2**1023))  # doubles hold them
BOOTS = _fields("boot", st.integers(0, 2**31), st.integers(-(2**63), 2**63 - 1))
SEQS = _fields("seq", st.integers(0, 2**31), st.integers(-(2**63), 2**63 - 1))
FLAGS = _fields("flags", st.sampled_from([None, 0]), st.integers(-INT4, INT4 - 1))
TQS = _fields("tq", st.sampled_from([None, 0, 1]), st.integers(-INT2, INT2 - 1))
POLES = field(st.just(POLE), st.just(POLE), st.sampled_from(BAD_FIELDS["pole"]))
# Times: the class is that of the sum the decoder makes (time_class); these only choose how far to go.
BASE_TIMES = _fields("bt", st.none(), st.floats(allow_nan=False, allow_infinity=False))
OFFSETS = _fields("t", st.sampled_from([-0.5, 0, -10.0, -3600]), st.floats() | st.integers(-(2**70), 2**70))


def stored_row(f):
    """A plain message's reading with the fields f, as the readings table holds it (None: no timestamp holds its time)."""
    s = (NOW if f["bt"] is None else f["bt"]) + f["t"]
    try:
        when = datetime.datetime.fromtimestamp(s, UTC)
    except (OverflowError, ValueError):
        when = None  # at an edge: rounded past it, the loader rejects the batch too
    return (f["node"], f["boot"], f["seq"], f["name"], f["unit"], float(f["value"]), when, f["flags"] or 0, f["tq"] or 0)


def plain_message(**change):
    """A one-reading message with PLAIN's fields but those changed: (records, its row as stored)."""
    f = {**PLAIN, **change}
    records = message(f["node"], f["boot"], f["seq"], [(f["name"], f["unit"], f["value"], f["t"], f["flags"])],
                      bt=f["bt"], tq=f["tq"], pole=f["pole"])
    return records, f


def time_class(bt, t):
    """What the loader must do with a record at bt + t (the decoder's sum): whether a timestamp holds it."""
    bt = NOW if bt is None else bt
    if type(bt) not in (int, float) or type(t) not in (int, float):
        return BAD
    try:
        s = bt + t
    except OverflowError:
        return BAD
    if s != s or s in (math.inf, -math.inf):
        return BAD
    if FIRST_S + 1 <= s < LAST_S - 1:
        return OK if abs(s - NOW) < 86400 else ODD
    return ODD if FIRST_S - 1 <= s < LAST_S + 1 else BAD  # the edges: a microsecond's rounding decides


@st.composite
def odd_batches(draw):
    """(records, class, expected rows) for one batch of 1-2 messages of 1-2 readings, each field drawn
    from its extremes; the expected rows are those of a stored batch (each sample's first copy)."""
    records, worst, rows, seen = [], OK, [], set()
    for _ in range(draw(st.integers(1, 2))):
        (node, c_node), (boot, c_boot), (seq, c_seq) = draw(NODES), draw(BOOTS), draw(SEQS)
        (bt, _), (tq, c_tq), (pole, c_pole) = draw(BASE_TIMES), draw(TQS), draw(POLES)
        readings, message_rows, at = [], [], set()
        for _ in range(draw(st.integers(1, 2))):
            (name, c_n), (unit, c_u), (value, c_v), (flags, c_f) = draw(NAMES), draw(UNITS), draw(VALUES), draw(FLAGS)
            t = draw(OFFSETS)[0]
            c_t = time_class(bt, t)
            readings.append((name, unit, value, t, flags))
            # A sample holds a registry quantity in its unit, once per time.
            c_key = OK if type(name) is str and UNITS_OF.get(name, ()) == unit else BAD
            if c_t < BAD and c_key < BAD:
                moment = (name, (NOW if bt is None else bt) + t)
                c_key = BAD if moment in at else OK
                at.add(moment)
            worst = max(worst, c_n, c_u, c_v, c_f, c_t, c_key)
            if worst < BAD:
                message_rows.append(stored_row({"node": node, "boot": boot, "seq": seq, "name": name, "unit": unit,
                                                "value": value, "bt": bt, "t": t, "flags": flags, "tq": tq}))
        worst = max(worst, c_node, c_boot, c_seq, c_tq, c_pole)
        records += message(node, boot, seq, readings, bt=bt, tq=tq, pole=pole)
        if worst < BAD:  # a sample (node, boot, seq, time) seen in an earlier message: its first copy only
            rows += [r for r in message_rows if (r[0], r[1], r[2], r[6]) not in seen]
            seen |= {(r[0], r[1], r[2], r[6]) for r in message_rows}
    return records, worst, rows


CBOR_LEAVES = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
               | st.binary(max_size=8) | st.sampled_from([2**63, 2**64 - 1, -(2**64), 10**40, -0.0, 1e308, 1e20, 2**1030]))


def cbor_values():
    return st.recursive(CBOR_LEAVES, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.integers(-3, 6) | st.sampled_from(["boot", "seq", "tq", "fl", "rt"]),
                                          inner, max_size=6), max_leaves=24)


@st.composite
def arbitrary_batches(draw):
    """(payload, class): arbitrary CBOR as a signed body, as an envelope's records (the first one
    perhaps a message's opening with any values in it), or a bad signature."""
    kind = draw(st.sampled_from(["body", "records", "records", "bytes", "wrong key"]))
    bid = batch.new_batch_id()
    if kind == "body":
        body = cbor2.dumps(draw(cbor_values()))
    elif kind == "bytes":
        body = draw(st.binary(max_size=64))
    else:
        recs = draw(st.lists(cbor_values(), max_size=3))
        if recs and draw(st.booleans()):
            opening = {-2: "urn:openpole:p1:n1:", "boot": 1, "seq": 1, 0: "temperature", 2: 21.5}
            for label in draw(st.lists(st.sampled_from([-3, 1, 2, 6, "boot", "seq", "tq", "fl"]), max_size=4)):
                opening[label] = draw(CBOR_LEAVES)
            recs[0] = {**(recs[0] if isinstance(recs[0], dict) else {}), **opening}
        body = batch.encode(bid, POLE, [cbor2.dumps(r) for r in recs], len(recs))
    return sign.sign(body, POLE, bytes(32) if kind == "wrong key" else KEY), BAD if kind == "wrong key" else ODD


def _fresh(pg):
    import psycopg

    with psycopg.connect(pg.dsn) as conn:
        # things and series stay: the module's loader knows their ids
        for table in ("samples", "aggregate_queue", "rejected", "dead_letters", "loaders"):
            conn.execute(f"DELETE FROM {table}")  # a few rows: quicker than TRUNCATE's lock on every partition


def _store_between_good_ones(pg, loader, payload):
    """The group [good, payload, good], stored twice (a redelivery): -> (stored readings of payload's
    batch, its rejection reason or None). The good ones must be stored once, whatever payload is."""
    import psycopg

    _fresh(pg)
    (a, na), (b, nb) = good_batch("good-a"), good_batch("good-b")
    items = [("openpole.batches.p1", a, None), ("openpole.batches.p1", payload, None), ("openpole.batches.p1", b, None)]
    counts = loader.store(items)
    with psycopg.connect(pg.dsn) as conn:
        conn.execute("SET TimeZone TO 'UTC'")  # year 1 in a zone west of Greenwich is a year 0 Python has not
        reasons = [r for (r,) in conn.execute("SELECT reason FROM rejected WHERE payload = %s", (payload,))]
        good = dict(conn.execute("SELECT node, count(*) FROM readings WHERE node IN ('good-a', 'good-b') GROUP BY node"))
        assert good == {"good-a": na, "good-b": nb}, good
        assert counts["rejected"] == len(reasons) <= 1 and counts["batches"] == 3 - len(reasons), (counts, reasons)
        assert all(reasons) and conn.execute("SELECT count(*) FROM rejected").fetchone()[0] == len(reasons)
        rows = conn.execute("SELECT r.node, r.boot, r.seq, r.quantity, r.unit, r.value, r.time, r.flags, r.time_quality "
                            "FROM readings r WHERE r.node NOT IN ('good-a', 'good-b')").fetchall()
        total = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
    again = loader.store(items)  # the stream sends the group again: nothing is stored twice
    assert again["records_unique"] == 0 and again["rejected"] == len(reasons), again
    with psycopg.connect(pg.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == total
    return rows, reasons[0] if reasons else None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=odd_batches())
def test_extreme_fields_are_stored_exactly_or_the_batch_is_rejected_with_a_reason(pg, loader, case):
    records, cls, want = case
    _, payload = records_batch(records)
    rows, reason = _store_between_good_ones(pg, loader, payload)
    if cls == BAD:
        assert reason and not rows, (reason, rows)
    elif cls == OK:
        assert reason is None, reason
    if reason is None:  # stored: every reading as it was sent (to the microsecond), each message once
        assert collections.Counter(rows) == collections.Counter(want), (rows, want)


def _case_id(kind, value):
    return f"{kind}={ascii(value)[:24]}"


@pytest.mark.parametrize("kind,value", [(k, v) for k, vs in BAD_FIELDS.items() for v in vs],
                         ids=[_case_id(k, v) for k, vs in BAD_FIELDS.items() for v in vs])
def test_each_extreme_alone_rejects_its_batch_and_the_good_ones_around_it_are_stored(pg, loader, kind, value):
    records, _ = plain_message(**{kind: value})
    rows, reason = _store_between_good_ones(pg, loader, records_batch(records)[1])
    assert reason and not rows, (reason, rows)


@pytest.mark.parametrize("kind,value", [(k, v) for k, vs in ODD_FIELDS.items() for v in vs],
                         ids=[_case_id(k, v) for k, vs in ODD_FIELDS.items() for v in vs])
def test_each_odd_value_a_column_holds_is_stored_as_sent_or_rejected(pg, loader, kind, value):
    records, f = plain_message(**{kind: value})
    rows, reason = _store_between_good_ones(pg, loader, records_batch(records)[1])
    if reason is None:
        assert rows == [stored_row(f)], (rows, stored_row(f))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(case=arbitrary_batches())
def test_arbitrary_cbor_in_a_signed_batch_is_rejected_or_stored_and_never_stops_the_group(pg, loader, case):
    payload, cls = case
    _, reason = _store_between_good_ones(pg, loader, payload)
    if cls == BAD:
        assert reason and "bad signature" in reason, reason


def test_the_issues_cases_are_rejected_with_their_reasons(pg, loader):
    """An age of 10^14 ms and a batch time of 1e20, the cases that once stopped every loader of a
    city, and every field the decoder or the loader refuses: each batch rejected, the reason naming
    the field."""
    cases = {"a record's time -9.8": message("n1", 1, 1, [("temperature", "Cel", 21.5, -1e11, None)]),
             "bt 1e+20 s is outside the years 1 to 9999": message("n1", 1, 2, [("temperature", "Cel", 21.5, 0, None)],
                                                                  bt=1e20),
             "the value of 'temperature' must be a finite number": message("n1", 1, 3, [("temperature", "Cel", math.nan,
                                                                                           0, None)]),
             "boot must be an unsigned integer": message("n1", 2**64, 3, [("temperature", "Cel", 1.0, 0, None)]),
             "fl must be an unsigned integer up to 2147483647": message("n1", 1, 3, [("temperature", "Cel", 1.0, 0,
                                                                                        INT4)]),
             "a SenML record needs a name, a unit": message("n1", 1, 3, [("temperature", 5, 1.0, 0, None)]),
             "tq must be an unsigned integer up to 3": message("n1", 1, 4, [("temperature", "Cel", 1.0, 0, None)],
                                                               tq=INT2),
             "node id 'a\\x00b' in the base name": message("a\x00b", 1, 5, [("temperature", "Cel", 1.0, 0, None)]),
             "base name of pole 'p2' in a batch of pole 'p1'": message("n1", 1, 6, [("temperature", "Cel", 1.0, 0, None)],
                                                                       pole="p2"),
             # what a sample cannot hold: no registry key, another unit, undefined flags, a quantity twice at once
             "node 'n1' boot 1 seq 7: the quantity 'wind' is not in this openpole's registry":
                 message("n1", 1, 7, [("wind", "m/s", 1.0, 0, None)]),
             "node 'n1' boot 1 seq 8, 'temperature': the unit '%RH' is not the registry's, 'Cel'":
                 message("n1", 1, 8, [("temperature", "%RH", 1.0, 0, None)]),
             "node 'n1' boot 1 seq 9, 'humidity': the flags 2 hold bits openpole does not define":
                 message("n1", 1, 9, [("temperature", "Cel", 1.0, 0, 1), ("humidity", "%RH", 1.0, 0, 2)]),
             "node 'n1' boot 1 seq 10, 'temperature': two values at one time in one message":
                 message("n1", 1, 10, [("temperature", "Cel", 1.0, -1, None), ("temperature", "Cel", 2.0, -1, None)])}
    for want, records in cases.items():
        rows, reason = _store_between_good_ones(pg, loader, records_batch(records)[1])
        assert reason and want in reason and not rows, (want, reason)


def test_implausible_times_a_timestamp_holds_wait_in_the_default_partition(pg, loader):
    import psycopg

    times = [datetime.datetime(1990, 5, 1, tzinfo=UTC), datetime.datetime(1, 1, 1, tzinfo=UTC),
             datetime.datetime(5000, 1, 1, tzinfo=UTC), datetime.datetime(9999, 12, 31, 23, 59, tzinfo=UTC)]
    _, payload = records_batch([r for i, t in enumerate(times)
                                for r in message("far", 1, i, [("temperature", "Cel", 1.0, 0, None)], bt=t.timestamp())])
    rows, reason = _store_between_good_ones(pg, loader, payload)
    assert reason is None and sorted(r[6] for r in rows) == sorted(times), (reason, rows)
    with psycopg.connect(pg.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM samples_other s JOIN things t ON t.id = s.thing_id "
                            "WHERE t.node = 'far'").fetchone()[0] == 4


def test_a_batch_postgresql_refuses_after_the_checks_is_rejected_alone(pg):
    """A database whose own constraint refuses a node id every check passes (as a database in
    another encoding refuses characters): the group's write fails, and then each batch is written
    alone, the refused one to `rejected`."""
    import psycopg

    from openpole.city import db, load

    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE strict")
    dsn = pg.dsn.rsplit("/", 1)[0] + "/strict"
    db.migrate(dsn)
    with psycopg.connect(dsn) as conn:
        conn.execute("ALTER TABLE things ADD CONSTRAINT no_refused_nodes CHECK (node <> 'refused')")
    strict = load.Loader(dsn, {POLE: KEY}, name="strict")
    try:
        (a, na), (b, nb) = good_batch("good-a"), good_batch("good-b")
        _, refused = records_batch(message("refused", 1, 1, [("temperature", "Cel", 1.0, 0, None)]))
        counts = strict.store([("s", a, None), ("s", refused, None), ("s", b, None)])
        assert counts["batches"] == 2 and counts["rejected"] == 1 and counts["records_unique"] == na + nb, counts
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == na + nb
            (reason, kept), = conn.execute("SELECT reason, payload FROM rejected").fetchall()
        assert "PostgreSQL refused it" in reason and "no_refused_nodes" in reason and bytes(kept) == refused, reason
    finally:
        strict.close()


def _incompressible(n, seed):
    """n characters of four UTF-8 bytes each that no compression shrinks much (as an index stores them)."""
    import random

    r = random.Random(seed)
    return "".join(chr(r.randrange(0x10000, 0x10FFFF)) for _ in range(n))


def test_the_longest_ids_the_decoder_takes_are_stored(pg, loader):
    """A pole id of 64 characters and a node id of 32: the longest the wire allows."""
    import psycopg

    pole, node = "P" * 64, "n" * 32
    bid = batch.new_batch_id()
    recs = message(node, 1, 1, [("temperature", "Cel", 21.5, 0, None)], pole=pole)
    payload = sign.sign(batch.encode(bid, pole, [cbor2.dumps(r) for r in recs], 1), pole, KEY)
    loader.keys[pole] = KEY
    try:
        counts = loader.store([("s", payload, None)])
    finally:
        del loader.keys[pole]
    assert counts["records_unique"] == 1 and counts["rejected"] == 0, counts
    with psycopg.connect(pg.dsn) as conn:
        assert conn.execute("SELECT value FROM readings WHERE pole = %s AND node = %s", (pole, node)).fetchall() == [(21.5,)]


def test_an_index_row_postgresql_cannot_hold_is_rejected_alone(pg, loader, monkeypatch):
    """Were the checks to let a node id through that is too long for the indexes (PostgreSQL's index
    row limit, which it reports as an OperationalError), its batch is rejected alone: the loader does
    not take it for a lost connection and try it for ever."""
    import re
    import threading

    from openpole.city import samples

    monkeypatch.setattr(samples, "MAX_TEXT", 4000)
    monkeypatch.setattr(node_message, "NODE_ID_RE", re.compile(".+"))  # the wire's check, away
    records, _ = plain_message(node=_incompressible(1500, 4))
    done = []
    t = threading.Thread(target=lambda: done.append(_store_between_good_ones(pg, loader, records_batch(records)[1])),
                         daemon=True)
    t.start()
    t.join(timeout=60)
    assert done, "the loader is still trying the group: it took the refusal for a lost connection"
    rows, reason = done[0]
    assert "PostgreSQL refused it" in reason and "index row" in reason and not rows, reason


def test_poison_batches_between_good_ones_through_nats_and_the_real_loader(pg, tmp_path):
    """Every kind of bad batch between good ones in the stream: `openpole city load` stores the good
    ones once, rejects each bad one with its reason, and leaves nothing pending in the consumer."""
    import psycopg
    from natscluster import NatsCluster

    from openpole.edge_agent.sinks import NatsSink

    _fresh(pg)
    lone = NatsCluster(tmp_path / "nats", 1)
    keys = tmp_path / "poles.toml"
    keys.write_text(f'{POLE} = "{KEY.hex()}"\n')
    try:
        assert openpole("city", "init", "--nats", lone.url, "--replicas", "1").returncode == 0
        one = [("temperature", "Cel", 1.0, 0, None)]
        poison = [records_batch(message("n1", 1, 1, [("temperature", "Cel", 21.5, -1e11, None)]))[1],
                  records_batch(message("n1", 1, 2, one, bt=1e20))[1],
                  records_batch(message("n1", 1, 3, [("temperature", "Cel", math.nan, 0, None)]))[1],
                  records_batch(message("n1", 2**64, 4, one))[1],
                  records_batch(message("n1", 1, 5, [("temperature", None, 10**400, 0, None)]))[1],
                  records_batch(message("n\x00", 1, 6, one))[1],
                  records_batch(message("n1", 1, 7, [("x" * 300, "Cel", 1.0, 0, None)]))[1],
                  records_batch(message("n1", 1, 8, [("temperature", "Cel", 1.0, 0, 2**40)], tq=-(2**20)))[1],
                  sign.sign(cbor2.dumps({0: 1, 1: [[[1e20]]], 4: {"x": float("nan")}}), POLE, KEY),
                  records_batch([{-2: "urn:openpole:p1:n1:", "boot": 1, "seq": 9, 0: "temperature", 2: 1.0,
                                  6: 2**1030}])[1],
                  records_batch(message("n1", 1, 10, [("temperature", "%RH", 1.0, 0, None)]))[1],
                  records_batch(message("n1", 1, 11, [("temperature", "Cel", 1.0, 0, 2)]))[1]]
        sink = NatsSink(lone.url, pole=POLE)
        want = 0
        for i, p in enumerate(poison):
            payload, n = good_batch(f"good-{i}")
            sink.send(batch.new_batch_id(), payload)
            sink.send(batch.new_batch_id(), p)
            want += n
        payload, n = good_batch("good-last")
        sink.send(batch.new_batch_id(), payload)
        want += n
        r = openpole("city", "load", "--nats", lone.url, "--db", pg.dsn, "--keys", keys, "--group", "4",
                     "--exit-when-idle", "2", timeout=180)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
        st = json.loads(openpole("city", "stats", "--db", pg.dsn, "--json").stdout)
        assert st["unique"] == want and st["batches_rejected"] == len(poison), st
        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == want
            kept = conn.execute("SELECT reason, payload FROM rejected").fetchall()
        assert {bytes(p) for _, p in kept} == set(poison) and all(reason for reason, _ in kept)
        status = json.loads(openpole("city", "status", "--nats", lone.url, "--db", pg.dsn, "--json").stdout)
        (c,) = [c for c in status["consumers"] if c["name"] == "loaders"]
        assert c["pending"] == 0 and c["in_flight"] == 0 and c["redelivered"] == 0, c
    finally:
        lone.stop()
