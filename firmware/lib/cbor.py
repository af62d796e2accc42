# CBOR (RFC 8949) for the node: dumps(obj) (cbor_encode.py) and loads(data) (cbor_decode.py),
# MicroPython and CPython alike, each loaded on first use; here the item heads and half floats the
# node's own messages are written with (lib/message.py), all the running node keeps.
# Types: int (to 64 bits), float (preferred serialization: shortest of half/single/double that keeps
# the value), bytes, str, list/tuple, dict, bool, None; a tag is head(out, 6, n) then its item, and
# decodes to cbor_decode.Tag. Decoding takes
# indefinite lengths and half floats; malformed, truncated, too deep or oversized input raises
# ValueError before any large allocation.

import math
import struct

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


MAX_DEPTH = const(16)
MAX_SIZE = const(65536)


# --- half precision, by hand: struct's 'e' format is not in every MicroPython build ---

def half_bits(x):
    """IEEE 754 binary16 bits for x if x is exactly representable as a half, else None."""
    if x == 0.0:
        return 0x8000 if math.copysign(1.0, x) < 0 else 0
    sign = 0x8000 if x < 0 else 0
    m, e = math.frexp(abs(x))  # abs(x) = m * 2**e, 0.5 <= m < 1
    e -= 1  # abs(x) = (2m) * 2**e, 1 <= 2m < 2
    if e > 15:
        return None
    if e >= -14:  # normal: 10 fraction bits
        frac = (m * 2.0 - 1.0) * 1024.0
        if frac != int(frac):
            return None
        return sign | ((e + 15) << 10) | int(frac)
    frac = abs(x) * 16777216.0  # subnormal: multiples of 2**-24
    if frac != int(frac) or frac >= 1024:
        return None
    return sign | int(frac)


# --- encoding ---

def head(out, major, n):
    """Append a CBOR item head (major type, argument) to a bytearray."""
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out.extend(struct.pack(">H", n))
    elif n < 0x100000000:
        out.append(mt | 26)
        out.extend(struct.pack(">I", n))
    elif n < 0x10000000000000000:
        out.append(mt | 27)
        out.extend(struct.pack(">Q", n))
    else:
        raise ValueError("cbor: integer out of 64-bit range")


def dumps(obj):
    """obj as CBOR bytes. The general encoder is a module of its own (cbor_encode.py), loaded on
    first use: the node writes its messages with head() and half_bits() alone."""
    from cbor_encode import dumps

    return dumps(obj)


def loads(data, max_size=MAX_SIZE):
    """Decode one CBOR item that fills data exactly; ValueError on anything else. The decoder is
    a module of its own (cbor_decode.py), loaded on first use: the node itself never decodes."""
    from cbor_decode import loads

    return loads(data, max_size)
