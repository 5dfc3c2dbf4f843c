//! The control task: owns the trunk table (config, health, quality
//! breaker, operator overrides), sends the OPTIONS probes, takes the
//! shards' passive health reports, judges each trunk's call quality every
//! few seconds, applies operators' commands and config reloads, raises
//! trunk events and alerts, and publishes each change as a new
//! [`Snapshot`] the shards and receivers read. Probe branches are
//! random and a probe's reply counts only from the trunk it went to, so a
//! spoofed reply can neither keep a dead trunk up nor take one down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use dialmark_schemas::config::{Config, TrunkConfig};
use dialmark_schemas::rows::{TrunkCause, TrunkEvent, TrunkState};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::alert::{Alert, Alerter};
use crate::dispatch::PROBE_BRANCH;
use crate::handover::{DegradedTrunk, DownTrunk, SavedTrunks};
use crate::health::{Health, Transition};
use crate::manual::{Command, Overrides};
use crate::quality::{Breaker, Change, Rule};
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
    /// An operator's command on a trunk; the reply says what it is now.
    Manual {
        trunk: String,
        command: Command,
        actor: String,
        reply: oneshot::Sender<Result<String, ManualError>>,
    },
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManualError {
    #[error("no trunk named {0:?}")]
    NoSuchTrunk(String),
}

/// How often trunk quality is judged.
pub const QUALITY_TICK_MS: u64 = 2_000;

/// A trunk at run time.
pub struct TrunkRuntime {
    pub cfg: TrunkConfig,
    pub health: Health,
    pub breaker: Breaker,
    pub manual: Overrides,
    pub live: Arc<TrunkLive>,
}

impl TrunkRuntime {
    fn up(&self) -> bool {
        self.manual.forced.unwrap_or(self.health.is_up())
    }

    /// The state routing sees.
    fn state(&self) -> TrunkState {
        if self.manual.drained {
            TrunkState::Drained
        } else if !self.up() {
            TrunkState::Down
        } else if self.breaker.is_degraded() {
            TrunkState::Degraded
        } else {
            TrunkState::Up
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tick {
    Probe,
    ProbeTimeout(String),
    Quality,
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
    /// Builds the trunk table (with the state a pair's last active left:
    /// operators' overrides, trunks down or degraded and their alerts) and publishes
    /// the first snapshot: create it before the shards.
    pub fn new(
        cfg: Arc<Config>,
        shared: Arc<Shared>,
        transport: Arc<Transport>,
        sinks: Sinks,
        saved: SavedTrunks,
    ) -> Control {
        let r = &cfg.router;
        let (mut trunks, _) =
            crate::reload::trunks(Vec::new(), &r.trunks, &r.probe, crate::now_ms());
        let alerter = Alerter::new(
            r.alert_webhook.clone(),
            Duration::from_secs(r.alert_hold_down_seconds),
        );
        for t in &mut trunks {
            if let Some(o) = saved.overrides.get(&t.cfg.name) {
                info!(trunk.name = %t.cfg.name, overrides = %o.describe(), "trunk overrides taken over");
                t.manual = o.clone();
            }
            if let Some(d) = saved.down.get(&t.cfg.name) {
                info!(trunk.name = %t.cfg.name, reason = %d.reason, "trunk down as the pair's last active left it; its alert is firing already");
                t.health = Health::inherited_down(r.probe.down_after, r.probe.up_after, d.since_ms);
                alerter.assume_firing(Alert::Down, &t.cfg.name);
            }
            if let Some(d) = saved.degraded.get(&t.cfg.name) {
                info!(trunk.name = %t.cfg.name, reason = %d.reason, "trunk degraded as the pair's last active left it; its alert is firing already");
                t.breaker.inherit(d.since_ms / 1000, &d.metric, d.limit);
                alerter.assume_firing(Alert::Degraded, &t.cfg.name);
            }
        }
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
        let q = &self.cfg.router.quality;
        self.shared.publish(Snapshot::new(
            self.cfg.clone(),
            self.trunks
                .iter()
                .map(|t| view(t, q.for_group(&t.cfg.group).probe_percent))
                .collect(),
        ));
        for t in &self.trunks {
            let state = t.state();
            let name = t.cfg.name.clone();
            let flag = |b: bool| if b { 1.0 } else { 0.0 };
            metrics::gauge!("dialmark_trunk_up", "trunk" => name.clone()).set(flag(t.up()));
            metrics::gauge!("dialmark_trunk_degraded", "trunk" => name.clone())
                .set(flag(state == TrunkState::Degraded));
            metrics::gauge!("dialmark_trunk_drained", "trunk" => name)
                .set(flag(state == TrunkState::Drained));
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<ControlMsg>) {
        let now = crate::now_ms();
        self.arm_probes(now);
        self.timers.arm(now + QUALITY_TICK_MS, Tick::Quality);
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
            ControlMsg::Manual {
                trunk,
                command,
                actor,
                reply,
            } => {
                let _ = reply.send(self.manual(&trunk, command, &actor, now));
            }
            ControlMsg::Shutdown => {}
        }
    }

    /// Records a trunk event: ClickHouse, and the status page's list.
    fn trunk_event(&self, ev: TrunkEvent) {
        self.shared.trunk_event(&ev);
        let _ = self.sinks.trunk_events.push(ev);
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
            Tick::Quality => {
                self.judge_quality(now);
                self.timers.arm(now + QUALITY_TICK_MS, Tick::Quality);
            }
        }
    }

    /// Judges every trunk's recent calls; degrades or restores.
    fn judge_quality(&mut self, now: u64) {
        for idx in 0..self.trunks.len() {
            let t = &mut self.trunks[idx];
            let q = self.cfg.router.quality.for_group(&t.cfg.group);
            let rule = Rule {
                enabled: self.cfg.router.quality.enabled && q.enabled,
                window_s: q.window_seconds,
                min_attempts: q.min_attempts,
                ner_floor: q.ner_floor,
                ner_drop: q.ner_drop,
                pdd_p95_ceiling_ms: q.pdd_p95_ceiling_ms,
                short_share_rise: q.short_share_rise,
                recovery_s: q.recovery_seconds,
            };
            let change = {
                let quality = t.live.quality.lock().expect("quality lock");
                t.breaker.evaluate(&quality, now / 1000, &rule)
            };
            if let Some(c) = change {
                self.quality_changed(idx, c, now);
            }
        }
    }

    fn quality_changed(&mut self, idx: usize, c: Change, now: u64) {
        let t = &self.trunks[idx];
        let (name, group) = (t.cfg.name.clone(), t.cfg.group.clone());
        let shifted = if c.degraded {
            t.live.shifted.store(0, Ordering::Relaxed);
            0
        } else {
            t.live.shifted.swap(0, Ordering::Relaxed)
        };
        let (state, previous) = if c.degraded {
            (t.state(), TrunkState::Up)
        } else {
            (t.state(), TrunkState::Degraded)
        };
        let detail = format!(
            "{}: {} {} against {}{}",
            c.reason,
            c.metric,
            show(c.metric, c.value),
            show(c.metric, c.limit),
            if c.degraded {
                String::new()
            } else {
                format!("; {shifted} calls went to other trunks first meanwhile")
            }
        );
        if c.degraded {
            warn!(trunk.name = %name, reason = %detail, "trunk degraded: new calls try the group's other trunks first");
        } else {
            info!(trunk.name = %name, reason = %detail, "trunk quality recovered");
        }
        metrics::counter!("dialmark_trunk_quality_changes_total", "trunk" => name.clone(), "to" => if c.degraded { "degraded" } else { "restored" })
            .increment(1);
        self.trunk_event(TrunkEvent {
            metric: c.metric.to_string(),
            value: c.value,
            baseline: c.limit,
            shifted_calls: shifted,
            ..TrunkEvent::new(
                (now / 1000) as u32,
                &name,
                &group,
                state,
                previous,
                TrunkCause::Quality,
                detail.clone(),
            )
        });
        self.alerter
            .trunk_changed(Alert::Degraded, &name, &group, c.degraded, &detail);
        if let Some(h) = &self.sinks.handover {
            let degraded = c.degraded.then(|| DegradedTrunk {
                since_ms: now,
                metric: c.metric.to_string(),
                limit: c.limit,
                reason: detail.clone(),
            });
            h.trunk_degraded(&name, degraded);
        }
        self.publish();
    }

    /// An operator's command: applied, audited, published.
    fn manual(
        &mut self,
        trunk: &str,
        command: Command,
        actor: &str,
        now: u64,
    ) -> Result<String, ManualError> {
        let idx = self
            .index(trunk)
            .ok_or_else(|| ManualError::NoSuchTrunk(trunk.to_string()))?;
        let t = &mut self.trunks[idx];
        let previous = t.state();
        let was_drained = t.manual.drained;
        if t.manual.apply(command, actor) {
            let state = t.state();
            let shifted = if was_drained && !t.manual.drained {
                t.live.shifted.swap(0, Ordering::Relaxed)
            } else {
                0
            };
            let reason = format!("{command} by {actor}");
            warn!(trunk.name = %t.cfg.name, actor, command = %command, ?previous, ?state, "trunk command");
            metrics::counter!("dialmark_trunk_commands_total", "trunk" => t.cfg.name.clone(), "command" => command.to_string())
                .increment(1);
            let event = TrunkEvent {
                shifted_calls: shifted,
                actor: actor.to_string(),
                ..TrunkEvent::new(
                    (now / 1000) as u32,
                    &t.cfg.name,
                    &t.cfg.group,
                    state,
                    previous,
                    TrunkCause::Manual,
                    reason,
                )
            };
            self.trunk_event(event);
            self.publish();
            if let Some(h) = &self.sinks.handover {
                let t = &self.trunks[idx];
                h.trunk_overrides(&t.cfg.name, &t.manual);
            }
        }
        let t = &self.trunks[idx];
        Ok(format!(
            "{}: {}{}",
            t.cfg.name,
            format!("{:?}", t.state()).to_lowercase(),
            match t.manual.describe() {
                d if d.is_empty() => String::new(),
                d => format!(" ({d})"),
            }
        ))
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
        self.trunk_event(TrunkEvent::new(
            (now / 1000) as u32,
            &t.name,
            &t.group,
            tr.to,
            tr.from,
            tr.cause,
            tr.reason.clone(),
        ));
        self.alerter
            .trunk_changed(Alert::Down, &t.name, &t.group, !up, &tr.reason);
        if let Some(h) = &self.sinks.handover {
            let down = (!up).then(|| DownTrunk {
                since_ms: now,
                reason: tr.reason.clone(),
            });
            h.trunk_down(&t.name, down);
        }
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

/// A metric's value in its unit.
fn show(metric: &str, v: f64) -> String {
    match metric {
        "ner" | "short_share" => format!("{:.0} %", v * 100.0),
        _ => format!("{v:.0} ms"),
    }
}

fn view(t: &TrunkRuntime, probe_percent: u32) -> TrunkView {
    let mut cfg = t.cfg.clone();
    cfg.priority = t.manual.priority.unwrap_or(cfg.priority);
    cfg.weight = t.manual.weight.unwrap_or(cfg.weight);
    let why = match (t.state(), t.manual.describe()) {
        (TrunkState::Degraded, m) if m.is_empty() => {
            format!("degraded: gets {probe_percent} % of its calls until its quality recovers")
        }
        (TrunkState::Degraded, m) => format!("degraded; {m}"),
        (_, m) => m,
    };
    TrunkView {
        cfg,
        up: t.up(),
        since_ms: t.health.since_ms,
        degraded: t.breaker.is_degraded(),
        probe_every: u64::from(100 / probe_percent.max(1)),
        drained: t.manual.drained,
        why,
        live: t.live.clone(),
    }
}
