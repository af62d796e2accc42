"""Upstream batches: SenML-CBOR records (RFC 8428) in an envelope with a batch id
(sensor_specs/upstream_batch.cddl). The receiver de-duplicates on the batch id and on
(node, boot, seq, name), so a batch re-sent after a lost acknowledgement is harmless."""

import os
import time

import cbor2

from openpole.spec.registry import REGISTRY

# SenML CBOR labels (RFC 8428 table 4) and openpole's extension labels.
BN, BT, N, U, V, T = -2, -3, 0, 1, 2, 6
EXT = {"boot": "boot", "seq": "seq", "rt": "rt", "fl": "fl", "tq": "tq"}
VERSION = 1


def new_batch_id():
    """16 random bytes: unique without coordination between poles."""
    return os.urandom(16)


def encode(batch_id, pole, records, created_ns=None):
    """records: store rows -> bytes of one upstream batch."""
    created_ns = created_ns or time.time_ns()
    pack = []
    base_name = None
    base_time = records[0]["sample_ns"] / 1e9 if records else 0.0
    for i, r in enumerate(records):
        q = REGISTRY.by_key[r["key"]]
        rec = {}
        bn = f"urn:openpole:{pole}:{r['node']}:"
        if bn != base_name:
            rec[BN] = base_name = bn
        if i == 0:
            rec[BT] = base_time
        rec[N] = q.name
        rec[U] = q.unit
        rec[V] = r["value"]
        rec[T] = r["sample_ns"] / 1e9 - base_time
        rec["boot"] = r["boot"]
        rec["seq"] = r["seq"]
        rec["rt"] = r["receive_ns"]
        if r["flags"]:
            rec["fl"] = r["flags"]
        if r["time_quality"]:
            rec["tq"] = r["time_quality"]
        pack.append(rec)
    return cbor2.dumps({0: VERSION, 1: batch_id, 2: pole, 3: created_ns, 4: pack})


def decode(data, max_size=8 * 1024 * 1024):
    """bytes -> (batch_id, pole, [flat records]); ValueError on anything malformed."""
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
    out = []
    bn, bt = "", 0.0
    for rec in pack:
        if not isinstance(rec, dict):
            raise ValueError("a SenML record must be a map")
        bn = rec.get(BN, bn)
        bt = rec.get(BT, bt)
        name, value = rec.get(N), rec.get(V)
        if not isinstance(name, str) or type(value) not in (int, float):
            raise ValueError("a SenML record needs a name and a numeric value")
        parts = bn.split(":")
        if len(parts) != 5 or parts[0] != "urn" or parts[1] != "openpole":
            raise ValueError(f"base name {bn!r} is not urn:openpole:<pole>:<node>:")
        out.append({
            "pole": parts[2], "node": parts[3], "name": name, "unit": rec.get(U), "value": value,
            "time": bt + rec.get(T, 0.0), "boot": rec.get("boot"), "seq": rec.get("seq"),
            "receive_ns": rec.get("rt"), "flags": rec.get("fl", 0), "time_quality": rec.get("tq", 0),
        })
    return batch_id, pole, out
