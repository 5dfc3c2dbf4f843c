//! The number inventory: sites, pools and numbers in Redis, and the number
//! lifecycle `stock → active → quarantine → stock`. Every status change
//! writes the routing record the router reads and a `number_events` row.
//! The admin API and the `admin` CLI both call this module.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clickhouse::Row;
use dialmark_schemas::config::QuarantineConfig;
use dialmark_schemas::layout::{self, NumberKind, RouteRecord, Scripts};
use dialmark_schemas::number::NumberingPlan;
use dialmark_schemas::rows::{NumberEvent, NumberStatus};
use dialmark_schemas::sink::Sink;
use dialmark_schemas::store::Redis;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::error::TrackerError;
use crate::pool::{self, LeaseTiming};

const DAY: u32 = 86_400;

/// A geo pool of a site: chosen for visitors from these regions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GeoPool {
    pub pool: String,
    /// Region codes `CC-SUB` (`RU-MOW`) or countries `CC`.
    pub regions: Vec<String>,
}

/// A site: where the snippet runs and which numbers it swaps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Site {
    #[serde(default)]
    pub id: String,
    /// Origins (`https://shop.example`) allowed to call the snippet API.
    pub origins: Vec<String>,
    /// The site's own numbers (E.164) that the snippet swaps.
    pub replace: Vec<String>,
    /// Display format: `#` takes the number's digits from the right.
    #[serde(default)]
    pub display_mask: String,
    /// Pool for visitors no geo pool matches.
    pub default_pool: String,
    #[serde(default)]
    pub geo_pools: Vec<GeoPool>,
    /// Referrer domains that never count as a source (and their
    /// subdomains), besides the site's own hosts and the built-in list of
    /// payment gateways and sign-in pages.
    #[serde(default)]
    pub ignore_referrers: Vec<String>,
    /// More tracked numbers of the site (sales, service, 8-800…), each with
    /// pools of its own and swapping only its own numbers. The fields above
    /// (`replace`, `default_pool`, `geo_pools`) are the main line.
    #[serde(default)]
    pub lines: Vec<Line>,
    /// The site's own call webhook (`call.started`, `call.completed`),
    /// besides the node's global one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<layout::SiteWebhook>,
}

/// A tracked number of a site besides the main one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// Names the line in answers and reports (`service`, `free_call`).
    pub name: String,
    /// The site's own numbers this line swaps.
    pub replace: Vec<String>,
    pub default_pool: String,
    #[serde(default)]
    pub geo_pools: Vec<GeoPool>,
}

/// One tracked number of a site, the main one or one of `lines`.
#[derive(Debug, Clone, Copy)]
pub struct LineRef<'a> {
    pub name: &'a str,
    pub replace: &'a [String],
    pub default_pool: &'a str,
    pub geo_pools: &'a [GeoPool],
}

impl<'a> LineRef<'a> {
    /// The line's pools: the default one, then its geo pools.
    pub fn pools(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        std::iter::once(self.default_pool).chain(self.geo_pools.iter().map(|g| g.pool.as_str()))
    }
}

/// The main line's name.
pub const MAIN_LINE: &str = "main";

impl Site {
    /// Every tracked number of the site, the main line first.
    pub fn lines(&self) -> Vec<LineRef<'_>> {
        let mut v = vec![LineRef {
            name: MAIN_LINE,
            replace: &self.replace,
            default_pool: &self.default_pool,
            geo_pools: &self.geo_pools,
        }];
        v.extend(self.lines.iter().map(|l| LineRef {
            name: &l.name,
            replace: &l.replace,
            default_pool: &l.default_pool,
            geo_pools: &l.geo_pools,
        }));
        v
    }

    /// Every pool of every line.
    pub fn pools(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for l in self.lines() {
            for p in l.pools() {
                if !v.contains(&p) {
                    v.push(p);
                }
            }
        }
        v
    }
}

/// A pool of tracking numbers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PoolDef {
    #[serde(default)]
    pub id: String,
    pub site: String,
    /// Handed out when the pool is exhausted; its calls are marked overflow.
    #[serde(default)]
    pub overflow_number: Option<String>,
    /// Default destinations of numbers added to the pool.
    #[serde(default)]
    pub destinations: Vec<String>,
    #[serde(default = "default_group")]
    pub trunk_group: String,
}

fn default_group() -> String {
    "default".into()
}

/// What to add: numbers into a pool, as static numbers, or into stock.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AddNumbers {
    pub numbers: Vec<String>,
    #[serde(default)]
    pub pool: Option<String>,
    /// Site of a static number (pool numbers take the pool's site).
    #[serde(default)]
    pub site: Option<String>,
    /// Source label: makes the numbers static (offline ads).
    #[serde(default)]
    pub source_label: Option<String>,
    #[serde(default)]
    pub destinations: Vec<String>,
    #[serde(default)]
    pub trunk_group: Option<String>,
}

/// A quarantined number and whether it may go back to stock.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QuarantineEntry {
    pub number: String,
    pub since: u32,
    pub days: u32,
    /// Calls received while in quarantine in the trailing call window
    /// (`tracker.quarantine.call_window_days`, 90 by default), from trusted
    /// carriers.
    pub calls_90d: u64,
    pub eligible: bool,
    /// Earliest time it may be released by age (Unix seconds).
    pub release_after: u32,
}

/// Inventory operations over Redis, with events to ClickHouse.
#[derive(Clone)]
pub struct Inventory {
    pub redis: Redis,
    pub scripts: std::sync::Arc<Scripts>,
    pub events: Sink<NumberEvent>,
    pub clickhouse: clickhouse::Client,
    pub plan: NumberingPlan,
    pub timing: LeaseTiming,
    pub quarantine: QuarantineConfig,
    /// Last site configs read from Redis, with when: served without a
    /// Redis read for [`SITE_CACHE_TTL`] (one round trip less per visit),
    /// and at any age while Redis is away (the snippet API keeps answering
    /// with the site's own number).
    pub site_cache: std::sync::Arc<std::sync::Mutex<HashMap<String, (Site, Instant)>>>,
}

/// How long a site config read from Redis is used without reading it again:
/// a change made through another tracker instance shows after at most this.
pub const SITE_CACHE_TTL: Duration = Duration::from_secs(2);

impl Inventory {
    fn normalize(&self, field: &str, raw: &str) -> Result<String, TrackerError> {
        self.plan
            .normalize(raw)
            .map_err(|e| TrackerError::BadRequest(format!("{field}: {e}")))
    }

    fn normalize_all(&self, field: &str, raw: &[String]) -> Result<Vec<String>, TrackerError> {
        raw.iter()
            .enumerate()
            .map(|(i, n)| self.normalize(&format!("{field}[{i}]"), n))
            .collect()
    }

    pub async fn put_site(&self, mut site: Site) -> Result<Site, TrackerError> {
        if !layout::is_id(&site.id) {
            return Err(TrackerError::BadRequest(
                "site id: letters, digits, '-' and '_' only".into(),
            ));
        }
        if !layout::is_id(&site.default_pool) {
            return Err(TrackerError::BadRequest(
                "default_pool: not a valid pool id".into(),
            ));
        }
        for (i, o) in site.origins.iter().enumerate() {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return Err(TrackerError::BadRequest(format!(
                    "origins[{i}]: {o:?} is not an origin like https://shop.example"
                )));
            }
        }
        for (i, d) in site.ignore_referrers.iter_mut().enumerate() {
            *d = d.trim().trim_start_matches("*.").to_ascii_lowercase();
            if d.is_empty() || !d.contains('.') || d.contains(['/', ':', ' ', '*']) {
                return Err(TrackerError::BadRequest(format!(
                    "ignore_referrers[{i}]: {d:?} is not a domain like pay.example"
                )));
            }
        }
        for (i, g) in site.geo_pools.iter().enumerate() {
            if !layout::is_id(&g.pool) {
                return Err(TrackerError::BadRequest(format!(
                    "geo_pools[{i}].pool: not a valid pool id"
                )));
            }
        }
        if let Some(w) = &site.webhook {
            dialmark_schemas::config::check_webhook(&w.url, &w.secret).map_err(
                |(field, why)| TrackerError::BadRequest(format!("webhook.{field}: {why}")),
            )?;
        }
        site.replace = self.normalize_all("replace", &site.replace)?;
        let mut names = vec![MAIN_LINE.to_string()];
        let mut swapped = site.replace.clone();
        for (i, line) in site.lines.iter_mut().enumerate() {
            let at = format!("lines[{i}]");
            if !layout::is_id(&line.name) || names.contains(&line.name) {
                return Err(TrackerError::BadRequest(format!(
                    "{at}.name: {:?} must be a unique id (letters, digits, '-', '_'; not \"main\")",
                    line.name
                )));
            }
            names.push(line.name.clone());
            if !layout::is_id(&line.default_pool) {
                return Err(TrackerError::BadRequest(format!(
                    "{at}.default_pool: not a valid pool id"
                )));
            }
            for (j, g) in line.geo_pools.iter().enumerate() {
                if !layout::is_id(&g.pool) {
                    return Err(TrackerError::BadRequest(format!(
                        "{at}.geo_pools[{j}].pool: not a valid pool id"
                    )));
                }
            }
            if line.replace.is_empty() {
                return Err(TrackerError::BadRequest(format!(
                    "{at}.replace: at least one of the site's numbers"
                )));
            }
            line.replace = self.normalize_all(&format!("{at}.replace"), &line.replace)?;
            if let Some(n) = line.replace.iter().find(|n| swapped.contains(n)) {
                return Err(TrackerError::BadRequest(format!(
                    "{at}.replace: {n} is swapped by another line already"
                )));
            }
            swapped.extend(line.replace.iter().cloned());
        }
        let pools = site.pools();
        if pools.len()
            < site
                .lines()
                .iter()
                .map(|l| l.pools().count())
                .sum::<usize>()
        {
            return Err(TrackerError::BadRequest(
                "lines: each line needs pools of its own (a pool is listed twice)".into(),
            ));
        }
        if site.display_mask.is_empty() {
            site.display_mask = default_mask(&self.plan).into();
        } else if site.display_mask.chars().filter(|c| *c == '#').count() < 4 {
            return Err(TrackerError::BadRequest(
                "display_mask: needs at least 4 '#' digit places".into(),
            ));
        }
        self.save_json(&layout::site_key(&site.id), &site, layout::SITES, &site.id)
            .await?;
        self.site_cache
            .lock()
            .expect("site cache")
            .insert(site.id.clone(), (site.clone(), Instant::now()));
        info!(site = %site.id, "site saved");
        Ok(site)
    }

    pub async fn site(&self, id: &str) -> Result<Site, TrackerError> {
        let cached = self.site_cache.lock().expect("site cache").get(id).cloned();
        let stale = match cached {
            Some((site, at)) if at.elapsed() < SITE_CACHE_TTL => return Ok(site),
            c => c.map(|(site, _)| site),
        };
        let mut r = self.redis.clone();
        let read = redis::cmd("GET")
            .arg(layout::site_key(id))
            .query_async(&mut r)
            .await;
        let json: Option<String> = match read {
            Ok(j) => j,
            Err(e) => {
                // Redis away: the last known config keeps the snippet API answering.
                return stale.ok_or(TrackerError::Redis(e));
            }
        };
        let json = json.ok_or_else(|| TrackerError::NotFound(format!("unknown site {id:?}")))?;
        let site: Site = serde_json::from_str(&json)
            .map_err(|e| TrackerError::Internal(format!("site {id}: {e}")))?;
        self.site_cache
            .lock()
            .expect("site cache")
            .insert(id.to_string(), (site.clone(), Instant::now()));
        Ok(site)
    }

    /// Saves a pool; `actor` (`api`, `apply`) goes on the route event of
    /// its overflow number.
    pub async fn put_pool(&self, mut def: PoolDef, actor: &str) -> Result<PoolDef, TrackerError> {
        if !layout::is_id(&def.id) {
            return Err(TrackerError::BadRequest(
                "pool id: letters, digits, '-' and '_' only".into(),
            ));
        }
        self.site(&def.site).await?;
        def.destinations = self.normalize_all("destinations", &def.destinations)?;
        let before = self.pool(&def.id).await.ok();
        if let Some(o) = &def.overflow_number {
            let o = self.normalize("overflow_number", o)?;
            // The overflow number takes the same lifecycle checks as a pool
            // number: not one in quarantine, not one active elsewhere.
            self.check_free_for(&o, &def.id, NumberKind::Overflow)
                .await?;
            // It routes like an active number of the pool.
            self.write_route(
                &RouteRecord {
                    number: o.clone(),
                    status: NumberStatus::Active,
                    kind: NumberKind::Overflow,
                    site: def.site.clone(),
                    pool: def.id.clone(),
                    destinations: def.destinations.clone(),
                    trunk_group: def.trunk_group.clone(),
                    source_label: String::new(),
                    status_since: dialmark_schemas::unix_now(),
                },
                "pool overflow number",
                actor,
            )
            .await?;
            def.overflow_number = Some(o);
        }
        self.save_pool(&def).await?;
        // A replaced overflow number was shown to visitors: it rests in
        // quarantine like any number taken out of use.
        if let Some(old) = before.and_then(|b| b.overflow_number) {
            if def.overflow_number.as_deref() != Some(old.as_str()) {
                self.retire(
                    &old,
                    "replaced as overflow number",
                    actor,
                    dialmark_schemas::unix_now(),
                )
                .await?;
            }
        }
        info!(pool.id = %def.id, site = %def.site, "pool saved");
        Ok(def)
    }

    async fn save_pool(&self, def: &PoolDef) -> Result<(), TrackerError> {
        self.save_json(&layout::pool_key(&def.id), def, layout::POOLS, &def.id)
            .await
    }

    /// A site's or pool's JSON under `key`, and `id` in the index set
    /// `ids`: one command per key (on a Redis Cluster they live on
    /// different slots, and a pipeline across slots is refused).
    async fn save_json(
        &self,
        key: &str,
        value: &impl Serialize,
        ids: &str,
        id: &str,
    ) -> Result<(), TrackerError> {
        let json =
            serde_json::to_string(value).map_err(|e| TrackerError::Internal(e.to_string()))?;
        let mut r = self.redis.clone();
        redis::cmd("SET")
            .arg(key)
            .arg(json)
            .exec_async(&mut r)
            .await?;
        redis::cmd("SADD")
            .arg(ids)
            .arg(id)
            .exec_async(&mut r)
            .await?;
        Ok(())
    }

    /// Whether `n` may be put to use as a `kind` number of `pool`: not in
    /// quarantine (only the release rule returns it), not active anywhere
    /// else. Stock, unknown, or already this very use: yes.
    async fn check_free_for(
        &self,
        n: &str,
        pool: &str,
        kind: NumberKind,
    ) -> Result<(), TrackerError> {
        let Some(prev) = self.route(n).await? else {
            return Ok(());
        };
        if prev.status == NumberStatus::Quarantine {
            return Err(TrackerError::Conflict(format!(
                "{n} is in quarantine; release-quarantine returns it to stock when eligible"
            )));
        }
        if prev.status == NumberStatus::Active && !(prev.pool == pool && prev.kind == kind) {
            return Err(TrackerError::Conflict(format!(
                "{n} is active in pool {:?} of site {:?}; retire it first",
                prev.pool, prev.site
            )));
        }
        Ok(())
    }

    pub async fn pool(&self, id: &str) -> Result<PoolDef, TrackerError> {
        let mut r = self.redis.clone();
        let json: Option<String> = redis::cmd("GET")
            .arg(layout::pool_key(id))
            .query_async(&mut r)
            .await?;
        let json = json.ok_or_else(|| TrackerError::NotFound(format!("unknown pool {id:?}")))?;
        serde_json::from_str(&json).map_err(|e| TrackerError::Internal(format!("pool {id}: {e}")))
    }

    pub async fn pool_ids(&self) -> Result<Vec<String>, TrackerError> {
        let mut r = self.redis.clone();
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(layout::POOLS)
            .query_async(&mut r)
            .await?;
        ids.sort();
        Ok(ids)
    }

    pub async fn route(&self, number: &str) -> Result<Option<RouteRecord>, TrackerError> {
        let mut r = self.redis.clone();
        Ok(layout::read_route(&mut r, number).await?)
    }

    /// Writes a routing record and records the status transition.
    async fn write_route(
        &self,
        rec: &RouteRecord,
        reason: &str,
        actor: &str,
    ) -> Result<(), TrackerError> {
        let mut r = self.redis.clone();
        let prev = layout::read_route(&mut r, &rec.number).await?;
        let from = prev.as_ref().map_or(NumberStatus::Unknown, |p| p.status);
        let key = layout::route_key(&rec.number);
        // The route in one atomic step (one key), then the indexes, each on
        // its own: on a Redis Cluster they live on other slots.
        redis::pipe()
            .atomic()
            .del(&key)
            .hset_multiple(&key, &rec.to_fields())
            .exec_async(&mut r)
            .await?;
        let (quarantine, stock) = match rec.status {
            NumberStatus::Quarantine => (Some(rec.status_since), false),
            NumberStatus::Stock => (None, true),
            _ => (None, false),
        };
        let mut index = redis::cmd(if quarantine.is_some() { "ZADD" } else { "ZREM" });
        index.arg(layout::QUARANTINE);
        if let Some(since) = quarantine {
            index.arg(since);
        }
        index.arg(&rec.number).exec_async(&mut r).await?;
        redis::cmd(if stock { "SADD" } else { "SREM" })
            .arg(layout::STOCK)
            .arg(&rec.number)
            .exec_async(&mut r)
            .await?;
        if from != rec.status || prev.is_none() {
            self.event(
                &rec.number,
                &rec.site,
                &rec.pool,
                from,
                rec.status,
                actor,
                reason,
            );
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &self,
        number: &str,
        site: &str,
        pool: &str,
        from: NumberStatus,
        to: NumberStatus,
        actor: &str,
        reason: &str,
    ) {
        info!(
            number,
            site,
            pool.id = pool,
            from = from.as_str(),
            to = to.as_str(),
            "number status changed"
        );
        // A full queue is logged and counted by the sink; the change itself stands.
        let _ = self.events.push(NumberEvent {
            event_id: uuid::Uuid::new_v4(),
            ts: dialmark_schemas::unix_now(),
            number: number.into(),
            site: site.into(),
            pool: pool.into(),
            from_status: from,
            to_status: to,
            actor: actor.into(),
            reason: reason.into(),
            ts_us: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
        });
    }

    /// Adds numbers to a pool (active, leasable at once), as static numbers,
    /// or to stock. Quarantined numbers are refused: they come back only
    /// through [`Inventory::release_quarantine`].
    pub async fn add_numbers(
        &self,
        req: AddNumbers,
        actor: &str,
        now: u32,
    ) -> Result<Vec<String>, TrackerError> {
        if req.numbers.is_empty() {
            return Err(TrackerError::BadRequest(
                "numbers: at least one number".into(),
            ));
        }
        let numbers = self.normalize_all("numbers", &req.numbers)?;
        let mut destinations = self.normalize_all("destinations", &req.destinations)?;
        let (kind, status, site, pool, group) = match (&req.pool, &req.source_label) {
            (Some(_), Some(_)) => {
                return Err(TrackerError::BadRequest(
                    "give either pool or source_label, not both".into(),
                ))
            }
            (Some(p), None) => {
                let def = self.pool(p).await?;
                if destinations.is_empty() {
                    destinations = def.destinations.clone();
                }
                let group = req.trunk_group.clone().unwrap_or(def.trunk_group.clone());
                (
                    NumberKind::Pool,
                    NumberStatus::Active,
                    def.site,
                    def.id,
                    group,
                )
            }
            (None, Some(_)) => {
                let site = req.site.clone().ok_or_else(|| {
                    TrackerError::BadRequest("site: required for a static number".into())
                })?;
                self.site(&site).await?;
                (
                    NumberKind::Static,
                    NumberStatus::Active,
                    site,
                    String::new(),
                    req.trunk_group.clone().unwrap_or_else(default_group),
                )
            }
            (None, None) => (
                NumberKind::Pool,
                NumberStatus::Stock,
                String::new(),
                String::new(),
                default_group(),
            ),
        };
        if status == NumberStatus::Active && destinations.is_empty() {
            return Err(TrackerError::BadRequest(
                "destinations: an active number needs somewhere to ring".into(),
            ));
        }
        for n in &numbers {
            self.check_free_for(n, &pool, kind).await?;
        }
        for n in &numbers {
            let rec = RouteRecord {
                number: n.clone(),
                status,
                kind,
                site: site.clone(),
                pool: pool.clone(),
                destinations: destinations.clone(),
                trunk_group: group.clone(),
                source_label: req.source_label.clone().unwrap_or_default(),
                status_since: now,
            };
            // Route first, then the pool: the router never sees a leased
            // number without a routing record.
            self.write_route(&rec, "added", actor).await?;
            if kind == NumberKind::Pool && status == NumberStatus::Active {
                let mut r = self.redis.clone();
                pool::enroll(&mut r, &self.scripts, &pool, now, n).await?;
            }
        }
        Ok(numbers)
    }

    /// Replaces the destinations of one number.
    pub async fn set_destinations(
        &self,
        number: &str,
        destinations: &[String],
    ) -> Result<RouteRecord, TrackerError> {
        let number = self.normalize("number", number)?;
        let destinations = self.normalize_all("destinations", destinations)?;
        if destinations.is_empty() {
            return Err(TrackerError::BadRequest(
                "destinations: at least one".into(),
            ));
        }
        let mut rec = self
            .route(&number)
            .await?
            .ok_or_else(|| TrackerError::NotFound(format!("unknown number {number}")))?;
        rec.destinations = destinations;
        let mut r = self.redis.clone();
        redis::cmd("HSET")
            .arg(layout::route_key(&number))
            .arg("destinations")
            .arg(rec.destinations.join(","))
            .exec_async(&mut r)
            .await?;
        Ok(rec)
    }

    /// Retires a number to quarantine: it stops being leased at once (it
    /// leaves its pool before its route says quarantine, so no visitor is
    /// shown a number that rejects calls); calls to it are still recorded
    /// (and rejected by the router). An overflow number stops being its
    /// pool's overflow. Retiring a number already in quarantine changes
    /// nothing and answers its record.
    pub async fn retire(
        &self,
        number: &str,
        reason: &str,
        actor: &str,
        now: u32,
    ) -> Result<RouteRecord, TrackerError> {
        let number = self.normalize("number", number)?;
        let mut rec = self
            .route(&number)
            .await?
            .ok_or_else(|| TrackerError::NotFound(format!("unknown number {number}")))?;
        match rec.status {
            NumberStatus::Quarantine => return Ok(rec),
            NumberStatus::Stock => {
                return Err(TrackerError::Conflict(format!(
                    "{number} is in stock, not in use"
                )))
            }
            _ => {}
        }
        match rec.kind {
            NumberKind::Pool if !rec.pool.is_empty() => {
                let mut r = self.redis.clone();
                pool::withdraw(
                    &mut r,
                    &self.scripts,
                    &rec.pool,
                    now,
                    self.timing.attribution_window,
                    &number,
                )
                .await?;
            }
            NumberKind::Overflow => {
                if let Ok(mut def) = self.pool(&rec.pool).await {
                    if def.overflow_number.as_deref() == Some(number.as_str()) {
                        def.overflow_number = None;
                        self.save_pool(&def).await?;
                        info!(pool.id = %def.id, number = %number, "overflow number retired; the pool has none now");
                    }
                }
            }
            _ => {}
        }
        rec.status = NumberStatus::Quarantine;
        rec.status_since = now;
        self.write_route(&rec, reason, actor).await?;
        Ok(rec)
    }

    /// Quarantined numbers with the calls each received while in
    /// quarantine over the trailing call window, and whether the
    /// `[tracker.quarantine]` rule lets it go back to stock.
    pub async fn quarantine(&self, now: u32) -> Result<Vec<QuarantineEntry>, TrackerError> {
        let q = &self.quarantine;
        let mut r = self.redis.clone();
        let members: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(layout::QUARANTINE)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut r)
            .await?;
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let members: Vec<(String, u32)> = members.into_iter().map(|(n, s)| (n, s as u32)).collect();
        let counts = self
            .calls_in_quarantine(
                &members,
                now.saturating_sub(q.call_window_days.saturating_mul(DAY)),
                now,
            )
            .await?;
        Ok(members
            .into_iter()
            .map(|(number, since)| {
                let calls = counts.get(&number).copied().unwrap_or(0);
                let release_after = since.saturating_add(q.min_days.saturating_mul(DAY));
                QuarantineEntry {
                    days: now.saturating_sub(since) / DAY,
                    calls_90d: calls,
                    eligible: now >= release_after && calls < q.max_calls,
                    release_after,
                    since,
                    number,
                }
            })
            .collect())
    }

    /// Returns to stock every quarantined number the rule lets go (see
    /// [`Inventory::quarantine`]); with `dry_run`, only says which.
    pub async fn release_quarantine(
        &self,
        actor: &str,
        now: u32,
        dry_run: bool,
    ) -> Result<Vec<QuarantineEntry>, TrackerError> {
        let mut released = Vec::new();
        for e in self.quarantine(now).await? {
            if !e.eligible {
                continue;
            }
            if dry_run {
                released.push(e);
                continue;
            }
            let Some(mut rec) = self.route(&e.number).await? else {
                continue;
            };
            if rec.status != NumberStatus::Quarantine {
                continue;
            }
            rec.status = NumberStatus::Stock;
            rec.kind = NumberKind::Pool;
            rec.site.clear();
            rec.pool.clear();
            rec.source_label.clear();
            rec.status_since = now;
            let reason = format!(
                "quarantine {} days, {} calls in {} days",
                e.days, e.calls_90d, self.quarantine.call_window_days
            );
            self.write_route(&rec, &reason, actor).await?;
            released.push(e);
        }
        Ok(released)
    }

    /// Calls each number received while in quarantine (`number_status`
    /// stamped by the router at the call, and after the number's current
    /// quarantine began) within `[from, to]`, from trusted carriers.
    async fn calls_in_quarantine(
        &self,
        members: &[(String, u32)],
        from: u32,
        to: u32,
    ) -> Result<HashMap<String, u64>, TrackerError> {
        #[derive(Row, Deserialize)]
        struct Count {
            number: String,
            calls: u64,
        }
        let numbers: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
        let since: Vec<u32> = members.iter().map(|(_, s)| *s).collect();
        let rows: Vec<Count> = self
            .clickhouse
            .query(
                "SELECT number, count() AS calls FROM calls FINAL \
                 WHERE has(?, number) AND received >= toDateTime(?) AND received <= toDateTime(?) \
                   AND number_status = 'quarantine' AND disposition != 'rejected_untrusted' \
                   AND toUInt32(received) >= transform(number, ?, ?, toUInt32(0)) \
                 GROUP BY number",
            )
            .bind(&numbers)
            .bind(from)
            .bind(to)
            .bind(&numbers)
            .bind(&since)
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(|c| (c.number, c.calls)).collect())
    }
}

/// The display mask used when a site sets none.
pub fn default_mask(plan: &NumberingPlan) -> &'static str {
    match plan.country_code.as_str() {
        "7" => "+7 (###) ###-##-##",
        "1" => "(###) ###-####",
        _ => "+############",
    }
}

/// Formats an E.164 number with a mask whose `#` places take the number's
/// digits from the right; with more places than digits, the number as is.
pub fn format_display(number: &str, mask: &str) -> String {
    let digits: Vec<char> = number.chars().filter(char::is_ascii_digit).collect();
    let places = mask.chars().filter(|c| *c == '#').count();
    if places == 0 || places > digits.len() {
        return number.to_string();
    }
    let mut it = digits[digits.len() - places..].iter();
    mask.chars()
        .map(|c| {
            if c == '#' {
                *it.next().expect("counted")
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_masks() {
        assert_eq!(
            format_display("+74951234567", "+7 (###) ###-##-##"),
            "+7 (495) 123-45-67"
        );
        assert_eq!(
            format_display("+14155550100", "(###) ###-####"),
            "(415) 555-0100"
        );
        assert_eq!(format_display("+4930123", "(###) ###-####"), "+4930123");
    }
}
