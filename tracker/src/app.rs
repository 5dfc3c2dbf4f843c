//! The HTTP surface of the tracker: routes, shared state and the snippet
//! file. Handlers live with the module that owns their logic.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dialmark_schemas::config::Config;

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
}

impl AppState {
    pub fn new(config: Config) -> anyhow::Result<Self> {
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/snippet.js", get(snippet))
        .with_state(state)
}

/// Serves the built snippet with an ETag so browsers revalidate cheaply.
async fn snippet(State(state): State<AppState>, headers: HeaderMap) -> Response {
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
        ],
        body,
    )
        .into_response()
}
