#!/usr/bin/env python3
"""Checks ops/grafana/dialmark.json (and ops/prometheus/alerts.yml) against the code.

- Every Prometheus expression (dashboard targets, template variable queries,
  alert rule exprs) may only use metric names the Rust sources export
  (`metrics::counter!("...")`, `gauge!`, `histogram!`), plus Prometheus'
  own `up`; label names in selectors and in by/on/... clauses must be labels
  those metrics carry (or job/instance added by the scrape).
- Every ClickHouse SQL (targets of the ClickHouse datasource) may only name
  tables of schemas/migrations/*.sql and columns of those tables.

Histograms: metrics-exporter-prometheus renders them as summaries unless
buckets are configured (`set_buckets*` in the sources), so a histogram
`x` is exported as `x{quantile=...}`, `x_sum`, `x_count` (or, with buckets,
`x_bucket{le=...}`, `x_sum`, `x_count`).

Standard library only. Exit status 0 when everything resolves, 1 otherwise.
Usage: python3 ops/grafana/check.py [--strict] [DASHBOARD.json [RULES.yml]]
  --strict  also fail on KNOWN_MISSING metrics (documented, not exported yet)
  defaults: ops/grafana/dialmark.json and ops/prometheus/alerts.yml
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DASHBOARD = os.path.join(ROOT, "ops", "grafana", "dialmark.json")
ALERTS = os.path.join(ROOT, "ops", "prometheus", "alerts.yml")
RUST_DIRS = ["sip-router/src", "tracker/src", "schemas/src"]
MIGRATIONS = os.path.join(ROOT, "schemas", "migrations", "*.sql")

# Metrics that ops/README.md documents but no Rust source exports yet.
# They are reported as warnings (errors with --strict) so the gap stays
# visible without blocking the rest of the checks; remove an entry once the
# code exports the metric.
KNOWN_MISSING = {}

SCRAPE_LABELS = {"job", "instance"}
PROMETHEUS_OWN = {"up": set(), "scrape_duration_seconds": set(), "scrape_samples_scraped": set()}

PROMQL_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
}

SQL_KEYWORDS = {
    "select", "from", "where", "group", "by", "order", "having", "limit", "as",
    "and", "or", "not", "in", "is", "null", "asc", "desc", "final", "on", "join",
    "left", "right", "inner", "outer", "full", "cross", "any", "all", "using",
    "with", "case", "when", "then", "else", "end", "interval", "distinct",
    "between", "like", "ilike", "union", "settings", "prewhere", "array",
    "second", "minute", "hour", "day", "week", "month", "quarter", "year",
    "true", "false", "nulls", "first", "last", "fill", "totals", "offset",
}


# ------------------------------------------------------------------ code side

def exported_metrics() -> tuple[dict[str, set[str]], list[str]]:
    """Metric name -> label names, as exported (summary/histogram expanded)."""
    call = re.compile(r'(?:metrics::)?(counter|gauge|histogram)!\(\s*"([A-Za-z_:][A-Za-z0-9_:]*)"')
    label = re.compile(r'"([A-Za-z_][A-Za-z0-9_]*)"\s*=>')
    kinds: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    buckets = False
    for d in RUST_DIRS:
        for path in glob.glob(os.path.join(ROOT, d, "**", "*.rs"), recursive=True):
            text = open(path, encoding="utf-8").read()
            if re.search(r"\bset_buckets", text):
                buckets = True
            for m in call.finditer(text):
                kind, name = m.group(1), m.group(2)
                end = text.find(";", m.end())
                stmt = text[m.end(): end if end >= 0 else len(text)]
                kinds[name] = kind
                labels.setdefault(name, set()).update(label.findall(stmt))
    out: dict[str, set[str]] = {}
    notes = []
    for name, kind in kinds.items():
        ls = labels[name]
        if kind == "histogram":
            if buckets:
                out[name + "_bucket"] = ls | {"le"}
            else:
                out[name] = ls | {"quantile"}
            out[name + "_sum"] = set(ls)
            out[name + "_count"] = set(ls)
        else:
            out[name] = set(ls)
    notes.append(
        f"{len(kinds)} metrics in the Rust sources; histograms exported as "
        + ("histograms (buckets configured)" if buckets else "summaries (no buckets configured)")
    )
    return out, notes


def clickhouse_tables() -> dict[str, set[str]]:
    tables: dict[str, set[str]] = {}
    create = re.compile(
        r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(?:\w+\.)?(\w+)\s*\((.*?)\)\s*ENGINE",
        re.I | re.S,
    )
    alter = re.compile(
        r"ALTER\s+TABLE\s+(?:\w+\.)?(\w+)\s+ADD\s+COLUMN\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.I
    )
    for path in sorted(glob.glob(MIGRATIONS)):
        text = re.sub(r"--[^\n]*", "", open(path, encoding="utf-8").read())
        for m in create.finditer(text):
            cols = set()
            depth = 0
            line = ""
            # split the column list on top-level commas
            for ch in m.group(2):
                if ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                if ch == "," and depth == 0:
                    cols.add(line.split()[0])
                    line = ""
                else:
                    line += ch
            if line.strip():
                cols.add(line.split()[0])
            tables.setdefault(m.group(1), set()).update(cols)
        for m in alter.finditer(text):
            tables.setdefault(m.group(1), set()).add(m.group(2))
    return tables


# ------------------------------------------------------------------ PromQL

def promql_problems(expr: str, metrics: dict[str, set[str]], strict: bool) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    warnings: list[str] = []
    known = dict(PROMETHEUS_OWN)
    known.update(metrics)
    s = re.sub(r"\$\{?\w+(?::\w+)?\}?", "X", expr)          # Grafana variables
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', s)  # strings

    used: list[str] = []

    def check_name(name: str) -> bool:
        if name in known:
            return True
        if name in KNOWN_MISSING:
            msg = f"metric {name} is documented but not exported by the code"
            (errors if strict else warnings).append(msg)
            return True
        errors.append(f"unknown metric {name}")
        return False

    def labels_of(name: str) -> set[str]:
        return known.get(name, KNOWN_MISSING.get(name, set())) | SCRAPE_LABELS

    # selectors with label matchers
    for m in re.finditer(r"(?<![\w:])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", s):
        name = m.group(1)
        used.append(name)
        if check_name(name):
            for lab in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2)):
                if lab != "__name__" and lab not in labels_of(name):
                    errors.append(f"{name} has no label {lab}")
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    grouping = []
    for m in re.finditer(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", s):
        grouping += [x.strip() for x in m.group(2).split(",") if x.strip()]
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    for m in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", s):
        tok, call = m.group(1), m.group(2)
        if call or tok.lower() in PROMQL_KEYWORDS or tok == "X":
            continue
        used.append(tok)
        check_name(tok)
    avail = set(SCRAPE_LABELS)
    for name in used:
        avail |= labels_of(name)
    for lab in grouping:
        if lab not in avail:
            errors.append(f"grouping label {lab} is on none of {sorted(set(used))}")
    if not used:
        errors.append("no metric in expression")
    return errors, warnings


# ------------------------------------------------------------------ SQL

def sql_problems(sql: str, tables: dict[str, set[str]]) -> list[str]:
    errors: list[str] = []
    s = re.sub(r"--[^\n]*", " ", sql)
    s = re.sub(r"'(?:[^'\\]|\\.)*'", "''", s)
    s = re.sub(r"\$\{?\w+(?::\w+)?\}?", " ", s)  # $__timeFilter(...) keeps its argument
    s = re.sub(r"(?<![\w.])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", " ", s)
    refs = re.findall(r"\b(?:FROM|JOIN)\s+(?:(\w+)\.)?(\w+)", s, re.I)
    if not refs:
        return ["no FROM table"]
    cols: set[str] = set()
    names = set()
    for db, t in refs:
        names.update({db, t})
        if db and db != "dialmark":
            errors.append(f"database {db} (expected dialmark)")
        if t not in tables:
            errors.append(f"unknown table {t}")
        else:
            cols |= tables[t]
    aliases = set(re.findall(r"\bAS\s+(\w+)", s, re.I))
    for m in re.finditer(r"(?<![\w.])([A-Za-z_]\w*)(\s*\()?", s):
        tok, call = m.group(1), m.group(2)
        if call or tok.lower() in SQL_KEYWORDS or tok in aliases or tok in names:
            continue
        if tok not in cols:
            errors.append(f"unknown column {tok} (tables: {', '.join(sorted(t for _, t in refs))})")
    return sorted(set(errors))


# ------------------------------------------------------------------ inputs

def dashboard_queries(dash: dict):
    """Yields (where, kind, text); kind is 'promql' or 'sql'."""
    ds_vars = {}
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "datasource":
            ds_vars["${%s}" % v["name"]] = v.get("query")
            ds_vars["$%s" % v["name"]] = v.get("query")
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", q or "")
            yield f"variable {v['name']}", "promql", m.group(1) if m else q

    def ds_type(ds):
        if isinstance(ds, dict):
            t = ds.get("type")
            if t:
                return t
            ds = ds.get("uid")
        return ds_vars.get(ds, ds)

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            typ = ds_type(t.get("datasource") or p.get("datasource"))
            where = f"panel {p.get('id')} \"{p.get('title')}\" {t.get('refId')}"
            if typ == "prometheus":
                yield where, "promql", t.get("expr", "")
            elif typ == "grafana-clickhouse-datasource":
                yield where, "sql", t.get("rawSql", "")
            else:
                yield where, "unknown", f"datasource type {typ!r}"


def alert_exprs(path: str):
    """expr values of a Prometheus rules file (plain and block scalars)."""
    lines = open(path, encoding="utf-8").read().splitlines()
    alert = "?"
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*-?\s*(alert|record):\s*(\S+)", line)
        if m:
            alert = m.group(2)
        m = re.match(r"(\s*)expr:\s*(.*)$", line)
        if m:
            indent, val = len(m.group(1)), m.group(2).strip()
            if val in ("|", "|-", ">", ">-"):
                body = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    body.append(re.sub(r"#.*$", "", lines[i]))
                    i += 1
                yield f"alert {alert}", "\n".join(body)
                continue
            yield f"alert {alert}", val.strip("'\"")
        i += 1


def main() -> int:
    args = sys.argv[1:]
    strict = "--strict" in args
    paths = [a for a in args if a != "--strict"]
    dashboard = paths[0] if paths else DASHBOARD
    alerts = paths[1] if len(paths) > 1 else ALERTS
    metrics, notes = exported_metrics()
    tables = clickhouse_tables()
    for n in notes:
        print(n)
    print(f"{len(tables)} ClickHouse tables in schemas/migrations")
    errors = 0
    warned: set[str] = set()
    try:
        dash = json.load(open(dashboard, encoding="utf-8"))
    except (OSError, ValueError) as e:
        print(f"FAIL {dashboard}: {e}")
        return 1
    items = [("dialmark.json " + w, k, q) for w, k, q in dashboard_queries(dash)]
    if os.path.exists(alerts):
        items += [("alerts.yml " + w, "promql", q) for w, q in alert_exprs(alerts)]
    counts = {"promql": 0, "sql": 0}
    for where, kind, q in items:
        if kind == "promql":
            errs, warns = promql_problems(q, metrics, strict)
        elif kind == "sql":
            errs, warns = sql_problems(q, tables), []
        else:
            errs, warns = [q], []
        counts[kind] = counts.get(kind, 0) + 1
        for w in warns:
            key = w
            if key not in warned:
                warned.add(key)
                print(f"WARN {w} (first use: {where}; see KNOWN_MISSING in ops/grafana/check.py)")
        for e in sorted(set(errs)):
            errors += 1
            print(f"FAIL {where}: {e}")
    for name in KNOWN_MISSING:
        if name in metrics:
            print(f"NOTE {name} is exported now: remove it from KNOWN_MISSING in ops/grafana/check.py")
    print(
        f"checked {counts['promql']} PromQL expressions and {counts['sql']} ClickHouse queries: "
        + ("ok" if errors == 0 else f"{errors} problem(s)")
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
