"""Rows to SensorThings JSON with absolute links: the one renderer of the HTTP API and the live feeds.

`entity(E, row, base)` is an entity as `GET {base}/{Set}({id})` returns it; times are UTC with
milliseconds and Z (fixed width, so their text sorts as the times do), an interval `start/end`.
"""

import datetime

UTC = datetime.timezone.utc
DATA_ARRAY = ("id", "phenomenonTime", "result", "resultTime", "resultQuality", "validTime", "parameters")


def fmt_time(t):
    if t is None:
        return None
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def number(v):
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return int(v)
    return v


def prop_value(prop, row):
    """A property's JSON value from a row (None when null)."""
    if prop.type == "interval":
        s, e = row.get(f"p_{prop.name}__s"), row.get(f"p_{prop.name}__e")
        if s is None:
            return None
        return fmt_time(s) if s == e or e is None else f"{fmt_time(s)}/{fmt_time(e)}"
    v = row.get(f"p_{prop.name}")
    if prop.type == "datetime":
        return fmt_time(v)
    if prop.type == "number":
        return number(v)
    return v


def self_link(base, E, ident):
    return f"{base}/{E.set}({ident})"


def entity(E, row, base, select=None, expanded=None):
    """One entity's JSON: select is None (all) or the names asked for; expanded: {nav: rendered}."""
    ident = row["k_id"]
    link = self_link(base, E, ident)
    out = {}
    want = (lambda n: True) if select is None else (lambda n: n in select)
    if select is None or "id" in select or "@iot.id" in select:
        out["@iot.id"] = ident
    if select is None or "@iot.selfLink" in select:
        out["@iot.selfLink"] = link
    for p in E.props:
        if not want(p.name):
            continue
        v = prop_value(p, row)
        if v is None and p.omit_null:
            continue
        out[p.name] = v
    expanded = expanded or {}
    for r in E.rels:
        if r.name in expanded:
            out.update(expanded[r.name])
        elif want(r.name):
            out[f"{r.name}@iot.navigationLink"] = f"{link}/{r.name}"
    return out


def observation(E, row, base):
    """An Observation exactly as GET Observations(id) returns it (MQTT, server-sent events)."""
    return entity(E, row, base)


def data_array_row(E, row, components):
    values = []
    for c in components:
        if c == "id":
            values.append(row["k_id"])
        elif c == "validTime":
            values.append(None)
        else:
            values.append(prop_value(E.prop(c), row))
    return values
