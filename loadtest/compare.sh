#!/usr/bin/env bash
# Compares middleman with nats-server (its WebSocket listener) on the same loads, driven by
# middleman-loadtest, and prints a Markdown table of medians with middleman/NATS ratios.
#
# Usage: loadtest/compare.sh [OUTPUT.md]
#
# Each broker is pinned to its own CPU(s) with taskset and the generator to others, every
# scenario runs COMPARE_RUNS times per broker (alternating brokers, a fresh broker process per
# run), and the table holds the medians. Environment:
#   COMPARE_DURATION     measured seconds per run            (default 10s; e.g. 1s for a smoke run)
#   COMPARE_WARMUP       warm-up per run                      (default 2s)
#   COMPARE_RUNS         runs per scenario and broker         (default 3)
#   COMPARE_CONNECTIONS  idle connections in the memory test  (default 10000)
#   COMPARE_BROKER_CPUS  CPUs for the broker, taskset syntax  (default 1)
#   COMPARE_GEN_CPUS     CPUs for the generator, comma list   (default 0; one thread per CPU)
#   COMPARE_SCENARIOS    only scenarios whose label contains this text (default: all)
#   MIDDLEMAN_BIN        broker binary         (default: cargo build --release)
#   LOADTEST_BIN         generator binary      (default: cargo build --release)
# Everything listens on and connects to 127.0.0.1 only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTPUT="${1:-}"
DURATION="${COMPARE_DURATION:-10s}"
WARMUP="${COMPARE_WARMUP:-2s}"
RUNS="${COMPARE_RUNS:-3}"
CONNECTIONS="${COMPARE_CONNECTIONS:-10000}"
BROKER_CPUS="${COMPARE_BROKER_CPUS:-1}"
GEN_CPUS="${COMPARE_GEN_CPUS:-0}"
ONLY="${COMPARE_SCENARIOS:-}"
GEN_THREADS="$(awk -F, '{print NF}' <<<"$GEN_CPUS")"

log() { echo "compare: $*" >&2; }

# --- binaries -------------------------------------------------------------------------------
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [[ -z "${MIDDLEMAN_BIN:-}" || -z "${LOADTEST_BIN:-}" ]]; then
    log "building release binaries"
    (cd "$ROOT" && cargo build --release --bin middleman --bin middleman-loadtest >&2)
fi
MIDDLEMAN_BIN="${MIDDLEMAN_BIN:-$TARGET/release/middleman}"
LOADTEST_BIN="${LOADTEST_BIN:-$TARGET/release/middleman-loadtest}"

if ! command -v nats-server >/dev/null; then
    log "installing nats-server with apt-get"
    if ! apt-get install -y nats-server >&2; then
        apt-get update >&2 && apt-get install -y nats-server >&2
    fi
fi
NATS_BIN="$(command -v nats-server)"
log "nats-server: $("$NATS_BIN" --version 2>&1 | head -1)"

# Both brokers need a descriptor per connection.
ulimit -n "$(ulimit -Hn)" || true

WORK="$(mktemp -d /tmp/mm-compare.XXXXXX)"
BROKER_PID=""
cleanup() {
    [[ -n "$BROKER_PID" ]] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# Waits until file $1 has a line matching $2 and prints the URL after $3 in it.
wait_for_url() {
    local file="$1" pattern="$2" prefix="$3"
    for _ in $(seq 1 300); do
        if grep -q "$pattern" "$file" 2>/dev/null; then
            grep -m1 "$pattern" "$file" | sed -e "s|.*$prefix||" -e 's|[[:space:]]*$||'
            return 0
        fi
        sleep 0.1
    done
    log "broker did not start; its output:"
    cat "$file" >&2
    return 1
}

# Starts broker $1 (middleman | nats); sets BROKER_PID and BROKER_URL.
start_broker() {
    case "$1" in
        middleman)
            taskset -c "$BROKER_CPUS" "$MIDDLEMAN_BIN" --listen 127.0.0.1:0 \
                --service-key xyzzy --client-key plugh >"$WORK/broker.out" 2>"$WORK/broker.err" &
            BROKER_PID=$!
            BROKER_URL="$(wait_for_url "$WORK/broker.out" "listening on " "listening on ")/"
            ;;
        nats)
            cat >"$WORK/nats.conf" <<'EOF'
listen: 127.0.0.1:-1
websocket {
  listen: "127.0.0.1:-1"
  no_tls: true
}
EOF
            taskset -c "$BROKER_CPUS" "$NATS_BIN" -c "$WORK/nats.conf" >"$WORK/broker.out" 2>&1 &
            BROKER_PID=$!
            BROKER_URL="$(wait_for_url "$WORK/broker.out" "Listening for websocket clients on " \
                "Listening for websocket clients on ")/"
            ;;
    esac
    sleep 0.3
}

stop_broker() {
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

# --- scenarios ------------------------------------------------------------------------------
# label | loadtest arguments after the common ones
SCENARIOS=(
    "fan-out 1→1, 128 B|fanout --publishers 1 --subscribers 1 --payload 128 --rate max"
    "fan-out 1→100, 128 B|fanout --publishers 1 --subscribers 100 --payload 128 --rate max"
    "fan-out 1→1000, 128 B|fanout --publishers 1 --subscribers 1000 --payload 128 --rate max"
    "fan-out 4→4, 16 B|fanout --publishers 4 --subscribers 4 --topics 1 --payload 16 --rate max"
    "fan-out 1→1000, 4 KiB|fanout --publishers 1 --subscribers 1000 --payload 4KiB --rate max"
    "fan-out 1→100, 128 B, 10k msg/s open loop|fanout --publishers 1 --subscribers 100 --payload 128 --rate 10k"
    "req/res 1 requester, Q=1|reqres --requesters 1 --outstanding 1 --responders 1 --payload 128"
    "req/res 50 requesters, 2 responders|reqres --requesters 50 --outstanding 1 --responders 2 --payload 16"
    "$CONNECTIONS idle connections|connections --count $CONNECTIONS"
)

RESULTS="$WORK/runs.tsv"
: >"$RESULTS"
for entry in "${SCENARIOS[@]}"; do
    label="${entry%%|*}"
    args="${entry#*|}"
    if [[ -n "$ONLY" && "$label" != *"$ONLY"* ]]; then
        continue
    fi
    for run in $(seq 1 "$RUNS"); do
        for broker in middleman nats; do
            start_broker "$broker"
            protocol="$broker"
            log "$label: $broker run $run/$RUNS"
            # shellcheck disable=SC2086 # $args is a list of words on purpose
            if report="$(timeout 600 "$LOADTEST_BIN" --protocol "$protocol" --url "$BROKER_URL" \
                --server-pid "$BROKER_PID" --cpus "$GEN_CPUS" --threads "$GEN_THREADS" \
                --duration "$DURATION" --warmup "$WARMUP" --json $args)"; then
                printf '%s\t%s\t%s\n' "$label" "$broker" "$report" >>"$RESULTS"
            else
                log "$label: $broker run $run failed"
                printf '%s\t%s\tfailed\n' "$label" "$broker" >>"$RESULTS"
            fi
            stop_broker
        done
    done
done

{
    echo "## middleman vs NATS (WebSocket), medians of $RUNS runs"
    echo
    echo "$(date -u +%Y-%m-%d), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),"
    echo "brokers on CPU $BROKER_CPUS, generator on CPU $GEN_CPUS; $DURATION measured after $WARMUP warm-up;"
    echo "$("$NATS_BIN" --version 2>&1 | head -1); fan-out at \`--rate max\` keeps each publisher at most"
    echo "1000 messages (and 256 KiB of bodies) ahead of its slowest subscriber."
    echo
    "$LOADTEST_BIN" summarize "$RESULTS"
} >"$WORK/table.md"

cat "$WORK/table.md"
if [[ -n "$OUTPUT" ]]; then
    cp "$WORK/table.md" "$OUTPUT"
    cp "$RESULTS" "${OUTPUT%.md}.runs.tsv"
    log "wrote $OUTPUT and ${OUTPUT%.md}.runs.tsv"
fi
