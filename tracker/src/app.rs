//! The HTTP surface of the tracker: routes, shared state, the snippet file
//! and `/metrics`. Handlers live with the module that owns their logic
//! (`visit`, `admin`, `calls`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use dialmark_schemas::config::Config;
use dialmark_schemas::layout::Scripts;
use dialmark_schemas::rows::{LeaseEvent, NumberEvent, NumberLease, PoolSample, Visit};
use dialmark_schemas::sink::{SchemaGate, Sink, SinkStarter};
use dialmark_schemas::store::Redis;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;

use crate::geo::Geo;
use crate::inventory::Inventory;
use crate::pool::{self, LeaseTiming};
use crate::{admin, calls, install, numbers, visit, webapp};

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub inventory: Inventory,
    pub geo: Arc<Geo>,
    pub visits: Sink<Visit>,
    pub leases: Sink<NumberLease>,
    pub samples: Sink<PoolSample>,
    pub metrics: Option<PrometheusHandle>,
    pub exhaustion_log: Arc<visit::ExhaustionLog>,
    pub live: crate::live::Live,
}

/// What handlers get: the state behind one `Arc`, so a request clones a
/// pointer rather than every handle in [`AppState`].
pub type Shared = Arc<AppState>;

/// Writer tasks of the sinks; awaited on shutdown so queued rows are flushed.
pub struct SinkTasks(pub Vec<JoinHandle<()>>);

impl AppState {
    /// Connects to Redis and starts the ClickHouse sinks; `role` names the
    /// spool subdirectory (`tracker` for the service, `tracker-cli` for
    /// admin commands): one process per spool directory.
    pub async fn new(
        config: Config,
        metrics: Option<PrometheusHandle>,
        role: &str,
        schema: SchemaGate,
    ) -> anyhow::Result<(Self, SinkTasks)> {
        let redis = Redis::connect(&config.redis)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to Redis ({}): {e}", config.redis.url))?;
        let geo = Geo::open(config.tracker.geoip_db.as_deref())?;
        let ch = dialmark_schemas::ch::client(&config.clickhouse);
        // Admin commands queue behind each other; a second service fails fast.
        let wait = if role.ends_with("-cli") {
            Duration::from_secs(60)
        } else {
            Duration::ZERO
        };
        let sinks = SinkStarter {
            client: ch.clone(),
            cfg: &config.sink,
            role,
            lock_wait: wait,
            schema,
        };
        let (visits, t1) = sinks.spawn::<Visit>(None)?;
        let (leases, t2) = sinks.spawn::<NumberLease>(None)?;
        let (events, t3) = sinks.spawn::<NumberEvent>(None)?;
        let (samples, t4) = sinks.spawn::<PoolSample>(None)?;
        let inventory = Inventory {
            redis,
            scripts: Arc::new(Scripts::default()),
            events,
            clickhouse: ch,
            plan: config.numbering.clone(),
            timing: LeaseTiming::from(&config.tracker),
            quarantine: config.tracker.quarantine.clone(),
            site_cache: Default::default(),
        };
        let live = crate::live::Live::new(config.redis.clone());
        Ok((
            Self {
                config: Arc::new(config),
                inventory,
                geo: Arc::new(geo),
                visits,
                leases,
                samples,
                metrics,
                exhaustion_log: Default::default(),
                live,
            },
            SinkTasks(vec![t1, t2, t3, t4]),
        ))
    }

    /// Queues a `number_leases` row.
    #[allow(clippy::too_many_arguments)]
    pub fn lease_event(
        &self,
        site: &str,
        pool: &str,
        number: &str,
        session: &str,
        visitor: &str,
        event: LeaseEvent,
        ts: u32,
        expires_at: u32,
    ) {
        let _ = self.leases.push(NumberLease {
            event_id: uuid::Uuid::new_v4(),
            ts,
            site: site.into(),
            pool: pool.into(),
            number: number.into(),
            session_id: session.into(),
            visitor_id: visitor.into(),
            event,
            expires_at,
        });
    }
}

pub fn router(state: AppState) -> Router {
    let limit = state.config.tracker.max_body_bytes;
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/snippet.js", get(snippet))
        .route("/demo", get(demo))
        .route("/metrics", get(metrics))
        .route(
            "/v1/visits",
            post(visit::create)
                .options(visit::preflight)
                .layer(axum::middleware::from_fn(visit::readable_errors)),
        )
        .route(
            "/v1/visits/{session}/keepalive",
            post(visit::keepalive)
                .options(visit::preflight)
                .layer(axum::middleware::from_fn(visit::readable_errors)),
        )
        .merge(admin::router())
        .merge(calls::router())
        .merge(numbers::router())
        .merge(install::router())
        .merge(webapp::router())
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(count_requests))
        .with_state(Arc::new(state))
}

/// Counts requests by route and status (`dialmark_http_requests_total`).
async fn count_requests(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let resp = next.run(req).await;
    metrics::counter!("dialmark_http_requests_total", "route" => route, "status" => resp.status().as_u16().to_string())
        .increment(1);
    resp
}

/// Serves the built snippet with an ETag so browsers revalidate cheaply.
async fn snippet(State(state): State<Shared>, headers: HeaderMap) -> Response {
    let path = &state.config.tracker.snippet_path;
    let Ok(body) = tokio::fs::read(path).await else {
        tracing::error!(path = %path.display(), "snippet file missing; build js-snippet");
        return (StatusCode::SERVICE_UNAVAILABLE, "snippet not built\n").into_response();
    };
    let etag = format!("\"{:016x}\"", dialmark_schemas::fnv1a(&body));
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag)
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8".to_string(),
            ),
            (header::CACHE_CONTROL, "public, max-age=300".to_string()),
            (header::ETAG, etag),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*".to_string()),
        ],
        body,
    )
        .into_response()
}

/// The demo page of `ops/up`, when configured.
async fn demo(State(state): State<Shared>) -> Response {
    let Some(path) = &state.config.tracker.demo_page else {
        return (StatusCode::NOT_FOUND, "no demo page configured\n").into_response();
    };
    match tokio::fs::read(path).await {
        Ok(body) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "demo page missing\n").into_response(),
    }
}

/// Prometheus text: request and lease metrics, plus pool sizes read now.
async fn metrics(State(state): State<Shared>) -> Response {
    let Some(handle) = &state.metrics else {
        return (StatusCode::NOT_FOUND, "metrics recorder not installed\n").into_response();
    };
    if let Ok(ids) = state.inventory.pool_ids().await {
        let mut r = state.inventory.redis.clone();
        for id in ids {
            if let Ok(st) = pool::stats(&mut r, &id).await {
                metrics::gauge!("dialmark_pool_size", "pool" => id.clone()).set(st.size as f64);
                metrics::gauge!("dialmark_pool_free", "pool" => id.clone()).set(st.free as f64);
                metrics::gauge!("dialmark_pool_leased", "pool" => id.clone()).set(st.leased as f64);
            }
        }
        metrics::gauge!("dialmark_redis_up").set(1.0);
    } else {
        metrics::gauge!("dialmark_redis_up").set(0.0);
    }
    state.visits.stats().export("visits");
    state.leases.stats().export("number_leases");
    state.inventory.events.stats().export("number_events");
    state.samples.stats().export("pool_samples");
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}
