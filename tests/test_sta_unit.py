"""The SensorThings API's pure parts: the $filter grammar, the query options, ids, the rate limit."""

import datetime

import pytest

from openpole.city.sta import mapping
from openpole.city.sta.errors import BadRequest, NotFound, NotImplementedOption
from openpole.city.sta.filter import Call, Lit, Op, Path, parse_filter, parse_orderby
from openpole.city.sta.parse import next_link_query, parse_expand, parse_options, parse_path, split_query
from openpole.city.sta.server import RateLimit
from openpole.city.sta.sql import Compiler, Params

UTC = datetime.timezone.utc
R = Path(("result",))


def n(v):
    return Lit("number", v)


@pytest.mark.parametrize("text,tree", [
    ("result eq 2 and result eq 1 or result eq 1",
     Op("or", (Op("and", (Op("eq", (R, n(2))), Op("eq", (R, n(1))))), Op("eq", (R, n(1)))))),
    ("not result lt 1 and not result gt 1",
     Op("and", (Op("not", (Op("lt", (R, n(1))),)), Op("not", (Op("gt", (R, n(1))),))))),
    ("1 add result mul 2 sub -1 eq 4",
     Op("eq", (Op("sub", (Op("add", (n(1), Op("mul", (R, n(2))))), n(-1))), n(4)))),
    ("NOT Startswith(name,'a''b')", Op("not", (Call("startswith", (Path(("name",)), Lit("string", "a'b"))),))),
    ("Datastream/Thing/properties/tags[0] eq null",
     Op("eq", (Path(("Datastream", "Thing", "properties", "tags", 0)), Lit("null", None)))),
    ("@iot.id in (1, 2.5, 1e3)", Op("in", (Path(("@iot.id",)), n(1), n(2.5), n(1000.0)))),
])
def test_filter_trees_follow_frosts_precedence(text, tree):
    assert parse_filter(text) == tree


def test_filter_literals():
    t = parse_filter("phenomenonTime ge 2026-11-20T14:05:00.5+01:00").args[1]
    assert t == Lit("datetime", datetime.datetime(2026, 11, 20, 13, 5, 0, 500000, tzinfo=UTC))
    i = parse_filter("phenomenonTime eq 2026-01-01T00:00:00Z/2026-01-02T00:00:00Z").args[1]
    assert i.kind == "interval" and (i.value[1] - i.value[0]) == datetime.timedelta(days=1)
    assert parse_filter("x gt duration'P1DT2H30M'").args[1] == Lit("duration", datetime.timedelta(days=1, hours=2,
                                                                                                     minutes=30))
    assert parse_filter("date(t) eq 2026-02-03").args[1] == Lit("date", datetime.date(2026, 2, 3))
    assert parse_filter("time(t) lt 12:30:00").args[1] == Lit("time", datetime.time(12, 30))
    g = parse_filter("st_within(location, geography'SRID=4326;POLYGON((0 0, 1 0, 1 1, 0 0))')").args[1]
    assert g == Lit("geometry", ("POLYGON", ((0, 0), (1, 0), (1, 1), (0, 0))))
    assert parse_filter("x eq geometry'POINT(1 2)'").args[1] == Lit("geometry", ("POINT", ((1.0, 2.0),)))
    assert parse_filter("x eq true or x eq False").args[1].args[1] == Lit("bool", False)


@pytest.mark.parametrize("text,words", [
    ("", "empty"), ("name eq", "expected a value"), ("name eq 'x", "unexpected"), ("(name eq 1", "expected ')'"),
    ("t gt 2026-01-01T00:00:00", "no zone"), ("t gt 2026-01-01T00:00:00 01:00", "%2B"),
    ("t gt 2026-13-01T00:00:00Z", "not a valid time"), ("x eq duration'1D'", "ISO 8601 duration"),
    ("x eq geography'CIRCLE(1 2)'", "POINT(lon lat)"), ("x eq geography'POLYGON((0 0, 1 1, 0 1))'", "at least 4"),
    ("x eq geography'POLYGON((0 0, 1 1, 0 1, 1 0))'", "first point"), ("x eq geography'SRID=3857;POINT(1 2)'", "4326"),
    ("x eq 1 eq 2", "do not chain"), ("name eq 'a' name", "expected an operator"), ("a/1 eq 1", "after '/'"),
    ("x eq 1e999", "too large"), ("x" + " add x" * 3000, "characters"), ("not " * 50 + "x", "deeper"),
    ("name eq #", "unexpected"), ("t gt now() sub duration'P99999999999D'", "too long"),
    ("t gt now() sub duration'PT1" + "0" * 400 + "S'", "too long"),
])
def test_bad_filters_say_what_and_where(text, words):
    with pytest.raises(BadRequest) as e:
        parse_filter(text)
    assert words in e.value.message and "\n" not in e.value.message


def test_long_chains_are_flat_and_deep_trees_refused_before_they_reach_sql():
    # 300 alternatives are one `or` node: as long as the text allows, not as deep
    tree = parse_filter(" or ".join(f"id eq {i}" for i in range(300)))
    assert tree.op == "or" and len(tree.args) == 300
    assert parse_filter("a eq 1 and b eq 2 and c eq 3") == Op("and", tuple(
        Op("eq", (Path((x,)), n(i))) for i, x in enumerate("abc", 1)))
    # one level per operator: a chain of arithmetic, of functions, in $orderby too
    for text in ("1" + " add 1" * 600 + " eq 1", "result" + " mul 1" * 60 + " gt 0",
                 "concat(" * 45 + "name" + ",'a')" * 45 + " eq 'x'"):
        with pytest.raises(BadRequest) as e:
            parse_filter(text)
        assert "deeper than" in e.value.message
    with pytest.raises(BadRequest):
        parse_orderby("1" + " add 1" * 600)
    p = Params()
    sql = Compiler(mapping.build("http://x/"), p).predicate(mapping.build("http://x/")["Thing"], "e", tree)
    assert sql.count(" OR ") == 299 and len(p.values) == 300


def test_orderby_directions_any_case():
    assert parse_orderby("phenomenonTime DESC, Datastream/id") == [
        (Path(("phenomenonTime",)), "desc"), (Path(("Datastream", "id")), "asc")]
    with pytest.raises(BadRequest):
        parse_orderby("name up")


def test_query_decoding_plus_percent_and_repeats():
    frost = "%24filter=name+eq+%27pole+1%27&%24expand=Datastreams%28%24select%3Dname%29%2CLocations&%24top=2&%24count=true"
    o = parse_options(split_query(frost))
    assert o.filter_text == "name eq 'pole 1'" and o.top == 2 and o.count
    assert [e.nav for e in o.expand] == ["Datastreams", "Locations"] and o.expand[0].options.select == ["name"]
    ist = "$filter=Datastream%2Fid%20eq%201&$orderby=phenomenonTime%20desc"
    o = parse_options(split_query(ist))
    assert o.filter_text == "Datastream/id eq 1" and o.orderby[0][1] == "desc"
    assert parse_options(split_query("$TOP=3&api_key=x")).top == 3
    with pytest.raises(BadRequest):
        parse_options(split_query("$top=1&$top=2"))
    with pytest.raises(NotImplementedOption):
        parse_options(split_query("$apply=x"))
    with pytest.raises(BadRequest):
        parse_options([("$expand", "Datastreams($resultFormat=dataArray)")])


def test_expand_nesting_merges_and_bounds():
    e = parse_expand("Datastreams,Datastreams/Sensor,Datastreams($top=1;$expand=Observations($top=2))")
    assert len(e) == 1 and e[0].options.top == 1
    assert sorted(x.nav for x in e[0].options.expand) == ["Observations", "Sensor"]
    with pytest.raises(BadRequest) as x:
        parse_expand("A/B/C/D/E")
    assert "deeper than 4" in x.value.message
    with pytest.raises(BadRequest):
        parse_expand(",".join(["A($expand=B($expand=C))"] * 9))
    with pytest.raises(BadRequest):
        parse_expand("Datastreams($top=1")


def test_paths_and_keys():
    assert parse_path("/Things(12)/Datastreams") == [("Things", 12), ("Datastreams", None)]
    assert parse_path("Things('12')") == [("Things", 12)]
    assert parse_path("Observations(-5)/$value") == [("Observations", -5), ("$value", None)]
    for bad in ("Things('pole-1')", "Things(1.5)", "Things(99999999999999999999)", "Things(1)//x", "Th ings"):
        with pytest.raises(NotFound):
            parse_path(bad)


def test_next_link_query_is_fully_encoded_and_carries_top():
    q = next_link_query({"$filter": "a eq 'x y+z'", "$count": "true"}, 200, 100)
    assert q == "$filter=a%20eq%20%27x%20y%2Bz%27&$count=true&$top=100&$skip=200"
    q = next_link_query({"$skip": "5", "$skiptoken": "[1]"}, 10, 5, ["2026-01-01T00:00:00+00:00", 7])
    assert q == "$top=5&$skiptoken=%5B%222026-01-01T00%3A00%3A00%2B00%3A00%22%2C7%5D"
    assert parse_options(split_query(q)).after == ["2026-01-01T00:00:00+00:00", 7]


def test_observation_and_datastream_ids_round_trip():
    assert mapping.observation_key(5 * 256 + 3) == ("reading", 5, 3)
    assert mapping.observation_key(5 * 256) is None
    t = datetime.datetime(2026, 11, 20, 14, tzinfo=UTC)
    hour = int((t - mapping.EPOCH).total_seconds() // 3600)
    assert mapping.observation_key(-(7 * 2**22 + hour)) == ("hourly", 7, t)
    day = (t.date() - mapping.EPOCH.date()).days
    assert mapping.observation_key(-(7 * 2**22 + 2**21 + day)) == ("daily", 7, t.replace(hour=0))
    assert [mapping.datastream_kind(x) for x in (5, 2**31 + 5, 2**32 + 5, 2**31, 0, 2**40)] == [0, 1, 2, None, None,
                                                                                                   None]


def test_every_sensor_spec_has_a_stable_sensor_id():
    from openpole.spec.registry import REGISTRY

    assert set(REGISTRY.specs.sensors) <= set(mapping.SENSOR_IDS)
    assert len(set(mapping.SENSOR_IDS.values())) == len(mapping.SENSOR_IDS)
    assert set(mapping.UCUM) == set(REGISTRY.specs.units)


def test_values_reach_sql_as_parameters_only():
    ents = mapping.build("https://example.org/specs/")
    p = Params()
    evil = "x'); DROP TABLE things; --"
    sql = Compiler(ents, p).predicate(ents["Thing"], "e", parse_filter(f"name eq '{evil.replace(chr(39), chr(39) * 2)}'"
                                                                       f" and properties/{'a'} eq 'b'"))
    assert "DROP" not in sql and evil in p.values.values()
    with pytest.raises(BadRequest):
        Compiler(ents, Params()).predicate(ents["Thing"], "e", parse_filter("name eq 1 add 'a'"))


def test_rate_limit_is_a_token_bucket_per_client():
    rl = RateLimit(rate=2, burst=3)
    assert [rl.take("a", now=0) for _ in range(3)] == [0, 0, 0]
    assert rl.take("a", now=0) == pytest.approx(0.5)
    assert rl.take("b", now=0) == 0  # another client is not held back
    assert rl.take("a", now=0.6) == 0
    assert RateLimit(0, 1).take("a") == 0


def test_rate_limit_memory_and_sweeps_stay_bounded_and_ipv6_counts_by_64():
    from openpole.city.sta.server import Server

    rl = RateLimit(rate=1, burst=5, clients=100)
    sizes, sweeps, last = [], 0, None
    for i in range(5000):  # 5,000 addresses, all active at once
        rl.take(f"c{i}", now=i * 0.0001)
        if last is not None and len(rl.buckets) < last:
            sweeps += 1
        last = len(rl.buckets)
        sizes.append(last)
    assert max(sizes) <= 101 and sweeps <= 5000 / 50  # a sweep every 50 new clients at most, not each one
    net = Server._network
    assert net("2001:db8:1:2:aaaa::1") == net("2001:db8:1:2:bbbb::7") == "2001:db8:1:2::/64"
    assert net("2001:db8:1:3::1") != net("2001:db8:1:2::1")
    assert net("192.0.2.7") == "192.0.2.7" and net("::ffff:192.0.2.7") == "192.0.2.7" and net("?") == "?"
