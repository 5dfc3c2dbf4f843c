//! The marketers' web app (`/app`): a call log that updates live, each
//! call's forwarding attempts, source and journey, over the calls API. The
//! files live in `js-snippet/app/` (plain ES modules: no build step) and
//! are compiled into the binary, so the app always matches its API.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::app::Shared;

const INDEX: &str = include_str!("../../js-snippet/app/index.html");
const SCRIPT: &str = include_str!("../../js-snippet/app/app.js");
const STYLE: &str = include_str!("../../js-snippet/app/app.css");

pub fn router() -> Router<Shared> {
    Router::new()
        .route(
            "/app",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app/app.js",
            get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/app/app.css",
            get(|| async { file("text/css; charset=utf-8", STYLE) }),
        )
}

/// A static file: revalidated on each load (it changes with the binary),
/// never framed by another site.
fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}
