#!/usr/bin/env bash
# One measured run of one broker on one light load: its CPU, syscalls, io_uring SQEs and
# context switches per message (perf stat on the broker's pid), for issue 10's cost tables.
# Needs perf (Debian: linux-perf) and root, or perf_event_paranoid <= 1.
#
# Usage: measure.sh BROKER SCENARIO OUTDIR MODE
#   BROKER:   nats, or the path of a middleman binary
#   SCENARIO: 1to1 | 4to4 | reqres
#   MODE:     count   - perf stat (in-kernel counters) + perf record of every syscall entry and
#                       io_uring SQE (for the per-syscall / per-opcode breakdown)
#             profile - perf record -e cpu-clock -F 4999 (user vs kernel, top symbols)
# The broker runs on CPU 1 (--shards 1 for middleman), the generator on CPU 0. The generator
# runs 2 s warm-up + 9 s window; the perf window is t=3..(3+WIN) s, inside the load window.
set -euo pipefail
BROKER="$1"; SCEN="$2"; OUT="$3"; MODE="$4"
mkdir -p "$OUT"
HERE=$(cd "$(dirname "$0")" && pwd)
LT=${LOADTEST_BIN:-$HERE/../../target/release/middleman-loadtest}
PORT=$(( 20000 + RANDOM % 20000 ))
WIN=${WIN:-6}
# nice -20 for broker and generator: the machine is shared with compile jobs, and their
# preemption of either side changes how many messages arrive per wake-up.
NICE=${NICE-nice -n -20}
RATE=${RATE:-10k}
case "$SCEN" in
  1to1)   ARGS=(fanout --publishers 1 --subscribers 1 --payload 128 --rate "$RATE") ;;
  4to4)   ARGS=(fanout --publishers 4 --subscribers 4 --topics 1 --payload 16 --rate "$RATE") ;;
  reqres) ARGS=(reqres --requesters 1 --outstanding 1 --responders 1 --payload 128) ;;
  *) echo "bad scenario" >&2; exit 2 ;;
esac
if [[ "$BROKER" == nats ]]; then
  cat > "$OUT/nats.conf" <<NC
listen: 127.0.0.1:-1
websocket {
  listen: "127.0.0.1:$PORT"
  no_tls: true
}
NC
  $NICE taskset -c 1 nats-server -c "$OUT/nats.conf" >"$OUT/broker.log" 2>&1 &
  PROTO=nats
else
  $NICE taskset -c 1 "$BROKER" --listen 127.0.0.1:$PORT --shards 1 --service-key xyzzy --client-key plugh \
     >"$OUT/broker.log" 2>&1 &
  PROTO=middleman
fi
PID=$!
for _ in $(seq 100); do ss -ltn | grep -q ":$PORT " && break; sleep 0.05; done
sleep 0.3
$NICE "$LT" --protocol $PROTO --url ws://127.0.0.1:$PORT/ --cpus 0 --server-pid $PID --warmup 2s \
   --duration 9s --drain 2s --json "${ARGS[@]}" >"$OUT/lt.json" 2>"$OUT/lt.err" &
LTPID=$!
sleep 3
read -r u0 s0 < <(awk '{print $14, $15}' /proc/$PID/stat)
t0=$(date +%s.%N)
if [[ $MODE == count ]]; then
  if [[ -n "${TRACE:-}" ]]; then
    perf record -q -e raw_syscalls:sys_enter -e io_uring:io_uring_submit_req -p $PID \
       -o "$OUT/sys.data" -- sleep "$WIN" >/dev/null 2>&1 &
    PRPID=$!
  fi
  SC=""; for s in io_uring_enter membarrier recvfrom sendmsg read write writev epoll_pwait futex nanosleep sched_yield; do SC="$SC,syscalls:sys_enter_$s"; done
  perf stat -x, -o "$OUT/perf.csv" -p $PID -e task-clock,context-switches,cpu-migrations,raw_syscalls:sys_enter,io_uring:io_uring_submit_req,io_uring:io_uring_task_work_run,ipi:ipi_send_cpu,sched:sched_wakeup$SC -- sleep "$WIN"
  [[ -n "${TRACE:-}" ]] && wait $PRPID || true
else
  perf record -q -e cpu-clock -F 4999 ${PROF_G:-} -p $PID -o "$OUT/prof.data" -- sleep "$WIN" >/dev/null 2>&1
fi
t1=$(date +%s.%N)
read -r u1 s1 < <(awk '{print $14, $15}' /proc/$PID/stat)
wait $LTPID || true
kill $PID 2>/dev/null; wait $PID 2>/dev/null || true
echo "utime_ticks=$((u1-u0)) stime_ticks=$((s1-s0)) window_s=$(echo "$t1 - $t0" | bc)" > "$OUT/stat.txt"
if [[ $MODE == count ]]; then
  if [[ -n "${TRACE:-}" ]]; then
    perf script -i "$OUT/sys.data" -F event,trace 2>/dev/null > "$OUT/sys.txt" || true
    rm -f "$OUT/sys.data"
  fi
else
  perf report -i "$OUT/prof.data" --sort dso --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' > "$OUT/dso.txt" || true
  [[ -n "${PROF_G:-}" ]] && perf report -i "$OUT/prof.data" --children --sort sym --stdio -g none 2>/dev/null | grep -v "^#" | grep -v "^$" | head -150 > "$OUT/children.txt" || true
  perf report -i "$OUT/prof.data" --no-children --sort sym --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -60 > "$OUT/sym.txt" || true
fi
python3 "$HERE/summarize.py" "$OUT" "$MODE"
