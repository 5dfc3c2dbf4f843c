//! What the shards, the receivers, the control task and the HTTP side
//! share: the routing [`Snapshot`] (config-derived policy and the trunk
//! table with up/down, degraded and drained state), published whole by the
//! control task and read without waiting; each trunk's live counters and
//! quality windows (kept across reloads); the node-wide memory [`Budget`];
//! and the drain and overload flags.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use dialmark_schemas::config::{Config, TrunkConfig};
use dialmark_schemas::rows::TrunkEvent;
use ipnet::IpNet;

use crate::call::{Policy, TrunkRef};
use crate::quality::{Point, Quality, Sample, Stats};

/// Counters of one trunk that shards update while calls run.
#[derive(Debug, Default)]
pub struct TrunkLive {
    /// Attempts on the trunk now (from the INVITE to the attempt's row).
    pub active: AtomicU32,
    /// Unix ms of the last reply a real call got from the trunk.
    pub last_reply_ms: AtomicU64,
    /// Calls the trunk was put first for: shares calls by weight.
    pub chosen: AtomicU64,
    /// Attempts started in one second: the second (Unix) above the low 24
    /// bits, the count in them (for `max_cps`).
    cps: AtomicU64,
    /// Plans made while the trunk was degraded: every `probe_every`-th
    /// keeps its place.
    probe_seq: AtomicU64,
    /// New calls that went elsewhere first because the trunk was degraded
    /// or drained (reset when that ends).
    pub shifted: AtomicU64,
    /// Finished attempts of the last 15 minutes.
    pub quality: Mutex<Quality>,
}

impl TrunkLive {
    /// Attempts started in second `now_s`.
    pub fn cps_used(&self, now_s: u64) -> u64 {
        let v = self.cps.load(Ordering::Relaxed);
        if v >> 24 == now_s {
            v & 0xFF_FFFF
        } else {
            0
        }
    }

    /// An attempt on the trunk ended.
    pub fn attempt_done(&self, now_ms: u64, sample: Sample) {
        self.quality
            .lock()
            .expect("quality lock")
            .record(now_ms / 1000, sample);
    }

    /// An answered call on the trunk ended after `talk_ms`.
    pub fn call_ended(&self, now_ms: u64, talk_ms: u32) {
        if talk_ms < crate::quality::SHORT_CALL_MS {
            self.quality
                .lock()
                .expect("quality lock")
                .short_call(now_ms.saturating_sub(u64::from(talk_ms)) / 1000);
        }
    }

    /// The trunk's numbers over the last `window_s` seconds.
    pub fn window(&self, now_ms: u64, window_s: u64) -> Stats {
        self.quality
            .lock()
            .expect("quality lock")
            .window(now_ms / 1000, window_s)
    }

    /// The trunk's last hour, a point a minute.
    pub fn history(&self, now_ms: u64) -> Vec<Point> {
        self.quality
            .lock()
            .expect("quality lock")
            .history(now_ms / 1000)
    }

    /// An attempt starts on the trunk in second `now_s`.
    pub fn count_attempt(&self, now_s: u64) {
        let _ = self
            .cps
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(if v >> 24 == now_s {
                    v + 1
                } else {
                    (now_s << 24) | 1
                })
            });
    }
}

/// A trunk as the shards see it.
#[derive(Debug, Clone)]
pub struct TrunkView {
    /// As configured, with an operator's priority and weight applied.
    pub cfg: TrunkConfig,
    pub up: bool,
    /// Unix ms of the last up/down change.
    pub since_ms: u64,
    /// Failing real calls (quality rerouting): goes after the group's
    /// other trunks but for one plan in `probe_every`.
    pub degraded: bool,
    pub probe_every: u64,
    /// No new calls (an operator's drain).
    pub drained: bool,
    /// Why the trunk stands where it does, for the status page.
    pub why: String,
    pub live: Arc<TrunkLive>,
}

/// The routing view of the node at one moment. Replaced whole on reload
/// and on every trunk state change.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub policy: Policy,
    pub trunks: Vec<TrunkView>,
}

impl Snapshot {
    pub fn new(config: Arc<Config>, trunks: Vec<TrunkView>) -> Snapshot {
        Snapshot {
            policy: policy(&config),
            config,
            trunks,
        }
    }

    pub fn trusted(&self) -> &[IpNet] {
        &self.config.router.trusted_sources
    }

    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        self.trusted().iter().any(|n| n.contains(&ip))
    }

    /// A carrier or one of our trunks.
    pub fn is_known(&self, ip: std::net::IpAddr) -> bool {
        self.is_trusted(ip) || self.trunks.iter().any(|t| t.cfg.address.ip() == ip)
    }

    pub fn trunk(&self, name: &str) -> Option<&TrunkView> {
        self.trunks.iter().find(|t| t.cfg.name == name)
    }

    /// Trunks of a group in the order to try: healthy before down, then
    /// not degraded before degraded, then by priority; among equal
    /// priorities, shared in proportion to `weight` (the trunk furthest
    /// below its share goes first, and is counted). Drained trunks, trunks
    /// at `max_calls` calls, and trunks that started `max_cps` attempts in
    /// this second are skipped (the last counted). A degraded trunk keeps
    /// its place in one plan of `probe_every`; the other plans count a
    /// shifted call when it would have gone first.
    pub fn plan(&self, group: &str, now_ms: u64) -> Vec<TrunkRef> {
        let now_s = now_ms / 1000;
        let mut t: Vec<(&TrunkView, bool)> = self
            .trunks
            .iter()
            .filter(|t| t.cfg.group == group)
            .filter(|t| {
                if t.drained {
                    t.live.shifted.fetch_add(1, Ordering::Relaxed);
                }
                !t.drained
            })
            .filter(|t| {
                t.cfg.max_calls == 0 || t.live.active.load(Ordering::Relaxed) < t.cfg.max_calls
            })
            .filter(|t| {
                let free = t.cfg.max_cps == 0 || t.live.cps_used(now_s) < u64::from(t.cfg.max_cps);
                if !free {
                    metrics::counter!("dialmark_trunk_cps_skips_total", "trunk" => t.cfg.name.clone())
                        .increment(1);
                }
                free
            })
            .map(|t| {
                let demoted = t.degraded
                    && t.live.probe_seq.fetch_add(1, Ordering::Relaxed) % t.probe_every.max(1) != 0;
                (t, demoted)
            })
            .collect();
        // Down trunks are skipped while any trunk of the group is up.
        if t.iter().any(|(x, _)| x.up) {
            t.retain(|(x, _)| x.up);
        }
        let share = |t: &TrunkView| {
            (t.live.chosen.load(Ordering::Relaxed) as f64 + 1.0) / f64::from(t.cfg.weight.max(1))
        };
        let order = |a: &TrunkView, b: &TrunkView| {
            (!a.up, a.cfg.priority)
                .cmp(&(!b.up, b.cfg.priority))
                .then(share(a).total_cmp(&share(b)))
                .then_with(|| a.cfg.name.cmp(&b.cfg.name))
        };
        if let Some((would, _)) = t
            .iter()
            .min_by(|a, b| order(a.0, b.0))
            .filter(|(_, demoted)| *demoted)
        {
            // The calls quality rerouting moves: counted for the trunk event.
            if t.iter().any(|(_, d)| !d) {
                would.live.shifted.fetch_add(1, Ordering::Relaxed);
            }
        }
        t.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| order(a.0, b.0)));
        if let Some((first, _)) = t.first() {
            first.live.chosen.fetch_add(1, Ordering::Relaxed);
        }
        t.into_iter()
            .map(|(t, _)| TrunkRef {
                name: t.cfg.name.clone(),
                addr: t.cfg.address,
                transport: t.cfg.transport,
            })
            .collect()
    }
}

/// The call state machines' settings from the router config.
pub fn policy(c: &Config) -> Policy {
    let r = &c.router;
    Policy {
        provisional_timeout_ms: r.provisional_timeout_ms,
        ringing_timeout_ms: r.ringing_timeout_ms,
        ring_timeout_ms: r.ring_timeout_seconds * 1000,
        overall_timeout_ms: r.overall_timeout_seconds * 1000,
        max_call_ms: r.max_call_seconds * 1000,
        failover_codes: r.failover_codes.clone(),
        all_failed_code: r.all_trunks_failed_code,
        me: crate::call::Me {
            udp: r.advertised().to_string(),
            tcp: r.advertised_tcp().to_string(),
        },
    }
}

/// The node's memory budget for call state: what the shards hold now
/// (their own accounting of calls, dialogs and tombstones) against the
/// configured limit.
#[derive(Debug)]
pub struct Budget {
    pub limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Moves the shared count from `old` to `new` bytes for one holder.
    pub fn resize(&self, old: usize, new: usize) {
        if new >= old {
            self.used.fetch_add(new - old, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(old - new, Ordering::Relaxed);
        }
    }

    /// Whether `more` bytes still fit.
    pub fn fits(&self, more: usize) -> bool {
        self.used().saturating_add(more) <= self.limit
    }
}

/// Counts the HTTP side shows.
#[derive(Debug, Default)]
pub struct Counts {
    /// Calls being routed or talking (not tombstones).
    pub calls: AtomicU64,
    pub dialogs: AtomicU64,
    pub tombstones: AtomicU64,
}

/// State shared by every task of the node.
pub struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    pub budget: Budget,
    pub counts: Counts,
    /// SIGTERM: no new calls, OPTIONS answer 503.
    pub draining: AtomicBool,
    /// Per shard: it is behind (its queue delay is over the limit).
    pub overloaded: Vec<AtomicBool>,
    /// The last failovers (unix ms, trunk), for the status page.
    pub recent_failovers: Mutex<std::collections::VecDeque<(u64, String)>>,
    /// The last trunk events (state changes, quality, operators), for the
    /// status page.
    pub recent_events: Mutex<std::collections::VecDeque<TrunkEvent>>,
}

impl Shared {
    pub fn new(snapshot: Snapshot, shards: usize, budget: usize) -> Shared {
        Shared {
            snapshot: RwLock::new(Arc::new(snapshot)),
            budget: Budget::new(budget),
            counts: Counts::default(),
            draining: AtomicBool::new(false),
            overloaded: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            recent_failovers: Mutex::default(),
            recent_events: Mutex::default(),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("snapshot lock").clone()
    }

    pub fn publish(&self, s: Snapshot) {
        *self.snapshot.write().expect("snapshot lock") = Arc::new(s);
    }

    /// Whether the node takes no new calls now (OPTIONS answer 503).
    pub fn refusing(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
            || self.overloaded.iter().any(|o| o.load(Ordering::Relaxed))
            || !self.budget.fits(0)
    }

    /// A trunk event was recorded: the status page's list.
    pub fn trunk_event(&self, ev: &TrunkEvent) {
        push_recent(&self.recent_events, ev.clone());
    }

    /// A call failed over from `trunk`: the status page's list.
    pub fn failed_over(&self, now_ms: u64, trunk: &str) {
        push_recent(&self.recent_failovers, (now_ms, trunk.to_string()));
    }
}

/// Appends to one of the status page's lists, which keep the last 20.
fn push_recent<T>(list: &Mutex<std::collections::VecDeque<T>>, item: T) {
    let mut l = list.lock().expect("status lock");
    l.push_back(item);
    while l.len() > 20 {
        l.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(name: &str, priority: u32, weight: u32, max_cps: u32) -> TrunkView {
        TrunkView {
            cfg: TrunkConfig {
                name: name.into(),
                address: "127.0.0.1:5091".parse().unwrap(),
                group: "default".into(),
                priority,
                weight,
                max_calls: 0,
                max_cps,
                transport: Default::default(),
            },
            up: true,
            since_ms: 0,
            degraded: false,
            probe_every: 20,
            drained: false,
            why: String::new(),
            live: Arc::default(),
        }
    }

    fn snapshot(trunks: Vec<TrunkView>) -> Snapshot {
        Snapshot::new(Arc::new(Config::from_toml("").unwrap()), trunks)
    }

    #[test]
    fn equal_priorities_share_calls_by_weight() {
        let s = snapshot(vec![
            trunk("a", 1, 1, 0),
            trunk("b", 1, 3, 0),
            trunk("backup", 2, 10, 0),
        ]);
        let mut first = std::collections::HashMap::<String, u32>::new();
        for i in 0..400u64 {
            let plan = s.plan("default", 1_000_000 + i);
            assert_eq!(plan.len(), 3);
            assert_eq!(
                plan[2].name, "backup",
                "a lower priority stays last whatever its weight"
            );
            *first.entry(plan[0].name.clone()).or_default() += 1;
        }
        assert_eq!((first["a"], first["b"]), (100, 300), "1:3");
    }

    #[test]
    fn a_trunk_at_its_max_cps_is_skipped_until_the_next_second() {
        let s = snapshot(vec![trunk("a", 1, 1, 2), trunk("b", 2, 1, 0)]);
        let names = |p: Vec<TrunkRef>| p.into_iter().map(|t| t.name).collect::<Vec<_>>();
        let now = 5_000_500;
        assert_eq!(names(s.plan("default", now)), ["a", "b"]);
        s.trunks[0].live.count_attempt(now / 1000);
        s.trunks[0].live.count_attempt(now / 1000);
        assert_eq!(
            names(s.plan("default", now + 100)),
            ["b"],
            "two attempts this second"
        );
        assert_eq!(
            names(s.plan("default", now + 600)),
            ["a", "b"],
            "a new second"
        );
    }

    #[test]
    fn a_degraded_trunk_goes_last_but_keeps_a_probing_share() {
        let mut a = trunk("a", 1, 1, 0);
        a.degraded = true;
        a.probe_every = 4;
        let s = snapshot(vec![a, trunk("b", 2, 1, 0)]);
        let mut first_a = 0;
        for i in 0..100 {
            let plan = s.plan("default", 1_000_000 + i);
            assert_eq!(plan.len(), 2, "a degraded trunk is still tried");
            first_a += u32::from(plan[0].name == "a");
        }
        assert_eq!(first_a, 25, "one plan in four probes it");
        assert_eq!(
            s.trunks[0].live.shifted.load(Ordering::Relaxed),
            75,
            "the other calls were shifted to b"
        );
    }

    #[test]
    fn a_drained_trunk_gets_no_new_calls() {
        let mut a = trunk("a", 1, 1, 0);
        a.drained = true;
        let s = snapshot(vec![a, trunk("b", 2, 1, 0)]);
        let plan = s.plan("default", 1_000_000);
        assert_eq!(
            plan.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(s.trunks[0].live.shifted.load(Ordering::Relaxed), 1);
    }
}
