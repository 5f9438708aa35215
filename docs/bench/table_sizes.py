#!/usr/bin/env python3
"""The side-by-side table of BENCHMARKS.md from the JSON that docs/bench/sizes.sh writes.

Usage: python3 docs/bench/table_sizes.py docs/bench/sizes > table.md

One row per run, in the order sizes.sh runs them: msg/s (MB/s of payload) and ack p99 for Chorus
and both NATS modes, Chorus's throughput as a multiple of each, and Chorus's ack p50.
"""

import json
import sys
from pathlib import Path

SIZES = [("100", "100 B"), ("1k", "1 KiB"), ("16k", "16 KiB"), ("256k", "256 KiB")]
PUBLISHERS = [("producer", "`Producer`"), ("raw", "`--raw`")]
WINDOWS = [("w256", "256 in flight"), ("w1", "1 in flight")]


def cell(publish, payload_bytes):
    rate = publish["msg_per_s"]
    mb_per_s = rate * payload_bytes / 1e6
    return f"{rate:,.0f} ({mb_per_s:.1f} MB/s), {publish['ack_p99_ms']:.1f} ms"


def peer(figures, mode):
    for run in figures["peers"]:
        if mode in run["system"]:
            return run
    raise SystemExit(f"no NATS run with {mode!r} in its name")


def row(path, label):
    run = json.loads(path.read_text())
    payload_bytes = run["conditions"]["payload_bytes"]
    figures = run["figures"]
    always, default = peer(figures, "always"), peer(figures, "default")
    cells = [
        cell(figures["publish"], payload_bytes),
        cell(always["publish"], payload_bytes),
        cell(default["publish"], payload_bytes),
        f"{always['chorus_throughput_ratio']:.2f}x",
        f"{default['chorus_throughput_ratio']:.2f}x",
        f"{figures['publish']['ack_p50_ms']:.2f}",
    ]
    return f"| {label} | " + " | ".join(cells) + " |"


def main():
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/bench/sizes")
    print("| run | Chorus | NATS `always` | NATS default | vs `always` | vs default | Chorus p50 ms |")
    print("|---|---|---|---|---|---|---|")
    for window, window_label in WINDOWS:
        for publisher, publisher_label in PUBLISHERS:
            for size, size_label in SIZES:
                path = directory / f"{publisher}-{size}-{window}.json"
                print(row(path, f"{publisher_label}, {size_label}, {window_label}"))


if __name__ == "__main__":
    main()
