//! The routing node's I/O loop: one task owns the call table, the trunk
//! health table and the timer heap; sockets, Redis lookups and probes feed
//! it [`Input`]s. It classifies each message (new INVITE, retransmission,
//! CANCEL, in-dialog request, response), applies the inbound policy
//! (trusted carriers, Max-Forwards, loops, number status), drives the
//! [`Call`] state machines and executes their actions: sends, timers, rows.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialmark_schemas::config::{Config, RateLimitConfig, RouterConfig, TrunkConfig};
use dialmark_schemas::layout::RouteRecord;
use dialmark_schemas::number::NumberingPlan;
use dialmark_schemas::rows::{
    Call as CallRow, CallAttempt, Disposition, NumberStatus, TrunkCause, TrunkEvent, TrunkState,
};
use dialmark_schemas::sink::Sink;
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn};

use crate::alert::Alerter;
use crate::call::{Action, Call, Event, Policy, Setup, Source, Timer, TrunkRef};
use crate::directory::{self, Directory, Lookup};
use crate::health::{Health, Transition};
use crate::ratelimit::{Limiter, Verdict};
use crate::wire::{self, Forward, Message};

/// Calls held at most; new INVITEs beyond get 503.
pub const MAX_CALLS: usize = 50_000;
/// After the last call of a drain ends, the node serves this long more for
/// the final BYE's reply.
pub const DRAIN_TAIL: Duration = Duration::from_secs(1);
/// TCP connections held at most.
pub const MAX_TCP: usize = 1_024;
/// A TCP connection silent this long is closed (slowloris).
pub const TCP_IDLE: Duration = Duration::from_secs(60);

/// Where a message came from, and how to answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub addr: SocketAddr,
    /// TCP connection id; `None` for UDP.
    pub tcp: Option<u64>,
}

/// Inputs of the loop.
pub enum Input {
    Packet {
        bytes: Vec<u8>,
        from: Peer,
    },
    Routed {
        branch: String,
        lookup: Box<Lookup>,
        source: Box<Source>,
    },
    TcpOpen {
        id: u64,
        tx: mpsc::Sender<Vec<u8>>,
    },
    TcpClosed {
        id: u64,
    },
    /// A config file re-read on SIGHUP (validated).
    Reload(Box<Config>),
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TimerKey {
    Call(u64, Timer),
    ProbeTick,
    ProbeTimeout(String),
}

/// A trunk at run time.
pub struct TrunkRuntime {
    pub cfg: TrunkConfig,
    pub health: Health,
    pub active: u32,
}

/// What `/status` and `/metrics` read.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TrunkStatus {
    pub name: String,
    pub group: String,
    pub address: String,
    pub up: bool,
    pub since_unix: u64,
    pub active_calls: u32,
    pub attempts_15m: u64,
    pub answered_15m: u64,
    pub failovers_15m: u64,
}

/// Shared, read-mostly view of the node for the HTTP side.
#[derive(Default)]
pub struct Status {
    pub trunks: Mutex<Vec<TrunkStatus>>,
    pub active_calls: std::sync::atomic::AtomicU64,
    /// (unix ms, trunk, answered, failover) of recent attempts, for ASR / failover windows.
    pub recent: Mutex<std::collections::VecDeque<(u64, String, bool, bool)>>,
    pub recent_failovers: Mutex<std::collections::VecDeque<(u64, String, u8)>>,
}

/// Row sinks of the router.
#[derive(Clone)]
pub struct Sinks {
    pub calls: Sink<CallRow>,
    pub attempts: Sink<CallAttempt>,
    pub trunk_events: Sink<TrunkEvent>,
}

struct Pending {
    bytes: Vec<u8>,
    carrier: Peer,
    received_ms: u64,
    number: String,
    caller: String,
    canceled: bool,
}

struct Entry {
    call: Call,
    carrier: Peer,
    inv_branch: String,
    our_branches: Vec<String>,
    call_id: String,
}

/// The node: owned by the loop task.
pub struct Node {
    cfg: Arc<Config>,
    policy: Policy,
    plan: NumberingPlan,
    trusted: Vec<IpNet>,
    udp: Arc<UdpSocket>,
    tcp_conns: HashMap<u64, mpsc::Sender<Vec<u8>>>,
    directory: Directory,
    sinks: Sinks,
    alerter: Alerter,
    status: Arc<Status>,
    inputs: mpsc::Sender<Input>,
    trunks: Vec<TrunkRuntime>,
    calls: HashMap<u64, Entry>,
    next_key: u64,
    by_inv_branch: HashMap<String, u64>,
    by_our_branch: HashMap<String, (u64, u8)>,
    by_call_id: HashMap<String, u64>,
    pending: HashMap<String, Pending>,
    probes: HashMap<String, (usize, u64)>,
    probe_seq: u64,
    timers: BinaryHeap<Reverse<(u64, u64, usize)>>,
    timer_slots: Vec<Option<TimerKey>>,
    free_slots: Vec<usize>,
    timer_seq: u64,
    /// A `ProbeTick` timer is pending.
    probe_armed: bool,
    draining: bool,
    limit_untrusted: Limiter,
    limit_trusted: Limiter,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Arc<Config>,
        udp: Arc<UdpSocket>,
        directory: Directory,
        sinks: Sinks,
        alerter: Alerter,
        status: Arc<Status>,
        inputs: mpsc::Sender<Input>,
    ) -> Node {
        let r = &cfg.router;
        // The table a reload would build from nothing: every trunk new and up.
        let (trunks, _) = crate::reload::trunks(Vec::new(), &r.trunks, &r.probe, now_ms());
        let (limit_untrusted, limit_trusted) = limiters(&r.rate_limit);
        Node {
            policy: policy(r),
            plan: cfg.numbering.clone(),
            trusted: r.trusted_sources.clone(),
            udp,
            tcp_conns: HashMap::new(),
            directory,
            sinks,
            alerter,
            status,
            inputs,
            trunks,
            calls: HashMap::new(),
            next_key: 1,
            by_inv_branch: HashMap::new(),
            by_our_branch: HashMap::new(),
            by_call_id: HashMap::new(),
            pending: HashMap::new(),
            probes: HashMap::new(),
            probe_seq: 0,
            timers: BinaryHeap::new(),
            timer_slots: Vec::new(),
            free_slots: Vec::new(),
            timer_seq: 0,
            probe_armed: false,
            draining: false,
            limit_untrusted,
            limit_trusted,
            cfg,
        }
    }

    /// Takes over a re-read config (see [`crate::reload`] for what waits
    /// for a restart). Calls in progress keep their trunk plan and timers.
    fn reload(&mut self, new: Config) {
        let now = now_ms();
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
        // Probe branches name trunks by index, which may have moved.
        self.probes.clear();
        self.policy = policy(r);
        self.plan = cfg.numbering.clone();
        self.trusted = r.trusted_sources.clone();
        if r.rate_limit != self.cfg.router.rate_limit {
            (self.limit_untrusted, self.limit_trusted) = limiters(&r.rate_limit);
        }
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
        self.publish_status();
        metrics::counter!("dialmark_config_reloads_total", "result" => "ok").increment(1);
        info!(
            trunks = self.trunks.len(),
            added = ?diff.added,
            removed = ?diff.removed,
            moved = ?diff.moved,
            calls = self.calls.len(),
            "config reloaded"
        );
    }

    /// Starts the probe ticks unless they run already or are off.
    fn arm_probes(&mut self, now: u64) {
        if !self.probe_armed
            && self.cfg.router.probe.interval_seconds > 0
            && !self.trunks.is_empty()
        {
            self.probe_armed = true;
            self.arm(TimerKey::ProbeTick, now);
        }
    }

    /// Runs until shutdown; on SIGTERM stops taking new calls and lets
    /// calls in progress end (bounded by `drain`).
    pub async fn run(mut self, mut rx: mpsc::Receiver<Input>, drain: Duration) {
        self.arm_probes(now_ms());
        self.publish_status();
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            let next = self.timers.peek().map(|Reverse((at, _, _))| *at);
            let sleep = match next {
                Some(at) => Duration::from_millis(at.saturating_sub(now_ms())),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                input = rx.recv() => match input {
                    Some(Input::Shutdown) | None => {
                        if self.calls.is_empty() && self.pending.is_empty() {
                            break;
                        }
                        self.draining = true;
                        drain_deadline = Some(tokio::time::Instant::now() + drain);
                        info!(calls = self.calls.len(), "draining: no new calls, waiting for calls in progress");
                    }
                    Some(i) => self.input(i),
                },
                _ = tokio::time::sleep(sleep) => self.fire_timers(),
                _ = async { match drain_deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                    if self.drained() {
                        info!("drained: every call has ended");
                    } else {
                        warn!(calls = self.calls.len(), "drain limit reached; stopping with calls in progress");
                    }
                    break;
                }
            }
            if self.drained() {
                // The last BYE was forwarded: serve a moment longer so its
                // reply (and any retransmission) still reaches the caller.
                let tail = tokio::time::Instant::now() + DRAIN_TAIL;
                if drain_deadline.is_none_or(|d| d > tail) {
                    drain_deadline = Some(tail);
                }
            }
        }
        info!("routing loop stopped");
    }

    /// Draining and no call left in progress.
    fn drained(&self) -> bool {
        self.draining
            && self.pending.is_empty()
            && self.calls.values().all(|e| e.call.is_finished())
    }

    fn input(&mut self, i: Input) {
        match i {
            Input::Packet { bytes, from } => self.packet(bytes, from),
            Input::Routed {
                branch,
                lookup,
                source,
            } => self.routed(&branch, *lookup, *source),
            Input::TcpOpen { id, tx } => {
                self.tcp_conns.insert(id, tx);
            }
            Input::TcpClosed { id } => {
                self.tcp_conns.remove(&id);
            }
            Input::Reload(config) => self.reload(*config),
            Input::Shutdown => {}
        }
    }

    fn send(&self, to: Peer, bytes: Vec<u8>) {
        match to.tcp {
            Some(id) => {
                if let Some(tx) = self.tcp_conns.get(&id) {
                    let _ = tx.try_send(bytes);
                }
            }
            None => {
                if let Err(e) = self.udp.try_send_to(&bytes, to.addr) {
                    debug!(to = %to.addr, cause = %e, "udp send failed");
                }
            }
        }
    }

    fn send_udp(&self, addr: SocketAddr, bytes: &[u8]) -> bool {
        self.udp.try_send_to(bytes, addr).is_ok()
    }

    fn arm(&mut self, key: TimerKey, at_ms: u64) {
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.timer_slots[s] = Some(key);
                s
            }
            None => {
                self.timer_slots.push(Some(key));
                self.timer_slots.len() - 1
            }
        };
        self.timer_seq += 1;
        self.timers.push(Reverse((at_ms, self.timer_seq, slot)));
    }

    fn fire_timers(&mut self) {
        let now = now_ms();
        while let Some(Reverse((at, _, slot))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let key = self.timer_slots[slot].take();
            self.free_slots.push(slot);
            match key {
                Some(TimerKey::Call(k, t)) => self.drive(k, Event::Timer(t)),
                Some(TimerKey::ProbeTick) => {
                    self.probe_armed = false;
                    self.probe_all();
                }
                Some(TimerKey::ProbeTimeout(branch)) => {
                    if let Some((idx, _)) = self.probes.remove(&branch) {
                        self.trunk_result(idx, false, TrunkCause::Probe, "OPTIONS timeout");
                    }
                }
                None => {}
            }
        }
    }

    fn is_trusted(&self, addr: &SocketAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&addr.ip()))
    }

    fn packet(&mut self, bytes: Vec<u8>, from: Peer) {
        // Floods are dropped before any parsing. Carriers and our trunks
        // have their own (by default unlimited) budget.
        let known = self.is_trusted(&from.addr)
            || self
                .trunks
                .iter()
                .any(|t| t.cfg.address.ip() == from.addr.ip());
        let limiter = if known {
            &mut self.limit_trusted
        } else {
            &mut self.limit_untrusted
        };
        match limiter.check(from.addr.ip(), now_ms()) {
            Verdict::Pass => {}
            Verdict::Ban => {
                warn!(source = %from.addr.ip(), "message flood: source banned");
                metrics::counter!("dialmark_flood_bans_total").increment(1);
                return;
            }
            Verdict::Drop => {
                metrics::counter!("dialmark_flood_dropped_total").increment(1);
                return;
            }
        }
        let msg = match wire::parse(&bytes) {
            Ok(m) => m,
            Err(e) => {
                metrics::counter!("dialmark_sip_invalid_total").increment(1);
                match wire::error_reply(&bytes, &e) {
                    Some(reply) => {
                        debug!(from = %from.addr, cause = %e, "refusing unparseable request");
                        self.send(from, reply);
                    }
                    None => debug!(from = %from.addr, cause = %e, "dropping unparseable message"),
                }
                return;
            }
        };
        match msg.method() {
            None => self.response(&msg, from),
            Some(method) => {
                let method = method.to_string();
                self.request(&msg, &method, from)
            }
        }
    }

    fn reply(&self, req: &Message<'_>, to: Peer, code: u16, reason: &str) {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        self.send(to, wire::response(req, code, reason, Some(&tag[..12]), &[]));
    }

    fn request(&mut self, msg: &Message<'_>, method: &str, from: Peer) {
        let branch = msg.branch().unwrap_or("").to_string();
        let inv_key = format!("{branch}|{}", from.addr);
        match method {
            "INVITE" if msg.to_tag().is_none() => {
                if let Some(&k) = self.by_inv_branch.get(&inv_key) {
                    return self.drive(k, Event::InviteRetransmit);
                }
                if self.pending.contains_key(&inv_key) {
                    let p = &self.pending[&inv_key];
                    return self.reply(
                        &wire::parse(&p.bytes).expect("parsed before"),
                        from,
                        100,
                        "Trying",
                    );
                }
                self.new_invite(msg, inv_key, from);
            }
            "CANCEL" => {
                if let Some(&k) = self.by_inv_branch.get(&inv_key) {
                    self.reply(msg, from, 200, "OK");
                    return self.drive(k, Event::Cancel);
                }
                if let Some(p) = self.pending.get_mut(&inv_key) {
                    p.canceled = true;
                    return self.reply(msg, from, 200, "OK");
                }
                self.reply(msg, from, 481, "Call/Transaction Does Not Exist");
            }
            "ACK" if self.by_inv_branch.contains_key(&inv_key) => {
                // ACK for our non-2xx final reply: hop by hop, absorbed here.
            }
            _ if msg.to_tag().is_some() || method == "ACK" => self.in_dialog(msg, method, from),
            "OPTIONS" if self.is_trusted(&from.addr) => self.send(
                from,
                wire::response(
                    msg,
                    200,
                    "OK",
                    Some("dialmark"),
                    &[("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS".into())],
                ),
            ),
            _ if !self.is_trusted(&from.addr) => {
                metrics::counter!("dialmark_untrusted_requests_total").increment(1);
                self.reply(msg, from, 403, "Forbidden");
            }
            _ => self.reply(msg, from, 405, "Method Not Allowed"),
        }
    }

    fn new_invite(&mut self, msg: &Message<'_>, inv_key: String, from: Peer) {
        let now = now_ms();
        let uri = msg.uri().unwrap_or("");
        let raw_user = wire::uri_user(uri).unwrap_or("").to_string();
        let caller = wire::uri_user(msg.header("from").unwrap_or(""))
            .map(|u| self.plan.normalize(u).unwrap_or_else(|_| u.to_string()))
            .unwrap_or_default();
        let reject_setup = |number: &str, status: NumberStatus| Setup {
            number: number.to_string(),
            caller: caller.clone(),
            site: String::new(),
            pool: String::new(),
            status,
            destinations: Vec::new(),
            trunks: Vec::new(),
            source: Source::default(),
            headers: Vec::new(),
        };
        if !self.is_trusted(&from.addr) {
            warn!(from = %from.addr, "INVITE from an untrusted source refused");
            metrics::counter!("dialmark_untrusted_requests_total").increment(1);
            return self.reject(
                msg,
                from,
                &reject_setup(&raw_user, NumberStatus::Unknown),
                403,
                "Forbidden",
                Disposition::RejectedUntrusted,
                now,
            );
        }
        if msg.max_forwards() == 0 {
            return self.reply(msg, from, 483, "Too Many Hops");
        }
        let loop_marker = format!("{};branch=z9hG4bK-dm-", self.policy.advertise);
        if msg
            .headers
            .iter()
            .any(|h| h.name == "via" && msg.value(h).contains(&loop_marker))
        {
            return self.reply(msg, from, 482, "Loop Detected");
        }
        let number = match self.plan.normalize(&raw_user) {
            Ok(n) => n,
            Err(e) => {
                debug!(user = %raw_user, cause = %e, "request URI is not a phone number");
                return self.reject(
                    msg,
                    from,
                    &reject_setup(&raw_user, NumberStatus::Unknown),
                    404,
                    "Not Found",
                    Disposition::RejectedUnknown,
                    now,
                );
            }
        };
        if self.draining || self.calls.len() + self.pending.len() >= MAX_CALLS {
            // Refused, and still on record: the lost-call audit shows it.
            warn!(number = %number, draining = self.draining, "new call refused (503)");
            return self.reject(
                msg,
                from,
                &reject_setup(&number, NumberStatus::Unknown),
                503,
                "Service Unavailable",
                Disposition::Failed,
                now,
            );
        }
        // 100 Trying at once: routing may wait on Redis.
        self.reply(msg, from, 100, "Trying");
        self.pending.insert(
            inv_key.clone(),
            Pending {
                bytes: msg.raw.to_vec(),
                carrier: from,
                received_ms: now,
                number: number.clone(),
                caller,
                canceled: false,
            },
        );
        let dir = self.directory.clone();
        let tx = self.inputs.clone();
        tokio::spawn(async move {
            let lookup = dir.lookup(&number).await;
            let source = match &lookup {
                Lookup::Found(rec) if rec.status == NumberStatus::Active => {
                    dir.attribution(rec, (now / 1000) as u32).await
                }
                _ => Source::default(),
            };
            let _ = tx
                .send(Input::Routed {
                    branch: inv_key,
                    lookup: Box::new(lookup),
                    source: Box::new(source),
                })
                .await;
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn reject(
        &mut self,
        msg: &Message<'_>,
        from: Peer,
        setup: &Setup,
        code: u16,
        reason: &str,
        d: Disposition,
        now: u64,
    ) {
        let (bytes, row) = Call::reject(msg, setup, code, reason, d, now);
        self.send(from, bytes);
        self.record(row);
    }

    fn routed(&mut self, inv_key: &str, lookup: Lookup, source: Source) {
        let Some(p) = self.pending.remove(inv_key) else {
            return;
        };
        let now = now_ms();
        let msg = match wire::parse(&p.bytes) {
            Ok(m) => m,
            Err(_) => return,
        };
        let mut setup = Setup {
            number: p.number.clone(),
            caller: p.caller.clone(),
            site: String::new(),
            pool: String::new(),
            status: NumberStatus::Unknown,
            destinations: Vec::new(),
            trunks: Vec::new(),
            source,
            headers: Vec::new(),
        };
        let rec: RouteRecord = match lookup {
            Lookup::Found(rec) => rec,
            Lookup::Unknown => {
                info!(number = %p.number, "call to an unknown number; recorded and rejected");
                return self.reject(
                    &msg,
                    p.carrier,
                    &setup,
                    404,
                    "Not Found",
                    Disposition::RejectedUnknown,
                    p.received_ms,
                );
            }
            Lookup::Unavailable => {
                tracing::error!(number = %p.number, "number lookup impossible (Redis down, nothing cached); call refused");
                return self.reject(
                    &msg,
                    p.carrier,
                    &setup,
                    503,
                    "Service Unavailable",
                    Disposition::Failed,
                    p.received_ms,
                );
            }
        };
        setup.site = rec.site.clone();
        setup.pool = rec.pool.clone();
        setup.status = rec.status;
        let code = self.cfg.router.reject_code;
        let reason = match code {
            410 => "Gone",
            480 => "Temporarily Unavailable",
            _ => "Not Found",
        };
        let verdict = match rec.status {
            NumberStatus::Active if p.canceled => {
                Some((487, "Request Terminated", Disposition::Abandoned))
            }
            NumberStatus::Active => None,
            NumberStatus::Quarantine => Some((code, reason, Disposition::RejectedQuarantine)),
            NumberStatus::Stock => Some((code, reason, Disposition::RejectedStock)),
            NumberStatus::Unknown => Some((404, "Not Found", Disposition::RejectedUnknown)),
        };
        if let Some((code, reason, disposition)) = verdict {
            info!(number = %p.number, status = rec.status.as_str(), code, "call recorded and rejected");
            return self.reject(
                &msg,
                p.carrier,
                &setup,
                code,
                reason,
                disposition,
                p.received_ms,
            );
        }
        setup.destinations = rec.destinations.clone();
        setup.trunks = self.plan_trunks(&rec.trunk_group);
        let r = &self.cfg.router;
        setup.headers = vec![(
            r.source_header.clone(),
            directory::source_header(&setup.source),
        )];
        if !setup.source.session_id.is_empty() {
            setup
                .headers
                .push((r.session_header.clone(), setup.source.session_id.clone()));
        }
        let key = self.next_key;
        self.next_key += 1;
        let call_id = msg.call_id().to_string();
        let span = info_span!("call", call.id = %call_id, number = %p.number, site = %rec.site);
        let _g = span.enter();
        info!(attribution = ?setup.source.attribution, trunks = setup.trunks.len(), "routing call");
        let (call, actions) = Call::start(
            p.bytes.clone(),
            setup,
            self.policy.clone(),
            now.max(p.received_ms),
        );
        self.calls.insert(
            key,
            Entry {
                call,
                carrier: p.carrier,
                inv_branch: inv_key.to_string(),
                our_branches: Vec::new(),
                call_id: call_id.clone(),
            },
        );
        self.by_inv_branch.insert(inv_key.to_string(), key);
        self.by_call_id.insert(call_id, key);
        self.status.active_calls.store(
            self.calls.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.execute(key, actions);
    }

    /// Trunks of a group in the order to try: healthy before down, then by
    /// priority; trunks at their call limit are skipped.
    fn plan_trunks(&self, group: &str) -> Vec<TrunkRef> {
        let mut t: Vec<&TrunkRuntime> = self
            .trunks
            .iter()
            .filter(|t| t.cfg.group == group)
            .filter(|t| t.cfg.max_calls == 0 || t.active < t.cfg.max_calls)
            .collect();
        t.sort_by_key(|t| (!t.health.is_up(), t.cfg.priority, Reverse(t.cfg.weight)));
        // Down trunks are skipped while any trunk of the group is up.
        if t.iter().any(|x| x.health.is_up()) {
            t.retain(|x| x.health.is_up());
        }
        t.into_iter()
            .map(|t| TrunkRef {
                name: t.cfg.name.clone(),
                addr: t.cfg.address,
            })
            .collect()
    }

    fn drive(&mut self, key: u64, event: Event<'_>) {
        let Some(e) = self.calls.get_mut(&key) else {
            return;
        };
        let actions = e.call.handle(event, now_ms());
        self.execute(key, actions);
    }

    fn execute(&mut self, key: u64, actions: Vec<Action>) {
        for a in actions {
            let Some(e) = self.calls.get_mut(&key) else {
                return;
            };
            match a {
                Action::ToCarrier(b) => {
                    let to = e.carrier;
                    self.send(to, b);
                }
                Action::ToTrunk { addr, bytes } => {
                    let last = e.our_branches.last().cloned();
                    if !self.send_udp(addr, &bytes) {
                        if let Some((_, n)) = last.and_then(|b| self.by_our_branch.get(&b).copied())
                        {
                            return self.drive(key, Event::TransportError { attempt: n });
                        }
                    }
                }
                Action::Arm { timer, at_ms } => self.arm(TimerKey::Call(key, timer), at_ms),
                Action::Branch {
                    branch,
                    attempt,
                    trunk,
                } => {
                    e.our_branches.push(branch.clone());
                    self.by_our_branch.insert(branch, (key, attempt));
                    // A trunk carries the call from the attempt's start to its row.
                    if let Some(t) = self.trunks.iter_mut().find(|t| t.cfg.name == trunk) {
                        t.active += 1;
                    }
                }
                Action::Attempt(row) => {
                    let trunk = row.trunk.clone();
                    self.attempt_done(&row, &trunk);
                    if let Some(t) = self.trunks.iter_mut().find(|t| t.cfg.name == trunk) {
                        t.active = t.active.saturating_sub(1);
                    }
                    let _ = self.sinks.attempts.push(*row);
                }
                Action::Record(row) => self.record(*row),
                Action::TrunkTimeout(name) => {
                    let window = self.cfg.router.provisional_timeout_ms;
                    if let Some(idx) = self.trunks.iter().position(|t| t.cfg.name == name) {
                        if let Some(tr) = self.trunks[idx].health.call_timed_out(window, now_ms()) {
                            self.trunk_changed(idx, tr);
                        }
                    }
                }
                Action::TrunkReplied(name) => {
                    if let Some(t) = self.trunks.iter_mut().find(|t| t.cfg.name == name) {
                        t.health.replied(now_ms());
                    }
                }
                Action::Forget => {
                    if let Some(e) = self.calls.remove(&key) {
                        self.by_inv_branch.remove(&e.inv_branch);
                        for b in &e.our_branches {
                            self.by_our_branch.remove(b);
                        }
                        if self.by_call_id.get(&e.call_id) == Some(&key) {
                            self.by_call_id.remove(&e.call_id);
                        }
                    }
                    self.status.active_calls.store(
                        self.calls.len() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    return;
                }
            }
        }
    }

    fn attempt_done(&self, row: &CallAttempt, trunk: &str) {
        let answered = row.outcome == dialmark_schemas::rows::Outcome::Answered;
        metrics::counter!("dialmark_attempts_total", "trunk" => trunk.to_string(), "code" => row.final_code.to_string()).increment(1);
        if row.pdd_ms > 0 {
            metrics::histogram!("dialmark_pdd_seconds", "trunk" => trunk.to_string())
                .record(f64::from(row.pdd_ms) / 1000.0);
        }
        if row.failover == 1 {
            metrics::counter!("dialmark_failovers_total", "trunk" => trunk.to_string())
                .increment(1);
            warn!(trunk.name = %trunk, code = row.final_code, reason = %row.reason, "trunk failed; trying next");
        }
        let now = now_ms();
        let mut recent = self.status.recent.lock().expect("status lock");
        recent.push_back((now, trunk.to_string(), answered, row.failover == 1));
        while recent
            .front()
            .is_some_and(|(t, ..)| now - t > 15 * 60 * 1000)
            || recent.len() > 100_000
        {
            recent.pop_front();
        }
        if row.failover == 1 {
            let mut f = self.status.recent_failovers.lock().expect("status lock");
            f.push_back((now, trunk.to_string(), 0));
            while f.len() > 20 {
                f.pop_front();
            }
        }
    }

    fn record(&self, row: CallRow) {
        metrics::counter!("dialmark_calls_total", "disposition" => row.disposition.as_str())
            .increment(1);
        if row.number_status == NumberStatus::Quarantine
            || row.disposition == Disposition::RejectedUnknown
        {
            metrics::counter!("dialmark_calls_to_retired_numbers_total").increment(1);
        }
        if self.sinks.calls.push(row).is_err() {
            tracing::error!("call row refused by the sink");
        }
    }

    fn response(&mut self, msg: &Message<'_>, from: Peer) {
        let branch = msg.branch().unwrap_or("");
        if let Some((key, attempt)) = self.by_our_branch.get(branch).copied() {
            let cseq_method = msg.cseq().map(|(_, m)| m).unwrap_or_default();
            if cseq_method == "CANCEL" {
                return; // 200 to our CANCEL: the 487 follows.
            }
            return self.drive(key, Event::Response { attempt, msg });
        }
        if branch.starts_with("z9hG4bK-dmp-") {
            if let Some((idx, _)) = self.probes.remove(branch) {
                let ok = msg.status() != Some(503);
                self.trunk_result(
                    idx,
                    ok,
                    TrunkCause::Probe,
                    &format!("OPTIONS answered {}", msg.status().unwrap_or(0)),
                );
            }
            return;
        }
        if branch.starts_with("z9hG4bK-dmf-") {
            // Response to an in-dialog request we forwarded: back to the other side.
            let Some(&key) = self.by_call_id.get(msg.call_id()) else {
                return;
            };
            let Some(e) = self.calls.get(&key) else {
                return;
            };
            let to = if from.addr == e.carrier.addr {
                e.call.answered_trunk().map(|a| Peer { addr: a, tcp: None })
            } else {
                Some(e.carrier)
            };
            if let Some(to) = to {
                self.send(to, wire::strip_top_via(msg));
            }
            return;
        }
        debug!(from = %from.addr, "response matching no transaction dropped");
    }

    fn in_dialog(&mut self, msg: &Message<'_>, method: &str, from: Peer) {
        let Some(&key) = self.by_call_id.get(msg.call_id()) else {
            if method != "ACK" {
                // Never an open relay: not one of our dialogs.
                self.reply(msg, from, 481, "Call/Transaction Does Not Exist");
            }
            return;
        };
        if msg.max_forwards() == 0 {
            if method != "ACK" {
                self.reply(msg, from, 483, "Too Many Hops");
            }
            return;
        }
        let (to, is_bye) = {
            let e = &self.calls[&key];
            let to = if from.addr == e.carrier.addr && from.tcp == e.carrier.tcp {
                e.call.answered_trunk().map(|a| Peer { addr: a, tcp: None })
            } else if e.call.answered_trunk() == Some(from.addr) {
                Some(e.carrier)
            } else {
                None
            };
            (to, method == "BYE")
        };
        let Some(to) = to else {
            if method != "ACK" {
                self.reply(msg, from, 481, "Call/Transaction Does Not Exist");
            }
            return;
        };
        let branch = format!(
            "z9hG4bK-dmf-{:016x}",
            dialmark_schemas::fnv1a(
                format!("{}|{}|{method}", msg.branch().unwrap_or(""), from.addr).as_bytes()
            )
        );
        let via = format!("SIP/2.0/UDP {};branch={branch}", self.policy.advertise);
        let bytes = Forward {
            msg,
            uri: None,
            via: &via,
            record_route: None,
            drop_first_route: msg
                .header("route")
                .is_some_and(|r| r.contains(&self.policy.advertise)),
            max_forwards: msg.max_forwards() - 1,
            add: &[],
        }
        .build();
        self.send(to, bytes);
        if is_bye {
            self.drive(key, Event::Bye);
        }
    }

    fn probe_all(&mut self) {
        let now = now_ms();
        let timeout = self.cfg.router.probe.timeout_ms;
        for idx in 0..self.trunks.len() {
            self.probe_seq += 1;
            let branch = format!("z9hG4bK-dmp-{idx}-{}", self.probe_seq);
            let t = &self.trunks[idx].cfg;
            let bytes = options(&self.policy.advertise, t.address, &branch, self.probe_seq);
            if self.send_udp(t.address, &bytes) {
                self.probes.insert(branch.clone(), (idx, now));
                self.arm(TimerKey::ProbeTimeout(branch), now + timeout);
            } else {
                self.trunk_result(idx, false, TrunkCause::Probe, "OPTIONS send failed");
            }
        }
        // Off, or no trunks, after a reload: the ticks stop until one turns them on.
        if self.cfg.router.probe.interval_seconds > 0 && !self.trunks.is_empty() {
            self.probe_armed = true;
            self.arm(
                TimerKey::ProbeTick,
                now + self.cfg.router.probe.interval_seconds * 1000,
            );
        }
    }

    fn trunk_result(&mut self, idx: usize, ok: bool, cause: TrunkCause, reason: &str) {
        let now = now_ms();
        let t = &mut self.trunks[idx];
        let transition = if ok {
            t.health.success(cause, now)
        } else {
            t.health.failure(cause, reason, now)
        };
        if let Some(tr) = transition {
            self.trunk_changed(idx, tr);
        }
    }

    fn trunk_changed(&mut self, idx: usize, tr: Transition) {
        let t = &self.trunks[idx].cfg;
        let up = tr.to == TrunkState::Up;
        if up {
            info!(trunk.name = %t.name, reason = %tr.reason, "trunk up");
        } else {
            warn!(trunk.name = %t.name, reason = %tr.reason, "trunk down; calls skip it");
        }
        metrics::gauge!("dialmark_trunk_up", "trunk" => t.name.clone()).set(if up {
            1.0
        } else {
            0.0
        });
        metrics::counter!("dialmark_trunk_state_changes_total", "trunk" => t.name.clone())
            .increment(1);
        let _ = self.sinks.trunk_events.push(TrunkEvent {
            event_id: uuid::Uuid::new_v4(),
            ts: (now_ms() / 1000) as u32,
            trunk: t.name.clone(),
            trunk_group: t.group.clone(),
            state: tr.to,
            previous: tr.from,
            cause: tr.cause,
            reason: tr.reason.clone(),
        });
        self.alerter
            .trunk_changed(&t.name, &t.group, up, &tr.reason);
        self.publish_status();
    }

    fn publish_status(&self) {
        let mut s = self.status.trunks.lock().expect("status lock");
        *s = self
            .trunks
            .iter()
            .map(|t| {
                metrics::gauge!("dialmark_trunk_up", "trunk" => t.cfg.name.clone())
                    .set(if t.health.is_up() { 1.0 } else { 0.0 });
                TrunkStatus {
                    name: t.cfg.name.clone(),
                    group: t.cfg.group.clone(),
                    address: t.cfg.address.to_string(),
                    up: t.health.is_up(),
                    since_unix: t.health.since_ms / 1000,
                    active_calls: t.active,
                    ..TrunkStatus::default()
                }
            })
            .collect();
    }
}

/// The call state machines' settings from the router config.
fn policy(r: &RouterConfig) -> Policy {
    Policy {
        provisional_timeout_ms: r.provisional_timeout_ms,
        ring_timeout_ms: r.ring_timeout_seconds * 1000,
        overall_timeout_ms: r.overall_timeout_seconds * 1000,
        max_call_ms: r.max_call_seconds * 1000,
        failover_codes: r.failover_codes.clone(),
        advertise: r.advertised().to_string(),
    }
}

/// Flood limiters for (untrusted sources, trusted carriers and trunks).
fn limiters(r: &RateLimitConfig) -> (Limiter, Limiter) {
    (
        Limiter::new(r.per_second, r.burst, r.ban_seconds),
        Limiter::new(
            r.trusted_per_second,
            r.trusted_per_second.saturating_mul(2),
            r.ban_seconds,
        ),
    )
}

/// An OPTIONS probe to a trunk.
fn options(advertise: &str, to: SocketAddr, branch: &str, seq: u64) -> Vec<u8> {
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {advertise};branch={branch}\r\nMax-Forwards: 70\r\n\
         From: <sip:probe@{advertise}>;tag=dmprobe\r\nTo: <sip:{to}>\r\nCall-ID: dmprobe-{seq}@{advertise}\r\n\
         CSeq: {seq} OPTIONS\r\nContact: <sip:probe@{advertise}>\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Reads UDP datagrams into the loop.
pub async fn udp_reader(sock: Arc<UdpSocket>, tx: mpsc::Sender<Input>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, addr)) => {
                if n == 0 || buf[..n].iter().all(|b| matches!(b, b'\r' | b'\n')) {
                    continue; // keep-alive
                }
                let from = Peer { addr, tcp: None };
                if tx
                    .send(Input::Packet {
                        bytes: buf[..n].to_vec(),
                        from,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                // ICMP port unreachable surfaces here on Linux; keep serving.
                debug!(cause = %e, "udp receive error");
            }
        }
    }
}

/// Accepts TCP connections and frames their messages by Content-Length.
/// A message must arrive whole within `message_timeout` of its first byte
/// (slowloris, Content-Length larger than what is sent), else the
/// connection is answered 400 when possible and closed.
pub async fn tcp_acceptor(
    listener: TcpListener,
    tx: mpsc::Sender<Input>,
    message_timeout: Duration,
) {
    let mut next_id = 1u64;
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let Ok((stream, addr)) = listener.accept().await else {
            continue;
        };
        if open.load(std::sync::atomic::Ordering::Relaxed) >= MAX_TCP {
            continue; // dropped: connection limit
        }
        let id = next_id;
        next_id += 1;
        let tx = tx.clone();
        let open = open.clone();
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            tcp_conn(stream, addr, id, tx.clone(), message_timeout).await;
            open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let _ = tx.send(Input::TcpClosed { id }).await;
        });
    }
}

async fn tcp_conn(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    id: u64,
    tx: mpsc::Sender<Input>,
    message_timeout: Duration,
) {
    let (mut rd, mut wr) = stream.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(256);
    if tx
        .send(Input::TcpOpen {
            id,
            tx: out_tx.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    // An empty buffer asks the writer to flush and close.
    let writer = tokio::spawn(async move {
        while let Some(b) = out_rx.recv().await {
            if b.is_empty() || wr.write_all(&b).await.is_err() {
                let _ = wr.shutdown().await;
                return;
            }
        }
    });
    let refuse = |bytes: &[u8], e: &wire::ParseError| {
        metrics::counter!("dialmark_sip_invalid_total").increment(1);
        debug!(peer = %addr, cause = %e, "tcp message refused; closing");
        wire::error_reply(bytes, e)
    };
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16_384];
    // When the first byte of the message now in `buf` arrived.
    let mut started: Option<tokio::time::Instant> = None;
    let mut last_words = None;
    'conn: loop {
        let wait = match started {
            Some(t) => (t + message_timeout).saturating_duration_since(tokio::time::Instant::now()),
            None => TCP_IDLE,
        };
        let n = match tokio::time::timeout(wait, rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Err(_) if started.is_some() => {
                last_words = refuse(
                    &buf,
                    &wire::ParseError::Bad("message: not complete in time"),
                );
                break;
            }
            Err(_) => break,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let skip = buf
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            buf.drain(..skip);
            match wire::frame(&buf) {
                Ok(Some(len)) => {
                    let bytes: Vec<u8> = buf.drain(..len).collect();
                    started = None;
                    let from = Peer {
                        addr,
                        tcp: Some(id),
                    };
                    if tx.send(Input::Packet { bytes, from }).await.is_err() {
                        break 'conn;
                    }
                }
                Ok(None) => {
                    if !buf.is_empty() && started.is_none() {
                        started = Some(tokio::time::Instant::now());
                    }
                    break;
                }
                Err(e) => {
                    last_words = refuse(&buf, &e);
                    break 'conn;
                }
            }
        }
    }
    if let Some(reply) = last_words {
        let _ = out_tx.send(reply).await;
    }
    let _ = out_tx.send(Vec::new()).await;
    drop(out_tx);
    if tokio::time::timeout(Duration::from_secs(2), writer)
        .await
        .is_err()
    {
        debug!(peer = %addr, "tcp writer did not finish; dropped");
    }
}
