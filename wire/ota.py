"""The OTA wire formats between a pole's agent and a node (docs/ota.md, sensor_specs/ota_ticket.cddl).

Shared by the agent (it makes tickets, serves chunks) and the tests (they speak for the agent to the
real firmware). The node's side is firmware/lib/ota*.py, in MicroPython.

- ticket(key, node, job, seq, kind, version, mp_range, manifest, total, pace_ms, trial_s) -> bytes:
  0x01 + COSE_Mac0 (HMAC 256/256 under the node's key) over the CBOR map of integer keys 1..11.
  read_ticket(body, key) checks and opens one (ValueError).
- manifest_text(kind, version, board, mpy, mp_range, files, firmware=None) -> bytes: manifest.txt;
  parse_manifest(text) -> dict (ValueError on a bad line).
- request(job, obj, offset, max_len) / read_request(b): the node's 13-byte chunk request.
- chunk(status, job, obj, offset, data=b"") / read_chunk(b): 0x02 + header + data.
- cancel(job) -> bytes: 0x03 + job.
"""

import binascii
import hashlib
import hmac
import re
import struct

import cbor2

TICKET, CHUNK, CANCEL = 1, 2, 3
FIRMWARE_OBJ = 0xFFFF  # the object number of a firmware image; 0 is manifest.txt, 1..n its files
OK, UNKNOWN_JOB, CANCELLED, PAST_END, REFUSED = 0, 1, 2, 3, 4  # chunk status
STATES = ("refused", "transferring", "staged", "trial", "confirmed", "rolled_back", "failed", "cancelled")
NO_OTA_PARTITIONS = "no_ota_partitions: needs one USB reflash to the ESP32_GENERIC-OTA layout"
COSE_MAC0 = 17
PROTECTED = cbor2.dumps({1: 5})  # alg: HMAC 256/256
TICKET_MAX = 400  # bytes: the node's receive buffer is 512
_REQUEST = struct.Struct("<BIHIH")
_CHUNK = struct.Struct("<BIHIHI")
PATH_RE = re.compile(r"[a-z0-9_/.-]{1,48}\Z")
_NOT_IN_BUNDLE = ("main.py", "otaboot.mpy", "otaboot.py", "config.json")  # the guard (by USB) and the config


def _mac(key, payload):
    return hmac.new(key, cbor2.dumps(["MAC0", PROTECTED, b"", payload]), hashlib.sha256).digest()


def ticket(key, node, job, seq, kind, version, mp_range, manifest, total, pace_ms=100, trial_s=300):
    """The ticket that starts a job on a node (the bytes published on openpole/v1/<node>/ota).
    manifest: the exact bytes of manifest.txt (its SHA-256 and size go in); total: the bytes of all
    the job's objects; mp_range: ("1.24", "1.29")."""
    if kind not in ("app", "firmware"):
        raise ValueError("kind: app or firmware")
    payload = cbor2.dumps({1: node, 2: job, 3: seq, 4: kind, 5: version, 6: list(mp_range),
                           7: hashlib.sha256(manifest).digest(), 8: len(manifest), 9: total, 10: pace_ms, 11: trial_s})
    out = bytes((TICKET,)) + cbor2.dumps(cbor2.CBORTag(COSE_MAC0, [PROTECTED, {}, payload, _mac(key, payload)]))
    if len(out) > TICKET_MAX:
        raise ValueError(f"the ticket is {len(out)} bytes; a node takes {TICKET_MAX} at most")
    return out


def read_ticket(body, key):
    """The ticket's fields {1: node, ... 11: trial_s} if its MAC holds under key; ValueError if not."""
    try:
        if body[:1] != bytes((TICKET,)):
            raise ValueError("not a ticket")
        obj = cbor2.loads(body[1:])
        protected, _unprotected, payload, tag = obj.value
        if obj.tag != COSE_MAC0 or protected != PROTECTED:
            raise ValueError("not a COSE_Mac0 with HMAC 256/256")
    except (TypeError, AttributeError, cbor2.CBORDecodeError):
        raise ValueError("not a COSE_Mac0 ticket") from None
    if not hmac.compare_digest(_mac(key, payload), tag):
        raise ValueError("bad MAC")
    return cbor2.loads(payload)


def check_path(path):
    """A bundle file's path as the node takes it; ValueError naming what is wrong."""
    if not PATH_RE.match(path) or ".." in path.split("/") or path.startswith("/") or path.endswith("/"):
        raise ValueError(f"{path!r}: a path of a-z 0-9 _ / . - up to 48 characters, no '..', no leading '/'")
    if path in _NOT_IN_BUNDLE or path.startswith("ota/"):
        raise ValueError(f"{path!r}: main.py, otaboot, config.json and ota/ are never in a bundle")
    return path


def manifest_text(kind, version, board, mpy, mp_range, files, firmware=None):
    """manifest.txt: files is [(path, bytes)] in object order (1..n); firmware: the .app-bin bytes."""
    lines = ["openpole-ota 1", f"kind {kind}", f"version {version}", f"board {board}", f"mpy {mpy}",
             f"micropython {mp_range[0]} {mp_range[1]}"]
    for path, data in files:
        lines.append(f"file {hashlib.sha256(data).hexdigest()} {len(data)} {check_path(path)}")
    if firmware is not None:
        lines.append(f"firmware {hashlib.sha256(firmware).hexdigest()} {len(firmware)}")
    lines.append("end")
    return ("\n".join(lines) + "\n").encode()


def parse_manifest(text):
    """manifest.txt -> {"kind", "version", "board", "mpy", "micropython": (min, max), "files":
    [(sha256 hex, size, path)], "firmware": (sha256 hex, size) or None}; ValueError on a bad line."""
    out = {"files": [], "firmware": None}
    lines = text.decode().split("\n")
    if lines[0] != "openpole-ota 1" or lines[-2:] != ["end", ""]:
        raise ValueError("manifest.txt: not an openpole-ota 1 manifest ending in 'end'")
    for line in lines[1:-2]:
        k, _, rest = line.partition(" ")
        f = rest.split(" ")
        if k in ("kind", "version", "board") and len(f) == 1:
            out[k] = f[0]
        elif k == "mpy" and len(f) == 1:
            out[k] = int(f[0])
        elif k == "micropython" and len(f) == 2:
            out[k] = (f[0], f[1])
        elif k == "file" and len(f) == 3 and len(f[0]) == 64:
            out["files"].append((f[0], int(f[1]), check_path(f[2])))
        elif k == "firmware" and len(f) == 2 and len(f[0]) == 64:
            out["firmware"] = (f[0], int(f[1]))
        else:
            raise ValueError(f"manifest.txt: bad line {line[:60]!r}")
    return out


def request(job, obj, offset, max_len):
    """A node's chunk request (on openpole/v1/<node>/ota/get)."""
    return _REQUEST.pack(1, job, obj, offset, max_len)


def read_request(body):
    """(job, obj, offset, max_len) of a chunk request; ValueError if it is not one."""
    if len(body) != _REQUEST.size or body[0] != 1:
        raise ValueError("not a version 1 chunk request (13 bytes)")
    return _REQUEST.unpack(body)[1:]


def chunk(status, job, obj, offset, data=b""):
    """A chunk reply: data is at most the request's max_len bytes (status OK), else empty."""
    return bytes((CHUNK,)) + _CHUNK.pack(status, job, obj, offset, len(data), binascii.crc32(data)) + data


def read_chunk(body):
    """(status, job, obj, offset, data) of a chunk; ValueError if its length or CRC is wrong."""
    if body[:1] != bytes((CHUNK,)) or len(body) < 1 + _CHUNK.size:
        raise ValueError("not a chunk")
    status, job, obj, offset, length, crc = _CHUNK.unpack_from(body, 1)
    data = body[1 + _CHUNK.size:]
    if len(data) != length or binascii.crc32(data) != crc:
        raise ValueError("chunk length or CRC does not match")
    return status, job, obj, offset, data


def cancel(job):
    return bytes((CANCEL,)) + struct.pack("<I", job)
