# The diagnostics report `openpole diag` reads, published on the diag topic every diag_interval_s
# and shown by the console's diag. Loaded for a report and dropped after it (node.py's _lazy): the
# report is made, serialized and sent a field at a time, so a 56 KB heap has room for it, and each
# field takes a loop tick of its own (node.pace between them), so the audio is read between them.
import gc
import json
import sys
import time

from app import lazy as _lazy
from micropython import const
from node import VERSION
from sensors import STATE_NAMES

_DIAG = const(256)  # commands.KINDS: "diag"
_CONSOLE = const(1024)  # commands.KINDS: "console"
# A tick's share of a report: about this many bytes of JSON made (0.1 ms on the 32-bit VM here,
# some 7 ms on an ESP32). Finer, a report took a hundred ticks and starved sampling at the
# shortest diag_interval_s (1 s); coarser, a tick's work nears the DMA's 52 ms.
_TICK_BYTES = const(160)


def snapshot(node):
    """What changes from one moment to the next, read once: (ticks, heap free, unix time, network,
    longest tick, audio lost). The ticks between a report's fields change the last two."""
    return (time.ticks_ms(), gc.mem_free(), time.time(), node.hw.net_info(), node.tick_max_ms,
            node.noise.lost if node.noise else 0)


def diag_items(node, brief=False, snap=None):
    """The report `openpole diag` reads, a (field, value) at a time: what is wrong shows in its
    fields. Published, each field is serialized and let go before the next is made. brief: without
    the network and the config (the console's status). snap: a snapshot(), for the same report twice."""
    ob, mq = node.outbox, node.mqtt
    now, heap_free, unix, net, tick_max_ms, audio_lost = snap or snapshot(node)
    yield "fw", VERSION
    app = _lazy("otaboot").app_info(VERSION)
    app["ota_rejected"] = node.ota_rejected
    yield "app", app
    yield "micropython", "%d.%d.%d" % sys.implementation.version[:3]
    yield "board", node.cfg["board"]
    yield "node", node.node_id
    yield "uptime_s", time.ticks_diff(now, node.t0) // 1000
    yield "reset_cause", node.hw.reset_cause()
    yield "boot", node.boot
    yield "heap_free", heap_free
    yield "heap_min_free", node.heap_min_free
    yield "short_of_heap", node.short_of_heap
    yield "tick_max_ms", tick_max_ms
    yield "audio_lost_blocks", audio_lost
    if not brief:
        yield "net", net
    yield "mqtt", {"connected": mq.connected, "errors": mq.errors, "last_error": mq.last_error,
                   "last_publish_age_s": None if node.last_publish is None else time.ticks_diff(now, node.last_publish) // 1000,
                   "published": node.published, "delivered": node.delivered, "resent": node.resent,
                   "in_flight": node.inflight, "ack": "pole" if mq.on_puback is None else "broker"}
    yield "queue", {"depth": len(ob), "ram": ob.ram_records, "flash": ob.flash_records, "spilled": ob.spilled,
                    "dropped": ob.dropped}
    yield "sensors", {s.name: {"state": STATE_NAMES[s.state], "errors": s.errors, "last_error": s.last_error, "last": s.last}
                      for s in node.sensors}
    yield "clock", {"synced": unix > 1577836800, "unix": unix}
    if not brief:
        yield "config", _lazy("redact").redacted(node.cfg)


def json_parts(items, emit, depth=2):
    """(key, value) pairs as a JSON object, given to emit() in pieces (a dict value down to
    `depth` levels in pieces of its own): a report goes out without a kilobyte-sized block, which
    a fragmented 56 KB heap may not have."""
    sep = b"{"
    for k, v in items:
        if depth > 1 and isinstance(v, dict) and v:
            emit(sep + json.dumps(k).encode() + b": ")
            json_parts(v.items(), emit, depth - 1)
        else:
            emit(sep + ("%s: %s" % (json.dumps(k), json.dumps(v))).encode())
        sep = b", "
    emit(b"{}" if sep == b"{" else b"}")


def send(node, items, head=b"", tail=b""):
    """Publish head, a JSON object, tail on the diag topic, streamed. items: a function giving the
    object's (key, value) pairs afresh, the same each time: serialized once to count the bytes, then
    again into the socket a piece at a time, so the report is never whole in the heap. The pieces
    of about _TICK_BYTES are a tick's work: the node reads its audio between them, and nothing else
    runs then, so the second pass gives the bytes the first counted."""
    size = len(head) + len(tail)
    done = [0, 0]  # bytes since the last tick's end, in each pass

    def paced(emit, n):
        def f(p):
            emit(p)
            done[n] += len(p)
            if done[n] >= _TICK_BYTES:
                done[n] = 0
                node.pace(_DIAG)
        return f

    def count(p):
        nonlocal size
        size += len(p)

    def write(emit):
        emit(head)
        json_parts(items(), paced(emit, 1))
        emit(tail)

    json_parts(items(), paced(count, 0))
    node.mqtt.publish(node.diag_topic, write, qos=0, length=size)


def publish(node):
    snap = snapshot(node)
    send(node, lambda: diag_items(node, snap=snap))


def console(node, word):
    """The console's status, sensors and diag."""
    if word == "diag":  # one JSON line, printed a piece at a time, a tick each
        done = [0]

        def show(p):
            print(p.decode(), end="")
            done[0] += len(p)
            if done[0] >= _TICK_BYTES:
                done[0] = 0
                node.pace(_CONSOLE)

        json_parts(diag_items(node), show)
        print()
    elif word == "sensors":
        for s in node.sensors:
            print("%s: %s, %d errors, last %s" % (s.name, STATE_NAMES[s.state], s.errors, json.dumps(s.last)))
    else:
        d = dict(diag_items(node, brief=True))
        print("node %s on %s, firmware %s, up %d s, boot %d (reset: %s)" % (
            d["node"], d["board"], d["fw"], d["uptime_s"], d["boot"], d["reset_cause"]))
        m = d["mqtt"]
        print("mqtt %s, %d published, last %s s ago, %d errors%s" % (
            "connected" if m["connected"] else "DOWN", m["published"], m["last_publish_age_s"], m["errors"],
            "" if not m["last_error"] else " (last: %s)" % m["last_error"]))
        q = d["queue"]
        print("queue %d (ram %d, flash %d), %d dropped; heap free %d (min %d)" % (
            q["depth"], q["ram"], q["flash"], q["dropped"], d["heap_free"], d["heap_min_free"]))
        for name, s in d["sensors"].items():
            print("sensor %-8s %s, %d errors%s" % (name, s["state"], s["errors"], "" if not s["last_error"] else ": " + s["last_error"]))
