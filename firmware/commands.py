# What the node does now and then: the node-test, the MQTT commands (the diagnostics report is
# diag.py), a deliberate reset and the simulator's planned stop. Loaded for a call and dropped after
# it (node.py's _lazy), so the heap holds it only in use.
import json
import time

from app import lazy as _lazy
from registry import KEYS
from sensors import STATE_NAMES


def selftest(node):
    """Each sensor present and plausible (in its quantities' registry ranges): {name: "ok" or the problem}."""
    for s in node.sensors:
        if s.driver is None:
            _lazy("bringup").sensor(s, node.hw)
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
            duty = _lazy("bringup").duty
            for s in node.sensors:
                if "interval_s" not in s.settings:
                    s.interval_ms = int(node.cfg["interval_s"] * 1000)
                    if s.name == "pms5003":
                        s.duty = duty(s)  # it sleeps between readings a minute or more apart
            reply = {"ok": True}
        elif name == "diag":  # the report streamed into the reply, never whole in the heap
            snap = diag.snapshot(node)
            diag.send(node, lambda: diag.diag_items(node, snap=snap), b'{"ok": true, "cmd": "diag", "diag": ', b"}")
            return
        elif name == "selftest":
            reply = {"ok": True, "selftest": selftest(node)}
        elif name == "reboot":
            node.mqtt.publish(node.diag_topic, b'{"cmd": "reboot", "ok": true}', qos=0)
            reset(node)
            return
        else:
            reply = {"ok": False, "error": "unknown command (interval, diag, selftest, reboot)"}
    except (ValueError, KeyError, TypeError) as e:
        reply = {"ok": False, "error": "bad command: %s" % e}
    reply["cmd"] = c.get("cmd") if isinstance(c, dict) else None
    diag.send(node, reply.items)


# What a loop tick did (node.py's bits, in this order): the names of Node.did and Node.stats' kinds.
KINDS = ("sample", "message", "gc", "send", "replay", "spill", "ack", "connect", "diag", "command", "console")


def reset(node):
    """A deliberate reset: the outbox goes to flash first, so nothing queued is lost."""
    node.outbox.save()
    node.hw.reset()


def stop(node):
    """Before a planned stop (the simulator's --cycles): send and take in acks for a while, then
    say offline and close the connection."""
    max_ms = max(10000, node.ack_timeout_ms + 5000)  # time for one re-send
    t0 = time.ticks_ms()
    while len(node.outbox) and time.ticks_diff(time.ticks_ms(), t0) < max_ms:
        node.flush()
        node.mqtt.poll()
        if not node.mqtt.connected and node.mqtt.errors:
            break
        time.sleep_ms(5)
    node.mqtt.publish(node.status_topic, b"offline", qos=0, retain=True)
    node.mqtt.close()


def summary(node, done):
    """The simulator's --cycles ended the run: the figures a test or the bench reads."""
    kinds, st = KINDS, node.stats  # node.py: _US 2, _WHAT 3, _HEAPC 4, _KIND0 5
    print("done cycles=%d published=%d delivered=%d queued=%d dropped=%d spilled=%d heap_live=%d tick_max_ms=%d "
          "audio_lost=%d short_of_heap=%d tick_us=%d tick_what=%s tick_kinds=%s heap_connect=%d" % (
              done, node.published, node.delivered, len(node.outbox), node.outbox.dropped, node.outbox.spilled,
              node.heap_live, node.tick_max_ms, node.noise.lost if node.noise else 0, node.short_of_heap,
              st[2], "+".join(k for i, k in enumerate(kinds) if st[3] >> i & 1) or "-",
              ",".join("%s:%d" % (k, st[5 + i]) for i, k in enumerate(kinds)), st[4]))
    __import__("micropython").qstr_info()  # the names interned for good (n_qstr): the pools' room


def _plausible(ranges, name, v):
    k = KEYS.get(name)  # what is no quantity (the noise meter's overload flag) is not judged
    return k is None or ranges[2 * k] <= v <= ranges[2 * k + 1]
