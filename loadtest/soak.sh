#!/usr/bin/env bash
# Soak: a long fan-out at half the measured maximum rate, with idle connections joining and
# leaving the whole time, while the broker's resident memory and open descriptors are sampled.
#
# Usage: loadtest/soak.sh [OUTPUT.md]
#
#   SOAK_DURATION   length of the soak                  (default 600s)
#   SOAK_CHURN      idle connections per churn round    (default 500)
#   MIDDLEMAN_BIN / LOADTEST_BIN   binaries (default: cargo build --release)
#
# It passes when every well-behaved subscriber received every message in order (the generator
# counts loss and order violations per publisher) and prints memory and descriptors at the
# start and the end. Everything runs on 127.0.0.1; the broker on CPU 1, the generator on CPU 0.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUTPUT="${1:-}"
DURATION="${SOAK_DURATION:-600s}"
CHURN="${SOAK_CHURN:-500}"
if [[ -z "${MIDDLEMAN_BIN:-}" || -z "${LOADTEST_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release --bin middleman --bin middleman-loadtest >&2)
fi
MIDDLEMAN_BIN="${MIDDLEMAN_BIN:-$ROOT/target/release/middleman}"
LOADTEST_BIN="${LOADTEST_BIN:-$ROOT/target/release/middleman-loadtest}"
ulimit -n "$(ulimit -Hn)" || true

WORK="$(mktemp -d /tmp/mm-soak.XXXXXX)"
taskset -c 1 "$MIDDLEMAN_BIN" --listen 127.0.0.1:0 --shards 1 --service-key soak-s --client-key soak-c \
    > "$WORK/broker.out" 2> "$WORK/broker.err" &
BROKER=$!
CHURNER=""
cleanup() {
    [[ -n "$CHURNER" ]] && kill "$CHURNER" 2>/dev/null
    kill "$BROKER" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 100); do grep -q "listening on" "$WORK/broker.out" && break; sleep 0.1; done
URL="$(sed -n 's/^listening on \(ws:[^ ]*\)$/\1\//p' "$WORK/broker.out" | head -1)"
GEN=("$LOADTEST_BIN" --url "$URL" --service-key soak-s --client-key soak-c --cpus 0)
FANOUT=(fanout --publishers 1 --subscribers 100 --topics 1 --payload 128)

rss() { awk '/VmRSS/ {print $2}' "/proc/$BROKER/status"; }
fds() { ls "/proc/$BROKER/fd" | wc -l; }

echo "soak: measuring the maximum rate" >&2
MAX_JSON="$("${GEN[@]}" --duration 5s --warmup 1s --json "${FANOUT[@]}" --rate max)"
MAX_PUBLISHED="$(grep -o '"published_per_s":[0-9.]*' <<<"$MAX_JSON" | head -1 | cut -d: -f2)"
RATE="$(awk -v m="$MAX_PUBLISHED" 'BEGIN { printf "%d", m / 2 }')"
echo "soak: max ${MAX_PUBLISHED} msg/s published; soaking at ${RATE} msg/s for ${DURATION}" >&2

# Churn: rounds of idle connections that log in, stay a few seconds and leave.
(
    while true; do
        "${GEN[@]}" --duration 3s --json connections --count "$CHURN" >/dev/null 2>&1 || true
    done
) &
CHURNER=$!

sleep 2
RSS_START="$(rss)"; FDS_START="$(fds)"
"${GEN[@]}" --duration "$DURATION" --warmup 2s --drain 30s --json "${FANOUT[@]}" --rate "$RATE" \
    > "$WORK/soak.json" &
SOAKER=$!
SAMPLES="$WORK/samples.txt"
while kill -0 "$SOAKER" 2>/dev/null; do
    echo "$(date +%s) rss_kib=$(rss) fds=$(fds)" >> "$SAMPLES"
    sleep 30
done
wait "$SOAKER"
kill "$CHURNER" 2>/dev/null; wait "$CHURNER" 2>/dev/null || true; CHURNER=""
sleep 5
RSS_END="$(rss)"; FDS_END="$(fds)"

field() { grep -o "\"$1\":[0-9.]*" "$WORK/soak.json" | head -1 | cut -d: -f2; }
REPORT="$(cat <<EOF
## Soak ($(date -u +%Y-%m-%d), commit $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'))

1 publisher to 100 subscribers, 128 B, ${RATE} msg/s (half of the ${MAX_PUBLISHED} msg/s measured
just before), ${DURATION}, with ${CHURN} idle connections joining and leaving every ~3 s; broker
on CPU 1 with \`--shards 1\`, generator on CPU 0.

| measure | value |
|---|---|
| published (measured window) | $(field published) |
| delivered over the whole run, owed → made | $(field expected_total) → $(field delivered_total) |
| delivered (measured window) | $(field delivered) |
| lost | $(field lost) |
| order violations | $(field order_violations) |
| resident memory, start → end (after churn stopped) | ${RSS_START} KiB → ${RSS_END} KiB |
| open descriptors, start → end | ${FDS_START} → ${FDS_END} |

Samples (every 30 s):

\`\`\`
$(cat "$SAMPLES")
\`\`\`
EOF
)"
echo "$REPORT"
[[ -n "$OUTPUT" ]] && echo "$REPORT" > "$OUTPUT"
