#!/usr/bin/env python3
"""Summarises one measure.sh run directory as per-message figures; prints one JSON line."""
import collections, json, os, re, sys

out, mode = sys.argv[1], sys.argv[2]
win = float(os.environ.get("WIN", "6"))
names = {}
for line in open("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"):
    m = re.match(r"#define __NR_(\w+)\s+(\d+)", line)
    if m:
        names[int(m.group(2))] = m.group(1)
lt = json.load(open(f"{out}/lt.json"))
if lt["scenario"] == "reqres":
    units = lt["requests_per_s"] * win
    extra = {"per_s": round(lt["requests_per_s"]), "p50_us": lt["rtt"]["p50_us"], "p99_us": lt["rtt"]["p99_us"]}
else:
    units = lt["published_per_s"] * win
    extra = {"per_s": round(lt["published_per_s"]), "deliv_per_s": round(lt["delivered_per_s"]),
             "p50_us": lt["latency"]["p50_us"], "p99_us": lt["latency"]["p99_us"], "lost": lt["lost"]}
r = {"dir": out, "mode": mode, "units_in_window": round(units), "server_cpu_pct_lt": round(lt["server"]["cpu_percent"], 1)}
r.update(extra)
r["broker_cpu_us_per_unit_lt"] = round(lt["server"]["cpu_percent"] / 100 * lt["measured_s"] / (units / win * lt["measured_s"]) * 1e6, 2)
st = dict(kv.split("=") for kv in open(f"{out}/stat.txt").read().split())
tick = os.sysconf("SC_CLK_TCK")
sunits = units / win * float(st["window_s"])
r["utime_us_per_unit"] = round(int(st["utime_ticks"]) / tick / sunits * 1e6, 2)
r["stime_us_per_unit"] = round(int(st["stime_ticks"]) / tick / sunits * 1e6, 2)
if mode == "count":
    for line in open(f"{out}/perf.csv"):
        parts = line.strip().split(",")
        if len(parts) < 3 or line.startswith("#") or not parts[0].replace(".", "").isdigit():
            continue
        val, ev = float(parts[0]), parts[2]
        key = ev.split(":")[-1].replace("sys_enter_", "")
        if ev == "task-clock":
            r["taskclock_us_per_unit"] = round(val * 1e3 / units, 2)
        else:
            r[key + "/u"] = round(val / units, 3)
    sc = collections.Counter(); op = collections.Counter()
    for line in (open(f"{out}/sys.txt") if os.path.exists(f"{out}/sys.txt") else []):
        m = re.search(r"NR (\d+)", line)
        if "sys_enter" in line and m:
            sc[names.get(int(m.group(1)), m.group(1))] += 1
        m = re.search(r"opcode (\w+)", line)
        if "submit_req" in line and m:
            op[m.group(1)] += 1
    rec_units = units  # perf record ran over the same window
    r["syscalls/u"] = {k: round(v / rec_units, 3) for k, v in sc.most_common() if v / rec_units >= 0.005}
    r["sqe/u"] = {k: round(v / rec_units, 3) for k, v in op.most_common()}
else:
    dso = {}
    for line in open(f"{out}/dso.txt"):
        m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
        if m:
            dso[m.group(2)] = float(m.group(1))
    r["dso_pct"] = dso
json.dump(r, sys.stdout)
print()
