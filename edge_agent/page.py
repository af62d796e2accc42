"""The pole's web page: what a technician on a lift or a city engineer sees on the pole's network.

Served by the agent (aiohttp, on a thread and event loop of its own, off unless page.listen is
set). Everything is rendered here, charts included (SVG from the agent's per-minute aggregates):
no script or style from anywhere else, so it works on a pole with no internet. An open page
updates itself every page.refresh_s by fetching its live part again (a few lines of script).

    /                   the pole: alarms, queue, upstream, disk, clock; each node, problems first
    /node/ID            a node: latest readings, charts of the last hour and day, diag, actions
    /node/ID/diag.json  its last diag report as the node sent it
    /status.json        the agent's /status
    POST /node/ID/action   diag, selftest or interval, with the page password; every one logged

Reads touch only the reader connection of the queue's database and the agent's in-memory state:
nothing on the ingest path waits for the page.
"""

import asyncio
import base64
import hashlib
import json
import logging
import math
import threading
import time

from aiohttp import web

from openpole.diagnosis import problems as diag_problems

from openpole.wire import batch

from . import observe
from .charts import bucket, esc, svg_chart
from openpole.wire.node_message import NODE_ID_RE
from .password import check_password

log = logging.getLogger("openpole.edge.page")
STATE_NAMES = ("ok", "warming", "degraded", "failed")  # firmware/sensors.py
ACTION_WAIT_S = 6.0  # how long an action waits for the node's answer before the page says "sent"
QUEUE_OLD_S = 600  # an alarm when the oldest record waiting upstream is older than this
LEVEL = {"laeq", "lamax", "lamin", "la10", "la50", "la90"}


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


# --- what the page shows: plain dicts, rendered below --------------------------------------------

def node_view(agent, node, now_ns):
    """Everything the overview says of one node, with its problems (each with what to do)."""
    cfg = agent.cfg
    n = agent.nodes.get(node, {})
    info = agent.node_info.get(node, {})
    seen = n.get("last_seen_ns")
    seen_s = None if seen is None else (now_ns - seen) / 1e9
    diag = info.get("diag") or {}
    sensors = {name: (STATE_NAMES[s[0]] if isinstance(s, list) and s and s[0] in range(4) else "unknown",
                      s[1] if isinstance(s, list) and len(s) > 1 else 0)
               for name, s in (n.get("sensors") or {}).items()}
    if not sensors and isinstance(diag.get("sensors"), dict):
        sensors = {k: (v.get("state", "unknown"), v.get("errors", 0)) for k, v in diag["sensors"].items()
                   if isinstance(v, dict)}
    offline = seen_s is None or seen_s > cfg.page_offline_after_s or info.get("online") is False
    problems = []
    if offline:
        why = "its last will says offline" if info.get("online") is False else f"no data for {ago(seen_s)[:-4]}"
        problems.append(f"offline ({why}): check its power and network; `openpole diag` over USB says more")
    if diag:
        problems += diag_problems(diag)
    else:
        problems += [f"sensor {k} {st}: check its wiring against the board's wiring table"
                     for k, (st, _) in sensors.items() if st in ("degraded", "failed")]
    if n.get("gaps"):
        problems.append(f"{n['gaps']} message(s) missing since the agent started (sequence gaps): a weak link or resets")
    net = diag.get("net") if isinstance(diag.get("net"), dict) else {}
    return {
        "node": node, "online": not offline, "last_seen_s": seen_s, "messages": n.get("messages", 0),
        "missing": n.get("gaps", 0), "resets": n.get("resets", 0), "boot": n.get("boot"),
        "reset_cause": diag.get("reset_cause"), "heap_min_free": diag.get("heap_min_free"), "rssi": net.get("rssi"),
        "firmware": diag.get("fw"), "micropython": diag.get("micropython"), "sensors": sensors,
        "problems": problems, "diag_age_s": None if "diag_ns" not in info else (now_ns - info["diag_ns"]) / 1e9,
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
    rows = agent.store.history("SELECT senml, records, receive_ns FROM messages WHERE node = ? ORDER BY boot DESC, "
                               "seq DESC LIMIT 1", (node,))
    if not rows:
        return []
    senml, records, receive_ns = rows[0]
    _, _, messages, _ = batch.decode_messages(batch.encode(b"\0" * 16, agent.cfg.pole_id, [senml], records, receive_ns))
    now = agent.clock() / 1e9
    return [(name, value, unit, now - t) for m in messages for name, unit, value, t, *_ in m[5]]


def minute_series(agent, node, since_s):
    """{quantity: [(minute, mean, min, max)]} from the closed minutes and those still open."""
    out = {}
    for q, minute, mean, lo, hi in agent.store.history("SELECT quantity, minute, mean, min, max FROM minutes WHERE "
                                                        "node = ? AND minute >= ? ORDER BY minute", (node, since_s)):
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
    """The node's charts, each for the last hour and the last 24 h."""
    now = agent.clock() / 1e9
    series = minute_series(agent, node, int(now - 86400) // 60 * 60)
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
        row = []
        for span, width in ((3600, 60), (86400, 600)):
            t0 = now - span
            pick = {q: bucket([r for r in series.get(q, []) if r[0] >= t0], width, q in LEVEL)
                    for q in {q for _, q in lines} | set(band or ())}
            pts = [(label, [(m + width / 2, mean) for m, mean, _, _ in pick[q]]) for label, q in lines]
            b = None
            if band:
                lo_q, hi_q = band
                his = {m: hi for m, _, _, hi in pick[hi_q]}
                b = [(m + width / 2, (mean if lo_q != hi_q else lo), his[m]) for m, mean, lo, _ in pick[lo_q] if m in his]
            name = "last hour" if span == 3600 else "last 24 h"
            row.append(f'<figure><figcaption>{esc(name)}</figcaption>'
                       f'{svg_chart(f"c-{gid}-{span}", f"{title}, {name}", t0, now, pts, b, unit, width)}</figure>')
        legend = " · ".join(f'<span class="key l{i}">{esc(label)}</span>' for i, (label, _) in enumerate(lines))
        out.append(f'<section class="chart-group"><h3>{esc(title)}</h3><p class="legend">{legend}</p>'
                   f'<div class="pair">{"".join(row)}</div></section>')
    return "".join(out) or "<p>No readings in the last 24 hours.</p>"


def counters_chart(agent, node):
    """The node's error counters over the last day, from its diag reports."""
    now_ns = agent.clock()
    rows = agent.store.history("SELECT t_ns, report FROM diags WHERE node = ? AND t_ns >= ? ORDER BY t_ns",
                               (node, now_ns - 86400 * 10**9))
    lines = {"MQTT errors": [], "sensor errors": [], "audio blocks lost": [], "messages dropped": []}
    for t_ns, text in rows:
        try:
            d = json.loads(text)
            t = t_ns / 1e9
            lines["MQTT errors"].append((t, float((d.get("mqtt") or {}).get("errors") or 0)))
            lines["sensor errors"].append((t, float(sum(s.get("errors") or 0 for s in (d.get("sensors") or {}).values()
                                                        if isinstance(s, dict)))))
            lines["audio blocks lost"].append((t, float(d.get("audio_lost_blocks") or 0)))
            lines["messages dropped"].append((t, float((d.get("queue") or {}).get("dropped") or 0)))
        except (ValueError, TypeError, AttributeError):
            continue
    if not rows:
        return "<p>No diag reports in the last 24 hours (a node sends one every diag_interval_s, 300 s by default).</p>"
    shown = [(k, v) for k, v in lines.items() if v][:3]
    legend = " · ".join(f'<span class="key l{i}">{esc(k)}</span>' for i, (k, _) in enumerate(shown))
    return (f'<p class="legend">{legend}</p>' +
            svg_chart("c-errors", "Error counters since the node's boot, last 24 h", now_ns / 1e9 - 86400, now_ns / 1e9,
                      shown, None, "", 3600))


# --- HTML -------------------------------------------------------------------------------------

CSS = """
:root{--fg:#111;--bg:#fff;--muted:#444;--bad:#a00000;--ok:#0a5c0a;--warn:#7a4b00;--line0:#0b4f9c;--line1:#8a1c7c;
--line2:#1d6b3a;--band:#c9d8ee;--grid:#ddd}
*{box-sizing:border-box}body{font:16px/1.45 system-ui,sans-serif;color:var(--fg);background:var(--bg);margin:0}
header,main,footer{padding:.6rem 1rem;max-width:80rem;margin:auto}header{border-bottom:2px solid var(--fg)}
h1{font-size:1.35rem;margin:.2rem 0}h2{font-size:1.15rem;margin:1rem 0 .4rem}h3{font-size:1rem;margin:.6rem 0 .2rem}
a{color:#0645ad}a:focus,button:focus,input:focus,select:focus{outline:3px solid #ffbf47}
.alarm,.problem{color:var(--bad)}.ok{color:var(--ok)}.warn{color:var(--warn)}.muted{color:var(--muted)}
ul.alarms{padding-left:1.2rem}table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3rem .45rem;
border-bottom:1px solid #ccc;vertical-align:top}th{background:#f2f2f2}.scroll{overflow-x:auto}
.badge{font-weight:700;white-space:nowrap}.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(13rem,1fr));
gap:.4rem 1rem;padding:0;list-style:none}.pair{display:grid;grid-template-columns:repeat(auto-fit,minmax(18rem,1fr));gap:.6rem}
figure{margin:0}figcaption{font-size:.85rem;color:var(--muted)}svg.chart{width:100%;height:auto;background:#fafafa}
.grid{stroke:var(--grid)}.axis{font-size:11px;fill:var(--muted)}.band{fill:var(--band)}.line{fill:none;stroke-width:2}
.dots{fill:currentColor;stroke:none}.l0{stroke:var(--line0);color:var(--line0)}.l1{stroke:var(--line1);color:var(--line1)}.l2{stroke:var(--line2);color:var(--line2)}
.key{font-weight:700}.key.l1{text-decoration:underline dashed}.key.l2{text-decoration:underline dotted}
form.action{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin:.4rem 0}
label{display:flex;flex-direction:column;font-size:.9rem}input,select,button{font:inherit;padding:.35rem .5rem;min-height:2.4rem}
button{background:#0b4f9c;color:#fff;border:0;border-radius:3px}.flash{padding:.5rem .7rem;border-left:5px solid}
.flash.bad{border-color:var(--bad)}.flash.good{border-color:var(--ok)}pre{overflow-x:auto;background:#f6f6f6;padding:.5rem}
@media (max-width:40rem){th.wide,td.wide{display:none}body{font-size:15px}}
"""

SCRIPT = """<script>
(function(){var every=%d;var live=document.getElementById("live");if(!live)return;
setInterval(function(){fetch(location.pathname+location.search,{headers:{"X-Partial":"1"},cache:"no-store"})
.then(function(r){return r.ok?r.text():null}).then(function(t){if(t!==null){live.innerHTML=t;
document.getElementById("updated").textContent=new Date().toTimeString().slice(0,8);}}).catch(function(){});},every);})();
</script>"""


def page(title, pole, live, rest="", refresh_s=5.0, flash=None):
    banner = ""
    if flash:
        good, text = flash
        banner = f'<p class="flash {"good" if good else "bad"}" role="status">{esc(text)}</p>'
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(title)}</title>'
            f'<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1><p class="muted">Pole {esc(pole)} · '
            f'<a href="/">overview</a> · updated <span id="updated">{time.strftime("%H:%M:%S")}</span> '
            f'(every {refresh_s:g} s)</p></header><main>{banner}<div id="live" aria-live="polite">{live}</div>{rest}'
            f'</main>{SCRIPT % int(refresh_s * 1000)}</body></html>')


def state_badge(online):
    return '<span class="badge ok">✓ online</span>' if online else '<span class="badge alarm">✗ offline</span>'


def sensors_text(sensors):
    marks = {"ok": "✓", "warming": "…", "degraded": "!", "failed": "✗"}
    return ", ".join(f'<span class="{"ok" if st == "ok" else "warn" if st == "warming" else "alarm"}">'
                     f'{marks.get(st, "?")} {esc(k)} {esc(st)}</span>' for k, (st, _) in sorted(sensors.items())) or "—"


def overview_live(v, cfg):
    st = v["status"]
    q, up, disk = st["queue"], st["upstream"], st["disk"]
    alarms = "".join(f'<li class="alarm">⚠ {esc(a)}</li>' for a in v["alarms"])
    records = v["last_delivered_records"]
    delivered = "" if records is None else f" ({records} records)"
    parts = [f'<h2>Pole</h2>{"<ul class=alarms>" + alarms + "</ul>" if alarms else "<p class=ok>✓ no alarms</p>"}'
             f'<ul class="facts">'
             f'<li>Broker: {"✓ connected" if st["broker"]["connected"] else "✗ not connected"}</li>'
             f'<li>Upstream: {"✓ ok" if up["ok"] else "✗ failing" if up["ok"] is False else "… not yet tried"}</li>'
             f'<li>Last delivered batch: {esc(ago(v["last_delivered_s"]))}{delivered}</li>'
             f'<li>Queue: {q["messages"]} messages, {q["records"]} records waiting'
             f'{"" if q["oldest_age_s"] is None else ", oldest " + esc(ago(q["oldest_age_s"]))}</li>'
             f'<li>Disk free: {esc(size(disk["free_bytes"]))}{" (low)" if disk["low"] else ""}</li>'
             f'<li>Clock: {"✓ synchronised" if v["clock_synced"] else "✗ not synchronised" if v["clock_synced"] is False else "? unknown"}</li>'
             f'<li>Agent up: {st["uptime_s"] // 3600} h {st["uptime_s"] // 60 % 60} min</li></ul>']
    rows = []
    for n in v["nodes"]:
        probs = "".join(f'<li class="problem">{esc(p)}</li>' for p in n["problems"]) or '<li class="ok">✓ no problems</li>'
        heap = "—" if n["heap_min_free"] is None else f'{n["heap_min_free"]:,} B'
        rssi = "—" if n["rssi"] is None else f'{n["rssi"]} dBm'
        fw = esc(n["firmware"] or "—") + (f' (MicroPython {esc(n["micropython"])})' if n["micropython"] else "")
        resets = f'{n["resets"]}' + (f' (last: {esc(n["reset_cause"])})' if n["reset_cause"] else "")
        rows.append(f'<tr><th scope="row"><a href="/node/{esc(n["node"])}">{esc(n["node"])}</a></th>'
                    f'<td>{state_badge(n["online"])}<br><span class="muted">{esc(ago(n["last_seen_s"]))}</span></td>'
                    f'<td><ul>{probs}</ul></td><td>{n["missing"]}</td><td class="wide">{resets}</td>'
                    f'<td class="wide">{heap}</td><td class="wide">{rssi}</td><td class="wide">{fw}</td>'
                    f'<td>{sensors_text(n["sensors"])}</td></tr>')
    parts.append(f'<h2>Nodes ({sum(n["online"] for n in v["nodes"])} of {len(v["nodes"])} online)</h2>')
    if rows:
        parts.append('<div class="scroll"><table><caption class="muted">Offline nodes and problems first</caption>'
                     '<thead><tr><th scope="col">Node</th><th scope="col">State</th><th scope="col">Problems and what '
                     'to do</th><th scope="col">Missing</th><th scope="col" class="wide">Resets</th><th scope="col" '
                     'class="wide">Heap min</th><th scope="col" class="wide">RSSI</th><th scope="col" class="wide">'
                     'Firmware</th><th scope="col">Sensors</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table></div>")
    else:
        parts.append("<p>No node has reported yet.</p>")
    return "".join(parts)


def node_live(agent, node):
    v = node_view(agent, node, agent.clock())
    readings = latest_readings(agent, node)
    probs = "".join(f'<li class="problem">{esc(p)}</li>' for p in v["problems"]) or '<li class="ok">✓ no problems</li>'
    rows = "".join(f'<tr><th scope="row">{esc(name)}</th><td>{value:.4g}</td><td>{esc(unit or "")}</td>'
                   f'<td class="muted">{esc(ago(age))}</td></tr>' for name, value, unit, age in readings)
    table = ('<div class="scroll"><table><thead><tr><th scope="col">Quantity</th><th scope="col">Value</th>'
             f'<th scope="col">Unit</th><th scope="col">Measured</th></tr></thead><tbody>{rows}</tbody></table></div>'
             if rows else "<p>No readings stored yet.</p>")
    return (f'<p>{state_badge(v["online"])} · last seen {esc(ago(v["last_seen_s"]))} · {v["messages"]} messages, '
            f'{v["missing"]} missing · {v["resets"]} resets</p><p>Sensors: {sensors_text(v["sensors"])}</p>'
            f'<ul>{probs}</ul>'
            f'<h2>Latest readings</h2>{table}<h2>Charts</h2>{charts(agent, node)}'
            f'<h2>Error counters</h2>{counters_chart(agent, node)}')


def node_rest(agent, node, has_password):
    info = agent.node_info.get(node, {})
    diag = info.get("diag")
    if diag:
        facts = "".join(f"<li><b>{esc(k)}</b>: {esc(json.dumps(v) if isinstance(v, (dict, list)) else v)}</li>"
                        for k, v in diag.items() if k not in ("sensors", "config"))
        sensors = "".join(f"<li><b>{esc(k)}</b>: {esc(s.get('state'))}, {esc(s.get('errors'))} errors"
                          f"{', last: ' + esc(s['last_error']) if s.get('last_error') else ''}</li>"
                          for k, s in (diag.get("sensors") or {}).items() if isinstance(s, dict))
        diag_html = (f'<p class="muted">Received {esc(ago((agent.clock() - info["diag_ns"]) / 1e9))} · '
                     f'<a href="/node/{esc(node)}/diag.json">as JSON</a></p><ul class="facts">{facts}</ul>'
                     f'<h3>Sensors</h3><ul>{sensors}</ul><details><summary>The whole report (JSON)</summary>'
                     f'<pre>{esc(json.dumps(diag, indent=2))}</pre></details>')
    else:
        diag_html = "<p>No diag report yet: request one below.</p>"
    reply = info.get("reply")
    reply_html = ""
    if reply:
        shown = {k: ("(the report above)" if k == "diag" else v) for k, v in reply.items()}
        reply_html = (f'<h3>Last answer to a command ({esc(ago((agent.clock() - info["reply_ns"]) / 1e9))})</h3>'
                      f'<pre>{esc(json.dumps(shown, indent=2)[:4000])}</pre>')
    log_rows = agent.store.history("SELECT t_ns, action, value, client, outcome FROM actions WHERE node = ? "
                                   "ORDER BY id DESC LIMIT 10", (node,))
    log_html = "".join(f'<li>{time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t / 1e9))}: {esc(a)}'
                       f'{" " + esc(val) if val else ""} from {esc(c)}: {esc(o)}</li>' for t, a, val, c, o in log_rows)
    disabled = "" if has_password else " disabled"
    note = "" if has_password else ('<p class="alarm">Actions are off: this pole has no page password. '
                                    '`openpole pole init` makes one.</p>')
    form = (f'{note}<form class="action" method="post" action="/node/{esc(node)}/action">'
            f'<label for="action">Action<select id="action" name="action"{disabled}>'
            f'<option value="diag">request its diag report</option><option value="selftest">run its self-test</option>'
            f'<option value="interval">set its interval (s)</option></select></label>'
            f'<label for="value">Interval in seconds (for “set its interval”)<input id="value" name="value" '
            f'inputmode="decimal" placeholder="60"{disabled}></label>'
            f'<label for="password">Page password<input id="password" name="password" type="password" '
            f'autocomplete="current-password" required{disabled}></label>'
            f'<button type="submit"{disabled}>Send to {esc(node)}</button></form>')
    return (f'<h2>Diagnostics</h2>{diag_html}<h2>Actions</h2>{form}{reply_html}'
            f'<h3>Action log</h3><ul>{log_html or "<li>No actions yet.</li>"}</ul>')


# --- the server -------------------------------------------------------------------------------

class Page:
    def __init__(self, agent, host, port):
        self.agent, self.host, self.port = agent, host, port
        self.cfg = agent.cfg
        self.loop = None
        self.runner = None
        self._read_ok = {}  # sha256 of an accepted Authorization header -> until (monotonic)
        self.started = threading.Event()
        self.error = None

    @property
    def url(self):
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/"

    def start(self):
        """Serve on a thread of its own; returns the URL, or raises OSError (the port is taken)."""
        threading.Thread(target=self._serve, name="openpole-page", daemon=True).start()
        self.started.wait(15)
        if self.error:
            raise self.error
        return self.url

    def _serve(self):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        app = web.Application(middlewares=[self._guard], client_max_size=16 * 1024)
        app.add_routes([web.get("/", self.overview), web.get("/node/{node}", self.node),
                        web.get("/node/{node}/diag.json", self.diag_json), web.get("/status.json", self.status_json),
                        web.post("/node/{node}/action", self.action)])
        self.runner = web.AppRunner(app, access_log=None)
        try:
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
            self.loop.run_until_complete(site.start())
            if not self.port:
                self.port = site._server.sockets[0].getsockname()[1]
        except OSError as e:
            self.error = e
            self.started.set()
            return
        self.started.set()
        self.loop.run_forever()

    def stop(self):
        if self.loop and self.runner:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)

    # --- access ---
    def _read_allowed(self, request):
        if self.cfg.page_open_read or not self.cfg.page_password_hash:
            return True
        header = request.headers.get("Authorization", "")
        key = hashlib.sha256(header.encode()).hexdigest()
        if self._read_ok.get(key, 0) > time.monotonic():
            return True
        try:
            kind, _, token = header.partition(" ")
            password = base64.b64decode(token).decode().partition(":")[2] if kind.lower() == "basic" else None
        except (ValueError, UnicodeDecodeError):
            password = None
        if password is not None and check_password(password, self.cfg.page_password_hash):
            self._read_ok[key] = time.monotonic() + 600  # a page refreshing every few seconds: one scrypt in ten minutes
            return True
        return False

    @web.middleware
    async def _guard(self, request, handler):
        if request.method == "GET" and not self._read_allowed(request):
            return web.Response(status=401, text="This pole's page needs its password (any user name).",
                                headers={"WWW-Authenticate": 'Basic realm="openpole pole page"'})
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:  # never a traceback in the page: one line in the agent's log
            log.exception("page %s failed", request.path)
            return web.Response(status=500, text="The page could not be made: the agent's log says why.")

    # --- pages ---
    def _html(self, body, status=200):
        return web.Response(text=body, status=status, content_type="text/html",
                            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                     "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                                                "script-src 'unsafe-inline'; img-src 'self' data:"})

    async def overview(self, request):
        v = pole_view(self.agent)
        live = overview_live(v, self.cfg)
        if request.headers.get("X-Partial"):
            return self._html(live)
        return self._html(page(f"openpole pole {self.cfg.pole_id}", self.cfg.pole_id, live,
                               refresh_s=self.cfg.page_refresh_s))

    def _known(self, node):
        return NODE_ID_RE.match(node or "") and (node in self.agent.nodes or node in self.agent.node_info)

    async def node(self, request, flash=None, status=200):
        node = request.match_info["node"]
        if not self._known(node):
            raise web.HTTPNotFound(text=f"No node {node[:64]!r} on this pole: the overview lists the nodes.")
        live = node_live(self.agent, node)
        if request.headers.get("X-Partial"):
            return self._html(live)
        rest = node_rest(self.agent, node, bool(self.cfg.page_password_hash))
        return self._html(page(f"Node {node}", self.cfg.pole_id, live, rest, self.cfg.page_refresh_s, flash), status)

    async def diag_json(self, request):
        node = request.match_info["node"]
        if not self._known(node):
            raise web.HTTPNotFound(text=f"No node {node[:64]!r} on this pole.")
        return web.json_response(self.agent.node_info.get(node, {}).get("diag") or {})

    async def status_json(self, request):
        return web.json_response(observe.status(self.agent))

    async def action(self, request):
        """Validate, check the password, send the command, wait a little for the answer; log it all."""
        node = request.match_info["node"]
        client = request.remote or "?"
        if not self._known(node):
            raise web.HTTPNotFound(text=f"No node {node[:64]!r} on this pole.")
        form = await request.post()
        act, value, password = form.get("action", ""), str(form.get("value", "")).strip(), str(form.get("password", ""))
        if act not in ("diag", "selftest", "interval"):
            return await self.node(request, (False, "Choose an action: diag, selftest or interval."), 400)
        cmd = {"cmd": act}
        if act == "interval":
            try:
                seconds = float(value)
                if not (math.isfinite(seconds) and 1 <= seconds <= 86400):
                    raise ValueError
            except ValueError:
                return await self.node(request, (False, f"Interval {value[:20]!r}: give a number of seconds from 1 to "
                                                        f"86400."), 400)
            cmd["value"] = int(seconds) if seconds == int(seconds) else seconds
        else:
            value = ""
        stored = self.cfg.page_password_hash
        if not stored:
            return await self.node(request, (False, "Actions are off: this pole has no page password (openpole pole "
                                                    "init makes one)."), 403)
        ok = await asyncio.get_running_loop().run_in_executor(None, check_password, password, stored)
        now = self.agent.clock()
        if not ok:
            await asyncio.sleep(1.0)  # a guesser gets one try a second per connection
            self.agent.store.count("page_password_refused")
            self._log(now, node, act, value, client, "refused: wrong password")
            return await self.node(request, (False, "Wrong password: nothing was sent. The action was logged."), 403)
        before = self.agent.node_info.get(node, {}).get("reply_ns")
        sent = self.agent.ingest.command(node, json.dumps(cmd).encode())
        if not sent:
            self._log(now, node, act, value, client, "not sent: the agent is not connected to the broker")
            return await self.node(request, (False, "Not sent: the agent is not connected to the pole's broker."), 503)
        deadline = time.monotonic() + ACTION_WAIT_S
        reply = None
        while time.monotonic() < deadline:
            info = self.agent.node_info.get(node, {})
            if info.get("reply_ns") != before and (info.get("reply") or {}).get("cmd") == act:
                reply = info["reply"]
                break
            await asyncio.sleep(0.1)
        if reply is None:
            outcome = f"sent; no answer in {ACTION_WAIT_S:g} s (it may be offline or busy)"
        elif reply.get("ok"):
            outcome = "answered: ok" + (f", self-test {json.dumps(reply['selftest'])}" if "selftest" in reply else "")
        else:
            outcome = f"answered: refused ({reply.get('error')})"
        self._log(now, node, act, value, client, outcome)
        return await self.node(request, (reply is not None and bool(reply.get("ok")), f"{act} → {node}: {outcome}"))

    def _log(self, t_ns, node, act, value, client, outcome):
        log.info("page action %s%s on node %s from %s: %s", act, f" {value}" if value else "", node, client, outcome)
        self.agent.store.log_action(t_ns, node, act, value, client, outcome)


def serve(agent, listen):
    """Start the page on listen ("HOST:PORT"); returns the Page (its .url)."""
    from openpole.common import parse_hostport

    host, port = parse_hostport(listen, 8080, flag="page.listen")
    p = Page(agent, host, port)
    p.start()
    return p
