//! Number lookup for the router: the routing record of a DID (a short-TTL
//! local cache in front of the tracker's Redis record, serving the cached
//! record when Redis is away) and the visit a call is attributed to (live
//! lease, recent lease, static label, overflow), read at call time; and a
//! site's own call webhook, for the webhook fan-out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dialmark_schemas::config::RedisConfig;
use dialmark_schemas::layout::{self, NumberKind, RouteRecord, SiteWebhook};
use dialmark_schemas::rows::{Attribution, Confidence};
use dialmark_schemas::store::Redis;
use tokio::sync::OnceCell;
use tracing::warn;

use crate::call::Source;

/// Largest number of cached routing records.
const CACHE_MAX: usize = 100_000;

/// Result of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(RouteRecord),
    Unknown,
    /// Redis failed and nothing was cached.
    Unavailable,
}

/// How long a site's webhook setting is trusted before it is read again:
/// a changed URL or secret applies within this long.
pub const SITE_HOOK_TTL: Duration = Duration::from_secs(30);

/// Cached routing records (`None`: known to be unknown) and when read.
type Cache = Arc<Mutex<HashMap<String, (Option<RouteRecord>, Instant)>>>;
/// Cached site webhooks (`None`: the site has none) and when read.
type HookCache = Arc<Mutex<HashMap<String, (Option<SiteWebhook>, Instant)>>>;

#[derive(Clone)]
pub struct Directory {
    cfg: RedisConfig,
    redis: Arc<OnceCell<Redis>>,
    cache: Cache,
    hooks: HookCache,
    ttl: Duration,
    window: u32,
}

impl Directory {
    pub fn new(cfg: RedisConfig, ttl: Duration, attribution_window: u32) -> Self {
        Self {
            cfg,
            redis: Arc::new(OnceCell::new()),
            cache: Arc::new(Mutex::new(HashMap::new())),
            hooks: Arc::new(Mutex::new(HashMap::new())),
            ttl,
            window: attribution_window,
        }
    }

    /// The Redis connection, connected on first use (the router starts and
    /// serves cached numbers even while Redis is down); shared with the
    /// router's other Redis users (live feed, handover).
    pub(crate) async fn conn(&self) -> Option<Redis> {
        let r = self
            .redis
            .get_or_try_init(|| async {
                tokio::time::timeout(Duration::from_secs(2), Redis::connect(&self.cfg))
                    .await
                    .map_err(|_| {
                        redis::RedisError::from((redis::ErrorKind::Io, "connect timeout"))
                    })?
            })
            .await;
        match r {
            Ok(c) => Some(c.clone()),
            Err(e) => {
                warn!(cause = %e, "redis unreachable");
                None
            }
        }
    }

    /// Drops a cached record (the tracker changed it).
    pub fn invalidate(&self, number: &str) {
        self.cache.lock().expect("cache lock").remove(number);
    }

    pub async fn lookup(&self, number: &str) -> Lookup {
        let cached = self.cache.lock().expect("cache lock").get(number).cloned();
        if let Some((rec, at)) = &cached {
            if at.elapsed() < self.ttl {
                return rec.clone().map_or(Lookup::Unknown, Lookup::Found);
            }
        }
        let fresh = match self.conn().await {
            Some(mut c) => {
                tokio::time::timeout(Duration::from_secs(2), layout::read_route(&mut c, number))
                    .await
                    .unwrap_or_else(|_| {
                        Err(redis::RedisError::from((redis::ErrorKind::Io, "timeout")))
                    })
            }
            None => Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "not connected",
            ))),
        };
        match fresh {
            Ok(rec) => {
                let mut cache = self.cache.lock().expect("cache lock");
                if cache.len() >= CACHE_MAX {
                    cache.retain(|_, (_, at)| at.elapsed() < self.ttl);
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(number.to_string(), (rec.clone(), Instant::now()));
                rec.map_or(Lookup::Unknown, Lookup::Found)
            }
            Err(e) => {
                warn!(number, cause = %e, stale = cached.is_some(), "route lookup failed; serving the cached record");
                match cached {
                    Some((rec, _)) => rec.map_or(Lookup::Unknown, Lookup::Found),
                    None => Lookup::Unavailable,
                }
            }
        }
    }

    /// The site's own webhook (`Ok(None)`: it has none), cached for
    /// [`SITE_HOOK_TTL`]; the stale setting when Redis fails, `Err` when
    /// there is none to serve.
    pub async fn site_webhook(&self, site: &str) -> Result<Option<SiteWebhook>, String> {
        let cached = self.hooks.lock().expect("hook cache").get(site).cloned();
        if let Some((hook, at)) = &cached {
            if at.elapsed() < SITE_HOOK_TTL {
                return Ok(hook.clone());
            }
        }
        let fresh = match self.conn().await {
            Some(mut c) => {
                let mut get = redis::cmd("GET");
                get.arg(layout::site_key(site));
                let read = get.query_async::<Option<String>>(&mut c);
                match tokio::time::timeout(Duration::from_secs(2), read).await {
                    Ok(Ok(json)) => Ok(json.and_then(|j| site_hook(&j))),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("timeout".to_string()),
                }
            }
            None => Err("not connected".to_string()),
        };
        match fresh {
            Ok(hook) => {
                self.hooks
                    .lock()
                    .expect("hook cache")
                    .insert(site.to_string(), (hook.clone(), Instant::now()));
                Ok(hook)
            }
            Err(e) => {
                warn!(site, cause = %e, stale = cached.is_some(), "site webhook lookup failed");
                cached.map(|(hook, _)| hook).ok_or(e)
            }
        }
    }

    /// `PUBLISH channel msg` of each message, pipelined on the router's
    /// Redis connection.
    pub async fn publish(&self, channel: &str, msgs: &[String]) -> Result<(), String> {
        let mut c = self.conn().await.ok_or("not connected")?;
        let mut pipe = redis::pipe();
        for m in msgs {
            pipe.cmd("PUBLISH").arg(channel).arg(m).ignore();
        }
        pipe.query_async::<()>(&mut c)
            .await
            .map_err(|e| e.to_string())
    }

    /// Who the call is attributed to, read now (`now` in Unix seconds).
    pub async fn attribution(&self, rec: &RouteRecord, now: u32) -> Source {
        match rec.kind {
            NumberKind::Static => {
                return Source {
                    attribution: Attribution::Static,
                    // A number printed on a billboard or a flyer.
                    channel: if rec.source_label.is_empty() {
                        String::new()
                    } else {
                        "offline".into()
                    },
                    source_label: rec.source_label.clone(),
                    ..Source::default()
                };
            }
            NumberKind::Overflow => {
                return Source {
                    attribution: Attribution::Overflow,
                    ..Source::default()
                }
            }
            NumberKind::Pool => {}
        }
        if rec.pool.is_empty() {
            return Source::default();
        }
        let Some(mut c) = self.conn().await else {
            return Source::default();
        };
        let p = layout::pool_prefix(&rec.pool);
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL")
            .arg(format!("{p}lease:{}", rec.number))
            .cmd("HGETALL")
            .arg(format!("{p}last:{}", rec.number));
        let read = pipe.query_async::<(HashMap<String, String>, HashMap<String, String>)>(&mut c);
        let (live, last) = match tokio::time::timeout(Duration::from_secs(1), read).await {
            Ok(Ok(v)) => v,
            _ => {
                warn!(number = %rec.number, "attribution read failed");
                return Source::default();
            }
        };
        let s = classify(&live, &last, now, self.window);
        if s.confidence == Confidence::RecentContested {
            metrics::counter!("dialmark_calls_contested_total").increment(1);
        }
        s
    }
}

/// The `webhook` of a site's config JSON (the tracker validated it); a
/// site record that does not parse has none.
fn site_hook(json: &str) -> Option<SiteWebhook> {
    #[derive(serde::Deserialize)]
    struct Only {
        #[serde(default)]
        webhook: Option<SiteWebhook>,
    }
    serde_json::from_str::<Only>(json).ok()?.webhook
}

/// Picks the lease a call belongs to: a live lease; a lease that expired
/// within the window but is not reclaimed yet; or the last ended lease. The
/// window counts from the lease's end. A recent lease is contested when the
/// lease before it also ended within the window.
pub fn classify(
    live: &HashMap<String, String>,
    last: &HashMap<String, String>,
    now: u32,
    window: u32,
) -> Source {
    let num = |m: &HashMap<String, String>, k: &str| {
        m.get(k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    };
    let within = |ended: u32| ended > 0 && now.saturating_sub(ended) <= window;
    let recent = |contested: bool| {
        if contested {
            Confidence::RecentContested
        } else {
            Confidence::RecentSole
        }
    };
    let (fields, kind, confidence) = if !live.is_empty() {
        let exp = num(live, "expires_at");
        if exp > now {
            (live, Attribution::LiveLease, Confidence::Live)
        } else if within(exp) {
            let other = !last.is_empty() && within(num(last, "released_at"));
            (live, Attribution::RecentLease, recent(other))
        } else {
            return Source::default();
        }
    } else if !last.is_empty() && within(num(last, "released_at")) {
        let other = within(num(last, "prev_released_at"));
        (last, Attribution::RecentLease, recent(other))
    } else {
        return Source::default();
    };
    let get = |k: &str| fields.get(k).cloned().unwrap_or_default();
    Source {
        attribution: kind,
        confidence,
        session_id: get("session"),
        visitor_id: get("visitor"),
        source_label: String::new(),
        utm_source: get("utm_source"),
        utm_medium: get("utm_medium"),
        utm_campaign: get("utm_campaign"),
        utm_term: get("utm_term"),
        utm_content: get("utm_content"),
        gclid: get("gclid"),
        yclid: get("yclid"),
        referrer: get("referrer"),
        landing_url: get("landing_url"),
        country: get("country"),
        region: get("region"),
        city: get("city"),
        gbraid: get("gbraid"),
        wbraid: get("wbraid"),
        fbclid: get("fbclid"),
        msclkid: get("msclkid"),
        ym_uid: get("ym_uid"),
        channel: get("channel"),
        touch_ts: num(fields, "touch_ts"),
        first_touch_ts: num(fields, "first_touch_ts"),
        first_channel: get("first_channel"),
        first_utm_source: get("first_utm_source"),
        first_utm_medium: get("first_utm_medium"),
        first_utm_campaign: get("first_utm_campaign"),
    }
}

/// The attribution header value for the client's PBX:
/// `attribution=live_lease; utm_source=google; utm_campaign=spring`.
pub fn source_header(s: &Source) -> String {
    let kind = match s.attribution {
        Attribution::None => "none",
        Attribution::LiveLease => "live_lease",
        Attribution::RecentLease => "recent_lease",
        Attribution::Static => "static",
        Attribution::Overflow => "overflow",
    };
    let mut parts = vec![format!("attribution={kind}")];
    for (k, v) in [
        ("label", &s.source_label),
        ("utm_source", &s.utm_source),
        ("utm_medium", &s.utm_medium),
        ("utm_campaign", &s.utm_campaign),
        ("utm_term", &s.utm_term),
        ("gclid", &s.gclid),
        ("yclid", &s.yclid),
    ] {
        if !v.is_empty() {
            // Header values must stay on one line and keep our separators.
            let clean: String = v
                .chars()
                .filter(|c| !c.is_control() && *c != ';')
                .take(200)
                .collect();
            parts.push(format!("{k}={clean}"));
        }
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sites_webhook_is_read_off_its_config() {
        let hook = site_hook(
            r#"{"id":"s","origins":[],"webhook":{"url":"https://crm.example/hook","secret":"0123456789abcdef"}}"#,
        );
        assert_eq!(
            hook,
            Some(SiteWebhook {
                url: "https://crm.example/hook".into(),
                secret: "0123456789abcdef".into()
            })
        );
        assert_eq!(site_hook(r#"{"id":"s","origins":[]}"#), None);
        assert_eq!(site_hook("not json"), None);
    }

    fn m(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn live_recent_and_none() {
        let live = m(&[
            ("session", "s1"),
            ("expires_at", "1000"),
            ("utm_source", "google"),
        ]);
        let last = m(&[
            ("session", "s0"),
            ("released_at", "900"),
            ("utm_source", "yandex"),
        ]);
        let empty = HashMap::new();
        let s = classify(&live, &last, 999, 100);
        assert_eq!(
            (s.attribution, s.session_id.as_str()),
            (Attribution::LiveLease, "s1")
        );
        assert_eq!(
            classify(&live, &last, 1050, 100).attribution,
            Attribution::RecentLease
        );
        assert_eq!(
            classify(&live, &last, 1200, 100).attribution,
            Attribution::None
        );
        let s = classify(&empty, &last, 950, 100);
        assert_eq!(
            (s.attribution, s.utm_source.as_str()),
            (Attribution::RecentLease, "yandex")
        );
        assert_eq!(
            classify(&empty, &last, 1001, 100).attribution,
            Attribution::None
        );
        assert_eq!(classify(&empty, &empty, 1, 100), Source::default());
    }

    #[test]
    fn confidence_counts_the_other_leases_in_the_window() {
        let conf = |live: &HashMap<String, String>, last: &HashMap<String, String>, now| {
            let s = classify(live, last, now, 100);
            (s.attribution, s.confidence, s.session_id)
        };
        let empty = HashMap::new();
        // s1 holds the number until 1000; s0's lease ended at 950.
        let live = m(&[("session", "s1"), ("expires_at", "1000")]);
        let last = m(&[
            ("session", "s0"),
            ("released_at", "950"),
            ("prev_released_at", "0"),
        ]);
        assert_eq!(
            conf(&live, &last, 999),
            (Attribution::LiveLease, Confidence::Live, "s1".into())
        );
        assert_eq!(
            conf(&live, &last, 1000),
            (
                Attribution::RecentLease,
                Confidence::RecentContested,
                "s1".into()
            ),
            "s1's lease ended at 1000 (expired, not reclaimed), s0's at 950: both inside"
        );
        assert_eq!(
            conf(&live, &last, 1060),
            (
                Attribution::RecentLease,
                Confidence::RecentSole,
                "s1".into()
            ),
            "s0's window is over"
        );
        // Reclaimed: s1 is `last`, s0 its predecessor.
        let last = m(&[
            ("session", "s1"),
            ("released_at", "1000"),
            ("prev_released_at", "950"),
        ]);
        assert_eq!(conf(&empty, &last, 1040).1, Confidence::RecentContested);
        assert_eq!(conf(&empty, &last, 1051).1, Confidence::RecentSole);
        assert_eq!(
            conf(&empty, &last, 1101),
            (Attribution::None, Confidence::None, String::new())
        );
    }

    #[test]
    fn header_is_one_clean_line() {
        let s = Source {
            attribution: Attribution::LiveLease,
            utm_source: "goo;gle\r\nX: y".into(),
            utm_campaign: "spring".into(),
            ..Source::default()
        };
        let h = source_header(&s);
        assert_eq!(
            h,
            "attribution=live_lease; utm_source=googleX: y; utm_campaign=spring"
        );
    }
}
