"""Upstream batches: SenML-CBOR records (RFC 8428) in an envelope with a batch id
(sensor_specs/upstream_batch.cddl). The receiver de-duplicates on the batch id and on a message's
(pole, node, boot, seq), so a batch re-sent after a lost acknowledgement is harmless."""

import math
import os
import re
import struct
import time

import cbor2

from openpole.spec.registry import REGISTRY

from . import node_message

# SenML CBOR labels (RFC 8428 table 4) and openpole's extension labels.
BN, BT, N, U, V, T = -2, -3, 0, 1, 2, 6
VERSION = 1


def new_batch_id():
    """16 random bytes: unique without coordination between poles."""
    return os.urandom(16)


def _head(major, n):
    """A CBOR item head (major type, argument)."""
    if n < 24:
        return bytes((major << 5 | n,))
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes((major << 5 | info,)) + n.to_bytes(size, "big")
    raise ValueError("count too large")


_READING = {}  # registry key -> the CBOR of `n: name, u: unit, v:` (the value follows)
_OPEN = {}  # (pole, node) -> the CBOR of `bn: "urn:openpole:<pole>:<node>:", bt:` (the time follows)
_OPEN_MAX = 4096  # node ids a pole keeps the head of; a flood of made-up ones is encoded each time
_F64 = struct.Struct(">Bd").pack
_U8, _U16, _U32, _U64 = (struct.Struct(f">B{c}").pack for c in "BHIQ")
_TINY = [bytes((n,)) for n in range(24)]


def cbor_uint(n):
    """A CBOR unsigned integer, shortest form (RFC 8949 section 3)."""
    if n < 24:
        return _TINY[n]
    if n < 0x100:
        return _U8(0x18, n)
    if n < 0x10000:
        return _U16(0x19, n)
    if n < 0x100000000:
        return _U32(0x1A, n)
    return _U64(0x1B, n)


_MAP = [bytes((0xA0 | n,)) for n in range(24)]  # the head of a map of n pairs


def senml_records(pole, msg, receive_ns, time_quality=0):
    """The SenML records for one node message, encoded once at ingest: (count, CBOR items).

    The first record opens the message: bn, bt (the pole's receive time) and the message's fields
    (boot, seq, rt, nc, tq); every record's t is its reading's age, as a negative offset from bt."""
    if not msg.readings:
        return 0, b""
    head = _OPEN.get((pole, msg.node))
    if head is None:
        head = b"\x21" + cbor2.dumps(f"urn:openpole:{pole}:{msg.node}:") + b"\x22"
        if len(_OPEN) < _OPEN_MAX:
            _OPEN[(pole, msg.node)] = head
    clock = msg.clock_ms
    out = [b"", head, _F64(0xFB, receive_ns / 1e9), b"\x64boot", cbor_uint(msg.boot), b"\x63seq", cbor_uint(msg.seq),
           b"\x62rt", _U64(0x1B, receive_ns)]
    first = 8  # the first record's pairs: bn, bt, boot, seq, rt, and n, u, v (at most 12 in all)
    if clock is not None:
        out += (b"\x62nc", cbor_uint(clock))
        first += 1
    if time_quality:
        out += (b"\x62tq", cbor_uint(time_quality))
        first += 1
    age_of, t = None, b""
    for key, _, value, age, flags in msg.readings:
        if first:
            out[0] = _MAP[first + (age != 0) + (flags != 0)]
            first = 0
        else:
            out.append(_MAP[3 + (age != 0) + (flags != 0)])
        prefix = _READING.get(key)
        if prefix is None:
            q = REGISTRY.by_key[key]
            prefix = _READING[key] = b"\x00" + cbor2.dumps(q.name) + b"\x01" + cbor2.dumps(q.unit) + b"\x02"
        out += (prefix, _F64(0xFB, value) if type(value) is float else cbor2.dumps(value))
        if age:
            if age != age_of:  # a sample's readings share their age
                age_of, t = age, b"\x06" + _F64(0xFB, -age / 1000)
            out.append(t)
        if flags:
            out += (b"\x62fl", cbor_uint(flags))
    return len(msg.readings), b"".join(out)


def encode(batch_id, pole, blobs, records, created_ns=None, minutes=()):
    """An upstream batch from pre-encoded record blobs holding `records` records in all, with the
    per-minute aggregates that closed since the last batch."""
    created_ns = created_ns or time.time_ns()
    out = bytearray(b"\xa6" if minutes else b"\xa5")
    out += b"\x00\x01\x01"
    out += cbor2.dumps(batch_id)
    out += b"\x02" + cbor2.dumps(pole)
    out += b"\x03" + cbor2.dumps(created_ns)
    out += b"\x04" + _head(4, records)
    for b in blobs:
        out += b
    if minutes:
        out += b"\x05" + cbor2.dumps([list(m) for m in minutes])
    return bytes(out)


POLE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # it names files and URL paths downstream
# The ranges a decoded batch keeps to (sensor_specs/upstream_batch.cddl), so that whatever a receiver
# accepts it can store and read back: SQLite and PostgreSQL hold signed 64-bit integers, the city a
# record's flags in an int4, and Python's datetime (the receiver's export, the city's loaders) the
# years 1 to 9999 only.
INT64_MAX = 2**63 - 1
FLAGS_MAX = 2**31 - 1
MAX_INT = node_message.MAX_INT  # the integers a SenML reader's double holds exactly
TIME_QUALITIES = range(4)  # synchronised, unsynchronised, implausible, sampled before a node reset
TIME_MIN_S, TIME_MAX_S = -62_135_596_800.0, 253_402_300_799.0  # 0001-01-01 .. 9999-12-31 23:59:59 UTC
# Quantity names as the registry makes them (tools/spec/model.py NAME_RE) and unit ids as short as
# units.toml's: a receiver's and the city's indexes hold them, and a CSV export writes them.
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
UNIT_MAX = 32


def _texts(name, unit, seen):
    """A record's name and unit checked once per batch (a batch repeats the same few pairs)."""
    if (name, unit) in seen:
        return
    if not NAME_RE.match(name):
        raise ValueError(f"quantity name {name[:40]!r}: 1-64 of a-z, 0-9 and '_', a letter first")
    if not 0 < len(unit) <= UNIT_MAX or not unit.isprintable():
        raise ValueError(f"unit {unit[:40]!r}: 1-{UNIT_MAX} printable characters")
    seen.add((name, unit))


def _unsigned(v, what, top=INT64_MAX):
    """v when it is an unsigned integer up to top; ValueError naming the field otherwise."""
    if type(v) is not int or not 0 <= v <= top:
        raise ValueError(f"{what} must be an unsigned integer up to {top}, not {_kind(v)}")
    return v


def _number(v, what):
    """v when it is a finite number SenML's doubles hold; ValueError naming the field otherwise."""
    kind = type(v)
    if (kind is float and math.isfinite(v)) or (kind is int and -MAX_INT <= v <= MAX_INT):
        return v
    raise ValueError(f"{what} must be a finite number, not {_kind(v)}")


def _kind(v):
    """What a bad value was, in a few words: never its text, which may be megabytes (or a bignum)."""
    if type(v) is int:
        return f"an integer of {v.bit_length()} bits" if v >= 0 else "a negative integer"
    if type(v) is float:
        return f"the float {v!r}"
    return "missing" if v is None else type(v).__name__


def _time(t, what):
    if not TIME_MIN_S <= t <= TIME_MAX_S:
        raise ValueError(f"{what} {t:.4g} s is outside the years 1 to 9999")
    return t


def decode_messages(data, max_size=8 * 1024 * 1024):
    """bytes -> (batch_id, pole, messages, minutes); ValueError on anything malformed.

    A message is a record with a base name and the records after it, up to the next base name:
    (pole, node, boot, seq, node_clock_ms, [(name, unit, value, time, flags, time_quality, receive_ns)])."""
    if len(data) > max_size:
        raise ValueError(f"batch of {len(data)} bytes is over {max_size}")
    try:
        env = cbor2.loads(data, max_depth=8)
    except Exception as e:
        raise ValueError(f"not CBOR: {str(e)[:120]}") from None
    if not isinstance(env, dict) or env.get(0) != VERSION or type(env.get(0)) is not int:
        raise ValueError("not an openpole upstream batch v1")
    batch_id, pole, pack = env.get(1), env.get(2), env.get(4)
    if not isinstance(batch_id, bytes) or len(batch_id) != 16 or not isinstance(pole, str) or not isinstance(pack, list):
        raise ValueError("batch needs a 16-byte id, a pole id and a record list")
    if not POLE_ID.fullmatch(pole):
        raise ValueError(f"pole id {pole[:80]!r}: 1-64 of a-z, A-Z, 0-9, '.', '_' and '-'")
    msgs = []
    bt, cur, seen = 0.0, None, set()
    for rec in pack:
        if type(rec) is not dict:
            raise ValueError("a SenML record must be a map")
        b = rec.get(BN)
        if b is not None:  # a message's first record: the message's fields are here
            parts = b.split(":") if type(b) is str else ()
            if len(parts) != 5 or parts[0] != "urn" or parts[1] != "openpole" or parts[4]:
                shown = repr(b[:80]) if type(b) is str else _kind(b)
                raise ValueError(f"base name {shown} is not urn:openpole:<pole>:<node>:")
            if parts[2] != pole:  # a pole's signature covers its own data only
                raise ValueError(f"base name of pole {parts[2][:64]!r} in a batch of pole {pole!r}")
            if not node_message.NODE_ID_RE.match(parts[3]):
                raise ValueError(f"node id {parts[3][:40]!r} in the base name: 1-32 of a-z, 0-9, '_' and '-'")
            boot, seq = _unsigned(rec.get("boot"), "boot"), _unsigned(rec.get("seq"), "seq")
            bt = _time(_number(rec.get(BT, bt), "bt"), "bt")
            nc = rec.get("nc")
            if nc is not None:
                _unsigned(nc, "nc")
            tq, rt = _unsigned(rec.get("tq", 0), "tq", TIME_QUALITIES[-1]), _unsigned(rec.get("rt"), "rt")
            cur = []
            msgs.append((parts[2], parts[3], boot, seq, nc, cur))
        elif cur is None:
            raise ValueError("the first SenML record needs a base name")
        name, unit, value, t = rec.get(N), rec.get(U), rec.get(V), rec.get(T, 0)
        if type(name) is not str or type(unit) is not str or type(value) not in (int, float) or type(t) not in (int, float):
            raise ValueError("a SenML record needs a name, a unit, a numeric value and a numeric time")
        _texts(name, unit, seen)
        _number(value, f"the value of {name[:40]!r}")
        at = _time(bt + _number(t, "t"), "a record's time")
        cur.append((name, unit, value, at, _unsigned(rec.get("fl", 0), "fl", FLAGS_MAX), tq, rt))
    minutes = env.get(5, [])
    if not isinstance(minutes, (list, tuple)) or not all(isinstance(m, (list, tuple)) and len(m) == 7 for m in minutes):
        raise ValueError("aggregates must be [node, quantity, minute, count, mean, min, max] rows")
    for node, quantity, start, count, *stats in minutes:
        if type(node) is not str or not node_message.NODE_ID_RE.match(node) or type(quantity) is not str \
                or not NAME_RE.match(quantity):
            raise ValueError("an aggregate needs a node id and a quantity name")
        # A pole whose clock is still near 1970 dates a minute before it: an integer either way.
        if type(start) is not int or not -INT64_MAX <= start <= INT64_MAX:
            raise ValueError(f"an aggregate's minute must be an integer, not {_kind(start)}")
        _unsigned(count, "an aggregate's count")
        for v in stats:
            _number(v, "an aggregate's mean, min and max")
    return batch_id, pole, msgs, [tuple(m) for m in minutes]


def open_signed(data, keys=None, max_size=8 * 1024 * 1024):
    """A batch as an upstream receives it, signed (COSE_Mac0) or not: (body, (batch_id, pole,
    messages, minutes)), body being the batch itself, unwrapped and verified (what a receiver keeps).
    keys: {pole: key}; with keys, only batches a known pole signed pass, and the signer must be the
    pole the batch names. ValueError with the reason otherwise (sign.Unauthorized for a matter of keys)."""
    from . import sign

    body, signer = sign.unwrap(data, keys or {})
    if keys and signer is None:
        raise sign.Unauthorized("this upstream takes signed batches only")
    decoded = decode_messages(body, max_size)
    if signer is not None and signer != decoded[1]:
        raise sign.Unauthorized(f"batch from pole {decoded[1]!r} signed by {signer[:64]!r}")
    return body, decoded


def decode_signed(data, keys=None, max_size=8 * 1024 * 1024):
    """open_signed's decoded batch: (batch_id, pole, messages, minutes), for the city's loaders (the
    HTTP receiver calls open_signed: it keeps the body)."""
    return open_signed(data, keys, max_size)[1]


RECORD_FIELDS = ("pole", "node", "boot", "seq", "node_clock_ms", "name", "unit", "value", "time", "flags", "time_quality",
                 "receive_ns")


def records(messages):
    """Decoded messages -> one flat dict per reading (RECORD_FIELDS)."""
    return [dict(zip(RECORD_FIELDS, m[:5] + r)) for m in messages for r in m[5]]


def decode(data, max_size=8 * 1024 * 1024):
    """bytes -> (batch_id, pole, [flat records], [minute aggregates]); ValueError on anything malformed."""
    batch_id, pole, msgs, minutes = decode_messages(data, max_size)
    return batch_id, pole, records(msgs), minutes
