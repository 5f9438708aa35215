#!/usr/bin/env bash
# The publish stall of a planned leader transfer against a kill -9 of the leader (BENCHMARKS.md,
# "Leader transfer"). Usage: bash docs/bench/leader_stall.sh [ROUNDS]; run from the repository,
# after `cargo build --release`. Each round, for each of `transfer` and `kill`: a `chorus up
# --insecure` cluster on ports 17100.., `chorus bench --messages 600000 --window 64
# --publish-only` against it, and 2 s in either `chorus leader transfer` or a kill -9 of the
# leader (which `up` restarts). Prints the bench's publish line (max is the stall) per round.
set -euo pipefail
cd "$(dirname "$0")/../.."
C=$PWD/target/release/chorus
B=127.0.0.1:17100,127.0.0.1:17101,127.0.0.1:17102
config=$(mktemp -d)
export CHORUS_CONFIG_DIR=$config
round() {
  local mode=$1 n=$2 dir
  dir=$(mktemp -d)
  "$C" up --insecure --data-dir "$dir/data" --client-port 17100 --peer-port 17200 --metrics-port 17300 > "$dir/up.log" 2>&1 &
  local up=$!
  sleep 5
  "$C" bench --brokers $B --messages 600000 --window 64 --publish-only > "$dir/bench.out" 2>&1 &
  local bench=$!
  sleep 2
  local leader
  leader=$("$C" status --brokers $B --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader_id"])')
  local said=""
  if [ "$mode" = transfer ]; then
    said=$("$C" leader transfer --brokers $B)
  else
    kill -9 "$(pgrep -f "serve --id=$leader --data-dir=$dir/data")"
  fi
  wait $bench
  echo "$mode, round $n (leader was $leader): $(grep -E '^publish' "$dir/bench.out") $said"
  kill -INT $up
  wait $up 2>/dev/null || true
  rm -rf "$dir"
}
for n in $(seq 1 "${1:-3}"); do
  round transfer "$n"
  round kill "$n"
done
rm -rf "$config"
