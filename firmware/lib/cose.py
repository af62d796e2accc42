# COSE_Mac0 (RFC 9052) for a node with a key ("key" in its config): HMAC 256/64 over the encoded
# node message. Loaded at boot only by a node that signs; the agent checks the tag (wire/node_message.py).
import hashlib

import cbor

_COSE_MAC0 = 17
_PROTECTED = b"\xa1\x01\x04"  # {1: 4}: alg HMAC 256/64
_BLOCK = 64


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
    out = bytearray()
    cbor.head(out, 6, _COSE_MAC0)  # tag 17, then the item
    out.extend(cbor.dumps([_PROTECTED, {}, payload, tag]))
    return bytes(out)
