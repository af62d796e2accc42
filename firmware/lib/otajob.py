# An update job on the node (docs/ota.md "On the node"): the ticket checked, the manifest and the
# app's files pulled a chunk at a time into ota/new/, every SHA-256 checked from flash, then the
# swap committed (ota/journal, otaboot.py does it at the next boot) and the trial watched. Loaded
# while a job is under way (node.ota) and let go when it ends: a node without one holds none of it.
# Everything the job knows is on flash, so a lost link, a reset or an agent restart resumes it.
import binascii
import gc
import hashlib
import json
import os
import struct
import sys
import time

from app import lazy as _lazy
from micropython import const
from node import VERSION

_WAIT_MS = const(3000)  # no chunk in this long: ask again (the same request)
_BACKOFF_MS = const(60000)  # after 5 misses in a row
_REPORT_MS = const(10000)  # "transferring" at most this often
_FLUSH = const(4096)  # a staged file is committed to flash every block: its size is the resume offset
_HASH_PIECE = const(1024)  # bytes hashed a tick when checking the staged files
_IDLE, _GET, _CHECK, _COMMIT, _TRIAL, _REPORT = 0, 1, 2, 3, 4, 5
TICKET, MANIFEST, LAST = "ota/ticket", "ota/manifest.txt", "ota/last"


def size(p):
    try:
        return os.stat(p)[6]
    except OSError:
        return -1


def rmtree(p):
    try:
        for e in os.ilistdir(p):
            q = p + "/" + e[0]
            if e[1] == 0x4000:
                rmtree(q)
            else:
                os.remove(q)
        os.rmdir(p)
    except OSError:
        pass


class Job:
    def __init__(self, node):
        self.node = node
        base = "openpole/v1/%s/ota" % node.node_id
        self.get_topic, self.report_topic = base + "/get", base + "/report"
        self.phase = _IDLE
        self.t = None  # the accepted ticket's fields
        self.f = None  # the staged file being written
        self.pending = None  # a report not yet out
        self.sent = None  # when the outstanding request went out
        self.misses = 0
        self.next = time.ticks_ms()
        self.reported = time.ticks_ms()
        self.entry = None  # (sha256 hex, size, path) of the object being fetched or checked
        try:
            os.mkdir("ota")
        except OSError:
            pass
        h = _lazy("otaboot").head()
        if h and h[0] == "trial":
            self.h = h
            self.phase = _TRIAL
            self.drop()  # what a commit left
            self.report(h[1], "trial")
        elif size(TICKET) > 0:
            try:
                with open(TICKET, "rb") as f:
                    self.t = json.loads(f.read())
                self.position()
            except (ValueError, KeyError, OSError) as e:
                self.drop()
                self.report(0, "failed", "resume: %s" % e)
        elif size(LAST) > 0:
            self.last_again()

    # -- reports

    def report(self, job, state, reason="", obj=None, offset=None, extra=None):
        r = {"job": int(job), "state": state, "reason": reason, "app": VERSION,
             "fw": "%d.%d.%d" % sys.implementation.version[:3]}
        last = _lazy("otaboot").app_info(VERSION)
        r["prev"] = last["prev"]
        if obj is not None:
            r["obj"], r["offset"] = obj, offset
        if extra:
            r.update(extra)
        self.pending = json.dumps(r).encode()
        self.node.log("ota: job %s %s%s" % (job, state, " (%s)" % reason if reason else ""))
        self._send_report()

    def _send_report(self):
        if self.pending is not None and self.node.mqtt.publish(self.report_topic, self.pending, qos=1):
            self.pending = None

    def last_again(self):
        """The last job's outcome, once connected (the agent may have missed it)."""
        try:
            with open(LAST) as f:
                last = json.loads(f.read())
            self.report(last["job"], last["state"], last["reason"])
        except (OSError, ValueError, KeyError):
            pass
        self.phase = _REPORT

    # -- messages on the ota topic

    def message(self, b):
        kind = b[0] if b else 0
        if kind == 2:
            self.chunk(b)
        elif kind == 1:
            gc.collect()
            _lazy("otacheck").ticket(self, b)
        elif kind == 3 and len(b) == 5:
            job = struct.unpack("<I", b[1:])[0]
            if self.t and self.t["job"] == job and self.phase in (_GET, _CHECK):
                self.drop()
                self.report(job, "cancelled")
                self.phase = _REPORT

    def refuse(self, job, reason):
        self.node.ota_rejected += 1
        self.report(job, "refused", reason)
        if self.phase == _IDLE:
            self.phase = _REPORT

    def drop(self):
        """The staging of a job that will not be swapped in."""
        self.close()
        for p in (TICKET, MANIFEST, "ota/fw.prog"):
            try:
                os.remove(p)
            except OSError:
                pass
        rmtree("ota/new")
        self.t = None

    def rmtree(self, p):
        rmtree(p)

    def close(self):
        if self.f is not None:
            self.f.close()
            self.f = None

    # -- the transfer

    def entries(self):
        """The manifest's file lines in object order: (sha256 hex, size, path)."""
        with open(MANIFEST) as f:
            while True:
                w = f.readline().split()
                if not w:
                    return
                if w[0] == "file" and len(w) == 4:
                    yield w[1], int(w[2]), w[3]

    def position(self):
        """Where the transfer stands, from what is on flash (a staged file's size is its offset)."""
        self.phase, self.sent, self.misses, self.next = _GET, None, 0, time.ticks_ms()
        have = size(MANIFEST)
        if have < self.t["msize"]:
            self.obj, self.off, self.entry = 0, max(0, have), None
            return
        obj = 1
        for e in self.entries():
            have = size("ota/new/" + e[2])
            if have > e[1]:
                os.remove("ota/new/" + e[2])
                have = 0
            if have < e[1]:
                self.obj, self.off, self.entry = obj, max(0, have), e
                return
            obj += 1
        self.start_check()

    def path(self):
        return MANIFEST if self.obj == 0 else "ota/new/" + self.entry[2]

    def max_len(self):
        return len(self.node.mqtt.rx) - 32 - len(self.get_topic)

    def chunk(self, b):
        if self.phase != _GET or self.sent is None or len(b) < 18:
            self.node.ota_rejected += 1
            return
        status, job, obj, off, n, crc = struct.unpack("<BIHIHI", b[1:18])
        t = self.t
        if job != t["job"] or obj != self.obj or off != self.off:
            self.node.ota_rejected += 1  # a late or duplicate reply
            return
        self.sent = None
        self.misses = 0
        if status == 2:
            self.drop()
            return self.report(job, "cancelled") or self.done()
        if status in (1, 4):
            self.drop()
            return self.report(job, "failed", "unknown_job: the agent has no such job" if status == 1 else
                               "refused: the agent refused the bundle for this node") or self.done()
        if status == 3:  # the agent's object ends before the size this job was told
            self.drop()
            if obj == 0:
                return self.refuse(job, "manifest: shorter than the ticket says") or self.done()
            return self.report(job, "failed", "size: object %d ends at %d, short of the manifest's size" % (
                obj, off)) or self.done()
        data = memoryview(b)[18:]
        if status != 0 or len(data) != n or binascii.crc32(data) != crc or n > self.max_len():
            self.node.ota_rejected += 1
            return  # asked again at the next step
        want = t["msize"] if obj == 0 else self.entry[1]
        if off + n > want:
            self.node.ota_rejected += 1
            return
        if self.f is None:
            if obj:
                _lazy("otaboot").mkdirs(self.path())
            self.f = open(self.path(), "ab")
        self.f.write(data)
        free = gc.mem_free()
        if free < self.node.ota_heap_min:
            self.node.ota_heap_min = free  # the least heap free while a transfer writes (diag, the bench)
        self.off += n
        self.next = time.ticks_add(time.ticks_ms(), t["pace"])
        if self.off == want:
            self.close()
            self.object_done()
        elif self.off % _FLUSH < n:
            self.f.flush()

    def object_done(self):
        if self.obj == 0:
            gc.collect()
            reason = _lazy("otacheck").check_manifest(self)
            if reason:
                job = self.t["job"]
                self.drop()
                self.refuse(job, reason)
                return self.done()
        self.position()

    def start_check(self):
        self.phase, self.obj, self.off = _CHECK, 1, 0
        self.iter = self.entries()
        self.entry = None
        self.hash = None

    def check_step(self):
        """One piece of the staged files' SHA-256, read back from flash: a tick's work."""
        if self.hash is None:
            self.entry = next(self.iter, None)
            if self.entry is None:
                self.iter = None
                node = self.node  # with the transfer's figures (beyond the contract's fields)
                self.report(self.t["job"], "staged", extra={"heap_min_free": node.ota_heap_min,
                                                            "audio_lost_blocks": node.noise.lost if node.noise else 0})
                self.phase, self.next = _COMMIT, time.ticks_add(time.ticks_ms(), 1000)
                return
            self.hash, self.off = hashlib.sha256(), 0
        with open("ota/new/" + self.entry[2], "rb") as f:
            f.seek(self.off)
            b = f.read(_HASH_PIECE)
        self.hash.update(b)
        self.off += len(b)
        if len(b) < _HASH_PIECE:
            if binascii.hexlify(self.hash.digest()).decode() != self.entry[0] or self.off != self.entry[1]:
                job, p = self.t["job"], self.entry[2]
                self.iter = None
                self.drop()
                self.report(job, "failed", "sha256: %s does not match the manifest" % p)
                return self.done()
            self.hash = None
            self.obj += 1

    # -- the trial of a new app

    def trial_step(self, now):
        node = self.node
        if node.delivered and all(s.last is not None for s in node.sensors):
            if _lazy("otaboot").confirm():
                self.report(self.h[1], "confirmed")
            self.phase = _REPORT
            return
        trial_s = int(self.h[2])
        if time.ticks_diff(now, node.t0) > trial_s * 1000:
            node.outbox.save()
            _lazy("otaboot").rollback(self.h, "no_confirm_in_%ds" % trial_s, node.hw.reset)

    def done(self):
        self.phase = _REPORT

    def step(self, now):
        """A tick's share of the job; False when there is nothing left to do (node.ota let go)."""
        if self.pending is not None:
            self._send_report()
        ph = self.phase
        if ph == _TRIAL:
            self.trial_step(now)
        elif ph == _GET:
            if not self.node.mqtt.connected:
                return True
            if self.sent is not None:
                if time.ticks_diff(now, self.sent) < (_WAIT_MS if self.misses < 5 else _BACKOFF_MS):
                    return True
                self.misses += 1  # no reply: the same request again
            elif time.ticks_diff(now, self.next) < 0:
                return True
            if self.node.mqtt.publish(self.get_topic, struct.pack("<BIHIH", 1, self.t["job"], self.obj, self.off,
                                                                  self.max_len()), qos=0):
                self.sent = now
            if time.ticks_diff(now, self.reported) >= _REPORT_MS:
                self.reported = now
                self.report(self.t["job"], "transferring", "", self.obj, self.off)
        elif ph == _CHECK:
            self.check_step()
        elif ph == _COMMIT:
            if self.pending is None and time.ticks_diff(now, self.next) >= 0:
                _lazy("otacheck").commit(self)
        elif ph in (_REPORT, _IDLE):
            if self.pending is None:
                gc.collect()
                return False
        return True

