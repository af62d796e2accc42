"""The SensorThings entities over the city's schema 4 (tools/city/db.py; docs/sensorthings.md).

Each Entity is a SQL source (a SELECT over the city's tables, or the registry's constants), its
columns, its properties (a typed SQL expression each, `{a}` standing for the source's alias) and its
navigation properties (a condition between a parent's and a child's columns). sql.py compiles
requests against these declarations only; nothing else in the server knows a table name.

Ids: Thing = things.id (a node on a pole); Location = FeatureOfInterest = locations.id (a pole's
position); HistoricalLocation = thing_poles.id * 2^22 + locations.id; Datastream = series.id for its
readings, + 2^31 for its hourly means, + 2^32 for its daily means; Sensor = SENSOR_IDS; ObservedProperty = the registry key;
Observation = samples.id * 256 + key for a reading, -(series.id * 2^22 + hour since 1970) for an
hourly mean and -(series.id * 2^22 + 2^21 + day since 1970) for a daily one.
"""

import datetime
from dataclasses import dataclass, field

from openpole.spec.registry import REGISTRY

UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
HOURLY_OFFSET = 2**31
DAILY_OFFSET = 2**32
AGG_SLOT_BITS = 22
DAILY_SLOT = 2**21
KINDS = {0: "readings", 1: "hourly", 2: "daily"}
HL_LOC_BITS = 22  # HistoricalLocation id = thing_poles.id * 2^22 + locations.id

# A Sensor's id is stable forever: a new sensor model gets the next number (tests/test_sta_unit.py
# fails while a sensor spec has none). The noise meter is openpole's own (firmware/noise), whatever
# microphone feeds it: the batches do not say which.
SENSOR_IDS = {"bme280": 1, "pms5003": 2, "sht31": 3, "noise": 4}
NOISE_QUANTITIES = ("laeq", "lamax", "lamin", "la10", "la50", "la90")
# UCUM codes of openpole's unit ids (sensor_specs/units.toml); 0.1 L is a decilitre.
UCUM = {"Cel": "Cel", "%RH": "%", "hPa": "hPa", "ug/m3": "ug/m3", "/0.1L": "/dL", "dBA": "dB"}
OM_MEASUREMENT = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
TIME_QUALITY = ("synchronised", "unsynchronised", "implausible", "before_reset")  # upstream_batch.cddl tq


def lit(value):
    """A constant from the registry or the operator's configuration as a SQL literal (never user input)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    # psycopg reads %(name)s in the query text as a parameter: a literal % is doubled
    return "'" + str(value).replace("'", "''").replace("%", "%%") + "'"


def iso(expr):
    """SQL: a timestamptz as the API writes times (UTC, milliseconds, Z)."""
    return f"""to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""


@dataclass
class Prop:
    name: str
    type: str  # string, number, datetime, interval, json, geometry
    sql: object  # SQL template over {a}; an interval is (start, end)
    out: str = None  # what is selected for the response, when not sql (a geometry's GeoJSON)
    omit_null: bool = False  # an optional property: left out when null
    obj: bool = False  # JSON object valued: its $value is the object's text
    # never null: ordered without NULLS FIRST/LAST, so that an index's own order serves $orderby
    not_null: bool = False


@dataclass
class Rel:
    name: str
    target: str
    many: bool
    cond: object  # cond(p, c) -> SQL; p(col), c(col) give a parent's and a child's column


@dataclass
class Entity:
    name: str
    set: str
    source: str
    cols: dict  # column -> SQL type, the ones relations and ids use
    props: list
    rels: list
    id_cond: object  # id_cond(col, value, param) -> SQL selecting the entity with that id
    order: tuple = ("id",)  # the default and tie-breaking order: columns, ascending
    computed: dict = field(default_factory=dict)  # column -> SQL template over {a}, computed when used
    # the source's UNION ALL branches by the column `kind`: a request that fixes the kind reads its
    # branch alone, so that the branch's index order serves $orderby (PostgreSQL sorts a UNION whole)
    branches: tuple = ()

    def prop(self, name):
        return next((p for p in self.props if p.name == name), None)

    def rel(self, name):
        return next((r for r in self.rels if r.name == name), None)

    def col(self, alias, name):
        if name in self.computed:
            return "(" + self.computed[name].format(a=alias) + ")"
        return f"{alias}.{name}"


def _eq(*pairs):
    """A relation whose parent column p_i equals the child column c_i."""
    return lambda p, c: " AND ".join(f"{c(cc)} = {p(pc)}" for pc, cc in pairs)


def _simple_id(col, value, param):
    return f"{col('id')} = {param(value)}"


def _datastream_id(col, value, param):
    if 0 < value < HOURLY_OFFSET:
        kind, series = 0, value
    elif HOURLY_OFFSET < value < DAILY_OFFSET:
        kind, series = 1, value - HOURLY_OFFSET
    elif DAILY_OFFSET < value < DAILY_OFFSET + HOURLY_OFFSET:
        kind, series = 2, value - DAILY_OFFSET
    else:
        return "FALSE"
    return f"{col('kind')} = {param(kind)} AND {col('series_id')} = {param(series)}"


def observation_key(value):
    """An Observation id -> ('reading', sample id, key) or ('hourly'|'daily', series id, start), or None."""
    if value >= 0:
        return ("reading", value >> 8, value & 255) if value & 255 else None
    n = -value
    series, slot = n >> AGG_SLOT_BITS, n & (2**AGG_SLOT_BITS - 1)
    if series <= 0:
        return None
    if slot < DAILY_SLOT:
        return "hourly", series, EPOCH + datetime.timedelta(hours=slot)
    return "daily", series, EPOCH + datetime.timedelta(days=slot - DAILY_SLOT)


def datastream_kind(value):
    """A Datastream id -> its kind (0 readings, 1 hourly, 2 daily), or None for no such id."""
    if 0 < value < HOURLY_OFFSET:
        return 0
    if HOURLY_OFFSET < value < DAILY_OFFSET:
        return 1
    if DAILY_OFFSET < value < DAILY_OFFSET + HOURLY_OFFSET:
        return 2
    return None


def observation_kind(value):
    k = observation_key(value)
    return None if k is None else ("reading", "hourly", "daily").index(k[0])


def _historical_id(col, value, param):
    if value <= 0:
        return "FALSE"
    return f"{col('tp_id')} = {param(value >> HL_LOC_BITS)} AND {col('loc_id')} = {param(value & (2**HL_LOC_BITS - 1))}"


def _observation_id(col, value, param):
    k = observation_key(value)
    if k is None:
        return "FALSE"
    if k[0] == "reading":
        return f"{col('kind')} = 0 AND {col('sample_id')} = {param(k[1])} AND {col('key')} = {param(k[2])}"
    return f"{col('kind')} = {param(1 if k[0] == 'hourly' else 2)} AND {col('series_id')} = {param(k[1])} " \
           f"AND {col('t0')} = {param(k[2])}"


def _case(column, mapping, default="NULL"):
    whens = " ".join(f"WHEN {lit(k)} THEN {lit(v)}" for k, v in mapping.items())
    return f"CASE {column} {whens} ELSE {default} END"


def sensors():
    """[(id, stem, model, description, page)] from sensor_specs/ and the noise meter."""
    out = []
    for stem, s in sorted(REGISTRY.specs.sensors.items()):
        names = ", ".join(m["quantity"] for m in s.get("measures", []))
        out.append((SENSOR_IDS[stem], f"sensor_specs/sensors/{stem}.toml", s["model"],
                    f"{s.get('manufacturer', '')} {s['model']}: {names}".strip(), f"sensors/{stem}.html"))
    out.append((SENSOR_IDS["noise"], "docs/specs/noise.md", "openpole noise meter",
                "openpole's A-weighted sound level meter (IEC 61672-1 class 2 design) on an I2S MEMS microphone: "
                + ", ".join(NOISE_QUANTITIES), "noise.html"))
    return sorted(out)


def _sensor_choice():
    """SQL over {a} (a series: thing_id, key) -> the Sensor id: a quantity one model measures is that
    model's; one several measure (temperature, humidity) is the model whose other quantities the same
    node reports (a node with pressure has a BME280), else the one measuring fewest."""
    by_q = {}
    for stem, s in REGISTRY.specs.sensors.items():
        for m in s.get("measures", []):
            by_q.setdefault(m["quantity"], []).append(stem)
    measures = {stem: {m["quantity"] for m in s.get("measures", [])} for stem, s in REGISTRY.specs.sensors.items()}
    keys = {q.name: q.key for q in REGISTRY.by_key.values()}
    whens = []
    for q in NOISE_QUANTITIES:
        whens.append(f"WHEN {keys[q]} THEN {SENSOR_IDS['noise']}")
    for q, stems in sorted(by_q.items()):
        stems = sorted(stems, key=lambda st: (-len(measures[st]), st))
        if len(stems) == 1:
            whens.append(f"WHEN {keys[q]} THEN {SENSOR_IDS[stems[0]]}")
            continue
        inner = []
        for i, st in enumerate(stems[:-1]):
            only = measures[st] - set().union(*(measures[o] for o in stems[i + 1:]))
            if only:
                ks = ", ".join(str(keys[x]) for x in sorted(only))
                inner.append(f"WHEN EXISTS (SELECT 1 FROM series x WHERE x.thing_id = {{a}}.thing_id "
                             f"AND x.key IN ({ks})) THEN {SENSOR_IDS[st]}")
        whens.append(f"WHEN {keys[q]} THEN CASE {' '.join(inner)} ELSE {SENSOR_IDS[stems[-1]]} END")
    return f"CASE {{a}}.key {' '.join(whens)} END"


def _loc_at(pole, t):
    """SQL: the locations row of a pole valid at time t (its first one before it was imported)."""
    return (f"coalesce((SELECT l.id FROM locations l WHERE l.pole = {pole} AND l.valid_from <= {t} "
            f"ORDER BY l.valid_from DESC, l.id DESC LIMIT 1), "
            f"(SELECT l.id FROM locations l WHERE l.pole = {pole} ORDER BY l.valid_from, l.id LIMIT 1))")


def build(specs_url):
    """The entities, with Sensor metadata and ObservedProperty definitions under specs_url (the
    published `openpole spec build` site, ending in /)."""
    qs = sorted(REGISTRY.by_key.values(), key=lambda q: q.key)
    units = REGISTRY.specs.units
    qname = _case("{a}.key", {q.key: q.name for q in qs})
    descs = {q["key"]: q["description"] for q in REGISTRY.specs.quantities}
    qdesc = _case("{a}.key", descs)
    unit_id = _case("{a}.key", {q.key: q.unit for q in qs})
    point = "jsonb_build_object('type', 'Point', 'coordinates', jsonb_build_array({a}.lon, {a}.lat))"

    things = Entity(
        "Thing", "Things",
        # LATERAL: looked up once per row, however many properties use it
        source="""SELECT t.id, t.node, t.first_seen, t.pole, cl.id AS loc_id
                  FROM things t
                  LEFT JOIN LATERAL (SELECT l.id FROM locations l WHERE l.pole = t.pole
                                     ORDER BY l.valid_from DESC, l.id DESC LIMIT 1) cl ON true""",
        cols={"id": "bigint", "loc_id": "bigint"},
        props=[
            Prop("name", "string", "{a}.node"),
            Prop("description", "string", "'openpole node ' || {a}.node || coalesce(' on pole ' || {a}.pole, '')"),
            Prop("properties", "json", "jsonb_build_object('node', {a}.node, 'pole', {a}.pole, 'first_seen', "
                 + iso("{a}.first_seen") + ")", obj=True),
        ],
        rels=[
            Rel("Locations", "Location", True, _eq(("loc_id", "id"))),
            Rel("HistoricalLocations", "HistoricalLocation", True, _eq(("id", "thing_id"))),
            Rel("Datastreams", "Datastream", True, _eq(("id", "thing_id"))),
        ],
        id_cond=_simple_id)

    loc_source = """SELECT l.id::bigint AS id, l.pole, l.lat, l.lon, l.address, l.description, l.valid_from,
                           CASE WHEN lag(l.id) OVER w IS NULL THEN NULL ELSE l.valid_from END AS vfrom,
                           lead(l.valid_from) OVER w AS vto
                    FROM locations l WHERE l.lat IS NOT NULL AND l.lon IS NOT NULL
                    WINDOW w AS (PARTITION BY l.pole ORDER BY l.valid_from, l.id)"""
    place = "coalesce(nullif({a}.address, ''), 'pole ' || {a}.pole)"
    locations = Entity(
        "Location", "Locations", source=loc_source,
        cols={"id": "bigint"},
        props=[
            Prop("name", "string", "{a}.pole"),
            Prop("description", "string", f"coalesce(nullif({{a}}.description, ''), {place})"),
            Prop("encodingType", "string", "'application/geo+json'"),
            Prop("location", "geometry", "point({a}.lon, {a}.lat)", out=point, obj=True),
            Prop("properties", "json", "jsonb_build_object('pole', {a}.pole, 'address', {a}.address, 'valid_from', "
                 + iso("{a}.valid_from") + ")", obj=True),
        ],
        rels=[
            Rel("Things", "Thing", True, _eq(("id", "loc_id"))),
            Rel("HistoricalLocations", "HistoricalLocation", True, _eq(("id", "loc_id"))),
        ],
        id_cond=_simple_id)

    # A thing is a node on one pole (thing_poles: one row each); its HistoricalLocations are the
    # positions its pole has had since the thing's first batch: the one it found, then each move.
    hist = Entity(
        "HistoricalLocation", "HistoricalLocations",
        source=f"""SELECT (tp.id::bigint << {HL_LOC_BITS}) + l.id AS id, tp.id AS tp_id, l.id AS loc_id, tp.thing_id,
                          tp.pole, CASE WHEN l.valid_from <= tp.since OR NOT EXISTS (SELECT 1 FROM locations e
                                        WHERE e.pole = l.pole AND (e.valid_from, e.id) < (l.valid_from, l.id))
                                   THEN tp.since ELSE l.valid_from END AS since
                   FROM thing_poles tp JOIN locations l ON l.pole = tp.pole
                   WHERE NOT EXISTS (SELECT 1 FROM locations n WHERE n.pole = l.pole AND n.valid_from <= tp.since
                                     AND (n.valid_from, n.id) > (l.valid_from, l.id))""",
        cols={"id": "bigint", "thing_id": "bigint", "loc_id": "bigint"},
        props=[Prop("time", "datetime", "{a}.since", not_null=True)],
        rels=[
            Rel("Thing", "Thing", False, _eq(("thing_id", "id"))),
            Rel("Locations", "Location", True, _eq(("loc_id", "id"))),
        ],
        id_cond=_historical_id)

    branch = """SELECT s.id::bigint + {off} AS id, s.id AS series_id, {kind} AS kind, s.thing_id, s.key, s.unit,
                       s.first_seen, t.node, t.pole
                FROM series s JOIN things t ON t.id = s.thing_id"""
    ds_source = " UNION ALL ".join(branch.format(off=off, kind=k) for k, off in ((0, 0), (1, HOURLY_OFFSET),
                                                                                (2, DAILY_OFFSET)))
    node, pole = "{a}.node", "{a}.pole"
    suffix = _case("{a}.kind", {0: "", 1: ", hourly mean", 2: ", daily mean"})
    what = _case("{a}.kind", {0: ", each reading", 1: ", the mean of each UTC hour's readings (energy mean for dB)",
                              2: ", the mean of each UTC day's readings (energy mean for dB)"})
    unit_json = ("jsonb_build_object('name', " + _case(unit_id, {u: x["description"] for u, x in units.items()})
                 + ", 'symbol', " + _case(unit_id, {u: x["symbol"] for u, x in units.items()})
                 + ", 'definition', 'http://unitsofmeasure.org/ucum.html')")
    raw_span = ("(SELECT {f}(s.time) FROM samples s WHERE s.thing_id = {{a}}.thing_id "
                "AND (s.vals[{{a}}.key] IS NOT NULL OR s.vals8[{{a}}.key] IS NOT NULL))")
    t0 = (f"CASE {{a}}.kind WHEN 0 THEN {raw_span.format(f='min')} "
          "WHEN 1 THEN (SELECT min(h.hour) FROM hourly h WHERE h.series_id = {a}.series_id) "
          "ELSE (SELECT min(d.day) FROM daily d WHERE d.series_id = {a}.series_id) END")
    t1 = (f"CASE {{a}}.kind WHEN 0 THEN {raw_span.format(f='max')} "
          "WHEN 1 THEN (SELECT max(h.hour) + interval '1 hour' FROM hourly h WHERE h.series_id = {a}.series_id) "
          "ELSE (SELECT max(d.day) + interval '1 day' FROM daily d WHERE d.series_id = {a}.series_id) END")
    datastreams = Entity(
        "Datastream", "Datastreams", source=ds_source,
        cols={"id": "bigint", "series_id": "bigint", "kind": "int", "thing_id": "bigint", "key": "int",
              "sensor_id": "bigint"},
        computed={"sensor_id": _sensor_choice()},
        props=[
            Prop("name", "string", f"{node} || ' ' || {qname} || {suffix}"),
            Prop("description", "string",
                 f"{qdesc} || ' from node ' || {node} || coalesce(' on pole ' || {pole}, '') || {what}"),
            Prop("unitOfMeasurement", "json", unit_json, obj=True),
            Prop("observationType", "string", lit(OM_MEASUREMENT)),
            Prop("phenomenonTime", "interval", (t0, t1), omit_null=True),
            Prop("properties", "json", f"""jsonb_build_object('node', {node}, 'pole', {pole}, 'quantity', {qname},
                 'key', {{a}}.key, 'unit', {unit_id}, 'ucum', {_case(unit_id, UCUM)}, 'series', {{a}}.series_id,
                 'aggregate', {_case('{a}.kind', {0: 'none', 1: 'hourly mean', 2: 'daily mean'})})""", obj=True),
        ],
        rels=[
            Rel("Thing", "Thing", False, _eq(("thing_id", "id"))),
            Rel("Sensor", "Sensor", False, _eq(("sensor_id", "id"))),
            Rel("ObservedProperty", "ObservedProperty", False, _eq(("key", "id"))),
            Rel("Observations", "Observation", True, _eq(("kind", "kind"), ("thing_id", "thing_id"), ("key", "key"))),
        ],
        id_cond=_datastream_id)

    sensor_rows = ", ".join(f"({i}::bigint, {lit(stem)}, {lit(model)}, {lit(desc)}, {lit(page)})"
                            for i, stem, model, desc, page in sensors())
    sensors_e = Entity(
        "Sensor", "Sensors",
        source=f"SELECT * FROM (VALUES {sensor_rows}) AS s(id, stem, model, description, page)",
        cols={"id": "bigint"},
        props=[
            Prop("name", "string", "{a}.model"),
            Prop("description", "string", "{a}.description"),
            Prop("encodingType", "string", "'text/html'"),
            Prop("metadata", "string", f"{lit(specs_url)} || {{a}}.page"),
            Prop("properties", "json", "jsonb_build_object('spec', {a}.stem)", obj=True),
        ],
        rels=[Rel("Datastreams", "Datastream", True, _eq(("id", "sensor_id")))],
        id_cond=_simple_id)

    op_rows = ", ".join(f"({q.key}::bigint, {lit(q.name)}, {lit(descs[q.key])}, {lit(q.unit)}, {lit(q.kind)})"
                        for q in qs)
    observed = Entity(
        "ObservedProperty", "ObservedProperties",
        source=f"SELECT * FROM (VALUES {op_rows}) AS q(id, name, description, unit, kind)",
        cols={"id": "bigint"},
        props=[
            Prop("name", "string", "{a}.name"),
            Prop("definition", "string", f"{lit(specs_url + 'quantities.html#')} || {{a}}.name"),
            Prop("description", "string", "{a}.description"),
            Prop("properties", "json", "jsonb_build_object('key', {a}.id, 'unit', {a}.unit, 'kind', {a}.kind)",
                 obj=True),
        ],
        rels=[Rel("Datastreams", "Datastream", True, _eq(("id", "key")))],
        id_cond=_simple_id)

    agg = """SELECT -({slot}) AS id, {kind} AS kind, se.thing_id, se.key::int AS key,
                    NULL::bigint AS sample_id, a.series_id, a.{t} AS t0, a.{t} + interval '1 {u}' AS t1,
                    a.{t} + interval '1 {u}' AS rtime, a.mean::float8 AS result, NULL::int AS flags, NULL::int AS tq,
                    NULL::bigint AS boot, NULL::bigint AS seq, a.count::bigint AS n, a.min::text::float8 AS vmin,
                    a.max::text::float8 AS vmax
             FROM {table} a JOIN series se ON se.id = a.series_id"""
    obs_branches = ([
        """SELECT s.id * 256 + v.key AS id, 0 AS kind, s.thing_id, v.key::int AS key,
                  s.id AS sample_id, NULL::int AS series_id, s.time AS t0, s.time AS t1, s.received AS rtime,
                  v.r AS result,
                  CASE WHEN v.key = ANY (s.flagged) THEN 1 ELSE 0 END AS flags, s.tq::int AS tq, s.boot, s.seq,
                  NULL::bigint AS n, NULL::float8 AS vmin, NULL::float8 AS vmax
           FROM samples s CROSS JOIN LATERAL unnest(coalesce(s.vals8, s.vals::text[]::float8[])) WITH ORDINALITY AS v(r, key)
           WHERE v.r IS NOT NULL""",
        agg.format(slot=f"a.series_id::bigint * {2**AGG_SLOT_BITS} + (extract(epoch FROM a.hour) / 3600)::bigint",
                   kind=1, t="hour", u="hour", table="hourly"),
        agg.format(slot=f"a.series_id::bigint * {2**AGG_SLOT_BITS} + {DAILY_SLOT} + (extract(epoch FROM a.day) / 86400)::bigint",
                   kind=2, t="day", u="day", table="daily"),
    ])
    obs_source = " UNION ALL ".join(obs_branches)
    quality = ("CASE WHEN {a}.kind = 0 THEN jsonb_build_object('out_of_range', ({a}.flags & 1) = 1, "
               "'time_quality', " + _case("{a}.tq", dict(enumerate(TIME_QUALITY)), "'unknown'") + ", 'flags', {a}.flags, "
               "'tq', {a}.tq) END")
    params = ("CASE WHEN {a}.kind = 0 THEN jsonb_build_object('boot', {a}.boot, 'seq', {a}.seq) "
              "ELSE jsonb_build_object('aggregate', " + _case("{a}.kind", {1: "hourly mean", 2: "daily mean"})
              + ", 'count', {a}.n, 'min', {a}.vmin, 'max', {a}.vmax) END")
    observations = Entity(
        "Observation", "Observations", source=obs_source,
        cols={"id": "bigint", "kind": "int", "thing_id": "bigint", "key": "int", "foi_id": "bigint",
              "datastream_id": "bigint", "t0": "timestamptz", "t1": "timestamptz", "sample_id": "bigint",
              "series_id": "bigint"},
        computed={
            "foi_id": _loc_at("(SELECT t.pole FROM things t WHERE t.id = {a}.thing_id)", "{a}.t0"),
            "datastream_id": (f"CASE {{a}}.kind WHEN 0 THEN (SELECT x.id::bigint FROM series x WHERE x.thing_id = {{a}}.thing_id "
                              f"AND x.key = {{a}}.key) WHEN 1 THEN {{a}}.series_id + {HOURLY_OFFSET} "
                              f"ELSE {{a}}.series_id + {DAILY_OFFSET} END"),
        },
        props=[
            Prop("phenomenonTime", "interval", ("{a}.t0", "{a}.t1"), not_null=True),
            # null for readings loaded before the receive time was kept
            Prop("resultTime", "datetime", "{a}.rtime"),
            Prop("result", "number", "{a}.result"),
            Prop("resultQuality", "json", quality, omit_null=True, obj=True),
            Prop("parameters", "json", params, obj=True),
        ],
        rels=[
            Rel("Datastream", "Datastream", False, _eq(("kind", "kind"), ("thing_id", "thing_id"), ("key", "key"))),
            Rel("FeatureOfInterest", "FeatureOfInterest", False, _eq(("foi_id", "id"))),
        ],
        id_cond=_observation_id, order=("t0", "t1", "id"), branches=tuple(obs_branches))

    fois = Entity(
        "FeatureOfInterest", "FeaturesOfInterest", source=loc_source,
        cols={"id": "bigint", "pole": "text", "vfrom": "timestamptz", "vto": "timestamptz"},
        props=[
            Prop("name", "string", "'Air at pole ' || {a}.pole"),
            Prop("description", "string",
                 "'Ambient air around pole ' || {a}.pole || coalesce(', ' || nullif({a}.address, ''), '')"),
            Prop("encodingType", "string", "'application/geo+json'"),
            Prop("feature", "geometry", "point({a}.lon, {a}.lat)", out=point, obj=True),
            Prop("properties", "json", "jsonb_build_object('pole', {a}.pole, 'valid_from', " + iso("{a}.valid_from")
                 + ")", obj=True),
        ],
        rels=[Rel("Observations", "Observation", True,
                  # the time bounds and the pole's nodes let the (thing_id, time) index find the rows
                  lambda p, c: f"{c('thing_id')} IN (SELECT t.id FROM things t WHERE t.pole = {p('pole')}) "
                               f"AND ({p('vfrom')} IS NULL OR {c('t0')} >= {p('vfrom')}) "
                               f"AND ({p('vto')} IS NULL OR {c('t0')} < {p('vto')}) AND {c('foi_id')} = {p('id')}")],
        id_cond=_simple_id)
    entities = [things, locations, hist, datastreams, sensors_e, observed, observations, fois]
    return {e.name: e for e in entities}


SETS = ("Datastreams", "FeaturesOfInterest", "HistoricalLocations", "Locations", "Observations",
        "ObservedProperties", "Sensors", "Things")
