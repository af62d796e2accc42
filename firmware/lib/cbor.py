# CBOR (RFC 8949) for the node: dumps(obj) and loads(data), MicroPython and CPython alike.
# Types: int (to 64 bits), float (preferred serialization: shortest of half/single/double that keeps
# the value), bytes, str, list/tuple, dict, bool, None; tags decode to Tag. Decoding takes
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


class Tag:
    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.tag == other.tag and self.value == other.value

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


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


def _half_value(h):
    exp = (h >> 10) & 0x1F
    frac = h & 0x3FF
    if exp == 0:
        v = math.ldexp(frac, -24)
    elif exp == 31:
        v = math.inf if frac == 0 else math.nan
    else:
        v = math.ldexp(frac + 1024, exp - 25)
    return -v if h & 0x8000 else v


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
    if x in (math.inf, -math.inf):
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
    elif isinstance(obj, Tag):
        head(out, 6, obj.tag)
        _enc(out, obj.value, depth + 1)
    else:
        raise ValueError("cbor: cannot encode %s" % type(obj).__name__)


def dumps(obj):
    out = bytearray()
    _enc(out, obj, 0)
    return bytes(out)


# --- decoding ---

class _Reader:
    def __init__(self, data):
        self.d = data
        self.i = 0

    def take(self, n):
        i = self.i
        if n > len(self.d) - i:
            raise ValueError("cbor: truncated (need %d bytes at offset %d)" % (n, i))
        self.i = i + n
        return self.d[i : i + n]

    def byte(self):
        if self.i >= len(self.d):
            raise ValueError("cbor: truncated at offset %d" % self.i)
        b = self.d[self.i]
        self.i += 1
        return b

    def arg(self, info):
        if info < 24:
            return info
        if info == 24:
            return self.byte()
        if info == 25:
            return struct.unpack(">H", self.take(2))[0]
        if info == 26:
            return struct.unpack(">I", self.take(4))[0]
        if info == 27:
            return struct.unpack(">Q", self.take(8))[0]
        raise ValueError("cbor: reserved additional info %d at offset %d" % (info, self.i - 1))

    def room(self, n, per_item):
        # Refuse counts the remaining bytes cannot hold, before allocating anything for them.
        if n * per_item > len(self.d) - self.i:
            raise ValueError("cbor: length %d exceeds the data left at offset %d" % (n, self.i))

    def chunks(self, major):
        parts = []
        while True:
            ib = self.byte()
            if ib == _BREAK:
                return b"".join(parts)
            if ib >> 5 != major or ib & 0x1F == 31:
                raise ValueError("cbor: bad chunk in indefinite-length string at offset %d" % (self.i - 1))
            parts.append(bytes(self.take(self.arg(ib & 0x1F))))

    def item(self, depth):
        if depth > MAX_DEPTH:
            raise ValueError("cbor: nesting deeper than %d" % MAX_DEPTH)
        ib = self.byte()
        major = ib >> 5
        info = ib & 0x1F
        if major == 7:
            return self.simple(info)
        if info == 31:
            return self.indefinite(major, depth)
        n = self.arg(info)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major == 2:
            return bytes(self.take(n))
        if major == 3:
            try:
                return str(self.take(n), "utf-8")
            except UnicodeError:
                raise ValueError("cbor: text string is not valid UTF-8")
        if major == 4:
            self.room(n, 1)
            return [self.item(depth + 1) for _ in range(n)]
        if major == 5:
            self.room(n, 2)
            m = {}
            for _ in range(n):
                k = self.item(depth + 1)
                m[_key(k)] = self.item(depth + 1)
            return m
        return Tag(n, self.item(depth + 1))

    def indefinite(self, major, depth):
        if major == 2:
            return self.chunks(2)
        if major == 3:
            try:
                return str(self.chunks(3), "utf-8")
            except UnicodeError:
                raise ValueError("cbor: text string is not valid UTF-8")
        if major == 4:
            out = []
            while not self.at_break():
                out.append(self.item(depth + 1))
            return out
        if major == 5:
            m = {}
            while not self.at_break():
                k = self.item(depth + 1)
                m[_key(k)] = self.item(depth + 1)
            return m
        raise ValueError("cbor: indefinite length not allowed for major type %d" % major)

    def at_break(self):
        if self.i >= len(self.d):
            raise ValueError("cbor: truncated indefinite-length item")
        if self.d[self.i] == _BREAK:
            self.i += 1
            return True
        return False

    def simple(self, info):
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22 or info == 23:
            return None
        if info == 25:
            return _half_value(struct.unpack(">H", self.take(2))[0])
        if info == 26:
            return struct.unpack(">f", self.take(4))[0]
        if info == 27:
            return struct.unpack(">d", self.take(8))[0]
        raise ValueError("cbor: unsupported simple value %d at offset %d" % (info, self.i - 1))


def _key(k):
    if isinstance(k, list):
        return tuple(k)
    if isinstance(k, dict):
        raise ValueError("cbor: a map cannot be a map key")
    return k


def loads(data, max_size=MAX_SIZE):
    """Decode one CBOR item that fills data exactly; ValueError on anything else."""
    if len(data) > max_size:
        raise ValueError("cbor: %d bytes is over the %d-byte limit" % (len(data), max_size))
    r = _Reader(data)
    obj = r.item(0)
    if r.i != len(data):
        raise ValueError("cbor: %d trailing bytes after the item" % (len(data) - r.i))
    return obj
