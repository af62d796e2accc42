# Node message v1 (sensor_specs/node_message.cddl): encode with the node's CBOR codec.
# Samples are kept pre-encoded (bytes) so a queued message costs little RAM; the age of each
# sample is filled in at send time, so a replayed message still dates its samples correctly.
import hashlib

import cbor
from registry import DIGITS, KEYS

VERSION = 1
_COSE_MAC0 = 17
_PROTECTED = b"\xa1\x01\x04"  # {1: 4}: alg HMAC 256/64
_BLOCK = 64


def encode_values(readings):
    """{quantity name: value} -> CBOR map {key: value rounded to the registry resolution}."""
    out = {}
    for name, value in readings.items():
        key = KEYS.get(name)
        if key is None:
            continue
        d = DIGITS[key]
        out[key] = int(round(value)) if d == 0 else round(value, d)
    return cbor.dumps(out)


def encode(node_id, boot, seq, samples, now_ms, status=None, clock_ms=None):
    """samples: [(ticks_ms, values_cbor)] -> bytes of the node message."""
    out = bytearray()
    n = 5 + (status is not None) + (clock_ms is not None)
    out.append(0xA0 | n)
    out.extend(b"\x00\x01\x01")
    out.extend(cbor.dumps(node_id))
    out.append(0x02)
    out.extend(cbor.dumps(boot))
    out.append(0x03)
    out.extend(cbor.dumps(seq))
    out.append(0x04)
    cbor.head(out, 4, len(samples))
    for ticks, values in samples:
        out.append(0x82)
        age = now_ms - ticks
        out.extend(cbor.dumps(age if age > 0 else 0))
        out.extend(values)
    if status is not None:
        out.append(0x05)
        out.extend(cbor.dumps(status))
    if clock_ms is not None:
        out.append(0x06)
        out.extend(cbor.dumps(clock_ms))
    return bytes(out)


def hmac_sha256(key, data):
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key + b"\x00" * (_BLOCK - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(data)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def sign(payload, key):
    """Wrap an encoded node message in COSE_Mac0 with HMAC 256/64 (RFC 9052, alg 4)."""
    mac_structure = cbor.dumps(["MAC0", _PROTECTED, b"", payload])
    tag = hmac_sha256(key, mac_structure)[:8]
    return cbor.dumps(cbor.Tag(_COSE_MAC0, [_PROTECTED, {}, payload, tag]))
