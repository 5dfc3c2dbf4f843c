//! Config reload on SIGHUP: which settings a running node takes over and
//! which wait for a restart, and how the trunk table carries over. Pure:
//! the node applies what this returns.
//!
//! Taken over at once: trunks (a trunk keeps its health and quality
//! judgement when its name and address stay, its active-call count and an
//! operator's overrides when its name does), trusted sources, timers and
//! failover codes, probes, rate limits, alerting, headers, numbering.
//! Calls in progress keep the trunk plan they started with, so a removed
//! trunk only stops getting new calls. Sockets, Redis, ClickHouse, sinks,
//! the call webhook and the route cache are built once at start: a change
//! there is logged and ignored until the next restart.

use dialmark_schemas::config::{Config, ProbeConfig, TrunkConfig};

use std::sync::Arc;

use crate::control::TrunkRuntime;
use crate::health::Health;
use crate::manual::Overrides;
use crate::quality::Breaker;

/// The config to run with after a reload, and what it could not take.
#[derive(Debug)]
pub struct Merged {
    pub config: Config,
    /// Settings changed in the file that keep their running value.
    pub needs_restart: Vec<&'static str>,
}

/// `new` with every setting that needs a restart put back to `old`'s.
pub fn merge(old: &Config, mut new: Config) -> Merged {
    let mut needs_restart = Vec::new();
    let mut keep = Restore(&mut needs_restart);
    keep.field("redis", &old.redis, &mut new.redis);
    keep.field("clickhouse", &old.clickhouse, &mut new.clickhouse);
    keep.field("sink", &old.sink, &mut new.sink);
    let (o, n) = (&old.router, &mut new.router);
    keep.field("router.udp", &o.udp, &mut n.udp);
    keep.field("router.tcp", &o.tcp, &mut n.tcp);
    keep.field(
        "router.tcp_message_timeout_ms",
        &o.tcp_message_timeout_ms,
        &mut n.tcp_message_timeout_ms,
    );
    // Dialogs in progress route in-dialog requests to the advertised address.
    keep.field("router.advertise", &o.advertise, &mut n.advertise);
    keep.field("router.http", &o.http, &mut n.http);
    keep.field(
        "router.route_cache_ms",
        &o.route_cache_ms,
        &mut n.route_cache_ms,
    );
    keep.field("router.call_webhook", &o.call_webhook, &mut n.call_webhook);
    keep.field(
        "tracker.attribution_window_seconds",
        &old.tracker.attribution_window_seconds,
        &mut new.tracker.attribution_window_seconds,
    );
    Merged {
        config: new,
        needs_restart,
    }
}

/// Puts a changed restart-only setting back and names it.
struct Restore<'a>(&'a mut Vec<&'static str>);

impl Restore<'_> {
    fn field<T: PartialEq + Clone>(&mut self, name: &'static str, old: &T, new: &mut T) {
        if old != new {
            *new = old.clone();
            self.0.push(name);
        }
    }
}

/// What changed in the trunk table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TrunkDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same name, new address: health starts afresh.
    pub moved: Vec<String>,
}

/// The new trunk table: a trunk with the same name and address keeps its
/// health and live counters (its other settings are the new ones); a
/// moved trunk keeps its counters but starts up with fresh health; a new
/// trunk starts with both fresh.
pub fn trunks(
    old: Vec<TrunkRuntime>,
    new: &[TrunkConfig],
    probe: &ProbeConfig,
    now_ms: u64,
) -> (Vec<TrunkRuntime>, TrunkDiff) {
    let mut diff = TrunkDiff::default();
    let mut old: Vec<Option<TrunkRuntime>> = old.into_iter().map(Some).collect();
    let table = new
        .iter()
        .map(|cfg| {
            let prev = old
                .iter_mut()
                .find(|t| t.as_ref().is_some_and(|t| t.cfg.name == cfg.name))
                .and_then(Option::take);
            let fresh = || Health::new(probe.down_after, probe.up_after, now_ms);
            // An operator's overrides stay with the name, health and the
            // quality judgement with the address, and the live counters
            // (calls in progress) with the name.
            let (health, breaker, manual, live) = match prev {
                Some(p) if p.cfg.address == cfg.address => {
                    let mut h = p.health;
                    h.retune(probe.down_after, probe.up_after);
                    (h, p.breaker, p.manual, p.live)
                }
                Some(p) => {
                    diff.moved.push(cfg.name.clone());
                    (fresh(), Breaker::default(), p.manual, p.live)
                }
                None => {
                    diff.added.push(cfg.name.clone());
                    (
                        fresh(),
                        Breaker::default(),
                        Overrides::default(),
                        Arc::default(),
                    )
                }
            };
            TrunkRuntime {
                cfg: cfg.clone(),
                health,
                breaker,
                manual,
                live,
            }
        })
        .collect();
    diff.removed = old.into_iter().flatten().map(|t| t.cfg.name).collect();
    (table, diff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::TrunkLive;
    use dialmark_schemas::rows::TrunkCause;

    fn config(extra: &str) -> Config {
        Config::from_toml(extra).unwrap()
    }

    fn trunk(name: &str, port: u16) -> TrunkConfig {
        TrunkConfig {
            name: name.into(),
            address: format!("127.0.0.1:{port}").parse().unwrap(),
            group: "default".into(),
            priority: 0,
            weight: 1,
            max_calls: 0,
            max_cps: 0,
            transport: Default::default(),
        }
    }

    #[test]
    fn live_settings_are_taken_and_the_rest_waits_for_a_restart() {
        let old = config("[router]\nudp = \"127.0.0.1:5060\"\nprovisional_timeout_ms = 2000\n");
        let new = config(
            "[router]\nudp = \"127.0.0.1:5070\"\nprovisional_timeout_ms = 900\n\
             [sink]\nflush_ms = 10\n",
        );
        let m = merge(&old, new);
        assert_eq!(m.needs_restart, vec!["sink", "router.udp"]);
        assert_eq!(m.config.router.udp, old.router.udp);
        assert_eq!(m.config.sink, old.sink);
        assert_eq!(m.config.router.provisional_timeout_ms, 900);
        let same = merge(&old, old.clone());
        assert!(same.needs_restart.is_empty());
    }

    #[test]
    fn trunks_keep_health_by_name_and_address() {
        let probe = ProbeConfig::default();
        let live = |n: u32| {
            let l = TrunkLive::default();
            l.active.store(n, std::sync::atomic::Ordering::Relaxed);
            Arc::new(l)
        };
        let mut a = TrunkRuntime {
            cfg: trunk("a", 5001),
            health: Health::new(1, 1, 0),
            breaker: Breaker::default(),
            manual: Overrides::default(),
            live: live(3),
        };
        a.health.failure(TrunkCause::Probe, "timeout", 5, 0);
        assert!(!a.health.is_up());
        a.manual.apply(crate::manual::Command::Drain, "anna");
        let b = TrunkRuntime {
            cfg: trunk("b", 5002),
            health: Health::new(1, 1, 0),
            breaker: Breaker::default(),
            manual: Overrides::default(),
            live: live(1),
        };
        let gone = TrunkRuntime {
            cfg: trunk("gone", 5003),
            health: Health::new(1, 1, 0),
            breaker: Breaker::default(),
            manual: Overrides::default(),
            live: live(0),
        };
        let mut a2 = trunk("a", 5001);
        a2.priority = 7;
        let new = [a2, trunk("b", 5012), trunk("c", 5004)];
        let (table, diff) = trunks(vec![a, b, gone], &new, &probe, 10);
        assert_eq!(
            diff,
            TrunkDiff {
                added: vec!["c".into()],
                removed: vec!["gone".into()],
                moved: vec!["b".into()],
            }
        );
        let names: Vec<_> = table.iter().map(|t| t.cfg.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        // a: still down (health kept), calls kept, new priority taken.
        assert!(!table[0].health.is_up());
        let active = |i: usize| {
            table[i]
                .live
                .active
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!((active(0), table[0].cfg.priority), (3, 7));
        assert!(
            table[0].manual.drained,
            "an operator's drain outlives a reload"
        );
        // b moved: fresh health, its calls in progress still counted.
        assert!(table[1].health.is_up());
        assert_eq!(active(1), 1);
        assert_eq!((active(2), table[2].health.since_ms), (0, 10));
    }
}
