"""A node's `diag` answer, read for a technician: what is wrong first, then the details. Shared by the
field tools (`openpole diag`) and the pole's page."""

# What the node's reset cause says (firmware/hw/esp32.py). An ESP32 reports a brownout as power_on
# and a panic as hard, the same as the reset button: only the watchdog is unambiguous.
BAD_RESETS = {"watchdog": "the watchdog reset it (the app hung)"}
# The stock MicroPython firmwares the node is tested on (README: supported firmware). The node's
# MQTT client is its own, so this no longer hangs on which umqtt.simple a firmware freezes.
SUPPORTED_MICROPYTHON = ((1, 24), (1, 29))


def firmware_problem(version):
    """A warning for a MicroPython version outside SUPPORTED_MICROPYTHON ('1.26.0'), else None."""
    try:
        v = tuple(int(x) for x in str(version).split(".")[:2])
    except ValueError:
        return None
    lo, hi = SUPPORTED_MICROPYTHON
    if lo <= v <= hi:
        return None
    return (f"MicroPython {version} on the node: openpole is tested on v{lo[0]}.{lo[1]} to v{hi[0]}.{hi[1]}; "
            f"flash a supported firmware (openpole flash --firmware)")


def values_text(values):
    """{quantity: value} -> 'temperature 21.37, humidity 40.1' (lists and unset values left out)."""
    return ", ".join(f"{k} {round(v, 2) if isinstance(v, float) else v}" for k, v in (values or {}).items()
                     if v is not None and not isinstance(v, (list, dict)))


def problems(d):
    """What is wrong, most urgent first, each with what to do."""
    out = []
    net = d.get("net") or {}
    mqtt = d.get("mqtt") or {}
    if net.get("connected") is False:
        out.append(f"network down (Wi-Fi {net.get('ssid') or 'not set'}): check wifi.ssid and wifi.password "
                   f"with `openpole config set`")
    elif not mqtt.get("connected"):
        last = f" (last error: {mqtt['last_error']})" if mqtt.get("last_error") else ""
        out.append(f"MQTT down{last}: check broker.host, broker.port and the node's broker user and password")
    for name, s in (d.get("sensors") or {}).items():
        if s.get("state") in ("failed", "degraded"):
            why = f": {s['last_error']}" if s.get("last_error") else ""
            out.append(f"sensor {name} {s['state']}{why}: check its wiring against the board's wiring table")
    q = d.get("queue") or {}
    if q.get("dropped"):
        out.append(f"{q['dropped']} message(s) dropped: the queue overflowed while the uplink was down")
    if q.get("depth", 0) > 100:
        out.append(f"{q['depth']} message(s) waiting to be sent")
    if d.get("reset_cause") in BAD_RESETS:
        out.append(f"last reset: {BAD_RESETS[d['reset_cause']]}; `openpole log` shows the last crash")
    if isinstance(d.get("heap_min_free"), int) and d["heap_min_free"] < 8192:
        out.append(f"low memory: {d['heap_min_free']} bytes free at worst")
    fw = firmware_problem(d["micropython"]) if d.get("micropython") else None
    if fw:
        out.append(fw)
    if isinstance(net.get("rssi"), int) and net["rssi"] < -80:
        out.append(f"weak Wi-Fi signal ({net['rssi']} dBm): move the antenna or the access point")
    return out


def verdict(d):
    p = problems(d)
    return "ok" if not p else f"{len(p)} problem(s): {p[0]}"


def render(d, console, port=None):
    """Print the report with rich."""
    from rich.table import Table

    p = problems(d)
    head = f"[bold]node {d.get('node')}[/] on {d.get('board')}, firmware {d.get('fw')}" + (f" ({port})" if port else "")
    console.print(head)
    if p:
        for line in p:
            console.print(f"  [red]x[/] {line}")
    else:
        console.print("  [green]ok[/]: network, MQTT and every sensor working")
    t = Table(show_header=False, box=None, padding=(0, 2))
    net, mqtt, q = d.get("net") or {}, d.get("mqtt") or {}, d.get("queue") or {}
    t.add_row("up", f"{d.get('uptime_s')} s, boot {d.get('boot')}, last reset: {d.get('reset_cause')}")
    t.add_row("network", f"{net.get('ssid')} {'connected' if net.get('connected') else 'DOWN'}, "
                         f"rssi {net.get('rssi')} dBm, ip {net.get('ip')}")
    age = mqtt.get("last_publish_age_s")
    t.add_row("mqtt", f"{'connected' if mqtt.get('connected') else 'DOWN'}, {mqtt.get('published')} published"
                      f"{'' if age is None else f', last {age} s ago'}, {mqtt.get('errors')} error(s)")
    t.add_row("queue", f"{q.get('depth')} waiting (ram {q.get('ram')}, flash {q.get('flash')}), {q.get('dropped')} dropped")
    t.add_row("memory", f"{d.get('heap_free')} bytes free, {d.get('heap_min_free')} at worst")
    for name, s in (d.get("sensors") or {}).items():
        vals = values_text(s.get("last"))
        t.add_row(f"sensor {name}", f"{s.get('state')}, {s.get('errors')} error(s)" + (f"; {vals}" if vals else ""))
    console.print(t)
