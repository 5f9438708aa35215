#!/usr/bin/env bash
# Interleaved `chorus bench --json` runs of two binaries, to tell a change from noise on a shared
# machine: runs in the order A B B A A B, one summary line each, and every run's JSON kept in
# OUT (one object per line).
#
#   docs/bench/interleave.sh <binary A> <binary B> [OUT] [extra bench arguments...]
#
# Build A at the commit before the change, e.g.
#   git worktree add /tmp/before <commit> && (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release)
set -u
if [ $# -lt 2 ]; then
  echo "usage: $0 <binary A> <binary B> [OUT] [bench args...]" >&2
  exit 2
fi
A=$1; B=$2; OUT=${3:-interleave.jsonl}; shift 3 2>/dev/null || shift $#
: > "$OUT"
for side in A B B A A B; do
  binary=$A; [ "$side" = B ] && binary=$B
  run=$("$binary" bench --json "$@" 2>/dev/null | tail -1)
  echo "{\"side\":\"$side\",\"run\":$run}" >> "$OUT"
  python3 -c '
import json, sys
line = json.loads(sys.argv[1]); figures = line["run"]["figures"]
publish = figures["publish"]
print(line["side"], "publish %.0f msg/s, p99 %.2f ms;" % (publish["msg_per_s"], publish["ack_p99_ms"]),
      "work queue %.0f tasks/s;" % figures["work_queue"]["tasks_per_s"],
      "fan-out %.0f deliveries/s" % figures["fanout"]["deliveries_per_s"])
' "$(tail -1 "$OUT")"
done
