"""One GET request: the resource path resolved, the page, its expansions and count fetched, rendered.

Api(entities, base).get(conn, path, query) -> (status, body, content type), with conn an async
psycopg connection (rows as dicts). Evaluation order as OGC 18-088 §9.3.1: $filter, $count,
$orderby, $skip, $top, then $select and $expand on the page; @iot.count comes from $filter alone.
"""

import datetime

from . import render
from .errors import BadRequest, NotFound
from .filter import Lit, Op, Path
from .mapping import SETS, datastream_kind, observation_kind
from .parse import next_link_query, parse_options, parse_path, split_query
from .sql import COUNT_BOUND, Compiler, Params

MAX_ENTITIES = 20_000  # entities in one response, expansions included
CONFORMANCE = [
    "http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/resource-path/resource-path-to-entities",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data",
]
JSON = "application/json; charset=utf-8"


def _used_cols(rel):
    used = []
    rel.cond(lambda col: used.append(col) or "x", lambda col: "y")
    return list(dict.fromkeys(used))


def _token(v):
    return v.isoformat() if isinstance(v, datetime.datetime) else v


class Page:
    def __init__(self, rows, more, count=None, last=None):
        self.rows, self.more, self.count = rows, more, count
        self.last = last  # the default order's key of the last row, when more follow: the next page's cursor


class Api:
    def __init__(self, entities, base):
        self.entities = entities
        self.by_set = {e.set: e for e in entities.values()}
        self.base = base.rstrip("/")

    # ------------------------------------------------------------------ SQL pieces

    def columns(self, E, alias, select=None, cols=None):
        """The select list: key columns (always id) and the properties to render."""
        out = [f"{E.col(alias, 'id')} AS \"k_id\""]
        for c in cols or ():
            if c != "id":
                out.append(f"{E.col(alias, c)} AS \"k_{c}\"")
        for p in E.props:
            if select is not None and p.name not in select:
                continue
            if p.type == "interval":
                s, e = (x.format(a=alias) for x in p.sql)
                out += [f"{s} AS \"p_{p.name}__s\"", f"{e} AS \"p_{p.name}__e\""]
            else:
                out.append(f"{(p.out or p.sql).format(a=alias)} AS \"p_{p.name}\"")
        return ", ".join(out)

    def check_select(self, E, select):
        if select is None:
            return None
        names = {"id", "@iot.id", "@iot.selfLink"} | {p.name for p in E.props} | {r.name for r in E.rels}
        for s in select:
            if s not in names:
                raise BadRequest(f"$select={s!r}: a {E.name} has no such property; it has "
                                 f"{', '.join(['id'] + [p.name for p in E.props] + [r.name for r in E.rels])}")
        return set(select)

    def cols_for(self, E, expands, extra=()):
        cols = list(extra)
        for ex in expands:
            rel = E.rel(ex.nav)
            if rel is None:
                raise BadRequest(f"$expand={ex.nav}: a {E.name} has no navigation property {ex.nav!r}; it has "
                                 f"{', '.join(r.name for r in E.rels)}")
            cols += _used_cols(rel)
        return list(dict.fromkeys(cols))

    # ------------------------------------------------------------------ the request

    async def get(self, conn, path, query):
        segs = parse_path(path)
        opts = parse_options(split_query(query))
        if not segs:
            return 200, self.root(), JSON
        name, key = segs[0]
        E = self.by_set.get(name)
        if E is None:
            raise NotFound(f"no entity set {name!r}: the sets are {', '.join(SETS)}")
        constraint = (lambda a, p, E=E: "TRUE") if key is None else self._by_id(E, key)
        if key is not None:
            state = ("entity", E, await self.fetch_one(conn, E, constraint, key, self.kind_of(E, key=key)))
        else:
            state = ("collection", E, (constraint, self.kind_of(E, flt=opts.filter)))
        canon = [f"{name}" + (f"({key})" if key is not None else "")]
        rest = segs[1:]
        while rest:
            (sname, skey), rest = rest[0], rest[1:]
            kind, E, x = state
            if sname == "$ref":
                if rest or skey is not None:
                    raise NotFound("$ref ends a path")
                return await self.refs(conn, state, opts, "/".join(canon) + "/$ref")
            if kind == "collection":
                raise NotFound(f"{'/'.join(canon)} is a collection: address one of them by id, e.g. "
                               f"{'/'.join(canon)}(1)")
            row = x
            rel = E.rel(sname)
            if rel is not None:
                C = self.entities[rel.target]
                constraint = self._bound(E, rel, C, row)
                kind = self.kind_of(C, rel=rel, row=row)
                canon.append(sname + (f"({skey})" if skey is not None else ""))
                if rel.many and skey is None:
                    state = ("collection", C, (constraint, kind))
                    continue
                if not rel.many and skey is not None:
                    raise NotFound(f"{sname} is a single entity: drop the id")
                if skey is not None:
                    inner, by = constraint, self._by_id(C, skey)
                    constraint = lambda a, p, inner=inner, by=by: f"({inner(a, p)}) AND ({by(a, p)})"
                child = await self.fetch_one(conn, C, constraint, skey, kind)
                state = ("entity", C, child)
                continue
            if skey is not None:
                raise NotFound(f"a {E.name} has no navigation property {sname!r}")
            return self.property(E, row, sname, rest, opts)
        kind, E, x = state
        if kind == "entity":
            if opts.result_format:
                raise BadRequest("$resultFormat=dataArray is for collections of Observations")
            return 200, await self.one(conn, E, x, opts), JSON
        return 200, await self.collection(conn, E, x, opts, "/".join(canon)), JSON

    def _by_id(self, E, key):
        return lambda a, p: E.id_cond(lambda col: E.col(a, col), key, p)

    def _bound(self, E, rel, C, row):
        def constraint(a, p):
            return rel.cond(lambda col: p(row[f"k_{col}"], E.cols.get(col)), lambda col: C.col(a, col))
        return constraint

    @staticmethod
    def src(E, kind):
        return E.branches[kind] if kind is not None and E.branches else E.source

    def kind_of(self, E, rel=None, row=None, key=None, flt=None):
        """The kind (readings, hourly, daily) a request fixes for an entity with branches, else None."""
        if not E.branches:
            return None
        if key is not None:
            return observation_kind(key)
        if rel is not None and "kind" in _used_cols(rel):
            return row.get("k_kind")
        conj, found = [flt] if flt is not None else [], None
        while conj:
            n = conj.pop()
            if isinstance(n, Op) and n.op == "and":
                conj += n.args
            elif isinstance(n, Op) and n.op == "eq":
                a, b = n.args
                if isinstance(a, Lit):
                    a, b = b, a
                if (isinstance(a, Path) and a.parts in (("Datastream", "id"), ("Datastream", "@iot.id"))
                        and isinstance(b, Lit) and b.kind == "number" and isinstance(b.value, int)):
                    found = datastream_kind(b.value)
        return found

    async def fetch_one(self, conn, E, constraint, key=None, kind=None):
        p = Params()
        sql = (f"SELECT {self.columns(E, 'e', None, list(E.cols))} FROM ({self.src(E, kind)}) AS e "
               f"WHERE {constraint('e', p)} LIMIT 1")
        row = await (await conn.execute(sql, p.values)).fetchone()
        if row is None:
            raise NotFound(f"no such {E.name}" + (f" with id {key}" if key is not None else "")
                           + ": check the id (GET the collection to see the ids)")
        return row

    def root(self):
        value = [{"name": s, "url": f"{self.base}/{s}"} for s in SETS]
        settings = {"conformance": list(CONFORMANCE)}
        return {"value": value, "serverSettings": settings}

    def property(self, E, row, name, rest, opts):
        if any(v is not None for v in (opts.select, opts.filter)) or opts.expand:
            raise BadRequest("$select, $filter and $expand do not apply to a property")
        if name in ("id", "@iot.id"):
            value, label = row["k_id"], "@iot.id"
        else:
            prop = E.prop(name)
            if prop is None:
                raise NotFound(f"a {E.name} has no property {name!r}; it has "
                               f"{', '.join(['id'] + [p.name for p in E.props] + [r.name for r in E.rels])}")
            value, label = render.prop_value(prop, row), name
            while rest and rest[0][0] != "$value":
                member, mkey = rest[0]
                if not isinstance(value, dict) or mkey is not None:
                    raise NotFound(f"{label} has no member {member!r}")
                if member not in value:
                    raise NotFound(f"{label} has no member {member!r}")
                value, label, rest = value[member], member, rest[1:]
        if rest and rest[0][0] == "$value":
            if len(rest) > 1:
                raise NotFound("$value ends a path")
            if value is None:
                return 204, None, None
            if isinstance(value, (dict, list)):
                import json
                return 200, json.dumps(value, ensure_ascii=False), "text/plain; charset=utf-8"
            return 200, str(value), "text/plain; charset=utf-8"
        if rest:
            raise NotFound(f"{label} has no member {rest[0][0]!r}")
        if value is None:
            return 204, None, None
        return 200, {label: value}, JSON

    # ------------------------------------------------------------------ entities and pages

    async def one(self, conn, E, row, opts):
        select = self.check_select(E, opts.select)  # $filter, $top, ... on one entity: ignored, as FROST does
        budget = [1]
        rows = [row]
        expanded = await self.expand(conn, E, rows, opts.expand, budget)
        return render.entity(E, row, self.base, self._selected(select, opts), expanded[0])

    def _selected(self, select, opts):
        if select is None:
            return None
        return select | {x.nav for x in opts.expand}

    def where(self, E, alias, constraint, opts, p):
        parts = [constraint(alias, p)]
        if opts.filter is not None:
            parts.append(Compiler(self.entities, p).predicate(E, alias, opts.filter))
        return " AND ".join(f"({x})" for x in parts)

    async def page(self, conn, E, constraint, opts, select, cols):
        constraint, kind = constraint
        source = self.src(E, kind)
        n = opts.page_size()
        p = Params()
        where = self.where(E, "e", constraint, opts, p)
        count = None
        if opts.count:
            count = await self.count(conn, f"FROM ({source}) AS e WHERE {where}", p.values)
        if n == 0:
            return Page([], False, count)
        # In the default order a page starts after the last row of the one before (keyset), so that
        # rows stored meanwhile, earlier in the order (a node's late batch), shift nothing: each row
        # is served once. With $orderby, pages are offsets ($skip).
        keyset = not opts.orderby
        if opts.after is not None:
            if not keyset:
                raise BadRequest("$skiptoken goes with the default order, not $orderby: follow @iot.nextLink as given")
            where += f" AND ({self.after(E, 'e', opts.after, p)})"
        order = Compiler(self.entities, p).order_by(E, "e", opts.orderby)
        cols = list(cols) + [c for c in E.order if keyset and c != "id" and c not in cols]
        sql = (f"SELECT {self.columns(E, 'e', select, cols)} FROM ({source}) AS e WHERE {where} "
               f"ORDER BY {order} LIMIT {n + 1} OFFSET {int(opts.skip)}")
        rows = await (await conn.execute(sql, p.values)).fetchall()
        more = len(rows) > n
        last = [_token(rows[n - 1][f"k_{c}"]) for c in E.order] if more and keyset else None
        return Page(rows[:n], more, count, last)

    @staticmethod
    def after(E, alias, token, p):
        """SQL: a row after the cursor in E's default order; the leading column alone as well, for the index."""
        if len(token) != len(E.order):
            raise BadRequest("$skiptoken is not one this server wrote for this collection: follow @iot.nextLink")
        vals = []
        for c, v in zip(E.order, token):
            if E.cols[c] == "timestamptz":
                try:
                    v = datetime.datetime.fromisoformat(v)
                except (TypeError, ValueError):
                    v = None
                if v is None or v.tzinfo is None:
                    raise BadRequest("$skiptoken is not one this server wrote: follow @iot.nextLink as it is given")
            elif not (isinstance(v, int) and -2**63 <= v < 2**63):
                raise BadRequest("$skiptoken is not one this server wrote: follow @iot.nextLink as it is given")
            vals.append(p(v, E.cols[c]))
        lhs = [E.col(alias, c) for c in E.order]
        return f"{lhs[0]} >= {vals[0]} AND ({', '.join(lhs)}) > ({', '.join(vals)})"

    def next_link(self, path, opts, pg):
        n = opts.page_size()
        return f"{self.base}/{path}?{next_link_query(opts.raw, opts.skip + n, n, pg.last)}"

    async def count(self, conn, from_where, values):
        bound = COUNT_BOUND
        sql = f"SELECT count(*) AS n FROM (SELECT 1 {from_where} LIMIT {bound + 1}) AS c"
        n = (await (await conn.execute(sql, values)).fetchone())["n"]
        if n <= bound:
            return n
        plan = (await (await conn.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 {from_where}", values)).fetchone())
        est = int(list(plan.values())[0][0]["Plan"]["Plan Rows"])
        return max(est, bound + 1)

    async def collection(self, conn, E, constraint, opts, path):
        if opts.result_format:
            return await self.data_array(conn, E, constraint, opts, path)
        select = self.check_select(E, opts.select)
        cols = self.cols_for(E, opts.expand)
        pg = await self.page(conn, E, constraint, opts, None if select is None else select, cols)
        budget = [len(pg.rows)]
        expanded = await self.expand(conn, E, pg.rows, opts.expand, budget)
        sel = self._selected(select, opts)
        out = {}
        if pg.count is not None:
            out["@iot.count"] = pg.count
        out["value"] = [render.entity(E, r, self.base, sel, x) for r, x in zip(pg.rows, expanded)]
        if pg.more:
            out["@iot.nextLink"] = self.next_link(path, opts, pg)
        return out

    async def refs(self, conn, state, opts, path):
        if opts.select is not None or opts.expand or opts.result_format:
            raise BadRequest("$select, $expand and $resultFormat do not apply to $ref")
        kind, E, x = state
        if kind == "entity":
            return 200, {"@iot.selfLink": render.self_link(self.base, E, x["k_id"])}, JSON
        pg = await self.page(conn, E, x, opts, set(), [])
        out = {}
        if pg.count is not None:
            out["@iot.count"] = pg.count
        out["value"] = [{"@iot.selfLink": render.self_link(self.base, E, r["k_id"])} for r in pg.rows]
        if pg.more:
            out["@iot.nextLink"] = self.next_link(path, opts, pg)
        return 200, out, JSON

    async def data_array(self, conn, E, constraint, opts, path):
        if E.name != "Observation":
            raise BadRequest(f"$resultFormat=dataArray is for Observations, not {E.set}")
        if opts.expand:
            raise BadRequest("$resultFormat=dataArray takes no $expand (OGC 18-088 §13.1.1)")
        if opts.select is not None:
            for s in opts.select:
                if s not in render.DATA_ARRAY and s != "@iot.id":
                    raise BadRequest(f"$select={s!r}: a dataArray has the components {', '.join(render.DATA_ARRAY)}")
            chosen = {"id" if s == "@iot.id" else s for s in opts.select}
            components = [c for c in render.DATA_ARRAY if c in chosen]
        else:
            components = list(render.DATA_ARRAY)
        pg = await self.page(conn, E, constraint, opts, set(components) - {"id", "validTime"}, ["datastream_id"])
        groups = {}
        for r in pg.rows:
            groups.setdefault(r["k_datastream_id"], []).append(render.data_array_row(E, r, components))
        ds = self.entities["Datastream"]
        out = {}
        if pg.count is not None:
            out["@iot.count"] = pg.count
        out["value"] = [{"Datastream@iot.navigationLink": render.self_link(self.base, ds, d), "components": components,
                         "dataArray@iot.count": len(rows), "dataArray": rows} for d, rows in groups.items()]
        if pg.more:
            out["@iot.nextLink"] = self.next_link(path, opts, pg)
        return out

    # ------------------------------------------------------------------ $expand

    async def expand(self, conn, E, rows, expands, budget):
        """-> for each row, {nav: the JSON members its expansion adds}."""
        out = [{} for _ in rows]
        if not rows or not expands:
            return out
        for ex in expands:
            rel = E.rel(ex.nav)
            if rel is None:
                raise BadRequest(f"$expand={ex.nav}: a {E.name} has no navigation property {ex.nav!r}; it has "
                                 f"{', '.join(r.name for r in E.rels)}")
            C = self.entities[rel.target]
            o = ex.options
            select = self.check_select(C, o.select)
            used = _used_cols(rel)
            n = o.page_size() if rel.many else 1
            cols = self.cols_for(C, o.expand)
            constraint = lambda a, pp: rel.cond(lambda col: f"px.{col}", lambda col: C.col(a, col))
            groups = {}
            for i, r in enumerate(rows):
                groups.setdefault(self.kind_of(C, rel=rel, row=r), []).append(i)
            children, counts = [], {}
            for kind, members in groups.items():
                source = self.src(C, kind)
                p = Params()
                tuples = ", ".join("(" + ", ".join([str(i)] + [p(rows[i][f"k_{c}"], E.cols.get(c)) for c in used])
                                   + ")" for i in members)
                px = f"(VALUES {tuples}) AS px(__i, {', '.join(used)})"
                where = self.where(C, "c", constraint, o, p)
                order = Compiler(self.entities, p).order_by(C, "c", o.orderby)
                # at most the entities the response has room for, and one more to know it is full:
                # 10,000 parents of 10,001 children each would otherwise all be fetched, then refused
                # (a parent's row past its page is fetched, not served: one for each parent more)
                cap = max(MAX_ENTITIES - budget[0], 0) + len(members) + 1
                sql = (f"SELECT px.__i AS \"__i\", c.* FROM {px} CROSS JOIN LATERAL (SELECT "
                       f"{self.columns(C, 'c', select, cols)} FROM ({source}) AS c WHERE {where} ORDER BY {order} "
                       f"LIMIT {n + 1} OFFSET {int(o.skip) if rel.many else 0}) AS c LIMIT {cap}")
                got = await (await conn.execute(sql, p.values)).fetchall() if n else []
                children += got
                counted = {}
                for ch in got:  # the row past a parent's page is not in the response
                    counted[ch["__i"]] = min(counted.get(ch["__i"], 0) + 1, n)
                budget[0] += sum(counted.values())
                if budget[0] > MAX_ENTITIES or len(got) >= cap:
                    raise BadRequest(f"the response would hold more than {MAX_ENTITIES:,} entities: lower $top inside "
                                     f"$expand, or page the related entities by their own URL")
                if rel.many and o.count:
                    wc = where  # the same parameters: the count query reuses p
                    csql = (f"SELECT px.__i AS \"__i\", (SELECT count(*) FROM (SELECT 1 FROM ({source}) AS c "
                            f"WHERE {wc} LIMIT {COUNT_BOUND + 1}) AS x) AS n FROM {px}")
                    counts.update({r["__i"]: r["n"] for r in await (await conn.execute(csql, p.values)).fetchall()})
            by_parent = {}
            for ch in children:
                by_parent.setdefault(ch["__i"], []).append(ch)
            flat = [ch for i in range(len(rows)) for ch in by_parent.get(i, [])[:n]]
            nested = await self.expand(conn, C, flat, o.expand, budget)
            nested_of = {id(ch): x for ch, x in zip(flat, nested)}
            sel = self._selected(select, o)
            for i, r in enumerate(rows):
                kids = by_parent.get(i, [])
                link = f"{render.self_link(self.base, E, r['k_id'])}/{ex.nav}"
                if not rel.many:
                    out[i][ex.nav] = {ex.nav: render.entity(C, kids[0], self.base, sel, nested_of[id(kids[0])])
                                      if kids else None}
                    continue
                members = {}
                if o.count:
                    members[f"{ex.nav}@iot.count"] = counts.get(i, 0)
                members[ex.nav] = [render.entity(C, k, self.base, sel, nested_of[id(k)]) for k in kids[:n]]
                if len(kids) > n:
                    members[f"{ex.nav}@iot.nextLink"] = f"{link}?{next_link_query(o.raw, o.skip + n, n)}"
                out[i][ex.nav] = members
        return out

