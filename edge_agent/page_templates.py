"""The pole's pages as HTML, from the plain data of page_views.py: no script or style from anywhere
else, so they work on a pole with no internet. Everything a node sent is escaped (esc) and long
strings are clipped, so one node's report cannot change another's row or the page around it."""

import time

from .charts import esc, svg_chart
from .page_views import ago, size

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
CLIP = 120  # characters of a node's string shown in a table cell


def clip(text, n=CLIP):
    """A node's string, escaped, cut at n characters: a 16 KB name must not make the overview 16 KB wide."""
    text = str(text)
    return esc(text if len(text) <= n else text[:n] + "…")


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


def error_page(title, text):
    """A refusal or an error: one line that says what went wrong and what to do."""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(title)}</title>'
            f'<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1></header><main>'
            f'<p class="alarm" role="alert">{esc(text)}</p><p><a href="/">the pole\'s overview</a></p></main></body></html>')


def state_badge(online):
    return '<span class="badge ok">✓ online</span>' if online else '<span class="badge alarm">✗ offline</span>'


def sensors_text(sensors):
    marks = {"ok": "✓", "warming": "…", "degraded": "!", "failed": "✗"}
    return ", ".join(f'<span class="{"ok" if st == "ok" else "warn" if st == "warming" else "alarm"}">'
                     f'{marks.get(st, "?")} {clip(k, 40)} {clip(st, 40)}</span>'
                     for k, (st, _) in sorted(sensors.items())) or "—"


def problems_list(problems):
    return "".join(f'<li class="problem">{esc(p)}</li>' for p in problems) or '<li class="ok">✓ no problems</li>'


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
             f'<li>Agent up: {st["uptime_s"] // 3600} h {st["uptime_s"] // 60 % 60} min</li>'
             f'<li><a href="/updates">Updates</a>{updates_line(st.get("ota"))}</li></ul>']
    rows = []
    for n in v["nodes"]:
        heap = "—" if n["heap_min_free"] is None else f'{n["heap_min_free"]:,} B'
        rssi = "—" if n["rssi"] is None else f'{esc(n["rssi"])} dBm'
        fw = clip(n["firmware"] or "—") + (f' (MicroPython {clip(n["micropython"], 40)})' if n["micropython"] else "")
        resets = f'{n["resets"]}' + (f' (last: {clip(n["reset_cause"], 40)})' if n["reset_cause"] else "")
        rows.append(f'<tr><th scope="row"><a href="/node/{esc(n["node"])}">{esc(n["node"])}</a></th>'
                    f'<td>{state_badge(n["online"])}<br><span class="muted">{esc(ago(n["last_seen_s"]))}</span></td>'
                    f'<td><ul>{problems_list(n["problems"])}</ul></td><td>{n["missing"]}</td><td class="wide">{resets}</td>'
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


def updates_line(o):
    """The overview's word on updates: jobs under way, and any that went wrong."""
    if not o:
        return ""
    by = o["jobs_by_state"]
    going = sum(by[s] for s in ("pending", "transferring", "staged", "trial"))
    bad = by["rolled_back"] + by["failed"]
    return (f": {going} under way" if going else ": none under way") + (f', <span class="alarm">{bad} rolled back or failed</span>' if bad else "")


def charts_html(groups):
    """page_views.charts() as figures: each chart for the last hour and the last 24 h."""
    out = []
    for gid, title, labels, spans in groups:
        row = [f'<figure><figcaption>{esc(name)}</figcaption>'
               f'{svg_chart(cid, f"{title}, {name}", t0, t1, pts, band, unit, width)}</figure>'
               for name, cid, t0, t1, pts, band, unit, width in spans]
        legend = " · ".join(f'<span class="key l{i}">{esc(label)}</span>' for i, label in enumerate(labels))
        out.append(f'<section class="chart-group"><h3>{esc(title)}</h3><p class="legend">{legend}</p>'
                   f'<div class="pair">{"".join(row)}</div></section>')
    return "".join(out) or "<p>No readings in the last 24 hours.</p>"


def counters_html(counters):
    """page_views.counters() as a chart of at most three of its lines."""
    if counters is None:
        return "<p>No diag reports in the last 24 hours (a node sends one every diag_interval_s, 300 s by default).</p>"
    t0, t1, lines = counters
    shown = [(k, v) for k, v in lines.items() if v][:3]
    legend = " · ".join(f'<span class="key l{i}">{esc(k)}</span>' for i, (k, _) in enumerate(shown))
    return (f'<p class="legend">{legend}</p>' +
            svg_chart("c-errors", "Error counters since the node's boot, last 24 h", t0, t1, shown, None, "", 3600))


def node_live(v, readings, charts, counters):
    """The part of a node's page that updates itself: state, problems, readings, charts."""
    rows = "".join(f'<tr><th scope="row">{esc(name)}</th><td>{value:.4g}</td><td>{esc(unit or "")}</td>'
                   f'<td class="muted">{esc(ago(age))}</td></tr>' for name, value, unit, age in readings)
    table = ('<div class="scroll"><table><thead><tr><th scope="col">Quantity</th><th scope="col">Value</th>'
             f'<th scope="col">Unit</th><th scope="col">Measured</th></tr></thead><tbody>{rows}</tbody></table></div>'
             if rows else "<p>No readings stored yet.</p>")
    return (f'<p>{state_badge(v["online"])} · last seen {esc(ago(v["last_seen_s"]))} · {v["messages"]} messages, '
            f'{v["missing"]} missing · {v["resets"]} resets</p><p>Sensors: {sensors_text(v["sensors"])}</p>'
            f'<ul>{problems_list(v["problems"])}</ul>'
            f'<h2>Latest readings</h2>{table}<h2>Charts</h2>{charts_html(charts)}'
            f'<h2>Error counters</h2>{counters_html(counters)}')


def diag_html(node, d):
    """page_views.diag(): the report readable, then whole as JSON."""
    if d is None:
        return "<p>No diag report yet: request one below.</p>"
    facts = "".join(f"<li><b>{clip(k, 40)}</b>: {esc(v)}</li>" for k, v in d["facts"])
    sensors = "".join(f"<li><b>{clip(k, 40)}</b>: {esc(state)}, {esc(errors)} errors"
                      f"{', last: ' + esc(last) if last else ''}</li>" for k, state, errors, last in d["sensors"])
    unreadable = ("" if not d["unreadable"] else
                  f'<p class="problem">Report unreadable in part: {esc("; ".join(d["unreadable"]))}.</p>')
    whole = ("<p>The whole report cannot be shown (nested too deeply).</p>" if d["json"] is None else
             f'<details><summary>The whole report (JSON)</summary><pre>{esc(d["json"])}</pre></details>')
    return (f'<p class="muted">Received {esc(ago(d["age_s"]))} · <a href="/node/{esc(node)}/diag.json">as JSON</a></p>'
            f'{unreadable}<ul class="facts">{facts}</ul><h3>Sensors</h3><ul>{sensors}</ul>{whole}')


def node_rest(node, d, reply, log_rows, has_password):
    """The rest of a node's page: its diag report, the actions form, the last answer, the action log."""
    reply_html = ""
    if reply:
        age, text = reply
        reply_html = f'<h3>Last answer to a command ({esc(ago(age))})</h3><pre>{esc(text)}</pre>'
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
    return (f'<h2>Diagnostics</h2>{diag_html(node, d)}<h2>Actions</h2>{form}{reply_html}'
            f'<h3>Action log</h3><ul>{log_html or "<li>No actions yet.</li>"}</ul>')


def updates_live(summary):
    """Each rollout and its jobs, node by node, with their progress (edge_agent/ota.py's summary)."""
    if not summary or not summary["jobs"]:
        return "<h2>Updates</h2><p>No update has been pushed to this pole's nodes.</p>"
    counts = ", ".join(f"{n} {esc(s)}" for s, n in summary["jobs_by_state"].items() if n)
    parts = [f"<h2>Updates</h2><p>Jobs: {counts}</p>"]
    for r in summary["rollouts"]:
        rows = []
        for j in sorted((j for j in summary["jobs"] if j["rollout"] == r["id"]), key=lambda j: j["id"]):
            pct = 100 * j["done"] // j["total"] if j["total"] else 0
            cls = "ok" if j["state"] == "confirmed" else "alarm" if j["state"] in ("rolled_back", "failed") else ""
            rows.append(f'<tr><th scope="row">{esc(j["node"])}</th><td>{j["id"]}{" (canary)" if j["canary"] else ""}</td>'
                        f'<td class="{cls}">{esc(j["state"])}</td><td><progress max="100" value="{pct}">{pct}%</progress> '
                        f'{pct}%</td><td>{clip(j["app"] or "—", 40)}</td><td>{clip(j["reason"] or "")}</td></tr>')
        parts.append(f'<h3>Rollout {r["id"]}: {esc(r["kind"])} {clip(r["version"], 40)}, {esc(r["state"])}'
                     f'{" (" + clip(r["reason"]) + ")" if r["reason"] else ""}</h3><div class="scroll"><table><thead><tr>'
                     '<th scope="col">Node</th><th scope="col">Job</th><th scope="col">State</th><th scope="col">Progress'
                     '</th><th scope="col">App</th><th scope="col">Reason</th></tr></thead><tbody>' + "".join(rows)
                     + "</tbody></table></div>")
    return "".join(parts)


def updates_rest(has_password):
    """The push and cancel forms, behind the page password."""
    disabled = "" if has_password else " disabled"
    note = "" if has_password else ('<p class="alarm">Updates are off: this pole has no page password. '
                                    '`openpole pole init` makes one.</p>')
    pw = ('<label>Page password<input name="password" type="password" autocomplete="current-password" '
          f'required{disabled}></label>')
    return (f'<h2>Push a bundle</h2>{note}<form class="action" method="post" action="/updates/push" '
            f'enctype="multipart/form-data"><label>Bundle (openpole ota build)<input name="bundle" type="file" '
            f'accept=".zip" required{disabled}></label><label>Nodes (patterns, e.g. pole17-*)<input name="nodes" '
            f'required{disabled}></label><label>Canary<input name="canary" inputmode="numeric" value="1"{disabled}>'
            f'</label><label>At once<input name="max_parallel" inputmode="numeric" placeholder="1"{disabled}></label>'
            f'{pw}<button type="submit"{disabled}>Push</button></form>'
            f'<h2>Cancel a rollout</h2><form class="action" method="post" action="/updates/cancel"><label>Rollout'
            f'<input name="rollout" inputmode="numeric" required{disabled}></label>{pw}'
            f'<button type="submit"{disabled}>Cancel its jobs</button></form>')
