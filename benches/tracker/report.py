"""Markdown for the tracker bench (benches/tracker/run) from its result files.

    python3 benches/tracker/report.py VAR CONNS KEEPALIVES STEP_SECONDS LATENCY_SECONDS RUST_LOG

Also writes VAR/results.json (everything in one file).
"""
import glob
import json
import os
import sys

var, conns, keepalives, step_s, lat_s, rust_log = sys.argv[1:7]
rb = {os.path.basename(f)[:-5]: json.load(open(f)) for f in glob.glob(var + "/rb/*.json")}
steps = {os.path.basename(f)[:-5]: json.load(open(f)) for f in glob.glob(var + "/steps/*.json")}
json.dump({"redis_benchmark": rb, "steps": steps}, open(var + "/results.json", "w"), indent=1)

closed = sorted((s for n, s in steps.items() if n.startswith("closed-")), key=lambda s: s["connections"])
mixed = next(s for n, s in steps.items() if n.startswith("mixed-"))
opened = next(s for n, s in steps.items() if n.startswith("open-"))
paused = next(s for n, s in steps.items() if n.startswith("paused-"))
best = max(closed, key=lambda s: s["visit_rate"])
# The peer ran before and after the tracker's steps; the faster run is the
# limit (the VM's speed drifts, and the slower run would flatter the ratio).
alloc, ka = max(rb["allocate"]["rps"], rb["allocate_after"]["rps"]), rb["keepalive"]["rps"]
# A visit is one EVALSHA allocate, a keep-alive one EVALSHA keepalive (the
# site config comes from the tracker's 2 s cache): Redis's own ceiling for
# the mix, from the redis-benchmark rates (time per command adds up on
# Redis's one thread).
k = int(keepalives)
mixed_limit = 1 / (1 / alloc + k / ka)
ratio = best["visit_rate"] / alloc
p99, p99_alone = opened["visit_ms"]["p99"], paused["visit_ms"]["p99"]


def pct(s, proc):
    return "%.0f" % (100 * s["cpu_s"][proc] / s["wall_s"])


def us_per_visit(s, proc):
    """CPU microseconds of `proc` per visit answered (its keep-alives included)."""
    return "%.0f" % (1e6 * s["cpu_s"][proc] / max(s["all_ok_visits"], 1))


def bad(s):
    """Answers that were not a pool number with status 200."""
    n = sum(v for k, v in s["kinds"].items() if k != "pool")
    n += sum(v for c, v in s["status"].items() if c != "200")
    return n + s["io_errors"]


out = []
w = out.append
w("Real `dialmark-tracker` (release build, `RUST_LOG=%s`, as the systemd unit) on loopback, "
  "real Redis 7 and ClickHouse 18.16 (the visit and lease rows go through the sink as in "
  "production), all on the same two cores as the load generator "
  "([`tracker_load`](src/bin/tracker_load.rs): keep-alive HTTP/1.1 connections, one request in "
  "flight each, the snippet's JSON body as `text/plain` with the site's `Origin`). Every visit "
  "is a new session that leases a number; the pool holds more numbers than the run hands out "
  "(no exhaustion, no lease expires during the run)." % rust_log)
w("")
w("| | result | target |")
w("| --- | ---: | --- |")
w("| max visit rate (closed loop, %d connections) | **%.0f visits/s** | |" % (best["connections"], best["visit_rate"]))
w("| ratio to raw EVALSHA allocate (redis-benchmark, 50 clients, the faster of its runs before and after the tracker's) | **%.0f %%** (%.0f / %.0f) | ≥ 50 %%: %s |"
  % (100 * ratio, best["visit_rate"], alloc, "met" if ratio >= 0.5 else "not met"))
w("| latency at 50 %% of max (open loop, %.0f visits/s for %s s): p50 / p99 | **%.2f / %.2f ms** | p99 < 5 ms: %s |"
  % (opened["target_rate"], lat_s, opened["visit_ms"]["p50"], p99, "met" if p99 < 5 else "not met"))
w("| the same: p90 / p99.9 / max | %.2f / %.2f / %.2f ms | |"
  % (opened["visit_ms"]["p90"], opened["visit_ms"]["p999"], opened["visit_ms"]["max"]))
w("| the load generator sent those visits late by p50 / p99 (its 1 ms timer, and CPU it did not get; counted in the latency) | %.2f / %.2f ms | |"
  % (opened["send_late_ms"]["p50"], opened["send_late_ms"]["p99"]))
w("| the same load with ClickHouse paused (tracker + Redis alone): p50 / p99 / max | **%.2f / %.2f** / %.2f ms | p99 < 5 ms: %s |"
  % (paused["visit_ms"]["p50"], p99_alone, paused["visit_ms"]["max"], "met" if p99_alone < 5 else "not met"))
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
names = [("allocate", "EVALSHA allocate.lua (a new lease per call)"),
         ("allocate_after", "the same, after the tracker's closed-loop steps"),
         ("allocate_pipelined", "EVALSHA allocate.lua, `-P 16`"),
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
w("Per step (CPU in % of one core over the step; a two-core box has 200 %):")
w("")
w("| step | connections | visits/s | requests/s | visit p50 / p99 / max ms | keep-alive p50 / p99 ms "
  "| tracker CPU | Redis CPU | ClickHouse CPU | load gen CPU | tracker / Redis CPU µs per visit | not 200 + pool |")
w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for name, s in [("closed, visits only", c) for c in closed] + [
        ("closed, 1 visit + %d keep-alives" % k, mixed), ("open, %.0f visits/s" % opened["target_rate"], opened),
        ("open, %.0f visits/s, ClickHouse paused" % paused["target_rate"], paused)]:
    ka_ms = "%.2f / %.2f" % (s["keepalive_ms"]["p50"], s["keepalive_ms"]["p99"]) if s["keepalives"] else "–"
    w("| %s | %d | %.0f | %.0f | %.2f / %.2f / %.2f | %s | %s | %s | %s | %s | %s / %s | %d |" % (
        name, s["connections"], s["visit_rate"], s["request_rate"], s["visit_ms"]["p50"], s["visit_ms"]["p99"],
        s["visit_ms"]["max"], ka_ms, pct(s, "tracker"), pct(s, "redis"), pct(s, "clickhouse"), pct(s, "load"),
        us_per_visit(s, "tracker"), us_per_visit(s, "redis"), bad(s)))
w("")
answered = sum(s["all_ok_visits"] for s in steps.values())
rows, uniq = open(var + "/visit_rows.tsv").read().split()
hwm = open(var + "/vm.txt").read().split(":")[1].strip() if os.path.exists(var + "/vm.txt") else "?"
mem = open(var + "/redis_mem.txt").read().split(":")[1].strip()
w("Visits answered 200 over the run (warm-up included): %d; `visits` rows in ClickHouse after the "
  "tracker stopped: %s (%s distinct) — %s. Tracker peak RSS %s; Redis memory at the end %s."
  % (answered, rows, uniq, "none lost" if int(uniq) == answered else "MISMATCH", hwm, mem))
w("")
w("Steps: %s s each (+1 s warm-up, not counted) at %s connections; the open-loop steps run %s s at half "
  "the best closed-loop rate on as many connections (the second with ClickHouse stopped by SIGSTOP: the sink "
  "spools meanwhile and catches up after), latency counted from when each visit was due."
  % (step_s, conns, lat_s))
notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md")
if os.path.exists(notes):
    w(open(notes).read().strip())
    w("")
print("\n".join(out))
