"""Times the web app's pages against a running tracker (benches/app/run).

Each page is asked REQUESTS times, round-robin over the pages so the VM's
drift hits all alike, after one warm-up round; p50, p95 and max per page go
to a Markdown table (and the raw latencies to JSON). A page that answers
anything but 200 stops the run: a fast error is not a result.
"""
import argparse
import datetime
import json
import time
import urllib.request

TARGET_MS = 300


def pages(token, admin, month_ago, now):
    rng = f"from={month_ago}&to={now}"
    site = [
        ("call log, first page (marketer)", "/v1/calls?limit=50", token),
        ("call log, second page (marketer)", None, token),
        ("call log filtered by source (marketer)", "/v1/calls?limit=50&utm_source=google", token),
        ("call log, first page (admin, every site)", "/v1/calls?limit=50", admin),
        ("one call with attempts and journey", None, token),
        ("chart: calls per day", f"/v1/stats?by=day&{rng}", token),
        ("chart: calls by source", f"/v1/stats?by=source&{rng}", token),
        ("chart: missed calls by hour", f"/v1/stats?by=hour&{rng}", token),
    ]
    # JSON where the app shows the rows (campaigns, pool_health,
    # quarantine) or only the API offers them; CSV where the app offers a
    # download (what a marketer's click fetches).
    for name in ["campaigns", "conversion", "pool_health", "quarantine", "lost_call_audit"]:
        site.append((f"report {name} (JSON)", f"/v1/reports/{name}?{rng}", token))
    for name in ["campaigns", "missed_calls", "google_ads_export", "yandex_export"]:
        site.append((f"report {name} (CSV download)", f"/v1/reports/{name}?format=csv&{rng}", token))
    site.append(("report trunk_quality (admin, JSON)", f"/v1/reports/trunk_quality?{rng}", admin))
    return site


def get(base, path, token):
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        body = r.read()
        status = r.status
    ms = (time.perf_counter() - t0) * 1000
    if status != 200:
        raise SystemExit(f"{path}: HTTP {status}")
    return ms, body


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--calls", type=int, required=True)
    ap.add_argument("--visits", type=int, required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--markdown", required=True)
    a = ap.parse_args()
    today = datetime.datetime.now(datetime.timezone.utc)
    month_ago = (today - datetime.timedelta(days=30)).strftime("%Y-%m-%d")
    now = (today + datetime.timedelta(days=1)).strftime("%Y-%m-%d")
    plan = pages(a.token, a.admin, month_ago, now)
    # Paths known only from the first page: its cursor and a call id.
    _, body = get(a.base, "/v1/calls?limit=50", a.token)
    first = json.loads(body)
    if not first["calls"]:
        raise SystemExit("the call log is empty: the fill did not work")
    cursor, call_id = first["next_cursor"], first["calls"][0]["call_id"]
    plan[1] = (plan[1][0], f"/v1/calls?limit=50&cursor={cursor}", plan[1][2])
    plan[4] = (plan[4][0], f"/v1/calls/{call_id}", plan[4][2])
    lat = {name: [] for name, _, _ in plan}
    for rnd in range(a.requests + 1):
        for name, path, tok in plan:
            ms, _ = get(a.base, path, tok)
            if rnd > 0:
                lat[name].append(ms)
    json.dump(lat, open(a.json, "w"), indent=1)
    rows = []
    for name, _, _ in plan:
        v = lat[name]
        p95 = pct(v, 0.95)
        rows.append(f"| {name} | {pct(v, 0.5):.0f} | {p95:.0f} | {max(v):.0f} | {'yes' if p95 < TARGET_MS else '**no**'} |")
    met = sum(1 for name, _, _ in plan if pct(lat[name], 0.95) < TARGET_MS)
    md = [
        f"{a.calls:,} calls (with their attempts) and {a.visits:,} visits over 90 days in ClickHouse 18.16, "
        f"20 sites; the marketer reads site0 (1/20 of it), ranges are the last 30 days. "
        f"Each page asked {a.requests} times, round-robin over the pages, through the release tracker. "
        f"Target: p95 < {TARGET_MS} ms. Met by {met} of {len(plan)} pages.",
        "",
        "| page | p50 ms | p95 ms | max ms | p95 < 300 ms |",
        "| --- | ---: | ---: | ---: | --- |",
        *rows,
        "",
    ]
    open(a.markdown, "w").write("\n".join(md))


if __name__ == "__main__":
    main()
