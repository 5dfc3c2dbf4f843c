//! The router's HTTP side for operators: health, metrics, status page.

use axum::routing::get;
use axum::Router;

pub fn router() -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" }))
}
