"""Markdown for the tracker bench (benches/tracker/run) from its result files.

    python3 benches/tracker/report.py VAR CONNS KEEPALIVES STEP_SECONDS LATENCY_SECONDS RUST_LOG LOADS

LOADS: the open-loop loads in percent of the max ("25 50"); the target is
at 50.

Also writes VAR/results.json (everything in one file).
"""
import glob
import json
import math
import os
import sys

var, conns, keepalives, step_s, lat_s, rust_log, loads = sys.argv[1:8]
layout = open(var + "/layout.txt").read().split()
ncpu = int(layout[1])
loads = [int(x) for x in loads.split()]
if 50 not in loads:
    raise SystemExit("LATENCY_LOADS must include 50 (the target's load)")
rb = {os.path.basename(f)[:-5]: json.load(open(f)) for f in glob.glob(var + "/rb/*.json")}
steps = {os.path.basename(f)[:-5]: json.load(open(f)) for f in glob.glob(var + "/steps/*.json")}
json.dump({"redis_benchmark": rb, "steps": steps}, open(var + "/results.json", "w"), indent=1)

closed = sorted(((n, s) for n, s in steps.items() if n.startswith("closed-")), key=lambda x: x[1]["connections"])
mixed_name, mixed = next((n, s) for n, s in steps.items() if n.startswith("mixed-"))


def windows(kind):
    """The steps of one kind numbered -wN (pair-wN, open50-wN, paused50-wN), in order."""
    names = sorted((n for n in steps if n.startswith(kind + "-w")), key=lambda n: int(n.split("-w")[1]))
    return [(n, steps[n]) for n in names]


def pooled(ws):
    """Percentiles (ms) over every visit of the windows, as tracker_load computes them."""
    us = sorted(int(line.split()[1]) for n, _ in ws for line in open("%s/steps/%s.lat" % (var, n)))

    def q(p):
        return us[min(max(math.ceil(p * len(us)), 1), len(us)) - 1] / 1000.0
    return {"n": len(us), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": q(1.0)}


def redis_p50(name):
    """Redis's own EVALSHA p50 in µs over a step: how fast the VM ran meanwhile."""
    f = "%s/steps/%s.redis" % (var, name)
    line = open(f).read() if os.path.exists(f) else ""
    for part in line.strip().split(":", 1)[-1].split(","):
        if part.startswith("p50="):
            return "%.0f" % float(part[4:])
    return "–"


opened, paused = windows("open50"), windows("paused50")
lat, lat_alone = pooled(opened), pooled(paused)
rate = opened[0][1]["target_rate"]
late50 = max(s["send_late_ms"]["p50"] for _, s in opened)
late99 = max(s["send_late_ms"]["p99"] for _, s in opened)
pairs = windows("pair")
best = max((s for _, s in closed + pairs), key=lambda s: s["visit_rate"])
# Each pair is the tracker's best closed-loop step and redis-benchmark
# right after it: the VM's speed drifts by up to 2x within minutes, so a
# ratio is only taken within a pair, and the median pair is the result.
pair_ratios = [(n, s["visit_rate"], rb["allocate_w" + n.split("-w")[1]]["rps"]) for n, s in pairs]
pair_ratios = [(n, t, p, t / p) for n, t, p in pair_ratios]
median_pair = sorted(pair_ratios, key=lambda x: x[3])[len(pair_ratios) // 2]
alloc, ka = median_pair[2], rb["keepalive"]["rps"]
# A visit is one EVALSHA allocate, a keep-alive one EVALSHA keepalive (the
# site config comes from the tracker's 2 s cache): Redis's own ceiling for
# the mix, from the redis-benchmark rates (time per command adds up on
# Redis's one thread).
k = int(keepalives)
mixed_limit = 1 / (1 / alloc + k / ka)
ratio = median_pair[3]
p99, p99_alone = lat["p99"], lat_alone["p99"]


def pct(s, proc):
    return "%.0f" % (100 * s["cpu_s"][proc] / s["wall_s"])


PROCS = ("tracker", "redis", "clickhouse", "load")


def box_pct(ws):
    """CPU of all four processes over the steps, in % of one core."""
    return 100 * sum(s["cpu_s"][p] for _, s in ws for p in PROCS) / sum(s["wall_s"] for _, s in ws)


def us_mean(ws, proc):
    """CPU µs of `proc` per visit answered over the steps."""
    return 1e6 * sum(s["cpu_s"][proc] for _, s in ws) / max(sum(s["all_ok_visits"] for _, s in ws), 1)


def us_per_visit(s, proc):
    """CPU microseconds of `proc` per visit answered (its keep-alives included)."""
    return "%.0f" % us_mean([(None, s)], proc)


def bad(s):
    """Answers that were not a pool number with status 200."""
    n = sum(v for k, v in s["kinds"].items() if k != "pool")
    n += sum(v for c, v in s["status"].items() if c != "200")
    return n + s["io_errors"]


out = []
w = out.append
if layout[0] == "split":
    where = ("the tracker and Redis on CPUs %s; ClickHouse, redis-benchmark and the load generator "
             "on CPUs %s of %d (taskset) " % (layout[2], layout[3], ncpu))
else:
    where = "all on the same %d cores as the load generator " % ncpu
w("Real `dialmark-tracker` (release build, `RUST_LOG=%s`, as the systemd unit) on loopback, "
  "real Redis 7 and ClickHouse 18.16 (the visit and lease rows go through the sink as in "
  "production), " % rust_log + where +
  "([`tracker_load`](src/bin/tracker_load.rs): keep-alive HTTP/1.1 connections, one request in "
  "flight each, the snippet's JSON body as `text/plain` with the site's `Origin`). Every visit "
  "is a new session that leases a number; the pool holds more numbers than the run hands out "
  "(no exhaustion, no lease expires during the run).")
w("")
w("| | result | target |")
w("| --- | ---: | --- |")
w("| max visit rate (closed loop, %d connections) | **%.0f visits/s** | |" % (best["connections"], best["visit_rate"]))
w("| ratio to raw EVALSHA allocate (redis-benchmark, 50 clients, right after the tracker's step; median of %d pairs: %s) | **%.0f %%** (%.0f / %.0f) | ≥ 50 %%: %s |"
  % (len(pair_ratios), ", ".join("%.0f %%" % (100 * r) for _, _, _, r in pair_ratios), 100 * ratio,
     median_pair[1], median_pair[2], "met" if ratio >= 0.5 else "not met"))
w("| latency at 50 %% of max (open loop, %.0f visits/s, %d windows of %s s, %d visits pooled): p50 / p99 | **%.2f / %.2f ms** | p99 < 5 ms: %s |"
  % (rate, len(opened), lat_s, lat["n"], lat["p50"], p99, "met" if p99 < 5 else "not met"))
w("| the same: p90 / p99.9 / max | %.2f / %.2f / %.2f ms | |" % (lat["p90"], lat["p999"], lat["max"]))
w("| the load generator sent those visits late by p50 / p99, worst window (a thread sleeps to each due time; late when it did not get a CPU; counted in the latency) | %.2f / %.2f ms | |"
  % (late50, late99))
w("| the same load with ClickHouse paused (tracker + Redis alone; %d windows interleaved with those above): p50 / p99 / max | **%.2f / %.2f** / %.2f ms | p99 < 5 ms: %s |"
  % (len(paused), lat_alone["p50"], p99_alone, lat_alone["max"], "met" if p99_alone < 5 else "not met"))
best_step = [max(closed + pairs, key=lambda x: x[1]["visit_rate"])]
w("| CPU of the whole box (tracker + Redis + ClickHouse + load generator, of %d %%): at the max / at 50 %% of max, open loop, ClickHouse running | %.0f %% / %.0f %% | |"
  % (100 * ncpu, box_pct(best_step), box_pct(opened)))
w("| CPU µs per visit at the max (closed loop) → at 50 %% of max (open loop: each visit wakes every process on its way): tracker, Redis, load generator | %s | |"
  % ", ".join("%.0f → %.0f" % (us_mean(best_step, p), us_mean(opened, p)) for p in ("tracker", "redis", "load")))
for load in sorted(x for x in loads if x != 50):
    o, pz = windows("open%d" % load), windows("paused%d" % load)
    lo, lp = pooled(o), pooled(pz)
    w("| latency at %d %% of max (%.0f visits/s, %d + %d windows as above): p50 / p99 with ClickHouse running; paused; box CPU running | %.2f / %.2f ms; %.2f / %.2f ms; %.0f %% | |"
      % (load, o[0][1]["target_rate"], len(o), len(pz), lo["p50"], lo["p99"], lp["p50"], lp["p99"], box_pct(o)))
w("| 1 visit + %d keep-alives (closed loop, %d connections) | %.0f visits/s, %.0f requests/s | |"
  % (k, mixed["connections"], mixed["visit_rate"], mixed["request_rate"]))
w("")
w("Redis's limit (redis-benchmark on the same Redis, `-c 50`, no pipelining unless noted; "
  "the same KEYS and ARGV as `tracker/src/pool.rs`: the pool prefix, now, hold, max hold, "
  "cool-down, attribution window, a new session id per call and the lease fields in the "
  "tracker's order):")
w("")
w("| command | calls/s | p50 / p99 ms | Redis CPU % | Redis CPU µs per call |")
w("| --- | ---: | ---: | ---: | ---: |")
names = [("allocate", "EVALSHA allocate.lua (a new lease per call)")]
names += [("allocate_w" + n.split("-w")[1], "the same, right after the tracker's step of pair " + n.split("-w")[1])
          for n, _ in pairs]
names += [("allocate_pipelined", "EVALSHA allocate.lua, `-P 16`"),
         ("keepalive", "EVALSHA keepalive.lua (live leases)"), ("site_get", "GET dm:site:ID")]
for key, label in names:
    r = rb[key]
    busy = r["cpu_s"]["redis"] / r["wall_s"]
    w("| %s | %.0f | %.3f / %.3f | %.0f | %.1f |" % (label, r["rps"], r["p50_ms"], r["p99_ms"], 100 * busy,
                                                   1e6 * busy / r["rps"]))
rb_leases, rb_calls = open(var + "/rb/leases.txt").read().split()
w("")
w("All allocate rows lease a number on every call, as a visit does (checked by the run: %s leases "
  "after %s calls; a few random session ids repeat)." % (rb_leases, rb_calls))
w("")
w("A visit costs Redis the allocate script, a keep-alive the keep-alive script (the site config "
  "comes from the tracker's 2 s cache; the `GET` row is what each visit cost before that cache); "
  "by those rates Redis alone tops out at **%.0f visits/s** with %d keep-alives each. The tracker "
  "reached %.0f %% of that." % (mixed_limit, k, 100 * mixed["visit_rate"] / mixed_limit))
w("")
w("Per step (CPU in %% of one core over the step; this %d-core box has %d %%):" % (ncpu, 100 * ncpu))
w("")
w("| step | connections | visits/s | requests/s | visit p50 / p99 / max ms | keep-alive p50 / p99 ms "
  "| tracker CPU | Redis CPU | ClickHouse CPU | load gen CPU | tracker / Redis CPU µs per visit "
  "| Redis's own EVALSHA p50 µs | not 200 + pool |")
w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
named = [("closed, visits only", n, s) for n, s in closed]
named += [("closed, visits only, pair " + n.split("-w")[1], n, s) for n, s in pairs]
named.append(("closed, 1 visit + %d keep-alives" % k, mixed_name, mixed))
for load in loads:
    for (n, s), (pn, ps) in zip(windows("open%d" % load), windows("paused%d" % load)):
        named.append(("open, %d %%: %.0f visits/s, window %s" % (load, s["target_rate"], n.split("-w")[1]), n, s))
        named.append(("the same, ClickHouse paused", pn, ps))
for label, n, s in named:
    ka_ms = "%.2f / %.2f" % (s["keepalive_ms"]["p50"], s["keepalive_ms"]["p99"]) if s["keepalives"] else "–"
    w("| %s | %d | %.0f | %.0f | %.2f / %.2f / %.2f | %s | %s | %s | %s | %s | %s / %s | %s | %d |" % (
        label, s["connections"], s["visit_rate"], s["request_rate"], s["visit_ms"]["p50"], s["visit_ms"]["p99"],
        s["visit_ms"]["max"], ka_ms, pct(s, "tracker"), pct(s, "redis"), pct(s, "clickhouse"), pct(s, "load"),
        us_per_visit(s, "tracker"), us_per_visit(s, "redis"), redis_p50(n), bad(s)))
w("")
answered = sum(s["all_ok_visits"] for s in steps.values())
rows, uniq = open(var + "/visit_rows.tsv").read().split()
hwm = open(var + "/vm.txt").read().split(":")[1].strip() if os.path.exists(var + "/vm.txt") else "?"
mem = open(var + "/redis_mem.txt").read().split(":")[1].strip()
w("Visits answered 200 over the run (warm-up included): %d; `visits` rows in ClickHouse after the "
  "tracker stopped: %s (%s distinct) — %s. Tracker peak RSS %s; Redis memory at the end %s."
  % (answered, rows, uniq, "none lost" if int(uniq) == answered else "MISMATCH", hwm, mem))
w("")
w("Steps: %s s each (+1 s warm-up, not counted) at %s connections, then %d more at the best of them, "
  "each followed at once by redis-benchmark (the pairs); the open-loop windows run %s s each "
  "(+1 s warm-up) at %s %% of the best closed-loop rate on as many connections, alternately with ClickHouse "
  "running and stopped by SIGSTOP (the sink spools meanwhile and catches up after); latency counted from "
  "when each visit was due. Redis's own EVALSHA p50 (its `INFO latencystats`, reset before each step) "
  "shows how fast the VM ran during each step: the same script, the same Redis."
  % (step_s, conns, len(pairs), lat_s, " and ".join(str(x) for x in loads)))
notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md")
if os.path.exists(notes):
    w(open(notes).read().strip())
    w("")
print("\n".join(out))
