"""$filter and $orderby expressions to an AST (OGC 18-088 §9.3.3.5; precedence as FROST-Server reads it).

parse_filter("result gt 20 and Datastream/id eq 3") -> Op('and', (Op('gt', ...), Op('eq', ...))).
Keywords and function names are case-insensitive; `not` negates a whole comparison, so
`not result lt 1 and not result gt 1` is `(not (result lt 1)) and (not (result gt 1))`.
Nothing here touches SQL: sql.py turns the tree into a parameterised query.
"""

import datetime
import re
from dataclasses import dataclass

from .errors import BadRequest

MAX_LENGTH = 4000  # characters of one expression
MAX_DEPTH = 40  # nesting of parentheses and operators: a deeper tree is a hostile one


@dataclass(frozen=True)
class Lit:
    kind: str  # string, number, bool, null, datetime, interval, duration, date, time, geometry
    value: object


@dataclass(frozen=True)
class Path:
    parts: tuple  # names, e.g. ("Datastream", "Thing", "name") or ("properties", "tags", 0)


@dataclass(frozen=True)
class Call:
    name: str  # lower case
    args: tuple


@dataclass(frozen=True)
class Op:
    op: str  # eq ne gt ge lt le add sub mul div mod and or not in neg
    args: tuple


COMPARISONS = ("eq", "ne", "gt", "ge", "lt", "le")
_ZONE = r"(?:Z|z|[+-]\d\d:\d\d)"
_DT = r"\d{4}-\d\d-\d\dT\d\d:\d\d(?::\d\d(?:\.\d{1,9})?)?"
_TOKEN = re.compile(r"""
 (?P<ws>\s+)
|(?P<interval>(?P<i1>""" + _DT + _ZONE + r""")/(?P<i2>""" + _DT + _ZONE + r"""))
|(?P<datetime>""" + _DT + r""")(?P<zone>""" + _ZONE + r""")?
|(?P<date>\d{4}-\d\d-\d\d)
|(?P<time>\d\d:\d\d(?::\d\d(?:\.\d{1,9})?)?)
|(?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
|(?P<typed>(?i:geography|geometry|duration))'(?P<tbody>[^']*)'
|(?P<string>'(?:[^']|'')*')
|(?P<name>[A-Za-z_@$][A-Za-z0-9_.@$]*)
|(?P<index>\[\d{1,6}\])
|(?P<punct>[(),/:])
""", re.X | re.A)  # ASCII: \d is 0-9 only, not every script's digits

_DURATION = re.compile(r"^P(?:(\d+(?:\.\d+)?)D)?(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def parse_time(text):
    """An ISO 8601 instant with its zone -> an aware datetime; BadRequest naming the text otherwise."""
    t = text.replace("z", "Z")
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    m = re.match(r"^(.*T\d\d:\d\d(?::\d\d)?)(?:\.(\d+))?([+-]\d\d:\d\d)$", t)
    if not m:
        raise BadRequest(f"{text!r} is not a time: write it as 2026-11-20T14:05:00Z, with its zone")
    frac = (m.group(2) or "")[:6].ljust(6, "0") if m.group(2) else ""
    try:
        return datetime.datetime.fromisoformat(m.group(1) + ("." + frac if frac else "") + m.group(3))
    except ValueError:
        raise BadRequest(f"{text!r} is not a valid time (month 1-12, day of month, hour 0-23)") from None


def parse_duration(text):
    m = _DURATION.match(text)
    if not m or text in ("P", "PT") or text.endswith("T"):
        raise BadRequest(f"duration'{text}' is not an ISO 8601 duration: write duration'P1D' or duration'PT10M'")
    d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    try:
        return datetime.timedelta(days=d, hours=h, minutes=mi, seconds=s)
    except OverflowError:  # past 999,999,999 days
        raise BadRequest(f"duration'{text[:30]}' is too long: a duration takes at most some million years") from None


def parse_wkt(text):
    """WKT POINT, LINESTRING or POLYGON (one ring), optionally after SRID=4326; -> (kind, [(x, y), ...])."""
    t = text.strip()
    srid = re.match(r"(?i)^SRID=(\d+);", t)
    if srid:
        if srid.group(1) != "4326":
            raise BadRequest(f"geography'{text}': only SRID 4326 (longitude, latitude) is served")
        t = t[srid.end():]
    m = re.match(r"(?i)^\s*(POINT|LINESTRING|POLYGON)\s*\((.*)\)\s*$", t, re.S)
    if not m:
        raise BadRequest(f"geography'{text}': write POINT(lon lat), LINESTRING(lon lat, ...) or "
                         f"POLYGON((lon lat, ...)), longitude first")
    kind, body = m.group(1).upper(), m.group(2).strip()
    if kind == "POLYGON":
        rings = re.findall(r"\(([^()]*)\)", body)
        if len(rings) != 1 or not re.fullmatch(r"\s*\([^()]*\)\s*", body):
            raise BadRequest(f"geography'{text}': a polygon of one ring only (no holes, no multi-polygons)")
        body = rings[0]
    pts = []
    for pair in body.split(","):
        xy = pair.split()
        try:
            x, y = float(xy[0]), float(xy[1])
            if len(xy) != 2 or x != x or y != y:
                raise ValueError
        except (ValueError, IndexError):
            raise BadRequest(f"geography'{text}': {pair.strip()!r} is not a 'lon lat' pair of numbers") from None
        pts.append((x, y))
    need = {"POINT": 1, "LINESTRING": 2, "POLYGON": 4}[kind]
    if len(pts) < need or (kind == "POINT" and len(pts) != 1):
        raise BadRequest(f"geography'{text}': a {kind} needs {'one point' if kind == 'POINT' else f'at least {need} points'}")
    if kind == "POLYGON" and pts[0] != pts[-1]:
        raise BadRequest(f"geography'{text}': a polygon's ring must end at its first point")
    return kind, tuple(pts)


def tokens(text):
    if len(text) > MAX_LENGTH:
        raise BadRequest(f"the expression is {len(text)} characters long; at most {MAX_LENGTH} are served")
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise BadRequest(f"unexpected {text[pos:pos + 12]!r} at character {pos + 1}")
        if m.group("ws"):
            pos = m.end()
            continue
        if m.group("interval"):
            out.append(("lit", Lit("interval", (parse_time(m.group("i1")), parse_time(m.group("i2")))), pos))
        elif m.group("datetime"):
            if not m.group("zone"):
                after = text[m.end():m.end() + 6]
                if re.match(r" \d\d:\d\d", after):
                    raise BadRequest(f"the time {m.group('datetime')} is followed by a space: a '+' in a URL is a "
                                     f"space, so write its zone +hh:mm as %2Bhh:mm (or use Z)")
                raise BadRequest(f"the time {m.group('datetime')} has no zone: add Z (UTC) or +hh:mm")
            out.append(("lit", Lit("datetime", parse_time(m.group("datetime") + m.group("zone"))), pos))
        elif m.group("date"):
            try:
                out.append(("lit", Lit("date", datetime.date.fromisoformat(m.group("date"))), pos))
            except ValueError:
                raise BadRequest(f"{m.group('date')!r} is not a valid date") from None
        elif m.group("time"):
            try:
                out.append(("lit", Lit("time", datetime.time.fromisoformat(m.group("time"))), pos))
            except ValueError:
                raise BadRequest(f"{m.group('time')!r} is not a valid time of day") from None
        elif m.group("number"):
            s = m.group("number")
            v = int(s) if re.fullmatch(r"-?\d+", s) else float(s)
            if isinstance(v, float) and v in (float("inf"), float("-inf")):
                raise BadRequest(f"the number {s[:20]} is too large")
            out.append(("lit", Lit("number", v), pos))
        elif m.group("typed"):
            t, body = m.group("typed").lower(), m.group("tbody")
            if t == "duration":
                out.append(("lit", Lit("duration", parse_duration(body)), pos))
            else:
                out.append(("lit", Lit("geometry", parse_wkt(body)), pos))
        elif m.group("string"):
            out.append(("lit", Lit("string", m.group("string")[1:-1].replace("''", "'")), pos))
        elif m.group("name"):
            out.append(("name", m.group("name"), pos))
        elif m.group("index"):
            out.append(("index", int(m.group("index")[1:-1]), pos))
        else:
            out.append((m.group("punct"), m.group("punct"), pos))
        pos = m.end()
    out.append(("end", None, len(text)))
    return out


class _Parser:
    def __init__(self, text):
        self.text = text
        self.toks = tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self):
        return self.toks[self.i]

    def next(self):
        t = self.toks[self.i]
        self.i += 1
        return t

    def word(self):
        kind, val, _ = self.peek()
        return val.lower() if kind == "name" else None

    def expect(self, kind):
        t = self.next()
        if t[0] != kind:
            raise self.error(t, f"expected {kind!r}")
        return t

    def error(self, tok, what):
        kind, val, pos = tok
        shown = "the end" if kind == "end" else repr(self.text[pos:pos + 20])
        return BadRequest(f"{what} at {shown} (character {pos + 1})")

    def deeper(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise BadRequest(f"the expression nests deeper than {MAX_DEPTH} levels")

    def parse(self):
        e = self.or_()
        t = self.peek()
        if t[0] != "end":
            raise self.error(t, "expected an operator (and, or, eq, add, ...) or the end")
        return _bounded(e)

    # a chain of `or` (of `and`) is one node with all its operands: `id eq 1 or id eq 2 or ...` is
    # as long as the text allows, not as deep (the SQL compiler recurses along the tree)
    def or_(self):
        items = [self.and_()]
        while self.word() == "or":
            self.next()
            items.append(self.and_())
        return items[0] if len(items) == 1 else Op("or", tuple(items))

    def and_(self):
        items = [self.not_()]
        while self.word() == "and":
            self.next()
            items.append(self.not_())
        return items[0] if len(items) == 1 else Op("and", tuple(items))

    def not_(self):
        if self.word() == "not":
            self.next()
            self.deeper()
            e = Op("not", (self.not_(),))
            self.depth -= 1
            return e
        return self.comparison()

    def comparison(self):
        e = self.additive()
        w = self.word()
        if w in COMPARISONS:
            self.next()
            e = Op(w, (e, self.additive()))
            if self.word() in COMPARISONS:
                raise self.error(self.peek(), "comparisons do not chain: join them with and")
        elif w == "in":
            self.next()
            self.expect("(")
            items = [self.additive()]
            while self.peek()[0] == ",":
                self.next()
                items.append(self.additive())
            self.expect(")")
            e = Op("in", (e, *items))
        return e

    def additive(self):
        e = self.multiplicative()
        while self.word() in ("add", "sub"):
            e = Op(self.next()[1].lower(), (e, self.multiplicative()))
        return e

    def multiplicative(self):
        e = self.unary()
        while self.word() in ("mul", "div", "mod"):
            e = Op(self.next()[1].lower(), (e, self.unary()))
        return e

    def unary(self):
        self.deeper()
        try:
            return self._unary()
        finally:
            self.depth -= 1

    def _unary(self):
        tok = self.next()
        kind, val, _ = tok
        if kind == "(":
            e = self.or_()
            self.expect(")")
            return e
        if kind == "lit":
            return val
        if kind == "name":
            low = val.lower()
            if low in ("true", "false"):
                return Lit("bool", low == "true")
            if low == "null":
                return Lit("null", None)
            if self.peek()[0] == "(":
                self.next()
                args = []
                if self.peek()[0] != ")":
                    args.append(self.or_())
                    while self.peek()[0] == ",":
                        self.next()
                        args.append(self.or_())
                self.expect(")")
                return Call(low, tuple(args))
            parts = [val]
            while True:
                if self.peek()[0] == "index":
                    parts.append(self.next()[1])
                elif self.peek()[0] == "/":
                    self.next()
                    seg = self.next()
                    if seg[0] != "name":
                        raise self.error(seg, "expected a property name after '/'")
                    parts.append(seg[1])
                else:
                    break
            return Path(tuple(parts))
        if kind == "end":
            raise self.error(tok, "expected a value (a property, a literal or a function)")
        raise self.error(tok, "expected a value (a property, a literal or a function)")


def _bounded(tree):
    """The tree, if no deeper than MAX_DEPTH: `1 add 1 add 1 ...` nests one level an operator, and
    what compiles it recurses as deep (a RecursionError would be a 500)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadRequest(f"the expression nests deeper than {MAX_DEPTH} levels (operators, functions and "
                             f"parentheses): simplify it")
        if isinstance(node, (Op, Call)):
            stack += [(a, depth + 1) for a in node.args]
    return tree


def parse_filter(text):
    """$filter text -> AST; BadRequest with the character where it went wrong."""
    if not text.strip():
        raise BadRequest("$filter is empty: give an expression, e.g. $filter=result gt 20")
    return _Parser(text).parse()


def parse_orderby(text):
    """$orderby text -> [(AST, 'asc'|'desc')]."""
    p = _Parser(text)
    out = []
    while True:
        e = p.additive()
        direction = "asc"
        if p.word() in ("asc", "desc"):
            direction = p.next()[1].lower()
        out.append((_bounded(e), direction))
        t = p.peek()
        if t[0] == "end":
            return out
        if t[0] != ",":
            raise p.error(t, "expected asc, desc or ',' in $orderby")
        p.next()
