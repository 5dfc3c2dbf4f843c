//! From a received message to its owner. The receivers run this: flood
//! limits per source, parsing (unparseable requests are answered 400/513
//! here), then the owner: probe replies to the control task, out-of-dialog
//! OPTIONS answered at once (503 while the node refuses calls), and every
//! other message to the shard its Call-ID hashes to. A new INVITE waits
//! in the shard's low-priority queue; when that is full the INVITE is
//! refused here (503 + Retry-After) and recorded as `overload`. Replies
//! and in-dialog requests wait in the high-priority queue, which a shard
//! always serves first.

use std::sync::{Arc, Mutex};

use dialmark_schemas::config::RateLimitConfig;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::abuse::{Abuse, Verdict as AbuseVerdict};
use crate::call::Call;
use crate::control::ControlMsg;
use crate::ratelimit::{Limiter, Verdict};
use crate::shard::{self, Inbound, Sinks};
use crate::shared::Shared;
use crate::transport::{Peer, Transport};
use crate::wire::{self, Message};

/// Our OPTIONS probes' branch prefix.
pub const PROBE_BRANCH: &str = "z9hG4bK-dmp-";

/// A shard's two queues.
#[derive(Clone)]
pub struct ShardQueues {
    /// Replies, CANCEL, ACK, in-dialog requests.
    pub urgent: mpsc::Sender<Inbound>,
    /// New INVITEs.
    pub fresh: mpsc::Sender<Inbound>,
}

struct Limits {
    cfg: RateLimitConfig,
    untrusted: Limiter,
    trusted: Limiter,
}

impl Limits {
    fn new(cfg: &RateLimitConfig) -> Limits {
        Limits {
            untrusted: Limiter::new(cfg.per_second, cfg.burst, cfg.ban_seconds),
            trusted: Limiter::new(
                cfg.trusted_per_second,
                cfg.trusted_per_second.saturating_mul(2),
                cfg.ban_seconds,
            ),
            cfg: cfg.clone(),
        }
    }
}

struct Inner {
    shards: Vec<ShardQueues>,
    control: mpsc::Sender<ControlMsg>,
    shared: Arc<Shared>,
    transport: Arc<Transport>,
    limits: Mutex<Limits>,
    abuse: Mutex<Abuse>,
    sinks: Sinks,
}

/// Routes received messages; cheap to clone (one per receiver).
#[derive(Clone)]
pub struct Dispatcher(Arc<Inner>);

/// The shard that owns a Call-ID.
pub fn shard_of(call_id: &str, shards: usize) -> usize {
    (dialmark_schemas::fnv1a(call_id.as_bytes()) % shards.max(1) as u64) as usize
}

impl Dispatcher {
    pub fn new(
        shards: Vec<ShardQueues>,
        control: mpsc::Sender<ControlMsg>,
        shared: Arc<Shared>,
        transport: Arc<Transport>,
        sinks: Sinks,
    ) -> Dispatcher {
        let limits = Limits::new(&shared.snapshot().config.router.rate_limit);
        Dispatcher(Arc::new(Inner {
            shards,
            control,
            shared,
            transport,
            limits: Mutex::new(limits),
            abuse: Mutex::default(),
            sinks,
        }))
    }

    /// Takes one message that arrived at `received_ms` (for UDP the
    /// kernel's stamp, so time in the socket buffer counts as queueing).
    /// `false` when the node is stopping.
    pub async fn dispatch(&self, bytes: Vec<u8>, from: Peer, received_ms: u64) -> bool {
        let d = &self.0;
        let snap = d.shared.snapshot();
        if !self.admit(&snap, from, received_ms) {
            return true;
        }
        let msg = match wire::parse(&bytes) {
            Ok(m) => m,
            Err(e) => {
                metrics::counter!("dialmark_sip_invalid_total").increment(1);
                match wire::error_reply(&bytes, &e) {
                    Some(reply) => {
                        debug!(from = %from.addr, cause = %e, "refusing unparseable request");
                        d.transport.send(from, reply);
                    }
                    None => debug!(from = %from.addr, cause = %e, "dropping unparseable message"),
                }
                return true;
            }
        };
        let owner = shard_of(msg.call_id(), d.shards.len());
        let fresh = match msg.method() {
            None => {
                if msg.branch().is_some_and(|b| b.starts_with(PROBE_BRANCH)) {
                    let reply = ControlMsg::ProbeReply {
                        branch: msg.branch().unwrap_or("").to_string(),
                        status: msg.status().unwrap_or(0),
                        from: from.addr,
                    };
                    let _ = d.control.try_send(reply);
                    return true;
                }
                false
            }
            Some("OPTIONS") if msg.to_tag().is_none() => {
                self.options(&snap, &msg, from);
                return true;
            }
            Some("INVITE") if msg.to_tag().is_none() && !snap.is_trusted(from.addr.ip()) => {
                self.untrusted_invite(&snap, &msg, from, received_ms);
                return true;
            }
            Some("INVITE") => msg.to_tag().is_none(),
            Some(_) => false,
        };
        let queues = &d.shards[owner];
        let inbound = Inbound {
            bytes: Vec::new(),
            from,
            received_ms,
        };
        if !fresh {
            drop(msg);
            return queues
                .urgent
                .send(Inbound { bytes, ..inbound })
                .await
                .is_ok();
        }
        let shed = match queues.fresh.try_reserve() {
            Ok(permit) => {
                drop(msg);
                permit.send(Inbound { bytes, ..inbound });
                return true;
            }
            Err(mpsc::error::TrySendError::Closed(())) => return false,
            Err(mpsc::error::TrySendError::Full(())) => &msg,
        };
        // The shard is so far behind its queue is full: refuse here.
        warn!(shard = owner, "new-call queue full: call refused (503)");
        shard::shed(shed, from, &snap, &d.sinks, &d.transport, received_ms);
        true
    }

    /// Never an open relay: 403, counted per source and minute, the
    /// source's first INVITE of the minute recorded as a call.
    fn untrusted_invite(
        &self,
        snap: &crate::shared::Snapshot,
        msg: &Message<'_>,
        from: Peer,
        now_ms: u64,
    ) {
        let d = &self.0;
        metrics::counter!("dialmark_untrusted_requests_total").increment(1);
        let setup = shard::reject_setup(msg, snap, dialmark_schemas::rows::NumberStatus::Unknown);
        let (verdict, done) = d.abuse.lock().expect("abuse lock").count(
            from.addr.ip(),
            &setup.number,
            &setup.caller,
            (now_ms / 1000) as u32,
        );
        self.write_abuse(done);
        let disposition = dialmark_schemas::rows::Disposition::RejectedUntrusted;
        let (reply, mut row) = Call::reject(msg, &setup, 403, &[], disposition, now_ms);
        d.transport.send(from, reply);
        if let AbuseVerdict::Sample(id) = verdict {
            warn!(from = %from.addr, number = %setup.number, "INVITE from an untrusted source refused (the rest of this minute's are counted)");
            row.call_id = id;
            shard::record(&d.sinks, row);
        }
    }

    /// Writes the untrusted-source counts of minutes that ended (with
    /// `all`, of the current one too: the node is stopping).
    pub fn flush_abuse(&self, all: bool) {
        let now = dialmark_schemas::unix_now() + if all { 60 } else { 0 };
        let done = self.0.abuse.lock().expect("abuse lock").flush(now);
        self.write_abuse(done);
    }

    fn write_abuse(&self, rows: Vec<dialmark_schemas::rows::UntrustedSource>) {
        for r in rows {
            if self.0.sinks.untrusted.push(r).is_err() {
                tracing::error!("untrusted-source row refused by the sink");
            }
        }
    }

    /// Flood limits: carriers and our trunks have their own (by default
    /// unlimited) budget; other sources are dropped unread over theirs.
    fn admit(&self, snap: &crate::shared::Snapshot, from: Peer, now_ms: u64) -> bool {
        let known = snap.is_known(from.addr.ip());
        let cfg = &snap.config.router.rate_limit;
        if known && cfg.trusted_per_second == 0 {
            return true;
        }
        let mut limits = self.0.limits.lock().expect("limits lock");
        if limits.cfg != *cfg {
            *limits = Limits::new(cfg);
        }
        let limiter = if known {
            &mut limits.trusted
        } else {
            &mut limits.untrusted
        };
        match limiter.check(from.addr.ip(), now_ms) {
            Verdict::Pass => true,
            Verdict::Ban => {
                warn!(source = %from.addr.ip(), "message flood: source banned");
                metrics::counter!("dialmark_flood_bans_total").increment(1);
                false
            }
            Verdict::Drop => {
                metrics::counter!("dialmark_flood_dropped_total").increment(1);
                false
            }
        }
    }

    /// OPTIONS to the node: 200 from carriers while it takes calls, 503
    /// while it drains or is overloaded (so a carrier's health check
    /// moves traffic away), 403 to anyone else.
    fn options(&self, snap: &crate::shared::Snapshot, msg: &Message<'_>, from: Peer) {
        let d = &self.0;
        let reply = if !snap.is_trusted(from.addr.ip()) {
            metrics::counter!("dialmark_untrusted_requests_total").increment(1);
            wire::response(msg, 403, "Forbidden", Some("dialmark"), &[])
        } else if d.shared.refusing() {
            let retry = snap.config.router.retry_after_seconds.to_string();
            wire::response(
                msg,
                503,
                "Service Unavailable",
                Some("dialmark"),
                &[("Retry-After", retry)],
            )
        } else {
            wire::response(
                msg,
                200,
                "OK",
                Some("dialmark"),
                &[(
                    "Allow",
                    "INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, INFO".into(),
                )],
            )
        };
        d.transport.send(from, reply);
    }
}
