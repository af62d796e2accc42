"""The diag report puts what is wrong first, each with what to do, and nothing when all is well."""

from openpole import diagnosis as report

OK = {"node": "n1", "board": "esp32-devkitc", "fw": "0.2.0", "uptime_s": 100, "boot": 3, "reset_cause": "power_on",
      "heap_free": 30000, "heap_min_free": 20000,
      "net": {"ssid": "pole", "connected": True, "rssi": -60, "ip": "10.0.0.5"},
      "mqtt": {"connected": True, "errors": 0, "last_error": None, "last_publish_age_s": 1, "published": 99},
      "queue": {"depth": 0, "ram": 0, "flash": 0, "spilled": 0, "dropped": 0},
      "sensors": {"bme280": {"state": "ok", "errors": 0, "last_error": None, "last": {"temperature": 21.3712}}}}


def changed(**parts):
    import copy

    d = copy.deepcopy(OK)
    for path, value in parts.items():
        node = d
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return d


def test_a_healthy_node_has_no_problems():
    assert report.problems(OK) == [] and report.verdict(OK) == "ok"


def test_the_network_comes_before_mqtt_and_sensors():
    d = changed(net__connected=False, mqtt__connected=False, sensors__bme280__state="failed")
    p = report.problems(d)
    assert p[0].startswith("network down (Wi-Fi pole)") and "wifi.password" in p[0]
    assert not any(x.startswith("MQTT down") for x in p)  # no network explains no MQTT
    assert p[1].startswith("sensor bme280 failed")


def test_each_problem_says_what_to_do():
    d = changed(mqtt__connected=False, mqtt__last_error="not authorised", queue__dropped=5, queue__depth=300,
                reset_cause="watchdog", heap_min_free=4000, net__rssi=-85)
    p = report.problems(d)
    assert p[0] == ("MQTT down (last error: not authorised): check broker.host, broker.port and the node's "
                    "broker user and password")
    assert "5 message(s) dropped" in p[1] and "300 message(s) waiting" in p[2]
    assert "watchdog" in p[3] and "low memory: 4000 bytes" in p[4] and "weak Wi-Fi signal (-85 dBm)" in p[5]
    assert report.verdict(d).startswith("6 problem(s): MQTT down")


def test_values_are_rounded_for_people():
    assert report.values_text({"temperature": 21.3712, "pm2_5": 7, "la10": None, "hist": [1, 2]}) == "temperature 21.37, pm2_5 7"


def test_a_firmware_outside_the_supported_versions_is_a_warning_with_what_to_do():
    for version in ("1.24.0", "1.26.1", "1.28.0", "1.29.0"):
        assert report.problems(changed(micropython=version)) == []
    for version in ("1.22.2", "1.30.0", "2.0.0"):
        p = report.problems(changed(micropython=version))
        assert p == [f"MicroPython {version} on the node: openpole is tested on v1.24 to v1.29; flash a supported "
                     "firmware (openpole flash --firmware)"]
    assert report.problems(changed(micropython="garbage")) == []  # unreadable: no guess


def test_flash_and_deploy_verdicts_carry_the_firmware_warning():
    d = changed(micropython="1.20.0")
    assert report.verdict(d).startswith("1 problem(s): MicroPython 1.20.0 on the node")


# A report is the node's JSON, whatever it holds: each field is type-checked where it is read.

def test_a_report_of_the_wrong_shape_is_unreadable_with_what_is_wrong_first():
    p = report.problems({"net": "x"})
    assert p[0] == ("diag report unreadable (net: a string, not an object): the node's firmware does not send the "
                    "report openpole reads; deploy openpole's firmware (openpole deploy) or fix the box's own")
    p = report.problems(changed(mqtt__connected="yes", heap_min_free="low", net__rssi=float("-inf"),
                                sensors__bme280__errors=[1], queue=[], reset_cause=7))
    assert p[0].startswith("diag report unreadable (reset_cause: an integer, not a string; heap_min_free: a string, "
                           "not an integer; queue: a list, not an object and 3 more)"), p[0]
    assert len(p) == 1  # nothing guessed from the unreadable fields: not "MQTT down", not "weak signal"
    assert report.shape(changed(queue__dropped=2**70)) == ["queue.dropped: an integer out of range"]
    assert report.problems([1, 2])[0].startswith("diag report unreadable (the report is a list, not an object)")
    nested = {"config": {"a": {}}}
    node = nested["config"]["a"]
    for _ in range(30):
        node["a"] = {}
        node = node["a"]
    assert report.problems(nested)[0].startswith("diag report unreadable (the report nests deeper than 16 levels)")
    assert report.shape(OK) == [] and report.shape(changed(config={"wifi": {"ssid": "x"}}, extra=[1])) == []


def test_readable_fields_still_count_beside_unreadable_ones():
    p = report.problems(changed(net="x", queue__dropped=5, sensors__bme280__state="failed", sensors__sht31=3))
    assert p[0].startswith("diag report unreadable (net: a string, not an object; sensors.sht31: an integer")
    assert "sensor bme280 failed: check its wiring" in p[1] and "5 message(s) dropped" in p[2]


def test_any_json_is_read_and_rendered_without_an_error():
    import io
    import json

    from hypothesis import given, settings
    from hypothesis import strategies as st
    from rich.console import Console

    values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                          lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                          max_leaves=12)
    fields = st.fixed_dictionaries({}, optional={k: values | st.fixed_dictionaries(
        {}, optional={f: values for f in (v if isinstance(v, dict) else {})}) for k, v in report.SHAPE.items()})

    @settings(max_examples=200, deadline=None)
    @given(d=fields | values | st.text(max_size=30).map(lambda s: {"fw": s, "node": "[/]" + s, "net": {"ssid": s + "\n",
                                                                                                    "connected": False}}))
    def check(d):
        p = report.problems(d)
        assert all(isinstance(line, str) and "\n" not in line for line in p)
        assert (report.shape(d) == []) == (not p or not p[0].startswith("diag report unreadable"))
        out = io.StringIO()
        report.render(d, Console(file=out, width=200))
        assert report.verdict(d) == ("ok" if not p else f"{len(p)} problem(s): {p[0]}")
        json.dumps(d)  # (what --json prints: the report as the node sent it)

    check()
