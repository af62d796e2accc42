"""The pole's page at its boundary. Whatever a node reports on its diag topic (JSON of any shape,
extreme numbers, deep nesting, huge strings, bytes that are not UTF-8), whatever a URL, a query
string or a form holds, the page answers with a status it means (never a 500) in HTML, or JSON on
a .json route, never a traceback, and the other nodes still show their data. Parallel wrong
passwords are checked at most two at once; past that they get a 429 at once, counted in /metrics.

The agent runs in this process (real Mosquitto, a real receiver, real SQLite, the real aiohttp
server); a diag report goes in the way paho's thread hands it over (MqttIngest._on_message, which
calls Agent._side for the diag topic)."""

import base64
import http.client
import json
import threading
import time
import urllib.parse

import cbor2
import paho.mqtt.client as mqtt
import pytest
from helpers import publish_all, wait
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openpole import diagnosis
from openpole.edge_agent import observe
from openpole.edge_agent.agent import Agent
from openpole.edge_agent.config import AgentConfig
from openpole.edge_agent.page import serve
from openpole.edge_agent.password import AT_ONCE, hash_password
from openpole.receiver.server import Receiver
from openpole.sim.broker import Broker, free_port

PASSWORD = "correct horse battery"
HASH = hash_password(PASSWORD)
GOOD = {"node": "good", "board": "esp32-devkitc", "fw": "0.2.0", "micropython": "1.26.1", "uptime_s": 100, "boot": 1,
        "reset_cause": "power_on", "heap_free": 30000, "heap_min_free": 20000,
        "net": {"ssid": "pole", "connected": True, "rssi": -60, "ip": "10.0.0.5"},
        "mqtt": {"connected": True, "errors": 0, "last_error": None, "last_publish_age_s": 1, "published": 99},
        "queue": {"depth": 0, "ram": 0, "flash": 0, "spilled": 0, "dropped": 0},
        "sensors": {"bme280": {"state": "ok", "errors": 0, "last_error": None, "last": {"temperature": 21.5}}}}
ANSWERS = {200, 400, 401, 403, 404, 429}  # 403: a form's wrong password (a page's is 401)
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                            HealthCheck.too_slow])


def data(node, seq):
    """A node message as the firmware sends it: temperature and humidity, the BME280 ok."""
    return cbor2.dumps({0: 1, 1: node, 2: 1, 3: seq, 4: [[0, {1: 20.5 + seq % 3, 2: 40.0}]], 5: {"bme280": [0, 0]}})


class Pole:
    """The agent in this process with its page and /metrics, a receiver upstream."""

    def __init__(self, root, broker, open_read=True, pole_id="bp"):
        self.receiver = Receiver("127.0.0.1", free_port(), root / "receiver").start()
        cfg = AgentConfig(pole_id=pole_id, broker_host=broker.host, broker_port=broker.port, upstream=self.receiver.url,
                          state_dir=root / "edge", batch_interval_s=0.5, metrics_port=0, page_password_hash=HASH,
                          page_open_read=open_read, page_offline_after_s=3600.0, page_refresh_s=5.0)
        self.agent = Agent(cfg)
        self.agent.start()
        self.page = serve(self.agent, "127.0.0.1:0")
        self.metrics_port = free_port()
        self.metrics = observe.serve(self.agent, self.metrics_port)
        self.broker = broker

    def request(self, method, path, body=None, headers=None, timeout=30):
        """(status, headers, body) of one request on a connection of its own."""
        c = http.client.HTTPConnection("127.0.0.1", self.page.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def side(self, node, payload, kind="diag"):
        """A message on a node's side topic, handed over as paho's thread does."""
        msg = mqtt.MQTTMessage(topic=f"openpole/v1/{node}/{kind}".encode())
        msg.payload = payload
        self.agent.ingest._on_message(self.agent.ingest.client, None, msg)

    def with_good_node(self):
        # The broker keeps nothing for a subscriber that is not there yet: publish once it is.
        assert self.agent.ingest.subscribed.wait(30), "the agent did not subscribe at the broker"
        publish_all(self.broker, [("openpole/v1/good/data", data("good", seq)) for seq in range(1, 4)],
                    client_id=f"openpole-test-{self.agent.cfg.pole_id}")
        assert wait(lambda: self.agent.store.latest_messages("good", 1), timeout=30)
        self.side("good", json.dumps(GOOD).encode())
        return self

    def stop(self):
        self.page.stop()
        self.metrics.shutdown()
        self.agent.stop()
        self.receiver.stop()


@pytest.fixture(scope="module")
def pole(tmp_path_factory):
    root = tmp_path_factory.mktemp("page-boundary")
    with Broker(root / "broker", kind="mosquitto") as broker:
        p = Pole(root, broker).with_good_node()
        p.side("bad", b"{}")  # the node whose reports the tests make up, known to the pole from the start
        yield p
        p.stop()


def html(status, headers, body):
    """The answer is a page, not a traceback, in a status the page means."""
    text = body.decode("utf-8")  # the page is UTF-8, always
    assert status in ANSWERS, (status, text[-500:])
    assert headers["content-type"].startswith("text/html"), headers
    assert text.startswith("<!doctype html>"), text[:200]
    assert "Traceback" not in text and "could not be made" not in text
    return text


def strict_json(body):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(body.decode("utf-8"), parse_constant=refuse)


def good_row(overview):
    """The overview's row of the node that always sends good data."""
    start = overview.index('<a href="/node/good">good</a>')
    return overview[start:overview.index("</tr>", start)]


def assert_good_node_shows(pole):
    status, headers, body = pole.request("GET", "/")
    row = good_row(html(status, headers, body))
    assert status == 200 and "✓ online" in row and "✓ no problems" in row, row
    assert "20,000 B" in row and "-60 dBm" in row and "0.2.0 (MicroPython 1.26.1)" in row and "bme280 ok" in row, row
    status, headers, body = pole.request("GET", "/node/good")
    text = html(status, headers, body)
    assert status == 200 and '<th scope="row">temperature</th>' in text and 'class="line l0"' in text


# --- what a node sends on its diag topic ------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(min_value=-2**80, max_value=2**80)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=16)


def shaped(kind):
    """Objects near the shape firmware/diag.py sends (diagnosis.SHAPE), each field of any type."""
    if "*" in kind:
        return st.dictionaries(st.text(max_size=12), VALUES | shaped(kind["*"]), max_size=3)
    return st.fixed_dictionaries({}, optional={k: VALUES | shaped(v) if isinstance(v, dict) and v else VALUES
                                               for k, v in kind.items()})


REPORTS = shaped(diagnosis.SHAPE) | VALUES


def encoded(report):
    return st.sampled_from([json.dumps(report).encode(),
                            json.dumps(report, ensure_ascii=False).encode("utf-8", "surrogatepass"),
                            json.dumps({"cmd": "diag", "ok": True, "diag": report}).encode()])


PAYLOADS = st.one_of(
    REPORTS.flatmap(encoded),
    st.binary(max_size=300),  # not UTF-8, not JSON
    st.integers(1, 20000).map(lambda n: ("[" * n + "]" * n).encode()),  # nested past any parser's limit, or not
    st.integers(1, 3000).map(lambda n: ('{"net": ' * n + "1" + "}" * n).encode()),
    st.integers(0, 16000).map(lambda n: json.dumps({"fw": "x" * n, "sensors": {"s" * n: {"state": "failed" * n}},
                                                    "mqtt": {"connected": False, "last_error": "e" * n}}).encode()),
    st.integers(300, 5000).map(lambda n: ('{"heap_min_free": ' + "9" * n + ', "queue": {"dropped": -' + "9" * n
                                          + "}}").encode()),
    st.sampled_from([b'{"net": "x"}', b'{"heap_min_free": NaN, "net": {"rssi": -Infinity}}', b'{"fw": "\\ud800"}',
                     b'{"sensors": {"bme280": {"state": "failed", "last_error": {"a": [1]}}}}', b'{"sensors": []}',
                     b'{"mqtt": {"errors": 1e400}, "audio_lost_blocks": "x", "queue": []}', b"\xff\xfe{}"]),
)


@settings(SETTINGS, max_examples=250)
@given(payload=PAYLOADS)
def test_any_diag_report_shows_for_its_node_alone(pole, payload):
    pole.side("bad", payload)
    status, headers, body = pole.request("GET", "/")
    overview = html(status, headers, body)
    assert status == 200 and '<a href="/node/bad">bad</a>' in overview
    report = pole.agent.node_info["bad"].get("diag")
    wrong = diagnosis.shape(report) if report else []
    if wrong:  # a report of the wrong shape says so, on its node's row
        start = overview.index('<a href="/node/bad">bad</a>')
        assert "diag report unreadable" in overview[start:overview.index("</tr>", start)]
    for path, headers in (("/node/bad", {}), ("/node/bad", {"X-Partial": "1"}), ("/", {"X-Partial": "1"})):
        status, got, body = pole.request("GET", path, headers=headers)
        text = body.decode("utf-8")
        assert status == 200 and "Traceback" not in text and got["content-type"].startswith("text/html"), text[-300:]
    status, got, body = pole.request("GET", "/node/bad/diag.json")
    assert status == 200 and got["content-type"].startswith("application/json")
    assert isinstance(strict_json(body), dict)
    assert_good_node_shows(pole)


def test_a_report_of_the_wrong_shape_says_what_is_wrong_for_that_node_only(pole):
    pole.side("netx", b'{"net": "x", "fw": "0.2.0"}')
    status, headers, body = pole.request("GET", "/")
    overview = html(status, headers, body)
    assert status == 200
    start = overview.index('<a href="/node/netx">netx</a>')
    row = overview[start:overview.index("</tr>", start)]
    assert "diag report unreadable (net: a string, not an object)" in row and "deploy openpole" in row, row
    assert "unreadable" not in good_row(overview)
    status, headers, body = pole.request("GET", "/node/netx")
    text = html(status, headers, body)
    assert status == 200 and "Report unreadable in part: net: a string, not an object." in text
    assert_good_node_shows(pole)


# --- what a browser (or anything else) sends --------------------------------------------------

@SETTINGS
@given(node=st.text(max_size=80) | st.binary(max_size=40), suffix=st.sampled_from(["", "/diag.json", "/action"]))
def test_any_node_id_in_a_url_is_a_page_or_a_one_line_refusal(pole, node, suffix):
    quoted = urllib.parse.quote_from_bytes(node if isinstance(node, bytes) else node.encode("utf-8", "surrogatepass"),
                                           safe="")
    method = "POST" if suffix == "/action" else "GET"
    status, headers, body = pole.request(method, f"/node/{quoted}{suffix}")
    if suffix == "/diag.json" and quoted not in ("", ".", ".."):  # (those may be other paths)
        assert headers["content-type"].startswith("application/json"), (quoted, status, headers)
    if headers["content-type"].startswith("application/json"):
        assert status in ANSWERS and isinstance(strict_json(body), dict)
    else:
        text = html(status, headers, body)
        if status in (400, 404):
            assert text.count('role="alert"') == 1  # one line that says what to do


@SETTINGS
@given(query=st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=60),
       path=st.sampled_from(["/", "/node/good", "/status.json"]))
def test_any_query_string_is_a_400_that_says_so(pole, query, path):
    status, headers, body = pole.request("GET", f"{path}?{urllib.parse.quote(query, safe='=&')}")
    assert status == 400, status
    if path.endswith(".json"):
        assert "takes no query string" in strict_json(body)["error"]
    else:
        assert "takes no query string" in html(status, headers, body)


TEXT = (st.sampled_from(["diag", "selftest", "interval", "60", "", " 30 "]) | st.text(max_size=40)
        | st.integers().map(str) | st.floats().map(str))
FIELDS = st.dictionaries(st.sampled_from(["action", "value", "password", "other"]), TEXT, max_size=4)


@settings(SETTINGS, max_examples=30)  # a wrong password costs its 1 s
@given(form=FIELDS)
def test_any_form_field_is_checked_and_nothing_goes_without_the_password(pole, form):
    status, headers, body = pole.request("POST", "/node/good/action", body=urllib.parse.urlencode(form),
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    text = html(status, headers, body)
    assert status in (400, 403), (form, status)  # 200 would be an action sent without the password
    assert ("Wrong password: nothing was sent" if status == 403 else 'class="flash bad"') in text


@SETTINGS
@given(raw=st.binary(max_size=300) | TEXT.map(str.encode),
       kind=st.sampled_from(["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=latin-1",
                             "multipart/form-data; boundary=xyz", "multipart/form-data", "text/plain", ""]))
def test_any_request_body_is_an_answer_never_a_500(pole, raw, kind):
    status, headers, body = pole.request("POST", "/node/good/action", body=raw, headers={"Content-Type": kind})
    assert status in (400, 403), status
    html(status, headers, body)


def test_the_interval_is_checked_for_type_and_range(pole):
    for value in ("abc", "nan", "inf", "0", "0.5", "86401", "1e3", "١٢", "-5", "60s", "9" * 50):
        status, headers, body = pole.request("POST", "/node/good/action", body=urllib.parse.urlencode(
            {"action": "interval", "value": value, "password": "wrong"}),
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        text = html(status, headers, body)
        assert status == 400 and "give a number of seconds from 1 to 86400" in text, (value, status)
    status, headers, body = pole.request("POST", "/node/good/action", body=b"action=diag&password=%ff%fe",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403 and "Wrong password" in html(status, headers, body)
    upload = (b'--xyz\r\nContent-Disposition: form-data; name="action"; filename="a.txt"\r\n\r\ndiag\r\n--xyz--\r\n')
    status, headers, body = pole.request("POST", "/node/good/action", body=upload,
                                         headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert status == 400 and "Form field action: text expected, not a file" in html(status, headers, body)


def test_bad_node_ids_are_400_and_unknown_ones_404(pole):
    for path in ("/node/UPPER", "/node/a%2Fb", "/node/%ff", "/node/good%0A", "/node/" + "a" * 33, "/node/-x/diag.json"):
        status, headers, body = pole.request("GET", path)
        assert status == 400, (path, status)
        text = body.decode()
        assert "a node id is 1 to 32 of a-z, 0-9, - and _" in text and "Traceback" not in text
    status, headers, body = pole.request("GET", "/node/nobody")
    assert status == 404 and "No node &#x27;nobody&#x27; on this pole" in html(status, headers, body)
    status, headers, body = pole.request("GET", "/node/nobody/diag.json")
    assert status == 404 and "No node 'nobody'" in strict_json(body)["error"]


def test_a_request_aiohttp_cannot_parse_is_one_line_in_the_log_not_a_traceback(pole, caplog):
    """Anyone on the pole's network can send a 9 KB URL: aiohttp answers 400, and the agent's journal
    gets one line for it, not a traceback each time."""
    import logging
    import socket

    with caplog.at_level(logging.INFO, logger="aiohttp.server"):
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", pole.page.port), timeout=10) as s:
                s.sendall(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: pole\r\n\r\n")
                assert s.recv(12) == b"HTTP/1.0 400"
        assert wait(lambda: len([r for r in caplog.records if r.name == "aiohttp.server"]) >= 3, timeout=10)
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert all(r.exc_info is None and r.getMessage() == "the page refused a malformed request: LineTooLong"
               for r in records), [r.getMessage() for r in records]
    assert_good_node_shows(pole)


# --- parallel password guessers -----------------------------------------------------------------

def basic(password, user="tech"):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def metric(port, name):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(line.split()[1])
    return 0


def test_parallel_wrong_passwords_are_checked_two_at_a_time(tmp_path, mosquitto):
    p = Pole(tmp_path, mosquitto, open_read=False, pole_id="guess")
    try:
        p.side("n1", json.dumps(GOOD).encode())
        signed_in = {"Authorization": basic(PASSWORD)}
        assert p.request("GET", "/", headers=signed_in)[0] == 200  # a technician's open page, before the guessers
        answers, lock = [], threading.Lock()

        def guess(i):
            if i % 2:  # the page's password...
                status, headers, body = p.request("GET", "/status.json", headers={"Authorization": basic(f"guess{i}")})
            else:  # ...and an action's
                form = urllib.parse.urlencode({"action": "diag", "password": f"guess{i}"})
                status, headers, body = p.request("POST", "/node/n1/action", body=form, headers={
                    **signed_in, "Content-Type": "application/x-www-form-urlencoded"})
            with lock:
                answers.append((status, headers))

        threads = [threading.Thread(target=guess, args=(i,)) for i in range(48)]
        for t in threads:
            t.start()
        # Meanwhile the pole answers at once: its overview for the technician already signed in.
        while any(t.is_alive() for t in threads):
            t0 = time.monotonic()
            status, _, _ = p.request("GET", "/", headers=signed_in)
            assert status == 200 and time.monotonic() - t0 < 1.0, time.monotonic() - t0
        for t in threads:
            t.join()
        statuses = [s for s, _ in answers]
        assert p.page.checks.peak <= AT_ONCE == 2, p.page.checks.peak
        assert set(statuses) <= {401, 403, 429} and statuses.count(429) >= 10, statuses
        assert all(h.get("retry-after") == "1" for s, h in answers if s == 429)
        busy = statuses.count(429)
        assert wait(lambda: metric(p.metrics_port, "openpole_edge_page_password_busy_total") == busy, timeout=10), busy
        refused = len(statuses) - busy
        assert wait(lambda: metric(p.metrics_port, "openpole_edge_page_password_refused_total") == refused), refused
        # and the right password, from someone not yet signed in, still gets in
        assert p.request("GET", "/", headers={"Authorization": basic(PASSWORD, "engineer")})[0] == 200
    finally:
        p.stop()
