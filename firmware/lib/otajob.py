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

import otaboot
from micropython import const
from node import VERSION

sys.modules.pop("otaboot", None)  # held by this module while a job is under way, not for good

_WAIT_MS = const(3000)  # no chunk in this long: ask again (the same request)
_BACKOFF_MS = const(60000)  # after 5 misses in a row
_REPORT_MS = const(10000)  # "transferring" at most this often
_FLUSH = const(4096)  # a staged file is committed to flash every block: its size is the resume offset
_HASH_PIECE = const(1024)  # bytes hashed a tick when checking the staged files
_IDLE, _GET, _CHECK, _COMMIT, _TRIAL, _REPORT = 0, 1, 2, 3, 4, 5
FW_OBJ = const(0xFFFF)
NO_OTA_PARTITIONS = "no_ota_partitions: needs one USB reflash to the ESP32_GENERIC-OTA layout"
_NEVER = ("main.py", "otaboot.mpy", "otaboot.py", "config.json")
SEQ, TICKET, MANIFEST = "ota/seq", "ota/ticket", "ota/manifest.txt"


def same(a, b):
    """Constant-time comparison of two MACs."""
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0


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


def app_files(d=""):
    """The live app's code files (.mpy, .py) but main.py, otaboot and ota/: what a swap moves."""
    for e in os.ilistdir(d or "."):
        p = d + e[0]
        if e[1] == 0x4000:
            if p != "ota":
                yield from app_files(p + "/")
        elif (p.endswith(".mpy") or p.endswith(".py")) and p not in _NEVER:
            yield p


def _mp_version(t):
    a, _, b = t.partition(".")
    return int(a), int(b)


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
        h = otaboot.head()
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
        elif size(otaboot.LAST) > 0:
            self.last_again()

    # -- reports

    def report(self, job, state, reason="", obj=None, offset=None):
        r = {"job": int(job), "state": state, "reason": reason, "app": VERSION,
             "fw": "%d.%d.%d" % sys.implementation.version[:3]}
        last = otaboot.app_info(VERSION)
        r["prev"] = last["prev"]
        if obj is not None:
            r["obj"], r["offset"] = obj, offset
        self.pending = json.dumps(r).encode()
        self.node.log("ota: job %s %s%s" % (job, state, " (%s)" % reason if reason else ""))
        self._send_report()

    def _send_report(self):
        if self.pending is not None and self.node.mqtt.publish(self.report_topic, self.pending, qos=1):
            self.pending = None

    def last_again(self):
        """The last job's outcome, once connected (the agent may have missed it)."""
        try:
            with open(otaboot.LAST) as f:
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
            self.ticket(b)
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

    def ticket(self, b):
        node = self.node
        job = 0
        before = list(sys.modules)
        try:
            cbor = __import__("cbor")
            cose = cbor.loads(b[1:])
            protected, _u, payload, tag = cose.value
            if cose.tag != 17 or protected != b"\xa1\x01\x05":
                raise ValueError("not COSE_Mac0 with HMAC 256/256")
            p = cbor.loads(payload)
            job = p.get(2, 0) if isinstance(p, dict) and isinstance(p.get(2), int) else 0
            t = {"node": p[1], "job": p[2], "seq": p[3], "kind": p[4], "version": p[5], "mp": p[6],
                 "msha": binascii.hexlify(p[7]).decode(), "msize": p[8], "total": p[9], "pace": p[10], "trial": p[11]}
            if not (isinstance(t["node"], str) and isinstance(t["kind"], str) and isinstance(t["version"], str)
                    and isinstance(p[7], bytes) and len(p[7]) == 32 and isinstance(t["mp"], list) and len(t["mp"]) == 2
                    and all(isinstance(t[k], int) and 0 <= t[k] < 1 << 32
                            for k in ("job", "seq", "msize", "total", "pace", "trial"))):
                raise ValueError("fields of the wrong types")
            mac_input = cbor.dumps(["MAC0", protected, b"", payload])
            mac = __import__("cose").hmac_sha256(node.key, mac_input) if node.key else b""
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            return self.refuse(job, "bad_ticket: not a COSE_Mac0 ticket of the contract")
        finally:
            for k in list(sys.modules):
                if k not in before:
                    sys.modules.pop(k)  # the decoder and the MAC code: loaded for this ticket only
        if not same(mac, tag):
            return self.refuse(job, "bad_mac: the ticket is not signed with this node's key")
        if t["node"] != node.node_id:
            return self.refuse(job, "wrong_node: the ticket is for %s" % t["node"][:32])
        last = 0
        try:
            with open(SEQ) as f:
                last = int(f.read())
        except (OSError, ValueError):
            pass
        if t["seq"] <= last:
            if self.t and self.t["job"] == t["job"] and self.phase in (_GET, _CHECK):
                return  # the agent sent it again after a reconnect: the job goes on
            if t["seq"] == last and size(otaboot.LAST) > 0:
                return self.last_again()  # its outcome, again
            return self.refuse(job, "old_sequence: %d is not above %d" % (t["seq"], last))
        if self.phase == _TRIAL:
            return self.refuse(job, "busy: job %s is on trial" % self.h[1])
        if t["kind"] == "firmware" and partitions() is None:
            return self.refuse(job, NO_OTA_PARTITIONS)
        if t["kind"] not in ("app", "firmware"):
            return self.refuse(job, "kind: %s is neither app nor firmware" % t["kind"][:16])
        mine = sys.implementation.version[:2]
        try:
            lo, hi = _mp_version(t["mp"][0]), _mp_version(t["mp"][1])
        except (ValueError, TypeError, AttributeError):
            return self.refuse(job, "micropython: the range is not two major.minor versions")
        if not lo <= mine <= hi:
            return self.refuse(job, "micropython: this node runs %d.%d, the bundle needs %s to %s" % (
                mine[0], mine[1], t["mp"][0], t["mp"][1]))
        # Accepted: a job before it goes, with its staging.
        self.drop()
        otaboot.put(SEQ, str(t["seq"]))
        otaboot.put(TICKET, json.dumps(t))
        self.t = t
        self.phase = _GET
        self.obj, self.off, self.entry = 0, 0, None
        self.misses, self.sent, self.next = 0, None, time.ticks_ms()
        self.report(t["job"], "transferring", "", 0, 0)
        self.reported = time.ticks_ms()

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
                otaboot.mkdirs(self.path())
            self.f = open(self.path(), "ab")
        self.f.write(data)
        self.off += n
        self.next = time.ticks_add(time.ticks_ms(), t["pace"])
        if self.off == want:
            self.close()
            self.object_done()
        elif self.off % _FLUSH < n:
            self.f.flush()

    def object_done(self):
        if self.obj == 0:
            reason = self.check_manifest()
            if reason:
                job = self.t["job"]
                self.drop()
                self.refuse(job, reason)
                return self.done()
        self.position()

    def check_manifest(self):
        """Why the manifest refuses this job (one line), or None."""
        h = hashlib.sha256()
        with open(MANIFEST, "rb") as f:
            while True:
                b = f.read(256)
                if not b:
                    break
                h.update(b)
        if binascii.hexlify(h.digest()).decode() != self.t["msha"]:
            return "manifest_sha256: manifest.txt does not match the ticket"
        need = 1 + -(-self.t["msize"] // 4096)
        head = {}
        with open(MANIFEST) as f:
            if f.readline() != "openpole-ota 1\n":
                return "manifest: not an openpole-ota 1 manifest"
            while True:
                w = f.readline().split()
                if not w or w[0] == "end":
                    break
                if w[0] == "file":
                    p = w[3] if len(w) == 4 else ""
                    if (p in _NEVER or p.startswith("ota/") or p.startswith("/") or ".." in p or len(p) > 48
                            or not p):
                        return "manifest: %s may not be in a bundle" % p[:48]
                    need += -(-int(w[2]) // 4096)
                elif len(w) == 2:
                    head[w[0]] = w[1]
        if head.get("kind") != self.t["kind"]:
            return "manifest: a %s bundle for a %s ticket" % (head.get("kind"), self.t["kind"])
        mpy = sys.implementation._mpy
        if self.t["kind"] == "app" and head.get("mpy") != str(mpy):
            return "mpy: the bundle's .mpy files need %s, this firmware loads %d" % (head.get("mpy"), mpy)
        board = self.node.cfg["board"]
        if head.get("board") != board:
            return "board: the bundle is for %s, this node is %s" % (head.get("board"), board)
        ob = self.node.outbox
        need += max(0, ob.max_segments - (ob.next - ob.first)) + 2  # the outbox's room, littlefs's own
        try:
            free = os.statvfs(".")[3]  # the filesystem the app is on (the node runs in its root)
        except OSError:
            free = None
        if free is not None and need > free:
            return "no_space: the job needs %d blocks of 4 KB with the outbox's reserve, %d are free" % (need, free)
        return None

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
                self.report(self.t["job"], "staged")
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

    def commit(self):
        """Every file checked: the journal of the swap, then a reset into it (otaboot.py swaps)."""
        t = self.t
        news = [e[2] for e in self.entries()]
        rmtree("ota/old")  # the app before the last update: no longer the one to go back to
        with open(otaboot.J + ".tmp", "w") as f:
            f.write("swap %d %d 0 0 %s %s\n" % (t["job"], t["trial"], t["version"], VERSION))
            for e in self.entries():
                f.write("%s %s %s\n" % ("n1" if otaboot.exists(e[2]) else "n0", e[2], e[0]))
            for p in app_files():
                if p not in news:
                    f.write("o %s\n" % p)
        os.rename(otaboot.J + ".tmp", otaboot.J)  # the commit point
        for p in (TICKET, MANIFEST):
            os.remove(p)
        self.node.log("ota: job %d committed: reset into %s" % (t["job"], t["version"]))
        self.node.outbox.save()
        self.node.hw.reset()

    # -- the trial of a new app

    def trial_step(self, now):
        node = self.node
        if node.delivered and all(s.last is not None for s in node.sensors):
            if otaboot.confirm():
                self.report(self.h[1], "confirmed")
            self.phase = _REPORT
            return
        trial_s = int(self.h[2])
        if time.ticks_diff(now, node.t0) > trial_s * 1000:
            node.outbox.save()
            otaboot.rollback(self.h, "no_confirm_in_%ds" % trial_s, node.hw.reset)

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
                self.commit()
        elif ph in (_REPORT, _IDLE):
            if self.pending is None:
                gc.collect()
                return False
        return True


def partitions():
    """The next OTA app partition, or None on a firmware without OTA partitions (or no esp32)."""
    try:
        import esp32

        return esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    except (ImportError, AttributeError, OSError):
        return None
