#!/usr/bin/env python3
"""Draws docs/bench/mbps.svg: MB/s of payload against payload size, from the JSON that
`chorus bench --peer nats --publish-only --json` printed for each size (see BENCHMARKS.md).

usage: plot_mbps.py docs/bench/sizes/*-w256.json > docs/bench/mbps.svg (docs/bench/sizes.sh runs it)
Files whose conditions say "one message per request" are the --raw line; NATS's lines come
from the Producer runs. Standard library only."""
import json, math, sys

series = {}  # name -> {size: MB/s}
for path in sys.argv[1:]:
    run = json.load(open(path))
    size = run["conditions"]["payload_bytes"]
    raw = run["conditions"]["publisher"] == "one message per request"
    def mbps(publish):
        return publish["msg_per_s"] * size / 1e6
    series.setdefault("Chorus, --raw" if raw else "Chorus, Producer", {})[size] = mbps(run["figures"]["publish"])
    if not raw:
        for peer in run["figures"].get("peers", []):
            series.setdefault(peer["system"], {})[size] = mbps(peer["publish"])

W, H, L, R, T, B = 720, 420, 70, 250, 30, 50
sizes = sorted({s for points in series.values() for s in points})
top = max(v for points in series.values() for v in points.values()) * 1.1
x = lambda s: L + (math.log(s) - math.log(sizes[0])) / (math.log(sizes[-1]) - math.log(sizes[0])) * (W - L - R)
y = lambda v: H - B - v / top * (H - T - B)
colours = ["#1f77b4", "#6baed6", "#d62728", "#ff9896"]
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
       f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>',
       f'<text x="{(L+W-R)/2}" y="{H-12}" text-anchor="middle">payload bytes per message (log scale), 256 in flight</text>',
       f'<text x="16" y="{(T+H-B)/2}" transform="rotate(-90 16 {(T+H-B)/2})" text-anchor="middle">MB/s of payload, acknowledged</text>']
for s in sizes:
    out.append(f'<text x="{x(s)}" y="{H-B+16}" text-anchor="middle">{s:,}</text>')
step = 10 ** math.floor(math.log10(top / 4))
step *= 2 if top / step > 10 else 1
v = 0.0
while v <= top:
    out.append(f'<line x1="{L-4}" y1="{y(v)}" x2="{W-R}" y2="{y(v)}" stroke="#eee"/>')
    out.append(f'<text x="{L-8}" y="{y(v)+4}" text-anchor="end">{v:g}</text>')
    v += step
for i, (name, points) in enumerate(sorted(series.items())):
    c = colours[i % len(colours)]
    path = " ".join(f"{x(s):.1f},{y(points[s]):.1f}" for s in sorted(points))
    out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
    for s in sorted(points):
        out.append(f'<circle cx="{x(s):.1f}" cy="{y(points[s]):.1f}" r="3" fill="{c}"/>')
    out.append(f'<rect x="{W-R+15}" y="{T+i*20}" width="14" height="3" fill="{c}"/>')
    out.append(f'<text x="{W-R+35}" y="{T+i*20+5}">{name}</text>')
out.append("</svg>")
print("\n".join(out))
