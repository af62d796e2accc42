"""`openpole capture` and `openpole conformance`: is a box's traffic what the published specs say?

capture records a node's MQTT traffic to a file (JSON lines); conformance checks a capture, or
listens live, against sensor_specs/: schema (openpole's decoder), the published CDDL (by zcbor, an
independent validator: openpole's own decoder does not judge alone), registry keys and ranges, sequence and boot rules,
cadence against the declared interval, age plausibility, the MAC when a key is declared, and the
retained status topic. A report with pass or fail per check, the first offending message in CBOR
diagnostic notation (RFC 8949 section 8), and exit status 0 only when every check passes.
"""

import json
import math
import statistics
import threading
import time
from pathlib import Path

import cbor2

from .errors import UserError

CHECKS = ("schema", "cddl", "ranges", "sequence", "cadence", "ages", "mac", "status")
MAX_AGE_MS = 7 * 86400 * 1000  # a node keeps a week at most


def diagnostic(obj):
    """CBOR diagnostic notation (RFC 8949 section 8) of a decoded item."""
    if isinstance(obj, cbor2.CBORTag):
        return f"{obj.tag}({diagnostic(obj.value)})"
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if obj is None:
        return "null"
    if isinstance(obj, bytes):
        return "h'" + obj.hex() + "'"
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, float):
        if math.isnan(obj):
            return "NaN"
        if math.isinf(obj):
            return "Infinity" if obj > 0 else "-Infinity"
        return repr(obj)
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(diagnostic(x) for x in obj) + "]"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{diagnostic(k)}: {diagnostic(v)}" for k, v in obj.items()) + "}"
    return str(obj)


def _diag_payload(payload):
    try:
        return diagnostic(cbor2.loads(payload))
    except Exception:
        return "h'" + payload[:64].hex() + ("...'" if len(payload) > 64 else "'")


class Report:
    def __init__(self):
        self.results = {c: None for c in CHECKS}  # None: not applicable / no data
        self.first = {}

    def fail(self, check, why, payload=None):
        if self.results[check] is not False:
            self.results[check] = False
            self.first[check] = {"why": why, "message": None if payload is None else _diag_payload(payload)}

    def ok(self, check):
        if self.results[check] is None:
            self.results[check] = True

    @property
    def passed(self):
        return all(v is not False for v in self.results.values()) and self.results["schema"] is True

    def as_dict(self):
        return {"pass": self.passed, "checks": {c: ("pass" if v else "fail" if v is False else "n/a") for c, v in self.results.items()},
                "first_offending": self.first}

    def text(self):
        lines = []
        for c, v in self.results.items():
            verdict = "PASS" if v else "FAIL" if v is False else "n/a "
            lines.append(f"{verdict}  {c}" + (f": {self.first[c]['why']}" if c in self.first else ""))
            if c in self.first and self.first[c]["message"]:
                lines.append(f"      first offending message: {self.first[c]['message'][:600]}")
        lines.append("CONFORMS to openpole node message v1" if self.passed else "DOES NOT CONFORM")
        return "\n".join(lines)


def check(records, node_id, interval_s=None, key=None, independent=True):
    """records: [(receive_ns, topic, payload bytes, retain)] in arrival order -> Report.
    independent: also validate each message against node_message.cddl with zcbor (.venv-cddl)."""
    from . import paths
    from .spec import cddl
    from .wire import node_message

    r = Report()
    keys = {node_id: key} if key else {}
    data = [(t, p) for t, topic, p, _ in records if topic == f"openpole/v1/{node_id}/data"]
    if not data:
        r.fail("schema", f"no messages on openpole/v1/{node_id}/data")
    elif independent:
        spec = paths.SENSOR_SPECS / "node_message.cddl"
        for (_, payload), why in zip(data, cddl.validate(spec, "node-payload", [p for _, p in data])):
            if why is None:
                r.ok("cddl")
            else:
                r.fail("cddl", f"not a node-payload of node_message.cddl (zcbor: {why})", payload)
    last = None
    times = []
    for receive_ns, payload in data:
        try:
            msg = node_message.decode(payload, keys, require_mac=bool(key))
        except node_message.Rejected as e:
            check_name = "mac" if e.reason in ("bad_mac", "unsigned", "unknown_node") else "schema"
            if e.reason in ("not_finite", "unknown_quantity"):
                check_name = "ranges"
            r.fail(check_name, str(e), payload)
            continue
        r.ok("schema")
        if key:
            r.ok("mac")
        if msg.node != node_id:
            r.fail("schema", f"node id {msg.node!r} on {node_id!r}'s topic", payload)
        bad = [x.name for x in msg.readings if x.flags & node_message.FLAG_OUT_OF_RANGE]
        if bad:
            r.fail("ranges", f"outside the registry range: {', '.join(bad)}", payload)
        else:
            r.ok("ranges")
        ages = [x.age_ms for x in msg.readings]
        if any(a > MAX_AGE_MS for a in ages):
            r.fail("ages", f"an age of {max(ages)} ms is more than a node can have kept", payload)
        else:
            r.ok("ages")
        if last is not None:
            boot, seq = last
            if msg.boot < boot:
                r.fail("sequence", f"boot went back from {boot} to {msg.boot}", payload)
            elif msg.boot == boot and msg.seq < seq:
                r.fail("sequence", f"seq went back from {seq} to {msg.seq} within boot {boot}", payload)
            elif msg.boot > boot and msg.seq > 1000:
                r.fail("sequence", f"a new boot {msg.boot} starts at seq {msg.seq}, not near 0", payload)
            else:
                r.ok("sequence")
        last = (msg.boot, msg.seq) if last is None or (msg.boot, msg.seq) > last else last
        times.append((receive_ns - min(ages, default=0) * 1_000_000, msg.boot, msg.seq))
    if interval_s and len(times) >= 3:
        fresh = sorted(set(times))
        gaps = [(b[0] - a[0]) / 1e9 for a, b in zip(fresh, fresh[1:]) if a[1] == b[1]]
        if gaps:
            med = statistics.median(gaps)
            if abs(med - interval_s) > 0.25 * interval_s:
                r.fail("cadence", f"messages every {med:.2f} s (median), declared {interval_s:g} s")
            else:
                r.ok("cadence")
    status = [p for _, topic, p, retain in records if topic == f"openpole/v1/{node_id}/status"]
    if not status:
        r.fail("status", f"nothing on openpole/v1/{node_id}/status (retained online/offline, last will offline)")
    elif any(p not in (b"online", b"offline") for p in status):
        r.fail("status", "status must be 'online' or 'offline'", next(p for p in status if p not in (b"online", b"offline")))
    else:
        r.ok("status")
    return r


def listen(host, port, node_id, duration_s):
    import paho.mqtt.client as mqtt

    records, lock, subscribed = [], threading.Lock(), threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"openpole-conformance-{node_id}")
    c.on_connect = lambda cl, *a: cl.subscribe(f"openpole/v1/{node_id}/#", qos=1)
    c.on_subscribe = lambda *a: subscribed.set()

    def on_message(cl, userdata, msg):
        with lock:
            records.append((time.time_ns(), msg.topic, bytes(msg.payload), bool(msg.retain)))

    c.on_message = on_message
    try:
        c.connect(host, port)
    except OSError as e:
        raise UserError(f"cannot reach the broker {host}:{port}: {e.strerror or e}") from None
    c.loop_start()
    if not subscribed.wait(10):
        raise UserError(f"the broker {host}:{port} did not confirm the subscription to openpole/v1/{node_id}/#")
    print(f"listening to openpole/v1/{node_id}/# on {host}:{port} for {duration_s:g} s", flush=True)
    time.sleep(duration_s)
    c.disconnect()
    c.loop_stop()
    return records


def save(records, path):
    with open(path, "w") as f:
        for t, topic, p, retain in records:
            f.write(json.dumps({"t": t, "topic": topic, "payload": p.hex(), "retain": retain}) + "\n")


def load(path):
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise UserError(f"cannot read capture {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a capture (binary data; openpole capture writes JSON lines)") from None
    out = []
    for i, line in enumerate(lines, 1):
        try:
            d = json.loads(line)
            out.append((int(d["t"]), d["topic"], bytes.fromhex(d["payload"]), bool(d.get("retain"))))
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path}:{i}: not a capture line (openpole capture writes them)") from None
    return out


def register(sub):
    from .common import parse_hostport

    c = sub.add_parser("capture", help="record a node's MQTT traffic to a file, for conformance")
    c.add_argument("--broker", required=True, help="HOST:PORT")
    c.add_argument("--node-id", required=True)
    c.add_argument("--duration", type=float, default=60.0, help="seconds to listen (default 60)")
    c.add_argument("--out", type=Path, required=True)

    def capture(args):
        host, port = parse_hostport(args.broker)
        records = listen(host, port, args.node_id, args.duration)
        save(records, args.out)
        print(f"captured {len(records)} messages from {args.node_id} to {args.out}")
        return 0

    c.set_defaults(func=capture)

    k = sub.add_parser("conformance", help="check a box's messages against the published openpole specs")
    src = k.add_mutually_exclusive_group(required=True)
    src.add_argument("--broker", help="HOST:PORT: listen live")
    src.add_argument("--capture", type=Path, help="a file from openpole capture")
    k.add_argument("--node-id", required=True)
    k.add_argument("--duration", type=float, default=60.0, help="seconds to listen with --broker (default 60)")
    k.add_argument("--interval", type=float, help="the sampling interval the box declares, seconds")
    k.add_argument("--key", help="the node key in hex, when the box signs its messages")
    k.add_argument("--json", action="store_true", help="one JSON object")
    k.add_argument("--no-cddl", action="store_true",
                   help="skip the independent CDDL check (zcbor in .venv-cddl, made by make install)")

    def conformance(args):
        if args.capture:
            records = load(args.capture)
        else:
            host, port = parse_hostport(args.broker)
            records = listen(host, port, args.node_id, args.duration)
        try:
            key = bytes.fromhex(args.key) if args.key else None
        except ValueError:
            raise UserError("--key: the node key in hex") from None
        report = check(records, args.node_id, args.interval, key, independent=not args.no_cddl)
        print(json.dumps(report.as_dict()) if args.json else report.text())
        return 0 if report.passed else 1

    k.set_defaults(func=conformance)
