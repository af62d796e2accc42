"""Over-the-air updates on the wire (docs/ota.md): the manifest, the ticket, the chunk request, the
chunk and the cancel that pass between the pole's agent and a node on `openpole/v1/<n>/ota*`.

The node reads the same formats with its own code (firmware/); this is the Python side, used by
`openpole ota` and the edge agent.
"""

import binascii
import hashlib
import hmac
import re
import struct

import cbor2

MAGIC = "openpole-ota 1"
TICKET, CHUNK, CANCEL = 0x01, 0x02, 0x03
OK, UNKNOWN_JOB, CANCELLED, PAST_END, REFUSED = 0, 1, 2, 3, 4
FIRMWARE_OBJ = 0xFFFF
GET = struct.Struct("<BIHIH")  # version 1, job, object, offset, max_len
CHUNK_HEAD = struct.Struct("<BIHIHI")  # status, job, object, offset, length, crc32
TICKET_MAX = 400  # the node's receive buffer is 512
COSE_MAC0 = 17
PROTECTED = cbor2.dumps({1: 5})  # alg: HMAC 256/256
PATH_RE = re.compile(r"[a-z0-9_/.-]{1,48}")
MP_VERSION_RE = re.compile(r"\d+\.\d+")
FORBIDDEN = ("main.py", "config.json")
KINDS = ("app", "firmware")
U32 = 2**32


class Invalid(ValueError):
    """A manifest, ticket or message that breaks the contract: str(e) says which rule."""


def path_ok(path):
    return (bool(PATH_RE.fullmatch(path)) and ".." not in path.split("/") and not path.startswith("/")
            and "//" not in path and not path.endswith("/") and path not in FORBIDDEN
            and not (path == "ota" or path.startswith("ota/")))


def mp_version(text):
    """'1.26' or '1.26.0' -> (1, 26); Invalid otherwise."""
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)?", text or "")
    if not m:
        raise Invalid(f"{text!r} is not a MicroPython version (major.minor)")
    return int(m.group(1)), int(m.group(2))


def in_range(fw, mp_min, mp_max):
    """Is firmware version fw ('1.26.0') within [mp_min, mp_max] (major.minor, inclusive)?"""
    return mp_version(mp_min) <= mp_version(fw) <= mp_version(mp_max)


def manifest_text(kind, version, board, mpy, mp_min, mp_max, files=(), firmware=None):
    """manifest.txt's bytes. files: [(path, data)] in order; firmware: the .app-bin's bytes."""
    if kind not in KINDS:
        raise Invalid(f"kind {kind!r}: app or firmware")
    for v in (mp_min, mp_max):
        if not MP_VERSION_RE.fullmatch(v):
            raise Invalid(f"MicroPython version {v!r}: major.minor, e.g. 1.24")
    if mp_version(mp_min) > mp_version(mp_max):
        raise Invalid(f"MicroPython range {mp_min} to {mp_max} is empty")
    for v, what in ((version, "version"), (board, "board")):
        if not v or any(c.isspace() for c in v):
            raise Invalid(f"{what} {v!r}: text without spaces")
    lines = [MAGIC, f"kind {kind}", f"version {version}", f"board {board}", f"mpy {int(mpy)}",
             f"micropython {mp_min} {mp_max}"]
    for path, data in files:
        if not path_ok(path):
            raise Invalid(f"path {path!r}: [a-z0-9_/.-], at most 48 characters, no '..', never main.py, "
                          "config.json or ota/")
        lines.append(f"file {hashlib.sha256(data).hexdigest()} {len(data)} {path}")
    if firmware is not None:
        lines.append(f"firmware {hashlib.sha256(firmware).hexdigest()} {len(firmware)}")
    lines.append("end")
    return ("\n".join(lines) + "\n").encode()


def parse_manifest(data):
    """manifest.txt's bytes -> {"kind", "version", "board", "mpy", "micropython": (min, max),
    "files": [(sha256 hex, size, path)], "firmware": (sha256 hex, size) or None}; Invalid if any line
    breaks the contract."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("manifest.txt is not UTF-8") from None
    if not text.endswith("\n") or "\r" in text:
        raise Invalid("manifest.txt: lines end with \\n")
    lines = text[:-1].split("\n")
    if lines[0] != MAGIC:
        raise Invalid(f"manifest.txt does not start with {MAGIC!r}")
    if lines[-1] != "end":
        raise Invalid("manifest.txt does not end with 'end' (truncated?)")
    m = {"files": [], "firmware": None}
    seen = set()
    for n, line in enumerate(lines[1:-1], 2):
        parts = line.split(" ")
        key = parts[0]
        try:
            if key in ("kind", "version", "board", "mpy") and len(parts) == 2 and key not in m:
                m[key] = parts[1]
            elif key == "micropython" and len(parts) == 3 and key not in m:
                mp_version(parts[1]), mp_version(parts[2])
                m[key] = (parts[1], parts[2])
            elif key == "file" and len(parts) == 4:
                sha, size, path = parts[1], int(parts[2]), parts[3]
                if not path_ok(path) or path in seen:
                    raise Invalid(f"path {path!r} not allowed or repeated")
                seen.add(path)
                _sha_size(sha, size)
                m["files"].append((sha, size, path))
            elif key == "firmware" and len(parts) == 3 and m["firmware"] is None:
                m["firmware"] = _sha_size(parts[1], int(parts[2]))
            else:
                raise Invalid("unknown or repeated item")
        except (ValueError, Invalid) as e:
            raise Invalid(f"manifest.txt line {n} ({line[:60]!r}): {e}") from None
    for key in ("kind", "version", "board", "mpy", "micropython"):
        if key not in m:
            raise Invalid(f"manifest.txt has no {key} line")
    if m["kind"] not in KINDS:
        raise Invalid(f"manifest.txt: kind {m['kind']!r} (app or firmware)")
    if not m["mpy"].isdigit():
        raise Invalid(f"manifest.txt: mpy {m['mpy']!r} is not a number")
    m["mpy"] = int(m["mpy"])
    if (m["kind"] == "firmware") != (m["firmware"] is not None):
        raise Invalid("manifest.txt: a firmware bundle has one firmware line, an app bundle none")
    if mp_version(m["micropython"][0]) > mp_version(m["micropython"][1]):
        raise Invalid("manifest.txt: the MicroPython range is empty")
    return m


def _sha_size(sha, size):
    if not re.fullmatch(r"[0-9a-f]{64}", sha) or not 0 <= size < U32:
        raise Invalid("a SHA-256 in hex and a size")
    return sha, size


def objects(manifest):
    """[(object number, sha256 hex, size)] of a job after object 0 (manifest.txt)."""
    out = [(i, sha, size) for i, (sha, size, _) in enumerate(manifest["files"], 1)]
    if manifest["firmware"]:
        out.append((FIRMWARE_OBJ, *manifest["firmware"]))
    return out


def _mac_structure(payload):
    return cbor2.dumps(["MAC0", PROTECTED, b"", payload])


def ticket(key, node, job, seq, kind, version, mp_range, manifest_sha256, manifest_size, total, pace_ms, trial_s):
    """`0x01` + COSE_Mac0 under the node's key (docs/ota.md). Invalid when it would not fit the node."""
    for name, v in (("job", job), ("seq", seq), ("total", total), ("manifest_size", manifest_size),
                    ("pace_ms", pace_ms), ("trial_s", trial_s)):
        if not isinstance(v, int) or not 0 <= v < U32:
            raise Invalid(f"ticket {name} {v!r}: an unsigned 32-bit integer")
    payload = cbor2.dumps({1: node, 2: job, 3: seq, 4: kind, 5: version, 6: list(mp_range), 7: manifest_sha256,
                           8: manifest_size, 9: total, 10: pace_ms, 11: trial_s})
    tag = hmac.new(key, _mac_structure(payload), hashlib.sha256).digest()
    out = bytes([TICKET]) + cbor2.dumps(cbor2.CBORTag(COSE_MAC0, [PROTECTED, {}, payload, tag]))
    if len(out) >= TICKET_MAX:
        raise Invalid(f"the ticket is {len(out)} bytes: a node takes under {TICKET_MAX} (a shorter version text)")
    return out


def open_ticket(data, key):
    """The ticket's payload {int: value} if data is a ticket MACed under key; Invalid otherwise."""
    try:
        if data[:1] != bytes([TICKET]):
            raise Invalid("not a ticket")
        obj = cbor2.loads(data[1:], max_depth=4)
        protected, _, payload, tag = obj.value
        if obj.tag != COSE_MAC0 or protected != PROTECTED:
            raise Invalid("not a COSE_Mac0 with HMAC 256/256")
        if not hmac.compare_digest(hmac.new(key, _mac_structure(payload), hashlib.sha256).digest(), tag):
            raise Invalid("bad MAC")
        return cbor2.loads(payload)
    except (ValueError, TypeError, AttributeError, cbor2.CBORDecodeError) as e:
        raise Invalid(f"ticket: {e}") from None


def get_request(job, obj, offset, max_len):
    return GET.pack(1, job, obj, offset, max_len)


def parse_get(data):
    """(job, obj, offset, max_len) of a chunk request; Invalid if it is not one."""
    if len(data) != GET.size:
        raise Invalid(f"a chunk request is {GET.size} bytes, not {len(data)}")
    version, job, obj, offset, max_len = GET.unpack(data)
    if version != 1:
        raise Invalid(f"chunk request version {version}")
    return job, obj, offset, max_len


def chunk(status, job, obj, offset, data=b""):
    return bytes([CHUNK]) + CHUNK_HEAD.pack(status, job, obj, offset, len(data), binascii.crc32(data)) + data


def parse_chunk(data):
    """(status, job, obj, offset, data) of a chunk; Invalid on a bad length or CRC."""
    if data[:1] != bytes([CHUNK]) or len(data) < 1 + CHUNK_HEAD.size:
        raise Invalid("not a chunk")
    status, job, obj, offset, length, crc = CHUNK_HEAD.unpack_from(data, 1)
    body = bytes(data[1 + CHUNK_HEAD.size:])
    if len(body) != length or binascii.crc32(body) != crc:
        raise Invalid("chunk length or CRC does not match")
    return status, job, obj, offset, body


def cancel(job):
    return bytes([CANCEL]) + struct.pack("<I", job)
