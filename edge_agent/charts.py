"""The pole page's charts: SVG drawn here, a few lines of the project's own (no plotting library,
no script). A gap in the data is a gap in the line; a point alone between gaps is a dot."""

import html
import math
import time


def esc(x):
    return html.escape(str(x), quote=True)


def bucket(rows, width_s, level=False):
    """Minutes into width_s buckets: (start, mean, min, max); decibels averaged as energy."""
    if width_s <= 60:
        return rows
    acc = {}
    for minute, mean, lo, hi in rows:
        b = acc.setdefault(minute - minute % width_s, [0, 0.0, lo, hi])
        b[0] += 1
        b[1] += 10 ** (mean / 10) if level else mean
        b[2], b[3] = min(b[2], lo), max(b[3], hi)
    out = []
    for start, (n, total, lo, hi) in sorted(acc.items()):
        out.append((start, 10 * math.log10(total / n) if level else total / n, lo, hi))
    return out


DASHES = ("", "6 3", "2 3")
CHART_W, CHART_H, PAD_L, PAD_B = 600, 150, 48, 22


def svg_chart(cid, title, t0, t1, lines, band=None, unit="", step_s=60):
    """lines: [(label, [(t, v)])]; band: [(t, lo, hi)] drawn behind. A gap in the data (more than
    two steps without a point) is a gap in the line: a sensor that sleeps is not a zero."""
    values = [v for _, pts in lines for _, v in pts] + [x for _, lo, hi in (band or []) for x in (lo, hi)]
    if not values:
        return f'<p class="empty">{esc(title)}: no data in this period.</p>'
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = (hi - lo) * 0.08
    lo, hi = lo - pad, hi + pad
    w, h = CHART_W - PAD_L - 6, CHART_H - PAD_B - 6

    def x(t):
        return PAD_L + (t - t0) / max(1, t1 - t0) * w

    def y(v):
        return 6 + (hi - v) / (hi - lo) * h

    def path(points):
        """The line's path, and a dot for each point that stands alone between gaps."""
        d, dots, last = [], [], None
        for i, (t, v) in enumerate(points):
            starts = last is None or t - last > 2 * step_s
            ends = i + 1 == len(points) or points[i + 1][0] - t > 2 * step_s
            d.append(f"{'M' if starts else 'L'}{x(t):.1f} {y(v):.1f}")
            if starts and ends:
                dots.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="3"/>')
            last = t
        return " ".join(d), "".join(dots)

    parts = [f'<svg viewBox="0 0 {CHART_W} {CHART_H}" role="img" aria-labelledby="{cid}-t {cid}-d" class="chart">',
             f'<title id="{cid}-t">{esc(title)}</title>']
    summary = "; ".join(f"{label}: last {pts[-1][1]:.1f} {unit}, from {min(v for _, v in pts):.1f} to "
                        f"{max(v for _, v in pts):.1f}" for label, pts in lines if pts)
    parts.append(f'<desc id="{cid}-d">{esc(summary)}</desc>')
    decimals = max(0, min(4, 1 - math.floor(math.log10(hi - lo))))  # labels that differ: 1015.2, 1015.4
    for frac in (0, 0.5, 1):
        v = lo + (hi - lo) * frac
        parts.append(f'<line x1="{PAD_L}" x2="{CHART_W - 6}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
                     f'<text x="{PAD_L - 4}" y="{y(v) + 4:.1f}" class="axis" text-anchor="end">{v:.{decimals}f}</text>')
    for frac in (0, 0.5, 1):
        t = t0 + (t1 - t0) * frac
        anchor = ("start", "middle", "end")[int(frac * 2)]
        parts.append(f'<text x="{x(t):.1f}" y="{CHART_H - 6}" class="axis" text-anchor="{anchor}">'
                     f'{time.strftime("%H:%M", time.localtime(t))}</text>')
    if band:
        segs, cur, last = [], [], None
        for t, blo, bhi in band:
            if last is not None and t - last > 2 * step_s:
                segs.append(cur)
                cur = []
            cur.append((t, blo, bhi))
            last = t
        segs.append(cur)
        for seg in segs:
            if len(seg) > 1:
                pts = [f"{x(t):.1f},{y(b):.1f}" for t, _, b in seg] + [f"{x(t):.1f},{y(a):.1f}" for t, a, _ in reversed(seg)]
                parts.append(f'<polygon points="{" ".join(pts)}" class="band"/>')
    for i, (label, pts) in enumerate(lines):
        if pts:
            dash = f' stroke-dasharray="{DASHES[i % 3]}"' if DASHES[i % 3] else ""
            d, dots = path(pts)
            parts.append(f'<path d="{d}" class="line l{i}"{dash}><title>{esc(label)}</title></path>'
                         + (f'<g class="dots l{i}">{dots}</g>' if dots else ""))
    parts.append("</svg>")
    return "".join(parts)
