# The diagnostics report `openpole diag` reads, published on the diag topic every diag_interval_s
# and shown by the console's diag. Loaded for a report and dropped after it (node.py's _lazy): the
# report is made, serialized and sent a field at a time, so a 56 KB heap has room for it.
import gc
import json
import sys
import time

from app import lazy as _lazy
from node import VERSION
from sensors import STATE_NAMES


def diag_items(node):
    """The report `openpole diag` reads, a (field, value) at a time: what is wrong shows in its
    fields. Published, each field is serialized and let go before the next is made."""
    ob, mq = node.outbox, node.mqtt
    yield "fw", VERSION
    yield "micropython", "%d.%d.%d" % sys.implementation.version[:3]
    yield "board", node.cfg["board"]
    yield "node", node.node_id
    yield "uptime_s", node.uptime_ms() // 1000
    yield "reset_cause", node.hw.reset_cause()
    yield "boot", node.boot
    yield "heap_free", gc.mem_free()
    yield "heap_min_free", node.heap_min_free
    yield "tick_max_ms", node.tick_max_ms
    yield "audio_lost_blocks", node.noise.lost if node.noise else 0
    yield "net", node.hw.net_info()
    yield "mqtt", {"connected": mq.connected, "errors": mq.errors, "last_error": mq.last_error,
                   "last_publish_age_s": None if node.last_publish is None else time.ticks_diff(time.ticks_ms(), node.last_publish) // 1000,
                   "published": node.published, "delivered": node.delivered, "resent": node.resent,
                   "in_flight": node.inflight, "ack": "pole" if node.ack_by_pole else "broker"}
    yield "queue", {"depth": len(ob), "ram": ob.ram_records, "flash": ob.flash_records, "spilled": ob.spilled,
                    "dropped": ob.dropped}
    yield "sensors", {s.name: {"state": STATE_NAMES[s.state], "errors": s.errors, "last_error": s.last_error, "last": s.last}
                      for s in node.sensors}
    yield "clock", {"synced": time.time() > 1577836800, "unix": time.time()}
    yield "config", _lazy("redact").redacted(node.cfg)


def diag(node):
    """The report as a dict."""
    return dict(diag_items(node))


def json_parts(items, parts=None, depth=2):
    """(key, value) pairs as a JSON object in pieces (a dict value down to `depth` levels in
    pieces of its own), for Transport.publish: a report goes out without a kilobyte-sized block,
    which a fragmented 56 KB heap may not have."""
    parts = [] if parts is None else parts
    sep = b"{"
    for k, v in items:
        if depth > 1 and isinstance(v, dict) and v:
            parts.append(sep + json.dumps(k).encode() + b": ")
            json_parts(v.items(), parts, depth - 1)
        else:
            parts.append(sep + ("%s: %s" % (json.dumps(k), json.dumps(v))).encode())
        sep = b", "
    parts.append(b"{}" if sep == b"{" else b"}")
    return parts


def publish(node):
    node.mqtt.publish(node.diag_topic, json_parts(diag_items(node)), qos=0)
