//! What the shards, the receivers, the control task and the HTTP side
//! share: the routing [`Snapshot`] (config-derived policy and the trunk
//! table with up/down state), published whole by the control task and
//! read without waiting; each trunk's live counters (atomics kept across
//! reloads); the node-wide memory [`Budget`]; and the drain and overload
//! flags.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use dialmark_schemas::config::{Config, TrunkConfig};
use ipnet::IpNet;

use crate::call::{Policy, TrunkRef};

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
    pub cfg: TrunkConfig,
    pub up: bool,
    /// Unix ms of the last up/down change.
    pub since_ms: u64,
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

    /// Trunks of a group in the order to try: healthy before down, then by
    /// priority; among equal priorities, shared in proportion to `weight`
    /// (the trunk furthest below its share goes first, and is counted).
    /// Trunks at `max_calls` calls, or that started `max_cps` attempts in
    /// this second, are skipped (and the skips counted).
    pub fn plan(&self, group: &str, now_ms: u64) -> Vec<TrunkRef> {
        let now_s = now_ms / 1000;
        let mut t: Vec<&TrunkView> = self
            .trunks
            .iter()
            .filter(|t| t.cfg.group == group)
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
            .collect();
        // Down trunks are skipped while any trunk of the group is up.
        if t.iter().any(|x| x.up) {
            t.retain(|x| x.up);
        }
        let share = |t: &TrunkView| {
            (t.live.chosen.load(Ordering::Relaxed) as f64 + 1.0) / f64::from(t.cfg.weight.max(1))
        };
        t.sort_by(|a, b| {
            (!a.up, a.cfg.priority)
                .cmp(&(!b.up, b.cfg.priority))
                .then(share(a).total_cmp(&share(b)))
                .then_with(|| a.cfg.name.cmp(&b.cfg.name))
        });
        if let Some(first) = t.first() {
            first.live.chosen.fetch_add(1, Ordering::Relaxed);
        }
        t.into_iter()
            .map(|t| TrunkRef {
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
    /// (unix ms, trunk, answered, failover) of recent attempts, for the
    /// status page's 15-minute windows.
    pub recent: Mutex<std::collections::VecDeque<(u64, String, bool, bool)>>,
    pub recent_failovers: Mutex<std::collections::VecDeque<(u64, String)>>,
}

impl Shared {
    pub fn new(snapshot: Snapshot, shards: usize, budget: usize) -> Shared {
        Shared {
            snapshot: RwLock::new(Arc::new(snapshot)),
            budget: Budget::new(budget),
            counts: Counts::default(),
            draining: AtomicBool::new(false),
            overloaded: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            recent: Mutex::default(),
            recent_failovers: Mutex::default(),
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

    /// An attempt ended: the status page's windows.
    pub fn attempt_done(&self, now_ms: u64, trunk: &str, answered: bool, failover: bool) {
        let mut recent = self.recent.lock().expect("status lock");
        recent.push_back((now_ms, trunk.to_string(), answered, failover));
        while recent
            .front()
            .is_some_and(|(t, ..)| now_ms.saturating_sub(*t) > 15 * 60 * 1000)
            || recent.len() > 100_000
        {
            recent.pop_front();
        }
        drop(recent);
        if failover {
            let mut f = self.recent_failovers.lock().expect("status lock");
            f.push_back((now_ms, trunk.to_string()));
            while f.len() > 20 {
                f.pop_front();
            }
        }
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
}
