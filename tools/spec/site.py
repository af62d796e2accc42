"""The published spec site: pages beyond the datasheets (payload contract, noise meter, bills of
materials; the drawings are in drawings.py), and the HTML rendering of every Markdown page.

Everything comes from sensor_specs/ and board_defs/ (and, for the example messages, the node's
own encoder in firmware/lib): nothing here is written by hand per sensor or board.
"""

import html
import contextlib
import importlib
import math
import re
import shutil
import sys
from pathlib import Path
from xml.sax.saxutils import escape

from .. import paths
from ..noise import design

# ---------------------------------------------------------------- the noise meter


def noise_md(specs):
    from .build import _head, _md_table

    c = design.constants()
    _, real = design.quantise(design.design())
    g1k = real.gain_db(1000.0)
    rows = []
    for f, (up, dn) in c["class1_tolerance"].items():
        fe = float(f)
        exact = 1000 * 10 ** (round(10 * math.log10(fe / 1000)) / 10)
        dev = real.gain_db(exact) - g1k - design.a_weighting_db(exact)
        rows.append((f, f"{design.a_weighting_db(exact):+.1f}", f"{dev:+.3f}",
                     f"+{up} / {'-∞' if dn == -math.inf else dn}"))
    out = _head("The noise meter")
    out += [
        "A node computes A-weighted levels from its I2S microphone at 48 kHz: LAeq (the energy mean),",
        "LAmax and LAmin of the Fast-weighted level (τ = 125 ms), and LA10, LA50, LA90 from a histogram of",
        "Fast levels taken every 10 ms. The microphone profiles say how a digital word becomes a",
        "pressure (sensitivity at 94 dB SPL) and correct a microphone's low-frequency roll-off.",
        "",
        "![A-weighting of the firmware filter against IEC 61672-1](aweighting.svg)",
        "",
        "## Deviation from the IEC 61672-1 curve",
        "",
        "At the standard's exact (base-ten) one-third-octave frequencies, from the filter constants the",
        "node runs; the test suite measures the same through the node's kernel under MicroPython.",
        "",
        _md_table(("nominal Hz", "A-weighting at the exact frequency, dB", "firmware deviation, dB", "class 1 tolerance, dB"), rows),
        "",
        "The meter is a digital filter and its microphone: a box's own class depends on the",
        "microphone, its windscreen and its calibration (see each [microphone](README.md#microphones)).",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------- payload contract


@contextlib.contextmanager
def _firmware_lib():
    """The node's own encoder (firmware/lib) on CPython, for real example messages: its modules load
    others as they are used (cbor_encode), so the path stays while they work."""
    lib = str(paths.FIRMWARE / "lib")
    added = lib not in sys.path
    if added:
        sys.path.insert(0, lib)
    try:
        yield importlib.import_module("message"), importlib.import_module("cose"), importlib.import_module("cbor")
    finally:
        if added:
            sys.path.remove(lib)


EXAMPLE_KEY = bytes(range(32))


def example_messages():
    """(plain, signed) node messages as a street box sends them, made by the node's encoder."""
    with _firmware_lib() as (message, cose, cbor):
        weather = message.encode_values({"temperature": 21.37, "humidity": 48.2, "pressure": 1013.62})
        air = message.encode_values({"pm1": 4, "pm2_5": 7, "pm10": 11})
        noise = message.encode_values({"laeq": 62.4, "lamax": 71.8, "lamin": 55.1})
        status = cbor.dumps({"bme280": [0, 0], "pms5003": [0, 0], "noise": [0, 0]})
        plain = message.encode("pole17-a", 12, 4031, [(1200, weather), (1200, air), (1200, noise)], status)
        return plain, cose.sign(plain, EXAMPLE_KEY)


def _hex_lines(b, width=32):
    h = b.hex()
    return [h[i: i + 2 * width] for i in range(0, len(h), 2 * width)]


def payload_md(specs):
    import cbor2

    from ..conformance import diagnostic
    from .build import _head, _md_table

    plain, signed = example_messages()
    cddl = (paths.SENSOR_SPECS / "node_message.cddl").read_text().rstrip()
    batch = (paths.SENSOR_SPECS / "upstream_batch.cddl").read_text().rstrip()
    ack = (paths.SENSOR_SPECS / "node_ack.cddl").read_text().rstrip()
    fields = [
        ("0", "v", "uint", "message format version: 1"),
        ("1", "node", "text", "the node id: 1-32 of a-z, 0-9, _ and -, starting with a letter or digit"),
        ("2", "boot", "uint", "the boot id: one up at every boot; a new filesystem starts it at random"),
        ("3", "seq", "uint", "message number within this boot, from 0"),
        ("4", "samples", "array", "[age ms, {quantity key: value}] per reading, oldest first"),
        ("5", "status", "map", "sensor name: [state, errors] (state 0 ok, 1 warming, 2 degraded, 3 failed); the noise meter adds audio blocks lost, when any"),
        ("6", "clock", "uint", "optional: the node's wall clock at send time, ms since 1970 (only if set)"),
        ("7", "flags", "uint", "optional: 1 = the ages are lower bounds (sampled before a reset)"),
    ]
    out = _head("The payload contract")
    out += [
        "What a compatible box sends, and what the pole's edge agent accepts. `openpole conformance`",
        "checks a box against this page: `openpole conformance --broker HOST:PORT --node-id ID`.",
        "",
        "## MQTT",
        "",
        _md_table(("topic", "QoS", "retain", "what"), [
            ("`openpole/v1/<node>/data`", 1, "no", "one node message per publish (CBOR, below)"),
            ("`openpole/v1/<node>/status`", 1, "yes", "`online` on connect; `offline` as the last will and on a clean stop"),
            ("`openpole/v1/<node>/diag`", 0, "no", "diagnostics as JSON (secrets redacted), and command replies"),
            ("`openpole/v1/<node>/cmd`", 1, "no", "commands to the node, JSON: `{\"cmd\": \"interval\", \"value\": 30}`, `diag`, `selftest`, `reboot`"),
            ("`openpole/v1/<node>/ack`", 0, "no", "from the pole: the node's messages now on the pole's disk (below)"),
        ]),
        "",
        "## Node message v1",
        "",
        "One CBOR data item (RFC 8949) per publish, a map with small integer keys:",
        "",
        _md_table(("key", "name", "type", "meaning"), [(f"`{k}`", n, t, m) for k, n, t, m in fields]),
        "",
        "Quantity keys and units come from the [quantity registry](quantities.md). Integers are sent",
        "as integers; other values rounded to the quantity's resolution, as single-precision floats",
        "when that is shorter. Values outside a quantity's range are kept and flagged, not dropped.",
        "",
        "### Timing",
        "",
        "A node needs no clock. Each sample carries its age in milliseconds at send time, from the",
        "node's monotonic clock; the pole dates it as *receive time − age*. A message queued through",
        "an outage and sent later is still dated right. Samples taken before a reset carry flag 1:",
        "their ages leave out the time the node was down, so they are lower bounds.",
        "",
        "### De-duplication",
        "",
        "(node, boot, seq) identifies a message. QoS 1 may deliver a message twice, and a node re-sends",
        "what was not acknowledged: the pole stores each (node, boot, seq) once. A node must take a new",
        "boot id at every start (it keeps it on flash: one up each boot) and count seq up by one per",
        "message within a boot. The id must never repeat, even after a reflash or on a replacement",
        "board with the same node id: openpole's firmware starts a new filesystem's boot id at a random",
        "value below 2^30.",
        "",
        "### Acknowledgement",
        "",
        "A broker's PUBACK means the broker has a message, in RAM until its next autosave (Mosquitto:",
        "every 30 minutes). A node keeps each message until the pole's edge agent says it is on the",
        "pole's disk: after each group commit the agent publishes, on `openpole/v1/<node>/ack`, the runs",
        "of (boot, seq) it stored, as CBOR `[[boot, first, last], ...]`. The node frees its outbox from",
        "the oldest message while a run covers it, and sends the rest again (MQTT DUP set) when no ack",
        "came within its ack timeout (`ack_timeout_s`, 30 s). A box that ignores acks still conforms;",
        "it just loses what the broker held when the pole loses power.",
        "",
        "```cddl",
        ack,
        "```",
        "",
        "### An example",
        "",
        "A street box's message (temperature, humidity and pressure; PM1, PM2.5 and PM10; LAeq, LAmax",
        f"and LAmin), {len(plain)} bytes, made by the node's own encoder:",
        "",
        "```",
        *_hex_lines(plain),
        "```",
        "",
        "In CBOR diagnostic notation (RFC 8949 section 8):",
        "",
        "```",
        diagnostic(cbor2.loads(plain)),
        "```",
        "",
        "The floats went as single precision (5 bytes each) and show their exact value here; the",
        "pole rounds each to its quantity's resolution (21.3700008392334 is 21.37 °C).",
        "",
        "## Keyed nodes: the MAC rule",
        "",
        "A node with a key (32 random bytes, made by `openpole flash` and given to the pole by",
        "`openpole pole init`) sends its message inside a COSE_Mac0 (RFC 9052, CBOR tag 17) with",
        "algorithm HMAC 256/64 (alg 4): the tag is the first 8 bytes of HMAC-SHA-256 over the",
        "MAC_structure `[\"MAC0\", protected, h'', payload]` with the node's key. The pole rejects a",
        "keyed node's unsigned or wrongly signed messages, and counts them.",
        "",
        f"The example above signed with the key `{EXAMPLE_KEY.hex()}` ({len(signed)} bytes):",
        "",
        "```",
        *_hex_lines(signed),
        "```",
        "",
        "```",
        diagnostic(cbor2.loads(signed)),
        "```",
        "",
        "## The schema (CDDL, RFC 8610)",
        "",
        "```cddl",
        cddl,
        "```",
        "",
        "## Upstream: what the pole sends the city",
        "",
        "Batches of SenML records (RFC 8428) in CBOR, posted to the city's receiver:",
        "",
        "```cddl",
        batch,
        "```",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------- bills of materials


def box_md(specs, stem, box):
    from .build import _head, _md_table

    board = specs.boards[box["board"]]
    rows = [(1, f"[{board['name']}](../boards/{box['board']}.md)", f"{specs.chips[board['chip']]['name']}, {board['flash_mb']} MB flash", "the node")]
    for name in box["sensors"]:
        t = specs.sensors[name]
        rows.append((1, f"[{t['model']}](../sensors/{name}.md) ({t['manufacturer']})",
                     ", ".join(m["quantity"] for m in t["measures"]), f"[datasheet]({t['datasheet']})"))
    if box.get("mic"):
        m = specs.mics[box["mic"]]
        rows.append((1, f"[{m['model']}](../mics/{box['mic']}.md) microphone ({m['manufacturer']})",
                     "A-weighted sound levels", f"[datasheet]({m['datasheet']})"))
    for p in box.get("parts", []):
        rows.append((p["qty"], p["part"], p.get("note", ""), ""))
    out = _head(f"{box['name']}")
    out += [box["description"], "", "## Bill of materials", "",
            _md_table(("qty", "part", "what for", "reference"), rows), "",
            "Plus jumper wires or a carrier board, and the node config: see "
            f"[the wiring for this board](../boards/{box['board']}.md#wiring-per-sensor).", ""]
    config = ["[sensors." + s + "]" for s in box["sensors"]] + (
        [f'[sensors.noise]\nmic = "{box["mic"]}"'] if box.get("mic") else [])
    out += ["## Its node settings (site.toml for `openpole flash`)", "", "```toml", "interval_s = 60", *config, "```", ""]
    return "\n".join(out)


def boxes_index_md(specs):
    from .build import _head, _md_table

    rows = [(f"[{b['name']}]({stem}.md)", specs.boards[b["board"]]["name"],
             ", ".join([specs.sensors[s]["model"] for s in b["sensors"]] + ([specs.mics[b["mic"]]["model"]] if b.get("mic") else [])))
            for stem, b in specs.boxes.items()]
    return "\n".join(_head("Box profiles") + [
        "Boxes people build, each with its bill of materials. Any combination of the specs works;",
        "these are tested starting points.", "", _md_table(("box", "board", "sensors"), rows), ""])


# ---------------------------------------------------------------- HTML


CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:0 auto;padding:0 1rem 3rem;color:#222;line-height:1.5}
nav{border-bottom:1px solid #ccc;padding:.6rem 0;margin-bottom:1rem}nav a{margin-right:1rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
pre{background:#f6f6f6;padding:.6rem;overflow-x:auto}code{font-size:.95em}img{max-width:100%}
footer{margin-top:2rem;color:#777;font-size:.9em}"""

NAV = [("README.md", "openpole specs"), ("quantities.md", "quantities"), ("payload.md", "payload"),
       ("noise.md", "noise meter"), ("boards/README.md", "boards"), ("boxes/README.md", "boxes")]


def _rel(from_path, to_path):
    import posixpath

    return posixpath.relpath(to_path, posixpath.dirname(from_path) or ".")


def _link_md_to_html(text):
    return re.sub(r'(href="(?![a-z]+:)[^"#]*?)\.md(#[^"]*)?"', lambda m: f'{m.group(1)}.html{m.group(2) or ""}"', text)


def render_html(rel, md_text):
    import markdown

    body = markdown.markdown(md_text, extensions=["tables", "fenced_code", "toc"], output_format="html")
    body = _link_md_to_html(body)
    title = next((ln[2:] for ln in md_text.splitlines() if ln.startswith("# ")), "openpole specs")
    nav = " ".join(f'<a href="{_rel(rel, p)[:-3]}.html">{escape(name)}</a>' for p, name in NAV)
    src = Path(rel).name
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)} · openpole</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<nav>{nav}</nav>\n<main>\n{body}\n</main>\n"
            f'<footer>Generated by <code>openpole spec build</code> from sensor_specs/ and board_defs/. '
            f'Source: <a href="{html.escape(src)}">{html.escape(src)}</a></footer>\n</body>\n</html>\n')


def write_site(files, out_dir):
    """The HTML site from the generated docs: every .md page as HTML beside its Markdown source,
    every drawing as is. Returns the number of pages."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    pages = 0
    for rel, text in files.items():
        if not rel.startswith("docs/specs/"):
            continue
        sub = rel[len("docs/specs/"):]
        dest = out_dir / sub
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        if sub.endswith(".md"):
            dest.with_suffix(".html").write_text(render_html(sub, text))
            pages += 1
    return pages


class _Links:
    """hrefs, srcs and ids of an HTML page."""

    def __init__(self, text):
        from html.parser import HTMLParser

        self.links, self.ids = [], set()
        links, ids = self.links, self.ids

        class P(HTMLParser):
            def handle_starttag(self, tag, attrs):
                for k, v in attrs:
                    if k in ("href", "src") and v:
                        links.append(v)
                    if k == "id" and v:
                        ids.add(v)

        P().feed(text)


def broken_links(site_dir):
    """Internal links of the site that lead nowhere: ['page.html: target', ...]."""
    site_dir = Path(site_dir)
    pages = {p: _Links(p.read_text()) for p in site_dir.rglob("*.html")}
    bad = []
    for page, info in pages.items():
        for link in info.links:
            if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:: not checked offline
                continue
            target, _, frag = link.partition("#")
            path = (page.parent / target).resolve() if target else page
            if not path.is_file() or not path.resolve().is_relative_to(site_dir.resolve()):
                bad.append(f"{page.relative_to(site_dir)}: {link}")
            elif frag and path.suffix == ".html" and frag not in pages.get(path, _Links(path.read_text())).ids:
                bad.append(f"{page.relative_to(site_dir)}: {link} (no such anchor)")
    return bad
