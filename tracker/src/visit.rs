//! The snippet API: `POST /v1/visits` leases a number for a visit and
//! records it; `POST /v1/visits/{session}/keepalive` keeps the lease alive.
//! Bodies are JSON (also when sent as `text/plain` to skip a CORS
//! preflight); CORS is limited to each site's configured origins.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dialmark_schemas::rows::{LeaseEvent, NumberKind, Visit};
use serde::{Deserialize, Serialize};
use tracing::{info_span, warn, Instrument};

use crate::app::Shared;
use crate::bot::{self, NoLease};
use crate::error::TrackerError;
use crate::geo::{self, Place};
use crate::inventory::{format_display, LineRef, Site};
use crate::pool::{self, Allocation};
use crate::touch::{cut, host_of, ignored_referrer, touch_time, Channel, Touch};

/// What the snippet sends.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct VisitRequest {
    pub site: String,
    pub visitor_id: Option<String>,
    pub session_id: Option<String>,
    pub url: String,
    /// The current touch: the latest landing that brought a source.
    #[serde(flatten)]
    pub touch: Touch,
    /// Yandex Metrica's ClientId (the `_ym_uid` cookie), for its call upload.
    pub ym_uid: String,
    /// The visitor's first touch, kept by the snippet.
    pub first_touch: Option<serde_json::Value>,
    /// The current touch before this page replaced it: it stands when this
    /// page's touch is only a return from an ignored referrer.
    pub previous_touch: Option<serde_json::Value>,
    /// The page runs under browser automation (`navigator.webdriver`).
    pub webdriver: bool,
}

/// What the snippet gets back.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct VisitResponse {
    pub session_id: String,
    pub visitor_id: String,
    pub number: String,
    pub display: String,
    pub hold_seconds: u32,
    pub keepalive_seconds: u32,
    pub replace: Vec<String>,
    /// `pool`, `overflow`, or `static` (Redis unavailable: the site's own number).
    pub kind: String,
    /// Every tracked number of the site, the main line (the fields above)
    /// first.
    #[serde(default)]
    pub numbers: Vec<LineAnswer>,
    /// The page's touch was a return from an ignored referrer (a payment
    /// page…): the snippet keeps its previous touch as the current one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub touch_ignored: bool,
}

/// One line's number for a visit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LineAnswer {
    pub line: String,
    pub number: String,
    pub display: String,
    /// The site's numbers to swap for `number`; empty when the line holds
    /// no tracking number (`static`: a bot, Redis away, the pool exhausted
    /// without an overflow number): its numbers stay as they are.
    pub replace: Vec<String>,
    pub kind: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct KeepaliveRequest {
    pub site: String,
    /// The number the page shows: its pool's lease is the one kept alive
    /// (a session that moved between geo pools may hold two).
    pub number: Option<String>,
}

fn parse_json<T: for<'a> Deserialize<'a>>(body: &[u8]) -> Result<T, TrackerError> {
    serde_json::from_slice(body)
        .map_err(|e| TrackerError::BadRequest(format!("invalid JSON body: {e}")))
}

fn check_id(field: &str, v: &str) -> Result<(), TrackerError> {
    if v.is_empty()
        || v.len() > 64
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(TrackerError::BadRequest(format!(
            "{field}: 1-64 letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

impl VisitRequest {
    /// A `POST /v1/visits` body as the API takes it: JSON, ids checked,
    /// tags read from the landing URL when the client sent none,
    /// over-long fields cut (also the fuzzing entry point).
    pub fn decode(body: &[u8]) -> Result<Self, TrackerError> {
        let mut req: VisitRequest = parse_json(body)?;
        req.validate()?;
        let landing = req.landing().to_string();
        req.touch.tags_from_url(&landing);
        cut(&mut req.url);
        req.touch.cut_long_fields();
        // A cookie value, not the visitor's input: kept only when it is one.
        if req.ym_uid.len() > 32 || !req.ym_uid.bytes().all(|b| b.is_ascii_digit()) {
            req.ym_uid.clear();
        }
        Ok(req)
    }

    fn validate(&self) -> Result<(), TrackerError> {
        if self.site.is_empty() {
            return Err(TrackerError::BadRequest("site: required".into()));
        }
        check_id("site", &self.site)?;
        if let Some(v) = &self.visitor_id {
            check_id("visitor_id", v)?;
        }
        if let Some(s) = &self.session_id {
            check_id("session_id", s)?;
        }
        Ok(())
    }

    fn landing(&self) -> &str {
        if self.touch.landing_url.is_empty() {
            &self.url
        } else {
            &self.touch.landing_url
        }
    }

    /// Resolves the visit's touches against the site's ignore-lists and the
    /// clock: an expired current touch is forgotten, a missing or expired
    /// first touch is the current one.
    fn resolve(&mut self, site: &Site, now_ms: u64, max_age: u32) -> Touches {
        let own: Vec<String> = site.origins.iter().map(|o| host_of(o)).collect();
        let ignored = |h: &str| !h.is_empty() && ignored_referrer(h, &own, &site.ignore_referrers);
        // A return from an ignored referrer (a payment page, a sign-in, the
        // site's other host) is not a touch, though the snippet, which does
        // not know the lists, made it its current one: the touch before it
        // stands, and the answer tells the snippet to take it back.
        let returned = !self.touch.is_tagged() && ignored(&host_of(&self.touch.referrer));
        if returned {
            if let Some(prev) = Touch::from_value(self.previous_touch.take()) {
                self.touch = prev;
            }
        }
        let ms = match self.touch.touch_age {
            None => now_ms,
            Some(age) => touch_time(now_ms, age, max_age).unwrap_or_else(|| {
                self.touch.forget();
                now_ms
            }),
        };
        let ts = (ms / 1000) as u32;
        let referrer = host_of(&self.touch.referrer);
        let fresh = self.touch.is_tagged() || (!referrer.is_empty() && !ignored(&referrer));
        let first = Touch::from_value(self.first_touch.take()).and_then(|f| {
            let at = match f.touch_age {
                None => ts,
                Some(age) => (touch_time(now_ms, age, max_age)? / 1000) as u32,
            };
            Some((f, at.min(ts)))
        });
        let (first, first_ts) = first.unwrap_or_else(|| (self.touch.clone(), ts));
        Touches {
            ms,
            channel: self.touch.channel(ignored),
            fresh,
            returned,
            first_ts,
            first_channel: first.channel(ignored),
            first,
        }
    }

    /// Fields stored on the lease, read back by the router for the call.
    fn lease_fields(&self, t: &Touches, place: &Place) -> Vec<(&'static str, String)> {
        let mut f: Vec<(&'static str, String)> = vec![
            ("landing_url", self.landing().to_string()),
            ("referrer", self.touch.referrer.clone()),
            ("country", place.country.clone()),
            ("region", place.region.clone()),
            ("city", place.city.clone()),
            ("channel", t.channel.as_str().to_string()),
            ("touch_ts", t.ts().to_string()),
            ("touch_ms", t.ms.to_string()),
            ("ym_uid", self.ym_uid.clone()),
            ("first_touch_ts", t.first_ts.to_string()),
            ("first_channel", t.first_channel.as_str().to_string()),
            ("first_utm_source", t.first.utm_source.clone()),
            ("first_utm_medium", t.first.utm_medium.clone()),
            ("first_utm_campaign", t.first.utm_campaign.clone()),
        ];
        f.extend(self.touch.tags().map(|(k, v)| (k, v.to_string())));
        f
    }
}

/// A visit's touches, resolved.
#[derive(Debug, PartialEq)]
struct Touches {
    /// When the current touch happened, Unix ms (what orders two touches
    /// of one lease; [`Touches::ts`] in seconds).
    ms: u64,
    channel: Channel,
    /// The visit brings a source of its own (tags or a referrer that
    /// counts): it replaces an older touch on the session's live lease.
    fresh: bool,
    /// The page's own touch was a return from an ignored referrer.
    returned: bool,
    first: Touch,
    first_ts: u32,
    first_channel: Channel,
}

impl Touches {
    /// When the current touch happened, Unix seconds.
    fn ts(&self) -> u32 {
        (self.ms / 1000) as u32
    }
}

/// CORS check: a browser request from an origin the site does not list is
/// refused; the allowed origin is echoed on the response.
fn cors_origin(site: &Site, headers: &HeaderMap) -> Result<Option<HeaderValue>, TrackerError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(None);
    };
    let o = origin.to_str().unwrap_or("");
    if site.origins.iter().any(|a| a == o) {
        Ok(Some(origin.clone()))
    } else {
        Err(TrackerError::Forbidden(format!(
            "origin {o:?} is not allowed for site {:?}",
            site.id
        )))
    }
}

/// The snippet API leases numbers to browsers: a request without an
/// `Origin` (a bare curl, a scraper) is refused before it can hold one.
/// Server-side clients send `Origin:` with one of the site's origins.
fn browser_origin(site: &Site, headers: &HeaderMap) -> Result<HeaderValue, TrackerError> {
    cors_origin(site, headers)?.ok_or_else(|| {
        TrackerError::Forbidden(format!(
            "an Origin header is required (one of site {:?}'s origins): numbers are leased to browsers",
            site.id
        ))
    })
}

fn with_cors(mut resp: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(o) = origin {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

/// Error answers of the snippet's routes carry `Access-Control-Allow-Origin`
/// too: without it a browser hides their status and reason from the page
/// (and from the marketer's console, which shows only a CORS failure). An
/// error holds nothing the caller did not send. Not the 403 of an origin
/// the site does not list ([`cors_origin`]): that page learns nothing, as
/// from any other site that does not grant it.
pub async fn readable_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let resp = next.run(req).await;
    let status = resp.status();
    let failed =
        (status.is_client_error() && status != StatusCode::FORBIDDEN) || status.is_server_error();
    if failed
        && !resp
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    {
        return with_cors(resp, origin);
    }
    resp
}

/// Preflight for clients that send `application/json`: the real request is
/// still checked against the site's origins.
pub async fn preflight(headers: HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Some(o) = headers.get(header::ORIGIN) {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

/// Picks a line's pool for a visitor's place.
pub fn choose_pool<'a>(line: &LineRef<'a>, place: &Place) -> &'a str {
    line.geo_pools
        .iter()
        .find(|g| {
            g.regions.iter().any(|r| {
                (!place.region.is_empty() && *r == place.region)
                    || (!place.country.is_empty() && *r == place.country)
            })
        })
        .map_or(line.default_pool, |g| g.pool.as_str())
}

pub async fn create(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, TrackerError> {
    let mut req = VisitRequest::decode(&body)?;
    let span = info_span!("visit", site = %req.site, session = tracing::field::Empty);
    async move {
        let started = std::time::Instant::now();
        let site = state.inventory.site(&req.site).await?;
        let origin = Some(browser_origin(&site, &headers)?);
        let ip = geo::client_ip(peer, &headers, &state.config.tracker.trusted_proxies);
        let place = state.geo.lookup(ip);
        let session = req.session_id.clone().unwrap_or_else(new_id);
        let visitor = req.visitor_id.clone().unwrap_or_else(new_id);
        tracing::Span::current().record("session", session.as_str());
        // One clock read: the visit's second and its touch's milliseconds agree.
        let now_ms = dialmark_schemas::unix_now_ms();
        let now = (now_ms / 1000) as u32;
        let timing = state.inventory.timing;
        let touches = req.resolve(
            &site,
            now_ms,
            state
                .config
                .tracker
                .touch_max_age_days
                .saturating_mul(86_400),
        );
        let user_agent: String = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .chars()
            .take(512)
            .collect();

        let mut owned = req.lease_fields(&touches, &place);
        owned.extend([
            ("visitor", visitor.clone()),
            ("site", site.id.clone()),
            ("visit_ts", now.to_string()),
        ]);
        let fields: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let network = bot::network_key(ip);
        let lease = pool::LeaseRequest {
            session: &session,
            touch: touches.fresh.then_some(touches.ms),
            network: &network,
            network_cap: state.config.tracker.leases_per_network_per_minute,
            fields: &fields,
        };
        let automated = if req.webdriver {
            Some(NoLease::Webdriver)
        } else if bot::automated_agent(&user_agent) {
            Some(NoLease::Crawler)
        } else {
            None
        };
        // One lease per line; the visit row records the main line's.
        let visit = Holder {
            state: &state,
            site: &site.id,
            session: &session,
            visitor: &visitor,
            now,
        };
        let mut answers = Vec::new();
        let mut main = None;
        for line in site.lines() {
            let pool_id = choose_pool(&line, &place).to_string();
            let (number, kind, no_lease) =
                visit.lease(&pool_id, line.replace, automated, &lease).await;
            answers.push(LineAnswer {
                line: line.name.to_string(),
                display: format_display(&number, &site.display_mask),
                replace: if kind == NumberKind::Static {
                    Vec::new()
                } else {
                    line.replace.to_vec()
                },
                kind: kind_name(kind).into(),
                number: number.clone(),
            });
            main.get_or_insert((pool_id, number, kind, no_lease));
        }
        let (pool_id, number, kind, no_lease) = main.expect("a site has its main line");
        if let Some(why) = no_lease {
            metrics::counter!("dialmark_lease_refusals_total", "reason" => why.as_str())
                .increment(1);
        }
        metrics::histogram!("dialmark_lease_seconds").record(started.elapsed().as_secs_f64());

        let row = Visit {
            visit_id: uuid::Uuid::new_v4(),
            ts: now,
            site: site.id.clone(),
            pool: pool_id.clone(),
            session_id: session.clone(),
            visitor_id: visitor.clone(),
            number: number.clone(),
            number_kind: kind,
            url: req.url.clone(),
            referrer: req.touch.referrer.clone(),
            utm_source: req.touch.utm_source.clone(),
            utm_medium: req.touch.utm_medium.clone(),
            utm_campaign: req.touch.utm_campaign.clone(),
            utm_term: req.touch.utm_term.clone(),
            utm_content: req.touch.utm_content.clone(),
            gclid: req.touch.gclid.clone(),
            yclid: req.touch.yclid.clone(),
            fbclid: req.touch.fbclid.clone(),
            msclkid: req.touch.msclkid.clone(),
            gbraid: req.touch.gbraid.clone(),
            wbraid: req.touch.wbraid.clone(),
            ym_uid: req.ym_uid.clone(),
            channel: touches.channel.as_str().into(),
            touch_ts: touches.ts(),
            first_touch_ts: touches.first_ts,
            first_channel: touches.first_channel.as_str().into(),
            first_utm_source: touches.first.utm_source.clone(),
            first_utm_medium: touches.first.utm_medium.clone(),
            first_utm_campaign: touches.first.utm_campaign.clone(),
            ip: geo::stored_ip(
                ip,
                state.config.tracker.ip_storage,
                &state.config.tracker.ip_hash_key,
            ),
            country: place.country.clone(),
            region: place.region.clone(),
            city: place.city.clone(),
            user_agent,
            no_lease: no_lease.map_or("", NoLease::as_str).into(),
        };
        let _ = state.visits.push(row);

        let first = answers[0].clone();
        let resp = VisitResponse {
            display: first.display,
            session_id: session,
            visitor_id: visitor,
            number: first.number,
            hold_seconds: timing.hold,
            keepalive_seconds: keepalive_interval(timing.hold),
            replace: first.replace,
            kind: first.kind,
            numbers: answers,
            touch_ignored: touches.returned,
        };
        Ok(with_cors(Json(resp).into_response(), origin))
    }
    .instrument(span)
    .await
}

fn kind_name(kind: NumberKind) -> &'static str {
    match kind {
        NumberKind::Overflow => "overflow",
        NumberKind::Static => "static",
        _ => "pool",
    }
}

/// The session a visit leases for, on each line's pool.
struct Holder<'a> {
    state: &'a Shared,
    site: &'a str,
    session: &'a str,
    visitor: &'a str,
    now: u32,
}

impl Holder<'_> {
    /// Leases (or renews) a number of `pool_id`: the number, its kind, and
    /// why it got none. A line without a tracking number answers its own
    /// first number (`own`) as `static`.
    async fn lease(
        &self,
        pool_id: &str,
        own: &[String],
        automated: Option<NoLease>,
        lease: &pool::LeaseRequest<'_>,
    ) -> (String, NumberKind, Option<NoLease>) {
        let (state, site, now) = (self.state, self.site, self.now);
        let own_number = || own.first().cloned().unwrap_or_default();
        if let Some(why) = automated {
            return (own_number(), NumberKind::Static, Some(why));
        }
        let mut redis = state.inventory.redis.clone();
        let outcome = pool::allocate(
            &mut redis,
            &state.inventory.scripts,
            pool_id,
            now,
            state.inventory.timing,
            lease,
        )
        .await;
        match outcome {
            Ok(o) => {
                for n in &o.reclaimed {
                    state.lease_event(site, pool_id, n, "", "", LeaseEvent::Reclaim, now, now);
                }
                match o.allocation {
                    Allocation::Leased { number, expires_at } => {
                        state.lease_event(
                            site,
                            pool_id,
                            &number,
                            self.session,
                            self.visitor,
                            LeaseEvent::Lease,
                            now,
                            expires_at,
                        );
                        (number, NumberKind::Pool, None)
                    }
                    Allocation::Renewed {
                        number, retouched, ..
                    } => {
                        if retouched {
                            metrics::counter!("dialmark_lease_retouched_total", "pool" => pool_id.to_string()).increment(1);
                        }
                        (number, NumberKind::Pool, None)
                    }
                    Allocation::NetworkCapped => {
                        (own_number(), NumberKind::Static, Some(NoLease::NetworkRate))
                    }
                    Allocation::Exhausted => {
                        metrics::counter!("dialmark_pool_exhausted_total", "pool" => pool_id.to_string()).increment(1);
                        let overflow = state
                            .inventory
                            .pool(pool_id)
                            .await
                            .ok()
                            .and_then(|p| p.overflow_number);
                        if let Some(not_logged) = state.exhaustion_log.admit(pool_id, now) {
                            warn!(pool.id = %pool_id, not_logged, "pool exhausted; handing out the overflow number");
                        }
                        match overflow {
                            Some(n) => {
                                state.lease_event(
                                    site,
                                    pool_id,
                                    &n,
                                    self.session,
                                    self.visitor,
                                    LeaseEvent::Overflow,
                                    now,
                                    now,
                                );
                                (n, NumberKind::Overflow, None)
                            }
                            None => (own_number(), NumberKind::Static, None),
                        }
                    }
                }
            }
            Err(e) => {
                // Redis is away: the site keeps its own numbers, the visit is still recorded.
                warn!(cause = %e, "lease failed; answering with the site's own number");
                metrics::counter!("dialmark_lease_errors_total").increment(1);
                (own_number(), NumberKind::Static, None)
            }
        }
    }
}

/// Rate-limits the "pool exhausted" warning: a pool that runs dry under load
/// would otherwise log a line per visit (thousands a second). The first
/// exhausted visit of a pool in each window logs, with how many were not
/// logged since; `dialmark_pool_exhausted_total` counts every one.
#[derive(Debug, Default)]
pub struct ExhaustionLog {
    /// Pool id → (when it last logged, exhausted visits not logged since).
    pools: Mutex<HashMap<String, (u32, u64)>>,
}

impl ExhaustionLog {
    pub const WINDOW_SECONDS: u32 = 10;

    /// `Some(not_logged)` when this exhausted visit at `now` should log.
    pub fn admit(&self, pool: &str, now: u32) -> Option<u64> {
        let mut pools = self.pools.lock().expect("exhaustion log lock");
        match pools.get_mut(pool) {
            Some((last, skipped)) if now < last.saturating_add(Self::WINDOW_SECONDS) => {
                *skipped += 1;
                None
            }
            Some((last, skipped)) => {
                *last = now;
                Some(std::mem::take(skipped))
            }
            None => {
                pools.insert(pool.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

/// Keep-alives come often enough that two can be lost within a hold.
pub fn keepalive_interval(hold: u32) -> u32 {
    (hold / 3).clamp(1, 60)
}

pub async fn keepalive(
    State(state): State<Shared>,
    Path(session): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, TrackerError> {
    check_id("session", &session)?;
    let req: KeepaliveRequest = parse_json(&body)?;
    check_id("site", &req.site)?;
    let site = state.inventory.site(&req.site).await?;
    let origin = cors_origin(&site, &headers)?;
    let now = dialmark_schemas::unix_now();
    let hold = state.inventory.timing.hold;
    // Every line's lease of the session is kept alive, one per line: the
    // shown number's pool first (a session that moved between geo pools
    // holds a second lease there, left to lapse).
    let mut pools: Vec<(&str, &str)> = site
        .lines()
        .iter()
        .flat_map(|l| l.pools().map(|p| (p, l.name)))
        .collect();
    if let Some(shown) = req.number.as_deref().filter(|n| n.len() <= 32) {
        if let Some(rec) = state.inventory.route(shown).await? {
            if rec.site == site.id {
                if let Some(i) = pools.iter().position(|(p, _)| *p == rec.pool) {
                    let first = pools.remove(i);
                    pools.insert(0, first);
                }
            }
        }
    }
    let mut redis = state.inventory.redis.clone();
    let mut held: Vec<serde_json::Value> = Vec::new();
    let mut first: Option<(u32, String)> = None;
    for (p, line) in pools {
        if held.iter().any(|h| h["line"] == line) {
            continue;
        }
        if let Some((exp, number)) =
            pool::keepalive(&mut redis, &state.inventory.scripts, p, now, hold, &session).await?
        {
            held.push(serde_json::json!({
                "line": line,
                "display": format_display(&number, &site.display_mask),
                "number": number,
            }));
            first.get_or_insert((exp, number));
        }
    }
    if let Some((exp, number)) = first {
        // The numbers the session holds: another tab of it may have been
        // given new ones; the page re-swaps where they differ.
        let body = Json(serde_json::json!({
            "expires_in": exp.saturating_sub(now),
            "display": format_display(&number, &site.display_mask),
            "number": number,
            "numbers": held,
        }));
        return Ok(with_cors(body.into_response(), origin));
    }
    let body = (
        StatusCode::GONE,
        Json(serde_json::json!({ "error": "lease ended; request a new visit" })),
    );
    Ok(with_cors(body.into_response(), origin))
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::GeoPool;
    use crate::touch::MAX_FIELD;

    #[test]
    fn a_visit_with_only_a_url_gets_its_source_from_it() {
        let req = VisitRequest::decode(
            br#"{"site":"s","url":"https://a.example/p?utm_source=google&utm_medium=cpc&utm_campaign=spring%20sale&utm_term=a+b&gclid=G1&utm_source=bing#top"}"#,
        )
        .unwrap();
        assert_eq!(
            (
                req.touch.utm_source.as_str(),
                req.touch.utm_medium.as_str(),
                req.touch.utm_campaign.as_str(),
                req.touch.utm_term.as_str(),
                req.touch.gclid.as_str()
            ),
            ("google", "cpc", "spring sale", "a b", "G1")
        );
        // The session's landing URL is where the click landed.
        let req = VisitRequest::decode(
            br#"{"site":"s","url":"https://a.example/cart","landing_url":"https://a.example/?yclid=Y7&fbclid=F&msclkid=M"}"#,
        )
        .unwrap();
        assert_eq!(
            (
                req.touch.yclid.as_str(),
                req.touch.fbclid.as_str(),
                req.touch.msclkid.as_str()
            ),
            ("Y7", "F", "M")
        );
        // A client that sent any source field keeps its own, unmixed.
        let req = VisitRequest::decode(
            br#"{"site":"s","utm_source":"newsletter","url":"https://a.example/?utm_source=google&gclid=G1"}"#,
        )
        .unwrap();
        assert_eq!(
            (req.touch.utm_source.as_str(), req.touch.gclid.as_str()),
            ("newsletter", "")
        );
        // No query, or a fragment only: nothing.
        let req = VisitRequest::decode(br#"{"site":"s","url":"https://a.example/#utm_source=x"}"#)
            .unwrap();
        assert_eq!(req.touch.utm_source, "");
    }

    fn site() -> Site {
        Site {
            id: "s".into(),
            origins: vec!["https://a.example".into()],
            replace: vec!["+74950000000".into()],
            display_mask: String::new(),
            default_pool: "main".into(),
            ignore_referrers: vec!["pay.example".into()],
            lines: vec![],
            webhook: None,
            geo_pools: vec![
                GeoPool {
                    pool: "msk".into(),
                    regions: vec!["RU-MOW".into()],
                },
                GeoPool {
                    pool: "us".into(),
                    regions: vec!["US".into()],
                },
            ],
        }
    }

    const DAY: u32 = 86_400;

    fn resolve(body: &str) -> (VisitRequest, Touches) {
        let mut req = VisitRequest::decode(body.as_bytes()).unwrap();
        let t = req.resolve(&site(), u64::from(100 * DAY) * 1000, 90 * DAY);
        (req, t)
    }

    #[test]
    fn touches_resolve_with_age_channel_and_first_touch() {
        // A second ad click: a tagged touch a second old, the first touch
        // (a Yandex click) ten days before.
        let (_, t) = resolve(
            r#"{"site":"s","url":"https://a.example/","utm_source":"google","utm_medium":"cpc","gclid":"G2","touch_age":1,
                "first_touch":{"utm_source":"yandex","utm_medium":"cpc","yclid":"Y1","touch_age":864000}}"#,
        );
        assert_eq!(
            (t.ts(), t.channel, t.fresh),
            (100 * DAY - 1, Channel::PaidSearch, true)
        );
        assert_eq!(
            (t.first.utm_source.as_str(), t.first_ts, t.first_channel),
            ("yandex", 90 * DAY, Channel::PaidSearch)
        );
        // An internal page view: no tags, the site's own referrer; no
        // first touch sent: the current one is the first.
        let (_, t) =
            resolve(r#"{"site":"s","url":"https://a.example/b","referrer":"https://a.example/a"}"#);
        assert_eq!(
            (t.ts(), t.channel, t.fresh),
            (100 * DAY, Channel::Direct, false)
        );
        assert_eq!((t.first_ts, t.first_channel), (100 * DAY, Channel::Direct));
        // Back from the payment gateway (default list) or the site's own
        // ignored referrer: not a new touch.
        for r in [
            "https://www.paypal.com/checkout",
            "https://secure.pay.example/3ds",
        ] {
            let (_, t) = resolve(&format!(
                r#"{{"site":"s","url":"https://a.example/ok","referrer":"{r}"}}"#
            ));
            assert_eq!((t.channel, t.fresh), (Channel::Direct, false), "{r}");
        }
        // An organic search visit is a touch.
        let (_, t) = resolve(
            r#"{"site":"s","url":"https://a.example/","referrer":"https://yandex.ru/search/?text=x"}"#,
        );
        assert_eq!((t.channel, t.fresh), (Channel::OrganicSearch, true));
        // A click older than 90 days no longer counts, as current or first touch.
        let (req, t) = resolve(
            r#"{"site":"s","url":"https://a.example/","landing_url":"https://a.example/?gclid=OLD","gclid":"OLD","touch_age":7776001,
                "first_touch":{"utm_source":"bing","touch_age":9000000}}"#,
        );
        assert_eq!(
            (req.touch.gclid.as_str(), req.landing()),
            ("", "https://a.example/")
        );
        assert_eq!(
            (t.ts(), t.channel, t.fresh),
            (100 * DAY, Channel::Direct, false)
        );
        assert_eq!((t.first.utm_source.as_str(), t.first_ts), ("", 100 * DAY));
        // Back from the payment page: the snippet made that its current
        // touch (it does not know the lists); the ad click before it stands.
        let (req, t) = resolve(
            r#"{"site":"s","url":"https://a.example/paid","landing_url":"https://a.example/paid","referrer":"https://www.paypal.com/x","touch_age":0,
                "previous_touch":{"utm_source":"google","utm_medium":"cpc","gclid":"G9","landing_url":"https://a.example/?gclid=G9","touch_age":600}}"#,
        );
        assert!(t.returned);
        assert_eq!(
            (req.touch.gclid.as_str(), t.channel, t.fresh, t.ts()),
            ("G9", Channel::PaidSearch, true, 100 * DAY - 600)
        );
        // Without a previous touch it is just direct.
        let (_, t) = resolve(
            r#"{"site":"s","url":"https://a.example/paid","referrer":"https://www.paypal.com/x"}"#,
        );
        assert_eq!(
            (t.returned, t.channel, t.fresh),
            (true, Channel::Direct, false)
        );
        // A malformed first touch is the current one, not an error.
        let (_, t) = resolve(
            r#"{"site":"s","url":"https://a.example/?utm_source=vk&utm_medium=cpc","first_touch":"x"}"#,
        );
        assert_eq!(
            (t.channel, t.first_channel),
            (Channel::PaidSocial, Channel::PaidSocial)
        );
        // New click ids and Yandex's ClientId (digits only).
        let (req, _) = resolve(
            r#"{"site":"s","url":"https://a.example/?gbraid=GB&wbraid=WB","ym_uid":"1690000000123456789"}"#,
        );
        assert_eq!(
            (
                req.touch.gbraid.as_str(),
                req.touch.wbraid.as_str(),
                req.ym_uid.as_str()
            ),
            ("GB", "WB", "1690000000123456789")
        );
        let (req, _) = resolve(r#"{"site":"s","url":"https://a.example/","ym_uid":"1; x=2"}"#);
        assert_eq!(req.ym_uid, "");
    }

    #[test]
    fn exhaustion_is_logged_once_per_window_per_pool() {
        let log = ExhaustionLog::default();
        assert_eq!(log.admit("a", 100), Some(0));
        assert_eq!(log.admit("a", 100), None);
        assert_eq!(log.admit("a", 109), None);
        assert_eq!(log.admit("b", 105), Some(0), "pools are limited apart");
        assert_eq!(log.admit("a", 110), Some(2), "says how many it left out");
        assert_eq!(log.admit("a", 111), None);
        assert_eq!(log.admit("a", 130), Some(1));
    }

    #[test]
    fn geo_pool_choice() {
        let s = site();
        let place = |c: &str, r: &str| Place {
            country: c.into(),
            region: r.into(),
            city: String::new(),
        };
        assert_eq!(choose_pool(&s.lines()[0], &place("RU", "RU-MOW")), "msk");
        assert_eq!(choose_pool(&s.lines()[0], &place("RU", "RU-SPE")), "main");
        assert_eq!(choose_pool(&s.lines()[0], &place("US", "US-CA")), "us");
        assert_eq!(choose_pool(&s.lines()[0], &Place::default()), "main");
    }

    #[test]
    fn cors_is_per_site() {
        let s = site();
        let mut h = HeaderMap::new();
        assert_eq!(cors_origin(&s, &h).unwrap(), None);
        h.insert(header::ORIGIN, "https://a.example".parse().unwrap());
        assert!(cors_origin(&s, &h).unwrap().is_some());
        h.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(matches!(
            cors_origin(&s, &h),
            Err(TrackerError::Forbidden(_))
        ));
    }

    #[test]
    fn request_validation() {
        let ok: VisitRequest =
            serde_json::from_str(r#"{"site":"s","url":"https://a.example/?utm_source=x"}"#)
                .unwrap();
        ok.validate().unwrap();
        let bad: VisitRequest = serde_json::from_str(r#"{"site":"s s"}"#).unwrap();
        assert!(bad.validate().is_err());
        let mut long = VisitRequest {
            site: "s".into(),
            url: "é".repeat(3000),
            ..Default::default()
        };
        long.validate().unwrap();
        cut(&mut long.url);
        assert!(long.url.len() <= MAX_FIELD && long.url.len() > MAX_FIELD - 2);
    }
}
