# The rare steps of an update job (otajob.py), loaded for the moment and let go: a ticket checked
# and accepted, the manifest checked against the ticket and the node, the swap committed. The job's
# own module stays small, as it is in the heap for the whole transfer.
import binascii
import hashlib
import json
import os
import sys
import time

from app import lazy
from node import VERSION

_IDLE, _GET, _CHECK, _TRIAL, _REPORT = 0, 1, 2, 4, 5  # otajob's phases
NO_OTA_PARTITIONS = "no_ota_partitions: needs one USB reflash to the ESP32_GENERIC-OTA layout"
_NEVER = ("main.py", "otaboot.mpy", "otaboot.py", "config.json")  # never in a bundle (main.py's guard, the config)
SEQ, TICKET, MANIFEST = "ota/seq", "ota/ticket", "ota/manifest.txt"
otaboot = lazy("otaboot")


def size(p):
    try:
        return os.stat(p)[6]
    except OSError:
        return -1


def _mp_version(t):
    a, _, b = t.partition(".")
    return int(a), int(b)


def app_files(d=""):
    """The live app's code files (.mpy, .py) but main.py, otaboot and ota/: what a swap moves."""
    for e in os.ilistdir(d or "."):
        p = d + e[0]
        if e[1] == 0x4000:
            if p != "ota":
                yield from app_files(p + "/")
        elif (p.endswith(".mpy") or p.endswith(".py")) and p not in _NEVER:
            yield p


def same(a, b):
    """Constant-time comparison of two MACs."""
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0


def ticket(job, b):
    node = job.node
    jid = 0
    before = list(sys.modules)
    try:
        cbor = __import__("cbor")
        cose = cbor.loads(b[1:])
        protected, _u, payload, tag = cose.value
        if cose.tag != 17 or protected != b"\xa1\x01\x05":
            raise ValueError("not COSE_Mac0 with HMAC 256/256")
        p = cbor.loads(payload)
        jid = p.get(2, 0) if isinstance(p, dict) and isinstance(p.get(2), int) else 0
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
        return job.refuse(jid, "bad_ticket: not a COSE_Mac0 ticket of the contract")
    finally:
        for k in list(sys.modules):
            if k not in before:
                sys.modules.pop(k)  # the decoder and the MAC code: loaded for this ticket only
    if not same(mac, tag):
        return job.refuse(jid, "bad_mac: the ticket is not signed with this node's key")
    if t["node"] != node.node_id:
        return job.refuse(jid, "wrong_node: the ticket is for %s" % t["node"][:32])
    last = 0
    try:
        with open(SEQ) as f:
            last = int(f.read())
    except (OSError, ValueError):
        pass
    if t["seq"] <= last:
        return job.refuse(jid, "old_sequence: %d is not above %d" % (t["seq"], last))
    # The agent sends a job's ticket again (a new sequence number each time) until it hears of the
    # job: one under way goes on from where it is, one on trial or done says where it stands.
    if job.t and job.t["job"] == t["job"] and job.phase in (_GET, _CHECK):
        return otaboot.put(SEQ, str(t["seq"]))
    if job.phase == _TRIAL:
        if str(t["job"]) != job.h[1]:
            return job.refuse(jid, "busy: job %s is on trial" % job.h[1])
        otaboot.put(SEQ, str(t["seq"]))
        return job.report(t["job"], "trial")
    try:
        with open("ota/last") as f:
            done = json.loads(f.read())["job"] == t["job"]
    except (OSError, ValueError, KeyError):
        done = False
    if done and job.phase in (_IDLE, _REPORT):
        otaboot.put(SEQ, str(t["seq"]))
        return job.last_again()
    if t["kind"] == "firmware":  # the images themselves are not taken yet (docs/ota_node.md)
        return job.refuse(jid, NO_OTA_PARTITIONS if partitions() is None else
                          "firmware: this app does not take firmware images yet; flash it by USB")
    if t["kind"] not in ("app", "firmware"):
        return job.refuse(jid, "kind: %s is neither app nor firmware" % t["kind"][:16])
    mine = sys.implementation.version[:2]
    try:
        lo, hi = _mp_version(t["mp"][0]), _mp_version(t["mp"][1])
    except (ValueError, TypeError, AttributeError):
        return job.refuse(jid, "micropython: the range is not two major.minor versions")
    if not lo <= mine <= hi:
        return job.refuse(jid, "micropython: this node runs %d.%d, the bundle needs %s to %s" % (
            mine[0], mine[1], t["mp"][0], t["mp"][1]))
    # Accepted: a job before it goes, with its staging.
    job.drop()
    otaboot.put(SEQ, str(t["seq"]))
    otaboot.put(TICKET, json.dumps(t))
    job.t = t
    job.phase = _GET
    job.obj, job.off, job.entry = 0, 0, None
    job.misses, job.sent, job.next = 0, None, time.ticks_ms()
    job.report(t["job"], "transferring", "", 0, 0)
    job.reported = time.ticks_ms()


def check_manifest(job):
    """Why the manifest refuses this job (one line), or None."""
    h = hashlib.sha256()
    with open(MANIFEST, "rb") as f:
        while True:
            b = f.read(256)
            if not b:
                break
            h.update(b)
    if binascii.hexlify(h.digest()).decode() != job.t["msha"]:
        return "manifest_sha256: manifest.txt does not match the ticket"
    need = 1 + -(-job.t["msize"] // 4096)
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
    if head.get("kind") != job.t["kind"]:
        return "manifest: a %s bundle for a %s ticket" % (head.get("kind"), job.t["kind"])
    mpy = sys.implementation._mpy
    if job.t["kind"] == "app" and head.get("mpy") != str(mpy):
        return "mpy: the bundle's .mpy files need %s, this firmware loads %d" % (head.get("mpy"), mpy)
    board = job.node.cfg["board"]
    if head.get("board") != board:
        return "board: the bundle is for %s, this node is %s" % (head.get("board"), board)
    ob = job.node.outbox
    need += max(0, ob.max_segments - (ob.next - ob.first)) + 2  # the outbox's room, littlefs's own
    try:
        free = os.statvfs(".")[3]  # the filesystem the app is on (the node runs in its root)
    except OSError:
        free = None
    if free is not None and need > free:
        return "no_space: the job needs %d blocks of 4 KB with the outbox's reserve, %d are free" % (need, free)
    return None


def commit(job):
    """Every file checked: the journal of the swap, then a reset into it (otaboot.py swaps)."""
    t = job.t
    news = [e[2] for e in job.entries()]
    job.rmtree("ota/old")  # the app before the last update: no longer the one to go back to
    with open(otaboot.J + ".tmp", "w") as f:
        f.write("swap %d %d 0 0 %s %s\n" % (t["job"], t["trial"], t["version"], VERSION))
        for e in job.entries():
            f.write("%s %s %s\n" % ("n1" if otaboot.exists(e[2]) else "n0", e[2], e[0]))
        for p in app_files():
            if p not in news:
                f.write("o %s\n" % p)
    os.rename(otaboot.J + ".tmp", otaboot.J)  # the commit point
    for p in (TICKET, MANIFEST):
        os.remove(p)
    job.node.log("ota: job %d committed: reset into %s" % (t["job"], t["version"]))
    job.node.outbox.save()
    job.node.hw.reset()


def partitions():
    """The next OTA app partition, or None on a firmware without OTA partitions (or no esp32)."""
    try:
        import esp32

        return esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    except (ImportError, AttributeError, OSError):
        return None
