//! The install check behind the web app's Install page: the site a token
//! reads, the origins allowed to run its snippet, and the last visit the
//! tracker recorded from each origin (so a marketer sees at once whether
//! the tag runs on their pages).

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use dialmark_schemas::reports::quote;
use serde_json::Value;

use crate::app::Shared;
use crate::calls::{asked, rows_json};
use crate::error::TrackerError;

pub fn router() -> Router<Shared> {
    Router::new().route("/v1/install", get(install))
}

/// How far back a visit counts as "seen".
pub const SEEN_DAYS: u32 = 30;

/// The SQL of the last visit per page origin of `site` since `since`.
pub fn seen_sql(site: &str, since: u32) -> String {
    format!(
        "SELECT extract(url, '^[A-Za-z][A-Za-z0-9+.-]*://[^/#]+') AS page_origin, \
         toUInt32(max(ts)) AS last_visit, argMax(url, ts) AS page, count() AS visits \
         FROM visits WHERE site = {} AND ts >= toDateTime({since}) \
         GROUP BY page_origin ORDER BY last_visit DESC LIMIT 50",
        quote(site)
    )
}

async fn install(
    State(s): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, TrackerError> {
    let (_, _, site) = asked(&s, &headers, q.as_deref(), &["site"]).await?;
    if site.is_empty() {
        return Err(TrackerError::BadRequest(
            "site: which site (the admin token reads every site)".into(),
        ));
    }
    let def = s.inventory.site(&site).await?;
    let since = dialmark_schemas::unix_now().saturating_sub(SEEN_DAYS * 86_400);
    let seen = rows_json(&s, &seen_sql(&site, since)).await?;
    let origins: Vec<Value> = def
        .origins
        .iter()
        .map(|o| {
            let last = seen
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["page_origin"] == o.as_str()))
                .cloned()
                .unwrap_or(Value::Null);
            serde_json::json!({ "origin": o, "last_visit": last })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "site": site,
        "origins": origins,
        "seen": seen,
        "seen_days": SEEN_DAYS,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visits_are_grouped_by_page_origin() {
        let sql = seen_sql("sh'op", 1_800_000_000);
        assert!(sql.contains("site = 'sh\\'op'"), "{sql}");
        assert!(sql.contains("ts >= toDateTime(1800000000)"), "{sql}");
        assert!(sql.contains("GROUP BY page_origin"), "{sql}");
    }
}
