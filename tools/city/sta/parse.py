"""A SensorThings request's URL: the resource path and the query options (OGC 18-088 §9.2, §9.3).

The query string is form-decoded (`+` is a space, %2B a plus: frost-sta-client sends `%24filter=a+eq+1`,
istsos4-client `$filter=a%20eq%201`); option names are case-insensitive; an option given twice is a
400, an unknown system option ($search, $format, ...) a 501, other parameters are ignored.
"""

import json
import re
import urllib.parse
from dataclasses import dataclass, field

from .errors import BadRequest, NotFound, NotImplementedOption
from .filter import parse_filter, parse_orderby

DEFAULT_TOP = 100
MAX_TOP = 10_000
MAX_SKIP = 1_000_000  # deeper pages: filter by time instead (an OFFSET walks every row it skips)
MAX_EXPAND_DEPTH = 4
MAX_EXPANSIONS = 24  # navigation properties expanded in one request, all levels together
# $skiptoken (OData's server-driven paging token) is what @iot.nextLink carries: where the last page ended
OPTIONS = ("$filter", "$expand", "$select", "$orderby", "$top", "$skip", "$count", "$resultformat", "$skiptoken")
IN_EXPAND = ("$filter", "$expand", "$select", "$orderby", "$top", "$skip", "$count")


@dataclass
class Expand:
    nav: str
    options: "Options"


@dataclass
class Options:
    filter: object = None  # AST
    filter_text: str = None
    expand: list = field(default_factory=list)
    select: list = None  # names, or None for all
    orderby: list = field(default_factory=list)  # [(AST, 'asc'|'desc')]
    top: int = None  # as the client asked
    skip: int = 0
    count: bool = False
    result_format: str = None
    after: list = None  # $skiptoken: the default order's key of the last row already served
    raw: dict = field(default_factory=dict)  # the decoded texts, for @iot.nextLink

    def page_size(self):
        """Rows on this page: the client's $top up to MAX_TOP, else DEFAULT_TOP."""
        if self.top is None:
            return DEFAULT_TOP
        return min(self.top, MAX_TOP)


def _split(text, sep):
    """Split on sep outside parentheses and quotes."""
    out, depth, quote, cur = [], 0, False, []
    for ch in text:
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
            if depth < 0:
                raise BadRequest(f"unbalanced ')' in {text[:80]!r}")
        if ch == sep and depth == 0 and not quote:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth or quote:
        raise BadRequest(f"unbalanced parentheses or quotes in {text[:80]!r}")
    out.append("".join(cur))
    return out


def _int_option(name, text, upto=None):
    if not re.fullmatch(r"\s*[0-9]{1,12}\s*", text):  # ASCII digits: int() would read '１' (fullwidth) as 1
        raise BadRequest(f"{name}={text[:30]!r}: give a whole number of 0 or more")
    v = int(text)
    if upto is not None and v > upto:
        raise BadRequest(f"{name}={v} is past the {upto:,} served: narrow the request with $filter (a time range)")
    return v


def parse_options(pairs, allowed=OPTIONS, depth=0, counter=None):
    """[(name, value)] already decoded -> Options."""
    counter = counter if counter is not None else [0]
    o = Options()
    seen = set()
    for name, value in pairs:
        low = name.lower()
        if not low.startswith("$"):
            continue
        if low not in OPTIONS:
            raise NotImplementedOption(f"the query option {name} is not supported here; the ones served are "
                                       f"{', '.join(x for x in allowed if x not in ('$resultformat', '$skiptoken'))}"
                                       f"{', $resultFormat' if '$resultformat' in allowed else ''}")
        if low not in allowed:
            raise BadRequest(f"{name} cannot be used inside $expand")
        if low in seen:
            raise BadRequest(f"{name} is given twice: give each query option once")
        seen.add(low)
        if "\x00" in value:
            raise BadRequest(f"{name} holds a NUL character, which no property holds: remove it")
        o.raw[low] = value
        if low == "$filter":
            o.filter, o.filter_text = parse_filter(value), value
        elif low == "$orderby":
            if not value.strip():
                raise BadRequest("$orderby is empty: give a property, e.g. $orderby=phenomenonTime desc")
            o.orderby = parse_orderby(value)
        elif low == "$top":
            o.top = _int_option("$top", value)
        elif low == "$skip":
            o.skip = _int_option("$skip", value, MAX_SKIP)
        elif low == "$count":
            if value.lower() not in ("true", "false"):
                raise BadRequest(f"$count={value[:30]!r}: give true or false")
            o.count = value.lower() == "true"
        elif low == "$select":
            names = [s.strip() for s in value.split(",")]
            if not all(names):
                raise BadRequest(f"$select={value[:60]!r}: give property names separated by commas")
            o.select = names
        elif low == "$resultformat":
            if value != "dataArray":
                raise BadRequest(f"$resultFormat={value[:30]!r}: the one result format served is dataArray")
            o.result_format = value
        elif low == "$expand":
            o.expand = parse_expand(value, depth, counter)
        elif low == "$skiptoken":
            o.after = parse_skiptoken(value)
    return o


def parse_expand(text, depth=0, counter=None):
    counter = counter if counter is not None else [0]
    out = {}
    for item in _split(text, ","):
        item = item.strip()
        m = re.fullmatch(r"([A-Za-z]+(?:/[A-Za-z]+)*)\s*(?:\((.*)\))?", item, re.S)
        if not m:
            raise BadRequest(f"$expand item {item[:60]!r}: write a navigation property, e.g. "
                             f"Datastreams($top=1) or Datastreams/Sensor")
        navs = m.group(1).split("/")
        if depth + len(navs) > MAX_EXPAND_DEPTH:
            raise BadRequest(f"$expand nests deeper than {MAX_EXPAND_DEPTH} levels: request the deeper entities "
                             f"by their own URL")
        counter[0] += len(navs)
        if counter[0] > MAX_EXPANSIONS:
            raise BadRequest(f"$expand names more than {MAX_EXPANSIONS} navigation properties in one request")
        inner = None
        if m.group(2) is not None:
            pairs = []
            for part in _split(m.group(2), ";"):
                name, eq, value = part.strip().partition("=")
                if not eq:
                    raise BadRequest(f"$expand option {part[:60]!r}: write $name=value, separated by ';'")
                pairs.append((name.strip(), value))
            inner = parse_options(pairs, IN_EXPAND, depth + len(navs), counter)
        _merge(out, navs, inner)
    return list(out.values())


def _merge(out, navs, inner):
    head, rest = navs[0], navs[1:]
    e = out.get(head)
    if e is None:
        e = out[head] = Expand(head, Options())
    if rest:
        sub = {x.nav: x for x in e.options.expand}
        _merge(sub, rest, inner)
        e.options.expand = list(sub.values())
    elif inner is not None:
        kept = e.options.expand
        inner_sub = {x.nav: x for x in inner.expand}
        for x in kept:
            if x.nav not in inner_sub:
                inner.expand.append(x)
        e.options = inner


def split_query(query):
    """A raw query string -> [(name, value)], form-decoded; '&' first, then the first '='."""
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((urllib.parse.unquote_plus(name), urllib.parse.unquote_plus(value)))
    return pairs


_SEGMENT = re.compile(r"^(?P<name>[A-Za-z@][A-Za-z0-9_.@]*|\$ref|\$value)(?:\((?P<key>[^()]*)\))?$")


def parse_path(path):
    """The path after /v1.1 -> [(name, key or None)]; a key is an int. NotFound for what cannot be a path."""
    segs = path.strip("/").split("/") if path.strip("/") else []
    out = []
    for raw in segs:
        seg = urllib.parse.unquote(raw)
        m = _SEGMENT.match(seg)
        if not m:
            raise NotFound(f"no such resource: {seg[:60]!r}")
        key = m.group("key")
        if key is not None:
            key = key.strip()
            if len(key) >= 2 and key[0] == key[-1] == "'":
                key = key[1:-1].replace("''", "'")
            if not re.fullmatch(r"-?[0-9]{1,19}", key):
                raise NotFound(f"no {m.group('name')} with id {key[:30]!r}: ids are integers")
            key = int(key)
            if not -2**63 <= key < 2**63:
                raise NotFound(f"no {m.group('name')} with id {key}")
        out.append((m.group("name"), key))
    return out


def parse_skiptoken(text):
    try:
        v = json.loads(text)
    except ValueError:
        v = None
    if not (isinstance(v, list) and 0 < len(v) <= 4 and all(isinstance(x, (str, int)) and not isinstance(x, bool)
                                                           for x in v)):
        raise BadRequest("$skiptoken is not one this server wrote: follow @iot.nextLink as it is given")
    return v


def next_link_query(raw, skip, top, after=None):
    """The query of @iot.nextLink: the request's options with $top and either $skip or, after the
    last row in the default order, $skiptoken set, fully encoded."""
    names = {"$filter": "$filter", "$expand": "$expand", "$select": "$select", "$orderby": "$orderby",
             "$count": "$count", "$resultformat": "$resultFormat"}
    parts = []
    for low, name in names.items():
        if low in raw:
            parts.append(f"{name}={urllib.parse.quote(raw[low], safe='')}")
    parts.append(f"$top={top}")
    if after is not None:
        parts.append(f"$skiptoken={urllib.parse.quote(json.dumps(after, separators=(',', ':')), safe='')}")
    else:
        parts.append(f"$skip={skip}")
    return "&".join(parts)
