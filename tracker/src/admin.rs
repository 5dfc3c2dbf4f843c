//! The admin API (`/v1/admin/...`, bearer token, compared in constant time)
//! over the inventory, and the inventory file that `admin apply` loads
//! (sites, pools and numbers in one TOML document, applied idempotently).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;

use crate::access;
use crate::app::{AppState, Shared};
use crate::error::TrackerError;
use crate::inventory::{AddNumbers, Inventory, PoolDef, QuarantineEntry, Site};
use crate::pool;

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/v1/admin/sites/{id}", put(put_site).get(get_site))
        .route(
            "/v1/admin/sites/{id}/tokens",
            post(issue_token).get(list_tokens),
        )
        .route("/v1/admin/sites/{id}/tokens/{name}", delete(revoke_token))
        .route("/v1/admin/pools/{id}", put(put_pool).get(get_pool))
        .route("/v1/admin/numbers", post(add_numbers))
        .route("/v1/admin/numbers/{number}", get(get_number))
        .route(
            "/v1/admin/numbers/{number}/destinations",
            put(set_destinations),
        )
        .route("/v1/admin/numbers/{number}/retire", post(retire))
        .route("/v1/admin/quarantine", get(quarantine))
        .route("/v1/admin/quarantine/release", post(release_quarantine))
}

/// Checks `Authorization: Bearer <tracker.admin_token>`.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), TrackerError> {
    access::admin(state, headers)
}

fn body<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Result<T, TrackerError> {
    serde_json::from_slice(bytes)
        .map_err(|e| TrackerError::BadRequest(format!("invalid JSON body: {e}")))
}

async fn put_site(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Json<Site>, TrackerError> {
    authorize(&s, &headers)?;
    let mut site: Site = body(&bytes)?;
    site.id = id;
    Ok(Json(s.inventory.put_site(site).await?))
}

async fn get_site(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Site>, TrackerError> {
    authorize(&s, &headers)?;
    Ok(Json(s.inventory.site(&id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
}

async fn issue_token(
    State(s): State<Shared>,
    Path(site): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, TrackerError> {
    authorize(&s, &headers)?;
    let req: NewToken = body(&bytes)?;
    let token = access::issue(&s, &site, &req.name, dialmark_schemas::unix_now()).await?;
    Ok(Json(
        serde_json::json!({ "token": token, "site": site, "name": req.name }),
    ))
}

async fn list_tokens(
    State(s): State<Shared>,
    Path(site): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, TrackerError> {
    authorize(&s, &headers)?;
    let tokens = access::list(&s, &site).await?;
    Ok(Json(serde_json::json!({ "tokens": tokens })))
}

async fn revoke_token(
    State(s): State<Shared>,
    Path((site, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, TrackerError> {
    authorize(&s, &headers)?;
    access::revoke(&s, &site, &name).await?;
    Ok(Json(serde_json::json!({ "revoked": name, "site": site })))
}

async fn put_pool(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Json<PoolDef>, TrackerError> {
    authorize(&s, &headers)?;
    let mut def: PoolDef = body(&bytes)?;
    def.id = id;
    Ok(Json(s.inventory.put_pool(def, "api").await?))
}

async fn get_pool(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, TrackerError> {
    authorize(&s, &headers)?;
    let def = s.inventory.pool(&id).await?;
    let mut r = s.inventory.redis.clone();
    let stats = pool::stats(&mut r, &id).await?;
    Ok(Json(serde_json::json!({ "pool": def, "stats": stats })))
}

async fn add_numbers(
    State(s): State<Shared>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, TrackerError> {
    authorize(&s, &headers)?;
    let req: AddNumbers = body(&bytes)?;
    let added = s
        .inventory
        .add_numbers(req, "api", dialmark_schemas::unix_now())
        .await?;
    Ok(Json(serde_json::json!({ "added": added })))
}

async fn get_number(
    State(s): State<Shared>,
    Path(number): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, TrackerError> {
    authorize(&s, &headers)?;
    let n = s
        .inventory
        .plan
        .normalize(&number)
        .map_err(|e| TrackerError::BadRequest(format!("number: {e}")))?;
    let rec = s
        .inventory
        .route(&n)
        .await?
        .ok_or_else(|| TrackerError::NotFound(format!("unknown number {n}")))?;
    Ok(Json(route_json(&rec)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Destinations {
    destinations: Vec<String>,
}

async fn set_destinations(
    State(s): State<Shared>,
    Path(number): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, TrackerError> {
    authorize(&s, &headers)?;
    let req: Destinations = body(&bytes)?;
    let rec = s
        .inventory
        .set_destinations(&number, &req.destinations)
        .await?;
    Ok(Json(route_json(&rec)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct Retire {
    reason: String,
}

async fn retire(
    State(s): State<Shared>,
    Path(number): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, TrackerError> {
    authorize(&s, &headers)?;
    let req: Retire = if bytes.is_empty() {
        Retire::default()
    } else {
        body(&bytes)?
    };
    let reason = if req.reason.is_empty() {
        "retired".to_string()
    } else {
        req.reason
    };
    let rec = s
        .inventory
        .retire(&number, &reason, "api", dialmark_schemas::unix_now())
        .await?;
    Ok(Json(route_json(&rec)))
}

async fn quarantine(
    State(s): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Vec<QuarantineEntry>>, TrackerError> {
    authorize(&s, &headers)?;
    Ok(Json(
        s.inventory.quarantine(dialmark_schemas::unix_now()).await?,
    ))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ReleaseQuery {
    dry_run: bool,
}

async fn release_quarantine(
    State(s): State<Shared>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<ReleaseQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, TrackerError> {
    authorize(&s, &headers)?;
    let axum::extract::Query(q) =
        query.map_err(|e| TrackerError::BadRequest(format!("query: {}", e.body_text())))?;
    let released = s
        .inventory
        .release_quarantine("api", dialmark_schemas::unix_now(), q.dry_run)
        .await?;
    Ok(Json(
        serde_json::json!({ "dry_run": q.dry_run, "released": released }),
    ))
}

/// A routing record as the admin API shows it.
pub fn route_json(r: &dialmark_schemas::layout::RouteRecord) -> serde_json::Value {
    serde_json::json!({
        "number": r.number,
        "status": r.status.as_str(),
        "kind": r.kind.as_str(),
        "site": r.site,
        "pool": r.pool,
        "destinations": r.destinations,
        "trunk_group": r.trunk_group,
        "source_label": r.source_label,
        "status_since": r.status_since,
    })
}

/// An inventory file for `dialmark-tracker admin apply`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryFile {
    #[serde(default)]
    pub sites: Vec<Site>,
    #[serde(default)]
    pub pools: Vec<PoolFileEntry>,
    #[serde(default)]
    pub static_numbers: Vec<AddNumbers>,
}

/// A pool and the numbers in it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolFileEntry {
    #[serde(flatten)]
    pub def: PoolDef,
    #[serde(default)]
    pub numbers: Vec<String>,
    /// First number of a consecutive range (with `count`).
    #[serde(default)]
    pub range_start: Option<String>,
    #[serde(default)]
    pub count: u32,
}

/// Applies an inventory file; numbers already active in the same pool are
/// left as they are, so applying twice changes nothing. A number that
/// cannot be (re)added — in quarantine, or active elsewhere — is reported
/// in the summary and skipped: the rest of the file still applies, and the
/// quarantine is respected.
pub async fn apply(inv: &Inventory, file: InventoryFile, now: u32) -> Result<String, TrackerError> {
    let mut summary = Vec::new();
    let mut skipped = Vec::new();
    for site in file.sites {
        let s = inv.put_site(site).await?;
        summary.push(format!("site {}", s.id));
    }
    for entry in file.pools {
        let def = inv.put_pool(entry.def, "apply").await?;
        let mut numbers = entry.numbers;
        if let Some(start) = entry.range_start {
            let start = inv
                .plan
                .normalize(&start)
                .map_err(|e| TrackerError::BadRequest(format!("pools.range_start: {e}")))?;
            let base: u64 = start[1..]
                .parse()
                .map_err(|_| TrackerError::BadRequest("pools.range_start".into()))?;
            numbers.extend((0..u64::from(entry.count)).map(|i| format!("+{}", base + i)));
        }
        if !numbers.is_empty() {
            let req = AddNumbers {
                pool: Some(def.id.clone()),
                ..Default::default()
            };
            let added = add_each(inv, req, numbers, now, &mut skipped).await?;
            summary.push(format!("pool {} ({} numbers)", def.id, added.len()));
        }
    }
    for mut st in file.static_numbers {
        let numbers = std::mem::take(&mut st.numbers);
        let added = add_each(inv, st, numbers, now, &mut skipped).await?;
        if !added.is_empty() {
            summary.push(format!("static {}", added.join(",")));
        }
    }
    if !skipped.is_empty() {
        summary.push(format!("skipped {}: {}", skipped.len(), skipped.join("; ")));
    }
    Ok(summary.join("; "))
}

/// Adds `numbers` one by one with `req`'s settings; conflicts go to
/// `skipped`. Returns the numbers added.
async fn add_each(
    inv: &Inventory,
    req: AddNumbers,
    numbers: Vec<String>,
    now: u32,
    skipped: &mut Vec<String>,
) -> Result<Vec<String>, TrackerError> {
    let mut added = Vec::new();
    for number in numbers {
        let one = AddNumbers {
            numbers: vec![number],
            ..req.clone()
        };
        match inv.add_numbers(one, "apply", now).await {
            Ok(mut a) => added.append(&mut a),
            Err(TrackerError::Conflict(why)) => skipped.push(why),
            Err(e) => return Err(e),
        }
    }
    Ok(added)
}
