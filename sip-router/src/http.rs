//! The router's HTTP side for operators: `/healthz`, Prometheus `/metrics`,
//! and `/status`, a plain auto-refreshing HTML page of trunk state.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::now_ms;
use crate::shared::Shared;

/// What `/status` and `/status.json` show of a trunk.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TrunkStatus {
    pub name: String,
    pub group: String,
    pub address: String,
    pub up: bool,
    pub since_unix: u64,
    /// Attempts on the trunk now, counted live by the shards.
    pub active_calls: u32,
    pub attempts_15m: u64,
    pub answered_15m: u64,
    pub failovers_15m: u64,
}

#[derive(Clone)]
pub struct HttpState {
    pub shared: Arc<Shared>,
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
        .with_state(state)
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
    match &s.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => (axum::http::StatusCode::NOT_FOUND, "no metrics recorder\n").into_response(),
    }
}

/// Trunks with their live call counts and 15-minute attempt, answer and
/// failover counts.
pub fn snapshot(shared: &Shared) -> Vec<TrunkStatus> {
    let mut trunks: Vec<TrunkStatus> = shared
        .snapshot()
        .trunks
        .iter()
        .map(|t| TrunkStatus {
            name: t.cfg.name.clone(),
            group: t.cfg.group.clone(),
            address: t.cfg.address.to_string(),
            up: t.up,
            since_unix: t.since_ms / 1000,
            active_calls: t.live.active.load(Ordering::Relaxed),
            ..TrunkStatus::default()
        })
        .collect();
    let now = now_ms();
    let recent = shared.recent.lock().expect("status lock");
    for t in &mut trunks {
        for (at, name, answered, failover) in recent.iter() {
            if *name == t.name && now.saturating_sub(*at) <= 15 * 60 * 1000 {
                t.attempts_15m += 1;
                t.answered_15m += u64::from(*answered);
                t.failovers_15m += u64::from(*failover);
            }
        }
    }
    trunks
}

async fn status_json(State(s): State<HttpState>) -> Json<serde_json::Value> {
    let c = &s.shared.counts;
    Json(serde_json::json!({
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

async fn status_page(State(s): State<HttpState>) -> Html<String> {
    let trunks = snapshot(&s.shared);
    let mut rows = String::new();
    for t in &trunks {
        let asr = if t.attempts_15m > 0 {
            format!(
                "{:.0}%",
                100.0 * t.answered_15m as f64 / t.attempts_15m as f64
            )
        } else {
            "–".into()
        };
        rows.push_str(&format!(
            "<tr class=\"{cls}\" data-trunk=\"{name}\"><td>{name}</td><td>{group}</td><td>{addr}</td><td class=\"state\">{state}</td><td>{since}</td><td>{active}</td><td>{attempts}</td><td>{asr}</td><td>{fo}</td></tr>\n",
            cls = if t.up { "up" } else { "down" },
            name = esc(&t.name),
            group = esc(&t.group),
            addr = esc(&t.address),
            state = if t.up { "UP" } else { "DOWN" },
            since = crate::alert::rfc3339(t.since_unix),
            active = t.active_calls,
            attempts = t.attempts_15m,
            fo = t.failovers_15m,
        ));
    }
    let failovers: String = s
        .shared
        .recent_failovers
        .lock()
        .expect("status lock")
        .iter()
        .rev()
        .map(|(at, trunk)| {
            format!(
                "<li>{} — failover from {}</li>",
                crate::alert::rfc3339(at / 1000),
                esc(trunk)
            )
        })
        .collect();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
<title>dialmark router status</title><style>body{{font:14px system-ui,sans-serif;margin:1.5rem}}\
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem}}\
tr.down td.state{{background:#f88;font-weight:bold}}tr.up td.state{{background:#8e8}}</style></head><body>\
<h1>dialmark router</h1><p>Active calls: <b id=\"active\">{active}</b> · refreshed every 5 s</p>\
<table><thead><tr><th>trunk</th><th>group</th><th>address</th><th>state</th><th>since (UTC)</th><th>calls now</th>\
<th>attempts 15m</th><th>ASR 15m</th><th>failovers 15m</th></tr></thead><tbody>\n{rows}</tbody></table>\
<h2>Recent failovers</h2><ul id=\"failovers\">{failovers}</ul></body></html>",
        active = s.shared.counts.calls.load(Ordering::Relaxed),
    ))
}
