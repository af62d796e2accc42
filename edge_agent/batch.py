"""Upstream batches: SenML-CBOR records (RFC 8428) in an envelope with a batch id
(sensor_specs/upstream_batch.cddl). The receiver de-duplicates on the batch id and on a message's
(pole, node, boot, seq), so a batch re-sent after a lost acknowledgement is harmless."""

import os
import time

import cbor2

from openpole.spec.registry import REGISTRY

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


def senml_records(pole, msg, receive_ns, time_quality=0):
    """The SenML records for one node message, encoded once at ingest: (count, CBOR items)."""
    recs = []
    for r in msg.readings:
        q = REGISTRY.by_key[r.key]
        rec = {N: q.name, U: q.unit, V: r.value, T: (receive_ns - r.age_ms * 1_000_000) / 1e9,
               "boot": msg.boot, "seq": msg.seq, "rt": receive_ns}
        if not recs:
            rec[BN] = f"urn:openpole:{pole}:{msg.node}:"
            if msg.clock_ms is not None:
                rec["nc"] = msg.clock_ms
        if r.flags:
            rec["fl"] = r.flags
        if time_quality:
            rec["tq"] = time_quality
        recs.append(rec)
    data = cbor2.dumps(recs)
    return len(recs), data[len(_head(4, len(recs))):]


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


def decode_messages(data, max_size=8 * 1024 * 1024):
    """bytes -> (batch_id, pole, messages, minutes); ValueError on anything malformed.

    A message is a run of records with the same base name, boot and seq: (pole, node, boot, seq,
    node_clock_ms, [(name, unit, value, time, flags, time_quality, receive_ns)])."""
    if len(data) > max_size:
        raise ValueError(f"batch of {len(data)} bytes is over {max_size}")
    try:
        env = cbor2.loads(data, max_depth=8)
    except Exception as e:
        raise ValueError(f"not CBOR: {e}") from None
    if not isinstance(env, dict) or env.get(0) != VERSION:
        raise ValueError("not an openpole upstream batch v1")
    batch_id, pole, pack = env.get(1), env.get(2), env.get(4)
    if not isinstance(batch_id, bytes) or len(batch_id) != 16 or not isinstance(pole, str) or not isinstance(pack, list):
        raise ValueError("batch needs a 16-byte id, a pole id and a record list")
    msgs = []
    bn, where, bt, nc, key, cur = None, None, 0.0, None, None, None
    for rec in pack:
        if type(rec) is not dict:
            raise ValueError("a SenML record must be a map")
        b = rec.get(BN)
        if b is not None:  # a new message's first record: its node clock, if any, starts here
            if b != bn:
                parts = b.split(":") if type(b) is str else ()
                if len(parts) != 5 or parts[0] != "urn" or parts[1] != "openpole" or parts[4]:
                    raise ValueError(f"base name {b!r} is not urn:openpole:<pole>:<node>:")
                bn, where = b, (parts[2], parts[3])
            nc = rec.get("nc")
        elif where is None:
            raise ValueError("the first SenML record needs a base name")
        bt = rec.get(BT, bt)
        name, value, t, boot, seq = rec.get(N), rec.get(V), rec.get(T, 0.0), rec.get("boot"), rec.get("seq")
        if type(name) is not str or type(value) not in (int, float) or type(t) not in (int, float) or type(bt) not in (int, float):
            raise ValueError("a SenML record needs a name, a numeric value and a numeric time")
        if type(boot) is not int or type(seq) is not int:
            raise ValueError("an openpole record needs integer boot and seq")
        if key is None or key[0] is not where or key[1] != boot or key[2] != seq:
            key, cur = (where, boot, seq), []
            msgs.append((where[0], where[1], boot, seq, nc, cur))
        cur.append((name, rec.get(U), value, bt + t, rec.get("fl", 0), rec.get("tq", 0), rec.get("rt")))
    minutes = env.get(5, [])
    if not isinstance(minutes, (list, tuple)) or not all(
        isinstance(m, (list, tuple)) and len(m) == 7 and isinstance(m[0], str) and isinstance(m[1], str) for m in minutes
    ):
        raise ValueError("aggregates must be [node, quantity, minute, count, mean, min, max] rows")
    return batch_id, pole, msgs, [tuple(m) for m in minutes]


RECORD_FIELDS = ("pole", "node", "boot", "seq", "node_clock_ms", "name", "unit", "value", "time", "flags", "time_quality",
                 "receive_ns")


def records(messages):
    """Decoded messages -> one flat dict per reading (RECORD_FIELDS)."""
    return [dict(zip(RECORD_FIELDS, m[:5] + r)) for m in messages for r in m[5]]


def decode(data, max_size=8 * 1024 * 1024):
    """bytes -> (batch_id, pole, [flat records], [minute aggregates]); ValueError on anything malformed."""
    batch_id, pole, msgs, minutes = decode_messages(data, max_size)
    return batch_id, pole, records(msgs), minutes
