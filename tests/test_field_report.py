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
