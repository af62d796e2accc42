# CBOR decoding (RFC 8949) for MicroPython and CPython: loads(data). Apart from cbor.py because the
# node only encodes (its heap is small); tools and tests decode with it. See cbor.py for the types.
import struct

import math

from cbor import MAX_DEPTH, MAX_SIZE, const

_BREAK = const(0xFF)


class Tag:
    def __init__(self, tag, value):
        self.tag = tag
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Tag) and self.tag == other.tag and self.value == other.value

    def __repr__(self):
        return "Tag(%d, %r)" % (self.tag, self.value)


def _half_value(h):
    exp = (h >> 10) & 0x1F
    frac = h & 0x3FF
    if exp == 0:
        v = math.ldexp(frac, -24)
    elif exp == 31:
        v = float("inf") if frac == 0 else float("nan")  # made at run time: see cbor._float
    else:
        v = math.ldexp(frac + 1024, exp - 25)
    return -v if h & 0x8000 else v


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
