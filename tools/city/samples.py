"""A decoded batch checked against the columns of `samples` (tools/city/db.py), as a loader writes it.

Each node message becomes one sample row per sample time: its readings' values by registry key.
A batch is rejected whole, with a reason naming the first field at fault, when any field is one
its column cannot hold, or a reading the registry cannot key: a quantity it lacks, a unit not the
registry's for it, flags other than out-of-range, two values of one quantity at one time.
"""

import datetime
import math
import struct

from openpole.spec.registry import REGISTRY
from openpole.wire.node_message import FLAG_OUT_OF_RANGE

UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
PG_EPOCH_US = 946_684_800_000_000  # PostgreSQL's timestamps count microseconds from 2000-01-01 UTC
FIRST_US, END_US = -62_135_596_800_000_000, 253_402_300_800_000_000  # 0001-01-01 and 10000-01-01, in Unix us
PLAUSIBLE_FROM_S = datetime.datetime(2020, 1, 1, tzinfo=UTC).timestamp()
INT8, INT4, INT2 = 1 << 63, 1 << 31, 1 << 15  # a binary COPY wraps an int4 or int2 out of range without a word
MAX_TEXT = 256  # characters in a pole or node id: the indexes on them take at most 2,704 bytes a row
_F32 = struct.Struct("<f")


def _show(x):
    """x as a reason quotes it: short, ASCII, and never a 4,300-digit integer."""
    if type(x) is int:
        return str(x) if -INT8 <= x < 2 * INT8 else f"an integer of {x.bit_length()} bits"
    if type(x) is float:
        return repr(x)
    if type(x) is str:
        return ascii(x[:40]) + ("..." if len(x) > 40 else "")
    return "none" if x is None else f"a {type(x).__name__}"


def _where(node, boot, seq, name=None):
    return f"node {_show(node)} boot {_show(boot)} seq {_show(seq)}" + ("" if name is None else f", {_show(name)}")


def month(t):
    return datetime.datetime(t.year, t.month, 1, tzinfo=UTC)


def next_month(m):
    return m.replace(year=m.year + (m.month == 12), month=m.month % 12 + 1)


def unix_us(t):
    """Seconds (a float or int) -> microseconds, rounded as datetime.fromtimestamp rounds them (half
    to even), so that a time reads back as schema 3 and every earlier loader stored it."""
    if type(t) is int:
        return t * 1_000_000
    frac, whole = math.modf(t)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        us -= 1_000_000
        whole += 1.0
    elif us < 0:
        us += 1_000_000
        whole -= 1.0
    return int(whole) * 1_000_000 + us


def real_gives_back(v):
    """True when the float v, stored as a real (float4), reads back as v: PostgreSQL prints a real
    in the shortest digits that make the same float4, and those digits read as a double must be v.
    Every value a node sends is (single precision, rounded to the registry's resolution)."""
    try:
        f = _F32.unpack(_F32.pack(v))[0]
    except OverflowError:
        return False
    if f == 0.0 or not math.isfinite(f):
        return v == 0.0
    for digits in range(1, 10):
        s = float("%.*g" % (digits, f))
        if _F32.unpack(_F32.pack(s))[0] == f:
            return s == v
    return False


class Checker:
    """Checks decoded batches into sample rows; remembers the texts and values already checked."""

    def __init__(self, registry=REGISTRY):
        self.quantities = {q.name: (q.key, q.unit) for q in registry.by_key.values()}
        self._texts = set()  # pole and node ids already checked
        self._exact = set()  # floats a real gives back (sensor values repeat: few distinct ones)

    def check(self, decoded, month_span, plausible_to):
        """A decoded batch -> its messages: [(pole, node, boot, seq, tq, received, samples, readings,
        keys)], received and each sample's time in Unix microseconds, samples being [[time, vals
        {key: value}, exact (a real gives each value back), flagged keys or None, month or None]]
        (the month when the sample needs a partition outside month_span); ValueError naming the first
        field its column cannot hold, which rejects the whole batch."""
        batch_id, pole, messages, _ = decoded
        if type(batch_id) is not bytes:
            raise ValueError(f"the batch id is {_show(batch_id)}, not bytes")
        texts, quantities, exact_values = self._texts, self.quantities, self._exact
        if type(pole) is not str or pole not in texts:
            self._text(pole, "the pole id")
        lo, hi = month_span
        fromts, isfinite, exact = datetime.datetime.fromtimestamp, math.isfinite, real_gives_back
        out = []
        for mpole, node, boot, seq, _, readings in messages:
            if mpole != pole:
                raise ValueError(f"a message of pole {_show(mpole)} in a batch of pole {_show(pole)}")
            if type(node) is not str or node not in texts:
                self._text(node, "a node id")
            if type(boot) is not int or type(seq) is not int or not (-INT8 <= boot < INT8 and -INT8 <= seq < INT8):
                raise ValueError(f"{_where(node, boot, seq)}: boot and seq must be integers of 64 bits")
            by_time, keys, received, tq0 = {}, set(), None, None
            for name, unit, value, t, flags, tq, rt in readings:
                # The reasons are made only for a batch that fails: this runs for every reading.
                q = quantities.get(name) if type(name) is str else None
                if q is None or unit != q[1]:
                    self._unkeyed(node, boot, seq, name, unit, q)
                kind = type(value)
                if kind is float:
                    v = value
                else:
                    try:
                        v = float(value) if kind is int else None
                    except OverflowError:
                        v = math.inf
                if v is None or not isfinite(v):
                    raise ValueError(f"{_where(node, boot, seq, name)}: the value {_show(value)} is not a finite number")
                if flags:
                    if type(flags) is not int or not -INT4 <= flags < INT4:
                        raise ValueError(f"{_where(node, boot, seq, name)}: the flags {_show(flags)} are not an "
                                         f"integer of 32 bits")
                    if flags != FLAG_OUT_OF_RANGE:
                        raise ValueError(f"{_where(node, boot, seq, name)}: the flags {flags} hold bits openpole does "
                                         f"not define (1: out of the registry's range)")
                elif type(flags) is not int:  # 0, not False or 0.0
                    raise ValueError(f"{_where(node, boot, seq, name)}: the flags {_show(flags)} are not an integer "
                                     f"of 32 bits")
                if tq0 is None:  # a message's time quality and receive time come with its first record
                    if type(tq) is not int or not -INT2 <= tq < INT2:
                        raise ValueError(f"{_where(node, boot, seq, name)}: the time quality {_show(tq)} is not an "
                                         f"integer of 16 bits")
                    if type(rt) is not int or not 0 <= rt < INT8:
                        raise ValueError(f"{_where(node, boot, seq, name)}: the receive time {_show(rt)} ns is not "
                                         f"an integer of 64 bits")
                    tq0, received = tq, rt // 1000
                elif tq != tq0:
                    raise ValueError(f"{_where(node, boot, seq, name)}: a time quality of its own in a message")
                sample = by_time.get(t)
                if sample is None:
                    if type(t) is not float and type(t) is not int:
                        raise ValueError(f"{_where(node, boot, seq, name)}: the time is {_show(t)}, not a number")
                    try:
                        us = unix_us(t)
                    except (OverflowError, ValueError):
                        us = END_US
                    if not FIRST_US <= us < END_US:
                        raise ValueError(f"{_where(node, boot, seq, name)}: the time {_show(t)} s is outside years 1 "
                                         f"to 9999 (a node's age or a pole's clock gone wrong)")
                    need = None
                    if not lo <= t < hi and PLAUSIBLE_FROM_S <= t < plausible_to:
                        need = month(fromts(us // 1_000_000, UTC))
                    sample = by_time[t] = [us, {}, True, None, need]
                key = q[0]
                vals = sample[1]
                if key in vals:
                    raise ValueError(f"{_where(node, boot, seq, name)}: two values at one time in one message")
                vals[key] = v
                if v not in exact_values:
                    if exact(v):
                        if len(exact_values) > 100_000:
                            exact_values.clear()
                        exact_values.add(v)
                    else:
                        sample[2] = False
                if flags:
                    if sample[3] is None:
                        sample[3] = []
                    sample[3].append(key)
                keys.add(key)
            out.append((pole, node, boot, seq, tq0 or 0, received, list(by_time.values()), len(readings), keys))
        return out

    def _unkeyed(self, node, boot, seq, name, unit, q):
        """ValueError for a reading no registry key holds: why, in one line."""
        where = _where(node, boot, seq)
        if type(name) is not str:
            raise ValueError(f"{where}: a quantity name is {_show(name)}, not a string")
        if q is None:
            raise ValueError(f"{where}: the quantity {_show(name)} is not in this openpole's registry (poles on a newer "
                             f"openpole than the loaders? upgrade the loaders)")
        if type(unit) is not str:
            raise ValueError(f"{_where(node, boot, seq, name)}: the unit is {_show(unit)}, not a string")
        raise ValueError(f"{_where(node, boot, seq, name)}: the unit {_show(unit)} is not the registry's, {q[1]!r}")

    def _text(self, s, what):
        """ValueError unless s is a str a text column holds (no NUL, no lone surrogate) and the
        indexes take (MAX_TEXT characters at most); remembered when it is."""
        if type(s) is not str:
            raise ValueError(f"{what} is {_show(s)}, not a string")
        if len(s) > MAX_TEXT:
            raise ValueError(f"{what} of {len(s)} characters is over {MAX_TEXT}")
        if "\x00" in s:
            raise ValueError(f"{what} {_show(s)} holds a NUL character, which PostgreSQL text cannot")
        try:
            s.encode()
        except UnicodeEncodeError:
            raise ValueError(f"{what} {_show(s)} is not valid Unicode (a lone surrogate)") from None
        if len(self._texts) > 100_000:  # ids are few; a flood of new ones only costs checks again
            self._texts.clear()
        self._texts.add(s)


# Binary COPY (PostgreSQL's "COPY ... FROM STDIN (FORMAT BINARY)") of samples rows, written here
# rather than value by value through psycopg: a sample's values are an array, which psycopg dumps
# element by element in Python, at several times the cost of the rest of its row.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
_HEAD = struct.Struct(">hiqiqiqiqiqiiih")  # 10 fields: id, time, received, boot, seq, thing_id, tq
_HEAD_NO_RECEIVED = struct.Struct(">hiqiqiiqiqiiih")
_NULL = struct.pack(">i", -1)
_FLOAT4, _FLOAT8, _INT2 = 700, 701, 21  # PostgreSQL's type oids


class RowEncoder:
    """Sample rows -> the bytes of a binary COPY into samples (SAMPLE_COLUMNS' order). A row:
    (id, time us, received us or None, boot, seq, thing id, tq, vals {key: value}, exact, flagged)."""

    def __init__(self):
        self._shapes = {}  # (keys present, exact) -> (Struct, template args, positions of the values)

    def _shape(self, keys, exact):
        """For the keys a sample holds: its array's Struct, the arguments with the values' places
        (k, index) to fill, as PostgreSQL's array_recv reads it (ndim, has nulls, element oid, size,
        lower bound 1, then each element's length and bytes, -1 for a NULL)."""
        top, present = keys[-1], set(keys)
        fmt, args, slots = [">iiiiii"], [0, 1, int(len(keys) < top), _FLOAT4 if exact else _FLOAT8, top, 1], []
        for k in range(1, top + 1):
            if k in present:
                fmt.append("if" if exact else "id")
                args.append(4 if exact else 8)
                slots.append((k, len(args)))
                args.append(0.0)
            else:
                fmt.append("i")
                args.append(-1)
        st = struct.Struct("".join(fmt))
        args[0] = st.size - 4  # the field's length, after its own length word
        return st, args, slots

    def encode(self, rows):
        out = [COPY_HEADER]
        shapes = self._shapes
        for rid, t, received, boot, seq, thing, tq, vals, exact, flagged in rows:
            keys = (tuple(vals), exact)  # as the readings came: mostly in the registry's order
            shape = shapes.get(keys)
            if shape is None:
                if len(shapes) > 10_000:  # shapes are few; a flood of odd ones only costs building them again
                    shapes.clear()
                shape = shapes[keys] = self._shape(sorted(vals), exact)
            st, template, slots = shape
            if received is None:
                out.append(_HEAD_NO_RECEIVED.pack(10, 8, rid, 8, t - PG_EPOCH_US, -1, 8, boot, 8, seq, 4, thing, 2, tq))
            else:
                out.append(_HEAD.pack(10, 8, rid, 8, t - PG_EPOCH_US, 8, received - PG_EPOCH_US, 8, boot, 8, seq, 4,
                                      thing, 2, tq))
            args = template.copy()
            for k, i in slots:
                args[i] = vals[k]
            body = st.pack(*args)
            if exact:
                out += (body, _NULL)
            else:
                out += (_NULL, body)
            if flagged is None:
                out.append(_NULL)
            else:
                n = len(flagged)
                out.append(struct.pack(f">iiiiii{'ih' * n}", 20 + 6 * n, 1, 0, _INT2, n, 1,
                                       *[x for k in sorted(flagged) for x in (2, k)]))
        out.append(COPY_TRAILER)
        return b"".join(out)
