#!/usr/bin/env python3
"""Plot fold cost per message against history length, from `cargo bench --bench fold` output.

Usage:
    FOLD_HISTORY=1000,10000,30000,100000 cargo bench --bench fold -- fold/ > after.log
    python3 scripts/fold_plot.py before=before.log after=after.log > docs/fold_cost.svg

Each argument is LABEL=FILE: a saved criterion output. The script reads every
`fold/messages_commit_every_1000/<messages>` result (criterion's median, the middle value of its
`time:` estimate), divides it by the message count and draws one line per file: microseconds per
message (y) against the conversation's history in messages (x, log scale). Standard library only.
"""

import math
import re
import sys

NAME = re.compile(r"^fold(?:@thread-cpu)?/messages_commit_every_1000/(\d+)\s*(.*)$")
TIME = re.compile(r"time:\s*\[\s*[\d.]+ \S+\s+([\d.]+) (ns|µs|us|ms|s)\s+[\d.]+ \S+\s*\]")
UNIT_US = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}
COLOURS = ["#c0392b", "#2471a3", "#27ae60", "#8e44ad"]


def parse(path):
    """(messages, µs per message) for every fold result in a criterion log."""
    points = {}
    pending = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            m = NAME.match(line)
            if m:
                pending = int(m.group(1))
                line = m.group(2)
            t = TIME.search(line)
            if t and pending is not None:
                total_us = float(t.group(1)) * UNIT_US[t.group(2)]
                points[pending] = total_us / pending
                pending = None
    return sorted(points.items())


def svg(series):
    width, height, left, right, top, bottom = 640, 400, 70, 50, 40, 50
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    if not xs:
        sys.exit("no fold results found in the given files")
    lo, hi = math.log10(min(xs)), math.log10(max(xs))
    if hi == lo:
        hi = lo + 1
    ymax = max(ys) * 1.15

    def px(x):
        return left + (math.log10(x) - lo) / (hi - lo) * (width - left - right)

    def py(y):
        return top + (1 - y / ymax) * (height - top - bottom)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">'
        "Fold cost per message vs conversation history (cargo bench --bench fold)</text>",
        f'<line x1="{left}" y1="{py(0)}" x2="{width - right}" y2="{py(0)}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{py(0)}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle">'
        "history (messages, log scale)</text>",
        f'<text x="15" y="{height / 2}" text-anchor="middle" '
        f'transform="rotate(-90 15 {height / 2})">µs per message</text>',
    ]
    for e in range(math.floor(lo), math.ceil(hi) + 1):
        x = 10**e
        if lo - 1e-9 <= e <= hi + 1e-9:
            out.append(f'<line x1="{px(x)}" y1="{py(0)}" x2="{px(x)}" y2="{py(0) + 5}" stroke="black"/>')
            out.append(f'<text x="{px(x)}" y="{py(0) + 18}" text-anchor="middle">{x:,}</text>')
    step = 10 ** math.floor(math.log10(ymax / 2)) if ymax > 0 else 1
    y = 0.0
    while y <= ymax:
        out.append(f'<line x1="{left - 5}" y1="{py(y)}" x2="{width - right}" y2="{py(y)}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 8}" y="{py(y) + 4}" text-anchor="end">{y:g}</text>')
        y += step
    for i, (label, pts) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in pts)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, v in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}"/>')
            out.append(f'<text x="{px(x) + 5:.1f}" y="{py(v) - 6:.1f}" fill="{colour}">{v:.1f}</text>')
        out.append(f'<rect x="{left + 15}" y="{top + 10 + 18 * i}" width="12" height="3" fill="{colour}"/>')
        out.append(f'<text x="{left + 32}" y="{top + 15 + 18 * i}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(args):
    if not args:
        sys.exit(__doc__)
    series = []
    for arg in args:
        label, _, path = arg.partition("=")
        if not path:
            sys.exit(f"expected LABEL=FILE, got {arg!r}")
        series.append((label, parse(path)))
    sys.stdout.write(svg(series))


if __name__ == "__main__":
    main(sys.argv[1:])
