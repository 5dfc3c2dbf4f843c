"""Deterministic fixture data for the report checker.

Two parts:

* hand-written rows with known answers (sites `shop` and `clinic`, pool
  `shop-msk`, `clinic-main`, quarantined numbers): every call disposition,
  a 503 -> 200 failover, an overflow, rejected calls, an attempt without
  its call row, replayed batches;
* a seeded simulation of pool `shop-spb` (random.Random(SEED)): visits,
  the allocate.lua lease logic (lazy reclaim, cool-down, overflow), calls
  and forwarding attempts over three trunks.

`build()` returns a Fixture: INSERT statements (in load order) and the
rows as Python dicts, from which the checker computes expected values.
All times are Unix seconds (UTC), inserted as integers so the server time
zone never matters.
"""

import calendar
import random
import uuid

SEED = 2026
FROM = "2026-11-02 00:00:00"
TO = "2026-11-09 00:00:00"

HOLD = 900            # tracker.hold_seconds
MAX_HOLD = 14400      # tracker.max_hold_seconds
COOLDOWN = 60         # tracker.cooldown_seconds
NS = uuid.UUID("6c1b7d0e-2f5e-4d8a-9a51-1d2c3b4a5f60")


def ts(text):
    """'YYYY-MM-DD hh:mm:ss' (UTC) -> Unix seconds."""
    return calendar.timegm(
        (int(text[0:4]), int(text[5:7]), int(text[8:10]),
         int(text[11:13]), int(text[14:16]), int(text[17:19]), 0, 0, 0))


def uid(name):
    return str(uuid.uuid5(NS, name))


COLUMNS = {
    "visits": [
        ("visit_id", ""), ("ts", 0), ("site", ""), ("pool", ""), ("session_id", ""),
        ("visitor_id", ""), ("number", ""), ("number_kind", "pool"), ("url", ""),
        ("referrer", ""), ("utm_source", ""), ("utm_medium", ""), ("utm_campaign", ""),
        ("utm_term", ""), ("utm_content", ""), ("gclid", ""), ("yclid", ""),
        ("fbclid", ""), ("msclkid", ""), ("ip", "203.0.113.0"), ("country", "RU"),
        ("region", "RU-MOW"), ("city", "Moscow"), ("user_agent", "fixture"),
    ],
    "number_leases": [
        ("event_id", ""), ("ts", 0), ("site", ""), ("pool", ""), ("number", ""),
        ("session_id", ""), ("visitor_id", ""), ("event", "lease"), ("expires_at", 0),
    ],
    "calls": [
        ("call_id", ""), ("sip_call_id", ""), ("received", 0), ("answered", 0),
        ("ended", 0), ("ring_ms", 0), ("talk_ms", 0), ("caller", ""), ("number", ""),
        ("number_status", "active"), ("site", ""), ("pool", ""), ("disposition", "missed"),
        ("final_code", 0), ("attempts", 0), ("final_trunk", ""), ("destination", ""),
        ("attribution", "none"), ("session_id", ""), ("visitor_id", ""),
        ("source_label", ""), ("utm_source", ""), ("utm_medium", ""),
        ("utm_campaign", ""), ("utm_term", ""), ("utm_content", ""), ("gclid", ""),
        ("yclid", ""), ("referrer", ""), ("landing_url", ""), ("country", ""),
        ("region", ""), ("city", ""),
    ],
    "call_attempts": [
        ("call_id", ""), ("attempt", 1), ("sip_call_id", ""), ("trunk", ""),
        ("destination", "+74950000000"), ("started", 0), ("ended", 0), ("pdd_ms", 0),
        ("answer_ms", 0), ("talk_ms", 0), ("final_code", 0), ("reason", ""),
        ("outcome", "rejected"), ("failover", 0),
    ],
    "trunk_events": [
        ("event_id", ""), ("ts", 0), ("trunk", ""), ("trunk_group", "default"),
        ("state", "up"), ("previous", "down"), ("cause", "probe"), ("reason", ""),
    ],
    "number_events": [
        ("event_id", ""), ("ts", 0), ("number", ""), ("site", ""), ("pool", ""),
        ("from_status", "none"), ("to_status", "active"), ("actor", "cli"), ("reason", ""),
    ],
}


def sql_value(v):
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


# Columns of later migrations. Rows that need them are loaded after every
# migration (`late_statements`): the backfill database holds only the first
# migration's columns while the main fixture loads.
LATE_COLUMNS = {
    "calls": [("gbraid", ""), ("wbraid", ""), ("ym_uid", ""), ("touch_ts", 0)],
    "call_attempts": [("site", "")],
}


class Fixture:
    def __init__(self):
        self.rows = {t: [] for t in COLUMNS}
        self.statements = []
        self.late_statements = []
        self._pending = {t: [] for t in COLUMNS}
        self._seq = 0

    def add(self, table, late=False, **kw):
        cols = COLUMNS[table] + (LATE_COLUMNS.get(table, []) if late else [])
        unknown = set(kw) - {c for c, _ in cols}
        if unknown:
            raise KeyError("%s: unknown columns %s" % (table, sorted(unknown)))
        row = {c: kw.get(c, d) for c, d in cols}
        idcol = cols[0][0]
        if table != "call_attempts" and not row[idcol]:
            self._seq += 1
            row[idcol] = uid("%s-%d" % (table, self._seq))
        self.rows[table].append(row)
        if late:
            self.late_statements.append(insert_sql(table, [row], [c for c, _ in cols]))
        else:
            self._pending[table].append(row)
        return row

    def flush(self):
        """One INSERT per table with the rows added since the last flush."""
        for table, rows in self._pending.items():
            if rows:
                self.statements.append(insert_sql(table, rows))
        self._pending = {t: [] for t in COLUMNS}

    def replay(self, table, rows):
        """A batch inserted again (sink retry): same rows, a separate INSERT."""
        self.flush()
        self.statements.append(insert_sql(table, rows))


def insert_sql(table, rows, cols=None):
    cols = cols or [c for c, _ in COLUMNS[table]]
    values = ",\n".join("(" + ", ".join(sql_value(r[c]) for c in cols) + ")" for r in rows)
    return "INSERT INTO %s (%s) VALUES\n%s" % (table, ", ".join(cols), values)


# --------------------------------------------------------------------------
# Calls and their attempts.

def add_call(fx, cid, received, caller, number, site, pool, attempts, disposition=None,
             session=None, attribution=None, number_status="active", final_code=None,
             source_label="", write_call=True, late=None, attempt_site=False):
    """attempts: list of dicts (trunk, code, outcome, pdd, answer, talk, dur).
    attempt_site: the attempt rows carry the call's site (migration 0012)."""
    s = session or {}
    t = received
    last = None
    answered_at = 0
    talk_ms = 0
    ring_ms = 0
    rows = []
    for i, a in enumerate(attempts, start=1):
        started = t
        dur = a.get("dur", 5)
        ended = started + dur
        outcome = a["outcome"]
        r = dict(call_id=cid, attempt=i, sip_call_id="sip-" + cid[:8], trunk=a["trunk"],
                 started=started, ended=ended, pdd_ms=a.get("pdd", 0),
                 answer_ms=a.get("answer", 0), talk_ms=a.get("talk", 0),
                 final_code=a["code"], reason=a.get("reason", ""), outcome=outcome,
                 failover=1 if i < len(attempts) and outcome != "answered" else 0)
        if outcome == "answered":
            answered_at = started + max(1, a.get("answer", 1000) // 1000)
            talk_ms = a.get("talk", 0)
            r["ended"] = answered_at + talk_ms // 1000
            ended = r["ended"]
        if a.get("pdd", 0) > 0:
            ring_ms += max(0, (a.get("answer") or dur * 1000) - a.get("pdd", 0))
        if attempt_site:
            r["site"] = site
        rows.append(fx.add("call_attempts", late=attempt_site, **r))
        last = a
        t = ended
    if disposition is None:
        disposition = "answered" if answered_at else "failed"
    if final_code is None:
        final_code = last["code"] if last else 404
    if attribution is None:
        attribution = "live_lease" if s else "none"
    call = None
    if write_call:
        call = fx.add(
            "calls", late=late is not None, **(late or {}), call_id=cid, sip_call_id="sip-" + cid[:8], received=received,
            answered=answered_at, ended=t if attempts else received, ring_ms=ring_ms,
            talk_ms=talk_ms, caller=caller, number=number, number_status=number_status,
            site=site, pool=pool, disposition=disposition, final_code=final_code,
            attempts=len(attempts), final_trunk=last["trunk"] if last else "",
            destination="+74950000000" if attempts else "", attribution=attribution,
            session_id=s.get("session_id", ""), visitor_id=s.get("visitor_id", ""),
            source_label=source_label, utm_source=s.get("utm_source", ""),
            utm_medium=s.get("utm_medium", ""), utm_campaign=s.get("utm_campaign", ""),
            utm_term=s.get("utm_term", ""), gclid=s.get("gclid", ""), yclid=s.get("yclid", ""),
            landing_url=s.get("landing_url", ""), country="RU", region="RU-MOW", city="Moscow")
    return call, rows


def A(trunk, code, outcome, pdd=0, answer=0, talk=0, dur=5, reason=""):
    return dict(trunk=trunk, code=code, outcome=outcome, pdd=pdd, answer=answer,
                talk=talk, dur=dur, reason=reason)


# --------------------------------------------------------------------------
# Hand-written part.

def session(site, pool, sid, vid, utm=("", "", "", ""), gclid="", yclid="", landing=""):
    return dict(site=site, pool=pool, session_id=sid, visitor_id=vid, utm_source=utm[0],
                utm_medium=utm[1], utm_campaign=utm[2], utm_term=utm[3], gclid=gclid,
                yclid=yclid, landing_url=landing)


def visit(fx, s, when, url, number, kind="pool"):
    fx.add("visits", ts=ts(when), site=s["site"], pool=s["pool"], session_id=s["session_id"],
           visitor_id=s["visitor_id"], number=number, number_kind=kind, url=url,
           utm_source=s["utm_source"], utm_medium=s["utm_medium"],
           utm_campaign=s["utm_campaign"], utm_term=s["utm_term"], gclid=s["gclid"],
           yclid=s["yclid"])


def lease(fx, s, when, number, event="lease", site=None, pool=None):
    t = ts(when)
    fx.add("number_leases", ts=t, site=site or s["site"], pool=pool or s["pool"], number=number,
           session_id=s["session_id"] if s and event != "reclaim" else "",
           visitor_id=s["visitor_id"] if s and event != "reclaim" else "",
           event=event, expires_at=t + HOLD if event == "lease" else t)


def hand(fx):
    N1, N2, N3, OVF = "+74951110001", "+74951110002", "+74951110003", "+74951110099"
    K1, K2, STATIC = "+74952220001", "+74952220002", "+74952229999"
    spring = ("google", "cpc", "spring", "buy shoes")
    autumn = ("yandex", "cpc", "autumn", "boots")
    s0 = session("shop", "shop-msk", "s0", "v3", autumn, yclid="Y0",
                 landing="https://shop.example/boots?yclid=Y0")
    s1 = session("shop", "shop-msk", "s1", "v1", spring, gclid="G1",
                 landing="https://shop.example/shoes?utm_source=google&gclid=G1")
    s2 = session("shop", "shop-msk", "s2", "v2", spring, gclid="G2",
                 landing="https://shop.example/shoes?gclid=G2")
    s3 = session("shop", "shop-msk", "s3", "v3", autumn, yclid="Y1",
                 landing="https://shop.example/boots?yclid=Y1")
    s4 = session("shop", "shop-msk", "s4", "v4", autumn)
    s5 = session("shop", "shop-msk", "s5", "v5", landing="https://shop.example/")
    s6 = session("shop", "shop-msk", "s6", "v6", ("facebook", "social", "promo", ""),
                 landing="https://shop.example/sale?fbclid=F1")
    s7 = session("shop", "shop-msk", "s7", "v7", spring, gclid="G7")
    sst = session("shop", "shop-msk", "s-static", "v-static")
    s8 = session("clinic", "clinic-main", "s8", "v8", ("google", "cpc", "implants", "dental implants"),
                 gclid="G8", landing="https://clinic.example/implants?gclid=G8")
    s9 = session("clinic", "clinic-main", "s9", "v9", ("google", "cpc", "implants", "dental implants"),
                 gclid="G9", landing="https://clinic.example/implants?gclid=G9")

    # Visits.
    visit(fx, s0, "2026-10-20 09:00:00", "https://shop.example/boots?yclid=Y0", N3)
    visit(fx, s1, "2026-11-03 10:00:00", "https://shop.example/shoes?utm_source=google&gclid=G1", N1)
    visit(fx, s1, "2026-11-03 10:02:00", "https://shop.example/shoes/red", N1)
    visit(fx, s1, "2026-11-03 10:05:00", "https://shop.example/cart#step2", N1)
    visit(fx, s2, "2026-11-03 10:05:00", "https://shop.example/shoes?gclid=G2", N2)
    visit(fx, s3, "2026-11-03 10:10:00", "https://shop.example/boots?yclid=Y1", N3)
    visit(fx, s3, "2026-11-03 10:11:00", "https://shop.example/boots/black", N3)
    visit(fx, s7, "2026-11-03 10:12:00", "https://shop.example/shoes?gclid=G7", OVF, "overflow")
    visit(fx, s4, "2026-11-03 10:30:00", "https://shop.example/boots", N1)
    visit(fx, s5, "2026-11-04 12:00:00", "https://shop.example/", N2)
    visit(fx, s6, "2026-11-04 12:30:00", "https://shop.example/sale?fbclid=F1", N3)
    visit(fx, sst, "2026-11-05 09:00:00", "https://shop.example/", "+74951234567", "static")
    visit(fx, s8, "2026-11-06 15:00:00", "https://clinic.example/implants?gclid=G8", K1)
    visit(fx, s9, "2026-11-06 16:00:00", "https://clinic.example/implants?gclid=G9", K2)
    visit(fx, s9, "2026-11-06 16:01:00", "https://clinic.example/prices", K2)

    # Lease events of shop-msk: peak 3 live leases at 10:10-10:12 on Nov 3,
    # one overflow, a lease from before {from} clipped at {from}.
    lease(fx, s0, "2026-11-01 23:50:00", N1)
    lease(fx, None, "2026-11-02 00:10:00", N1, "reclaim", "shop", "shop-msk")
    lease(fx, s1, "2026-11-03 10:00:00", N1)
    lease(fx, s2, "2026-11-03 10:05:00", N2)
    lease(fx, s3, "2026-11-03 10:10:00", N3)
    lease(fx, s7, "2026-11-03 10:12:00", OVF, "overflow")
    lease(fx, None, "2026-11-03 10:20:00", N1, "reclaim", "shop", "shop-msk")
    lease(fx, None, "2026-11-03 10:20:00", N2, "reclaim", "shop", "shop-msk")
    lease(fx, s4, "2026-11-03 10:30:00", N1)
    lease(fx, None, "2026-11-03 10:40:00", N3, "reclaim", "shop", "shop-msk")
    lease(fx, None, "2026-11-03 10:50:00", N1, "reclaim", "shop", "shop-msk")
    lease(fx, s5, "2026-11-04 12:00:00", N2)
    lease(fx, None, "2026-11-04 12:20:00", N2, "reclaim", "shop", "shop-msk")
    lease(fx, s6, "2026-11-04 12:30:00", N3)
    lease(fx, None, "2026-11-04 12:50:00", N3, "reclaim", "shop", "shop-msk")
    # clinic-main: two leases, the second released by a withdraw.
    lease(fx, s8, "2026-11-06 15:00:00", K1)
    lease(fx, s9, "2026-11-06 16:00:00", K2)
    lease(fx, None, "2026-11-06 16:20:00", K1, "reclaim", "clinic", "clinic-main")
    lease(fx, None, "2026-11-06 16:30:00", K2, "release", "clinic", "clinic-main")
    # lab-late: 8 sessions in one quarter-hour on a one-number pool, and a
    # call 1700 s after that number's lease: the pool advisor must size the
    # pool for the late call (safe from 26 numbers), not for blocking alone.
    L1, LOVF = "+74953330001", "+74953330099"
    lab = [session("lab", "lab-late", "lab-s%d" % i, "lab-v%d" % i, ("lab", "test", "late", ""))
           for i in range(8)]
    for i, sl in enumerate(lab):
        when = "2026-11-07 10:%02d:00" % (i + 1)
        visit(fx, sl, when, "https://lab.example/", L1 if i == 0 else LOVF,
              "pool" if i == 0 else "overflow")
        lease(fx, sl, when, L1 if i == 0 else LOVF, "lease" if i == 0 else "overflow")
    lease(fx, None, "2026-11-07 10:21:00", L1, "reclaim", "lab", "lab-late")

    # Calls.
    c = lambda n: uid("hand-call-%s" % n)
    add_call(fx, c("c0"), ts("2026-10-20 09:05:00"), "+79990000003", N3, "shop", "shop-msk",
             [A("trunk-a", 200, "answered", pdd=600, answer=4000, talk=30000)], session=s0)
    add_call(fx, c("c1a"), ts("2026-11-03 10:12:30"), "+79990000001", N1, "shop", "shop-msk",
             [A("trunk-b", 200, "answered", pdd=700, answer=3000, talk=30000)], session=s1)
    add_call(fx, c("c1b"), ts("2026-11-03 10:15:00"), "+79990000001", N1, "shop", "shop-msk",
             [A("trunk-a", 503, "rejected", dur=1, reason="Service Unavailable"),
              A("trunk-b", 200, "answered", pdd=800, answer=5000, talk=125000)], session=s1)
    add_call(fx, c("c2"), ts("2026-11-03 10:18:00"), "+79990000002", N2, "shop", "shop-msk",
             [A("trunk-a", 487, "no_answer", pdd=1200, dur=20, reason="ring timeout")],
             disposition="missed", final_code=480, session=s2)
    add_call(fx, c("c3"), ts("2026-11-03 10:45:00"), "+79990000003", N3, "shop", "shop-msk",
             [A("trunk-a", 200, "answered", pdd=600, answer=4000, talk=60000)],
             session=s3, attribution="recent_lease")
    add_call(fx, c("c7"), ts("2026-11-03 10:14:00"), "+79990000007", OVF, "shop", "shop-msk",
             [A("trunk-a", 408, "timeout", dur=2, reason="no provisional response"),
              A("trunk-b", 503, "transport_error", dur=1, reason="transport error")],
             disposition="failed", final_code=503, attribution="overflow")
    add_call(fx, c("c5a"), ts("2026-11-04 12:10:00"), "+79990000005", N2, "shop", "shop-msk",
             [A("trunk-a", 486, "busy", pdd=900, dur=3, reason="Busy Here")],
             disposition="busy", session=s5)
    add_call(fx, c("c5b"), ts("2026-11-04 12:15:00"), "+79990000005", N2, "shop", "shop-msk",
             [A("trunk-a", 200, "answered", pdd=700, answer=6000, talk=45000)], session=s5)
    add_call(fx, c("c6"), ts("2026-11-04 12:40:00"), "+79990000006", N3, "shop", "shop-msk",
             [A("trunk-b", 487, "canceled", pdd=1500, dur=8, reason="canceled")],
             disposition="abandoned", session=s6)
    add_call(fx, c("rq"), ts("2026-11-05 09:00:00"), "+79990000010", "+74951110050", "shop", "",
             [], disposition="rejected_quarantine", number_status="quarantine", final_code=404)
    add_call(fx, c("rs"), ts("2026-11-05 09:10:00"), "+79990000011", "+74951110060", "", "",
             [], disposition="rejected_stock", number_status="stock", final_code=404)
    add_call(fx, c("ru"), ts("2026-11-05 09:20:00"), "+79990000012", "+74951119999", "", "",
             [], disposition="rejected_unknown", number_status="unknown", final_code=404)
    add_call(fx, c("rt"), ts("2026-11-05 09:30:00"), "+79990000013", N1, "shop", "shop-msk",
             [], disposition="rejected_untrusted", final_code=403)
    add_call(fx, c("c8"), ts("2026-11-06 15:05:00"), "+79990000008", K1, "clinic", "clinic-main",
             [A("trunk-c", 200, "answered", pdd=500, answer=3000, talk=14400000)],
             disposition="timeout", session=s8)
    add_call(fx, c("c9"), ts("2026-11-06 16:05:00"), "+79990000009", K2, "clinic", "clinic-main",
             [A("trunk-c", 408, "timeout", pdd=1000, dur=60, reason="overall timeout")],
             disposition="missed", final_code=408, session=s9)
    add_call(fx, c("c20"), ts("2026-11-07 11:00:00"), "+79990000020", STATIC, "clinic", "",
             [A("trunk-c", 200, "answered", pdd=400, answer=2000, talk=90000)],
             attribution="static", source_label="billboard")
    add_call(fx, c("lab"), ts("2026-11-07 10:49:20"), "+79990000040", L1, "lab", "lab-late",
             [A("trunk-c", 486, "busy", pdd=500, dur=2, reason="Busy Here")],
             disposition="busy", session=lab[0], attribution="recent_lease")
    # Attempts of calls that have no calls row (still in progress at {to}):
    # one of shop, one of clinic, one written before attempts had a site.
    add_call(fx, c("lost"), ts("2026-11-08 23:59:30"), "+79990000030", N2, "shop", "shop-msk",
             [A("trunk-a", 503, "rejected", dur=1)], write_call=False, attempt_site=True)
    add_call(fx, c("lost-clinic"), ts("2026-11-08 23:58:00"), "+79990000031", K2, "clinic",
             "clinic-main", [A("trunk-c", 503, "rejected", dur=1)], write_call=False,
             attempt_site=True)
    add_call(fx, c("lost-old"), ts("2026-11-08 23:57:00"), "+79990000032", N2, "shop", "shop-msk",
             [A("trunk-a", 500, "rejected", dur=1)], write_call=False)
    # Exactly at {to}: outside [from, to), inside quarantine's [to - 90 d, to].
    add_call(fx, c("at-to"), ts("2026-11-09 00:00:00"), "+79991000054", "+74951110054", "shop", "",
             [], disposition="rejected_quarantine", number_status="quarantine", final_code=404)

    # Quarantine lifecycle.
    ne = lambda when, number, frm, to, reason="", site="shop", pool="shop-msk": fx.add(
        "number_events", ts=ts(when), number=number, site=site, pool=pool,
        from_status=frm, to_status=to, reason=reason)
    ne("2026-08-01 10:00:00", "+74951110050", "stock", "active")
    ne("2026-09-01 10:00:00", "+74951110050", "active", "quarantine", "retired: Q1")
    ne("2026-06-01 10:00:00", "+74951110051", "stock", "active")
    ne("2026-10-01 12:00:00", "+74951110051", "active", "quarantine", "retired: Q2")
    ne("2026-08-15 08:00:00", "+74951110052", "active", "quarantine", "retired: Q3")
    ne("2026-07-01 10:00:00", "+74951110053", "active", "quarantine", "retired: Q4")
    ne("2026-09-01 10:00:00", "+74951110053", "quarantine", "stock", "release-quarantine")
    ne("2026-08-01 10:00:00", "+74951110054", "active", "quarantine", "retired: Q6")
    ne("2026-10-01 10:00:00", "+74952220009", "stock", "active", site="clinic", pool="clinic-main")
    ne("2026-11-10 10:00:00", "+74952220009", "active", "quarantine", "after to",
       site="clinic", pool="clinic-main")
    for n, when, who in [("+74951110050", "2026-10-15 10:00:00", "+79991000050"),
                         ("+74951110052", "2026-08-20 10:00:00", "+79991000052"),
                         ("+74951110052", "2026-09-10 10:00:00", "+79991000052"),
                         ("+74951110052", "2026-10-10 10:00:00", "+79991000053"),
                         ("+74951110054", "2026-08-10 23:59:59", "+79991000054")]:
        add_call(fx, uid("q-call-%s-%s" % (n, when)), ts(when), who, n, "shop", "", [],
                 disposition="rejected_quarantine", number_status="quarantine", final_code=404)
    # Calls that do not count towards the quarantine rule: one to +74951110050
    # before it was retired (active, answered), two from an untrusted source
    # to +74951110054 while it rests.
    add_call(fx, uid("q-active-050"), ts("2026-08-20 10:00:00"), "+79991000060", "+74951110050",
             "shop", "shop-msk", [A("trunk-a", 200, "answered", pdd=500, answer=2000, talk=30000)])
    for i, when in enumerate(["2026-09-20 10:00:00", "2026-10-20 10:00:00"]):
        add_call(fx, uid("q-untrusted-054-%d" % i), ts(when), "+79991000061", "+74951110054",
                 "shop", "", [], disposition="rejected_untrusted", number_status="quarantine",
                 final_code=403)

    # Calls that use columns of later migrations (site `ads`, loaded late):
    # the export rules. An iOS web click (wbraid only); a gclid whose click
    # is 100 days old (left out: Google's 90-day click window); a 6-second
    # call (left out with a minimum talk time); a gclid with a gbraid too
    # (only the gclid goes); a Metrica ClientId.
    day = 86400
    for name, when, sess, late, talk in [
        ("ads-w", "2026-11-05 11:00:00", session("ads", "", "sa1", "va1"),
         dict(wbraid="W1", ym_uid="1690000000000000001"), 40000),
        ("ads-old", "2026-11-05 11:10:00", session("ads", "", "sa2", "va2", gclid="GOLD"),
         dict(touch_ts=ts("2026-11-05 11:10:00") - 100 * day), 40000),
        ("ads-short", "2026-11-05 11:20:00", session("ads", "", "sa3", "va3", gclid="GSHORT"),
         dict(touch_ts=ts("2026-11-05 11:00:00")), 6000),
        ("ads-both", "2026-11-05 11:30:00", session("ads", "", "sa4", "va4", gclid="GB1"),
         dict(gbraid="GBX", touch_ts=ts("2026-11-04 11:00:00")), 40000),
    ]:
        sess.update(utm_source="google", utm_medium="cpc", utm_campaign="ios")
        add_call(fx, c(name), ts(when), "+7999200%04d" % len(name), "+74953330001", "ads", "",
                 [A("trunk-c", 200, "answered", pdd=500, answer=2000, talk=talk)],
                 session=sess, late=late)

    fx.add("trunk_events", ts=ts("2026-11-03 09:00:00"), trunk="trunk-a", state="down",
           previous="up", cause="probe", reason="3 OPTIONS timeouts")
    fx.add("trunk_events", ts=ts("2026-11-03 09:05:00"), trunk="trunk-a", state="up",
           previous="down", cause="probe", reason="2 OPTIONS replies")


# --------------------------------------------------------------------------
# Simulated pool shop-spb (the allocate.lua logic, lazily reclaimed leases).

SIM_SOURCES = [
    ("google", "cpc", "summer", "sim shoes"),
    ("google", "cpc", "brand", "sim brand"),
    ("yandex", "cpc", "winter", "sim boots"),
    ("vk", "social", "stories", ""),
]
SIM_PAGES = ["/sim/shoes", "/sim/boots", "/sim/sale", "/sim/"]


def simulate(fx, rnd):
    pool, site = "shop-spb", "shop"
    numbers = ["+78120000%03d" % i for i in range(1, 5)]
    overflow = "+78120000099"
    free = {n: 0 for n in numbers}          # number -> may be leased again at
    leased = {}                             # number -> (expires_at, session)
    holder = {}                             # session -> number
    start = ts(FROM) - 3 * 3600
    end = ts(TO) + 3600
    arrivals = []
    t = start
    while t < end:
        hour = (t // 3600) % 24
        rate = 1 / 900.0 if 7 <= hour <= 21 else 1 / 5400.0
        t += int(rnd.expovariate(rate)) + 1
        arrivals.append(t)
    # A burst that exhausts the pool.
    burst = ts("2026-11-05 14:00:00")
    arrivals += [burst + 90 * i for i in range(12)]
    arrivals.sort()

    sessions = []
    for i, t0 in enumerate(arrivals):
        src = SIM_SOURCES[rnd.randrange(len(SIM_SOURCES))]
        page = SIM_PAGES[rnd.randrange(len(SIM_PAGES))]
        views = sorted(t0 + rnd.randrange(0, 600) for _ in range(rnd.randrange(0, 4)))
        views = [t0] + views
        active_until = views[-1] + rnd.randrange(10, 600)
        gclid = "SIMG%d" % i if src[0] == "google" else ""
        yclid = "SIMY%d" % i if src[0] == "yandex" else ""
        s = session(site, pool, "sim-s%d" % i, "sim-v%d" % (i % 150), src, gclid, yclid,
                    "https://shop.example%s?utm_source=%s" % (page, src[0]))
        s["page"] = page
        s["views"] = views
        s["active_until"] = active_until
        sessions.append(s)

    events = []
    for s in sessions:
        for v in s["views"]:
            events.append((v, s))
    events.sort(key=lambda e: (e[0], e[1]["session_id"]))

    for now, s in events:
        # Reclaim expired leases (allocate.lua, lazily, on every allocate).
        for n in sorted(n for n, (exp, _) in leased.items() if exp <= now):
            exp, sess = leased.pop(n)
            free[n] = now + COOLDOWN
            if holder.get(sess) == n:
                del holder[sess]
            fx.add("number_leases", ts=now, site=site, pool=pool, number=n, event="reclaim",
                   expires_at=now)
        kind = "pool"
        if s["session_id"] in holder:
            number = holder[s["session_id"]]         # renewed: no event
        else:
            candidates = sorted((score, n) for n, score in free.items() if score <= now)
            if candidates:
                number = candidates[0][1]
                del free[number]
                exp = min(s["active_until"] + HOLD, now + MAX_HOLD)
                leased[number] = (exp, s["session_id"])
                holder[s["session_id"]] = number
                s.setdefault("leases", []).append((now, number, exp))
                fx.add("number_leases", ts=now, site=site, pool=pool, number=number,
                       session_id=s["session_id"], visitor_id=s["visitor_id"], event="lease",
                       expires_at=now + HOLD)
            else:
                number, kind = overflow, "overflow"
                fx.add("number_leases", ts=now, site=site, pool=pool, number=overflow,
                       session_id=s["session_id"], visitor_id=s["visitor_id"],
                       event="overflow", expires_at=now)
        url = "https://shop.example%s" % s["page"]
        if now == s["views"][0]:
            url += "?utm_source=%s&utm_campaign=%s" % (s["utm_source"], s["utm_campaign"])
        visit(fx, s, _fmt(now), url, number, kind)

    # Calls: about one session in six calls while its lease is live.
    n_call = 0
    for s in sessions:
        if not s.get("leases") or rnd.random() > 0.17:
            continue
        lt, number, exp = s["leases"][0]
        received = lt + rnd.randrange(5, max(6, min(exp - lt, 1800)))
        caller = "+7916%07d" % rnd.randrange(0, 60)
        n_call += 1
        cid = uid("sim-call-%d" % n_call)
        r = rnd.random()
        pdd = rnd.randrange(200, 4000)
        talk = rnd.randrange(5000, 600000)
        ans = pdd + rnd.randrange(1000, 15000)
        if r < 0.55:
            at, disp = [A("trunk-a", 200, "answered", pdd=pdd, answer=ans, talk=talk)], None
        elif r < 0.65:
            at, disp = [A("trunk-a", 503, "rejected", dur=1),
                        A("trunk-b", 200, "answered", pdd=pdd, answer=ans, talk=talk)], None
        elif r < 0.72:
            at, disp = [A("trunk-a", 408, "timeout", dur=2),
                        A("trunk-b", 200, "answered", pdd=pdd, answer=ans, talk=talk)], None
        elif r < 0.79:
            at, disp = [A("trunk-a", 486, "busy", pdd=pdd, dur=4)], "busy"
        elif r < 0.86:
            at, disp = [A("trunk-b", 487, "no_answer", pdd=pdd, dur=20)], "missed"
        elif r < 0.92:
            at, disp = [A("trunk-a", 487, "canceled", pdd=pdd if r < 0.89 else 0, dur=6)], "abandoned"
        elif r < 0.96:
            at, disp = [A("trunk-a", 503, "transport_error", dur=1),
                        A("trunk-b", 500, "rejected", pdd=0, dur=1)], "failed"
        else:
            at, disp = [A("trunk-b", 603, "no_answer", pdd=pdd, dur=9)], "missed"
        attribution = "live_lease" if received < exp else "recent_lease"
        add_call(fx, cid, received, caller, number, site, pool, at, disposition=disp,
                 final_code=480 if disp == "missed" and at[-1]["code"] == 487 else None,
                 session=s, attribution=attribution)


def _fmt(t):
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def build():
    rnd = random.Random(SEED)
    fx = Fixture()
    hand(fx)
    fx.flush()
    simulate(fx, rnd)
    fx.flush()
    # Replayed batches (sink retries): reports must not double count.
    fx.replay("calls", fx.rows["calls"][:12])
    fx.replay("visits", fx.rows["visits"][:20])
    fx.replay("number_leases", fx.rows["number_leases"][:25])
    fx.replay("number_events", fx.rows["number_events"])
    # Only attempts without a provisional reply and not answered: the
    # rollup's pdd quantiles and mean talk time would weigh others twice.
    fx.replay("call_attempts", [r for r in fx.rows["call_attempts"]
                                if r["pdd_ms"] == 0 and r["outcome"] != "answered"])
    return fx
