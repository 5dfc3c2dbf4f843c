//! The numbers API behind the web app's Numbers page: each pool of a site
//! with its use now (from Redis) and over time (`pool_samples`), and the
//! number lifecycle at a glance (stock / active / quarantine), for the
//! admin token or the site's read token.

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use dialmark_schemas::layout;
use dialmark_schemas::reports::{self, quote};
use dialmark_schemas::store::Redis;
use serde_json::Value;

use crate::access::Reader;
use crate::app::Shared;
use crate::calls::{asked, range, rows_json};
use crate::error::TrackerError;
use crate::pool;

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/v1/pools", get(list))
        .route("/v1/pools/{id}/samples", get(samples))
}

/// Points of the use chart: the range is cut into about this many buckets.
const BUCKETS: u32 = 240;

async fn list(
    State(s): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, TrackerError> {
    let (_, _, site) = asked(&s, &headers, q.as_deref(), &["site"]).await?;
    let inv = &s.inventory;
    let ids: Vec<String> = if site.is_empty() {
        inv.pool_ids().await?
    } else {
        inv.site(&site)
            .await?
            .pools()
            .into_iter()
            .map(String::from)
            .collect()
    };
    let mut r = inv.redis.clone();
    let mut out = Vec::new();
    let mut active = 0;
    for id in ids {
        // A line may name a pool not created yet: listed as missing.
        let def = match inv.pool(&id).await {
            Ok(d) => d,
            Err(TrackerError::NotFound(_)) => {
                out.push(serde_json::json!({ "id": id, "missing": true }));
                continue;
            }
            Err(e) => return Err(e),
        };
        let st = pool::stats(&mut r, &id).await?;
        active += st.size;
        out.push(serde_json::json!({
            "id": id,
            "site": def.site,
            "overflow_number": def.overflow_number,
            "size": st.size,
            "leased": st.leased,
            "free": st.free,
            "exhausted": st.exhausted,
            "network_capped": st.network_capped,
        }));
    }
    let lifecycle = lifecycle(&mut r, &site, active).await?;
    Ok(Json(
        serde_json::json!({ "pools": out, "lifecycle": lifecycle }),
    ))
}

/// Numbers per lifecycle state: `stock` (the node's spare numbers, no
/// site's yet: what a pool can grow by), `active` (in the listed pools)
/// and `quarantine` (retired numbers of `site`; every one for '').
async fn lifecycle(r: &mut Redis, site: &str, active: u64) -> Result<Value, TrackerError> {
    let stock: u64 = redis::cmd("SCARD")
        .arg(layout::STOCK)
        .query_async(r)
        .await?;
    let quarantine: u64 = if site.is_empty() {
        redis::cmd("ZCARD")
            .arg(layout::QUARANTINE)
            .query_async(r)
            .await?
    } else {
        let retired: Vec<String> = redis::cmd("ZRANGE")
            .arg(layout::QUARANTINE)
            .arg(0)
            .arg(-1)
            .query_async(r)
            .await?;
        let mut theirs = 0;
        for number in &retired {
            // One key per command: routes live on many Cluster slots.
            let owner: Option<String> = redis::cmd("HGET")
                .arg(layout::route_key(number))
                .arg("site")
                .query_async(r)
                .await?;
            theirs += u64::from(owner.as_deref() == Some(site));
        }
        theirs
    };
    Ok(serde_json::json!({ "stock": stock, "active": active, "quarantine": quarantine }))
}

/// The SQL of a pool's use over `[from, to)`: per bucket (the range in
/// [`BUCKETS`], a minute at least) the most numbers leased in a sample and
/// the pool's size; `at` is the bucket's start.
pub fn samples_sql(pool: &str, from: &str, to: &str) -> Result<String, TrackerError> {
    let bad = |e: reports::ReportError| TrackerError::BadRequest(e.to_string());
    let (from, to) = (
        reports::datetime("from", from).map_err(bad)?,
        reports::datetime("to", to).map_err(bad)?,
    );
    let step = format!("greatest(60, intDiv(toUInt32({to}) - toUInt32({from}), {BUCKETS}))");
    Ok(format!(
        "SELECT intDiv(toUInt32(ts), {step}) * {step} AS at, max(leased) AS leased, max(size) AS size \
         FROM pool_samples WHERE pool = {} AND ts >= {from} AND ts < {to} GROUP BY at ORDER BY at",
        quote(pool),
    ))
}

async fn samples(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, TrackerError> {
    let (reader, pairs, _) = asked(&s, &headers, q.as_deref(), &["from", "to"]).await?;
    let def = s.inventory.pool(&id).await?;
    if let Reader::Site(own) = &reader {
        if def.site != *own {
            return Err(TrackerError::NotFound(format!("pool {id:?}")));
        }
    }
    let (from, to) = range(&pairs)?;
    let rows = rows_json(&s, &samples_sql(&id, &from, &to)?).await?;
    Ok(Json(serde_json::json!({ "pool": id, "rows": rows })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_bucketed_per_pool() {
        let sql = samples_sql("p'1", "2026-11-01", "2026-12-01").unwrap();
        assert!(sql.contains("pool = 'p\\'1'"), "{sql}");
        assert!(
            sql.starts_with("SELECT intDiv(toUInt32(ts), greatest(60, intDiv("),
            "{sql}"
        );
        assert!(sql.contains("GROUP BY at ORDER BY at"), "{sql}");
    }
}
