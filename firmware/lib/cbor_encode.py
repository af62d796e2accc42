# The general CBOR encoder (cbor.dumps): every type cbor.py lists, floats in their shortest exact
# form. A module of its own, loaded on first use: the node's messages need only cbor.head() and
# cbor.half_bits(), so a running node does not hold this code (a node that signs does: cose.py).
import struct

from cbor import MAX_DEPTH, half_bits, head

_FLT_MAX = 3.4028234663852886e38


def _float(out, x):
    if x != x:
        out.extend(b"\xf9\x7e\x00")  # canonical NaN
        return
    if x - x != 0.0:  # +-inf (NaN is out above); no math.inf constant: frozen builds cannot hold one
        out.extend(b"\xf9\x7c\x00" if x > 0 else b"\xf9\xfc\x00")
        return
    h = half_bits(x)
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


