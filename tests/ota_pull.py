"""A node's side of the OTA contract in Python, for the agent's tests (the real firmware's side is
tested under MicroPython): it takes a ticket, pulls every object a chunk at a time as the contract
says (one request outstanding, the same request again after a silence), checks each SHA-256 and
reports. What it does wrong on purpose is up to the test."""

import hashlib
import json
import threading
import time

import paho.mqtt.client as mqtt

from openpole.wire import ota


class OtaNode:
    def __init__(self, broker, node, key, fw="1.26.0", board="esp32-devkitc", max_len=384, outcome="confirmed",
                 stop_after=None):
        self.node, self.key, self.max_len, self.outcome = node, key, max_len, outcome
        self.tickets, self.reports, self.chunks = [], [], 0
        self.files = {}  # obj -> bytes received
        self.manifest = None
        self.stop_after = stop_after  # stop asking after this many chunks (the test resumes it)
        self.lock = threading.Lock()
        self.reply = threading.Event()
        self.last = None
        self.done = threading.Event()
        self.seq_seen = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ota-test-{node}")
        c.will_set(f"openpole/v1/{node}/status", b"offline", qos=1, retain=True)
        c.on_connect = lambda cl, *a: cl.subscribe(f"openpole/v1/{node}/ota", qos=1)
        self.subscribed = threading.Event()
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message
        c.connect(broker.host, broker.port)
        c.loop_start()
        assert self.subscribed.wait(10)
        self.client = c
        self.diag = {"fw": "0.2.0", "micropython": fw, "board": board, "node": node}
        c.publish(f"openpole/v1/{node}/diag", json.dumps(self.diag), qos=1).wait_for_publish(5)
        c.publish(f"openpole/v1/{node}/status", b"online", qos=1, retain=True).wait_for_publish(5)
        self.thread = None
        self.pace_s, self.asked_at, self.reported_at = 0.0, 0.0, 0.0

    def _on_message(self, client, userdata, msg):
        p = bytes(msg.payload)
        if p[:1] == bytes((ota.TICKET,)):
            t = ota.read_ticket(p, self.key)
            with self.lock:
                self.tickets.append(t)
                self.seq_seen.append(t[3])
            if self.thread is None:
                self.thread = threading.Thread(target=self._pull, args=(t,), daemon=True)
                self.thread.start()
        elif p[:1] == bytes((ota.CHUNK,)):
            self.last = ota.read_chunk(p)
            self.reply.set()
        elif p[:1] == bytes((ota.CANCEL,)):
            self.report(int.from_bytes(p[1:5], "little"), "cancelled")
            self.done.set()

    def report(self, job, state, **kw):
        body = {"job": job, "state": state, "app": "0.3.0" if state in ("trial", "confirmed") else "0.2.0", **kw}
        self.reports.append(body)
        self.client.publish(f"openpole/v1/{self.node}/ota/report", json.dumps(body), qos=1)

    def ask(self, job, obj, offset, timeout=3.0, tries=20):
        for _ in range(tries):
            if self.done.is_set():
                return None
            self.reply.clear()
            self.client.publish(f"openpole/v1/{self.node}/ota/get", ota.request(job, obj, offset, self.max_len))
            if self.reply.wait(timeout) and self.last[1:4] == (job, obj, offset):
                return self.last
        raise AssertionError(f"{self.node}: no answer for job {job} object {obj} at {offset}")

    def fetch(self, job, obj, size=None):
        data = self.files.setdefault(obj, bytearray())
        while True:
            wait_s = self.pace_s - (time.monotonic() - self.asked_at)
            if wait_s > 0:
                time.sleep(wait_s)  # the ticket's pace: no sooner than this after the last request
            self.asked_at = time.monotonic()
            if self.stop_after is not None and self.chunks >= self.stop_after:
                self.paused = True
                while self.stop_after is not None and self.chunks >= self.stop_after:
                    time.sleep(0.05)
            r = self.ask(job, obj, len(data))
            if r is None:
                return None
            status, _, _, _, body = r
            if status == ota.PAST_END:
                return bytes(data)
            if status != ota.OK:
                return status
            assert len(body) <= self.max_len
            data += body
            self.chunks += 1
            if size is not None and len(data) == size:
                pass  # the next ask gets PAST_END

    def _pull(self, t):
        job = t[2]
        self.pace_s = t[10] / 1000
        man = self.fetch(job, 0)
        if not isinstance(man, bytes):
            return self.done.set()
        assert hashlib.sha256(man).digest() == t[7]
        self.manifest = ota.parse_manifest(man)
        objs = [(i, sha, size) for i, (sha, size, _) in enumerate(self.manifest["files"], 1)]
        if self.manifest["firmware"]:
            objs.append((ota.FIRMWARE_OBJ, *self.manifest["firmware"]))
        for obj, sha, size in objs:
            data = self.fetch(job, obj, size)
            if not isinstance(data, bytes):
                return self.done.set()
            assert hashlib.sha256(data).hexdigest() == sha, f"object {obj} arrived damaged"
            if time.monotonic() - self.reported_at >= 10:  # progress at most every 10 s, as the contract says
                self.reported_at = time.monotonic()
                self.report(job, "transferring", obj=obj, offset=size)
        self.report(job, "staged")
        self.report(job, "trial")
        if self.outcome == "confirmed":
            self.report(job, "confirmed", prev="0.2.0")
        else:
            self.report(job, "rolled_back", reason=self.outcome)
        self.done.set()

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()
