# CBOR (RFC 8949) for the node: dumps(obj) here and loads(data) in cbor_decode, MicroPython and CPython alike.
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
_BREAK = const(0xFF)
_FLT_MAX = 3.4028234663852886e38


# --- half precision, by hand: struct's 'e' format is not in every MicroPython build ---

def _half_bits(x):
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


def _float(out, x):
    if x != x:
        out.extend(b"\xf9\x7e\x00")  # canonical NaN
        return
    if x - x != 0.0:  # +-inf (NaN is out above); no math.inf constant: frozen builds cannot hold one
        out.extend(b"\xf9\x7c\x00" if x > 0 else b"\xf9\xfc\x00")
        return
    h = _half_bits(x)
    if h is not None:
        out.append(0xF9)
        out.extend(struct.pack(">H", h))
        return
    # Past single range CPython refuses to pack and MicroPython would round to infinity.
    s = struct.pack(">f", x) if -_FLT_MAX <= x <= _FLT_MAX else None
    if s is not None and struct.unpack(">f", s)[0] == x:
        out.append(0xFA)
        out.extend(s)
    else:
        out.append(0xFB)
        out.extend(struct.pack(">d", x))


def _enc(out, obj, depth):
    if depth > MAX_DEPTH:
        raise ValueError("cbor: nesting deeper than %d" % MAX_DEPTH)
    if obj is None:
        out.append(0xF6)
    elif obj is True:
        out.append(0xF5)
    elif obj is False:
        out.append(0xF4)
    elif isinstance(obj, int):
        if obj >= 0:
            head(out, 0, obj)
        else:
            head(out, 1, -1 - obj)
    elif isinstance(obj, float):
        _float(out, obj)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        head(out, 2, len(obj))
        out.extend(obj)
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        head(out, 3, len(b))
        out.extend(b)
    elif isinstance(obj, (list, tuple)):
        head(out, 4, len(obj))
        for item in obj:
            _enc(out, item, depth + 1)
    elif isinstance(obj, dict):
        head(out, 5, len(obj))
        for k, v in obj.items():
            _enc(out, k, depth + 1)
            _enc(out, v, depth + 1)
    else:
        raise ValueError("cbor: cannot encode %s" % type(obj).__name__)


def dumps(obj):
    out = bytearray()
    _enc(out, obj, 0)
    return bytes(out)


def loads(data, max_size=MAX_SIZE):
    """Decode one CBOR item that fills data exactly; ValueError on anything else. The decoder is
    a module of its own (cbor_decode.py), loaded on first use: the node itself never decodes."""
    from cbor_decode import loads

    return loads(data, max_size)
