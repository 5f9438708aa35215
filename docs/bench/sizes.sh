#!/usr/bin/env bash
# The side-by-side table across payload sizes in BENCHMARKS.md: one `chorus bench --peer nats`
# run per payload size, publisher (`Producer` or `--raw`) and window (256 or 1), each printing
# Chorus, NATS `always` and NATS default in one JSON object into docs/bench/sizes/, then writes
# the plot docs/bench/mbps.svg and prints the table (docs/bench/table_sizes.py). Run from the
# repository root, after `cargo build --release -p chorus --features nats`. About 8 minutes on 2
# cores.
set -eu
B=target/release/chorus
OUT=docs/bench/sizes
mkdir -p "$OUT"
run() {
  name=$1; shift
  echo "$name: chorus bench --peer nats --publish-only --json $*" >&2
  "$B" bench --peer nats --publish-only --json "$@" > "$OUT/$name.json"
}
for mode in producer raw; do
  flag=""; [ "$mode" = raw ] && flag="--raw"
  run "$mode-100-w256" $flag --size 100 --messages 200000 --window 256
  run "$mode-1k-w256" $flag --size 1024 --messages 100000 --window 256
  run "$mode-16k-w256" $flag --size 16384 --messages 30000 --window 256
  run "$mode-256k-w256" $flag --size 262144 --messages 2000 --window 256
  run "$mode-100-w1" $flag --size 100 --messages 2000 --window 1
  run "$mode-1k-w1" $flag --size 1024 --messages 2000 --window 1
  run "$mode-16k-w1" $flag --size 16384 --messages 1000 --window 1
  run "$mode-256k-w1" $flag --size 262144 --messages 300 --window 1
done
python3 docs/bench/plot_mbps.py "$OUT"/*-w256.json > docs/bench/mbps.svg
python3 docs/bench/table_sizes.py "$OUT"
