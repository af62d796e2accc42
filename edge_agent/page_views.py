"""What each of the pole's pages shows, as plain data for page_templates.py: read from the agent's
in-memory state and the store's named queries (no SQL here), off the ingest path.

A node's diag report is that node's JSON, whatever it holds: each field is read through
openpole.diagnosis.field(), which gives it only with the type the firmware sends, and a report of
the wrong shape shows as unreadable, with what is wrong, for that node alone.
"""

import json
import math

from openpole import diagnosis
from openpole.diagnosis import SENSOR, field
from openpole.wire import batch

from . import observe
from .charts import bucket

STATE_NAMES = ("ok", "warming", "degraded", "failed")  # firmware/sensors.py
QUEUE_OLD_S = 600  # an alarm when the oldest record waiting upstream is older than this
LEVEL = {"laeq", "lamax", "lamin", "la10", "la50", "la90"}
ACTIONS_SHOWN = 10
REPLY_SHOWN = 4000  # characters of a command's answer shown on the node's page
DAY_S = 86400


def ago(seconds):
    if seconds is None:
        return "never"
    s = max(0, seconds)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.1f} h ago"


def size(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def as_json(value, indent=None):
    """value as JSON text, or None when it cannot be (NaN or infinity, nested too deeply)."""
    if diagnosis.depth(value) > diagnosis.MAX_DEPTH:
        return None
    try:
        return json.dumps(value, indent=indent, allow_nan=False)
    except (ValueError, RecursionError):
        return None


def _message_sensors(n):
    """{sensor: (state, errors)} from the node's last message (checked by wire/node_message.py)."""
    out = {}
    for name, s in (n.get("sensors") or {}).items():
        ok = isinstance(s, list) and s and type(s[0]) is int
        out[name] = (STATE_NAMES[s[0]] if ok and 0 <= s[0] < len(STATE_NAMES) else "unknown",
                     s[1] if isinstance(s, list) and len(s) > 1 else 0)
    return out


def node_view(agent, node, now_ns):
    """Everything the overview says of one node, with its problems (each with what to do)."""
    cfg = agent.cfg
    n = agent.nodes.get(node, {})
    info = agent.node_info.get(node, {})
    seen = n.get("last_seen_ns")
    seen_s = None if seen is None else (now_ns - seen) / 1e9
    diag = info.get("diag") or {}  # the agent keeps objects only; what they hold is the node's
    sensors = _message_sensors(n)
    if not sensors:
        sensors = {k: (field(s, "state", shape=SENSOR) or "unknown", field(s, "errors", shape=SENSOR) or 0)
                   for k, s in diagnosis.sensors(diag).items()}
    offline = seen_s is None or seen_s > cfg.page_offline_after_s or info.get("online") is False
    problems = []
    if offline:
        why = "its last will says offline" if info.get("online") is False else f"no data for {ago(seen_s)[:-4]}"
        problems.append(f"offline ({why}): check its power and network; `openpole diag` over USB says more")
    if diag:
        problems += diagnosis.problems(diag)
    else:
        problems += [f"sensor {k} {st}: check its wiring against the board's wiring table"
                     for k, (st, _) in sensors.items() if st in ("degraded", "failed")]
    if n.get("gaps"):
        problems.append(f"{n['gaps']} message(s) missing since the agent started (sequence gaps): a weak link or resets")
    return {
        "node": node, "online": not offline, "last_seen_s": seen_s, "messages": n.get("messages", 0),
        "missing": n.get("gaps", 0), "resets": n.get("resets", 0), "boot": n.get("boot"),
        "reset_cause": field(diag, "reset_cause"), "heap_min_free": field(diag, "heap_min_free"),
        "rssi": field(diag, "net", "rssi"), "firmware": field(diag, "fw"), "micropython": field(diag, "micropython"),
        "sensors": sensors, "problems": problems,
        "diag_age_s": None if "diag_ns" not in info else (now_ns - info["diag_ns"]) / 1e9,
    }


def pole_view(agent):
    st = observe.status(agent)
    now = agent.clock()
    alarms = []
    if not st["broker"]["connected"]:
        alarms.append(f"not connected to the pole's broker {st['broker']['address']}: is mosquitto running?")
    if st["upstream"]["ok"] is False:
        alarms.append(f"upstream failing: {st['upstream']['last_error']}; data waits on disk")
    old = st["queue"]["oldest_age_s"]
    if old is not None and old > QUEUE_OLD_S:
        alarms.append(f"the oldest data waiting upstream is {ago(old)[:-4]} old")
    if st["disk"]["low"]:
        alarms.append(f"disk almost full ({size(st['disk']['free_bytes'])} free): nothing new is stored; free space "
                      f"on the state directory's disk")
    synced = agent.clock_synced() if agent.clock_synced else None
    if synced is False:
        alarms.append("the pole's clock is not synchronised (NTP): readings are flagged until it is")
    names = sorted(set(agent.nodes) | set(agent.node_info))
    nodes = [node_view(agent, n, now) for n in names]
    nodes.sort(key=lambda v: (v["online"], not v["problems"], v["node"]))  # offline, then problems, first
    delivered = agent.last_delivered
    return {"status": st, "alarms": alarms, "nodes": nodes, "clock_synced": synced,
            "last_delivered_s": None if delivered is None else (now - delivered[0]) / 1e9,
            "last_delivered_records": None if delivered is None else delivered[1]}


def latest_readings(agent, node):
    """The newest stored message's readings: [(name, value, unit, age_s)]."""
    rows = agent.store.latest_messages(node, 1)
    if not rows:
        return []
    senml, records, receive_ns = rows[0]
    _, _, messages, _ = batch.decode_messages(batch.encode(b"\0" * 16, agent.cfg.pole_id, [senml], records, receive_ns))
    now = agent.clock() / 1e9
    return [(name, value, unit, now - t) for m in messages for name, unit, value, t, *_ in m[5]]


def minute_series(agent, node, since_s):
    """{quantity: [(minute, mean, min, max)]} from the closed minutes and those still open."""
    out = {}
    for q, minute, mean, lo, hi in agent.store.minutes(node, since_s):
        out.setdefault(q, []).append((minute, mean, lo, hi))
    from openpole.spec.registry import REGISTRY

    with agent.minutes_lock:
        open_ = [(k, list(v)) for k, v in agent.minutes.open.items() if k[0] == node and k[2] >= since_s]
    for (_, key, minute), (count, total, lo, hi) in open_:
        q = REGISTRY.by_key[key]
        mean = 10 * math.log10(total / count) if q.kind == "level" else total / count
        out.setdefault(q.name, []).append((minute, mean, lo, hi))
    for rows in out.values():
        rows.sort()
    return out


def charts(agent, node):
    """The node's charts, each for the last hour and the last 24 h:
    [(id, title, [line labels], [(span name, chart id, t0, t1, lines, band, unit, step_s)])],
    lines [(label, [(t, value)])] and band [(t, lo, hi)] or None, as charts.svg_chart takes them."""
    now = agent.clock() / 1e9
    series = minute_series(agent, node, int(now - DAY_S) // 60 * 60)
    groups = []
    if "laeq" in series:
        groups.append(("noise", "Noise (dBA): LAeq, band from LA90 to LAmax", [("LAeq", "laeq")], ("la90", "lamax"), "dBA"))
    pm = [(q.upper().replace("_", "."), q) for q in ("pm1", "pm2_5", "pm10") if q in series]
    if pm:
        groups.append(("pm", "Particulate matter (µg/m³): PM1, PM2.5, PM10; gaps while the sensor sleeps", pm, None,
                       "µg/m³"))
    for q, title, unit in (("temperature", "Temperature (°C), band min to max", "°C"),
                           ("humidity", "Humidity (%RH), band min to max", "%RH"),
                           ("pressure", "Pressure (hPa), band min to max", "hPa")):
        if q in series:
            groups.append((q, title, [(q, q)], (q, q), unit))
    out = []
    for gid, title, lines, band, unit in groups:
        spans = []
        for span, width in ((3600, 60), (DAY_S, 600)):
            t0 = now - span
            pick = {q: bucket([r for r in series.get(q, []) if r[0] >= t0], width, q in LEVEL)
                    for q in {q for _, q in lines} | set(band or ())}
            pts = [(label, [(m + width / 2, mean) for m, mean, _, _ in pick[q]]) for label, q in lines]
            b = None
            if band:
                lo_q, hi_q = band
                his = {m: hi for m, _, _, hi in pick[hi_q]}
                b = [(m + width / 2, (mean if lo_q != hi_q else lo), his[m]) for m, mean, lo, _ in pick[lo_q] if m in his]
            spans.append(("last hour" if span == 3600 else "last 24 h", f"c-{gid}-{span}", t0, now, pts, b, unit, width))
        out.append((gid, title, [label for label, _ in lines], spans))
    return out


def counters(agent, node):
    """The node's error counters over the last day from its diag reports, (t0, t1, {label: [(t, value)]}),
    or None without reports. A report that is not JSON (or not an object) is left out; a field of
    the wrong type counts as 0, as a missing one does."""
    now_ns = agent.clock()
    rows = agent.store.diags(node, now_ns - DAY_S * 10**9)
    if not rows:
        return None
    lines = {"MQTT errors": [], "sensor errors": [], "audio blocks lost": [], "messages dropped": []}
    for t_ns, text in rows:
        try:
            d = json.loads(text)
        except (ValueError, RecursionError):
            continue
        if type(d) is not dict:
            continue
        t = t_ns / 1e9
        sensor_errors = sum(field(s, "errors", shape=SENSOR) or 0 for s in diagnosis.sensors(d).values())
        for label, value in (("MQTT errors", field(d, "mqtt", "errors")), ("sensor errors", sensor_errors),
                             ("audio blocks lost", field(d, "audio_lost_blocks")),
                             ("messages dropped", field(d, "queue", "dropped"))):
            lines[label].append((t, float(value or 0)))
    return now_ns / 1e9 - DAY_S, now_ns / 1e9, lines


def diag(agent, node):
    """The node's last diag report for its page, or None: {age_s, unreadable: [what is wrong],
    facts: [(field, text)], sensors: [(name, state, errors, last error)], json: text or None}."""
    info = agent.node_info.get(node, {})
    d = info.get("diag")
    if not d:
        return None
    wrong = diagnosis.shape(d)
    deep = diagnosis.depth(d) > diagnosis.MAX_DEPTH
    facts = [] if deep else [(k, (json.dumps(v) if isinstance(v, (dict, list)) else v)) for k, v in d.items()
                             if k not in ("sensors", "config")]
    sensors = [(k, field(s, "state", shape=SENSOR), field(s, "errors", shape=SENSOR), field(s, "last_error", shape=SENSOR))
               for k, s in diagnosis.sensors(d).items()]
    return {"age_s": (agent.clock() - info["diag_ns"]) / 1e9, "unreadable": wrong, "facts": facts, "sensors": sensors,
            "json": None if deep else json.dumps(d, indent=2)}


def reply(agent, node):
    """The node's last answer to a command, (age_s, JSON text) or None."""
    info = agent.node_info.get(node, {})
    r = info.get("reply")
    if not r:
        return None
    shown = {k: ("(the report above)" if k == "diag" else v) for k, v in r.items()}
    text = (json.dumps(shown, indent=2) if diagnosis.depth(shown) <= diagnosis.MAX_DEPTH else
            "(nested too deeply to show)")
    return (agent.clock() - info["reply_ns"]) / 1e9, text[:REPLY_SHOWN]


def actions(agent, node):
    """The last actions taken on the node, newest first: [(t_ns, action, value, client, outcome)]."""
    return agent.store.actions(node, ACTIONS_SHOWN)


def outcome(reply, wait_s):
    """What the node answered to an action, in words for its log: (answered ok, text)."""
    if reply is None:
        return False, f"sent; no answer in {wait_s:g} s (it may be offline or busy)"
    if reply.get("ok") is True:
        selftest = as_json(reply["selftest"]) if "selftest" in reply else None
        return True, "answered: ok" + (f", self-test {selftest[:REPLY_SHOWN]}" if selftest else "")
    error = reply.get("error")
    text = str(error) if error is None or isinstance(error, str) else as_json(error) or "?"
    return False, f"answered: refused ({text[:200]})"
