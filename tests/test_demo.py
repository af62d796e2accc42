"""`make demo`'s command: a simulated pole that exits 0 only if every node's readings arrived."""

import re
import subprocess
import sys
import time

import pytest

from openpole.sim.broker import mosquitto_path


def demo(*args, timeout=120):
    r = subprocess.run([sys.executable, "-m", "openpole", "sim", "demo", *args], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def test_demo_with_mosquitto_shows_three_nodes_and_passes():
    if mosquitto_path() is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto")
    code, out = demo("--nodes", "3", "--duration", "8")
    assert code == 0, out
    for n in ("node-1", "node-2", "node-3"):
        assert n in out
    assert "mosquitto on 127.0.0.1" in out
    assert "from 3 nodes" in out and "OK: readings from every node reached the receiver" in out
    summary = re.search(r"(\d+) messages published with (\d+) readings, (\d+) readings at the receiver \((\d+) duplicates\)",
                        " ".join(out.split()))
    sent, readings, stored, dups = map(int, summary.groups())
    assert sent >= 15 and stored == readings and dups == 0  # every reading the nodes published, once


def test_demo_runs_on_the_pure_python_broker_too():
    code, out = demo("--nodes", "1", "--duration", "5", "--broker-kind", "amqtt")
    assert code == 0, out
    assert "amqtt on 127.0.0.1" in out


def test_demo_fails_and_says_why_when_a_node_cannot_run():
    code, out = demo("--nodes", "1", "--duration", "4", "--heap", "32k")  # too small for the firmware
    assert code == 1, out
    assert "FAIL: no readings from node-1" in out
    assert "MemoryError" in out  # the node's last words are shown


def test_demo_flashes_its_nodes_through_virtual_boards_first():
    code, out = demo("--nodes", "2", "--duration", "10", "--flash", timeout=240)
    assert code == 0, out
    text = " ".join(out.split())
    assert "flashing 2 virtual ESP32 boards: rfc2217://127.0.0.1:" in text
    assert "node-1: flashed (ESP32-D0WD-V3 (revision v3.0), MAC 24:0a:c4:" in text and "node-2: flashed (" in text
    assert "from 2 nodes" in text and "OK: readings from every node reached the receiver" in text


def test_demo_serves_the_poles_page_and_prints_its_address_first():
    import urllib.request

    p = subprocess.Popen([sys.executable, "-m", "openpole", "sim", "demo", "--nodes", "2", "--duration", "15"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = p.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", first)
        assert url and "the pole's page" in first and "password for its actions" in " ".join(first.split()), first
        body = ""
        for _ in range(100):  # the nodes boot in a few seconds
            with urllib.request.urlopen(url.group(0), timeout=5) as r:
                body = r.read().decode()
            if "node-1" in body and "node-2" in body:
                break
            time.sleep(0.1)
        assert "openpole pole demo-pole" in body and "node-1" in body and "node-2" in body
        assert p.wait(timeout=120) == 0
    finally:
        if p.poll() is None:
            p.kill()


def test_demo_city_sends_the_pole_to_a_city_store_and_prints_its_api_and_live_feed_first():
    """`sim demo --city`: NATS JetStream, a loader, PostgreSQL, `city serve` and `city feed`: the
    first lines name the SensorThings API and the live feed; a reader of each sees the pole's nodes."""
    import json
    import urllib.request

    import paho.mqtt.client as mqtt

    p = subprocess.Popen([sys.executable, "-m", "openpole", "sim", "demo", "--city", "--nodes", "2", "--duration", "25",
                          "--page", "off"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-reader")
    sub.on_message = lambda c, u, m: got.append((m.topic, json.loads(m.payload)))
    try:
        first, second = p.stdout.readline(), p.stdout.readline()
        api = re.search(r"SensorThings API: (http://127\.0\.0\.1:\d+/v1\.1)", first)
        feed = re.search(r"live feed: mqtt://127\.0\.0\.1:(\d+)", second)
        assert api and feed, first + second
        sub.connect("127.0.0.1", int(feed.group(1)))
        sub.subscribe("v1.1/Observations", qos=1)
        sub.loop_start()
        names = set()
        for _ in range(200):  # the nodes boot and the first batches reach the city in a few seconds
            with urllib.request.urlopen(f"{api.group(1)}/Things?$expand=Locations,Datastreams($top=1;"
                                        f"$expand=Observations($top=1))", timeout=10) as r:
                things = json.loads(r.read())["value"]
            names = {t["name"] for t in things if t["Datastreams"] and t["Datastreams"][0]["Observations"]}
            if {"node-1", "node-2"} <= names and got:
                break
            time.sleep(0.1)
        assert {"node-1", "node-2"} <= names, things
        lon, lat = things[0]["Locations"][0]["location"]["coordinates"]
        assert 37.4 < lat < 37.7 and 126.8 < lon < 127.2  # a made-up position in Seoul
        assert got and got[0][1]["result"] is not None and "@iot.id" in got[0][1]
        out = p.communicate(timeout=120)[0]
        assert p.returncode == 0, out
        assert "OK: readings from every node reached the city" in " ".join(out.split())
    finally:
        sub.loop_stop()
        if p.poll() is None:
            p.kill()
