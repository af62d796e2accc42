"""Drawings for the spec site, as SVG text: a pin map per board and the noise meter's
A-weighting against IEC 61672-1. From the specs and the firmware's filter constants alone."""

import math
from xml.sax.saxutils import escape

from ..noise import design

BUS_COLOURS = {"i2c": "#1f77b4", "uart_pm": "#2ca02c", "pm": "#2ca02c", "i2s": "#9467bd"}


# ---------------------------------------------------------------- pin maps


def _role_users(specs, role):
    """'BME280 SDA, SHT31 SDA' for a role."""
    users = []
    for t in list(specs.sensors.values()) + list(specs.mics.values()):
        users += [f"{t['model']} {pin}" for pin, target in t["wiring"].items() if target == role]
    return ", ".join(users)


def pinmap_svg(specs, bid, b):
    """Every GPIO of the board's chip, in order: the pins openpole uses labelled with their role and
    the sensor pins that go there; pins that must not be used marked with why."""
    chip = specs.chips[b["chip"]]
    by_gpio = {g: r for r, g in b["pins"].items()}
    reserved = set(b.get("reserved", []))
    rows = ["3V3", "5V", "GND"] + [f"GPIO {g}" for g in chip["gpio"]]
    top, step, w = 60, 18, 860
    h = top + step * len(rows) + 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
           f'font-family="sans-serif" font-size="12" role="img" aria-label="{escape(b["name"])} pin map">',
           f'<title>{escape(b["name"])}: pin map</title>',
           f'<text x="20" y="24" font-size="16" font-weight="bold">{escape(b["name"])} ({escape(chip["name"])})</text>',
           '<text x="20" y="44" fill="#555">Pins openpole uses, by role; pins to leave alone, with the reason.</text>',
           f'<rect x="20" y="{top - 12}" width="150" height="{step * len(rows) + 6}" rx="8" fill="#f4f4f4" stroke="#333"/>']
    for i, label in enumerate(rows):
        y = top + i * step
        g = int(label.split()[1]) if label.startswith("GPIO") else None
        role = by_gpio.get(g)
        colour, note = "#bbb", ""
        if label in ("3V3", "5V"):
            colour, note = "#d62728", "power: sensor VIN/VCC (see the wiring tables)"
        elif label == "GND":
            colour, note = "#000", "ground"
        elif role:
            colour = BUS_COLOURS.get(role.split(".")[0], "#ff7f0e")
            note = f"{role} ({specs.roles[role]}): {_role_users(specs, role)}"
        elif g in chip["flash_pins"]:
            colour, note = "#eee", "do not use: wired to the SPI flash"
        elif g in reserved:
            colour, note = "#eee", "do not use: reserved on this board"
        elif g in chip.get("console_pins", []):
            colour, note = "#eee", "do not use: the serial console and flasher"
        elif g in chip["strapping"]:
            colour, note = "#fff", "strapping pin: free, but a sensor on it can stop boot"
        elif g in chip["input_only"]:
            colour, note = "#fff", "free (input only)"
        out.append(f'<text x="150" y="{y + 4}" text-anchor="end">{escape(label)}</text>')
        out.append(f'<circle cx="170" cy="{y}" r="5" fill="{colour}" stroke="#333"/>')
        if note:
            weight = ' font-weight="bold"' if role else ""
            fill = "#333" if role or label in ("3V3", "5V", "GND") else "#777"
            out.append(f'<line x1="175" y1="{y}" x2="200" y2="{y}" stroke="{colour if role else "#ccc"}" stroke-width="2"/>')
            out.append(f'<text x="206" y="{y + 4}" fill="{fill}"{weight}>{escape(note)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- A-weighting plot


def _freqs(lo=10.0, hi=20000.0, n=400):
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


def aweighting_svg():
    """The firmware filter's response (its quantised constants) against the IEC 61672-1 curve,
    with the class 1 tolerance band: the response itself, and its deviation from nominal."""
    c = design.constants()
    _, real = design.quantise(design.design())
    g1k = real.gain_db(1000.0)
    tol = {float(f): v for f, v in c["class1_tolerance"].items()}
    w, h = 860, 760
    left, right = 70, w - 30
    panels = [(60, 360, -80.0, 10.0, 10.0, "Response, dB"), (440, 700, -6.0, 6.0, 1.0, "Deviation from nominal, dB")]

    def x(f):
        return left + (right - left) * math.log10(f / 10.0) / math.log10(2000.0)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
           'font-family="sans-serif" font-size="12" role="img" aria-label="A-weighting of the openpole noise meter">',
           "<title>A-weighting: the openpole noise meter's filter against IEC 61672-1</title>",
           '<text x="20" y="24" font-size="16" font-weight="bold">A-weighting at 48 kHz: firmware filter vs IEC 61672-1</text>',
           '<text x="20" y="44" fill="#555">Grey: class 1 tolerance around the nominal curve. Blue: the filter as the node '
           'computes it (quantised constants, gain set at 1 kHz).</text>']
    for top, bottom, lo, hi, grid, label in panels:
        def y(v, top=top, bottom=bottom, lo=lo, hi=hi):
            return bottom - (bottom - top) * (min(max(v, lo), hi) - lo) / (hi - lo)

        out.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="#fff" stroke="#333"/>')
        v = lo
        while v <= hi + 1e-9:
            out.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{right}" y2="{y(v):.1f}" stroke="#eee"/>')
            out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
            v += grid
        for f in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000):
            out.append(f'<line x1="{x(f):.1f}" y1="{top}" x2="{x(f):.1f}" y2="{bottom}" stroke="#eee"/>')
            out.append(f'<text x="{x(f):.1f}" y="{bottom + 16}" text-anchor="middle">{f if f < 1000 else f"{f // 1000}k"}</text>')
        out.append(f'<text x="{(left + right) / 2}" y="{bottom + 34}" text-anchor="middle">Frequency, Hz</text>')
        out.append(f'<text x="18" y="{(top + bottom) / 2}" transform="rotate(-90 18 {(top + bottom) / 2})" '
                   f'text-anchor="middle">{label}</text>')
        # tolerance band: a step per one-third-octave band, around nominal (or around 0 for the deviation)
        nominal = label.startswith("Response")
        upper, lower = [], []
        for f, (up, dn) in sorted(tol.items()):
            fe = design.a_weighting_db(f) if nominal else 0.0
            f0, f1 = f / 2 ** (1 / 6), f * 2 ** (1 / 6)
            f0, f1 = max(f0, 10.0), min(f1, 20000.0)
            dn = lo - 10 if dn == -math.inf else dn
            upper += [(x(f0), y(fe + up)), (x(f1), y(fe + up))]
            lower += [(x(f0), y(fe + dn)), (x(f1), y(fe + dn))]
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in upper + lower[::-1])
        out.append(f'<polygon points="{pts}" fill="#ddd" stroke="none"/>')
        fs = _freqs()
        if nominal:
            nom = " ".join(f"{x(f):.1f},{y(design.a_weighting_db(f)):.1f}" for f in fs)
            out.append(f'<polyline points="{nom}" fill="none" stroke="#333" stroke-width="1.5" stroke-dasharray="5 3"/>')
        fw = " ".join(f"{x(f):.1f},{y(real.gain_db(f) - g1k - (0.0 if nominal else design.a_weighting_db(f))):.1f}" for f in fs)
        out.append(f'<polyline points="{fw}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    out.append(f'<text x="{left + 10}" y="{panels[0][0] + 18}" fill="#333">dashed: IEC 61672-1 nominal A-weighting</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
