"""Pole signatures on upstream batches: COSE_Mac0 (RFC 9052) with HMAC 256/256 and the pole id as
key id, so a receiver holding the pole's key knows the batch is the pole's and whole."""

import hashlib
import hmac
from collections.abc import Mapping

import cbor2

COSE_MAC0 = 17
PROTECTED = cbor2.dumps({1: 5})  # alg: HMAC 256/256


class Unauthorized(ValueError):
    """The batch is not one this upstream takes from that pole (no key for it, a bad signature, an
    unsigned batch where signatures are required): a matter of keys, which the city puts right, so
    an HTTP receiver answers 403 and the pole keeps the batch and sends it again."""


def sign(body, pole, key):
    tag = hmac.new(key, cbor2.dumps(["MAC0", PROTECTED, b"", body]), hashlib.sha256).digest()
    return cbor2.dumps(cbor2.CBORTag(COSE_MAC0, [PROTECTED, {4: pole.encode()}, body, tag]))


def _parse(data):
    """A COSE_Mac0 signed batch -> (protected, body, tag, pole); ValueError if it is not one."""
    try:
        obj = cbor2.loads(data, max_depth=4)
        if not isinstance(obj.value, (list, tuple)) or len(obj.value) != 4:
            raise TypeError("COSE_Mac0 is a four-element array")
        protected, unprotected, body, tag = obj.value
        if not (isinstance(protected, bytes) and isinstance(unprotected, Mapping) and isinstance(body, bytes)
                and isinstance(tag, bytes) and isinstance(unprotected.get(4), bytes)):
            raise TypeError("COSE_Mac0 fields of the wrong types")
        return protected, body, tag, unprotected[4].decode()
    except (ValueError, TypeError, KeyError, AttributeError, cbor2.CBORDecodeError):
        raise ValueError("not a COSE_Mac0 signed batch") from None


def unwrap(data, keys):
    """(body, pole or None). keys: {pole id: key}. A signed batch must verify; ValueError if not."""
    if not data or data[0] != 0xD1:  # tag 17
        return data, None
    protected, body, tag, pole = _parse(data)
    if protected != PROTECTED:
        raise ValueError("unsupported signature algorithm (need HMAC 256/256)")
    key = keys.get(pole)
    if key is None:
        raise Unauthorized(f"no key for pole {pole[:64]!r}")
    expected = hmac.new(key, cbor2.dumps(["MAC0", protected, b"", body]), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, tag):
        raise Unauthorized(f"bad signature for pole {pole[:64]!r}")
    return body, pole


def stored_body(data):
    """The batch of a body kept as it came, signed or not, without checking the signature again:
    the receiver used to keep a signed batch whole, verified when it came."""
    return _parse(data)[1] if data[:1] == b"\xd1" else data
