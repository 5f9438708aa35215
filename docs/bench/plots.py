#!/usr/bin/env python3
"""Window sweep for BENCHMARKS.md: runs `chorus bench --json` at each publish window and draws
two SVG plots next to this file, with no dependency beyond Python 3:

- throughput.svg: published msg/s against the window (log scale);
- latency.svg: ack latency p50, p99 and p99.9 against the window.

Run from the repository root, after `cargo build --release`:

    python3 docs/bench/plots.py

The raw figures go to docs/bench/window-sweep.json.
"""

import json
import math
import pathlib
import subprocess

WINDOWS = [1, 4, 16, 64, 256, 1024]
HERE = pathlib.Path(__file__).resolve().parent
CHORUS = pathlib.Path("target/release/chorus")


def messages_for(window):
    """Enough messages for a steady state, few enough that window 1 ends in seconds."""
    return max(2_000, min(50_000, window * 500))


def run(window):
    command = [str(CHORUS), "bench", "--json", "--publish-only", "--window", str(window), "--messages", str(messages_for(window))]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    publish = report["figures"]["publish"]
    return {"window": window, "messages": messages_for(window), **publish}


def svg_plot(path, title, y_label, series, log_y=False):
    """A line plot of series {name: [(window, value)]} with a log2 x axis."""
    width, height, left, right, top, bottom = 640, 400, 70, 20, 40, 50
    xs = [math.log2(x) for x in WINDOWS]
    values = [v for points in series.values() for _, v in points]
    y_of = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    y_min = min(y_of(v) for v in values) if log_y else 0.0
    y_max = max(y_of(v) for v in values)
    if y_max == y_min:
        y_max = y_min + 1

    def px(x, y):
        sx = left + (math.log2(x) - xs[0]) / (xs[-1] - xs[0]) * (width - left - right)
        sy = height - bottom - (y_of(y) - y_min) / (y_max - y_min) * (height - top - bottom)
        return sx, sy

    colors = ["#1f77b4", "#d62728", "#2ca02c"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle">publish window (requests in flight)</text>',
        f'<text x="15" y="{height / 2}" text-anchor="middle" transform="rotate(-90 15 {height / 2})">{y_label}</text>',
    ]
    for window in WINDOWS:
        x, _ = px(window, values[0])
        parts.append(f'<text x="{x}" y="{height - bottom + 16}" text-anchor="middle">{window}</text>')
    for i in range(5):
        y_value = y_min + (y_max - y_min) * i / 4
        label = 10 ** y_value if log_y else y_value
        y = height - bottom - (y_value - y_min) / (y_max - y_min) * (height - top - bottom)
        text = f"{label:,.0f}" if label >= 10 else f"{label:.2g}"
        parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{text}</text>')
        parts.append(f'<line x1="{left}" y1="{y}" x2="{width - right}" y2="{y}" stroke="#ddd"/>')
    for (name, points), color in zip(series.items(), colors):
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in (px(w, v) for w, v in points))
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        for w, v in points:
            x, y = px(w, v)
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
        index = list(series).index(name)
        parts.append(f'<text x="{left + 10}" y="{top + 14 + 16 * index}" fill="{color}">{name}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main():
    rows = []
    for window in WINDOWS:
        row = run(window)
        print(f"window {window:>5}: {row['msg_per_s']:>9,.0f} msg/s, p50 {row['ack_p50_ms']:.2f} ms, "
              f"p99 {row['ack_p99_ms']:.2f} ms, p99.9 {row['ack_p999_ms']:.2f} ms ({row['messages']} messages)")
        rows.append(row)
    (HERE / "window-sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    svg_plot(HERE / "throughput.svg", "Chorus publish throughput, 3 brokers, fsync on a majority",
             "msg/s", {"msg/s": [(r["window"], r["msg_per_s"]) for r in rows]})
    svg_plot(HERE / "latency.svg", "Chorus ack latency percentiles", "ms (log scale)", {
        "p50": [(r["window"], r["ack_p50_ms"]) for r in rows],
        "p99": [(r["window"], r["ack_p99_ms"]) for r in rows],
        "p99.9": [(r["window"], r["ack_p999_ms"]) for r in rows],
    }, log_y=True)


if __name__ == "__main__":
    main()
