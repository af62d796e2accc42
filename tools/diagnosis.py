"""A node's `diag` answer, read for a technician: what is wrong first, then the details. Shared by the
field tools (`openpole diag`) and the pole's page.

A report is the node's JSON, whatever it holds: every field is read through field(), which gives it
only when it has the type firmware/diag.py sends (SHAPE); shape() says which fields do not, and
problems() puts that first, so a report of the wrong shape is said to be unreadable, never guessed at.
"""

import math

# What the node's reset cause says (firmware/hw/esp32.py). An ESP32 reports a brownout as power_on
# and a panic as hard, the same as the reset button: only the watchdog is unambiguous.
BAD_RESETS = {"watchdog": "the watchdog reset it (the app hung)"}
# The stock MicroPython firmwares the node is tested on (README: supported firmware). The node's
# MQTT client is its own, so this no longer hangs on which umqtt.simple a firmware freezes.
SUPPORTED_MICROPYTHON = ((1, 24), (1, 29))

# The report's fields as firmware/diag.py sends them; null is always allowed (the node does not
# know: no error yet, never published). An object's "*" is the shape of each of its values; an
# empty one is an object whose contents are not read. Fields not listed are shown, never read.
INT, NUM, STR, BOOL = "an integer", "a number", "a string", "true or false"
SENSOR = {"state": STR, "errors": INT, "last_error": STR, "last": {}}
SHAPE = {
    "fw": STR, "micropython": STR, "board": STR, "node": STR, "uptime_s": NUM, "reset_cause": STR, "boot": INT,
    "heap_free": INT, "heap_min_free": INT, "short_of_heap": INT, "tick_max_ms": NUM, "audio_lost_blocks": INT,
    "net": {"type": STR, "connected": BOOL, "ssid": STR, "rssi": NUM, "ip": STR},
    "mqtt": {"connected": BOOL, "errors": INT, "last_error": STR, "last_publish_age_s": NUM, "published": INT,
             "delivered": INT, "resent": INT, "in_flight": INT, "ack": STR},
    "queue": {"depth": INT, "ram": INT, "flash": INT, "spilled": INT, "dropped": INT},
    "sensors": {"*": SENSOR},
    "clock": {"synced": BOOL, "unix": NUM},
    "config": {},
}
MAX_DEPTH = 16  # the node's report is 5 deep; far deeper is not a report (and would not render)
INT_LIMIT = 2**64  # a counter beyond this is no counter a node keeps (and overflows a float on the page)


def kind_of(v):
    """The JSON name of v's type, for a message: 'a string', 'an object', 'NaN'."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return "an integer" if abs(v) < INT_LIMIT else "an integer out of range"
    if isinstance(v, float):
        return "a number" if math.isfinite(v) else "NaN" if v != v else "infinity"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(v), type(v).__name__)


def _fits(v, kind):
    if v is None:
        return True
    if isinstance(kind, dict):
        return type(v) is dict
    if kind is BOOL:
        return type(v) is bool
    if kind is STR:
        return type(v) is str
    if type(v) is int:
        return abs(v) < INT_LIMIT
    return kind is NUM and type(v) is float and math.isfinite(v)


def field(d, *path, shape=SHAPE):
    """The field at path (field(d, "net", "rssi")) when every step has its SHAPE's type, else None;
    an object field is {} when it is missing or not an object."""
    kind, v = shape, d
    for key in path:
        kind = kind.get(key, kind.get("*")) if isinstance(kind, dict) else None
        v = v.get(key) if type(v) is dict else None
        if kind is None or not _fits(v, kind):
            v = None
    if isinstance(kind, dict):
        return v if type(v) is dict else {}
    return v


def _unreadable_at(d, *path):
    """True when a field along path is there but of another type: unknown, not false."""
    kind, v = SHAPE, d
    for key in path:
        kind, v = kind.get(key, kind.get("*")), v.get(key)
        if v is None:
            return False
        if not _fits(v, kind):
            return True
    return False


def depth(v, limit=MAX_DEPTH):
    """How deeply v nests lists and objects, counted up to limit + 1 (without recursion)."""
    deepest, todo = 0, [(v, 1)]
    while todo:
        x, level = todo.pop()
        if isinstance(x, (dict, list)):
            deepest = max(deepest, level)
            if level <= limit:
                todo.extend((y, level + 1) for y in (x.values() if isinstance(x, dict) else x))
    return deepest


def _name(key):
    return key if len(key) <= 40 else key[:40] + "…"


def shape(d):
    """What makes the report unreadable: ['net: a string, not an object', ...]; [] for a good one."""
    if type(d) is not dict:
        return [f"the report is {kind_of(d)}, not an object"]
    if depth(d) > MAX_DEPTH:
        return [f"the report nests deeper than {MAX_DEPTH} levels"]
    wrong, todo = [], [("", d, SHAPE)]
    while todo:
        where, obj, kinds = todo.pop(0)
        for key, v in obj.items():
            kind = kinds.get(key, kinds.get("*"))
            if kind is None:
                continue  # a field openpole does not read
            name = f"{where}{_name(key)}"
            if not _fits(v, kind):
                got, want = kind_of(v), "an object" if isinstance(kind, dict) else kind
                wrong.append(f"{name}: {got}" if got.endswith("out of range") and want in (INT, NUM) else
                             f"{name}: {got}, not {want}")
            elif isinstance(kind, dict) and v and kind:
                todo.append((name + ".", v, kind))
    return wrong


def unreadable(wrong):
    """The problem line for shape()'s findings, with what to do."""
    more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
    return (f"diag report unreadable ({'; '.join(wrong[:3])}{more}): the node's firmware does not send the report "
            f"openpole reads; deploy openpole's firmware (openpole deploy) or fix the box's own")


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
    if type(values) is not dict:
        return ""
    return ", ".join(f"{k} {round(v, 2) if isinstance(v, float) else v}" for k, v in values.items()
                     if v is not None and not isinstance(v, (list, dict)))


def _short(text, n=200):
    """A node's string for a problem line: one line, at most n characters."""
    text = str(text).replace("\r", " ").replace("\n", " ")
    return text if len(text) <= n else text[:n] + "…"


def sensors(d):
    """{name: sensor} for the sensors whose entry is an object (read each with field(s, ..., shape=SENSOR))."""
    return {k: s for k, s in field(d, "sensors").items() if type(s) is dict}


def problems(d):
    """What is wrong, most urgent first, each with what to do."""
    wrong = shape(d)
    if type(d) is not dict or depth(d) > MAX_DEPTH:
        return [unreadable(wrong)]
    out = [unreadable(wrong)] if wrong else []
    if field(d, "net", "connected") is False:
        out.append(f"network down (Wi-Fi {_short(field(d, 'net', 'ssid') or 'not set')}): check wifi.ssid and "
                   f"wifi.password with `openpole config set`")
    elif not field(d, "mqtt", "connected") and not _unreadable_at(d, "mqtt", "connected"):
        error = field(d, "mqtt", "last_error")
        last = f" (last error: {_short(error)})" if error else ""
        out.append(f"MQTT down{last}: check broker.host, broker.port and the node's broker user and password")
    for name, s in sensors(d).items():
        state = field(s, "state", shape=SENSOR)
        if state in ("failed", "degraded"):
            error = field(s, "last_error", shape=SENSOR)
            why = f": {_short(error)}" if error else ""
            out.append(f"sensor {_short(name, 40)} {state}{why}: check its wiring against the board's wiring table")
    dropped, waiting = field(d, "queue", "dropped"), field(d, "queue", "depth")
    if dropped:
        out.append(f"{dropped} message(s) dropped: the queue overflowed while the uplink was down")
    if waiting is not None and waiting > 100:
        out.append(f"{waiting} message(s) waiting to be sent")
    cause = field(d, "reset_cause")
    if cause in BAD_RESETS:
        out.append(f"last reset: {BAD_RESETS[cause]}; `openpole log` shows the last crash")
    heap = field(d, "heap_min_free")
    if heap is not None and heap < 8192:
        out.append(f"low memory: {heap} bytes free at worst")
    version = field(d, "micropython")
    fw = firmware_problem(_short(version, 40)) if version else None
    if fw:
        out.append(fw)
    rssi = field(d, "net", "rssi")
    if rssi is not None and rssi < -80:
        out.append(f"weak Wi-Fi signal ({rssi} dBm): move the antenna or the access point")
    return out


def verdict(d):
    p = problems(d)
    return "ok" if not p else f"{len(p)} problem(s): {p[0]}"


def render(d, console, port=None):
    """Print the report with rich (the node's own strings are escaped: never read as markup)."""
    from rich.markup import escape
    from rich.table import Table

    def f(*path, shape=SHAPE, of=d):
        return escape(str(field(of, *path, shape=shape)))

    p = problems(d)
    head = f"[bold]node {f('node')}[/] on {f('board')}, firmware {f('fw')}" + (f" ({port})" if port else "")
    console.print(head)
    if p:
        for line in p:
            console.print(f"  [red]x[/] {escape(line)}")
    else:
        console.print("  [green]ok[/]: network, MQTT and every sensor working")
    if type(d) is not dict:
        return
    t = Table(show_header=False, box=None, padding=(0, 2))
    t.add_row("up", f"{f('uptime_s')} s, boot {f('boot')}, last reset: {f('reset_cause')}")
    t.add_row("network", f"{f('net', 'ssid')} {'connected' if field(d, 'net', 'connected') else 'DOWN'}, "
                         f"rssi {f('net', 'rssi')} dBm, ip {f('net', 'ip')}")
    age = field(d, "mqtt", "last_publish_age_s")
    t.add_row("mqtt", f"{'connected' if field(d, 'mqtt', 'connected') else 'DOWN'}, {f('mqtt', 'published')} published"
                      f"{'' if age is None else f', last {age} s ago'}, {f('mqtt', 'errors')} error(s)")
    t.add_row("queue", f"{f('queue', 'depth')} waiting (ram {f('queue', 'ram')}, flash {f('queue', 'flash')}), "
                       f"{f('queue', 'dropped')} dropped")
    t.add_row("memory", f"{f('heap_free')} bytes free, {f('heap_min_free')} at worst")
    for name, s in sensors(d).items():
        vals = escape(values_text(field(s, "last", shape=SENSOR)))
        t.add_row(f"sensor {escape(name)}", f"{f('state', shape=SENSOR, of=s)}, {f('errors', shape=SENSOR, of=s)} "
                                            f"error(s)" + (f"; {vals}" if vals else ""))
    console.print(t)
