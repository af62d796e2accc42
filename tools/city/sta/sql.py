"""Requests to SQL over the mapping's declarations, with bound parameters only.

Every value from a URL reaches PostgreSQL as a parameter (%(pN)s); the SQL text is built from the
mapping's declarations and fixed operators alone. A path through a to-many relation is "any related
entity matches" (EXISTS over LEFT JOINs from one row, so that a missing relation reads as null: 
`Datastreams/id eq null` finds the Things with none); a to-one path in $orderby is a scalar subquery.
Comparisons follow OGC 18-088 §9.3.3.5 and FROST-Server's interval rules (research/sta.md §4.4.6).
"""

import datetime

from .errors import BadRequest
from .filter import Call, Lit, Op, Path

COUNT_BOUND = 100_000  # counted exactly up to this many; past it the planner's estimate (docs/sensorthings.md)
_SQL_OP = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
TIME_FUNCS = {"year": "year", "month": "month", "day": "day", "hour": "hour", "minute": "minute"}
TIME_MIN = datetime.datetime(1, 1, 1, tzinfo=datetime.timezone.utc)
TIME_MAX = datetime.datetime(9999, 12, 30, 23, 59, 59, 999000, tzinfo=datetime.timezone.utc)


class Params:
    """Named parameters: each value once, its placeholder returned."""

    def __init__(self):
        self.values = {}

    def __call__(self, value, cast=None):
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"%({name})s" + (f"::{cast}" if cast else "")


class Val:
    def __init__(self, sql, type, lit=None, not_null=False, aligned=False):
        self.sql, self.type, self.lit = sql, type, lit  # an interval's sql is (start, end)
        self.not_null = not_null
        self.aligned = aligned  # a time known to be a whole millisecond (a literal)


def _ms(v):
    """A literal time or duration to the millisecond: what the API writes is what it compares."""
    if isinstance(v, datetime.timedelta):
        return datetime.timedelta(milliseconds=v // datetime.timedelta(milliseconds=1))
    return v.replace(microsecond=v.microsecond // 1000 * 1000)


_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<=", "=": "=", "<>": "<>"}
_MS = "interval '1 millisecond'"


def _tcmp(a, a_aligned, op, b, b_aligned):
    """SQL: time a op time b as the API shows them, to the millisecond. A stored time keeps its
    microseconds: against a literal it is compared by range (index-friendly), not truncated."""
    if a_aligned and b_aligned:
        return f"({a} {op} {b})"
    if a_aligned:
        return _tcmp(b, False, _FLIP[op], a, True)
    if not b_aligned:
        return f"(date_trunc('milliseconds', {a}) {op} date_trunc('milliseconds', {b}))"
    return {"=": f"({a} >= {b} AND {a} < {b} + {_MS})", "<>": f"({a} < {b} OR {a} >= {b} + {_MS})",
            "<": f"({a} < {b})", "<=": f"({a} < {b} + {_MS})", ">": f"({a} >= {b} + {_MS})",
            ">=": f"({a} >= {b})"}[op]


def _time_pair(v):
    return v.sql if v.type == "interval" else (v.sql, v.sql)


class Scope:
    """The joins one predicate needs through relations: LEFT JOINs from a one-row start, shared by
    equal path prefixes."""

    def __init__(self, compiler):
        self.c = compiler
        self.joins = []
        self.by_prefix = {}

    def join(self, key, entity, alias, rel):
        if key in self.by_prefix:
            return self.by_prefix[key]
        target = self.c.entities[rel.target]
        a = self.c.alias()
        cond = rel.cond(lambda col: entity.col(alias, col), lambda col: target.col(a, col))
        self.joins.append(f"LEFT JOIN ({target.source}) AS {a} ON {cond}")
        self.by_prefix[key] = (target, a)
        return target, a

    def wrap(self, pred):
        if not self.joins:
            return pred
        return f"EXISTS (SELECT 1 FROM (SELECT 1) AS _one {' '.join(self.joins)} WHERE {pred})"


class Compiler:
    def __init__(self, entities, params):
        self.entities = entities
        self.p = params
        self.n = 0

    def alias(self):
        self.n += 1
        return f"j{self.n}"

    # ------------------------------------------------------------------ paths

    def path(self, entity, alias, parts, scope, mode="filter"):
        where = entity.name
        prefix = ()
        i = 0
        while i < len(parts) and isinstance(parts[i], str) and entity.rel(parts[i]):
            rel = entity.rel(parts[i])
            prefix += (parts[i],)
            if mode == "order":
                if rel.many:
                    raise BadRequest(f"$orderby through {'/'.join(prefix)}: a {where} has many {rel.name}, so it "
                                     f"orders by none of them; order by a property of a single related entity")
                target = self.entities[rel.target]
                a = self.alias()
                inner = self.path(target, a, parts[i + 1:], None, mode)
                cond = rel.cond(lambda col: entity.col(alias, col), lambda col: target.col(a, col))

                def sub(x):
                    return f"(SELECT {x} FROM ({target.source}) AS {a} WHERE {cond} LIMIT 1)"

                if inner.type == "interval":
                    return Val((sub(inner.sql[0]), sub(inner.sql[1])), "interval")
                return Val(sub(inner.sql), inner.type)
            entity, alias = scope.join(prefix, entity, alias, rel)
            where = entity.name
            i += 1
        rest = parts[i:]
        if not rest:
            raise BadRequest(f"{'/'.join(map(str, parts))} names an entity, not a value: add a property, "
                             f"e.g. {'/'.join(map(str, parts))}/id")
        head = rest[0]
        if head in ("id", "@iot.id"):
            if len(rest) > 1:
                raise BadRequest(f"{'/'.join(map(str, parts))}: an id has no members")
            return Val(entity.col(alias, "id"), "number", not_null=True)
        prop = entity.prop(head) if isinstance(head, str) else None
        if prop is None:
            names = ", ".join(["id"] + [p.name for p in entity.props] + [r.name for r in entity.rels])
            raise BadRequest(f"a {where} has no property {head!r}; it has {names}")
        if prop.type == "interval":
            if len(rest) > 1:
                raise BadRequest(f"{prop.name} is a time and has no members")
            s, e = (x.format(a=alias) for x in prop.sql)
            return Val((s, e), "interval", not_null=prop.not_null)
        sql = prop.sql.format(a=alias)
        if len(rest) > 1:
            if prop.type != "json":
                raise BadRequest(f"{prop.name} is a {prop.type} and has no member {rest[1]!r}")
            for k in rest[1:]:
                sql = f"({sql} -> {self.p(k, 'int' if isinstance(k, int) else 'text')})"
            return Val(sql, "json")
        return Val(sql, prop.type, not_null=prop.not_null)

    # ------------------------------------------------------------------ values

    def value(self, entity, alias, node, scope, mode="filter"):
        if isinstance(node, Lit):
            return self.literal(node)
        if isinstance(node, Path):
            return self.path(entity, alias, node.parts, scope, mode)
        if isinstance(node, Call):
            return self.call(entity, alias, node, scope, mode)
        if isinstance(node, Op):
            if node.op in ("add", "sub", "mul", "div", "mod"):
                return self.arith(node.op, *(self.value(entity, alias, a, scope, mode) for a in node.args))
            if mode == "order":
                raise BadRequest(f"$orderby takes values, not a condition ({node.op})")
            return Val(self.predicate(entity, alias, node, scope), "bool")
        raise BadRequest("unexpected expression")

    def literal(self, node):
        k, v = node.kind, node.value
        if k == "null":
            return Val("NULL", "null", node)
        if k == "string":
            return Val(self.p(v, "text"), "string", node)
        if k == "number":
            return Val(self.p(v, "bigint" if isinstance(v, int) and abs(v) < 2**63 else "float8"), "number", node)
        if k == "bool":
            return Val("TRUE" if v else "FALSE", "bool", node)
        if k == "datetime":
            return Val(self.p(_ms(v), "timestamptz"), "datetime", node, aligned=True)
        if k == "interval":
            return Val((self.p(_ms(v[0]), "timestamptz"), self.p(_ms(v[1]), "timestamptz")), "interval", node,
                       aligned=True)
        if k == "duration":
            return Val(self.p(_ms(v), "interval"), "duration", node, aligned=True)
        if k == "date":
            return Val(self.p(v, "date"), "date", node)
        if k == "time":
            return Val(self.p(v, "time"), "time", node)
        if k == "geometry":
            kind, pts = v
            if kind == "POINT":
                return Val(f"point({self.p(pts[0][0], 'float8')}, {self.p(pts[0][1], 'float8')})", "geometry", node)
            text = ",".join(f"({x},{y})" for x, y in pts)
            if kind == "POLYGON":
                return Val(f"{self.p('(' + text + ')')}::polygon", "polygon", node)
            return Val(f"{self.p('[' + text + ']')}::path", "line", node)
        raise BadRequest(f"unexpected literal {k}")

    def as_number(self, v, what):
        if v.type == "number":
            return v.sql
        if v.type == "json":
            return f"(CASE WHEN jsonb_typeof({v.sql}) = 'number' THEN ({v.sql} #>> '{{}}')::float8 END)"
        if v.type == "null":
            return "NULL::float8"
        raise BadRequest(f"{what} needs a number, not a {v.type}")

    def as_string(self, v, what):
        if v.type == "string":
            return v.sql
        if v.type == "json":
            return f"(CASE WHEN jsonb_typeof({v.sql}) = 'string' THEN {v.sql} #>> '{{}}' END)"
        if v.type == "null":
            return "NULL::text"
        raise BadRequest(f"{what} needs a string, not a {v.type}")

    def as_time(self, v, what):
        if v.type in ("datetime", "interval"):
            return _time_pair(v)
        if v.type == "null":
            return ("NULL::timestamptz", "NULL::timestamptz")
        raise BadRequest(f"{what} needs a time, not a {v.type}")

    def arith(self, op, a, b):
        if op in ("add", "sub") and (a.type in ("datetime", "interval") or b.type == "duration"):
            if b.type != "duration" or a.type not in ("datetime", "interval", "duration"):
                raise BadRequest(f"{op}: a time takes a duration (duration'PT1H'), not a {b.type}")
            sign = "+" if op == "add" else "-"
            aligned = a.aligned and b.aligned
            if a.type == "interval":
                return Val(tuple(f"({x} {sign} {b.sql})" for x in a.sql), "interval", aligned=aligned)
            return Val(f"({a.sql} {sign} {b.sql})", "datetime" if a.type != "duration" else "duration",
                       aligned=aligned)
        x, y = self.as_number(a, op), self.as_number(b, op)
        if op == "div":
            return Val(f"({x}::float8 / nullif({y}::float8, 0))", "number")
        if op == "mod":
            return Val(f"mod({x}::numeric, nullif({y}::numeric, 0))::float8", "number")
        return Val(f"({x}::float8 {dict(add='+', sub='-', mul='*')[op]} {y}::float8)", "number")

    # ------------------------------------------------------------------ functions

    def call(self, entity, alias, node, scope, mode):
        f, args = node.name, node.args
        spec = FUNCTIONS.get(f)
        if spec is None:
            raise BadRequest(f"unknown function {f}(); the ones served are listed in docs/sensorthings.md")
        n = spec[0]
        if len(args) not in (n if isinstance(n, tuple) else (n,)):
            raise BadRequest(f"{f}() takes {' or '.join(map(str, n)) if isinstance(n, tuple) else n} argument(s), "
                             f"not {len(args)}")
        vals = [self.value(entity, alias, a, scope, mode) for a in args]
        return spec[1](self, f, vals)

    # ------------------------------------------------------------------ conditions

    def predicate(self, entity, alias, node, scope=None):
        if isinstance(node, Op) and node.op in ("and", "or"):
            return "(" + f" {node.op.upper()} ".join(self.predicate(entity, alias, x, scope) for x in node.args) + ")"
        if isinstance(node, Op) and node.op == "not":
            return f"(NOT {self.predicate(entity, alias, node.args[0], scope)})"
        own = scope is None
        scope = scope or Scope(self)
        if isinstance(node, Op) and node.op in _SQL_OP:
            fast = self._id_shortcut(entity, alias, node)
            pred = fast or self.compare(node.op, *(self.value(entity, alias, a, scope) for a in node.args))
        elif isinstance(node, Op) and node.op == "in":
            left = self.value(entity, alias, node.args[0], scope)
            pred = "(" + " OR ".join(self.compare("eq", left, self.value(entity, alias, x, scope))
                                     for x in node.args[1:]) + ")"
        else:
            v = self.value(entity, alias, node, scope)
            if v.type == "json":
                pred = f"(CASE WHEN jsonb_typeof({v.sql}) = 'boolean' THEN ({v.sql})::text::boolean END)"
            elif v.type != "bool":
                raise BadRequest("$filter needs a condition (e.g. result gt 20), not a bare value")
            else:
                pred = v.sql
        return scope.wrap(pred) if own else pred

    def _id_shortcut(self, entity, alias, node):
        """`Datastream/id eq 5`: the relation's columns equal those of entity 5, found once (an index
        probe per column, not a join per row)."""
        if node.op != "eq":
            return None
        left, right = node.args
        if isinstance(left, Lit):
            left, right = right, left
        if not (isinstance(left, Path) and isinstance(right, Lit) and right.kind == "number"
                and isinstance(right.value, int) and len(left.parts) == 2 and left.parts[1] in ("id", "@iot.id")):
            return None
        rel = entity.rel(left.parts[0])
        if rel is None or rel.many:
            return None
        target = self.entities[rel.target]
        a = self.alias()
        found = target.id_cond(lambda col: target.col(a, col), right.value, self.p)

        def theirs(col):
            return f"(SELECT {target.col(a, col)} FROM ({target.source}) AS {a} WHERE {found})"

        # the inverse relation's condition, when it has one, is written for the index (a feature of
        # interest's Observations: its pole's nodes in its time span)
        back = next((r for r in target.rels if r.target == entity.name and r.many), None)
        if back is not None:
            return back.cond(theirs, lambda col: entity.col(alias, col))
        return rel.cond(lambda col: entity.col(alias, col), theirs)

    def compare(self, op, l, r):
        o = _SQL_OP[op]
        if l.type == "null" or r.type == "null":
            other = r if l.type == "null" else l
            if other.type == "null":
                return "TRUE" if op in ("eq", "le", "ge") else "FALSE"
            x = other.sql[0] if other.type == "interval" else other.sql
            if other.type == "json":
                x = f"nullif({x}, 'null'::jsonb)"
            if op == "eq":
                return f"({x} IS NULL)"
            if op == "ne":
                return f"({x} IS NOT NULL)"
            return "NULL::boolean"
        types = {l.type, r.type}
        if types <= {"datetime", "interval"}:
            la, ra = l.aligned, r.aligned

            def t(x, op_, y):
                return _tcmp(x, la, op_, y, ra)

            if types == {"datetime"}:
                return t(l.sql, o, r.sql)
            (s1, e1), (s2, e2) = _time_pair(l), _time_pair(r)
            return {"eq": f"({t(s1, '=', s2)} AND {t(e1, '=', e2)})", "ne": f"({t(s1, '<>', s2)} AND {t(e1, '<>', e2)})",
                    "lt": f"({t(e1, '<=', s2)} AND {t(s1, '<', s2)})", "le": f"({t(s1, '<=', s2)} AND {t(e1, '<=', e2)})",
                    "gt": f"({t(s1, '>=', e2)} AND {t(s1, '>', s2)})",
                    "ge": f"({t(s1, '>=', s2)} AND {t(e1, '>=', e2)})"}[op]
        if "json" in types and len(types) == 2:
            j, other = (l, r) if l.type == "json" else (r, l)
            conv = {"number": self.as_number, "string": self.as_string}.get(other.type)
            if other.type == "bool":
                js = f"(CASE WHEN jsonb_typeof({j.sql}) = 'boolean' THEN ({j.sql})::text::boolean END)"
            elif conv:
                js = conv(j, op)
            else:
                raise BadRequest(f"cannot compare a JSON member with a {other.type}")
            js = js + (' COLLATE "C"' if other.type == "string" else "")
            return f"({js} {o} {other.sql})" if j is l else f"({other.sql} {o} {js})"
        if types == {"json"}:
            if op in ("eq", "ne"):
                return f"({l.sql} {o} {r.sql})"
            return f"(({l.sql})::text COLLATE \"C\" {o} ({r.sql})::text)"
        if types == {"number"}:
            return f"({l.sql} {o} {r.sql})"
        if types == {"string"}:
            return f"({l.sql} COLLATE \"C\" {o} {r.sql})"
        if types == {"number", "string"}:
            # a number against a string compares the number's text ('10' sorts before '3'), as the
            # OGC test suite expects of `result gt '3'`
            ls = f"({l.sql})::text" if l.type == "number" else l.sql
            rs = f"({r.sql})::text" if r.type == "number" else r.sql
            return f"({ls} COLLATE \"C\" {o} {rs})"
        if types == {"bool"} or types == {"date"} or types == {"time"} or types == {"duration"}:
            return f"({l.sql} {o} {r.sql})"
        if types == {"geometry"} and op in ("eq", "ne"):
            return f"({'' if op == 'eq' else 'NOT '}({l.sql} ~= {r.sql}))"
        raise BadRequest(f"cannot compare a {l.type} with a {r.type} ({op})")

    # ------------------------------------------------------------------ order

    def order_by(self, entity, alias, orderby):
        out = []
        for node, direction in orderby:
            v = self.value(entity, alias, node, None, mode="order")
            if isinstance(node, Lit):
                if v.type in ("geometry", "polygon", "line"):
                    raise BadRequest("$orderby cannot order by a geometry")
                continue  # a constant orders nothing (and PostgreSQL refuses ORDER BY TRUE)
            # the standard's nulls first ascending, last descending; PostgreSQL's default is the opposite
            nulls = "" if v.not_null else "NULLS FIRST" if direction == "asc" else "NULLS LAST"
            d = direction.upper()
            if v.type == "interval":
                out += [f"{v.sql[0]} {d} {nulls}", f"{v.sql[1]} {d} {nulls}"]
            elif v.type == "string":
                out.append(f"{v.sql} COLLATE \"C\" {d} {nulls}")
            elif v.type in ("geometry", "polygon", "line"):
                raise BadRequest("$orderby cannot order by a geometry")
            else:
                out.append(f"{v.sql} {d} {nulls}")
        out += [f"{entity.col(alias, c)} ASC" for c in entity.order]
        return ", ".join(out)


# ---------------------------------------------------------------------- the function table


def _strfn(sql, out="string", num_args=()):
    def f(c, name, v):
        args = [c.as_number(x, name + "()") if i in num_args else c.as_string(x, name + "()") for i, x in enumerate(v)]
        return Val(sql(*args), out)
    return f


def _timefn(part):
    def f(c, name, v):
        s, _ = c.as_time(v[0], name + "()")
        if part == "second":
            return Val(f"floor(extract(second FROM {s} AT TIME ZONE 'UTC'))::float8", "number")
        if part == "fractionalseconds":
            x = f"extract(second FROM {s} AT TIME ZONE 'UTC')"
            return Val(f"({x} - floor({x}))::float8", "number")
        return Val(f"extract({part} FROM {s} AT TIME ZONE 'UTC')::float8", "number")
    return f


def _date(c, name, v):
    s, _ = c.as_time(v[0], "date()")
    return Val(f"({s} AT TIME ZONE 'UTC')::date", "date")


def _time(c, name, v):
    s, _ = c.as_time(v[0], "time()")
    return Val(f"({s} AT TIME ZONE 'UTC')::time", "time")


def _math(sql):
    def f(c, name, v):
        return Val(sql.format(c.as_number(v[0], name + "()")), "number")
    return f


def _geo(kind):
    def f(c, name, v):
        for x in v[:2]:
            if x.type not in ("geometry", "polygon", "line"):
                raise BadRequest(f"{name}() takes geometries (a location, a feature or geography'POINT(lon lat)'), "
                                 f"not a {x.type}")
        a, b = v[0], v[1] if len(v) > 1 else None
        if kind == "distance":
            if a.type != "geometry" and b.type != "geometry":
                raise BadRequest(f"{name}(): one of the two must be a point (a location or a feature)")
            p, o = (a, b) if a.type == "geometry" else (b, a)
            return Val(f"({p.sql} <-> {o.sql})", "number")
        if kind == "length":
            if a.type == "line":
                return Val(f"length({a.sql})", "number")
            return Val("0::float8", "number") if a.type == "geometry" else Val(f"length(path({a.sql}))", "number")
        if kind in ("within", "contains"):
            inner, outer = (a, b) if kind == "within" else (b, a)
            if inner.type == "geometry" and outer.type == "polygon":
                return Val(f"({outer.sql} @> {inner.sql})", "bool")
            if inner.type == "geometry" and outer.type == "geometry":
                return Val(f"({outer.sql} ~= {inner.sql})", "bool")
            if inner.type == "geometry" and outer.type == "line":
                return Val(f"(({inner.sql} <-> {outer.sql}) = 0)", "bool")
            raise BadRequest(f"{name}(): served for a point within a polygon, line or point")
        if kind in ("intersects", "disjoint"):
            if a.type != "geometry" and b.type != "geometry":
                raise BadRequest(f"{name}(): one of the two must be a point (a location or a feature)")
            p, o = (a, b) if a.type == "geometry" else (b, a)
            hit = f"(({p.sql} <-> {o.sql}) = 0)"
            return Val(hit if kind == "intersects" else f"(NOT {hit})", "bool")
        if kind == "equals":
            if a.type == "geometry" and b.type == "geometry":
                return Val(f"({a.sql} ~= {b.sql})", "bool")
            return Val("FALSE", "bool")
        if a.type != "geometry" and b.type != "geometry":
            raise BadRequest(f"{name}(): one of the two must be a point (a location or a feature)")
        if kind in ("overlaps", "crosses"):
            # a single point neither overlaps (same dimension, neither within the other) nor crosses
            # (its interior both on and off the other) anything: OGC 06-103r4 §6.1.15.3
            return Val("FALSE", "bool")
        p, o, flipped = (a, b, False) if a.type == "geometry" else (b, a, True)
        where = _point_where(c, p, o)  # SQL: 'interior', 'boundary' or 'exterior' of o holds p
        if kind == "touches":
            return Val(f"({where} = 'boundary')", "bool")
        if kind == "relate":
            pat = v[2]
            if not (pat.lit is not None and pat.lit.kind == "string" and len(pat.lit.value) == 9
                    and set(pat.lit.value.upper()) <= set("TF*012")):
                raise BadRequest("st_relate() takes a DE-9IM pattern of 9 characters T, F, *, 0, 1, 2 as a string, "
                                 "e.g. 'T********'")
            dim = {"geometry": 0, "line": 1, "polygon": 2}[o.type]
            ext = {0: "0", 1: "1", 2: "2"}[dim]  # the point's exterior meets the other's interior
            rows = {"interior": "0FF", "boundary": "F0F", "exterior": "FF0"}
            bnd = "F" if dim == 0 else ("0" if dim == 1 else "1")  # the point's exterior meets the other's boundary
            mats = {k: r + "FFF" + ext + bnd + "2" for k, r in rows.items()}
            if dim == 0:  # two points: the other's interior is the point itself
                mats = {"interior": "0FFFFFFF2", "exterior": "FF0FFF0F2"}
            if flipped:
                mats = {k: "".join(m[i + 3 * j] for i in range(3) for j in range(3)) for k, m in mats.items()}
            regex = "^" + "".join({"T": "[012]", "*": "."}.get(ch, ch) for ch in pat.lit.value.upper()) + "$"
            whens = " ".join(f"WHEN {c.p(k, 'text')} THEN {c.p(m, 'text')}" for k, m in mats.items())
            return Val(f"((CASE {where} {whens} END) ~ {c.p(regex, 'text')})", "bool")
        raise BadRequest(f"{name}() is not served")
    return f


def _point_where(c, p, o):
    """SQL: where the point p lies against o: 'interior', 'boundary' or 'exterior'."""
    if o.type == "geometry":
        return f"(CASE WHEN {p.sql} ~= {o.sql} THEN 'interior' ELSE 'exterior' END)"
    if o.type == "polygon":
        return (f"(CASE WHEN ({p.sql} <-> path({o.sql})) = 0 THEN 'boundary' WHEN {o.sql} @> {p.sql} THEN 'interior' "
                f"ELSE 'exterior' END)")
    pts = o.lit.value[1] if o.lit is not None else None
    if not pts:
        raise BadRequest("a line must be a geography'LINESTRING(...)' literal")
    ends = " OR ".join(f"{p.sql} ~= point({c.p(x, 'float8')}, {c.p(y, 'float8')})" for x, y in (pts[0], pts[-1]))
    return (f"(CASE WHEN {ends} THEN 'boundary' WHEN ({p.sql} <-> {o.sql}) = 0 THEN 'interior' "
            f"ELSE 'exterior' END)")


def _now(c, name, v):
    return Val("now()", "datetime")


def _const_time(t):
    def f(c, name, v):
        return Val(c.p(t, "timestamptz"), "datetime")
    return f


def _offset(c, name, v):
    c.as_time(v[0], name + "()")
    return Val("0::float8", "number")


def _concat(c, name, v):
    return Val(f"({c.as_string(v[0], 'concat()')} || {c.as_string(v[1], 'concat()')})", "string")


FUNCTIONS = {
    "substringof": (2, _strfn(lambda a, b: f"(strpos({b}, {a}) > 0)", "bool")),
    "contains": (2, _strfn(lambda a, b: f"(strpos({a}, {b}) > 0)", "bool")),
    "startswith": (2, _strfn(lambda a, b: f"(left({a}, length({b})) = {b})", "bool")),
    "endswith": (2, _strfn(lambda a, b: f"(right({a}, length({b})) = {b})", "bool")),
    "length": (1, _strfn(lambda a: f"char_length({a})::float8", "number")),
    "indexof": (2, _strfn(lambda a, b: f"strpos({a}, {b})::float8", "number")),
    "substring": ((2, 3), _strfn(lambda a, b, n=None: f"substr({a}, greatest(({b})::int, 0) + 1"
                                                       + (f", greatest(({n})::int, 0))" if n else ")"),
                                 num_args=(1, 2))),
    "tolower": (1, _strfn(lambda a: f"lower({a})")),
    "toupper": (1, _strfn(lambda a: f"upper({a})")),
    "trim": (1, _strfn(lambda a: f"btrim({a}, ' ')")),
    "concat": (2, _concat),
    "year": (1, _timefn("year")), "month": (1, _timefn("month")), "day": (1, _timefn("day")),
    "hour": (1, _timefn("hour")), "minute": (1, _timefn("minute")), "second": (1, _timefn("second")),
    "fractionalseconds": (1, _timefn("fractionalseconds")),
    "date": (1, _date), "time": (1, _time), "totaloffsetminutes": (1, _offset),
    "now": (0, _now), "mindatetime": (0, _const_time(TIME_MIN)), "maxdatetime": (0, _const_time(TIME_MAX)),
    "round": (1, _math("round({0}::numeric)::float8")), "floor": (1, _math("floor({0})::float8")),
    "ceiling": (1, _math("ceil({0})::float8")),
    "geo.distance": (2, _geo("distance")), "geo.length": (1, _geo("length")),
    "geo.intersects": (2, _geo("intersects")), "st_intersects": (2, _geo("intersects")),
    "st_within": (2, _geo("within")), "st_contains": (2, _geo("contains")),
    "st_disjoint": (2, _geo("disjoint")), "st_equals": (2, _geo("equals")),
    "st_touches": (2, _geo("touches")), "st_overlaps": (2, _geo("overlaps")), "st_crosses": (2, _geo("crosses")),
    "st_relate": (3, _geo("relate")),
}
