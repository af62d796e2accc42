"""What the city's side answers, and what the pole does with it: only a 2xx that names the batch is
a delivery; 400/422 quarantine the batch; 401, 403, 404, 5xx, a redirect or a 2xx without the id
keep the data and retry, as an alarm; 413 halves the batch. Storage limits run during an outage."""

import base64
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cbor2
import pytest
from helpers import wait
from test_edge_poison import Ingest

from openpole.edge_agent.agent import Agent
from openpole.edge_agent.config import AgentConfig


class Upstream:
    """A city endpoint on loopback that answers from a script: [(code, body or None), ...], then 200s
    that echo the batch id (as the reference receiver does)."""

    def __init__(self, script=(), max_bytes=None, delay_s=0.0):
        self.script = list(script)
        self.max_bytes = max_bytes
        self.delay_s = delay_s  # an upstream that takes this long to answer
        self.delivered = []  # batch ids answered with their id
        self.requests = 0
        up = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(up.delay_s)
                bid = self.headers["Idempotency-Key"]
                up.requests += 1
                code, answer = up.script.pop(0) if up.script else (200, None)
                if up.max_bytes and len(body) > up.max_bytes:
                    code, answer = 413, b"too large"
                if code == 200 and answer is None:
                    answer = json.dumps({"batch": bid}).encode()
                    up.delivered.append(bid)
                self.send_response(code)
                if 300 <= code < 400:
                    self.send_header("Location", "http://portal.invalid/login")
                self.send_header("Content-Length", str(len(answer or b"")))
                self.end_headers()
                self.wfile.write(answer or b"")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    import openpole.edge_agent.agent as agent_mod

    monkeypatch.setattr(agent_mod, "RETRY_MAX_S", 0.6)  # a test waits seconds, not the field's 30 s


def start_agent(tmp_path, upstream, **kw):
    cfg = AgentConfig(pole_id="up", broker_host="127.0.0.1", broker_port=1, upstream=upstream.url,
                      state_dir=tmp_path / "edge", batch_interval_s=0.1, metrics_port=0, **kw)
    a = Agent(cfg, ingest_factory=Ingest)
    a.start()
    return a


def feed(a, n, start=0):
    now = time.time_ns()
    a.process([(now, "openpole/v1/up1/data", cbor2.dumps({0: 1, 1: "up1", 2: 1, 3: s, 4: [[0, {1: 20.0}]], 5: {}}), s, 1)
               for s in range(start, start + n)])


def test_refusals_of_access_or_address_keep_the_data_and_raise_the_alarm(tmp_path):
    script = [(401, b"no"), (403, b"no"), (404, b"no"), (503, b"busy"), (302, b""), (200, b"<html>portal</html>")]
    up = Upstream(script)
    a = start_agent(tmp_path, up)
    try:
        feed(a, 5)
        # Delivered once the agent has recorded it (the upstream's answer comes a moment before).
        assert wait(lambda: a.store.counters().get("records_delivered"), timeout=60), a.store.counters()
        c = a.store.counters()
        for code in (401, 403, 404, 503, 302, 200):
            assert c.get(f"upstream_http_{code}") == 1, (code, c)
        assert c["records_delivered"] == 5 and "records_refused_upstream" not in c
        assert a.store.depth()[0] == 0 and up.requests == 7
    finally:
        a.stop()
        up.close()


def test_while_failing_the_status_says_so(tmp_path):
    up = Upstream([(401, b"no")] * 1000)
    a = start_agent(tmp_path, up)
    try:
        feed(a, 3)
        assert wait(lambda: a.upstream_ok is False, timeout=20)
        assert "401" in a.last_error and a.store.depth()[0] == 3
    finally:
        a.stop()
        up.close()


def test_a_refused_batch_is_quarantined_and_counted(tmp_path):
    up = Upstream([(422, b"bad senml")])
    a = start_agent(tmp_path, up)
    try:
        feed(a, 4)
        assert wait(lambda: a.store.counters().get("records_refused_upstream") == 4, timeout=20)
        feed(a, 2, start=4)
        assert wait(lambda: a.store.counters().get("records_delivered") == 2, timeout=20)
    finally:
        a.stop()
        up.close()


def test_413_halves_the_batch_until_it_passes(tmp_path):
    up = Upstream(max_bytes=1200)
    a = start_agent(tmp_path, up, batch_max=10_000)
    try:
        feed(a, 60)
        assert wait(lambda: a.store.counters().get("records_delivered") == 60, timeout=30), a.store.counters()
        assert a.store.counters()["upstream_batches_split"] >= 1 and len(up.delivered) > 1
    finally:
        a.stop()
        up.close()


@pytest.mark.parametrize("refusal", [(422, b"bad aggregates"), (413, b"too large")])
def test_a_refused_batch_of_aggregates_alone_is_quarantined_and_counted(tmp_path, monkeypatch, refusal):
    """No record waits, only closed minutes: the batch that carries them alone, refused, is kept in
    quarantine and counted like any other, and the queue is left as it was."""
    import openpole.edge_agent.agent as agent_mod

    monkeypatch.setattr(agent_mod, "LIMITS_EVERY_S", 0.1)
    now = [time.time_ns()]
    up = Upstream([(200, None), refusal])
    cfg = AgentConfig(pole_id="up", broker_host="127.0.0.1", broker_port=1, upstream=up.url,
                      state_dir=tmp_path / "edge", batch_interval_s=0.1, metrics_port=0)
    a = Agent(cfg, ingest_factory=Ingest, clock=lambda: now[0])
    a.start()
    try:
        feed(a, 3)
        assert wait(lambda: a.store.counters().get("records_delivered") == 3, timeout=20), a.store.counters()
        cursor = a.store.cursor()
        now[0] += 200 * 10**9  # the minute is done; no record comes
        assert wait(lambda: a.store.counters().get("batches_refused") == 1, timeout=20), a.store.counters()
        reasons = a.store.db.execute("SELECT reason, detail FROM quarantine").fetchall()
        assert [r[0] for r in reasons] == ["upstream_refused"] and str(refusal[0]) in reasons[0][1]
        assert a.store.cursor() == cursor and "records_refused_upstream" not in a.store.counters()
        assert all(t.is_alive() for t in a._threads)
    finally:
        a.stop()
        up.close()


def test_storage_limits_run_during_an_outage(tmp_path, monkeypatch):
    import openpole.edge_agent.agent as agent_mod

    monkeypatch.setattr(agent_mod, "LIMITS_EVERY_S", 0.2)
    up = Upstream([(503, b"down")] * 10_000)
    a = start_agent(tmp_path, up, quota_bytes=3000)
    try:
        for i in range(10):
            feed(a, 20, start=20 * i)
        assert wait(lambda: a.store.counters().get("dropped_quota", 0) > 0, timeout=30), a.store.counters()
        assert a.store.depth()[2] <= 3000
    finally:
        a.stop()
        up.close()


def post(url, body, headers=()):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url + "/v1/batches", data=body, method="POST", headers=dict(headers))
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_receiver_answers_malformed_signed_gzip_and_pole_ids_with_400_and_stays_up(tmp_path):
    import gzip

    from openpole.wire import batch
    from openpole.receiver.server import Receiver
    from openpole.sim.broker import free_port

    r = Receiver("127.0.0.1", free_port(), tmp_path / "r", keys={"p1": b"k" * 32}).start()
    try:
        assert post(r.url, bytes.fromhex("d16461626364"))[0] == 400  # tag 17 around a text string
        assert post(r.url, bytes.fromhex("d1840102034104"))[0] == 400  # four fields, none of the right type
        good = batch.encode(b"\x01" * 16, "p1", [], 0, time.time_ns(), [])
        z = gzip.compress(good)
        code, answer = post(r.url, z[:-6], {"Content-Encoding": "gzip"})  # cut before the end of stream
        assert code == 400 and "cut short" in answer["error"]
        code, answer = post(r.url, z + b"junk", {"Content-Encoding": "gzip"})
        assert code == 400 and "after the gzip stream" in answer["error"]
        bad_pole = batch.encode(b"\x02" * 16, "../../etc", [], 0, time.time_ns(), [])
        with pytest.raises(ValueError, match="pole id"):
            batch.decode_messages(bad_pole)
        assert post(r.url, b"\x00")[0] == 403  # unsigned, where signatures are required: a matter of keys
    finally:
        r.stop()


def test_a_client_that_stalls_is_let_go(tmp_path):
    import socket

    from openpole.receiver.server import Receiver, _Handler
    from openpole.sim.broker import free_port

    r = Receiver("127.0.0.1", free_port(), tmp_path / "r").start()
    old = _Handler.timeout
    _Handler.timeout = 1
    try:
        s = socket.create_connection(r.httpd.server_address[:2])
        s.sendall(b"POST /v1/batches HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")  # then nothing
        s.settimeout(10)
        t0 = time.monotonic()
        got = s.recv(100)  # the server closes the connection
        assert time.monotonic() - t0 < 5 and got == b""
        s.close()
    finally:
        _Handler.timeout = old
        r.stop()


def test_the_service_says_ready_and_feeds_the_watchdog_only_while_its_workers_loop(tmp_path, monkeypatch):
    import socket

    import openpole.edge_agent.agent as agent_mod
    from openpole.edge_agent import systemd

    sock_path = tmp_path / "notify"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(sock_path))
    s.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a feed every 0.1 s
    monkeypatch.setattr(agent_mod, "WORKER_STALE_S", 1.0)
    up = Upstream(delay_s=4.0)  # the sender will hang in its upload for 4 s
    a = start_agent(tmp_path, up)
    try:
        assert s.recv(100) == b"READY=1"
        assert s.recv(100) == b"WATCHDOG=1"
        feed(a, 1)
        time.sleep(1.5)  # the sender is stuck in the upload, past WORKER_STALE_S
        s.settimeout(0.05)
        try:
            while True:
                s.recv(100)  # what was sent before the hang showed
        except socket.timeout:
            pass
        s.settimeout(1.0)
        with pytest.raises(socket.timeout):
            s.recv(100)  # no WATCHDOG=1 while it hangs: systemd would restart the service
        s.settimeout(10)
        assert s.recv(100) == b"WATCHDOG=1"  # the upload finished: fed again
        assert not systemd.notify("STATUS=test", env={})  # outside systemd: nothing
    finally:
        a.stop()
        up.close()
        s.close()


def test_the_unit_is_hardened_and_watched():
    from openpole.edge_agent import service
    from openpole.edge_agent.config import AgentConfig

    unit = service.unit_text(AgentConfig(), "/etc/openpole/agent.toml", "/usr/bin/openpole", "openpole")
    for line in ("Type=notify", "WatchdogSec=90", "NoNewPrivileges=true", "ProtectSystem=strict",
                 "ReadWritePaths=/var/lib/openpole", "PrivateTmp=true", "MemoryMax=256M"):
        assert f"\n{line}" in unit


def test_upstream_credentials_never_show_in_status(tmp_path):
    """A city's URL may carry a user and password: /status, `edge status` and the pole's page show
    the upstream by describe(), with the credentials hidden, for every kind of upstream."""
    from openpole.common import redact_url
    from openpole.edge_agent.sinks import HttpSink

    assert HttpSink("https://pole17:s3cret@city.example:8443/").describe() == "https://***@city.example:8443/v1/batches"
    assert redact_url("nats://u:pw@n1:4222,nats://u:pw@n2:4222") == "nats://***@n1:4222,nats://***@n2:4222"
    assert redact_url("nats://alice:p@ss@host:4222") == "nats://***@host:4222"  # an @ in the password
    # ... and sent as HTTP Basic auth, the host being the host (urllib alone would take "s3cret@city" for it).
    seen = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"batch": self.headers["Idempotency-Key"]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        HttpSink(f"http://pole17:s3%40cret@127.0.0.1:{srv.server_address[1]}").send(b"\x01" * 16, b"\xa0")
        assert seen == ["Basic " + base64.b64encode(b"pole17:s3@cret").decode()]
    finally:
        srv.shutdown()
    r = subprocess.run([sys.executable, "-m", "openpole", "edge", "run", "--upstream", "htps://alice:S3CRET@city/x",
                        "--state", str(tmp_path / "s")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "S3CRET" not in r.stderr and "htps://***@city/x" in r.stderr, r.stderr
    up = Upstream()
    a = start_agent(tmp_path, up)
    try:
        a.sink.url = a.sink.url.replace("http://", "http://pole17:s3cret@")
        from openpole.edge_agent import observe

        st = observe.status(a)
        assert "s3cret" not in str(st) and st["upstream"]["url"].startswith("http://***@")
    finally:
        a.stop()
        up.close()
