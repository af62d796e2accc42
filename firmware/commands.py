# What the node does now and then: the node-test and the MQTT commands (the diagnostics report is
# diag.py). Loaded for a call and dropped after it (node.py's _lazy), so the heap holds it only in use.
import json

from app import lazy as _lazy
from registry import KEYS
from sensors import STATE_NAMES


def selftest(node):
    """Each sensor present and plausible (in its quantities' registry ranges): {name: "ok" or the problem}."""
    for s in node.sensors:
        if s.driver is None:
            s.start(node.hw)
    # Generated from sensor_specs/quantities.toml; loaded after the starts, so a sensor's boot code
    # and this table are never in the heap together, and let go with the test.
    ranges = _lazy("ranges").RANGES
    out = {}
    for s in node.sensors:
        if s.driver is None:
            out[s.name] = "missing: %s" % s.last_error
        elif s.last is None:
            out[s.name] = "no reading yet (%s)" % STATE_NAMES[s.state]
        else:
            bad = [k for k, v in s.last.items() if isinstance(v, (int, float)) and not _plausible(ranges, k, v)]
            out[s.name] = "implausible: " + ", ".join(bad) if bad else "ok"
    return out


def command(node, raw):
    """A command from the MQTT command topic: JSON {"cmd": ..., "value": ...}. The reply goes
    out in pieces (diag.send): diag.py is loaded once for the report and the reply."""
    c = None
    diag = _lazy("diag")
    try:
        c = json.loads(raw)
        name = c["cmd"]
        if name == "interval":
            node.cfg = _lazy("config").set(node.cfg, "interval_s", json.dumps(c["value"]))
            for s in node.sensors:
                if "interval_s" not in s.settings:
                    s.interval_ms = int(node.cfg["interval_s"] * 1000)
            reply = {"ok": True}
        elif name == "diag":  # the report streamed into the reply, never whole in the heap
            snap = diag.snapshot(node)
            diag.send(node, lambda: diag.diag_items(node, snap=snap), b'{"ok": true, "cmd": "diag", "diag": ', b"}")
            return
        elif name == "selftest":
            reply = {"ok": True, "selftest": selftest(node)}
        elif name == "reboot":
            node.mqtt.publish(node.diag_topic, b'{"cmd": "reboot", "ok": true}', qos=0)
            node.reset()
            return
        else:
            reply = {"ok": False, "error": "unknown command (interval, diag, selftest, reboot)"}
    except (ValueError, KeyError, TypeError) as e:
        reply = {"ok": False, "error": "bad command: %s" % e}
    reply["cmd"] = c.get("cmd") if isinstance(c, dict) else None
    diag.send(node, reply.items)


def _plausible(ranges, name, v):
    k = KEYS.get(name)  # what is no quantity (the noise meter's overload flag) is not judged
    return k is None or ranges[2 * k] <= v <= ranges[2 * k + 1]
