#!/usr/bin/env bash
# Broker CPU per message at light load, alternating: two middleman builds (A, B) and
# nats-server take turns, a fresh broker per run, on the loads of issue 10, with measure.sh's
# perf-stat counts; prints the medians per load and broker (median.py).
#
# Usage: loadtest/cost/ab.sh A_BINARY B_BINARY [OUT.jsonl]
#   ROUNDS (default 3), SCENS (default "reqres 1to1 4to4 1to1k"), RATE is set per load.
# Example (main against a candidate, both built with cargo build --release --bin middleman):
#   loadtest/cost/ab.sh /tmp/base/middleman target/release/middleman /tmp/cost.jsonl
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
A=$1; B=$2; OUT=${3:-$(mktemp -d)/cost.jsonl}
RUNS=$(mktemp -d)
: > "$OUT"
for i in $(seq "${ROUNDS:-3}"); do
  for s in ${SCENS:-reqres 1to1 4to4 1to1k}; do
    for b in A B nats; do
      case $b in A) bin=$A ;; B) bin=$B ;; nats) bin=nats ;; esac
      scen=$s; rate=10k
      [[ $s == 1to1k ]] && { scen=1to1; rate=1k; }
      RATE=$rate "$HERE/measure.sh" "$bin" "$scen" "$RUNS/cost-$s-$b-$i" count 2>/dev/null | tail -1 >> "$OUT"
    done
  done
done
python3 "$HERE/median.py" "$OUT"
echo "runs: $RUNS, summary lines: $OUT"
