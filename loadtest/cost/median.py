#!/usr/bin/env python3
"""Medians per (scenario, broker) of summarize.py JSON lines: measure runs named PREFIX-SCEN-BROKER-N."""
import collections, json, statistics, sys
keys = ["per_s", "p50_us", "p99_us", "taskclock_us_per_unit", "sys_enter/u", "io_uring_enter/u", "membarrier/u",
        "recvfrom/u", "sendmsg/u", "read/u", "writev/u", "epoll_pwait/u", "futex/u", "nanosleep/u", "sched_yield/u",
        "io_uring_submit_req/u", "io_uring_task_work_run/u", "context-switches/u", "sched_wakeup/u"]
short = ["rate/s", "p50µs", "p99µs", "CPU µs", "syscalls", "uring_enter", "membarrier", "recv", "sendmsg",
         "read", "writev", "epoll", "futex", "nanosleep", "yield", "SQEs", "tw_run", "ctx-sw", "wakeups"]
g = collections.defaultdict(list)
for f in sys.argv[1:]:
    for line in open(f):
        r = json.loads(line)
        parts = r["dir"].split("/")[-1].split("-")
        g[(parts[1], parts[2])].append(r)
print("| scenario | broker | n | " + " | ".join(short) + " |")
print("|---|---|---:|" + "---:|" * len(keys))
for (scen, b), rs in sorted(g.items()):
    vals = []
    for k in keys:
        xs = [r[k] for r in rs if isinstance(r.get(k), (int, float))]
        v = statistics.median(xs) if xs else ""
        vals.append(f"{v:.3g}" if v != "" else "")
    print(f"| {scen} | {b} | {len(rs)} | " + " | ".join(vals) + " |")
