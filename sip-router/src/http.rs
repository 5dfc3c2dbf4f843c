//! The router's HTTP side for operators: `/healthz`, Prometheus `/metrics`
//! (with each trunk's quality over 1, 5 and 15 minutes, computed at the
//! scrape), `/status` (a page that refreshes itself from `/status.json`)
//! and the trunk commands (`POST /trunks/{name}/{command}`), taken only
//! from the node itself (loopback).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{mpsc, oneshot};

use crate::allocator::AllocatorStats;
use crate::control::ControlMsg;
use crate::manual::Command;
use crate::now_ms;
use crate::quality::{Point, Stats, WINDOWS_S};
use crate::shared::Shared;

/// What `/status` and `/status.json` show of a trunk.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TrunkStatus {
    pub name: String,
    pub group: String,
    pub address: String,
    /// `up`, `down`, `degraded` or `drained`.
    pub state: &'static str,
    pub up: bool,
    pub since_unix: u64,
    pub priority: u32,
    pub weight: u32,
    /// Why it stands where it does (quality, an operator), or ''.
    pub why: String,
    /// Attempts on the trunk now, counted live by the shards.
    pub active_calls: u32,
    /// The 1-, 5- and 15-minute windows.
    pub windows: Vec<Stats>,
    /// The last hour, a point a minute (oldest first).
    pub history: Vec<Point>,
    /// The same drawn: ASR, NER and PDD p95 sparklines (SVG), as the page
    /// shows them.
    pub history_svg: String,
}

#[derive(Clone)]
pub struct HttpState {
    pub shared: Arc<Shared>,
    /// Where trunk commands go.
    pub control: mpsc::Sender<ControlMsg>,
    pub metrics: Option<PrometheusHandle>,
    /// Sink counters by table, published at scrape time.
    pub sinks: Vec<(&'static str, Arc<dialmark_schemas::sink::SinkStats>)>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/status", get(status_page))
        .route("/status.json", get(status_json))
        .route("/trunks/{name}/{command}", post(trunk_command))
        .route("/debug/allocator", get(allocator_report))
        .with_state(state)
}

/// `GET /debug/allocator`: jemalloc's full report, for the NOC to see where
/// memory stays after a peak (loopback only, like the trunk commands).
async fn allocator_report(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    if let Some(refused) = remote_refused(
        peer,
        "the allocator report is served to the node itself only (loopback)\n",
    ) {
        return refused;
    }
    crate::allocator::report().into_response()
}

/// 403 with `why` for a request from anywhere but the node itself.
fn remote_refused(peer: SocketAddr, why: &'static str) -> Option<Response> {
    (!peer.ip().is_loopback()).then(|| (StatusCode::FORBIDDEN, why).into_response())
}

#[derive(serde::Deserialize)]
struct Actor {
    actor: Option<String>,
}

/// `POST /trunks/{name}/{command}?actor=who`: an operator's command (see
/// [`crate::manual`]); the reply is the trunk's state after it.
async fn trunk_command(
    State(s): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((name, command)): Path<(String, String)>,
    Query(q): Query<Actor>,
) -> Response {
    if let Some(refused) = remote_refused(
        peer,
        "trunk commands are taken from the node itself only (loopback)\n",
    ) {
        return refused;
    }
    let command = match command.parse::<Command>() {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let actor = match q.actor.as_deref().map(str::trim) {
        Some(a) if !a.is_empty() && a.len() <= 64 => a.to_string(),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "name yourself: ?actor=<who> (1..64 characters), for the audit trail\n",
            )
                .into_response()
        }
    };
    let (reply, answer) = oneshot::channel();
    let msg = ControlMsg::Manual {
        trunk: name,
        command,
        actor,
        reply,
    };
    if s.control.send(msg).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the node is stopping\n").into_response();
    }
    match answer.await {
        Ok(Ok(state)) => (StatusCode::OK, format!("{state}\n")).into_response(),
        Ok(Err(e)) => (StatusCode::NOT_FOUND, format!("{e}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "the node is stopping\n").into_response(),
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    for (table, st) in &s.sinks {
        st.export(table);
    }
    metrics::gauge!("dialmark_router_memory_budget_bytes").set(s.shared.budget.limit as f64);
    metrics::gauge!("dialmark_router_memory_used_bytes").set(s.shared.budget.used() as f64);
    metrics::gauge!("dialmark_router_refusing_new_calls").set(if s.shared.refusing() {
        1.0
    } else {
        0.0
    });
    export_quality(&s.shared);
    if let Some(a) = AllocatorStats::read() {
        a.export();
    }
    match &s.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (axum::http::StatusCode::NOT_FOUND, "no metrics recorder\n").into_response(),
    }
}

/// Each trunk's windows as gauges, labelled `trunk` and `window` (`1m`,
/// `5m`, `15m`); a ratio without attempts is left out, not 0.
fn export_quality(shared: &Shared) {
    let now = now_ms();
    for t in &shared.snapshot().trunks {
        metrics::gauge!("dialmark_trunk_active_calls", "trunk" => t.cfg.name.clone())
            .set(f64::from(t.live.active.load(Ordering::Relaxed)));
        for w in WINDOWS_S {
            let st = t.live.window(now, w);
            let labels = [
                ("trunk", t.cfg.name.clone()),
                ("window", format!("{}m", w / 60)),
            ];
            metrics::gauge!("dialmark_trunk_window_attempts", &labels).set(f64::from(st.attempts));
            let ratios = [
                ("dialmark_trunk_asr", st.asr),
                ("dialmark_trunk_ner", st.ner),
                ("dialmark_trunk_seer", st.seer),
                ("dialmark_trunk_failover_share", st.failover_share),
                ("dialmark_trunk_short_call_share", st.short_share),
                (
                    "dialmark_trunk_pdd_p50_seconds",
                    st.pdd_p50_ms.map(|v| f64::from(v) / 1000.0),
                ),
                (
                    "dialmark_trunk_pdd_p95_seconds",
                    st.pdd_p95_ms.map(|v| f64::from(v) / 1000.0),
                ),
            ];
            for (name, v) in ratios {
                if let Some(v) = v {
                    metrics::gauge!(name, &labels).set(v);
                }
            }
        }
    }
}

/// Trunks with their state, live call counts and quality windows.
pub fn snapshot(shared: &Shared) -> Vec<TrunkStatus> {
    let now = now_ms();
    shared
        .snapshot()
        .trunks
        .iter()
        .map(|t| TrunkStatus {
            name: t.cfg.name.clone(),
            group: t.cfg.group.clone(),
            address: t.cfg.address.to_string(),
            state: if t.drained {
                "drained"
            } else if !t.up {
                "down"
            } else if t.degraded {
                "degraded"
            } else {
                "up"
            },
            up: t.up,
            since_unix: t.since_ms / 1000,
            priority: t.cfg.priority,
            weight: t.cfg.weight,
            why: t.why.clone(),
            active_calls: t.live.active.load(Ordering::Relaxed),
            windows: WINDOWS_S.iter().map(|&w| t.live.window(now, w)).collect(),
            history: t.live.history(now),
            history_svg: String::new(),
        })
        .map(|mut t| {
            t.history_svg = sparklines(&t.history);
            t
        })
        .collect()
}

/// ASR and NER (0–100 %) and PDD p95 (0 to the hour's highest) over the
/// last hour; minutes without attempts are gaps.
fn sparklines(h: &[Point]) -> String {
    // PDD past a minute is one bin (no upper edge): drawn at 60 s.
    const PDD_CAP_MS: u32 = 60_000;
    let pdd = |p: &Point| p.pdd_p95_ms.map(|v| v.min(PDD_CAP_MS));
    let pdd_max = h.iter().filter_map(pdd).max().unwrap_or(0);
    let line = |name: &str, vals: Vec<Option<f64>>, max: f64, label: String| {
        const W: f64 = 120.0;
        const H: f64 = 22.0;
        let step = W / (vals.len().max(2) - 1) as f64;
        let mut segs: Vec<Vec<String>> = vec![vec![]];
        for (i, v) in vals.iter().enumerate() {
            match v {
                Some(v) => {
                    let y = H - 1.0 - (v / max.max(f64::MIN_POSITIVE)).min(1.0) * (H - 2.0);
                    segs.last_mut()
                        .expect("one")
                        .push(format!("{:.1},{y:.1}", i as f64 * step));
                }
                None if segs.last().is_some_and(|s| !s.is_empty()) => segs.push(vec![]),
                None => {}
            }
        }
        let marks: String = segs
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| match s.as_slice() {
                [one] => {
                    let (x, y) = one.split_once(',').expect("x,y");
                    format!("<circle cx=\"{x}\" cy=\"{y}\" r=\"1.5\"/>")
                }
                _ => format!("<polyline points=\"{}\"/>", s.join(" ")),
            })
            .collect();
        format!(
            "<span class=\"spark\" data-metric=\"{name}\"><svg width=\"120\" height=\"22\" viewBox=\"0 0 120 22\">\
<rect width=\"120\" height=\"22\"/>{marks}</svg> {label}</span>"
        )
    };
    let last = |f: fn(&Point) -> Option<f64>| h.iter().rev().find_map(f);
    let pct = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{:.0}%", v * 100.0));
    [
        line(
            "asr",
            h.iter().map(|p| p.asr).collect(),
            1.0,
            format!("ASR {}", pct(last(|p| p.asr))),
        ),
        line(
            "ner",
            h.iter().map(|p| p.ner).collect(),
            1.0,
            format!("NER {}", pct(last(|p| p.ner))),
        ),
        line(
            "pdd_p95_ms",
            h.iter().map(|p| pdd(p).map(f64::from)).collect(),
            f64::from(pdd_max),
            if pdd_max == PDD_CAP_MS {
                "PDD p95 max ≥ 60 s".to_string()
            } else {
                format!("PDD p95 max {pdd_max} ms")
            },
        ),
    ]
    .join("<br>")
}

/// The status page's lists: the last failovers and trunk events, newest
/// first, as lines of text.
fn recent(shared: &Shared) -> (Vec<String>, Vec<String>) {
    let failovers = shared
        .recent_failovers
        .lock()
        .expect("status lock")
        .iter()
        .rev()
        .map(|(at, trunk)| {
            format!(
                "{} — failover from {trunk}",
                dialmark_schemas::rfc3339(at / 1000)
            )
        })
        .collect();
    let events = shared
        .recent_events
        .lock()
        .expect("status lock")
        .iter()
        .rev()
        .map(|e| {
            let mut line = format!(
                "{} — {}: {} → {} ({}) {}",
                dialmark_schemas::rfc3339(u64::from(e.ts)),
                e.trunk,
                e.previous.as_str(),
                e.state.as_str(),
                e.cause.as_str(),
                e.reason
            );
            if e.shifted_calls > 0 {
                line += &format!("; {} calls shifted", e.shifted_calls);
            }
            line
        })
        .collect();
    (failovers, events)
}

async fn status_json(State(s): State<HttpState>) -> Json<serde_json::Value> {
    let c = &s.shared.counts;
    let (failovers, events) = recent(&s.shared);
    Json(serde_json::json!({
        "recent_failovers": failovers,
        "recent_trunk_events": events,
        "active_calls": c.calls.load(Ordering::Relaxed),
        "tombstones": c.tombstones.load(Ordering::Relaxed),
        "memory": {"budget_bytes": s.shared.budget.limit, "used_bytes": s.shared.budget.used()},
        "refusing_new_calls": s.shared.refusing(),
        "trunks": snapshot(&s.shared),
    }))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page: a shell that draws `/status.json` and redraws it every 5 s
/// without reloading (the table is also rendered server-side, so the page
/// reads without JavaScript).
async fn status_page(State(s): State<HttpState>) -> Html<String> {
    let trunks = snapshot(&s.shared);
    let rows: String = trunks.iter().map(row_html).collect();
    let (failovers, events) = recent(&s.shared);
    let li =
        |v: Vec<String>| -> String { v.iter().map(|l| format!("<li>{}</li>", esc(l))).collect() };
    let (failovers, events) = (li(failovers), li(events));
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
<title>dialmark router status</title><style>body{{font:14px system-ui,sans-serif;margin:1.5rem}}\
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem}}\
tr.down td.state{{background:#f88;font-weight:bold}}tr.up td.state{{background:#8e8}}\
tr.degraded td.state{{background:#fc6;font-weight:bold}}tr.drained td.state{{background:#ccc}}\
.spark{{white-space:nowrap;font-size:12px}}.spark svg{{vertical-align:middle}}.spark rect{{fill:#f6f6f6}}\
.spark polyline{{fill:none;stroke:#36c;stroke-width:1.5}}.spark circle{{fill:#36c}}</style></head><body>\
<h1>dialmark router</h1><p>Active calls: <b id=\"active\">{active}</b> · <span id=\"updated\">refreshed every 5 s</span></p>\
<table><thead><tr><th>trunk</th><th>group</th><th>address</th><th>state</th><th>why</th><th>since (UTC)</th>\
<th>priority / weight</th><th>calls now</th><th>attempts 15m</th><th>ASR 15m</th><th>NER 1m / 15m</th>\
<th>PDD p95 1m</th><th>failovers 15m</th><th>last hour</th></tr></thead><tbody id=\"trunks\">\n{rows}</tbody></table>\
<h2>Recent trunk events</h2><ul id=\"events\">{events}</ul>\
<h2>Recent failovers</h2><ul id=\"failovers\">{failovers}</ul>\
<script>{SCRIPT}</script></body></html>",
        active = s.shared.counts.calls.load(Ordering::Relaxed),
    ))
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.0}%", v * 100.0))
}

fn row_html(t: &TrunkStatus) -> String {
    let (m1, m15) = (&t.windows[0], &t.windows[2]);
    format!(
        "<tr class=\"{state}\" data-trunk=\"{name}\"><td>{name}</td><td>{group}</td><td>{addr}</td>\
<td class=\"state\">{state_uc}</td><td class=\"why\">{why}</td><td>{since}</td><td>{prio} / {weight}</td>\
<td class=\"active\">{active}</td><td>{attempts}</td><td>{asr}</td><td>{ner1} / {ner15}</td><td>{pdd}</td><td>{fo}</td>\
<td class=\"history\">{history}</td></tr>\n",
        state = t.state,
        state_uc = t.state.to_uppercase(),
        name = esc(&t.name),
        group = esc(&t.group),
        addr = esc(&t.address),
        why = esc(&t.why),
        since = dialmark_schemas::rfc3339(t.since_unix),
        prio = t.priority,
        weight = t.weight,
        active = t.active_calls,
        attempts = m15.attempts,
        asr = pct(m15.asr),
        ner1 = pct(m1.ner),
        ner15 = pct(m15.ner),
        pdd = m1.pdd_p95_ms.map_or("–".into(), |v| format!("{v} ms")),
        fo = m15.failover_share.map_or(0, |f| (f * f64::from(m15.attempts)).round() as u64),
        history = t.history_svg,
    )
}

/// Redraws the table from `/status.json` (the same columns as
/// [`row_html`]).
const SCRIPT: &str = r#"
const pct = v => v == null ? "–" : Math.round(v * 100) + "%";
const esc = s => String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;"}[c]));
const iso = s => new Date(s * 1000).toISOString().replace(/\.\d+Z$/, "Z");
async function refresh() {
  try {
    const r = await fetch("status.json", {cache: "no-store"});
    const s = await r.json();
    document.getElementById("active").textContent = s.active_calls;
    document.getElementById("trunks").innerHTML = s.trunks.map(t => {
      const [m1, , m15] = t.windows;
      const fo = m15.failover_share == null ? 0 : Math.round(m15.failover_share * m15.attempts);
      return `<tr class="${t.state}" data-trunk="${esc(t.name)}"><td>${esc(t.name)}</td><td>${esc(t.group)}</td>` +
        `<td>${esc(t.address)}</td><td class="state">${t.state.toUpperCase()}</td><td class="why">${esc(t.why)}</td>` +
        `<td>${iso(t.since_unix)}</td><td>${t.priority} / ${t.weight}</td><td class="active">${t.active_calls}</td>` +
        `<td>${m15.attempts}</td><td>${pct(m15.asr)}</td><td>${pct(m1.ner)} / ${pct(m15.ner)}</td>` +
        `<td>${m1.pdd_p95_ms == null ? "–" : m1.pdd_p95_ms + " ms"}</td><td>${fo}</td>` +
        `<td class="history">${t.history_svg}</td></tr>`;
    }).join("\n");
    const li = lines => lines.map(l => `<li>${esc(l)}</li>`).join("");
    document.getElementById("events").innerHTML = li(s.recent_trunk_events);
    document.getElementById("failovers").innerHTML = li(s.recent_failovers);
    document.getElementById("updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
  } catch (e) {
    document.getElementById("updated").textContent = "node unreachable: " + e;
  }
}
setInterval(refresh, 5000);
"#;
