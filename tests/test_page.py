"""The pole's web page in a real browser (Debian's chromium and chromium-driver, selenium): a pole
of real firmware nodes under MicroPython, real Mosquitto and the agent serve it. The overview lists
each node, a node killed mid-test turns offline within the configured time, a chart shows data, and
an action with a wrong password is refused while the right one reaches the node and is logged.
Screenshots at desktop and phone widths go to $OPENPOLE_SCREENSHOTS (`make screenshots`: docs/)
or the test's own folder."""

import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from helpers import wait

from openpole.edge_agent.password import check_password, hash_password
from openpole.receiver.server import Receiver
from openpole.sim.broker import free_port

PASSWORD = "correct horse battery"
OFFLINE_AFTER_S = 8


def browser(width, height):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, ("chromium and chromium-driver are not installed: apt-get install -y chromium "
                                 "chromium-driver (make test installs them as root)")
    o = Options()
    o.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        o.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=o)


class Pole:
    """Mosquitto (the fixture), the agent with its page, a receiver, and firmware nodes."""

    def __init__(self, tmp_path, broker, nodes=("n1", "n2"), open_read=True):
        self.receiver = Receiver("127.0.0.1", free_port(), tmp_path / "receiver").start()
        self.port = free_port()
        cfg = tmp_path / "agent.toml"
        cfg.write_text(f'[pole]\nid = "pole-17"\n[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
                       f'[upstream]\nurl = "{self.receiver.url}"\nbatch_interval_s = 1.0\n'
                       f'[state]\ndir = "{tmp_path / "edge"}"\n[metrics]\nport = {free_port()}\n'
                       f'[page]\nlisten = "127.0.0.1:{self.port}"\npassword_hash = "{hash_password(PASSWORD)}"\n'
                       f'open_read = {"true" if open_read else "false"}\noffline_after_s = {OFFLINE_AFTER_S}\n'
                       f'refresh_s = 1.0\n')
        self.log = open(tmp_path / "agent.log", "w+")
        self.agent = subprocess.Popen([sys.executable, "-m", "openpole", "edge", "run", "--config", str(cfg)],
                                      stdout=subprocess.DEVNULL, stderr=self.log)
        self.nodes = {n: subprocess.Popen([sys.executable, "-m", "openpole", "sim", "node", "--broker",
                                           f"{broker.host}:{broker.port}", "--node-id", n, "--interval", "1",
                                           "--state", str(tmp_path / n)], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True) for n in nodes}
        self.url = f"http://127.0.0.1:{self.port}/"
        assert wait(lambda: self.get("")[0] in (200, 401), timeout=30), self.agent_log()

    def get(self, path, auth=None):
        req = urllib.request.Request(self.url + path)
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"x:{auth}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def post(self, path, **form):
        data = urllib.parse.urlencode(form).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url + path, data=data), timeout=20) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def agent_log(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def signal_node(self, node, sig):
        """To the node's whole process group: the simulator and its MicroPython VM."""
        os.killpg(self.nodes[node].pid, sig)

    def stop(self):
        for n, p in self.nodes.items():
            if p.poll() is None:
                self.signal_node(n, signal.SIGCONT)  # a node the test stopped
                self.signal_node(n, signal.SIGTERM)
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.signal_node(n, signal.SIGKILL)
                    p.wait()
        if self.agent.poll() is None:
            self.agent.terminate()
            self.agent.wait(timeout=30)
        self.receiver.stop()
        self.log.close()


@pytest.fixture
def pole(tmp_path, mosquitto):
    p = Pole(tmp_path, mosquitto)
    yield p
    p.stop()


def shot(b, path):
    """The whole page at the window's width (the window grows to the page's height for the shot)."""
    w = b.get_window_size()
    h = b.execute_script("return document.documentElement.scrollHeight")
    b.set_window_size(w["width"], min(max(h, 300), 3200))
    b.save_screenshot(str(path))
    b.set_window_size(w["width"], w["height"])


def shots_dir(tmp_path):
    d = Path(os.environ.get("OPENPOLE_SCREENSHOTS") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_in_a_browser_nodes_charts_offline_and_actions(pole, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def waiter(seconds):  # the page replaces its live part every second: an element may go stale
        return WebDriverWait(b, seconds, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException]).until

    def read(js):  # one read in the page itself: no element kept to go stale between two calls
        return b.execute_script("return " + js)

    shots = shots_dir(tmp_path)
    b = browser(1280, 900)
    try:
        b.get(pole.url)
        until = waiter(40)
        # the overview lists each node, online, with its sensors (it refreshes itself: no reload here)
        until(lambda d: all(f">{n}</a>" in d.page_source for n in pole.nodes) and d.page_source.count("✓ online") == 2)
        assert "Pole" in read("document.querySelector('h2').innerText")
        until(lambda d: "bme280 ok" in d.find_element(By.ID, "live").text)
        # a chart shows data: the node page draws the last hour's LAeq from the agent's minutes
        b.get(pole.url + "node/n1")
        until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg.chart path.line"))
        path = read("document.querySelector('svg.chart path.line').getAttribute('d')")
        assert path.startswith("M") and path.count("L") + path.count("M") >= 1
        assert "temperature" in read("document.querySelector('table').innerText")
        until(lambda d: "bme280" in d.find_element(By.TAG_NAME, "main").text)
        # an action with a wrong password is refused, and logged
        Select(b.find_element(By.ID, "action")).select_by_value("selftest")
        b.find_element(By.ID, "password").send_keys("wrong")
        b.find_element(By.CSS_SELECTOR, "form.action button").click()
        until(lambda d: "Wrong password: nothing was sent" in d.find_element(By.CSS_SELECTOR, ".flash").text)
        assert "selftest from 127.0.0.1: refused: wrong password" in b.find_element(By.TAG_NAME, "main").text
        # the right one reaches the node, whose answer (its diag report) comes back, and is logged
        Select(b.find_element(By.ID, "action")).select_by_value("diag")
        b.find_element(By.ID, "password").send_keys(PASSWORD)
        b.find_element(By.CSS_SELECTOR, "form.action button").click()
        until(lambda d: "diag → n1: answered: ok" in d.find_element(By.CSS_SELECTOR, ".flash").text)
        assert "heap_min_free" in b.find_element(By.TAG_NAME, "main").text  # the report, shown
        assert "page action diag on node n1 from 127.0.0.1: answered: ok" in pole.agent_log()
        time.sleep(float(os.environ.get("OPENPOLE_SCREENSHOTS_AFTER_S", 0)))  # make screenshots: some history
        b.get(pole.url + "node/n1")
        until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg.chart path.line"))
        shot(b, shots / "node-desktop.png")
        # a node killed mid-test (no goodbye) turns offline within the configured time
        b.get(pole.url)
        until(lambda d: d.page_source.count("✓ online") == 2)
        shot(b, shots / "overview-desktop.png")
        # A node that hangs (SIGSTOP: its connection stays open, so no last will yet) turns offline
        # by its silence, within the configured time and not before: stopped just after it was heard
        # (a node slow to start, or late on a loaded machine, would otherwise be silent before).
        row = "[...document.querySelectorAll('tbody tr')].map(r => r.innerText).find(t => t.startsWith('n2')) || ''"
        waiter(20)(lambda d: "✓ online" in read(row))
        assert wait(lambda: json.loads(pole.get("status.json")[1])["nodes"]["n2"]["last_seen_s"] < 0.5, timeout=20)
        pole.signal_node("n2", signal.SIGSTOP)
        stopped = time.monotonic()
        waiter(OFFLINE_AFTER_S + 10)(lambda d: "✗ offline" in read(row))
        took = time.monotonic() - stopped
        live = read("document.getElementById('live').innerText")
        assert OFFLINE_AFTER_S - 2 <= took <= OFFLINE_AFTER_S + 3, (took, live)  # plus a data interval and a refresh
        first = read("document.querySelector('tbody tr').innerText")
        assert "n2" in first and "offline" in first and "check its power and network" in first, first  # problems first
        shot(b, shots / "overview-desktop.png")
        # the phone's width: the same pages, narrower
        b.set_window_size(390, 844)
        shot(b, shots / "overview-phone.png")
        b.get(pole.url + "node/n1")
        until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg.chart path.line"))
        width = b.execute_script("return document.documentElement.scrollWidth")
        assert width <= 400, width  # nothing wider than the phone's screen
        shot(b, shots / "node-phone.png")
    finally:
        b.quit()
    assert {p.name for p in shots.glob("*.png")} >= {"overview-desktop.png", "node-desktop.png", "overview-phone.png",
                                                     "node-phone.png"}


def test_bad_requests_get_clear_answers(pole):
    assert wait(lambda: ">n1</a>" in pole.get("")[1], timeout=40)
    code, body = pole.post("node/n1/action", action="interval", value="abc", password=PASSWORD)
    assert code == 400 and "Interval &#x27;abc&#x27;: give a number of seconds from 1 to 86400." in body
    code, body = pole.post("node/n1/action", action="interval", value="nan", password=PASSWORD)
    assert code == 400
    code, body = pole.post("node/n1/action", action="format", password=PASSWORD)
    assert code == 400 and "Choose an action" in body
    code, body = pole.get("node/nobody")
    assert code == 404 and "No node" in body and "Traceback" not in body
    code, body = pole.post("node/n1/action", action="interval", value="30", password=PASSWORD)
    assert code == 200 and "interval → n1: answered: ok" in body, body[-2000:]
    assert "page action interval 30 on node n1" in pole.agent_log()
    code, body = pole.post("node/n1/action", action="selftest", password=PASSWORD)
    assert code == 200 and "selftest → n1: answered: ok, self-test" in body and "bme280" in body
    code, body = pole.post("node/n1/action", action="diag", password=PASSWORD)
    assert code == 200 and "diag → n1: answered: ok" in body
    code, body = pole.get("node/n1/diag.json")
    assert code == 200 and json.loads(body).get("node") == "n1"
    assert PASSWORD not in pole.agent_log()


def test_read_only_pages_can_ask_for_the_password(tmp_path, mosquitto):
    p = Pole(tmp_path, mosquitto, nodes=(), open_read=False)
    try:
        code, body = p.get("")
        assert code == 401 and "needs its password" in body
        assert p.get("", auth="wrong")[0] == 401
        assert p.get("", auth=PASSWORD)[0] == 200
    finally:
        p.stop()


METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND")
ROUTES = ("", "node/n1", "node/n1/diag.json", "status.json", "node/n1/action", "no/such/page", "node/N!")


def raw_request(pole, method, path, auth=None):
    """(status, headers, body) for any method, with the page password as HTTP Basic or without."""
    c = http.client.HTTPConnection("127.0.0.1", pole.port, timeout=20)
    headers = {"Authorization": "Basic " + base64.b64encode(f"x:{auth}".encode()).decode()} if auth else {}
    try:
        c.request(method, "/" + path, headers=headers)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        c.close()


def served(method, route):
    """What the page answers to a request it lets through: the pages to GET and HEAD, actions to POST."""
    if route == "no/such/page":
        return 404
    if route.endswith("/action"):
        return 400 if method == "POST" else 405  # 400: the form is empty
    if method not in ("GET", "HEAD"):
        return 405
    return 400 if route == "node/N!" else 200


@pytest.mark.parametrize("open_read", [False, True])
def test_every_method_on_every_route_passes_the_password_guard(tmp_path, mosquitto, open_read):
    p = Pole(tmp_path, mosquitto, nodes=("n1",), open_read=open_read)
    try:
        assert wait(lambda: p.get("node/n1", auth=PASSWORD)[0] == 200, timeout=40), p.agent_log()
        for route in ROUTES:
            for method in METHODS:
                status, headers, body = raw_request(p, method, route)
                want = served(method, route) if open_read else 401
                assert status == want, (method, route, status, body)
                assert "Traceback" not in body and "could not be made" not in body
                if status == 401:
                    assert headers["www-authenticate"].startswith("Basic")
                    assert method == "HEAD" or "needs its password" in body
                if status == 405:
                    allow = "POST" if route.endswith("/action") else "GET"
                    assert allow in headers["allow"] and (method == "HEAD" or "is not answered here" in body)
                if method == "HEAD":
                    assert body == ""
                status, _, body = raw_request(p, method, route, auth=PASSWORD)
                assert status == served(method, route), (method, route, status, body)
        if not open_read:  # a wrong password gets no further than none, whatever the method
            for method in METHODS:
                assert raw_request(p, method, "node/n1/diag.json", auth="wrong")[0] == 401, method
    finally:
        p.stop()


def test_the_password_hash():
    h = hash_password("s3cret")
    assert h.startswith("scrypt$") and "s3cret" not in h
    assert check_password("s3cret", h) and not check_password("s3cret!", h)
    assert not check_password("s3cret", "scrypt$garbage") and not check_password("x", None)
