"""Verify, decode and validate node messages (sensor_specs/node_message.cddl) against the registry.

`decode(payload, keys)` returns a NodeMessage or raises Rejected with a short reason that is counted
and kept with the payload in quarantine. Out-of-range values are kept and flagged, never altered.
"""

import hashlib
import hmac
from math import isfinite
import os
import re
from dataclasses import dataclass, field
from typing import NamedTuple

import cbor2

from openpole.spec.registry import REGISTRY

MAX_PAYLOAD = 16 * 1024  # a v1 message with a day of samples is far smaller
MAX_DEPTH = 8
MAX_SAMPLES = 1024
NODE_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}\Z")  # \Z, not $: $ lets "abc\n" through
COSE_MAC0 = 17
_PROTECTED_HMAC_256_64 = b"\xa1\x01\x04"

FLAG_OUT_OF_RANGE = 1
_FIELDS = frozenset(range(8))  # the v1 message's keys
# registry key -> (name, decimals of the resolution, min, max): what the decoder checks a value by
_QUANTITIES = {k: (q.name, q.digits, q.min, q.max) for k, q in REGISTRY.by_key.items()}
FLAG_AGE_LOWER_BOUND = 1  # message flags (key 7)
# A flag v1 does not define could change what the ages mean, as flag 1 does: such a message is
# refused (counted, kept in quarantine), never stored misdated.
FLAGS_KNOWN = FLAG_AGE_LOWER_BOUND

# The ranges of the numeric fields (sensor_specs/node_message.cddl): what passes is what the pole's
# SQLite queue, the upstream batch and the city's PostgreSQL hold.
COUNTER_MAX = 2**63 - 1  # boot, seq, node clock, sensor counts: a signed 64-bit integer column
# A node dates a sample on a millisecond counter of 32 bits at most: MicroPython's ticks_ms wraps at
# 2^30 (ticks_diff spans +-2^29; openpole's firmware adds one boot's uptime after a reset: < 2^30),
# Arduino's millis() and FreeRTOS ticks at 2^32. A larger age (49.7 days) is no node's measurement,
# and one of 10^14 ms would date a sample before year 1, which the city's loader cannot store.
AGE_MAX_MS = 2**32 - 1
SENSOR_STATES = range(4)  # ok, warming, degraded, failed
SENSOR_NAME_BYTES = range(1, 17)  # CDDL tstr .size: bytes of UTF-8
# Node ids already matched against NODE_ID_RE: a pole hears the same few again and again. Bounded,
# so a flood of made-up ids costs the regex, never memory.
_NODE_IDS = set()
_NODE_IDS_MAX = 4096
_NO_KEYS = {}


class Rejected(Exception):
    """A message that is not kept as data: reason is a short stable word plus detail."""

    def __init__(self, reason, detail=""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Reading(NamedTuple):
    """One value of a sample. A tuple: the agent's hot paths unpack it (key, name, value, age_ms, flags)."""

    key: int
    name: str
    value: float
    age_ms: int
    flags: int = 0


_reading = tuple.__new__  # Reading(...) without the keyword handling: _reading(Reading, (key, ...))


@dataclass
class NodeMessage:
    node: str
    boot: int
    seq: int
    readings: list
    status: dict = field(default_factory=dict)
    clock_ms: int | None = None
    signed: bool = False
    age_lower_bound: bool = False  # sampled before a node reset: the sample time is an upper bound


# cbor2.loads is the C decoder's fast path, but it ignores whatever follows the first item. So it
# decodes [payload, nonce]: bytes after the payload's item would be read as the second element, and
# they cannot spell a random nonce they never saw. Twice as fast as a stream decoder per message.
_END = os.urandom(16)
_PAIR_END = cbor2.dumps(_END)


def _loads(payload):
    if len(payload) > MAX_PAYLOAD:
        raise Rejected("oversized", f"{len(payload)} bytes > {MAX_PAYLOAD}")
    try:
        pair = cbor2.loads(b"\x82" + payload + _PAIR_END, max_depth=MAX_DEPTH + 1, allow_duplicate_keys=False)
    except RecursionError:
        raise Rejected("malformed", "nesting too deep") from None
    except Exception as e:  # cbor2 raises CBORDecodeError subclasses and ValueErrors
        raise Rejected("malformed", str(e)[:120]) from None
    if pair[1] != _END:
        raise Rejected("malformed", "bytes after the CBOR item")
    return pair[0]


MAX_INT = 2**53  # the integers a SenML reader's double holds exactly


def _shown(v):
    """A value as a reason shows it, in a few characters: it may be a 16 KB string, or a bignum
    that str() refuses (past 4300 digits)."""
    if type(v) is int and v.bit_length() > 64:
        return f"an integer of {v.bit_length()} bits"
    if v is None or type(v) in (bool, int, float, str, bytes):
        r = repr(v)
        return r if len(r) <= 40 else r[:36] + "..."
    return type(v).__name__


def _uint(value, what, top=COUNTER_MAX, span="a signed 64-bit integer"):
    if type(value) is not int or not 0 <= value <= top:
        raise Rejected("schema", f"{what} must be an unsigned integer that fits {span}")
    return value


def _unwrap(obj):
    """COSE_Mac0 -> (message bytes, signed); plain map -> (None, False)."""
    if isinstance(obj, dict):
        return None, False
    if not isinstance(obj, cbor2.CBORTag) or obj.tag != COSE_MAC0:
        raise Rejected("schema", "expected a node-message map or a COSE_Mac0 (tag 17)")
    v = obj.value
    if not (isinstance(v, (list, tuple)) and len(v) == 4 and isinstance(v[0], bytes) and isinstance(v[2], bytes) and isinstance(v[3], bytes)):
        raise Rejected("schema", "COSE_Mac0 must be [protected, unprotected, payload, tag]")
    if v[0] != _PROTECTED_HMAC_256_64:
        raise Rejected("schema", "COSE_Mac0 algorithm must be HMAC 256/64 (alg 4)")
    return v, True


def _verify(cose, node, keys):
    key = keys.get(node)
    if key is None:
        raise Rejected("unknown_node", f"no key for node {node!r}")
    mac_structure = cbor2.dumps(["MAC0", cose[0], b"", cose[2]])
    expected = hmac.new(key, mac_structure, hashlib.sha256).digest()[:8]
    if not hmac.compare_digest(expected, cose[3]):
        raise Rejected("bad_mac", f"node {node!r}")


def decode(payload, keys=None, require_mac=False):
    """payload bytes -> NodeMessage; keys: {node id: key bytes} of nodes that must sign."""
    # The agent runs this for every message (1,000 a second at a district gateway): each check is
    # inline on the path a good message takes, and the helper that words a reason is called only
    # when the check fails. A check costs a fraction of a call.
    keys = keys or _NO_KEYS
    obj = _loads(payload)
    signed = type(obj) is not dict
    if signed:
        cose, _ = _unwrap(obj)
        obj = _loads(cose[2])
        if type(obj) is not dict:
            raise Rejected("schema", "node message must be a map")
    version = obj.get(0)
    if type(version) is not int or version != 1:  # not true, not 1.0: CBOR's 1 only
        raise Rejected("version", f"unsupported message version {_shown(version)}")
    node = obj.get(1)
    if type(node) is not str or node not in _NODE_IDS:
        if type(node) is not str or not NODE_ID_RE.match(node):
            raise Rejected("schema", "node id must match [a-z0-9][a-z0-9_-]{0,31}")
        if len(_NODE_IDS) < _NODE_IDS_MAX:
            _NODE_IDS.add(node)
    if signed:
        _verify(cose, node, keys)
    elif require_mac or node in keys:
        raise Rejected("unsigned", f"node {node!r} has a key but sent no MAC")
    for k in obj:
        if type(k) is not int or k not in _FIELDS:
            unknown = [k for k in obj if type(k) is not int or k not in _FIELDS]
            raise Rejected("schema", f"unknown field(s) {', '.join(_shown(k) for k in unknown[:4])}"[:120])
    boot, seq = obj.get(2), obj.get(3)
    if type(boot) is not int or not 0 <= boot <= COUNTER_MAX:
        _uint(boot, "boot")
    if type(seq) is not int or not 0 <= seq <= COUNTER_MAX:
        _uint(seq, "seq")
    samples = obj.get(4)
    if type(samples) is not list or not samples or len(samples) > MAX_SAMPLES:
        raise Rejected("schema", f"samples must be a list of 1..{MAX_SAMPLES}")
    readings = []
    add = readings.append
    for sample in samples:
        if type(sample) is not list or len(sample) != 2 or type(sample[1]) is not dict or not sample[1]:
            raise Rejected("schema", "a sample must be [age-ms, {key: value}]")
        age, values = sample
        if type(age) is not int or not 0 <= age <= AGE_MAX_MS:
            _uint(age, "age", AGE_MAX_MS, "32 bits (a node's millisecond counter)")
        for key, value in values.items():
            q = _QUANTITIES.get(key) if type(key) is int else None
            if q is None:
                raise Rejected("unknown_quantity", f"key {_shown(key)} is not in the registry")
            name, places, low, high = q
            kind = type(value)
            if kind is float:
                if not isfinite(value):
                    raise Rejected("not_finite", f"{name} = {value}")
                # Nodes send floats at single precision, quantised to the resolution: undo the float noise.
                value = round(value, places)
            elif kind is not int:
                raise Rejected("schema", f"{name}: value must be a number, not {kind.__name__}")
            elif not -MAX_INT <= value <= MAX_INT:  # a bignum: no sensor says that, and SenML cannot carry it
                raise Rejected("not_finite", f"{name}: an integer of {value.bit_length()} bits")
            add(_reading(Reading, (key, name, value, age, 0 if low <= value <= high else FLAG_OUT_OF_RANGE)))
    status = obj.get(5)
    if status is None:
        status = {}
    elif type(status) is not dict:
        raise Rejected("schema", "status must map sensor name -> [state, errors]")
    for k, v in status.items():
        if type(k) is not str or len(k.encode()) not in SENSOR_NAME_BYTES:
            raise Rejected("schema", "a sensor name in the status must be text of 1..16 bytes")
        # [state, errors], and for the noise meter optionally audio blocks lost since boot
        if type(v) is not list or not 2 <= len(v) <= 3:
            raise Rejected("schema", "status must map sensor name -> [state, errors] or [state, errors, lost]")
        for x in v:
            if type(x) is not int:
                raise Rejected("schema", "status must map sensor name -> [state, errors] or [state, errors, lost]")
        if v[0] not in SENSOR_STATES:
            raise Rejected("schema", f"sensor {k!r}: state {_shown(v[0])} is not 0..3 (ok, warming, degraded, failed)")
        for x in v[1:]:
            if not 0 <= x <= COUNTER_MAX:
                _uint(x, f"sensor {k!r}: a count")
    clock = obj.get(6)
    if clock is not None and (type(clock) is not int or not 0 <= clock <= COUNTER_MAX):
        _uint(clock, "clock")  # only compared with the pole's: a wrong clock is kept, to be shown as wrong
    flags = obj.get(7, 0)
    if type(flags) is not int or not 0 <= flags <= COUNTER_MAX:
        _uint(flags, "flags")
    if flags & ~FLAGS_KNOWN:
        raise Rejected("schema", f"flags {flags:#x}: bits v1 does not define"[:120])
    return NodeMessage(node, boot, seq, readings, status, clock, signed, bool(flags & FLAG_AGE_LOWER_BOUND))
