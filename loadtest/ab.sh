#!/usr/bin/env bash
# A/B of two middleman binaries on one load: runs them alternately, a fresh broker per run,
# and prints each run's delivered/s (fan-out) or requests/s (reqres), then both means.
#
# Usage: loadtest/ab.sh BINARY_A BINARY_B PAIRS -- LOADTEST_ARGS...
#   e.g. loadtest/ab.sh /tmp/mm-before target/release/middleman 4 -- \
#            fanout --publishers 4 --subscribers 4 --payload 16 --rate max --duration 4s --warmup 1s
#
# The broker runs on CPU AB_BROKER_CPU (default 1) with --shards 1, the generator on
# AB_GEN_CPU (default 0), both on 127.0.0.1:AB_PORT (default 9811). Alternating A and B
# spreads the machine's drift over both; on a shared VM trust only differences larger than
# the spread between runs of the same binary.
set -euo pipefail

[[ $# -ge 4 && $4 == "--" ]] || { sed -n '2,12p' "$0" >&2; exit 2; }
A="$1"; B="$2"; PAIRS="$3"; shift 4
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOADTEST_BIN="${LOADTEST_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/middleman-loadtest}"
PORT="${AB_PORT:-9811}"

run() {
    local binary="$1"; shift
    taskset -c "${AB_BROKER_CPU:-1}" "$binary" --listen "127.0.0.1:$PORT" --shards 1 \
        --service-key xyzzy --client-key plugh >/dev/null 2>&1 &
    local pid=$!
    sleep 0.5
    "$LOADTEST_BIN" --url "ws://127.0.0.1:$PORT/" --cpus "${AB_GEN_CPU:-0}" --json "$@" 2>/dev/null |
        python3 -c 'import json, sys; d = json.load(sys.stdin); print(d.get("delivered_per_s") or d["requests_per_s"])'
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

a=(); b=()
for _ in $(seq "$PAIRS"); do
    a+=("$(run "$A" "$@")"); echo "A ${a[-1]}"
    b+=("$(run "$B" "$@")"); echo "B ${b[-1]}"
done
python3 - "${#a[@]}" "${a[@]}" "${b[@]}" <<'EOF'
import statistics, sys
n = int(sys.argv[1])
a, b = [float(x) for x in sys.argv[2:2 + n]], [float(x) for x in sys.argv[2 + n:]]
print(f"mean A {statistics.mean(a):,.0f}  B {statistics.mean(b):,.0f}  B/A {statistics.mean(b) / statistics.mean(a):.3f}")
EOF
