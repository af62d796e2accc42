"""`openpole city serve`, the SensorThings API v1.1, against a real PostgreSQL loaded through the real
loader, read by real clients (frost-sta-client, istsos4-client, requests + pandas) and by the
read-only requests of the OGC and FROST conformance suites (research/sta.md §7, §9)."""

import json
import re
import subprocess
import sys
import time
import urllib.parse

import psycopg
import pytest
import requests
import sta_fixture as fx
from pgcluster import PgServer

from openpole.sim.broker import free_port

SETS = ["Datastreams", "FeaturesOfInterest", "HistoricalLocations", "Locations", "Observations",
        "ObservedProperties", "Sensors", "Things"]
MANDATORY = {"Things": ["name", "description"], "Locations": ["name", "description", "encodingType", "location"],
             "HistoricalLocations": ["time"],
             "Datastreams": ["name", "description", "unitOfMeasurement", "observationType"],
             "Sensors": ["name", "description", "encodingType", "metadata"],
             "ObservedProperties": ["name", "definition", "description"],
             "Observations": ["phenomenonTime", "result", "resultTime"],
             "FeaturesOfInterest": ["name", "description", "encodingType", "feature"]}
RELATIONS = {"Things": ["Datastreams", "HistoricalLocations", "Locations"],
             "Locations": ["HistoricalLocations", "Things"], "Sensors": ["Datastreams"],
             "ObservedProperties": ["Datastreams"], "Observations": ["Datastream", "FeatureOfInterest"],
             "Datastreams": ["Thing", "Sensor", "ObservedProperty", "Observations"],
             "FeaturesOfInterest": ["Observations"], "HistoricalLocations": ["Thing", "Locations"]}
CONFORMANCE = ["http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel",
               "http://www.opengis.net/spec/iot_sensing/1.1/req/resource-path/resource-path-to-entities",
               "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data"]


def serve(dsn, *extra):
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "openpole", "city", "serve", "--db", dsn, "--listen",
                          f"127.0.0.1:{port}", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/v1.1"
    for _ in range(200):
        try:
            requests.get(base, timeout=2)
            return p, base
        except requests.ConnectionError:
            if p.poll() is not None:
                raise AssertionError(p.stderr.read())
            time.sleep(0.05)
    p.kill()
    raise AssertionError("city serve did not start")


@pytest.fixture(scope="module")
def city():
    pg = PgServer()
    procs = []
    try:
        ids = fx.build(pg.dsn)
        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 30 * 4 + 12 * 2 + 12 * 2
        p, base = serve(fx.reader_dsn(pg.dsn), "--rate", "0")
        procs.append(p)
        yield {"pg": pg, "base": base, "ids": ids, "procs": procs}
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        pg.stop()


def get(city, path, **params):
    r = requests.get(city["base"] + path, params=params or None, timeout=30)
    return r


def ok(city, path, **params):
    r = get(city, path, **params)
    assert r.status_code == 200, (path, r.status_code, r.text[:500])
    return r.json()


def readings(city, node, quantity, pole=None):
    """What the loader stored for one node (on one pole) and quantity: [(time, value)] by time."""
    with psycopg.connect(city["pg"].dsn) as conn:
        return conn.execute("SELECT time, value FROM readings WHERE node = %s AND quantity = %s AND "
                            "(%s::text IS NULL OR pole = %s) ORDER BY time", (node, quantity, pole, pole)).fetchall()


def thing(city, node, pole=None):
    """The Thing of a node (on a pole: a node moved to another pole is a Thing on each)."""
    found = [i for (p, n), i in city["ids"]["things"].items() if n == node and pole in (None, p)]
    assert len(found) == 1, (node, pole, found)
    return found[0]


def ds_id(city, node, quantity, pole=None):
    from openpole.spec.registry import REGISTRY

    return city["ids"]["series"][(thing(city, node, pole), REGISTRY.by_name[quantity].key)]


def a_reading(city):
    """The id of the first reading's Observation (ids follow the loader's sample blocks)."""
    return ok(city, f"/Datastreams({ds_id(city, 'n1', 'temperature')})/Observations",
              **{"$top": "1", "$orderby": "phenomenonTime"})["value"][0]["@iot.id"]


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


# ---------------------------------------------------------------- the service root and paths


def test_service_root_lists_the_eight_sets_with_absolute_urls_and_the_classes_claimed(city):
    doc = ok(city, "")
    assert [v["name"] for v in doc["value"]] == SETS
    assert all(v["url"] == f"{city['base']}/{v['name']}" for v in doc["value"])
    assert doc["serverSettings"]["conformance"] == CONFORMANCE
    assert ok(city, "/") == doc


@pytest.mark.parametrize("entity_set", SETS)
def test_every_entity_has_its_id_selflink_mandatory_properties_and_navigation_links(city, entity_set):
    doc = ok(city, f"/{entity_set}")
    assert doc["value"], entity_set
    for e in doc["value"]:
        assert type(e["@iot.id"]) is int
        assert e["@iot.selfLink"] == f"{city['base']}/{entity_set}({e['@iot.id']})"
        for p in MANDATORY[entity_set]:
            assert p in e, (entity_set, p)
        for rel in RELATIONS[entity_set]:
            assert e[f"{rel}@iot.navigationLink"] == f"{e['@iot.selfLink']}/{rel}"
        one = ok(city, f"/{entity_set}({e['@iot.id']})")
        assert one == e
        # what the Python clients refuse is never sent (research/sta.md §6.1.2, §6.2.2)
        for k in ("phenomenonTime", "resultTime", "validTime"):
            if entity_set == "Datastreams" and k in e:
                assert "/" in e[k]
        if entity_set == "Sensors":
            assert all(e[k] is not None for k in ("name", "description", "encodingType", "properties"))
            assert isinstance(e["metadata"], str)
    assert get(city, f"/{entity_set}(9223372036854775807)").status_code == 404
    assert get(city, f"/{entity_set}(99999999999999999999)").status_code == 404


def test_paths_properties_values_refs_and_nested_ids(city):
    assert ok(city, "/Things('1')") == ok(city, "/Things(1)")
    assert ok(city, "/Things(1)")["name"] == "n1"  # the first node loaded
    for bad in ("/Nope", "/MultiDatastreams", "/Things(abc)", "/Things(1)/Nope", "/Things/1",
                "/Things(1)/Datastreams/Sensor"):
        r = get(city, bad)
        assert r.status_code == 404 and r.json()["code"] == 404 and r.json()["message"], bad
    assert ok(city, "/Things(1)/name") == {"name": "n1"}
    r = get(city, "/Things(1)/name/$value")
    assert r.text == "n1" and r.headers["Content-Type"].startswith("text/plain")
    r = get(city, "/Locations(1)/location/$value")
    assert r.text.startswith("{") and json.loads(r.text)["type"] == "Point"
    assert "{" not in get(city, f"/Observations({a_reading(city)})/resultTime/$value").text
    t = ds_id(city, "n1", "temperature")
    assert ok(city, f"/Datastreams({t})/unitOfMeasurement/symbol") == {"symbol": "°C"}
    # resultQuality is left out of an aggregate: a null property is 204, for the value too
    agg = ok(city, f"/Datastreams({t + 2**31})/Observations", **{"$top": "1"})["value"][0]["@iot.id"]
    assert get(city, f"/Observations({agg})/resultQuality").status_code == 204
    assert get(city, f"/Observations({agg})/resultQuality/$value").status_code == 204
    refs = ok(city, "/Things(1)/Datastreams/$ref")
    assert refs["value"] and all(list(x) == ["@iot.selfLink"] for x in refs["value"])
    assert ok(city, f"/Datastreams({t})/Thing/$ref") == {"@iot.selfLink": f"{city['base']}/Things(1)"}
    # depth 4 with an id at each step, and an id that belongs to another parent
    first = ok(city, f"/Datastreams({t})/Observations", **{"$top": "1"})["value"][0]["@iot.id"]
    assert ok(city, f"/Things(1)/Datastreams({t})/Observations({first})/Datastream/Thing")["name"] == "n1"
    other = ok(city, f"/Datastreams({ds_id(city, 'n2', 'temperature')})/Observations", **{"$top": "1"})
    assert get(city, f"/Datastreams({t})/Observations({other['value'][0]['@iot.id']})").status_code == 404
    assert ok(city, f"/Observations({first})/Datastream/Thing/Locations")["value"][0]["name"] == "p1"


SINGULAR_SET = {"Thing": "Things", "Sensor": "Sensors", "ObservedProperty": "ObservedProperties",
                "Datastream": "Datastreams", "FeatureOfInterest": "FeaturesOfInterest"}


@pytest.mark.parametrize("entity_set", SETS)
def test_resource_paths_four_levels_deep_with_ref_at_every_step(city, entity_set):
    """ETS10 / FTEST Capability1 checkResourcePaths: every relation from the first entity, 4 levels,
    each populated, each with its $ref."""
    session = requests.Session()

    def walk(path, kind, depth):
        for rel in RELATIONS[kind]:
            url = f"{city['base']}/{path}/{rel}"
            doc = session.get(url, timeout=10)
            assert doc.status_code == 200, (url, doc.text[:200])
            doc = doc.json()
            ref = session.get(url + "/$ref", timeout=10).json()
            if rel in SINGULAR_SET:
                assert "@iot.id" in doc and list(ref) == ["@iot.selfLink"], url
                assert ref["@iot.selfLink"] == doc["@iot.selfLink"]
                nxt, nkind = f"{path}/{rel}", SINGULAR_SET[rel]
            else:
                assert doc["value"], f"{url} is empty"
                assert all(list(x) == ["@iot.selfLink"] for x in ref["value"][:2])
                nxt, nkind = f"{path}/{rel}({doc['value'][0]['@iot.id']})", rel
                assert session.get(f"{city['base']}/{nxt}", timeout=10).json() == doc["value"][0]
            if depth < 4:
                walk(nxt, nkind, depth + 1)

    first = ok(city, f"/{entity_set}", **{"$top": "1"})["value"][0]["@iot.id"]
    walk(f"{entity_set}({first})", entity_set, 2)


def test_writes_are_refused_with_405_and_allow(city):
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        for path in ("/Things", "/Things(1)", "/Observations"):
            r = requests.request(method, city["base"] + path, json={"name": "x"}, timeout=10)
            assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD, OPTIONS", (method, path)
            assert "read-only" in r.json()["message"]
    assert requests.options(city["base"] + "/Things", timeout=10).headers["Allow"] == "GET, HEAD, OPTIONS"
    h = requests.head(city["base"] + "/Things", timeout=10)
    assert h.status_code == 200 and h.text == ""
    big = requests.get(city["base"] + "/Observations", headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert big.headers["Content-Encoding"] == "gzip" and big.json()["value"]
    assert big.headers["Access-Control-Allow-Origin"] == "*" and big.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize("query,status,words", [
    ({"$search": "x"}, 501, "not supported"),
    ({"$count": "maybe"}, 400, "true or false"),
    ({"$top": "-1"}, 400, "whole number"),
    ({"$skip": "abc"}, 400, "whole number"),
    ({"$filter": "name eq"}, 400, "expected a value"),
    ({"$filter": "phenomenonTime gt 2026-01-01T00:00:00"}, 400, "no zone"),
    ({"$filter": "phenomenonTime gt 2026-01-01T00:00:00 01:00"}, 400, "%2B"),
    ({"$filter": "nosuch eq 1"}, 400, "no property 'nosuch'"),
    ({"$filter": "name gt 2026-01-01T00:00:00Z"}, 400, "cannot compare"),
    ({"$filter": "name eq 'a' eq 'b'"}, 400, "do not chain"),
    ({"$filter": "((((" * 30 + "1 eq 1" + "))))" * 30}, 400, "deeper"),
    ({"$orderby": "Datastreams/name"}, 400, "many Datastreams"),
    ({"$expand": "Nope"}, 400, "no navigation property"),
    ({"$select": "nope"}, 400, "no such property"),
    ({"$expand": "Datastreams/Observations/Datastream/Thing/Datastreams"}, 400, "deeper than 4"),
    ({"$resultFormat": "dataArray"}, 400, "Observations"),
    ({"$resultFormat": "csv"}, 400, "dataArray"),
])
def test_a_bad_query_is_a_400_or_501_with_a_one_line_message(city, query, status, words):
    r = get(city, "/Things", **query)
    assert r.status_code == status, (query, r.text)
    body = r.json()
    assert body["type"] == "error" and body["code"] == status and words in body["message"], body
    assert "\n" not in body["message"] and "Traceback" not in r.text


def raw_get(city, target):
    """GET a path and query exactly as written (requests would re-encode them)."""
    import http.client

    u = urllib.parse.urlsplit(city["base"])
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        c.request("GET", u.path + target)
        r = c.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    finally:
        c.close()


def test_percent_encoding_is_decoded_once_and_digits_are_ascii(city):
    # '%256e1' is the text '%6e1', not 'n1'; Things(%2531) is Things('%31'), no Thing
    assert raw_get(city, "/Things?$filter=name%20eq%20%27%256e1%27")[1] == '{"value":[]}'
    assert json.loads(raw_get(city, "/Things?$filter=name%20eq%20%27n%31%27")[1])["value"][0]["name"] == "n1"
    assert raw_get(city, "/Things(%2531)")[0] == 404
    assert raw_get(city, "/Things(1)%2FDatastreams")[0] == 404  # an encoded slash is no separator
    assert raw_get(city, "/Things(%31)")[0] == 200
    # fullwidth and other scripts' digits are no number (int() would read them)
    for target in ("/Things(%EF%BC%91)", "/Things?$top=%EF%BC%91", "/Things?$filter=id%20eq%20%EF%BC%91"):
        status, body = raw_get(city, target)
        assert status in (400, 404) and json.loads(body)["message"], (target, status, body[:200])


def test_a_repeated_option_is_a_400(city):
    r = requests.get(city["base"] + "/Things?$top=1&$top=2", timeout=10)
    assert r.status_code == 400 and "twice" in r.json()["message"]


# ---------------------------------------------------------------- query options on openpole's data


def test_count_top_skip_and_nextlink_follow_the_standard(city):
    t = ds_id(city, "n1", "temperature")
    stored = readings(city, "n1", "temperature")
    doc = ok(city, f"/Datastreams({t})/Observations", **{"$top": "7", "$count": "true"})
    assert doc["@iot.count"] == len(stored) == 30 and len(doc["value"]) == 7 and "@iot.nextLink" in doc
    seen, url, counts = [], doc["@iot.nextLink"], {30}
    seen += [o["@iot.id"] for o in doc["value"]]
    while url:
        page = requests.get(url, timeout=10).json()
        counts.add(page["@iot.count"])
        seen += [o["@iot.id"] for o in page["value"]]
        url = page.get("@iot.nextLink")
    assert counts == {30} and len(seen) == len(set(seen)) == 30
    last = ok(city, f"/Datastreams({t})/Observations", **{"$skip": "1"})
    assert len(last["value"]) == 29 and "@iot.nextLink" not in last
    assert ok(city, "/Things", **{"$top": "4"}).get("@iot.nextLink") is None  # n1, n2, n3 on p2, n3 on p1
    assert "@iot.nextLink" in ok(city, "/Things", **{"$top": "3"})
    zero = ok(city, "/Observations", **{"$top": "0", "$count": "true"})
    assert zero["value"] == [] and "@iot.nextLink" not in zero and zero["@iot.count"] > 100
    assert "@iot.count" not in ok(city, "/Things", **{"$count": "false"})


def test_following_nextlinks_serves_each_row_once_while_rows_arrive(city):
    """A node's late batch stores rows earlier in the order than the page a client is on: with offsets
    the next page would repeat a row. Pages after the first start after the last row served."""
    t = ds_id(city, "n1", "temperature")
    want = {o["@iot.id"] for o in ok(city, f"/Datastreams({t})/Observations", **{"$select": "id"})["value"]}
    assert len(want) == 30
    doc = ok(city, f"/Datastreams({t})/Observations", **{"$top": "7", "$select": "id", "$count": "true"})
    seen, url, inserted = [o["@iot.id"] for o in doc["value"]], doc["@iot.nextLink"], 0
    try:
        while url:
            with psycopg.connect(city["pg"].dsn) as conn:  # one earlier than every row, one later: each page
                for when in (f"to_timestamp({fx.T0 - 600 - inserted})", f"to_timestamp({fx.T0 + 86400 + inserted})"):
                    conn.execute(f"INSERT INTO samples (id, thing_id, time, received, tq, vals, boot, seq) VALUES "
                                 f"({200_000_000 + inserted}, %s, {when}, now(), 0, ARRAY[-5]::real[], 1, "
                                 f"{100_000 + inserted})", (thing(city, "n1"),))
                    inserted += 1
            page = requests.get(url, timeout=10).json()
            seen += [o["@iot.id"] for o in page["value"]]
            assert page["@iot.count"] == 30 + inserted  # the count is of the collection now, cursor or not
            url = page.get("@iot.nextLink")
        assert len(seen) == len(set(seen)), "a row was served twice"
        assert want <= set(seen)  # none of the rows there at the start was missed
        # and the ones stored later in the order than the page came along
        assert len(set(seen) - want) >= 1
    finally:
        with psycopg.connect(city["pg"].dsn) as conn:
            conn.execute("DELETE FROM samples WHERE id >= 200000000")
    # a cursor this server did not write is a 400 that says what to do; with $orderby, pages are offsets
    for bad in ("x", "[]", "[1]", '["nope", "nope", 1]', "[true, 1, 2]"):
        r = get(city, f"/Datastreams({t})/Observations", **{"$skiptoken": bad})
        assert r.status_code == 400 and "@iot.nextLink" in r.json()["message"], (bad, r.text)
    ordered = ok(city, f"/Datastreams({t})/Observations", **{"$top": "7", "$orderby": "result desc"})
    assert "$skip=7" in ordered["@iot.nextLink"]


def test_a_top_above_the_maximum_gets_a_full_page_and_a_nextlink(city):
    doc = ok(city, "/Observations", **{"$top": "100000000", "$select": "id"})
    n = len(doc["value"])
    assert n == ok(city, "/Observations", **{"$top": "0", "$count": "true"})["@iot.count"]
    assert "@iot.nextLink" not in doc  # fewer than 10,000 here: all of them on the one page


def test_the_ogc_priority_ordering_and_string_comparison_of_results(city):
    # n2's temperatures are 1..12, as the OGC dataset's Observations: `result gt '3'` compares text
    d = ds_id(city, "n2", "temperature")
    doc = ok(city, "/Observations", **{"$count": "true", "$top": "1", "$skip": "2", "$orderby": "phenomenonTime asc",
                                       "$filter": f"Datastream/id eq {d} and result gt '3'"})
    assert doc["@iot.count"] == 6 and len(doc["value"]) == 1 and doc["value"][0]["result"] == 6


@pytest.mark.parametrize("expr,expected", [
    ("result eq 2 and result eq 1 or result eq 1", [1]),
    ("(result eq 2 and result eq 1) or result eq 1", [1]),
    ("result eq 2 and (result eq 1 or result eq 1)", []),
    ("not result lt 1 and not result gt 1", [1]),
    ("1 add result mul 2 sub -1 eq 4", [1]),
    ("6 div 2 sub result eq 2", [1]),
    ("1 add 2.0 mod (result add 1) eq 1", [1]),
    ("14 div (result add 1) mod 3 mul 3 eq 3", [1]),
    ("result div 0 eq 1", []),
    ("7 div 2 eq 3.5 and result eq 1", [1]),  # div is floating point, whatever its operands
    ("result mod 2 eq 0 and result le 6", [2, 4, 6]),
    ("round(result div 4) eq 1", [2, 3, 4, 5]),
    ("floor(result div 4) eq 1 or ceiling(result div 4) eq 3 and result lt 10", [4, 5, 6, 7, 9]),
    ("result in (3, 5, 13)", [3, 5]),
    ("phenomenonTime lt Datastream/phenomenonTime", []),
    ("parameters/seq eq 3", [4]),
    ("resultQuality/out_of_range eq false and parameters/seq lt 2", [1, 2]),
])
def test_filter_precedence_arithmetic_and_paths_as_frost_reads_them(city, expr, expected):
    d = ds_id(city, "n2", "temperature")
    doc = ok(city, "/Observations", **{"$filter": f"Datastream/id eq {d} and ({expr})", "$orderby": "result"})
    assert [o["result"] for o in doc["value"]] == expected, expr


@pytest.mark.parametrize("path,expr,names", [
    ("/Things", "startswith(name, 'n') and endswith(description, 'p1')", ["n1", "n3"]),
    ("/Things", "name eq 'n3'", ["n3", "n3"]),
    ("/Things", "substringof('ode n2', description)", ["n2"]),
    ("/Things", "contains(description, 'n2 on')", ["n2"]),
    ("/Things", "length(name) eq 2 and indexof(name, '3') eq 2 and properties/pole eq 'p1'", ["n3"]),
    ("/Things", "substring(description, 9) eq 'node n1 on pole p1'", ["n1"]),
    ("/Things", "substring(description, 9, 4) eq 'node' and tolower(toupper(name)) eq 'n2'", ["n2"]),
    ("/Things", "trim(concat(' ', name)) eq 'n1'", ["n1"]),
    ("/Things", "properties/pole eq 'p2'", ["n2", "n3"]),
    ("/Things", "Datastreams/ObservedProperty/name eq 'pressure'", ["n1"]),
    ("/Things", "Datastreams/Sensor/name eq 'SHT31'", ["n2"]),
    ("/Things", "Datastreams/Sensor/name eq 'BME280'", ["n1"]),
    ("/Things", "HistoricalLocations/Locations/name eq 'p2'", ["n2", "n3"]),
    ("/Things", "not (Datastreams/id eq null)", ["n1", "n2", "n3", "n3"]),
    ("/Things", "Datastreams/id eq null", []),
    ("/Things", "st_within(Locations/location, geography'POLYGON((126.97 37.56, 126.98 37.56, 126.98 37.57, "
                "126.97 37.57, 126.97 37.56))')", ["n1", "n3"]),
    ("/Things", "geo.distance(Locations/location, geography'POINT(126.99 37.57)') lt 0.001", ["n2", "n3"]),
    ("/Things", "st_contains(geography'POLYGON((126 37, 127 37, 127 38, 126 38, 126 37))', Locations/location)",
     ["n1", "n2", "n3", "n3"]),
    ("/Things", "geo.intersects(Locations/location, geography'POINT(126.99 37.57)')", ["n2", "n3"]),
    ("/Locations", "st_equals(location, geography'POINT(126.978 37.5665)')", ["p1"]),
    ("/Locations", "not st_disjoint(location, geography'LINESTRING(126.99 37.5, 126.99 37.6)')", ["p2"]),
    ("/Locations", "geo.length(location) eq 0 and Things/name eq 'n2'", ["p2"]),
    ("/Locations", "st_touches(location, geography'POLYGON((126.978 37.5, 127 37.5, 127 37.6, 126.978 37.6, "
                   "126.978 37.5))')", ["p1"]),
    ("/Locations", "st_touches(location, geography'LINESTRING(126.99 37.57, 127 37.6)')", ["p2"]),
    ("/Locations", "not st_overlaps(location, geography'POINT(126.99 37.57)') and not st_crosses(location, "
                   "geography'LINESTRING(126 37, 127 38)')", ["p1", "p2"]),
    ("/Locations", "st_relate(location, geography'POLYGON((126.98 37.56, 127 37.56, 127 37.58, 126.98 37.58, "
                   "126.98 37.56))', 'T*F**F***')", ["p2"]),  # within: p2 inside, p1 outside
    ("/Locations", "st_relate(geography'POLYGON((126.98 37.56, 127 37.56, 127 37.58, 126.98 37.58, 126.98 37.56))', "
                   "location, 'FF*FF****')", ["p1"]),  # disjoint, the polygon first
    ("/Locations", "st_relate(location, geography'POINT(126.978 37.5665)', '0FFFFFFF2')", ["p1"]),
    ("/Datastreams", "Thing/name eq 'n2' and properties/aggregate eq 'none'", ["n2 humidity", "n2 temperature"]),
    ("/Datastreams", "unitOfMeasurement/symbol eq 'dB(A)' and properties/aggregate eq 'daily mean'",
     ["n3 laeq, daily mean", "n3 lamax, daily mean"] * 2),
    ("/Sensors", "Datastreams/Thing/name eq 'n3'", ["openpole noise meter"]),
    ("/ObservedProperties", "Datastreams/Thing/name eq 'n2'", ["temperature", "humidity"]),
    ("/FeaturesOfInterest", "Observations/Datastream/Thing/name eq 'n2'", ["Air at pole p2"]),
])
def test_filter_functions_geometry_and_any_semantics_through_relations(city, path, expr, names):
    doc = ok(city, path, **{"$filter": expr})
    got = [e["name"] for e in doc["value"]]
    ids = [e["@iot.id"] for e in doc["value"]]
    assert sorted(got) == sorted(names) and len(ids) == len(set(ids)), (expr, got)


def test_time_filters_functions_durations_and_interval_rules(city):
    t = ds_id(city, "n1", "temperature")
    stored = readings(city, "n1", "temperature")
    a, b = stored[5][0], stored[9][0]
    q = f"phenomenonTime ge {iso(a)} and phenomenonTime lt {iso(b)}"
    doc = ok(city, f"/Datastreams({t})/Observations", **{"$filter": q, "$orderby": "phenomenonTime asc"})
    assert [(o["phenomenonTime"], o["result"]) for o in doc["value"]] == [(iso(x), v) for x, v in stored[5:9]]
    # the zone written as +00:00, sent encoded (%2B), and the three ways a space arrives
    plus = q.replace("Z", "+00:00")
    for enc in (urllib.parse.quote(plus, safe=""), urllib.parse.quote_plus(plus)):
        r = requests.get(f"{city['base']}/Datastreams({t})/Observations?$filter={enc}", timeout=10)
        assert r.status_code == 200 and len(r.json()["value"]) == 4
    hours = {x.hour for x, _ in stored}
    doc = ok(city, f"/Datastreams({t})/Observations",
             **{"$filter": f"hour(phenomenonTime) eq {min(hours)} and minute(phenomenonTime) lt 50 and "
                           f"year(phenomenonTime) eq 2026 and month(resultTime) eq 9 and second(phenomenonTime) eq "
                           f"{stored[0][0].second} and fractionalseconds(phenomenonTime) eq 0 and "
                           f"date(phenomenonTime) eq {stored[0][0].date()} and time(phenomenonTime) ge 00:00:00 and "
                           f"totaloffsetminutes(phenomenonTime) eq 0 and phenomenonTime lt now() and "
                           f"phenomenonTime gt mindatetime() and phenomenonTime lt maxdatetime()"})
    assert len(doc["value"]) == len([x for x, _ in stored if x.hour == min(hours) and x.minute < 50])
    doc = ok(city, f"/Datastreams({t})/Observations",
             **{"$filter": f"phenomenonTime sub duration'PT2M' ge {iso(stored[-1][0])}"})
    assert doc["value"] == []
    doc = ok(city, f"/Datastreams({t})/Observations",
             **{"$filter": f"phenomenonTime add duration'PT1M' eq {iso(stored[1][0])}"})
    assert [o["result"] for o in doc["value"]] == [stored[0][1]]
    # an hourly mean's phenomenonTime is an interval: FROST's rules, with the interval [s, e)
    hourly = ok(city, f"/Datastreams({t + 2**31})/Observations")["value"]
    s, e = hourly[0]["phenomenonTime"].split("/")
    assert ok(city, f"/Datastreams({t + 2**31})/Observations", **{"$filter": f"phenomenonTime ge {s}"})["value"]
    assert ok(city, f"/Datastreams({t + 2**31})/Observations", **{"$filter": f"phenomenonTime lt {s}"})["value"] == []
    within = ok(city, f"/Datastreams({t + 2**31})/Observations", **{"$filter": f"phenomenonTime eq {s}/{e}"})
    assert [o["@iot.id"] for o in within["value"]] == [hourly[0]["@iot.id"]]
    # Datastreams' phenomenonTime spans their readings
    ds = ok(city, f"/Datastreams({t})")
    assert ds["phenomenonTime"] == f"{iso(stored[0][0])}/{iso(stored[-1][0])}"
    later = ok(city, "/Datastreams", **{"$filter": f"phenomenonTime gt {iso(stored[0][0])} and Thing/name eq 'n1'"})
    assert later["value"] == []


def test_orderby_nulls_directions_ties_and_uppercase(city):
    doc = ok(city, "/Datastreams", **{"$orderby": "Thing/name DESC, name asc", "$select": "name"})
    names = [d["name"] for d in doc["value"]]
    assert names == sorted(names, key=lambda n: (-ord(n[1]), n)) or names[0].startswith("n3"), names
    assert all(list(d) == ["name"] for d in doc["value"])
    obs = ok(city, "/Observations", **{"$orderby": "resultQuality/tq desc, phenomenonTime desc", "$top": "500",
                                       "$select": "id,resultQuality"})["value"]
    nulls = [o for o in obs if "resultQuality" not in o]
    assert nulls and obs[-len(nulls):] == nulls  # nulls last when descending
    asc = ok(city, "/Observations", **{"$orderby": "resultQuality/tq", "$top": "500", "$select": "id,resultQuality"})
    assert "resultQuality" not in asc["value"][0]  # and first when ascending
    text = ok(city, "/Observations", **{"$orderby": "phenomenonTime desc", "$top": "50"})["value"]
    assert [o["phenomenonTime"] for o in text] == sorted((o["phenomenonTime"] for o in text), reverse=True)


OPS = {"lt": lambda a, b: a < b, "le": lambda a, b: a <= b, "eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
       "ge": lambda a, b: a >= b, "gt": lambda a, b: a > b}
OBJECTS = {"location", "feature", "unitOfMeasurement", "properties", "parameters", "resultQuality"}


TIME = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z(/\d{4}-\d\d-\d\dT[\d:.]+Z)?$")


def _literal(value):
    if isinstance(value, str) and TIME.match(value):
        return value  # a time or an interval, unquoted
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + value.replace("'", "''") + "'"


@pytest.mark.parametrize("entity_set", SETS)
def test_every_mandatory_property_filters_and_orders_as_the_ogc_suite_checks(city, entity_set):
    """ETS10 Capability3 readEntitiesWithFilterQO and readEntitiesWithOrderbyQO: each comparison with a
    sample value holds for every entity returned, and the entities come in order, both ways (strings
    in code-point order, times as their text)."""
    everything = ok(city, f"/{entity_set}", **{"$top": "1000"})["value"]
    props = [p for p in MANDATORY[entity_set] if p not in OBJECTS]
    for prop in props:
        values = sorted({json.dumps(e[prop]) for e in everything if e.get(prop) is not None})
        sample = json.loads(values[len(values) // 2])
        for op, holds in OPS.items():
            doc = ok(city, f"/{entity_set}", **{"$filter": f"{prop} {op} {_literal(sample)}", "$top": "1000"})
            got = [e[prop] for e in doc["value"]]
            intervals = any(isinstance(e.get(prop), str) and TIME.match(e[prop]) and "/" in e[prop]
                            for e in everything)
            if not intervals:  # (an interval compares by the rules of research/sta.md §4.4.6, tested above)
                assert all(holds(v, sample) for v in got if v is not None), (prop, op, sample, got[:5])
                want = [e["@iot.id"] for e in everything if e.get(prop) is not None and holds(e[prop], sample)]
                assert sorted(e["@iot.id"] for e in doc["value"]) == sorted(want), (prop, op)
        for direction in ("asc", "desc"):
            doc = ok(city, f"/{entity_set}", **{"$orderby": f"{prop} {direction}", "$top": "1000"})
            seq = [e[prop] for e in doc["value"]]
            assert seq == sorted(seq, reverse=direction == "desc"), (prop, direction)
    # growing lists of keys: each adjacent pair in order by the first key that differs
    doc = ok(city, f"/{entity_set}", **{"$orderby": ",".join(f"{p} desc" for p in props), "$top": "1000"})
    keys = [tuple(e[p] for p in props) for e in doc["value"]]
    assert keys == sorted(keys, reverse=True)


def test_select_and_nested_expand_with_their_own_options(city):
    doc = ok(city, "/Things", **{"$select": "id,name,Datastreams", "$filter": "name eq 'n1'"})
    assert doc["value"] == [{"@iot.id": 1, "name": "n1",
                             "Datastreams@iot.navigationLink": f"{city['base']}/Things(1)/Datastreams"}]
    t = ds_id(city, "n1", "temperature")
    stored = readings(city, "n1", "temperature")
    doc = ok(city, "/Things(1)", **{"$select": "name", "$expand": "Datastreams($filter=properties/quantity eq "
                                                                  "'temperature' and properties/aggregate eq 'none';"
                                                                  "$select=name,id;$count=true;$expand=Observations("
                                                                  "$orderby=phenomenonTime desc;$top=2;$count=true;"
                                                                  "$select=result),Sensor)"})
    assert set(doc) == {"name", "Datastreams", "Datastreams@iot.count"}
    assert doc["Datastreams@iot.count"] == 1
    ds = doc["Datastreams"][0]
    assert ds["@iot.id"] == t and ds["Sensor"]["name"] == "BME280" and ds["Observations@iot.count"] == 30
    assert [o["result"] for o in ds["Observations"]] == [v for _, v in stored[::-1][:2]]
    assert ds["Observations@iot.nextLink"].startswith(f"{city['base']}/Datastreams({t})/Observations?")
    follow = requests.get(ds["Observations@iot.nextLink"], timeout=10).json()
    assert [o["result"] for o in follow["value"]] == [v for _, v in stored[::-1][2:4]]
    # a/b is $expand=a($expand=b), and both merge
    one = ok(city, f"/Datastreams({t})", **{"$expand": "Thing/Locations,Thing,ObservedProperty"})
    assert one["Thing"]["Locations"][0]["name"] == "p1" and one["ObservedProperty"]["name"] == "temperature"


def test_data_array_as_frost_test_suite_checks_it_and_pandas_reads_it(city):
    import pandas as pd

    doc = ok(city, "/Observations", **{"$count": "true", "$top": "3", "$resultFormat": "dataArray"})
    assert "@iot.count" in doc and "@iot.nextLink" in doc
    for g in doc["value"]:
        assert g["Datastream@iot.navigationLink"].startswith(city["base"] + "/Datastreams(")
        assert g["components"] == ["id", "phenomenonTime", "result", "resultTime", "resultQuality", "validTime",
                                   "parameters"]
        assert g["dataArray@iot.count"] == len(g["dataArray"]) and all(len(r) == 7 for r in g["dataArray"])
    doc = ok(city, "/Observations", **{"$count": "true", "$top": "4", "$resultFormat": "dataArray",
                                       "$select": "result,phenomenonTime", "$orderby": "phenomenonTime desc"})
    assert all(g["components"] == ["phenomenonTime", "result"] for g in doc["value"])
    t = ds_id(city, "n1", "temperature")
    frames, url = [], f"{city['base']}/Datastreams({t})/Observations"
    params = {"$orderby": "phenomenonTime asc", "$select": "phenomenonTime,result", "$resultFormat": "dataArray",
              "$top": "8"}
    while url:
        page = requests.get(url, params=params, timeout=10).json()
        frames += [pd.DataFrame(g["dataArray"], columns=g["components"]) for g in page["value"]]
        url, params = page.get("@iot.nextLink"), None
    df = pd.concat(frames, ignore_index=True)
    stored = readings(city, "n1", "temperature")
    assert list(df["result"]) == [v for _, v in stored]
    assert list(pd.to_datetime(df["phenomenonTime"], utc=True)) == [pd.Timestamp(x) for x, _ in stored]
    r = get(city, "/Observations", **{"$resultFormat": "dataArray", "$expand": "Datastream"})
    assert r.status_code == 400 and "$expand" in r.json()["message"]


def test_aggregates_are_datastreams_of_their_own_with_the_stored_means(city):
    t = ds_id(city, "n1", "temperature")
    stored = [v for _, v in readings(city, "n1", "temperature")]
    daily = ok(city, f"/Datastreams({t + 2**32})")
    assert daily["name"] == "n1 temperature, daily mean" and daily["properties"]["aggregate"] == "daily mean"
    day = ok(city, f"/Datastreams({t + 2**32})/Observations")["value"]
    assert len(day) == 1 and day[0]["parameters"]["count"] == 30
    assert day[0]["result"] == pytest.approx(sum(stored) / 30) and day[0]["parameters"]["min"] == min(stored)
    hours = ok(city, f"/Datastreams({t + 2**31})/Observations")["value"]
    assert sum(h["parameters"]["count"] for h in hours) == 30
    assert ok(city, f"/Observations({day[0]['@iot.id']})/Datastream")["@iot.id"] == t + 2**32
    laeq = ok(city, f"/Datastreams({ds_id(city, 'n3', 'laeq', 'p2') + 2**32})/Observations")["value"][0]
    levels = [v for _, v in readings(city, "n3", "laeq", "p2")]
    import math
    assert laeq["result"] == pytest.approx(10 * math.log10(sum(10 ** (x / 10) for x in levels) / len(levels)))


def test_observations_carry_receive_time_flags_and_time_quality(city):
    pm = ds_id(city, "n1", "pm2_5")
    doc = ok(city, f"/Datastreams({pm})/Observations", **{"$filter": "resultQuality/out_of_range eq true"})
    assert [o["result"] for o in doc["value"]] == [1500]
    o = doc["value"][0]
    assert o["resultQuality"] == {"out_of_range": True, "flags": 1, "tq": 0, "time_quality": "synchronised"}
    assert o["parameters"] == {"boot": 1, "seq": 7} and o["resultTime"] > o["phenomenonTime"]


def test_a_node_moved_to_another_pole_is_a_thing_on_each_with_its_history_and_features(city):
    on_p2, on_p1 = thing(city, "n3", "p2"), thing(city, "n3", "p1")
    for t, pole in ((on_p2, "p2"), (on_p1, "p1")):
        hist = ok(city, f"/Things({t})/HistoricalLocations", **{"$expand": "Locations,Thing($select=id)"})["value"]
        assert [(h["Locations"][0]["name"], h["Thing"]["@iot.id"]) for h in hist] == [(pole, t)]
        assert ok(city, f"/HistoricalLocations({hist[0]['@iot.id']})")["time"] == hist[0]["time"]
        assert ok(city, f"/Things({t})/Locations")["value"][0]["name"] == pole
        laeq = ds_id(city, "n3", "laeq", pole)
        obs = ok(city, f"/Datastreams({laeq})/Observations", **{"$expand": "FeatureOfInterest($select=name,id)",
                                                                 "$orderby": "phenomenonTime"})["value"]
        assert [o["result"] for o in obs] == [v for _, v in readings(city, "n3", "laeq", pole)]
        assert {o["FeatureOfInterest"]["name"] for o in obs} == {f"Air at pole {pole}"}
        foi = obs[0]["FeatureOfInterest"]["@iot.id"]
        mine = ok(city, f"/FeaturesOfInterest({foi})/Observations", **{"$filter": f"Datastream/id eq {laeq}"})
        assert [o["@iot.id"] for o in mine["value"]] == [o["@iot.id"] for o in obs]
        same = ok(city, "/Observations", **{"$filter": f"FeatureOfInterest/id eq {foi} and Datastream/id eq {laeq}"})
        assert sorted(o["@iot.id"] for o in same["value"]) == sorted(o["@iot.id"] for o in obs)
    n2 = ok(city, "/Datastreams", **{"$filter": f"Thing/id eq {thing(city, 'n2')} and properties/aggregate eq 'none'"})
    assert sorted(d["name"] for d in n2["value"]) == ["n2 humidity", "n2 temperature"]
    p1 = ok(city, "/Locations", **{"$filter": "name eq 'p1'"})["value"][0]["@iot.id"]
    assert sorted(t["@iot.id"] for t in ok(city, f"/Locations({p1})/Things")["value"]) == sorted(
        [thing(city, "n1"), on_p1])


# ---------------------------------------------------------------- the real clients


def test_frost_sta_client_reads_what_the_loader_stored(city):
    import frost_sta_client as fsc

    svc = fsc.SensorThingsService(city["base"])
    things = svc.things().query().expand("Locations,Datastreams($select=name,id)").list()
    names = sorted(t.name for t in things)
    assert names == ["n1", "n2", "n3", "n3"]
    n1 = next(t for t in things if t.name == "n1")
    assert n1.locations.entities[0].location["coordinates"] == [126.978, 37.5665]
    page = svc.things().query().top(2).count().list()
    assert page.count == 4 and len(page.entities) == 2 and page.next_link
    assert sorted(t.name for t in page) == names  # iterating follows @iot.nextLink
    t = svc.things().find(1)
    ds = list(t.get_datastreams().query().expand("ObservedProperty,Sensor").filter(
        "properties/aggregate eq 'none'").list())
    assert {(d.observed_property.name, d.sensor.name) for d in ds} == {
        ("temperature", "BME280"), ("humidity", "BME280"), ("pressure", "BME280"), ("pm2_5", "PMS5003")}
    stored = readings(city, "n1", "humidity")
    ds = svc.datastreams().find(ds_id(city, "n1", "humidity"))
    obs = ds.get_observations().query().filter(
        f"phenomenonTime ge {iso(stored[3][0])} and phenomenonTime lt {iso(stored[20][0])}").orderby(
        "phenomenonTime", "ASC").select("phenomenonTime", "result").top(5).list()
    assert [(o.phenomenon_time, o.result) for o in obs] == [(iso(x), v) for x, v in stored[3:20]]
    newest = svc.datastreams().find(ds.id).get_observations().query().orderby("phenomenonTime").top(1).list()
    assert newest.entities[0].result == stored[-1][1]  # the client's default order is DESC
    latest = svc.things().query().filter("name eq 'n2'").expand(
        "Datastreams($expand=Observations($orderby=phenomenonTime desc;$top=1))").list().entities[0]
    got = {d.name: d.observations.entities[0].result for d in latest.datastreams.entities}
    assert got["n2 temperature"] == readings(city, "n2", "temperature")[-1][1]
    n = svc.observations().query().filter(f"Datastream/id eq {ds.id}").top(0).count().list().count
    assert n == len(stored)


def test_istsos4_client_reads_the_same(city):
    from istsos4_client import Client, Datastream, FeatureOfInterest, HistoricalLocation, Location, Observation, \
        ObservedProperty, Sensor, Thing

    with Client(city["base"]) as c:
        things = c.list(Thing, top=2, expand="Locations")
        assert sorted(t.name for t in things) == ["n1", "n2", "n3", "n3"]
        for model in (Datastream, Sensor, ObservedProperty, Location, HistoricalLocation, FeatureOfInterest):
            assert c.list(model)  # every entity validates against the client's models
        ds = c.list(Datastream, filter="Thing/name eq 'n2' and properties/quantity eq 'temperature'",
                    expand="ObservedProperty")
        assert [d.name for d in ds] == ["n2 temperature", "n2 temperature, hourly mean", "n2 temperature, daily mean"]
        stored = readings(city, "n2", "temperature")
        obs = c.list(Observation, filter=f"Datastream/id eq {ds[0].iot_id} and phenomenonTime ge {iso(stored[2][0])}",
                     orderby="phenomenonTime desc", select="result,phenomenonTime", top=4)
        assert [o.result for o in obs] == [v for _, v in stored[2:]][::-1]
        one = c.get(Observation, a_reading(city), expand="Datastream")
        assert one.result == readings(city, "n1", "temperature")[0][1] and one.datastream.name == "n1 temperature"


def test_clients_models_accept_every_entity_the_server_emits(city):
    """research/sta.md §9 item 23: every entity of every set through both clients' deserialisers."""
    import frost_sta_client.utils as futils
    import istsos4_client as ist

    models = {"Things": ist.Thing, "Locations": ist.Location, "HistoricalLocations": ist.HistoricalLocation,
              "Datastreams": ist.Datastream, "Sensors": ist.Sensor, "ObservedProperties": ist.ObservedProperty,
              "Observations": ist.Observation, "FeaturesOfInterest": ist.FeatureOfInterest}
    singular = {"Things": "Thing", "Locations": "Location", "HistoricalLocations": "HistoricalLocation",
                "Datastreams": "Datastream", "Sensors": "Sensor", "ObservedProperties": "ObservedProperty",
                "Observations": "Observation", "FeaturesOfInterest": "FeatureOfInterest"}
    import frost_sta_client as fsc

    for s in SETS:
        url = f"{city['base']}/{s}"
        while url:
            doc = requests.get(url, timeout=10).json()
            for e in doc["value"]:
                models[s].model_validate(e)
                cls = getattr(fsc, singular[s])
                futils.transform_json_to_entity(dict(e), f"{cls.__module__}.{cls.__name__}")
            url = doc.get("@iot.nextLink")


# ---------------------------------------------------------------- hostile input and limits


def test_hostile_input_is_refused_or_harmless_and_the_database_untouched(city):
    with psycopg.connect(city["pg"].dsn) as conn:
        before = conn.execute("SELECT (SELECT count(*) FROM things), (SELECT count(*) FROM samples)").fetchone()
    for expr in ["name eq 'x'';DROP TABLE things;--'", "name eq 'x' or 1 eq 1; DROP TABLE things",
                 "properties/'); DROP TABLE samples;-- eq 1", "substringof(''', name)", "name eq '\x00'",
                 "name eq '" + "a" * 3000 + "'", "name eq 'x' and now() sub duration'P99999999999D' lt now()",
                 "geo.distance(Locations/location, geography'POINT(1e400 2)') lt 1"]:
        r = get(city, "/Things", **{"$filter": expr})
        assert r.status_code in (200, 400), (expr, r.status_code, r.text[:300])
        if r.status_code == 200:
            assert r.json()["value"] in ([], ok(city, "/Things")["value"])
        else:
            assert r.json()["message"] and "\n" not in r.json()["message"]
    r = get(city, "/Things", **{"$filter": "name eq '" + "a" * 5000 + "'"})
    assert r.status_code == 400 and "at most" in r.json()["message"]
    r = get(city, "/Observations", **{"$filter": "result mul 1e300 mul 1e300 gt 0"})
    assert r.status_code in (200, 400) and "Traceback" not in r.text
    # a long chain of operators: a 400 that says so, or served; never a 500 (a RecursionError)
    for expr in ["1" + " add 1" * 650 + " eq 1", "result" + " mul 1" * 650 + " gt 0",
                 " or ".join(f"result eq {i}" for i in range(200))]:
        r = get(city, "/Observations", **{"$filter": expr})
        assert r.status_code == 200 or "deeper than" in r.json()["message"], (expr[:40], r.status_code, r.text[:200])
    for order in ("true desc", "null", "false, time", "'x'", "1", "2026-01-01T00:00:00Z/2026-01-02T00:00:00Z"):
        r = get(city, "/HistoricalLocations", **{"$orderby": order})  # a constant orders nothing
        assert r.status_code == 200 and r.json()["value"] == ok(city, "/HistoricalLocations")["value"], (order, r.text)
    r = get(city, "/Observations", **{"$orderby": "1" + " add 1" * 650})
    assert r.status_code == 400 and "deeper than" in r.json()["message"]
    r = get(city, "/Observations", **{"$skip": "999999999"})
    assert r.status_code == 400 and "$filter" in r.json()["message"]
    many = ",".join(["Datastreams($expand=Observations)"] * 30)
    r = get(city, "/Things", **{"$expand": many})
    assert r.status_code in (200, 400)
    with psycopg.connect(city["pg"].dsn) as conn:
        after = conn.execute("SELECT (SELECT count(*) FROM things), (SELECT count(*) FROM samples)").fetchone()
    assert after == before
    assert ok(city, "/Things(1)")["name"] == "n1"  # the server is unharmed


def test_the_reader_role_cannot_write_and_the_server_uses_it(city):
    with psycopg.connect(fx.reader_dsn(city["pg"].dsn)) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM things")


def test_a_client_over_its_rate_gets_429_with_retry_after_and_others_still_served(city):
    p, base = serve(fx.reader_dsn(city["pg"].dsn), "--rate", "2", "--burst", "3")
    try:
        codes = [requests.get(base + "/Things(1)", timeout=10) for _ in range(8)]
        limited = [r for r in codes if r.status_code == 429]
        assert limited and all(r.status_code in (200, 429) for r in codes)
        assert int(limited[0].headers["Retry-After"]) >= 1 and "wait" in limited[0].json()["message"]
        time.sleep(float(limited[0].headers["Retry-After"]) + 0.2)
        assert requests.get(base + "/Things(1)", timeout=10).status_code == 200
    finally:
        p.terminate()
        p.wait(10)


def test_x_forwarded_for_cannot_dodge_the_rate_limit(city):
    def limited(base, headers):
        codes = [requests.get(base + "/Sensors(1)", headers=h, timeout=10).status_code for h in headers]
        return codes.count(429)

    spoofed = [{"X-Forwarded-For": f"10.9.{i}.1"} for i in range(8)]
    p, base = serve(fx.reader_dsn(city["pg"].dsn), "--rate", "0.5", "--burst", "3")
    try:  # not trusted: the header is ignored, the peer counted
        assert limited(base, spoofed) >= 4
    finally:
        p.terminate()
        p.wait(10)
    p, base = serve(fx.reader_dsn(city["pg"].dsn), "--rate", "0.5", "--burst", "3", "--trust-forwarded")
    try:  # behind a proxy that appends the client it saw: what the client wrote before it is not counted
        assert limited(base, [{"X-Forwarded-For": f"10.9.{i}.1, 192.0.2.7"} for i in range(8)]) >= 4
        assert limited(base, [{"X-Forwarded-For": f"192.0.2.{i + 10}"} for i in range(8)]) == 0  # distinct clients
    finally:
        p.terminate()
        p.wait(10)


def test_a_slow_query_is_cut_by_the_statement_timeout_with_a_503(city):
    p, base = serve(fx.reader_dsn(city["pg"].dsn), "--rate", "0", "--timeout", "0.01", "--pool", "1")
    try:
        # every Observation's feature, that feature's Observations, and theirs: quadratic in the readings
        heavy = "FeatureOfInterest/Observations/FeatureOfInterest/name eq 'x'"
        r = requests.get(base + "/Observations", params={"$filter": heavy, "$count": "true"}, timeout=30)
        assert r.status_code == 503 and r.headers["Retry-After"] and "narrow" in r.json()["message"]
    finally:
        p.terminate()
        p.wait(10)
    p, base = serve(fx.reader_dsn(city["pg"].dsn), "--rate", "0", "--timeout", "0.8", "--pool", "1")
    try:
        # many statements (each $expand level, each count), each maybe under the timeout: the request
        # as a whole is cut at it, and its one connection serves the next request
        # (measured before the request was bounded: 200 after 3.3 s, no statement over 0.8 s)
        ex = "Observations($filter=FeatureOfInterest/Observations/result eq -1;$count=true)"
        expand = ",".join([ex] + [f"{n}($expand=Datastreams($expand={ex}))" for n in ("Thing", "Sensor",
                                                                                     "ObservedProperty")])
        t = time.monotonic()
        r = requests.get(base + "/Datastreams", params={"$expand": expand, "$top": "12"}, timeout=60)
        took = time.monotonic() - t
        assert r.status_code == 503 and "narrow" in r.json()["message"] and took < 2.5, (r.status_code, took)
        t = time.monotonic()
        assert requests.get(base + "/Sensors(1)", timeout=10).status_code == 200
        assert time.monotonic() - t < 1.0  # no query of the cut request left running on the connection
    finally:
        p.terminate()
        p.wait(10)


def test_two_processes_serve_one_database_alike(city):
    p, base = serve(fx.reader_dsn(city["pg"].dsn), "--rate", "0")
    try:
        a = requests.get(city["base"] + "/Datastreams?$top=3&$skip=2", timeout=10).json()
        b = requests.get(base + "/Datastreams?$top=3&$skip=2", timeout=10).json()
        assert json.dumps(a).replace(city["base"], "") == json.dumps(b).replace(base, "")
    finally:
        p.terminate()
        p.wait(10)


def test_spec_pages_behind_sensor_metadata_are_served(city):
    for s in ok(city, "/Sensors")["value"]:
        r = requests.get(s["metadata"], timeout=10)
        assert r.status_code == 200 and s["name"].split()[0].lower() in r.text.lower()
    op = ok(city, "/ObservedProperties(1)")
    assert requests.get(op["definition"], timeout=10).status_code == 200
    assert requests.get(city["base"].replace("/v1.1", "/specs/../../etc/passwd"), timeout=10).status_code == 404


# ---------------------------------------------------------------- plans (last: it adds rows, then removes them)


class Recording:
    """An async connection that keeps each query the API sends."""

    def __init__(self, conn):
        self.conn, self.queries = conn, []

    async def execute(self, sql, params=None):
        self.queries.append((sql, params))
        return await self.conn.execute(sql, params)


def test_an_expansion_past_the_entity_bound_is_refused_before_its_rows_are_fetched(city, monkeypatch):
    import asyncio

    from psycopg.rows import dict_row

    from openpole.city.sta import request as sta_request
    from openpole.city.sta.errors import BadRequest
    from openpole.city.sta.mapping import build

    monkeypatch.setattr(sta_request, "MAX_ENTITIES", 40)
    api = sta_request.Api(build("http://x/specs/"), "http://x/v1.1")

    class Counting(Recording):
        fetched = 0

        async def execute(self, sql, params=None):
            cur = await self.conn.execute(sql, params)
            rows = await cur.fetchall()
            Counting.fetched = max(Counting.fetched, len(rows))

            class Done:
                async def fetchall(self):
                    return rows

                async def fetchone(self):
                    return rows[0] if rows else None
            return Done()

    async def run(query):
        async with await psycopg.AsyncConnection.connect(fx.reader_dsn(city["pg"].dsn), row_factory=dict_row,
                                                         autocommit=True) as conn:
            return await api.get(Counting(conn), "/Datastreams", query)

    # 10 Datastreams of up to 31 Observations each: 300 rows, 40 allowed
    with pytest.raises(BadRequest) as e:
        asyncio.run(run("$top=10&$expand=Observations($top=30)"))
    assert "more than 40 entities" in e.value.message
    assert Counting.fetched <= 40 + 10 + 1  # what fits, each parent's one row past its page, and one
    Counting.fetched = 0
    status, body, _ = asyncio.run(run("$top=3&$expand=Observations($top=3)"))  # 3 + 9 fit
    assert status == 200 and all(len(d["Observations"]) == 3 for d in body["value"])


def test_time_ranges_latest_values_and_ids_use_the_indexes(city):
    import asyncio

    from psycopg.rows import dict_row

    from openpole.city.sta.mapping import build
    from openpole.city.sta.request import Api

    dsn = city["pg"].dsn
    from openpole.city import maintain

    with psycopg.connect(dsn) as conn:  # 150,000 more samples: one busy node and more of n1 in October
        with conn.cursor() as cur:
            maintain.make_partition(cur, fx.T0_MONTH.replace(month=10))
        conn.execute("""INSERT INTO samples (id, thing_id, time, received, tq, vals, boot, seq)
                        SELECT 100000000 + g, x.thing, x.t, x.t, 0, ARRAY[20.5, 50, 1000]::real[], 1, g
                        FROM generate_series(1, 150000) g, LATERAL (SELECT CASE WHEN g % 3 = 0 THEN 1 ELSE 99
                        END AS thing, CASE WHEN g % 3 = 0 THEN '2026-10-01'::timestamptz ELSE '2026-09-01' END
                        + g * interval '10 s' AS t) x""")
        conn.execute("ANALYZE samples")
    try:
        t = ds_id(city, "n1", "temperature")
        stored = readings(city, "n1", "temperature")
        api = Api(build("http://x/specs/"), "http://x/v1.1")

        async def run(path, query):
            async with await psycopg.AsyncConnection.connect(fx.reader_dsn(city["pg"].dsn), row_factory=dict_row,
                                                             autocommit=True) as conn:
                rec = Recording(conn)
                status, body, _ = await api.get(rec, path, query)
                return status, body, rec.queries

        cases = {
            "range": (f"/Datastreams({t})/Observations",
                      f"$filter=phenomenonTime ge {iso(stored[3][0])} and phenomenonTime lt {iso(stored[9][0])}"
                      f"&$orderby=phenomenonTime asc"),
            "latest": ("/Things(1)", "$expand=Datastreams($expand=Observations($top=1;$orderby=phenomenonTime desc))"),
            "by id": (f"/Observations({a_reading(city)})", ""),
            "next page": (f"/Datastreams({t})/Observations",
                          "$top=5&$skiptoken=" + urllib.parse.quote(json.dumps([stored[3][0].isoformat()] * 2 + [1]))),
            "filter by datastream": ("/Observations", f"$filter=Datastream/id eq {t}&$orderby=phenomenonTime desc&$top=5"),
        }
        for name, (path, query) in cases.items():
            status, body, queries = asyncio.run(run(path, query))
            assert status == 200, (name, body)
            sql, params = [q for q in queries if "FROM samples" in q[0]][-1]
            with psycopg.connect(dsn) as conn:
                plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, params).fetchall())
            # (the default partition is empty: a scan of it costs nothing)
            assert not re.search(r"Seq Scan on samples_2026_(09|10)", plan), (name, plan)  # the others are empty
            if name != "range":  # an ordered probe, stopped by LIMIT: no bitmap of every row of the node
                assert "Bitmap" not in plan, (name, plan)
            # the partitions' copies of samples_id (id) and samples_key (thing_id, time, boot, seq)
            want = r"samples_\d{4}_\d\d_id_idx" if name == "by id" else r"samples_\d{4}_\d\d_thing_id_time\w*_idx"
            assert re.search(r"Index Scan( Backward)? using " + want, plan), (name, plan)
            if name == "range":
                assert [o["result"] for o in body["value"]] == [v for _, v in stored[3:9]]
        # with 450,000 more Observations: $top is capped with a nextLink, and $count becomes an estimate
        doc = ok(city, "/Observations", **{"$top": "100000000", "$select": "id", "$count": "true"})
        assert len(doc["value"]) == 10_000 and "$top=10000&$skiptoken=" in doc["@iot.nextLink"]
        with psycopg.connect(dsn) as conn:
            truth = conn.execute("SELECT count(*) FROM samples s, unnest(s.vals) v WHERE v IS NOT NULL").fetchone()[0]
            truth += conn.execute("SELECT (SELECT count(*) FROM hourly) + (SELECT count(*) FROM daily)").fetchone()[0]
        assert 100_000 < doc["@iot.count"] and 0.2 * truth < doc["@iot.count"] < 5 * truth, (doc["@iot.count"], truth)
        second = requests.get(doc["@iot.nextLink"], timeout=30).json()
        assert len(second["value"]) == 10_000 and second["@iot.count"] == doc["@iot.count"]
        assert not {o["@iot.id"] for o in second["value"]} & {o["@iot.id"] for o in doc["value"]}
    finally:
        with psycopg.connect(dsn) as conn:
            conn.execute("DELETE FROM samples WHERE id > 100000000")
            conn.execute("ANALYZE samples")


def test_serve_refuses_a_database_it_cannot_serve_in_one_line(city):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "openpole", "city", "serve", *args], capture_output=True,
                              text=True, timeout=60)

    r = run("--db", "postgresql://openpole_reader@127.0.0.1:9/none", "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot connect to PostgreSQL" in r.stderr, r.stderr
    with psycopg.connect(city["pg"].dsn, autocommit=True) as conn:  # a database `city init` never saw
        conn.execute("CREATE DATABASE empty")
    r = run("--db", city["pg"].dsn.replace("/postgres", "/empty"), "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "no things" in r.stderr and "openpole city init" in r.stderr, r.stderr
    r = run("--db", city["pg"].dsn, "--listen", "127.0.0.1:port")
    assert r.returncode == 2 and "--listen" in r.stderr
    p, base = serve(city["pg"].dsn)  # the owner can write: served, with a warning
    try:
        assert requests.get(base + "/Things(1)", timeout=10).status_code == 200
    finally:
        p.terminate()
        out = p.communicate(timeout=10)[0]
    assert "can write" in out


def test_a_value_single_precision_cannot_hold_comes_back_exactly(city):
    with psycopg.connect(city["pg"].dsn) as conn:
        assert conn.execute("SELECT count(*) FROM samples WHERE vals8 IS NOT NULL AND vals IS NULL").fetchone()[0] == 1
    h = ds_id(city, "n1", "pressure")
    doc = ok(city, f"/Datastreams({h})/Observations", **{"$filter": "result gt 100000"})
    assert [o["result"] for o in doc["value"]] == [16777217]
    assert doc["value"][0]["resultQuality"]["out_of_range"]
    t = ok(city, f"/Datastreams({ds_id(city, 'n1', 'temperature')})/Observations", **{"$filter": "parameters/seq eq 10"})
    assert [o["result"] for o in t["value"]] == [22.5]  # the same sample's other values, from its doubles
