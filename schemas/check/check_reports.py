#!/usr/bin/env python3
"""Runs every report in schemas/reports/ on ClickHouse 18.16 and on chDB
(current ClickHouse) over the same fixture and compares the results.

    python schemas/check/check_reports.py --clickhouse http://127.0.0.1:8123

With --cluster NAME --cluster-servers URL,URL... --tracker-bin PATH the
same fixture also goes into a ClickHouse cluster (one shard per server):
the schema made by `dialmark-tracker migrate` with clickhouse.cluster set
(local tables on each server, Distributed tables over them), the fixture
inserted through the Distributed tables, each report run unchanged on
them and compared with the one server's answer. With --replicated-cluster
NAME --replicated-servers URL,... the same on a cluster of replicated
shards (clickhouse.replicated: servers listed shard by shard, two
replicas each unless --replicas-per-shard says otherwise).

Steps, on each engine: create a fresh database, apply every migration in
schemas/migrations/ in order (split like the Rust runner: `--` comment
lines dropped, statements split on `;`), load the fixture (fixture.py),
run each report with the same placeholders (the contract of the
`dialmark-tracker report` CLI, see render()), then compare the two engines
row by row (numbers compared as numbers, rows order-insensitive), check
values known from the fixture, and check pool_health and trunk_quality
against an independent Python computation.

Prints `report NAME: ok (N rows)` or a diff per report and run; exits 1 on
any mismatch or error. Needs `pip install -r schemas/check/requirements.txt`.
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import fixture  # noqa: E402
from fixture import ts  # noqa: E402

PLACEHOLDERS = ("from", "to", "site", "conversion", "window", "cooldown", "min_talk", "call_url")
DEFAULT_CONVERSION = "dialmark call"
CALL_URL = "https://app.example/calls/"
# The columns the platforms document for their upload files, in order.
GOOGLE_ADS_COLUMNS = ["Google Click ID", "GBRAID", "WBRAID", "Conversion Name", "Conversion Time",
                      "Conversion Value", "Conversion Currency"]
YANDEX_COLUMNS = ["UserId", "ClientId", "Yclid", "DateTime", "StaticCall", "Price", "Currency",
                  "PhoneNumber", "TalkDuration", "HoldDuration", "CallMissed", "FirstTimeCaller",
                  "Tag", "URL", "CallTrackerURL"]


def header(problems, name, rows, want):
    """The upload file's header, exactly (checked on the first row's keys)."""
    if rows and list(rows[0].keys()) != want:
        problems.append("%s: columns %s, expected %s" % (name, list(rows[0].keys()), want))
# pool_health's defaults, as the CLI fills them (the busy quarter-hour and
# tracker.cooldown_seconds' default).
WINDOW = 900
COOLDOWN = 60


# --------------------------------------------------------------------------
# The placeholder contract (what `dialmark-tracker report` must do).

def sql_string(s):
    """A ClickHouse string literal: backslash and single quote escaped."""
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_datetime(text):
    """'YYYY-MM-DD hh:mm:ss' (UTC) -> toDateTime('...', 'UTC')."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", text):
        raise ValueError("bad date-time %r (want YYYY-MM-DD hh:mm:ss, UTC)" % text)
    return "toDateTime('%s', 'UTC')" % text


def render(sql, frm, to, site="", conversion=DEFAULT_CONVERSION, window=WINDOW, cooldown=COOLDOWN,
           min_talk=0, call_url=""):
    """Replaces {from} {to} {site} {conversion} {window} {cooldown} {min_talk} {call_url};
    refuses any other {name}."""
    values = {
        "min_talk": str(int(min_talk)),
        "call_url": sql_string(call_url),
        "from": sql_datetime(frm),
        "to": sql_datetime(to),
        "site": sql_string(site),
        "conversion": sql_string(conversion),
        "window": str(int(window)),
        "cooldown": str(int(cooldown)),
    }

    def sub(m):
        name = m.group(1)
        if name not in values:
            raise ValueError("unknown placeholder {%s}" % name)
        return values[name]

    return re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, sql)


BANNED_IN_MIGRATIONS = ("DATETIME64", "IPV4", "IPV6", " TTL ", "ASOF", "LOWCARDINALITY")


def lint_report(name, text):
    """The file rules the CLI relies on. Returns problems."""
    p = []
    code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("--"))
    if "?" in text:
        p.append("contains '?' (the clickhouse crate's query() takes it for a bind placeholder)")
    if ";" in code:
        p.append("contains ';' outside comment lines (one statement, no trailing semicolon)")
    if re.search(r"\bFORMAT\s+[A-Za-z]", code, re.I):
        p.append("has a FORMAT clause (the runner chooses the format)")
    if re.search(r"\b(dialmark|default|system)\.[a-z_]+", code):
        p.append("uses a database-qualified table name")
    for m in re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", text):
        if m not in PLACEHOLDERS:
            p.append("unknown placeholder {%s}" % m)
    if not re.match(r"\s*SELECT\b", code):
        p.append("does not start with SELECT (after comment lines)")
    if not text.endswith("\n") or text.rstrip("\n").splitlines()[-1].lstrip().startswith("--"):
        p.append("must end with a newline and not with a comment line")
    return p


def lint_migration(name, text):
    p = []
    up = text.upper()
    p += ["uses %s (outside the portable subset)" % b.strip() for b in BANNED_IN_MIGRATIONS if b in up]
    code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("--"))
    if "?" in code:
        p.append("contains '?' outside comment lines (the runner uses query(), which binds '?')")
    if re.search(r"\bCREATE\s+(TABLE|MATERIALIZED\s+VIEW|VIEW|DATABASE)\s+(?!IF\s+NOT\s+EXISTS)", code, re.I):
        p.append("a CREATE without IF NOT EXISTS")
    return p


def apply_migration(engine, mig_dir, name):
    with open(os.path.join(mig_dir, name)) as f:
        for stmt in migration_statements(f.read()):
            try:
                engine.execute(stmt)
            except Exception as ex:
                raise RuntimeError("%s: migration %s: %s\n%s" % (engine.name, name, ex, stmt[:300]))


def migration_statements(text):
    """Same split as schemas/src/migrate.rs Migration::statements()."""
    kept = "".join(l + "\n" for l in text.splitlines() if not l.lstrip().startswith("--"))
    return [s.strip() for s in kept.split(";") if s.strip()]


# --------------------------------------------------------------------------
# Engines.

class Http:
    """ClickHouse over HTTP (18.16: no compression, plain POST bodies)."""

    name = "clickhouse-18.16"
    backfill = True
    settings = {}

    def __init__(self, url):
        self.url = url.rstrip("/") + "/"
        self.database = "default"
        self.created = []

    def _post(self, sql, database=True):
        params = dict(self.settings, database=self.database) if database else {}
        req = urllib.request.Request(self.url + "?" + urllib.parse.urlencode(params),
                                     data=sql.encode("utf-8"))
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return r.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            raise RuntimeError(e.read().decode("utf-8", "replace").strip()) from None

    def version(self):
        return self._post("SELECT version()", database=False).strip()

    def create(self, database):
        self._post("DROP DATABASE IF EXISTS %s" % database, database=False)
        self._post("CREATE DATABASE %s" % database, database=False)
        self.created.append(database)
        self.use(database)

    def use(self, database):
        self.database = database

    def execute(self, sql):
        self._post(sql)

    def query(self, sql):
        return json.loads(self._post(sql + "\nFORMAT JSONCompact"))

    def close(self, keep):
        if not keep:
            for d in self.created:
                self._post("DROP DATABASE IF EXISTS %s" % d, database=False)


class Cluster(Http):
    """A ClickHouse cluster through its Distributed tables, the schema made
    by the Rust migrations runner (`dialmark-tracker migrate`)."""

    name = "clickhouse-18.16-cluster"
    backfill = False
    # What dialmark's client sets on a cluster (schemas/src/ch.rs client()).
    settings = {"insert_distributed_sync": "1", "distributed_product_mode": "global",
                "prefer_localhost_replica": "0"}

    def __init__(self, cluster, servers, tracker_bin, replicas=1):
        super().__init__(servers[0])
        self.cluster = cluster
        self.servers = servers
        self.tracker_bin = tracker_bin
        self.replicas = replicas
        if replicas > 1:
            self.name = "clickhouse-18.16-replicated"

    def _drop(self, database):
        for url in self.servers:
            for d in (database, database + "_local"):
                Http(url)._post("DROP DATABASE IF EXISTS %s" % d, database=False)

    def create(self, database):
        if self.replicas > 1:
            # Its servers may also be another cluster's: its own database.
            database += "_repl"
        self._drop(database)
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write('[clickhouse]\nurl = "%s"\ndatabase = "%s"\ncluster = "%s"\nservers = [%s]\nreplicated = %s\n'
                    % (self.servers[0], database, self.cluster,
                       ", ".join('"%s"' % u for u in self.servers),
                       "true" if self.replicas > 1 else "false"))
        try:
            run = subprocess.run([self.tracker_bin, "--config", f.name, "migrate"],
                                 capture_output=True, text=True, timeout=300)
        finally:
            os.unlink(f.name)
        if run.returncode != 0:
            raise RuntimeError("dialmark-tracker migrate failed: %s" % (run.stderr or run.stdout)[-1500:])
        self.created.append(database)
        self.use(database)

    def shard_counts(self, table):
        """Rows of TABLE (FINAL) in each shard's local table (0 for a shard
        whose replicas still differ after 60 s)."""
        deadline = time.time() + 60
        while True:
            per_server = [int(Http(url)._post("SELECT count() FROM %s_local.%s FINAL" % (self.database, table),
                                              database=False)) for url in self.servers]
            shards = [per_server[i:i + self.replicas] for i in range(0, len(per_server), self.replicas)]
            if all(len(set(r)) == 1 for r in shards) or time.time() > deadline:
                return [r[0] if len(set(r)) == 1 else 0 for r in shards]
            time.sleep(0.2)

    def close(self, keep):
        if not keep:
            for d in self.created:
                self._drop(d)


class Chdb:
    """chDB: current ClickHouse in-process, a session on a scratch path."""

    name = "chdb"
    backfill = True

    def __init__(self):
        from chdb import session  # noqa: imported here so --help works without it
        self.path = tempfile.mkdtemp(prefix="dm-check-chdb-")
        self.session = session.Session(self.path)

    def _q(self, sql, fmt="CSV"):
        r = self.session.query(sql, fmt)
        err = getattr(r, "error_message", None)
        if callable(err):
            err = err()
        if err:
            raise RuntimeError(err)
        return r.data() if hasattr(r, "data") else str(r)

    def version(self):
        return self._q("SELECT version()").strip().strip('"')

    def create(self, database):
        self._q("DROP DATABASE IF EXISTS %s" % database)
        self._q("CREATE DATABASE %s" % database)
        self.use(database)

    def use(self, database):
        self._q("USE %s" % database)

    def execute(self, sql):
        self._q(sql)

    def query(self, sql):
        return json.loads(self._q(sql, "JSONCompact"))

    def close(self, keep):
        try:
            self.session.close()
        except Exception:
            pass
        if not keep:
            shutil.rmtree(self.path, ignore_errors=True)


# --------------------------------------------------------------------------
# Normalisation and comparison.

NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")


def norm(v):
    """Numbers (also quoted 64-bit ones) -> float rounded to 9 significant
    digits; everything else -> str."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str) and NUMBER.match(v):
        f = float(v)
    else:
        return v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    if math.isnan(f) or math.isinf(f):
        return repr(f)
    return float("%.9g" % f)


def table(result):
    cols = [m["name"] for m in result["meta"]]
    rows = [[norm(v) for v in row] for row in result["data"]]
    return cols, rows


def as_dicts(cols, rows):
    return [dict(zip(cols, r)) for r in rows]


def diff(name, a, b, lb="chdb"):
    """Compares two (cols, rows) results, a from 18.16 and b from engine lb;
    returns a list of problems."""
    (ca, ra), (cb, rb) = a, b
    out = []
    if ca != cb:
        out.append("columns differ:\n    18.16: %s\n    %s: %s" % (ca, lb, cb))
        return out
    key = lambda r: json.dumps(r, sort_keys=True, default=str)
    sa, sb = sorted(ra, key=key), sorted(rb, key=key)
    if sa != sb:
        only_a = [r for r in sa if r not in sb]
        only_b = [r for r in sb if r not in sa]
        out.append("rows differ (%d vs %d rows)" % (len(ra), len(rb)))
        for r in only_a[:8]:
            out.append("    only 18.16: %s" % dict(zip(ca, r)))
        for r in only_b[:8]:
            out.append("    only %s: %s" % (lb, dict(zip(cb, r))))
    elif ra != rb:
        out.append("same rows, different order")
    return out


# --------------------------------------------------------------------------
# Expected values.

def close(a, b, tol=1e-3):
    try:
        return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))
    except (TypeError, ValueError):
        return a == b


def find(rows, **where):
    return [r for r in rows if all(r.get(k) == norm(v) for k, v in where.items())]


def expect_row(problems, rows, where, values):
    hits = find(rows, **where)
    if len(hits) != 1:
        problems.append("expected one row with %s, found %d" % (where, len(hits)))
        return
    for k, v in values.items():
        if not close(hits[0].get(k), norm(v)):
            problems.append("row %s: %s = %r, expected %r" % (where, k, hits[0].get(k), v))


def quantile_exact(values, level):
    """ClickHouse quantileExact: the element at floor(level * n) of the sorted values."""
    if not values:
        return 0
    s = sorted(values)
    i = int(level * len(s)) if level < 1 else len(s) - 1
    return s[min(i, len(s) - 1)]


def advise(load, lam, late_delays, calls_on_pool, cooldown=COOLDOWN, target=0.005):
    """The pool advisor: smallest N >= 1 with B(N, A) + M(N) < target, and that loss.

    M(N): share of calls_on_pool that are late calls not yet safe at N; a late
    call with delay d is safe from N = ceil(A + (d - cooldown) * lam) on."""
    if load <= 0:
        return 1, 0.0
    safe_from = [0 if d <= cooldown else math.ceil(load + (d - cooldown) * lam) for d in late_delays]
    # Erlang B by the recursion B(0) = 1, B(n) = A B(n-1) / (n + A B(n-1)).
    b, n = 1.0, 0
    while True:
        n += 1
        b = load * b / (n + load * b)
        unsafe = sum(1 for x in safe_from if x > n)
        loss = b + (unsafe / calls_on_pool if calls_on_pool else 0.0)
        if loss < target:
            return n, loss


def expected_pool_health(fx, frm, to, site=""):
    f, t = ts(frm), ts(to)
    calls = {r["call_id"]: r for r in fx.rows["calls"]}
    ev = {}
    for r in fx.rows["number_leases"]:
        if site and r["site"] != site:
            continue
        ev.setdefault(r["pool"], []).append(r)
    out = {}
    for pool, rows in ev.items():
        uniq = {(r["event_id"]): r for r in rows}.values()
        in_range = [r for r in uniq if f <= r["ts"] < t]
        if not in_range:
            continue
        numbers = {r["number"] for r in in_range if r["event"] != "overflow"}
        leases = [r for r in in_range if r["event"] == "lease"]
        overflows = [r for r in in_range if r["event"] == "overflow"]
        demand = {}
        for r in in_range:
            if r["event"] in ("lease", "overflow"):
                demand.setdefault(r["ts"] // WINDOW, set()).add(r["session_id"])
        peak = max((len(s) for s in demand.values()), default=0)
        per_number = {}
        for r in uniq:
            if r["event"] == "overflow" or not (f - 86400 <= r["ts"] < t + 86400):
                continue
            per_number.setdefault(r["number"], set()).add((r["ts"], {"lease": 1, "reclaim": 2, "release": 4}[r["event"]]))
        marks, holds, gaps = [], [], []
        for number, s in per_number.items():
            e = sorted(s)
            for i, (et, kind) in enumerate(e):
                if kind != 1:
                    continue
                end = e[i + 1][0] if i + 1 < len(e) else 0
                if end and f <= et < t:
                    holds.append(end - et)
                live_end = end if end else min(t, et + 14400)
                if et < t and live_end > f and live_end > et:
                    marks.append((max(et, f), 1))
                    marks.append((min(live_end, t), -1))
                if i > 0 and e[i - 1][1] != 1 and f <= et < t:
                    gaps.append(et - e[i - 1][0])
        run = live = 0
        for _, d in sorted(marks):       # -1 sorts before +1 in the same second
            run += d
            live = max(live, run)
        hold = sum(holds) / len(holds) if holds else 0.0
        lam = peak / WINDOW
        load = lam * (hold + COOLDOWN)
        # Late calls: recent_lease calls and their delay after the number's
        # last reclaim/release before the call.
        ends = {}
        for r in uniq:
            if r["event"] in ("reclaim", "release") and f - 86400 <= r["ts"] < t:
                ends.setdefault(r["number"], set()).add(r["ts"])
        on_pool, late = 0, []
        for c in calls.values():
            if (c["pool"] != pool or not f <= c["received"] < t or (site and c["site"] != site)
                    or c["disposition"] == "rejected_untrusted"
                    or c["attribution"] not in ("live_lease", "recent_lease", "overflow")):
                continue
            on_pool += 1
            before = [e for e in ends.get(c["number"], ()) if e <= c["received"]]
            if c["attribution"] == "recent_lease" and before:
                late.append(c["received"] - max(before))
        size, loss = advise(load, lam, late, on_pool)
        out[pool] = dict(numbers_seen=len(numbers), leases=len(leases),
                         exhaustion_events=len(overflows), peak_concurrent_leases=live,
                         median_reuse_gap_seconds=quantile_exact(gaps, 0.5),
                         peak_window_demand=peak, mean_hold_seconds=round(hold, 1),
                         offered_load_erlangs=round(load, 3), calls_on_pool=on_pool,
                         late_calls=len(late), recommended_pool_size=size,
                         predicted_loss_percent=round(100 * loss, 3))
    return out


def expected_trunk_quality(fx, frm, to):
    f, t = ts(frm), ts(to)
    seen = {}
    for r in fx.rows["call_attempts"]:
        seen[(r["call_id"], r["attempt"])] = r
    groups = {}
    for r in seen.values():
        h = r["started"] // 3600 * 3600
        if h > f - 3600 and h < t:
            groups.setdefault((r["trunk"], fixture._fmt(h)), []).append(r)
    out = {}
    for key, rows in groups.items():
        n = len(rows)
        ans = [r for r in rows if r["outcome"] == "answered"]
        eff = [r for r in rows if r["outcome"] in ("answered", "busy", "no_answer")
               or (r["outcome"] in ("canceled", "timeout") and r["pdd_ms"] > 0)
               or r["final_code"] in (480, 486, 600, 603)]
        ineff = [r for r in rows if r["outcome"] == "transport_error"
                 or r["final_code"] in (500, 503, 504)
                 or (r["final_code"] == 408 and r["pdd_ms"] == 0)]
        pdd = [r["pdd_ms"] for r in rows if r["pdd_ms"] > 0]
        out[key] = dict(attempts=n, answered=len(ans), asr=round(len(ans) / n, 4),
                        effective=len(eff), ner=round(len(eff) / n, 4),
                        ineffective=len(ineff), isa=round(len(ineff) / n, 4),
                        with_provisional=len(pdd),
                        pdd_median_ms=quantile_exact(pdd, 0.5),
                        pdd_p95_ms=quantile_exact(pdd, 0.95),
                        acd_seconds=round(sum(r["talk_ms"] for r in ans) / len(ans) / 1000, 1) if ans else 0)
    return out


def known_values(name, site, rows, fx, frm, to, opts=None):
    """Values the fixture was built to produce. Returns problems."""
    opts = opts or {}
    p = []
    calls = {r["call_id"]: r for r in fx.rows["calls"]}
    in_range = [c for c in calls.values() if ts(frm) <= c["received"] < ts(to)
                and (not site or c["site"] == site)]
    if name == "campaigns":
        expect_row(p, rows, dict(utm_source="google", utm_medium="cpc", utm_campaign="spring",
                                 utm_term="buy shoes"),
                   dict(calls=3, answered=2, missed=1, first_time_callers=2, unique_callers=2,
                        median_talk_seconds=125.0))
        expect_row(p, rows, dict(utm_source="yandex", utm_campaign="autumn", utm_term="boots"),
                   dict(calls=1, answered=1, missed=0, first_time_callers=0, unique_callers=1,
                        median_talk_seconds=60.0))
        # Direct calls of shop (c5a busy, c5b answered), the overflow call c7
        # and the rejected calls (stock/unknown numbers belong to no site).
        n = 4 if site else 6
        expect_row(p, rows, dict(utm_source="", utm_campaign="", source_label=""),
                   dict(calls=n, answered=1, missed=n - 1, first_time_callers=n - 1,
                        unique_callers=n - 1, median_talk_seconds=45.0))
        total = sum(r["calls"] for r in rows)
        want = len([c for c in in_range if c["disposition"] != "rejected_untrusted"])
        if total != want:
            p.append("campaigns: %d calls in total, expected %d" % (total, want))
        if not site:
            expect_row(p, rows, dict(source_label="billboard"), dict(calls=1, answered=1))
            expect_row(p, rows, dict(utm_campaign="implants"),
                       dict(calls=2, answered=1, median_talk_seconds=14400.0))
    elif name == "missed_calls":
        expect_row(p, rows, dict(caller="+79990000002"),
                   dict(received="2026-11-03 10:18:00", disposition="missed", attempts=1,
                        final_code=480, gclid="G2", utm_campaign="spring", answered_later=0))
        expect_row(p, rows, dict(caller="+79990000005"),
                   dict(disposition="busy", final_code=486, answered_later=1))
        expect_row(p, rows, dict(caller="+79990000007"), dict(disposition="failed", attempts=2))
        if find(rows, caller="+79990000008"):
            p.append("missed_calls lists the answered call cut by max duration (+79990000008)")
        want = len([c for c in in_range if c["answered"] == 0 and c["disposition"] in
                    ("missed", "busy", "abandoned", "failed", "timeout")])
        if len(rows) != want:
            p.append("missed_calls: %d rows, expected %d" % (len(rows), want))
    elif name == "conversion":
        expect_row(p, rows, dict(site="shop", utm_source="google", landing_page="/shoes"),
                   dict(visits=5, sessions=3, calls=3, calling_sessions=2, conversion_rate=0.6667))
        expect_row(p, rows, dict(site="shop", utm_source="yandex", landing_page="/boots"),
                   dict(visits=3, sessions=2, calls=1, calling_sessions=1, conversion_rate=0.5))
        if not site:
            expect_row(p, rows, dict(site="clinic", landing_page="/implants"),
                       dict(visits=3, sessions=2, calls=2, calling_sessions=2, conversion_rate=1))
    elif name == "pool_health":
        expect_row(p, rows, dict(pool="shop-msk"),
                   dict(numbers_seen=3, leases=6, exhaustion_events=1, peak_concurrent_leases=3,
                        median_reuse_gap_seconds=93000, peak_window_demand=4,
                        mean_hold_seconds=1250.0, offered_load_erlangs=5.822,
                        calls_on_pool=8, late_calls=1,
                        # B(12) = 0.94 %, B(13) = 0.42 %; the late call c3
                        # (300 s after N3's lease) is safe from 7 on.
                        recommended_pool_size=13, predicted_loss_percent=0.421))
        if not site:
            # Erlang B alone: 20 numbers; the call 1700 s after L1's lease
            # needs 26 to find L1 not yet re-leased.
            expect_row(p, rows, dict(pool="lab-late"),
                       dict(peak_window_demand=8, offered_load_erlangs=11.2, late_calls=1,
                            recommended_pool_size=26))
        exp = expected_pool_health(fx, frm, to, site)
        got = {r["pool"]: r for r in rows}
        if set(exp) != set(got):
            p.append("pool_health pools %s, expected %s" % (sorted(got), sorted(exp)))
        for pool, e in exp.items():
            for k, v in e.items():
                if pool in got and not close(got[pool].get(k), v):
                    p.append("pool_health %s: %s = %r, Python says %r" % (pool, k, got[pool].get(k), v))
    elif name == "trunk_quality":
        expect_row(p, rows, dict(trunk="trunk-c", hour="2026-11-06 15:00:00"),
                   dict(attempts=1, answered=1, asr=1, ner=1, isa=0, pdd_median_ms=500,
                        acd_seconds=14400.0))
        exp = expected_trunk_quality(fx, frm, to)
        got = {(r["trunk"], r["hour"]): r for r in rows}
        if set(exp) != set(got):
            p.append("trunk_quality has %d (trunk, hour) rows, Python says %d" % (len(got), len(exp)))
        for key, e in exp.items():
            for k, v in e.items():
                if key in got and not close(got[key].get(k), v):
                    p.append("trunk_quality %s: %s = %r, Python says %r" % (key, k, got[key].get(k), v))
    elif name == "quarantine":
        # 68 days: too young for the 90-day rule; its call from before the
        # quarantine (2026-08-20, active) does not count.
        expect_row(p, rows, dict(number="+74951110050"),
                   dict(quarantined_since="2026-09-01 10:00:00", days_in_quarantine=68,
                        calls_90d=2, eligible=0, release_after="2026-11-30 10:00:00"))
        expect_row(p, rows, dict(number="+74951110051"),
                   dict(days_in_quarantine=38, calls_90d=0, eligible=0))
        expect_row(p, rows, dict(number="+74951110052"),
                   dict(days_in_quarantine=85, calls_90d=3, eligible=0))
        # Two untrusted INVITEs to it do not count.
        expect_row(p, rows, dict(number="+74951110054"),
                   dict(days_in_quarantine=99, calls_90d=1, eligible=1))
        if len(rows) != 4:
            p.append("quarantine: %d rows, expected 4" % len(rows))
    elif name == "lost_call_audit":
        expect_row(p, rows, dict(caller="+79990000001", received="2026-11-03 10:15:00"),
                   dict(attempts=2, attempt_rows=2, final_code=200,
                        attempt_path="trunk-a:503:rejected > trunk-b:200:answered"))
        expect_row(p, rows, dict(caller="+79990000007"),
                   dict(attempt_path="trunk-a:408:timeout > trunk-b:503:transport_error",
                        disposition="failed"))
        if not site:
            expect_row(p, rows, dict(disposition="rejected_stock"),
                       dict(attempts=0, attempt_rows=0, attempt_path="", number_status="stock"))
        expect_row(p, rows, dict(disposition="rejected_quarantine"),
                   dict(attempts=0, attempt_rows=0, attempt_path="", number_status="quarantine",
                        final_code=404))
        calls_rows = find(rows, record="call")
        if len(calls_rows) != len(in_range):
            p.append("lost_call_audit: %d call rows, expected %d" % (len(calls_rows), len(in_range)))
        # Attempts-only rows: a site's own (attempts carry the site since
        # migration 0012); older ones, and other sites', in the every-site run.
        only = find(rows, record="attempts_only")
        paths = sorted(r["attempt_path"] for r in only)
        want = ["trunk-a:503:rejected"] if site else \
            ["trunk-a:500:rejected", "trunk-a:503:rejected", "trunk-c:503:rejected"]
        if paths != want:
            p.append("lost_call_audit [site=%s]: attempts-only rows %s, expected %s" % (site, paths, want))
        expect_row(p, rows, dict(record="attempts_only", attempt_path="trunk-a:503:rejected"),
                   dict(received="2026-11-08 23:59:30"))
    elif name == "google_ads_export":
        header(p, name, rows, GOOGLE_ADS_COLUMNS)
        g1 = find(rows, **{"Google Click ID": "G1"})
        if len(g1) != 2:
            p.append("google_ads_export: %d rows for G1, expected 2" % len(g1))
        if not site:
            expect_row(p, rows, {"Google Click ID": "G8"},
                       {"Conversion Time": "2026-11-06 15:05:00+0000",
                        "Conversion Name": DEFAULT_CONVERSION, "GBRAID": "", "WBRAID": ""})
            # iOS web click: the wbraid alone; gclid with a gbraid: the gclid alone.
            expect_row(p, rows, {"WBRAID": "W1"}, {"Google Click ID": "", "GBRAID": ""})
            expect_row(p, rows, {"Google Click ID": "GB1"}, {"GBRAID": "", "WBRAID": ""})
        if find(rows, **{"Google Click ID": "G2"}):
            p.append("google_ads_export lists the missed call of G2")
        if find(rows, **{"Google Click ID": "GOLD"}):
            p.append("google_ads_export lists a click older than 90 days")
        short = find(rows, **{"Google Click ID": "GSHORT"})
        if opts.get("min_talk") and short:
            p.append("google_ads_export lists a 6-second call with min_talk=30")
        if not site and not opts.get("min_talk") and not short:
            p.append("google_ads_export leaves out the 6-second call without min_talk")
        min_talk_ms = opts.get("min_talk", 0) * 1000
        want = len([c for c in in_range
                    if (c["gclid"] or c.get("gbraid") or c.get("wbraid")) and c["answered"]
                    and c["talk_ms"] >= min_talk_ms
                    and (not c.get("touch_ts") or c["received"] - c["touch_ts"] <= 90 * 86400)])
        if len(rows) != want:
            p.append("google_ads_export: %d rows, expected %d" % (len(rows), want))
    elif name == "yandex_export":
        header(p, name, rows, YANDEX_COLUMNS)
        if not site:
            expect_row(p, rows, dict(UserId="va1"), dict(ClientId="1690000000000000001"))
        link = re.compile(re.escape(CALL_URL) + r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
        for r in rows:
            u = r.get("CallTrackerURL")
            if (opts.get("call_url") and not link.match(u or "")) or (not opts.get("call_url") and u != ""):
                p.append("yandex_export: CallTrackerURL %r (call_url %r)" % (u, opts.get("call_url", "")))
        expect_row(p, rows, dict(Yclid="Y1"),
                   dict(UserId="v3", DateTime=ts("2026-11-03 10:45:00"), TalkDuration=60,
                        CallMissed=0, FirstTimeCaller=0, StaticCall=0, PhoneNumber="+74951110003"))
        expect_row(p, rows, dict(UserId="v1", DateTime=ts("2026-11-03 10:12:30")),
                   dict(FirstTimeCaller=1, CallMissed=0))
        expect_row(p, rows, dict(UserId="v1", DateTime=ts("2026-11-03 10:15:00")),
                   dict(FirstTimeCaller=0, TalkDuration=125))
        expect_row(p, rows, dict(UserId="v2"), dict(CallMissed=1, Tag="missed"))
    return p


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clickhouse", required=True,
                    help="HTTP URL of a ClickHouse 18.16 server, e.g. http://127.0.0.1:8123")
    ap.add_argument("--database", default="dm_report_check",
                    help="scratch database created (dropped first) on both engines")
    ap.add_argument("--from", dest="frm", default=fixture.FROM)
    ap.add_argument("--to", default=fixture.TO)
    ap.add_argument("--cluster", help="also on this ClickHouse cluster (name in <remote_servers>)")
    ap.add_argument("--cluster-servers", help="HTTP URLs of the cluster's servers, comma-separated")
    ap.add_argument("--replicated-cluster", help="also on this cluster of replicated shards")
    ap.add_argument("--replicated-servers", help="its servers' HTTP URLs, shard by shard, comma-separated")
    ap.add_argument("--replicas-per-shard", type=int, default=2)
    ap.add_argument("--tracker-bin", default=os.path.join(os.path.dirname(SCHEMAS), "target/debug/dialmark-tracker"),
                    help="dialmark-tracker binary that migrates the cluster")
    ap.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    ap.add_argument("--only", action="append", help="run only this report (repeatable)")
    ap.add_argument("--show", action="store_true", help="print every result row")
    ap.add_argument("--dump-fixture", metavar="FILE",
                    help="write the fixture INSERT statements to FILE and exit")
    args = ap.parse_args()

    started = time.time()
    fx = fixture.build()
    if args.dump_fixture:
        with open(args.dump_fixture, "w") as f:
            f.write("-- Generated by schemas/check/fixture.py (seed %d). Load after the migrations.\n"
                    % fixture.SEED)
            for s in fx.statements:
                f.write(s + ";\n\n")
        print("wrote %s (%d statements)" % (args.dump_fixture, len(fx.statements)))
        return 0

    mig_dir = os.path.join(SCHEMAS, "migrations")
    migrations = sorted(f for f in os.listdir(mig_dir) if f.endswith(".sql"))
    rep_dir = os.path.join(SCHEMAS, "reports")
    reports = sorted(f[:-4] for f in os.listdir(rep_dir) if f.endswith(".sql"))
    if args.only:
        reports = [r for r in reports if r in args.only]

    failed = False
    for m in migrations:
        with open(os.path.join(mig_dir, m)) as f:
            for pr in lint_migration(m, f.read()):
                failed = True
                print("migration %s: %s" % (m, pr))
    for name in reports:
        with open(os.path.join(rep_dir, name + ".sql")) as f:
            for pr in lint_report(name, f.read()):
                failed = True
                print("report %s: lint: %s" % (name, pr))

    engines = []
    try:
        engines = [Http(args.clickhouse), Chdb()]
        if args.cluster:
            servers = [u for u in (args.cluster_servers or "").split(",") if u]
            if len(servers) < 2:
                raise RuntimeError("--cluster needs --cluster-servers with two servers or more")
            engines.append(Cluster(args.cluster, servers, args.tracker_bin))
        if args.replicated_cluster:
            servers = [u for u in (args.replicated_servers or "").split(",") if u]
            if len(servers) < 2 * args.replicas_per_shard:
                raise RuntimeError("--replicated-cluster needs --replicated-servers with two shards or more")
            engines.append(Cluster(args.replicated_cluster, servers, args.tracker_bin, args.replicas_per_shard))
        backfill_db = args.database + "_backfill"
        for e in engines:
            t0 = time.time()
            if not e.backfill:
                # The cluster: the runner's schema, then the fixture.
                e.create(args.database)
                for stmt in fx.statements + fx.late_statements:
                    e.execute(stmt)
                counts = {t: e.shard_counts(t) for t in ("calls", "call_attempts", "visits")}
                print("%s %s: database %s on %d servers, fixture loaded in %.1fs; rows (FINAL) per shard: %s"
                      % (e.name, e.version(), e.database, len(e.servers), time.time() - t0,
                         ", ".join("%s %s" % (t, "/".join(map(str, c))) for t, c in counts.items())))
                for t, c in counts.items():
                    # engines[0], the one server, holds the same inserts;
                    # every version of a row on one shard, so the shards'
                    # FINAL counts add up to the one server's.
                    one = int(engines[0]._post("SELECT count() FROM %s FINAL" % t))
                    if min(c) == 0 or sum(c) != one:
                        failed = True
                        print("cluster: %s rows (FINAL) per shard %s, expected %d in all (as on one server), none empty"
                              % (t, c, one))
                continue
            # Main database: every migration, then the fixture (rollups fed by
            # their views). Backfill database: the first migration, the
            # fixture, then the others (rollups filled by their INSERT ... SELECT).
            for db, before in ((backfill_db, migrations[:1]), (args.database, migrations)):
                e.create(db)
                for m in before:
                    apply_migration(e, mig_dir, m)
                for stmt in fx.statements:
                    e.execute(stmt)
                for m in migrations[len(before):]:
                    apply_migration(e, mig_dir, m)
                for stmt in fx.late_statements:
                    e.execute(stmt)
            print("%s %s: databases %s and %s, %d migrations, fixture loaded (%d statements) in %.1fs"
                  % (e.name, e.version(), args.database, backfill_db, len(migrations),
                     len(fx.statements), time.time() - t0))

        # Each report for every site and for one site; the exports also with
        # their options set.
        options = {"google_ads_export": [(" [min_talk=30]", dict(min_talk=30))],
                   "yandex_export": [(" [call_url]", dict(call_url=CALL_URL))]}
        for name in reports:
            with open(os.path.join(rep_dir, name + ".sql")) as f:
                text = f.read()
            runs = [("", "", {}), ("shop", " [site=shop]", {})]
            runs += [("", label, opts) for label, opts in options.get(name, [])]
            for site, label, opts in runs:
                sql = render(text, args.frm, args.to, site, **opts)
                results = []
                problems = []
                timings = []
                for e in engines:
                    t0 = time.time()
                    try:
                        results.append(table(e.query(sql)))
                    except Exception as ex:
                        problems.append("%s error: %s" % (e.name, str(ex).strip()[:1500]))
                    timings.append(time.time() - t0)
                if len(results) == len(engines):
                    for e, other in zip(engines[1:], results[1:]):
                        problems += diff(name, results[0], other, e.name)
                    rows = as_dicts(*results[0])
                    problems += known_values(name, site, rows, fx, args.frm, args.to, opts)
                    if args.show:
                        for r in rows:
                            print("    ", r)
                if not site and not opts and len(results) == len(engines):
                    # The same report over the backfilled rollups.
                    for e, main_result in zip(engines, results):
                        if not e.backfill:
                            continue
                        e.use(backfill_db)
                        try:
                            problems += ["backfill: " + x for x in
                                         diff(name, main_result, table(e.query(sql)))]
                        except Exception as ex:
                            problems.append("backfill %s error: %s" % (e.name, str(ex).strip()[:800]))
                        e.use(args.database)
                if problems:
                    failed = True
                    print("report %s%s: FAILED" % (name, label))
                    for pr in problems:
                        print("  " + pr)
                else:
                    print("report %s%s: ok (%d rows; %s%s)"
                          % (name, label, len(results[0][1]),
                             ", ".join("%s %.2fs" % (e.name, t) for e, t in zip(engines, timings)),
                             "" if site or opts else "; backfilled rollups agree"))
    except Exception as ex:
        failed = True
        print("ERROR: %s" % ex)
    finally:
        for e in engines:
            try:
                e.close(args.keep)
            except Exception as ex:
                print("warning: cleanup of %s: %s" % (e.name, ex))
    print("%s in %.1fs" % ("FAILED" if failed else "all reports agree", time.time() - started))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
