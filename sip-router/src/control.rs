//! The control task: owns the trunk table (config and health), sends the
//! OPTIONS probes, takes the shards' passive health reports, raises trunk
//! events and alerts, applies config reloads, and publishes each change
//! as a new [`Snapshot`] the shards and receivers read. Probe branches are
//! random and a probe's reply counts only from the trunk it went to, so a
//! spoofed reply can neither keep a dead trunk up nor take one down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dialmark_schemas::config::{Config, TrunkConfig};
use dialmark_schemas::rows::{TrunkCause, TrunkEvent, TrunkState};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::alert::Alerter;
use crate::dispatch::PROBE_BRANCH;
use crate::health::{Health, Transition};
use crate::shard::Sinks;
use crate::shared::{Shared, Snapshot, TrunkLive, TrunkView};
use crate::timer::Timers;
use crate::transport::Transport;

/// Messages to the control task.
#[derive(Debug)]
pub enum ControlMsg {
    /// A reply to one of our OPTIONS probes.
    ProbeReply {
        branch: String,
        status: u16,
        from: SocketAddr,
    },
    /// A real call got no provisional reply in time.
    TrunkTimeout {
        trunk: String,
    },
    /// A real call failed on the trunk in a way no packet loss explains.
    TrunkFailed {
        trunk: String,
        reason: String,
    },
    /// A config file re-read on SIGHUP (validated).
    Reload(Box<Config>),
    Shutdown,
}

/// A trunk at run time.
pub struct TrunkRuntime {
    pub cfg: TrunkConfig,
    pub health: Health,
    pub live: Arc<TrunkLive>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tick {
    Probe,
    ProbeTimeout(String),
}

pub struct Control {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    transport: Arc<Transport>,
    sinks: Sinks,
    alerter: Alerter,
    trunks: Vec<TrunkRuntime>,
    /// Probes in flight: branch → (trunk index, where it went).
    probes: HashMap<String, (usize, SocketAddr)>,
    probe_seq: u32,
    timers: Timers<Tick>,
    probe_armed: bool,
}

impl Control {
    /// Builds the trunk table and publishes the first snapshot: create it
    /// before the shards.
    pub fn new(
        cfg: Arc<Config>,
        shared: Arc<Shared>,
        transport: Arc<Transport>,
        sinks: Sinks,
    ) -> Control {
        let r = &cfg.router;
        let (trunks, _) = crate::reload::trunks(Vec::new(), &r.trunks, &r.probe, crate::now_ms());
        let alerter = Alerter::new(
            r.alert_webhook.clone(),
            Duration::from_secs(r.alert_hold_down_seconds),
        );
        let c = Control {
            cfg,
            shared,
            transport,
            sinks,
            alerter,
            trunks,
            probes: HashMap::new(),
            probe_seq: 0,
            timers: Timers::default(),
            probe_armed: false,
        };
        c.publish();
        c
    }

    fn publish(&self) {
        self.shared.publish(Snapshot::new(
            self.cfg.clone(),
            self.trunks.iter().map(view).collect(),
        ));
        for t in &self.trunks {
            metrics::gauge!("dialmark_trunk_up", "trunk" => t.cfg.name.clone())
                .set(if t.health.is_up() { 1.0 } else { 0.0 });
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<ControlMsg>) {
        self.arm_probes(crate::now_ms());
        loop {
            let sleep = self
                .timers
                .next_at()
                .map_or(Duration::from_secs(3600), |t| {
                    Duration::from_millis(t.saturating_sub(crate::now_ms()))
                });
            tokio::select! {
                m = rx.recv() => match m {
                    None | Some(ControlMsg::Shutdown) => break,
                    Some(m) => self.message(m),
                },
                _ = tokio::time::sleep(sleep) => {
                    let now = crate::now_ms();
                    while let Some((_, tick)) = self.timers.pop_due(now) {
                        self.tick(tick, now);
                    }
                }
            }
        }
    }

    fn message(&mut self, m: ControlMsg) {
        let now = crate::now_ms();
        match m {
            ControlMsg::ProbeReply {
                branch,
                status,
                from,
            } => {
                let Some(&(idx, to)) = self.probes.get(&branch) else {
                    return;
                };
                if from != to {
                    metrics::counter!("dialmark_sip_spoofed_responses_total").increment(1);
                    warn!(from = %from, expected = %to, "probe reply from another address; ignored");
                    return;
                }
                self.probes.remove(&branch);
                let reason = format!("OPTIONS answered {status}");
                self.result(idx, status != 503, TrunkCause::Probe, &reason, now);
            }
            ControlMsg::TrunkTimeout { trunk } => {
                let window = self.cfg.router.provisional_timeout_ms;
                if let Some(idx) = self.index(&trunk) {
                    let t = &mut self.trunks[idx];
                    let last_reply = t
                        .live
                        .last_reply_ms
                        .load(std::sync::atomic::Ordering::Relaxed);
                    if let Some(tr) = t.health.call_timed_out(window, now, last_reply) {
                        self.changed(idx, tr, now);
                    }
                }
            }
            ControlMsg::TrunkFailed { trunk, reason } => {
                if let Some(idx) = self.index(&trunk) {
                    self.result(idx, false, TrunkCause::Passive, &reason, now);
                }
            }
            ControlMsg::Reload(c) => self.reload(*c, now),
            ControlMsg::Shutdown => {}
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.trunks.iter().position(|t| t.cfg.name == name)
    }

    fn tick(&mut self, tick: Tick, now: u64) {
        match tick {
            Tick::Probe => {
                self.probe_armed = false;
                self.probe_all(now);
            }
            Tick::ProbeTimeout(branch) => {
                if let Some((idx, _)) = self.probes.remove(&branch) {
                    self.result(idx, false, TrunkCause::Probe, "OPTIONS timeout", now);
                }
            }
        }
    }

    /// Starts the probe ticks unless they run already or are off.
    fn arm_probes(&mut self, now: u64) {
        if !self.probe_armed
            && self.cfg.router.probe.interval_seconds > 0
            && !self.trunks.is_empty()
        {
            self.probe_armed = true;
            self.timers.arm(now, Tick::Probe);
        }
    }

    fn probe_all(&mut self, now: u64) {
        let timeout = self.cfg.router.probe.timeout_ms;
        let me = crate::shared::policy(&self.cfg).me;
        for idx in 0..self.trunks.len() {
            self.probe_seq = self.probe_seq.wrapping_add(1);
            let branch = format!("{PROBE_BRANCH}{}", uuid::Uuid::new_v4().simple());
            let to = self.trunks[idx].cfg.address;
            let bytes = crate::originate::options(&me, to, &branch, self.probe_seq);
            if self.transport.send_udp(to, &bytes) {
                self.probes.insert(branch.clone(), (idx, to));
                self.timers.arm(now + timeout, Tick::ProbeTimeout(branch));
            } else {
                self.result(idx, false, TrunkCause::Probe, "OPTIONS send failed", now);
            }
        }
        self.arm_probes(now + self.cfg.router.probe.interval_seconds * 1000);
    }

    fn result(&mut self, idx: usize, ok: bool, cause: TrunkCause, reason: &str, now: u64) {
        let t = &mut self.trunks[idx];
        let transition = if ok {
            t.health.success(cause, now)
        } else {
            let last_reply = t
                .live
                .last_reply_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            t.health.failure(cause, reason, now, last_reply)
        };
        if let Some(tr) = transition {
            self.changed(idx, tr, now);
        }
    }

    fn changed(&mut self, idx: usize, tr: Transition, now: u64) {
        let t = &self.trunks[idx].cfg;
        let up = tr.to == TrunkState::Up;
        if up {
            info!(trunk.name = %t.name, reason = %tr.reason, "trunk up");
        } else {
            warn!(trunk.name = %t.name, reason = %tr.reason, "trunk down; calls skip it");
        }
        metrics::counter!("dialmark_trunk_state_changes_total", "trunk" => t.name.clone())
            .increment(1);
        let _ = self.sinks.trunk_events.push(TrunkEvent {
            event_id: uuid::Uuid::new_v4(),
            ts: (now / 1000) as u32,
            trunk: t.name.clone(),
            trunk_group: t.group.clone(),
            state: tr.to,
            previous: tr.from,
            cause: tr.cause,
            reason: tr.reason.clone(),
        });
        self.alerter
            .trunk_changed(&t.name, &t.group, up, &tr.reason);
        self.publish();
    }

    /// Takes over a re-read config (see [`crate::reload`] for what waits
    /// for a restart). Calls in progress keep their trunk plan and timers.
    fn reload(&mut self, new: Config, now: u64) {
        let merged = crate::reload::merge(&self.cfg, new);
        for setting in &merged.needs_restart {
            warn!(
                setting,
                "config reload: changed, but takes effect only after a restart"
            );
        }
        let cfg = merged.config;
        let r = &cfg.router;
        let (table, diff) =
            crate::reload::trunks(std::mem::take(&mut self.trunks), &r.trunks, &r.probe, now);
        self.trunks = table;
        // Probe replies name trunks by index, which may have moved.
        self.probes.clear();
        if r.alert_webhook != self.cfg.router.alert_webhook
            || r.alert_hold_down_seconds != self.cfg.router.alert_hold_down_seconds
        {
            self.alerter = Alerter::new(
                r.alert_webhook.clone(),
                Duration::from_secs(r.alert_hold_down_seconds),
            );
        }
        self.cfg = Arc::new(cfg);
        self.arm_probes(now);
        self.publish();
        metrics::counter!("dialmark_config_reloads_total", "result" => "ok").increment(1);
        info!(
            trunks = self.trunks.len(),
            added = ?diff.added,
            removed = ?diff.removed,
            moved = ?diff.moved,
            "config reloaded"
        );
    }
}

fn view(t: &TrunkRuntime) -> TrunkView {
    TrunkView {
        cfg: t.cfg.clone(),
        up: t.health.is_up(),
        since_ms: t.health.since_ms,
        live: t.live.clone(),
    }
}
