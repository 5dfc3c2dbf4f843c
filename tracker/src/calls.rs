//! The calls API, read from ClickHouse for the admin token or a site's
//! read token: the call log (`GET /v1/calls`, newest first, filtered,
//! cursor-paged), one call with every forwarding attempt and the caller's
//! journey (`GET /v1/calls/{id}`), and the report SQL of `schemas/reports/`
//! (`GET /v1/reports/{name}`, JSON or CSV), and the live feed of new calls
//! (`GET /v1/calls/live`, server-sent events). Every parameter is checked and
//! a bad one is a 400 naming it; values reach the SQL only through
//! [`dialmark_schemas::reports`]' quoting.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use dialmark_schemas::reports::{self, quote, Params};
use serde_json::{Map, Value};

use crate::access::{self, Reader};
use crate::app::{AppState, Shared};
use crate::error::TrackerError;
use crate::live::Feed;

pub fn router() -> Router<Shared> {
    Router::new()
        .route("/v1/calls", get(list))
        .route("/v1/calls/live", get(live))
        .route("/v1/calls/{id}", get(detail))
        .route("/v1/reports/{name}", get(report))
        .route("/v1/stats", get(stats))
        .route("/v1/openapi.json", get(openapi))
}

/// The API's OpenAPI 3 document (`tracker/openapi.json`).
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// The call log's page size unless asked otherwise, and its largest.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;
/// The call log looks this far back unless `from` says otherwise.
pub const DEFAULT_DAYS: u32 = 30;

/// Every disposition a call can have (`calls.disposition`).
pub const DISPOSITIONS: &[&str] = &[
    "answered",
    "missed",
    "busy",
    "abandoned",
    "failed",
    "rejected_quarantine",
    "rejected_stock",
    "rejected_unknown",
    "rejected_untrusted",
    "timeout",
    "overload",
    "node_lost",
];

/// Columns of a call in the log (times as Unix seconds, made RFC 3339).
const LIST_COLUMNS: &str = "toString(call_id) AS call_id, toUInt32(received) AS received, \
    toUInt32(answered) AS answered, toUInt32(ended) AS ended, caller, number, site, pool, \
    toString(disposition) AS disposition, final_code, attempts, final_trunk, ring_ms, talk_ms, \
    toString(attribution) AS attribution, toString(attribution_confidence) AS attribution_confidence, \
    channel, source_label, utm_source, utm_medium, utm_campaign, utm_term, gclid, yclid, \
    session_id, country, city";

/// More columns of one call.
const DETAIL_COLUMNS: &str = "sip_call_id, destination, visitor_id, utm_content, gbraid, \
    wbraid, fbclid, msclkid, ym_uid, referrer, landing_url, region, toUInt32(touch_ts) AS touch_ts, \
    toUInt32(first_touch_ts) AS first_touch_ts, first_channel, first_utm_source, \
    first_utm_medium, first_utm_campaign";

/// Columns holding Unix seconds, shown as RFC 3339 (`null` when unset).
const TIME_COLUMNS: &[&str] = &[
    "at",
    "last_visit",
    "received",
    "answered",
    "ended",
    "touch_ts",
    "first_touch_ts",
    "started",
    "ts",
];

/// The call log's filters, checked.
#[derive(Debug, Default, PartialEq)]
pub struct Filter {
    pub site: String,
    pub from: String,
    pub to: Option<String>,
    pub channel: Option<String>,
    pub utm_source: Option<String>,
    pub utm_medium: Option<String>,
    pub utm_campaign: Option<String>,
    pub disposition: Option<String>,
    pub number: Option<String>,
    pub caller: Option<String>,
    pub limit: usize,
    /// Where the last page ended: (received, call_id).
    pub after: Option<(u32, String)>,
}

/// The query string as (name, value) pairs.
fn pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Refuses parameters not in `known` and repeated ones.
fn check_names(pairs: &[(String, String)], known: &[&str]) -> Result<(), TrackerError> {
    for (i, (k, _)) in pairs.iter().enumerate() {
        if !known.contains(&k.as_str()) {
            return Err(TrackerError::BadRequest(format!(
                "{k}: unknown parameter; known: {}",
                known.join(", ")
            )));
        }
        if pairs[..i].iter().any(|(p, _)| p == k) {
            return Err(TrackerError::BadRequest(format!("{k}: given twice")));
        }
    }
    Ok(())
}

/// The caller's token, its query string (names in `known`, each once) and
/// the site it reads: what every read endpoint starts with.
pub(crate) async fn asked(
    s: &AppState,
    headers: &HeaderMap,
    raw: Option<&str>,
    known: &[&str],
) -> Result<(Reader, Vec<(String, String)>, String), TrackerError> {
    let reader = access::reader(s, headers).await?;
    let pairs = pairs(raw);
    check_names(&pairs, known)?;
    let site = reader.site(param(&pairs, "site").unwrap_or(""))?;
    Ok((reader, pairs, site))
}

/// The call log's parameters.
pub const FILTER_PARAMS: &[&str] = &[
    "site",
    "from",
    "to",
    "channel",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "disposition",
    "number",
    "caller",
    "limit",
    "cursor",
];

fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A date as the reports take it; RFC 3339 with `Z` is accepted too.
fn date(field: &'static str, v: &str) -> Result<String, TrackerError> {
    let v = v.strip_suffix('Z').unwrap_or(v);
    reports::datetime(field, v).map_err(|e| TrackerError::BadRequest(e.to_string()))?;
    Ok(v.to_string())
}

/// `YYYY-MM-DD hh:mm:ss` of Unix seconds.
fn plain(secs: u32) -> String {
    dialmark_schemas::rfc3339(secs.into())
        .trim_end_matches('Z')
        .replace('T', " ")
}

/// Cursor of the page after `(received, call_id)`.
pub fn cursor(received: u32, call_id: &str) -> String {
    format!("{received}_{call_id}")
}

fn parse_cursor(v: &str) -> Result<(u32, String), TrackerError> {
    let bad = || TrackerError::BadRequest(format!("cursor: {v:?} is not a cursor this API gave"));
    let (ts, id) = v.split_once('_').ok_or_else(bad)?;
    let ts = ts.parse::<u32>().map_err(|_| bad())?;
    let id = uuid::Uuid::parse_str(id).map_err(|_| bad())?;
    Ok((ts, id.to_string()))
}

/// A free-text filter: short, printable.
fn text(field: &str, v: &str) -> Result<String, TrackerError> {
    if v.len() > 200 || v.chars().any(char::is_control) {
        return Err(TrackerError::BadRequest(format!(
            "{field}: at most 200 printable characters"
        )));
    }
    Ok(v.to_string())
}

impl Filter {
    /// Checks the values of the query string (its names: [`asked`] with
    /// [`FILTER_PARAMS`]); `site` is the reader's (see [`Reader::site`]),
    /// `now` Unix seconds.
    pub fn parse(
        pairs: &[(String, String)],
        site: String,
        now: u32,
        normalize: impl Fn(&str, &str) -> Result<String, TrackerError>,
    ) -> Result<Filter, TrackerError> {
        let opt = |name: &str| param(pairs, name).filter(|v| !v.is_empty());
        let disposition = match opt("disposition") {
            Some(d) if DISPOSITIONS.contains(&d) => Some(d.to_string()),
            Some(d) => {
                return Err(TrackerError::BadRequest(format!(
                    "disposition: {d:?} is not one of {}",
                    DISPOSITIONS.join(", ")
                )))
            }
            None => None,
        };
        let limit = match opt("limit") {
            None => DEFAULT_LIMIT,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(TrackerError::BadRequest(format!(
                        "limit: {l:?} is not a number from 1 to {MAX_LIMIT}"
                    )))
                }
            },
        };
        Ok(Filter {
            site,
            from: match opt("from") {
                Some(v) => date("from", v)?,
                None => plain(now.saturating_sub(DEFAULT_DAYS * 86_400)),
            },
            to: opt("to").map(|v| date("to", v)).transpose()?,
            channel: opt("channel").map(|v| text("channel", v)).transpose()?,
            utm_source: opt("utm_source")
                .map(|v| text("utm_source", v))
                .transpose()?,
            utm_medium: opt("utm_medium")
                .map(|v| text("utm_medium", v))
                .transpose()?,
            utm_campaign: opt("utm_campaign")
                .map(|v| text("utm_campaign", v))
                .transpose()?,
            disposition,
            number: opt("number").map(|v| normalize("number", v)).transpose()?,
            caller: opt("caller").map(|v| text("caller", v)).transpose()?,
            limit,
            after: opt("cursor").map(parse_cursor).transpose()?,
        })
    }

    /// The page's SQL: one row more than the page, to know if another
    /// follows; `since` (Unix seconds) narrows `from` (see [`page`]).
    pub fn sql(&self, since: Option<u32>) -> Result<String, TrackerError> {
        let bad = |e: reports::ReportError| TrackerError::BadRequest(e.to_string());
        let mut w = vec![format!(
            "received >= {}",
            reports::datetime("from", &self.from).map_err(bad)?
        )];
        if let Some(t) = since {
            w.push(format!("received >= toDateTime({t})"));
        }
        if let Some(to) = &self.to {
            w.push(format!(
                "received < {}",
                reports::datetime("to", to).map_err(bad)?
            ));
        }
        if !self.site.is_empty() {
            w.push(format!("site = {}", quote(&self.site)));
        }
        for (col, v) in [
            ("channel", &self.channel),
            ("utm_source", &self.utm_source),
            ("utm_medium", &self.utm_medium),
            ("utm_campaign", &self.utm_campaign),
            ("number", &self.number),
            ("caller", &self.caller),
        ] {
            if let Some(v) = v {
                w.push(format!("{col} = {}", quote(v)));
            }
        }
        if let Some(d) = &self.disposition {
            w.push(format!("disposition = {}", quote(d)));
        }
        // `call_id` is the selected text (the alias wins in WHERE and
        // ORDER BY), so the cursor compares text too.
        if let Some((ts, id)) = &self.after {
            w.push(format!(
                "(received < toDateTime({ts}) OR (received = toDateTime({ts}) AND call_id < {}))",
                quote(id)
            ));
        }
        Ok(format!(
            "SELECT {LIST_COLUMNS} FROM calls FINAL WHERE {} ORDER BY received DESC, call_id DESC LIMIT {}",
            w.join(" AND "),
            self.limit + 1
        ))
    }
}

/// Runs `sql` and returns its rows as JSON objects (times as ClickHouse
/// gave them: see [`times`]).
async fn rows(state: &AppState, sql: &str) -> Result<Vec<Map<String, Value>>, TrackerError> {
    let bytes = crate::report::fetch(&state.inventory.clickhouse, sql, "JSONEachRow").await?;
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            serde_json::from_slice(line)
                .map_err(|e| TrackerError::Internal(format!("ClickHouse row: {e}")))
        })
        .collect()
}

/// The row's Unix-seconds columns as RFC 3339 (`null` when unset); a
/// report's own text times stay as they are.
fn times(mut row: Map<String, Value>) -> Value {
    for c in TIME_COLUMNS {
        if let Some(v) = row.get_mut(*c) {
            match v.as_u64() {
                Some(0) => *v = Value::Null,
                Some(s) => *v = Value::String(dialmark_schemas::rfc3339(s)),
                None => {}
            }
        }
    }
    Value::Object(row)
}

fn all_times(rows: Vec<Map<String, Value>>) -> Value {
    Value::Array(rows.into_iter().map(times).collect())
}

/// Runs `sql`: its rows, times made RFC 3339.
pub(crate) async fn rows_json(state: &AppState, sql: &str) -> Result<Value, TrackerError> {
    Ok(all_times(rows(state, sql).await?))
}

/// A row's Unix seconds column.
fn secs(row: &Map<String, Value>, col: &str) -> u32 {
    row.get(col).and_then(Value::as_u64).unwrap_or(0) as u32
}

fn string(row: &Map<String, Value>, col: &str) -> String {
    row.get(col)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// How far back the call log looks first: a busy log fills its page from
/// the last day, and reading one day of rows (every column, FINAL) is what
/// keeps the page fast on a long history.
const SPANS: &[u32] = &[86_400, 7 * 86_400];

/// The page of `f`: tried over the last day, then week, before the whole
/// range. A narrow try that finds more rows than the page holds the newest
/// of them all (older rows are outside it), so the answer is the same.
async fn page(s: &AppState, f: &Filter) -> Result<Vec<Map<String, Value>>, TrackerError> {
    let from = dialmark_schemas::unix_of(&f.from).unwrap_or(0);
    let upper = match (&f.after, &f.to) {
        (Some((ts, _)), _) => ts.saturating_add(1),
        (None, Some(to)) => dialmark_schemas::unix_of(to).unwrap_or(u32::MAX),
        (None, None) => dialmark_schemas::unix_now().saturating_add(3600),
    };
    for span in SPANS {
        let since = upper.saturating_sub(*span);
        if since <= from {
            break;
        }
        let rows = rows(s, &f.sql(Some(since))?).await?;
        if rows.len() > f.limit {
            return Ok(rows);
        }
    }
    rows(s, &f.sql(None)?).await
}

async fn list(
    State(s): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, TrackerError> {
    let (_, pairs, site) = asked(&s, &headers, q.as_deref(), FILTER_PARAMS).await?;
    let plan = s.config.numbering.clone();
    let f = Filter::parse(&pairs, site, dialmark_schemas::unix_now(), |field, v| {
        plan.normalize(v)
            .map_err(|e| TrackerError::BadRequest(format!("{field}: {e}")))
    })?;
    let mut calls = page(&s, &f).await?;
    let next = if calls.len() > f.limit {
        calls.truncate(f.limit);
        calls
            .last()
            .map(|c| cursor(secs(c, "received"), &string(c, "call_id")))
    } else {
        None
    };
    Ok(Json(
        serde_json::json!({ "calls": all_times(calls), "next_cursor": next }),
    ))
}

/// Server-sent events: `ready` once listening, then `call` (a call event
/// document: `call.started`, `call.answered`, `call.completed`) for the
/// token's site (the admin: every site, or `site`), and `resync` when
/// events may have been missed (reload the log).
async fn live(
    State(s): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, TrackerError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::stream::{self, StreamExt};
    use tokio::sync::broadcast::error::RecvError;

    let (_, _, site) = asked(&s, &headers, q.as_deref(), &["site"]).await?;
    let rx = s.live.subscribe();
    let ready = stream::once(async { Event::default().event("ready").data("{}") });
    let events = stream::unfold(rx, move |mut rx| {
        let site = site.clone();
        async move {
            loop {
                let ev = match rx.recv().await {
                    Ok(Feed::Call { site: of, json }) if site.is_empty() || of == site => {
                        Event::default().event("call").data(&*json)
                    }
                    Ok(Feed::Call { .. }) => continue,
                    Ok(Feed::Resync) | Err(RecvError::Lagged(_)) => {
                        Event::default().event("resync").data("{}")
                    }
                    Err(RecvError::Closed) => return None,
                };
                return Some((ev, rx));
            }
        }
    });
    let body = ready.chain(events).map(Ok::<_, std::convert::Infallible>);
    Ok(Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn detail(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, TrackerError> {
    let reader = access::reader(&s, &headers).await?;
    let site = reader.site("")?;
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| TrackerError::BadRequest(format!("id: {id:?} is not a call id (a UUID)")))?
        .to_string();
    let site_only = if site.is_empty() {
        String::new()
    } else {
        format!(" AND site = {}", quote(&site))
    };
    // Where the call is first: every version of a row shares its key, so
    // this needs no FINAL and reads two columns; the full row is then read
    // from that one spot of the primary key (a FINAL over every column of
    // the site's calls is what made this page slow).
    let at = rows(
        &s,
        &format!(
            "SELECT site, toUInt32(received) AS received FROM calls \
             WHERE call_id = toUUID({}){site_only} LIMIT 1",
            quote(&id)
        ),
    )
    .await?
    .pop()
    .ok_or_else(|| TrackerError::NotFound(format!("call {id}")))?;
    let (call_site, received) = (string(&at, "site"), secs(&at, "received"));
    let call = rows(
        &s,
        &format!(
            "SELECT {LIST_COLUMNS}, {DETAIL_COLUMNS} FROM calls FINAL \
             WHERE site = {} AND received = toDateTime({received}) AND call_id = {} LIMIT 1",
            quote(&call_site),
            quote(&id)
        ),
    )
    .await?
    .pop()
    .ok_or_else(|| TrackerError::NotFound(format!("call {id}")))?;
    let (session, caller) = (string(&call, "session_id"), string(&call, "caller"));
    let attempts_sql = format!(
        "SELECT attempt, trunk, destination, toUInt32(started) AS started, toUInt32(ended) AS ended, \
         pdd_ms, answer_ms, talk_ms, duration_ms, final_code, reason, toString(outcome) AS outcome, failover \
         FROM call_attempts FINAL WHERE call_id = toUUID({}) \
         AND started >= toDateTime({}) AND started < toDateTime({}) ORDER BY attempt",
        quote(&id),
        received.saturating_sub(60),
        received.saturating_add(86_400)
    );
    // The pages the caller viewed before calling (within the touch window);
    // in one second (no finer time is kept), the older touch first.
    let journey_sql = format!(
        "SELECT toUInt32(ts) AS ts, url, referrer, channel, utm_source, utm_medium, utm_campaign, \
         gclid, yclid, number, country, city FROM visits \
         WHERE site = {} AND session_id = {} AND ts >= toDateTime({}) AND ts <= toDateTime({}) \
         ORDER BY ts, touch_ts LIMIT 200",
        quote(&call_site),
        quote(&session),
        received.saturating_sub(s.config.tracker.touch_max_age_days * 86_400),
        received
    );
    let earlier_sql = format!(
        "SELECT toString(call_id) AS call_id, toUInt32(received) AS received, \
         toString(disposition) AS disposition, talk_ms, utm_source, utm_campaign FROM calls FINAL \
         WHERE site = {} AND caller = {} AND received < toDateTime({received}) \
         ORDER BY received DESC LIMIT 20",
        quote(&call_site),
        quote(&caller)
    );
    let read_if = |want: bool, sql: String| {
        let s = s.clone();
        async move {
            if want {
                rows(&s, &sql).await
            } else {
                Ok(Vec::new())
            }
        }
    };
    // The three reads are independent: at once, not one after the other.
    let (attempts, journey, earlier) = tokio::try_join!(
        read_if(true, attempts_sql),
        read_if(!session.is_empty(), journey_sql),
        read_if(!caller.is_empty(), earlier_sql),
    )?;
    let mut call = times(call);
    call["forwarding"] = all_times(attempts);
    call["journey"] = all_times(journey);
    call["earlier_calls"] = all_times(earlier);
    Ok(Json(call))
}

/// Groupings of `/v1/stats`: name and the SQL of the key (times UTC).
pub const GROUPS: &[(&str, &str)] = &[
    ("day", "toString(toDate(received, 'UTC'))"),
    ("hour", "toHour(received, 'UTC')"),
    ("channel", "channel"),
    ("source", "utm_source"),
    ("campaign", "utm_campaign"),
    ("trunk", "final_trunk"),
];

/// The SQL of `/v1/stats`: calls, answered, missed and talk time per key
/// of `by` in `[from, to)` for `site` ('' = all). Calls from untrusted
/// sources (not calls at all) are left out, as in the reports.
pub fn stats_sql(by: &str, from: &str, to: &str, site: &str) -> Result<String, TrackerError> {
    let key = GROUPS
        .iter()
        .find(|(n, _)| *n == by)
        .map(|(_, k)| *k)
        .ok_or_else(|| {
            TrackerError::BadRequest(format!(
                "by: {by:?} is not one of {}",
                GROUPS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let bad = |e: reports::ReportError| TrackerError::BadRequest(e.to_string());
    let site_only = if site.is_empty() {
        String::new()
    } else {
        format!(" AND site = {}", quote(site))
    };
    Ok(format!(
        "SELECT {key} AS key, count() AS calls, toUInt64(sum(toUInt32(answered) > 0)) AS answered, \
         calls - answered AS missed, toUInt64(sum(talk_ms)) AS talk_ms FROM calls FINAL \
         WHERE received >= {} AND received < {}{site_only} AND disposition != 'rejected_untrusted' \
         GROUP BY key ORDER BY key",
        reports::datetime("from", from).map_err(bad)?,
        reports::datetime("to", to).map_err(bad)?,
    ))
}

/// Calls per day, hour of day, channel, source, campaign or trunk: the
/// web app's charts.
async fn stats(
    State(s): State<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, TrackerError> {
    let (_, pairs, site) = asked(&s, &headers, q.as_deref(), &["by", "site", "from", "to"]).await?;
    let (from, to) = range(&pairs)?;
    let by = param(&pairs, "by").unwrap_or("");
    let rows = rows(&s, &stats_sql(by, &from, &to, &site)?).await?;
    Ok(Json(
        serde_json::json!({ "by": by, "from": from, "to": to, "rows": rows }),
    ))
}

/// `from` and `to` of a report or stats query: the last 30 days unless given.
pub(crate) fn range(pairs: &[(String, String)]) -> Result<(String, String), TrackerError> {
    let now = dialmark_schemas::unix_now();
    let from = match param(pairs, "from").filter(|v| !v.is_empty()) {
        Some(v) => date("from", v)?,
        None => plain(now.saturating_sub(DEFAULT_DAYS * 86_400)),
    };
    let to = match param(pairs, "to").filter(|v| !v.is_empty()) {
        Some(v) => date("to", v)?,
        None => plain(now.saturating_add(60)),
    };
    Ok((from, to))
}

async fn report(
    State(s): State<Shared>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, TrackerError> {
    let known = [
        "site",
        "from",
        "to",
        "format",
        "conversion",
        "min_talk",
        "call_url",
        "window",
    ];
    let (reader, pairs, site) = asked(&s, &headers, q.as_deref(), &known).await?;
    let sql_text = reports::REPORTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, sql)| *sql);
    // A site's token reads the reports about one site; node-wide ones
    // (trunk quality) are the admin's.
    if let (Reader::Site(_), Some(sql)) = (&reader, sql_text) {
        if !reports::per_site(sql) {
            return Err(TrackerError::Forbidden(format!(
                "report {name:?} covers every site: admin token only"
            )));
        }
    }
    let num = |field: &'static str, default: u32| -> Result<u32, TrackerError> {
        match param(&pairs, field).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                TrackerError::BadRequest(format!("{field}: {v:?} is not a whole number"))
            }),
        }
    };
    let (from, to) = range(&pairs)?;
    let mut p = Params::new(&from, &to, &site);
    p.conversion = param(&pairs, "conversion").unwrap_or("").to_string();
    p.min_talk_seconds = num("min_talk", 0)?;
    p.window_seconds = num("window", reports::DEFAULT_WINDOW_SECONDS)?;
    p.cooldown_seconds = s.config.tracker.cooldown_seconds;
    p.call_url = param(&pairs, "call_url").unwrap_or("").to_string();
    let sql = reports::render(&name, &p).map_err(|e| match e {
        reports::ReportError::Unknown(..) => TrackerError::NotFound(e.to_string()),
        e => TrackerError::BadRequest(e.to_string()),
    })?;
    match param(&pairs, "format").unwrap_or("json") {
        "json" => {
            let bytes = crate::report::fetch(&s.inventory.clickhouse, &sql, "JSONEachRow").await?;
            Ok((
                [(header::CONTENT_TYPE, "application/json")],
                report_json(&name, &bytes),
            )
                .into_response())
        }
        "csv" => {
            let bytes = crate::report::fetch(&s.inventory.clickhouse, &sql, "CSVWithNames").await?;
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}.csv\""),
                    ),
                ],
                bytes,
            )
                .into_response())
        }
        f => Err(TrackerError::BadRequest(format!(
            "format: {f:?} is not one of json, csv"
        ))),
    }
}

/// `{"report": name, "rows": [...]}` around ClickHouse's JSONEachRow
/// lines, as they are: a report's columns are what its SQL says (times
/// already text, `answered` a count, not a time), and a big report (the
/// lost-call audit lists every call) is not parsed and printed again.
fn report_json(name: &str, lines: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.len() + name.len() + 32);
    out.extend_from_slice(b"{\"report\":");
    out.extend_from_slice(Value::from(name).to_string().as_bytes());
    out.extend_from_slice(b",\"rows\":[");
    for (i, row) in lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(row);
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Vec<(String, String)> {
        pairs(Some(s))
    }

    #[test]
    fn a_report_is_its_rows_as_clickhouse_wrote_them() {
        let lines =
            b"{\"utm_source\":\"google\",\"answered\":3}\n{\"utm_source\":\"\",\"answered\":0}\n";
        let v: Value = serde_json::from_slice(&report_json("campaigns", lines)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"report": "campaigns", "rows": [
                {"utm_source": "google", "answered": 3}, {"utm_source": "", "answered": 0}]})
        );
        let none: Value = serde_json::from_slice(&report_json("quarantine", b"")).unwrap();
        assert_eq!(
            none,
            serde_json::json!({"report": "quarantine", "rows": []})
        );
    }

    fn parse(s: &str) -> Result<Filter, TrackerError> {
        check_names(&q(s), FILTER_PARAMS)?;
        Filter::parse(&q(s), "shop".into(), 1_800_000_000, |_, v| {
            Ok(format!("+{}", v.trim_start_matches('+')))
        })
    }

    fn bad(s: &str) -> String {
        match parse(s) {
            Err(TrackerError::BadRequest(m)) => m,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn filters_become_quoted_sql() {
        let f = parse("from=2026-11-01&to=2026-12-01T00:00:00Z&utm_source=go'ogle&disposition=missed&number=74950000001&limit=10").unwrap();
        let sql = f.sql(None).unwrap();
        assert!(
            sql.contains("received >= toDateTime('2026-11-01 00:00:00', 'UTC')"),
            "{sql}"
        );
        assert!(
            sql.contains("received < toDateTime('2026-12-01 00:00:00', 'UTC')"),
            "{sql}"
        );
        assert!(sql.contains("site = 'shop'"));
        assert!(sql.contains("utm_source = 'go\\'ogle'"), "{sql}");
        assert!(sql.contains("disposition = 'missed'"));
        assert!(sql.contains("number = '+74950000001'"));
        assert!(sql.ends_with("LIMIT 11"), "one more than the page");
        let narrow = f.sql(Some(1_790_000_000)).unwrap();
        assert!(
            narrow.contains("AND received >= toDateTime(1790000000) AND"),
            "{narrow}"
        );
        let f = parse("").unwrap();
        assert_eq!(f.limit, DEFAULT_LIMIT);
        assert_eq!(f.from, plain(1_800_000_000 - 30 * 86_400));
    }

    #[test]
    fn the_cursor_continues_after_the_last_call() {
        let id = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
        let f = parse(&format!("cursor={}", cursor(1_790_000_000, id))).unwrap();
        assert_eq!(f.after, Some((1_790_000_000, id.to_string())));
        let sql = f.sql(None).unwrap();
        assert!(sql.contains(&format!(
            "(received < toDateTime(1790000000) OR (received = toDateTime(1790000000) AND call_id < '{id}'))"
        )), "{sql}");
        assert!(bad("cursor=12_x").starts_with("cursor:"));
    }

    #[test]
    fn stats_group_by_a_known_key_only() {
        let sql = stats_sql("hour", "2026-11-01", "2026-12-01", "shop").unwrap();
        assert!(
            sql.starts_with("SELECT toHour(received, 'UTC') AS key"),
            "{sql}"
        );
        assert!(sql.contains("AND site = 'shop'"), "{sql}");
        assert!(!stats_sql("day", "2026-11-01", "2026-12-01", "")
            .unwrap()
            .contains("site ="));
        match stats_sql("received; DROP", "2026-11-01", "2026-12-01", "") {
            Err(TrackerError::BadRequest(m)) => assert!(m.starts_with("by:"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        assert!(bad("from=yesterday").starts_with("from:"));
        assert!(bad("to=2026-13-01").starts_with("to:"));
        assert!(bad("limit=0").starts_with("limit:"));
        assert!(bad("limit=501").starts_with("limit:"));
        assert!(bad("disposition=lost").starts_with("disposition:"));
        assert!(bad("utm_source=a%00b").starts_with("utm_source:"));
        assert!(bad("sort=asc").starts_with("sort: unknown parameter"));
        assert!(bad("limit=1&limit=2").starts_with("limit: given twice"));
    }
}
