//! A routing shard: one task that owns the calls whose Call-ID hashes to
//! it, their timers and their tombstones, outright. It classifies each
//! message (new INVITE, retransmission, CANCEL, ACK, in-dialog request,
//! reply), applies the inbound policy (trusted carriers, Max-Forwards,
//! loops, merged requests, number status, drain, overload), drives the
//! [`Call`] state machines and executes their actions: sends, timers,
//! rows. In-dialog requests are matched by dialog (Call-ID and tags, not
//! by who sent them) and forwarded statelessly with a branch derived from
//! theirs, so CANCEL and ACK of a re-INVITE follow it (RFC 3261 §16.11);
//! their replies go back by Via.
//!
//! Messages are handled in the order they were received, and a timer
//! fires only after every message received before its deadline: the
//! node's own queueing never fails a trunk over. A message that waited
//! longer than `router.overload_delay_ms` (since the kernel queued it: in
//! the socket buffer, then in the shard's queue) marks the shard behind, and new
//! calls are refused (503 + Retry-After, recorded as `overload`) until it
//! catches up; so are calls over the memory budget.
//!
//! A finished call leaves a [`Tombstone`] (under 256 bytes) for
//! `TOMBSTONE_MS`: INVITE retransmissions get the same final reply again
//! (and no second row), a late 2xx is ACKed and hung up, a retransmitted
//! BYE still finds its way.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dialmark_schemas::layout::RouteRecord;
use dialmark_schemas::rows::{Call as CallRow, CallAttempt, Disposition, NumberStatus, Outcome};
use dialmark_schemas::sink::Sink;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn};

use crate::call::{self, Action, Call, Event, Setup, Source, Timer};
use crate::control::ControlMsg;
use crate::dialog::{Dialog, Leg};
use crate::directory::{self, Directory, Lookup};
use crate::handover::{DialogRecord, Handover};
use crate::journal::Journal;
use crate::quality::Sample;
use crate::shared::{Shared, Snapshot};
use crate::timer::{Handle, Timers};
use crate::transport::{Peer, Transport};
use crate::wire::{self, Forward, Message};

/// How long a finished call's tombstone absorbs retransmissions and late
/// replies (64·T1, Timers H and J).
pub const TOMBSTONE_MS: u64 = call::TRANSACTION_MS;
/// What a new call is expected to hold while it rings: the budget must
/// have room for it.
pub const NEW_CALL_BYTES: usize = 6 * 1024;
/// After the last call of a drain ends, the shard serves this long more
/// for the final BYE's reply.
pub const DRAIN_TAIL_MS: u64 = 1_000;
/// Branch prefix of in-dialog requests the node forwards.
pub const FORWARD_BRANCH: &str = "z9hG4bK-dmf-";

/// Row sinks of the router.
#[derive(Clone)]
pub struct Sinks {
    pub calls: Sink<CallRow>,
    pub attempts: Sink<CallAttempt>,
    pub trunk_events: Sink<dialmark_schemas::rows::TrunkEvent>,
    pub untrusted: Sink<dialmark_schemas::rows::UntrustedSource>,
    /// Ringing calls for the `call.started` webhooks.
    pub events: crate::webhook::Events,
    /// Answered calls for the pair's other node (`[router.ha]` on).
    pub handover: Option<Handover>,
}

/// A received message on its way to a shard.
pub struct Inbound {
    pub bytes: Vec<u8>,
    pub from: Peer,
    /// Unix ms when it was read off the socket.
    pub received_ms: u64,
}

/// Orders from the node to its shards.
#[derive(Debug, Clone, Copy)]
pub enum ShardCtl {
    /// SIGTERM: refuse new calls, end when no call is left.
    Drain,
    /// The drain deadline: hang up what is left, then end.
    Release,
}

/// What is left of a finished call.
#[derive(Debug, Clone)]
pub struct Tombstone {
    /// Hash of the carrier INVITE's branch (retransmissions carry it).
    inv_branch: u64,
    carrier: Peer,
    carrier_back: Option<SocketAddr>,
    /// The answered trunk (and whether over TCP), for a BYE retransmitted
    /// by the caller.
    trunk: Option<(SocketAddr, bool)>,
    /// Hashes of the caller's and the answering callee's tags: the dialog
    /// a late in-dialog request must name.
    carrier_tag: u64,
    trunk_tag: u64,
    /// The final status the carrier got and its To tag (unanswered calls).
    reply: Option<(u16, Box<str>)>,
    /// The attempt that answered (its 2xx retransmissions go upstream).
    answered: u8,
    call_id: uuid::Uuid,
    expires_ms: u64,
}

/// A tombstone's map slot, its reply tag and its expiry entry.
const TOMBSTONE_BYTES: usize = std::mem::size_of::<(u64, Tombstone)>() + 16 + 32;
const _: () = assert!(TOMBSTONE_BYTES <= 256, "a tombstone stays under 256 bytes");

enum State {
    /// Waiting for the number lookup.
    Routing {
        bytes: Vec<u8>,
        received_ms: u64,
        number: String,
        caller: String,
        canceled: bool,
    },
    Live(Box<Call>),
}

struct Entry {
    call_id: Box<str>,
    carrier: Peer,
    /// Where a TCP carrier listens (its Via), to reopen a lost connection.
    carrier_back: Option<SocketAddr>,
    inv_branch: u64,
    state: State,
    timers: Vec<(Timer, Handle)>,
    bytes: usize,
}

impl Entry {
    fn footprint(&self) -> usize {
        let state = match &self.state {
            State::Routing {
                bytes,
                number,
                caller,
                ..
            } => bytes.capacity() + number.capacity() + caller.capacity(),
            State::Live(c) => c.footprint(),
        };
        // Map slot, key, timers (with their ordered-set nodes).
        std::mem::size_of::<(u64, Entry)>()
            + self.call_id.len()
            + state
            + self.timers.capacity() * (std::mem::size_of::<(Timer, Handle)>() + 64)
    }
}

/// What the shard's own helpers report back to it.
pub enum Internal {
    /// The result of a number lookup.
    Routed {
        key: u64,
        lookup: Box<Lookup>,
        source: Box<Source>,
    },
    /// A TCP connection for an attempt's INVITE could not be opened.
    TransportError { key: u64, attempt: u8 },
    /// What the pair's store holds for an in-dialog request's Call-ID
    /// (`request`, handled again once the call is adopted).
    Adopt {
        key: u64,
        request: Inbound,
        record: Option<Box<DialogRecord>>,
    },
}

/// A call the pair's other node answered, carried here to its end.
struct Adopted {
    call_id: Box<str>,
    route: Tombstone,
    record: DialogRecord,
    /// Its answer plus `router.max_call_seconds`: hung up then.
    expires_ms: u64,
    /// What its BYEs take (none from a record of an older node).
    dialog: Option<Dialog>,
}

/// CSeq numbers added to an adopted call's legs: in-dialog requests
/// after its record was written (a re-INVITE) raised them where the record
/// cannot see; a UAS refuses only a lower CSeq (RFC 3261 §12.2.2).
const ADOPTED_CSEQ_MARGIN: u32 = 1_000;

/// When an adopted call's BYEs are sent again over UDP (answers are not
/// waited for: the call is gone either way), ms after the first.
const ADOPTED_BYE_RESENDS_MS: [u64; 4] = [500, 1_500, 3_500, 7_500];

/// The connection id of a TCP carrier of an adopted call: none of this
/// node's, so the request opens one to where the carrier listens.
const NO_CONN: u64 = u64::MAX;

/// How often a shard looks for adopted calls at their maximum duration.
const ADOPTED_CHECK_MS: u64 = 250;

/// Calls copied at a time during a journal rotation: a few ms of work.
const JOURNAL_COPY_BATCH: usize = 1_024;

/// A busy shard copies one batch per this long (an idle one at once):
/// copying 100,000 calls back to back, with the shard saturated at 2,700
/// CPS, put its messages over `overload_delay_ms` (sustained bench).
const JOURNAL_COPY_EVERY_MS: u64 = 100;

/// How often a shard gives back the map capacity a load peak left.
const SHRINK_EVERY_MS: u64 = 10_000;

/// How often a shard publishes its gauges: counting dialogs walks every
/// call, which after every message (as it was) cost more CPU than routing
/// once 100,000 calls were up.
const PUBLISH_EVERY_MS: u64 = 1_000;

/// Gives memory back after a peak: a map under a quarter full keeps room
/// for twice what it holds.
fn shrink<V>(m: &mut HashMap<u64, V>) {
    if m.capacity() > 4 * m.len().max(1024) {
        m.shrink_to(2 * m.len());
    }
}

fn hash(s: &str) -> u64 {
    dialmark_schemas::fnv1a(s.as_bytes())
}

/// One routing shard.
pub struct Shard {
    id: usize,
    shared: Arc<Shared>,
    transport: Arc<Transport>,
    directory: Directory,
    sinks: Sinks,
    control: mpsc::Sender<ControlMsg>,
    internal: mpsc::UnboundedSender<Internal>,
    calls: HashMap<u64, Entry>,
    tombstones: HashMap<u64, Tombstone>,
    expiry: VecDeque<(u64, u64)>,
    timers: Timers<(u64, Timer)>,
    /// Bytes this shard holds (its share of the budget).
    held: usize,
    draining: bool,
    overloaded: bool,
    snap: Arc<Snapshot>,
    journal: Journal,
    /// Calls of the pair's other node carried on here.
    adopted: HashMap<u64, Adopted>,
    /// When the adopted calls were last checked for their maximum duration.
    adopted_checked_ms: u64,
    /// During a journal rotation: the calls still to copy to the new file.
    journal_copy: Vec<u64>,
    /// When the last batch of them was copied.
    journal_copied_ms: u64,
    /// When the maps were last shrunk.
    shrunk_ms: u64,
    /// When the gauges were last published.
    published_ms: u64,
}

/// The queues a shard reads.
pub struct ShardInputs {
    pub urgent: mpsc::Receiver<Inbound>,
    pub fresh: mpsc::Receiver<Inbound>,
    pub ctl: mpsc::Receiver<ShardCtl>,
}

impl Shard {
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        transport: Arc<Transport>,
        directory: Directory,
        sinks: Sinks,
        control: mpsc::Sender<ControlMsg>,
        journal: Journal,
    ) -> (Shard, mpsc::UnboundedReceiver<Internal>) {
        let (internal, internal_rx) = mpsc::unbounded_channel();
        let snap = shared.snapshot();
        (
            Shard {
                id,
                shared,
                transport,
                directory,
                sinks,
                control,
                internal,
                calls: HashMap::new(),
                tombstones: HashMap::new(),
                expiry: VecDeque::new(),
                timers: Timers::default(),
                held: 0,
                draining: false,
                overloaded: false,
                snap,
                journal,
                adopted: HashMap::new(),
                adopted_checked_ms: 0,
                journal_copy: Vec::new(),
                journal_copied_ms: 0,
                shrunk_ms: 0,
                published_ms: 0,
            },
            internal_rx,
        )
    }

    /// Runs until drained (or released at the drain deadline).
    pub async fn run(
        mut self,
        mut inputs: ShardInputs,
        mut routed: mpsc::UnboundedReceiver<Internal>,
    ) {
        let mut pending: VecDeque<Inbound> = VecDeque::new();
        let mut released_at: Option<u64> = None;
        // When the last call of a drain ended.
        let mut drained_at: Option<u64> = None;
        loop {
            while pending.len() < 256 {
                match inputs.urgent.try_recv() {
                    Ok(m) => pending.push_back(m),
                    Err(_) => break,
                }
            }
            // Messages and timers in the order they happened.
            loop {
                let now = crate::now_ms();
                let due = self.timers.next_at().filter(|t| *t <= now);
                match (pending.front(), due) {
                    (Some(m), Some(t)) if t < m.received_ms => self.fire_one(now),
                    (Some(_), _) => {
                        let m = pending.pop_front().expect("front");
                        self.inbound(m, false);
                    }
                    (None, Some(_)) => self.fire_one(now),
                    (None, None) => break,
                }
            }
            while let Ok(r) = routed.try_recv() {
                self.internal(r);
            }
            for _ in 0..64 {
                match inputs.fresh.try_recv() {
                    Ok(m) => self.inbound(m, true),
                    Err(_) => break,
                }
                if !inputs.urgent.is_empty() {
                    break;
                }
            }
            self.expire(crate::now_ms());
            let idle = inputs.urgent.is_empty() && inputs.fresh.is_empty();
            self.copy_journal(idle, crate::now_ms());
            if self.draining && self.calls.is_empty() {
                // Serve a moment longer: the last BYE's reply (and its
                // retransmissions) still pass through.
                let at = *drained_at.get_or_insert_with(crate::now_ms);
                if crate::now_ms() >= at + DRAIN_TAIL_MS {
                    break;
                }
            }
            if released_at.is_some_and(|t| crate::now_ms() >= t + 2_000) {
                if !self.calls.is_empty() {
                    warn!(
                        shard = self.id,
                        calls = self.calls.len(),
                        "stopping with calls whose BYEs were not answered"
                    );
                }
                break;
            }
            if inputs.urgent.is_empty() && inputs.fresh.is_empty() {
                // Nothing waits: the shard is not behind.
                self.set_overloaded(false);
            } else {
                continue;
            }
            let now = crate::now_ms();
            if now >= self.published_ms + PUBLISH_EVERY_MS {
                self.published_ms = now;
                self.publish();
            }
            let sleep = self.timers.next_at().map_or(Duration::from_secs(1), |t| {
                Duration::from_millis(t.saturating_sub(crate::now_ms()))
            });
            let sleep = if drained_at.is_some() {
                sleep.min(Duration::from_millis(100))
            } else if self.journal.rotating() {
                Duration::ZERO
            } else if !self.adopted.is_empty() {
                // Adopted calls have no timer: their maximum duration is
                // checked at least every second.
                sleep.min(Duration::from_secs(1))
            } else {
                sleep
            };
            tokio::select! {
                biased;
                Some(m) = inputs.urgent.recv() => pending.push_back(m),
                Some(c) = inputs.ctl.recv() => match c {
                    ShardCtl::Drain => {
                        self.draining = true;
                        info!(shard = self.id, calls = self.calls.len(), "draining: no new calls");
                    }
                    ShardCtl::Release => {
                        self.draining = true;
                        self.release_all();
                        released_at = Some(crate::now_ms());
                    }
                },
                Some(r) = routed.recv() => self.internal(r),
                Some(m) = inputs.fresh.recv() => self.inbound(m, true),
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        self.publish();
        info!(shard = self.id, "shard stopped");
    }

    fn set_overloaded(&mut self, on: bool) {
        if self.overloaded != on {
            self.overloaded = on;
            self.shared.overloaded[self.id].store(on, Ordering::Relaxed);
            if on {
                warn!(
                    shard = self.id,
                    "shard behind its queue: refusing new calls"
                );
            } else {
                info!(shard = self.id, "shard caught up: taking new calls");
            }
        }
    }

    /// Counts for `/metrics`.
    fn publish(&self) {
        let shard = self.id.to_string();
        let dialogs = self
            .calls
            .values()
            .filter(|e| matches!(&e.state, State::Live(c) if c.is_answered()))
            .count();
        metrics::gauge!("dialmark_router_calls", "shard" => shard.clone(), "state" => "routing")
            .set((self.calls.len() - dialogs) as f64);
        metrics::gauge!("dialmark_router_calls", "shard" => shard.clone(), "state" => "dialog")
            .set(dialogs as f64);
        metrics::gauge!("dialmark_router_calls", "shard" => shard.clone(), "state" => "tombstone")
            .set(self.tombstones.len() as f64);
        metrics::gauge!("dialmark_router_memory_held_bytes", "shard" => shard)
            .set(self.held as f64);
    }

    fn fire_one(&mut self, now: u64) {
        let Some((h, (key, timer))) = self.timers.pop_due(now) else {
            return;
        };
        if let Some(e) = self.calls.get_mut(&key) {
            e.timers.retain(|(_, x)| *x != h);
            self.drive(key, Event::Timer(timer));
        }
    }

    fn expire(&mut self, now: u64) {
        // Adopted calls whose BYE never came, at the maximum duration:
        // looked for every ADOPTED_CHECK_MS, not at every turn of a busy
        // loop (a takeover can bring a node's worth of them).
        if now >= self.adopted_checked_ms + ADOPTED_CHECK_MS {
            self.adopted_checked_ms = now;
            let ended: Vec<u64> = self
                .adopted
                .iter()
                .filter(|(_, a)| a.expires_ms <= now)
                .map(|(k, _)| *k)
                .collect();
            for key in ended {
                if let Some(a) = self.adopted.remove(&key) {
                    self.hang_up_adopted(key, a);
                }
            }
        }
        while let Some(&(at, key)) = self.expiry.front() {
            if at > now {
                break;
            }
            self.expiry.pop_front();
            // A Call-ID buried again since has a later expiry of its own.
            if self
                .tombstones
                .get(&key)
                .is_some_and(|t| t.expires_ms <= now)
            {
                self.tombstones.remove(&key);
                self.account(TOMBSTONE_BYTES, 0);
                self.shared
                    .counts
                    .tombstones
                    .fetch_sub(1, Ordering::Relaxed);
            }
        }
        if now >= self.shrunk_ms + SHRINK_EVERY_MS {
            self.shrunk_ms = now;
            shrink(&mut self.calls);
            shrink(&mut self.tombstones);
            if self.expiry.capacity() > 4 * self.expiry.len().max(1024) {
                self.expiry.shrink_to(2 * self.expiry.len());
            }
        }
    }

    fn account(&mut self, old: usize, new: usize) {
        self.held = (self.held + new).saturating_sub(old);
        self.shared.budget.resize(old, new);
    }

    fn inbound(&mut self, m: Inbound, fresh: bool) {
        let now = crate::now_ms();
        let waited = now.saturating_sub(m.received_ms);
        let limit = self.snap.config.router.overload_delay_ms;
        if waited > limit {
            self.set_overloaded(true);
        } else if waited < limit / 4 {
            self.set_overloaded(false);
        }
        metrics::histogram!("dialmark_router_queue_delay_seconds").record(waited as f64 / 1000.0);
        let Ok(msg) = wire::parse(&m.bytes) else {
            return; // the dispatcher parsed it already
        };
        if fresh {
            self.snap = self.shared.snapshot();
        }
        match msg.method() {
            None => self.response(&msg, m.from),
            Some(method) => {
                let method = method.to_string();
                self.request(&msg, &method, m.from, m.received_ms);
            }
        }
    }

    fn reply(&self, req: &Message<'_>, to: Peer, code: u16) {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        self.transport.send(
            to,
            wire::response(req, code, wire::reason_phrase(code), Some(&tag[..12]), &[]),
        );
    }

    fn request(&mut self, msg: &Message<'_>, method: &str, from: Peer, received_ms: u64) {
        let key = hash(msg.call_id());
        let branch = hash(msg.branch().unwrap_or(""));
        let same_call = |e: &Entry| *e.call_id == *msg.call_id();
        match method {
            "INVITE" if msg.to_tag().is_none() => {
                if let Some(e) = self.calls.get(&key).filter(|e| same_call(e)) {
                    if e.inv_branch != branch {
                        // The same request by another path (RFC 3261 §8.2.2.2).
                        return self.refuse(msg, from, 482, Disposition::Failed, received_ms);
                    }
                    return match &e.state {
                        State::Routing { .. } => self.transport_reply(msg, from, 100),
                        State::Live(_) => self.drive(key, Event::InviteRetransmit),
                    };
                }
                if let Some(t) = self.tombstones.get(&key) {
                    if t.inv_branch == branch {
                        // After its final reply: the same reply, no new row.
                        if let Some((code, tag)) = &t.reply {
                            self.transport.send(
                                from,
                                wire::response(
                                    msg,
                                    *code,
                                    wire::reason_phrase(*code),
                                    Some(tag),
                                    &[],
                                ),
                            );
                        }
                        return;
                    }
                }
                self.new_invite(msg, from, received_ms);
            }
            "CANCEL" => {
                let live = self
                    .calls
                    .get(&key)
                    .filter(|e| same_call(e) && e.inv_branch == branch);
                if let Some(e) = live {
                    self.transport_reply(msg, from, 200);
                    match &e.state {
                        State::Live(_) => self.drive(key, Event::Cancel),
                        State::Routing { .. } => {
                            if let Some(Entry {
                                state: State::Routing { canceled, .. },
                                ..
                            }) = self.calls.get_mut(&key)
                            {
                                *canceled = true;
                            }
                        }
                    }
                } else if self
                    .tombstones
                    .get(&key)
                    .is_some_and(|t| t.inv_branch == branch)
                {
                    self.transport_reply(msg, from, 200);
                } else if msg.to_tag().is_some() {
                    // CANCEL of a re-INVITE: hop by hop along the dialog.
                    self.in_dialog(msg, method, from);
                } else {
                    self.reply(msg, from, 481);
                }
            }
            "ACK" => {
                let ours = self
                    .calls
                    .get(&key)
                    .is_some_and(|e| same_call(e) && e.inv_branch == branch);
                if ours && msg.to_tag().is_some_and(|t| self.is_our_reply_tag(key, t)) {
                    // ACK of our non-2xx final reply: hop by hop, ends here.
                    return self.drive(key, Event::Ack);
                }
                if self
                    .tombstones
                    .get(&key)
                    .is_some_and(|t| t.inv_branch == branch)
                {
                    return;
                }
                if msg.to_tag().is_some() {
                    self.in_dialog(msg, method, from);
                }
            }
            _ if msg.to_tag().is_some() => self.in_dialog(msg, method, from),
            _ if !self.snap.is_trusted(from.addr.ip()) => {
                metrics::counter!("dialmark_untrusted_requests_total").increment(1);
                self.reply(msg, from, 403);
            }
            // Requests that exist only inside a dialog, without a To tag:
            // no such dialog (RFC 3261 §12.2.2), not "method not allowed".
            "BYE" | "PRACK" | "UPDATE" | "INFO" => self.reply(msg, from, 481),
            _ => self.reply(msg, from, 405),
        }
    }

    /// Whether `tag` is the To tag of the final reply the carrier got.
    fn is_our_reply_tag(&self, key: u64, tag: &str) -> bool {
        match self.calls.get(&key).map(|e| &e.state) {
            Some(State::Live(c)) => c.final_reply().is_some_and(|(_, t)| t == tag),
            _ => false,
        }
    }

    fn transport_reply(&self, msg: &Message<'_>, to: Peer, code: u16) {
        let tag = (code > 100).then_some("dialmark");
        self.transport.send(
            to,
            wire::response(msg, code, wire::reason_phrase(code), tag, &[]),
        );
    }

    /// Refuses a new INVITE from a carrier before routing: recorded, the
    /// reply retransmitted until the ACK (a call of its own).
    fn refuse(&mut self, msg: &Message<'_>, from: Peer, code: u16, d: Disposition, now: u64) {
        let mut setup = reject_setup(msg, &self.snap, NumberStatus::Unknown);
        setup.carrier_reliable = from.tcp.is_some();
        let (call, actions) = Call::refuse(
            msg.raw.to_vec(),
            setup,
            self.snap.policy.clone(),
            code,
            d,
            now,
        );
        let key = hash(msg.call_id());
        if self.calls.contains_key(&key) {
            // The Call-ID is busy (a merged request): refuse statelessly.
            let setup = reject_setup(msg, &self.snap, NumberStatus::Unknown);
            reject(
                msg,
                from,
                &setup,
                code,
                &[],
                d,
                now,
                &self.sinks,
                &self.transport,
            );
            return;
        }
        self.insert(
            key,
            Entry {
                call_id: msg.call_id().into(),
                carrier: from,
                carrier_back: carrier_back(msg, from),
                inv_branch: hash(msg.branch().unwrap_or("")),
                state: State::Live(Box::new(call)),
                timers: Vec::new(),
                bytes: 0,
            },
        );
        self.execute(key, actions);
    }

    /// Sheds a new call in overload, keeping only a tombstone so its
    /// retransmissions get the 503 again without a second row.
    fn shed(&mut self, msg: &Message<'_>, from: Peer, now: u64) {
        let (id, reply) = shed(msg, from, &self.snap, &self.sinks, &self.transport, now);
        let tag = wire::parse(&reply)
            .ok()
            .and_then(|m| m.to_tag().map(str::to_string))
            .unwrap_or_default();
        self.bury(
            hash(msg.call_id()),
            Tombstone {
                inv_branch: hash(msg.branch().unwrap_or("")),
                carrier: from,
                carrier_back: None,
                trunk: None,
                carrier_tag: hash(msg.from_tag().unwrap_or("")),
                trunk_tag: 0,
                reply: Some((503, tag.into())),
                answered: 0,
                call_id: id,
                expires_ms: 0,
            },
        );
    }

    fn new_invite(&mut self, msg: &Message<'_>, from: Peer, now: u64) {
        // Untrusted sources never get here: the dispatcher refuses them.
        if msg.max_forwards() == 0 {
            return self.refuse(msg, from, 483, Disposition::Failed, now);
        }
        let me = &self.snap.policy.me;
        let looped = |v: &str| {
            me.own()
                .iter()
                .any(|host| v.contains(&format!("{host};branch=z9hG4bK-dm-")))
        };
        if msg
            .headers
            .iter()
            .any(|h| h.name == "via" && looped(msg.value(h)))
        {
            return self.refuse(msg, from, 482, Disposition::Failed, now);
        }
        let raw_user = wire::uri_user(msg.uri().unwrap_or("")).unwrap_or("");
        let number = match self.snap.config.numbering.normalize(raw_user) {
            Ok(n) => n,
            Err(e) => {
                debug!(user = %raw_user, cause = %e, "request URI is not a phone number");
                return self.refuse(msg, from, 404, Disposition::RejectedUnknown, now);
            }
        };
        if self.draining {
            warn!(number = %number, "new call refused while draining (503)");
            return self.refuse(msg, from, 503, Disposition::Failed, now);
        }
        if self.overloaded || !self.shared.budget.fits(NEW_CALL_BYTES) {
            return self.shed(msg, from, now);
        }
        let key = hash(msg.call_id());
        if let Some(e) = self.calls.get(&key) {
            if *e.call_id != *msg.call_id() {
                // Two live Call-IDs with one 64-bit hash: refuse the newcomer.
                warn!(call.id = %msg.call_id(), "call-id hash collision; call refused");
                return self.refuse(msg, from, 500, Disposition::Failed, now);
            }
        }
        if self.tombstones.remove(&key).is_some() {
            // A new transaction on a finished call's Call-ID.
            self.account(TOMBSTONE_BYTES, 0);
            self.shared
                .counts
                .tombstones
                .fetch_sub(1, Ordering::Relaxed);
        }
        // 100 Trying at once: routing may wait on Redis.
        self.transport_reply(msg, from, 100);
        let caller = caller_of(msg, &self.snap);
        let entry = Entry {
            call_id: msg.call_id().into(),
            carrier: from,
            carrier_back: carrier_back(msg, from),
            inv_branch: hash(msg.branch().unwrap_or("")),
            state: State::Routing {
                bytes: msg.raw.to_vec(),
                received_ms: now,
                number: number.clone(),
                caller,
                canceled: false,
            },
            timers: Vec::new(),
            bytes: 0,
        };
        self.insert(key, entry);
        let dir = self.directory.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let lookup = dir.lookup(&number).await;
            let source = match &lookup {
                Lookup::Found(rec) if rec.status == NumberStatus::Active => {
                    dir.attribution(rec, (now / 1000) as u32).await
                }
                _ => Source::default(),
            };
            let _ = tx.send(Internal::Routed {
                key,
                lookup: Box::new(lookup),
                source: Box::new(source),
            });
        });
    }

    fn insert(&mut self, key: u64, mut e: Entry) {
        e.bytes = e.footprint();
        self.account(0, e.bytes);
        self.calls.insert(key, e);
        self.shared.counts.calls.fetch_add(1, Ordering::Relaxed);
    }

    fn internal(&mut self, i: Internal) {
        match i {
            Internal::Routed {
                key,
                lookup,
                source,
            } => self.routed(key, *lookup, *source),
            Internal::TransportError { key, attempt } => {
                self.drive(key, Event::TransportError { attempt })
            }
            Internal::Adopt {
                key,
                request,
                record,
            } => self.adopt(key, request, record.map(|r| *r)),
        }
    }

    /// An in-dialog request for a call of the pair's other node: with its
    /// record, the call is carried on here and the request handled again;
    /// without one, 481 as for any unknown dialog.
    fn adopt(&mut self, key: u64, request: Inbound, record: Option<DialogRecord>) {
        let Some(rec) = record else {
            if let Ok(msg) = wire::parse(&request.bytes) {
                if msg.method() != Some("ACK") {
                    self.reply(&msg, request.from, 481);
                }
            }
            return;
        };
        if !self.adopted.contains_key(&key) && !self.calls.contains_key(&key) {
            let Ok(msg) = wire::parse(&request.bytes) else {
                return;
            };
            info!(call_id = msg.call_id(), trunk.name = %rec.attempt.trunk, "carrying on a call the other node answered");
            metrics::counter!("dialmark_calls_adopted_total").increment(1);
            let route = Tombstone {
                inv_branch: 0,
                carrier: Peer {
                    addr: rec.carrier,
                    tcp: rec.carrier_tcp.then_some(NO_CONN),
                },
                carrier_back: rec.carrier_tcp.then_some(rec.carrier),
                trunk: Some((rec.trunk, rec.trunk_tcp)),
                carrier_tag: hash(&rec.carrier_tag),
                trunk_tag: hash(&rec.trunk_tag),
                reply: None,
                answered: rec.attempt.attempt,
                call_id: rec.row.call_id,
                expires_ms: 0,
            };
            let expires_ms = rec.answered_ms + self.snap.config.router.max_call_seconds * 1000;
            let dialog = match (&rec.caller, &rec.callee) {
                (Some(caller), Some(callee)) => {
                    let leg = |l: &Leg| Leg {
                        cseq: l.cseq.saturating_add(ADOPTED_CSEQ_MARGIN),
                        ..l.clone()
                    };
                    Some(Dialog {
                        call_id: msg.call_id().into(),
                        me: self.snap.policy.me.clone(),
                        caller: leg(caller),
                        callee: leg(callee),
                    })
                }
                _ => None,
            };
            self.adopted.insert(
                key,
                Adopted {
                    call_id: msg.call_id().into(),
                    route,
                    record: rec,
                    expires_ms,
                    dialog,
                },
            );
        }
        self.inbound(request, false);
    }

    /// The BYE of an adopted call: its final rows, written here.
    fn close_adopted(&mut self, key: u64, a: Adopted) {
        let (row, attempt) = a.record.closed(crate::now_ms());
        self.end_adopted(key, &a.call_id, a.route, row, attempt);
    }

    /// An adopted call is over: its final rows, its record gone, its
    /// tombstone.
    fn end_adopted(
        &mut self,
        key: u64,
        call_id: &str,
        route: Tombstone,
        row: CallRow,
        attempt: CallAttempt,
    ) {
        if let Some(h) = &self.sinks.handover {
            h.del(call_id);
        }
        self.attempt_row(attempt, crate::now_ms());
        self.record(row);
        self.bury(key, route);
    }

    /// An adopted call at `router.max_call_seconds` (its BYE never came):
    /// both sides hung up as its own node would have, its rows closed at
    /// the limit as `timeout`, its record gone.
    fn hang_up_adopted(&mut self, key: u64, a: Adopted) {
        let Adopted {
            call_id,
            route,
            record,
            expires_ms,
            dialog,
        } = a;
        match dialog {
            Some(mut d) => {
                warn!(call_id = %call_id, trunk.name = %record.attempt.trunk, "adopted call at router.max_call_seconds: hanging up both sides");
                let id = record.row.call_id;
                let to_caller = d.bye_to_caller(&call::branch(&id, 0, true));
                self.send_repeated(Hop::Carrier(route.carrier, route.carrier_back), to_caller);
                if let Some((addr, tcp)) = route.trunk {
                    let to_callee =
                        d.bye_to_callee(&call::branch(&id, record.attempt.attempt, true));
                    self.send_repeated(Hop::Trunk(addr, tcp), to_callee);
                }
            }
            None => {
                warn!(call_id = %call_id, "adopted call at router.max_call_seconds: its record (from an older node) cannot make BYEs; closed on record only")
            }
        }
        let (mut row, attempt) = record.closed(expires_ms);
        row.disposition = Disposition::Timeout;
        self.end_adopted(key, &call_id, route, row, attempt);
    }

    /// Sends a request the node originates now and, over UDP, again after
    /// each of [`ADOPTED_BYE_RESENDS_MS`].
    fn send_repeated(&self, to: Hop, bytes: Vec<u8>) {
        let udp = match to {
            Hop::Trunk(_, tcp) => !tcp,
            Hop::Carrier(p, _) => p.tcp.is_none(),
        };
        if udp {
            let (transport, bytes) = (self.transport.clone(), bytes.clone());
            tokio::spawn(async move {
                let mut at = 0;
                for due in ADOPTED_BYE_RESENDS_MS {
                    tokio::time::sleep(Duration::from_millis(due - at)).await;
                    at = due;
                    send_hop(&transport, to, bytes.clone());
                }
            });
        }
        send_hop(&self.transport, to, bytes);
    }

    /// What the other node of the pair needs to carry `e`'s answered call
    /// on.
    fn dialog_record(e: &Entry, c: &Call) -> Option<DialogRecord> {
        let (attempt, started_ms, answered_ms) = c.answered_attempt_row(crate::now_ms())?;
        let (trunk, trunk_tcp) = c.answered_trunk()?;
        Some(DialogRecord {
            row: c.progress_row()?,
            attempt,
            answered_ms,
            started_ms,
            carrier: e.carrier_back.unwrap_or(e.carrier.addr),
            carrier_tcp: e.carrier.tcp.is_some(),
            trunk,
            trunk_tcp,
            carrier_tag: c.carrier_tag().to_string(),
            trunk_tag: c.answered_tag()?.to_string(),
            caller: c.dialog().map(|d| d.caller.clone()),
            callee: c.dialog().map(|d| d.callee.clone()),
        })
    }

    fn routed(&mut self, key: u64, lookup: Lookup, source: Source) {
        let Some(e) = self.calls.get(&key) else {
            return;
        };
        let State::Routing {
            bytes,
            received_ms,
            number,
            caller,
            canceled,
        } = &e.state
        else {
            return;
        };
        let (received_ms, canceled, carrier) = (*received_ms, *canceled, e.carrier);
        let bytes = bytes.clone();
        let carrier_via = match wire::parse(&bytes) {
            Ok(msg) => msg.top_via().and_then(|v| wire::stamp_via(v, carrier.addr)),
            Err(_) => return,
        };
        let call_id = e.call_id.clone();
        let snap = self.snap.clone();
        let mut setup = Setup {
            number: number.clone(),
            caller: caller.clone(),
            site: String::new(),
            pool: String::new(),
            status: NumberStatus::Unknown,
            destinations: Vec::new(),
            trunks: Vec::new(),
            source,
            headers: Vec::new(),
            carrier_reliable: carrier.tcp.is_some(),
            carrier_via,
        };
        let rec: RouteRecord = match lookup {
            Lookup::Found(rec) => rec,
            Lookup::Unknown => {
                info!(number = %setup.number, "call to an unknown number; recorded and rejected");
                return self.reject_routed(
                    key,
                    bytes,
                    setup,
                    404,
                    Disposition::RejectedUnknown,
                    received_ms,
                );
            }
            Lookup::Unavailable => {
                tracing::error!(number = %setup.number, "number lookup impossible (Redis down, nothing cached); call refused");
                // Not 503: carrier SBCs take a 503 as "this node is down".
                let code = snap.policy.all_failed_code;
                return self.reject_routed(
                    key,
                    bytes,
                    setup,
                    code,
                    Disposition::Failed,
                    received_ms,
                );
            }
        };
        setup.site = rec.site.clone();
        setup.pool = rec.pool.clone();
        setup.status = rec.status;
        let verdict = verdict(rec.status, canceled, snap.config.router.reject_code);
        if let Some((code, disposition)) = verdict {
            info!(number = %setup.number, status = rec.status.as_str(), code, "call recorded and rejected");
            return self.reject_routed(key, bytes, setup, code, disposition, received_ms);
        }
        setup.destinations = rec.destinations.clone();
        setup.trunks = snap.plan(&rec.trunk_group, crate::now_ms());
        let rc = &snap.config.router;
        setup.headers = vec![(
            rc.source_header.clone(),
            directory::source_header(&setup.source),
        )];
        if !setup.source.session_id.is_empty() {
            setup
                .headers
                .push((rc.session_header.clone(), setup.source.session_id.clone()));
        }
        let span = info_span!("call", call.id = %call_id, number = %setup.number, site = %rec.site, shard = self.id);
        let _g = span.enter();
        info!(attribution = ?setup.source.attribution, trunks = setup.trunks.len(), "routing call");
        let now = crate::now_ms().max(received_ms);
        metrics::counter!("dialmark_router_calls_routed_total", "shard" => self.id.to_string())
            .increment(1);
        let (call, actions) = Call::start(bytes, setup, snap.policy.clone(), now);
        if let Some(e) = self.calls.get_mut(&key) {
            e.state = State::Live(Box::new(call));
        }
        self.execute(key, actions);
    }

    /// Refuses a routed call (number not active, lookup impossible): the
    /// entry becomes the refused call.
    #[allow(clippy::too_many_arguments)]
    fn reject_routed(
        &mut self,
        key: u64,
        invite: Vec<u8>,
        setup: Setup,
        code: u16,
        d: Disposition,
        received_ms: u64,
    ) {
        let (call, actions) = Call::refuse(
            invite,
            setup,
            self.snap.policy.clone(),
            code,
            d,
            received_ms,
        );
        if let Some(e) = self.calls.get_mut(&key) {
            e.state = State::Live(Box::new(call));
        }
        self.execute(key, actions);
    }

    fn remove(&mut self, key: u64) -> Option<Entry> {
        let mut e = self.calls.remove(&key)?;
        for (_, h) in e.timers.drain(..) {
            self.timers.cancel(h);
        }
        self.account(e.bytes, 0);
        self.shared.counts.calls.fetch_sub(1, Ordering::Relaxed);
        Some(e)
    }

    fn bury(&mut self, key: u64, t: Tombstone) {
        if self.tombstones.insert(key, t).is_none() {
            self.account(0, TOMBSTONE_BYTES);
            self.shared
                .counts
                .tombstones
                .fetch_add(1, Ordering::Relaxed);
        }
        self.expiry.push_back((crate::now_ms() + TOMBSTONE_MS, key));
    }

    fn drive(&mut self, key: u64, event: Event<'_>) {
        let Some(Entry {
            state: State::Live(call),
            ..
        }) = self.calls.get_mut(&key)
        else {
            return;
        };
        let actions = call.handle(event, crate::now_ms());
        self.execute(key, actions);
    }

    fn execute(&mut self, key: u64, actions: Vec<Action>) {
        let now = crate::now_ms();
        for a in actions {
            let Some(e) = self.calls.get_mut(&key) else {
                return;
            };
            match a {
                Action::ToCarrier(b) => {
                    self.transport.send_or_reopen(e.carrier, e.carrier_back, b);
                }
                Action::ToTrunk {
                    attempt,
                    addr,
                    tcp,
                    bytes,
                } => {
                    let invite = bytes.starts_with(b"INVITE");
                    if tcp {
                        let on_fail = invite.then(|| {
                            let tx = self.internal.clone();
                            Box::new(move || {
                                let _ = tx.send(Internal::TransportError { key, attempt });
                            }) as crate::transport::OnFail
                        });
                        self.transport.send_tcp(addr, bytes, on_fail);
                    } else if !self.transport.send_udp(addr, &bytes) && invite {
                        self.drive(key, Event::TransportError { attempt });
                    }
                }
                Action::Arm { timer, at_ms } => {
                    if let Some(i) = e.timers.iter().position(|(t, _)| *t == timer) {
                        let (_, h) = e.timers.swap_remove(i);
                        self.timers.cancel(h);
                    }
                    let h = self.timers.arm(at_ms, (key, timer));
                    e.timers.push((timer, h));
                }
                Action::Disarm(timer) => {
                    if let Some(i) = e.timers.iter().position(|(t, _)| *t == timer) {
                        let (_, h) = e.timers.swap_remove(i);
                        self.timers.cancel(h);
                    }
                }
                Action::AttemptStarted { trunk, .. } => {
                    if let Some(t) = self.snap.trunk(&trunk) {
                        t.live.active.fetch_add(1, Ordering::Relaxed);
                        t.live.count_attempt(now / 1000);
                    }
                }
                Action::Attempt(row) => self.attempt_row(*row, now),
                Action::Record(row) => {
                    if let (Some(h), State::Live(c)) = (&self.sinks.handover, &e.state) {
                        // Answered or over: off the ringing list (a no-op
                        // for a call that never rang).
                        h.unring(&e.call_id);
                        if row.ended == 0 {
                            if let Some(rec) = Self::dialog_record(e, c) {
                                h.put(&e.call_id, &rec);
                            }
                        } else if row.answered != 0 {
                            h.del(&e.call_id);
                        }
                    }
                    self.record(*row)
                }
                Action::Started(row) => {
                    if let Some(h) = &self.sinks.handover {
                        h.ring(&e.call_id, &row);
                    }
                    self.sinks.events.started(*row)
                }
                Action::TrunkTimeout(trunk) => {
                    let _ = self.control.try_send(ControlMsg::TrunkTimeout { trunk });
                }
                Action::TrunkFailed { trunk, reason } => {
                    let _ = self
                        .control
                        .try_send(ControlMsg::TrunkFailed { trunk, reason });
                }
                Action::TrunkReplied(trunk) => {
                    if let Some(t) = self.snap.trunk(&trunk) {
                        t.live.last_reply_ms.store(now, Ordering::Relaxed);
                    }
                }
                Action::Answered { trunk, pdd_ms } => {
                    if let Some(t) = self.snap.trunk(&trunk) {
                        t.live.attempt_done(
                            now,
                            Sample {
                                outcome: Outcome::Answered,
                                final_code: 200,
                                pdd_ms,
                                failover: false,
                            },
                        );
                    }
                }
            }
        }
        self.settle(key);
    }

    /// After a call moved: its accounting, and its tombstone once done.
    fn settle(&mut self, key: u64) {
        let Some(e) = self.calls.get_mut(&key) else {
            return;
        };
        let old = e.bytes;
        e.bytes = e.footprint();
        let new = e.bytes;
        let done = matches!(&e.state, State::Live(c) if c.is_done());
        self.account(old, new);
        if !done {
            return;
        }
        let e = self.remove(key).expect("present");
        let State::Live(call) = e.state else { return };
        let t = Tombstone {
            inv_branch: e.inv_branch,
            carrier: e.carrier,
            carrier_back: e.carrier_back,
            trunk: call.answered_trunk(),
            carrier_tag: hash(call.carrier_tag()),
            trunk_tag: call.answered_tag().map_or(0, hash),
            reply: call.final_reply().map(|(c, t)| (c, t.into())),
            answered: call.answered_attempt(),
            call_id: call.id,
            expires_ms: 0,
        };
        self.bury(key, t);
    }

    /// A call's row, and the journal of answered calls: opened at the
    /// answer, closed once the final row is in the sink's spool.
    fn record(&mut self, row: CallRow) {
        let id = row.call_id;
        let (opens, closes) = (row.ended == 0, row.answered != 0 && row.ended != 0);
        if opens {
            if let Err(e) = self.journal.opened(&row) {
                tracing::error!(cause = %e, "journal write failed: a crash now would lose this call's end");
            }
        }
        record(&self.sinks, row);
        if closes {
            if let Err(e) = self.journal.closed(id) {
                tracing::error!(cause = %e, "journal write failed");
            }
        }
        if self.journal.wants_rotation() {
            match self.journal.start_rotation() {
                Ok(()) => {
                    self.journal_copy = self
                        .calls
                        .iter()
                        .filter(|(_, e)| matches!(e.state, State::Live(_)))
                        .map(|(k, _)| *k)
                        .collect();
                }
                Err(e) => tracing::error!(cause = %e, "journal rotation failed"),
            }
        }
    }

    /// A batch of a journal rotation's copy (see [`crate::journal`]) when
    /// the shard is idle or its turn came; the old file goes once every
    /// call up is in the new one.
    fn copy_journal(&mut self, idle: bool, now: u64) {
        if !self.journal.rotating()
            || !(idle || now >= self.journal_copied_ms + JOURNAL_COPY_EVERY_MS)
        {
            return;
        }
        self.journal_copied_ms = now;
        let from = self.journal_copy.len().saturating_sub(JOURNAL_COPY_BATCH);
        let keys = self.journal_copy.split_off(from);
        let calls = &self.calls;
        let rows = keys
            .iter()
            .filter_map(|k| match calls.get(k).map(|e| &e.state) {
                Some(State::Live(c)) => c.progress_row(),
                _ => None,
            });
        let done = match self.journal.copy(rows) {
            // The old file's removal finishes on its own thread.
            Ok(()) if self.journal_copy.is_empty() => self.journal.finish_rotation().map(|_| ()),
            Ok(()) => Ok(()),
            Err(e) => {
                // The old file stays (recovery reads it too); the copy stops.
                self.journal_copy.clear();
                self.journal.keep_old();
                Err(e)
            }
        };
        if let Err(e) = done {
            tracing::error!(cause = %e, "journal rotation failed");
        }
        if self.journal_copy.is_empty() {
            // The list was as long as the calls up at the rotation's start
            // (800 KB per shard at the bench's peak): kept, it outlives the load.
            self.journal_copy = Vec::new();
        }
    }

    /// An attempt's row: the trunk's call count, the status windows, the sink.
    fn attempt_row(&mut self, row: CallAttempt, now: u64) {
        let trunk = row.trunk.clone();
        let update = matches!(
            row.outcome,
            Outcome::CancelledLate | Outcome::AnsweredLateReleased
        );
        if update {
            info!(trunk.name = %trunk, outcome = ?row.outcome, "late reply on an abandoned attempt");
            metrics::counter!("dialmark_abandoned_branch_replies_total", "trunk" => trunk, "outcome" => format!("{:?}", row.outcome)).increment(1);
        } else {
            if let Some(t) = self.snap.trunk(&trunk) {
                let _ = t
                    .live
                    .active
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                        Some(v.saturating_sub(1))
                    });
                // An answer was counted at the answer (Action::Answered);
                // its end says how long it lasted.
                if row.outcome == Outcome::Answered {
                    t.live.call_ended(now, row.talk_ms);
                } else {
                    t.live.attempt_done(
                        now,
                        Sample {
                            outcome: row.outcome,
                            final_code: row.final_code,
                            pdd_ms: row.pdd_ms,
                            failover: row.failover == 1,
                        },
                    );
                }
            }
            metrics::counter!("dialmark_attempts_total", "trunk" => trunk.clone(), "code" => row.final_code.to_string()).increment(1);
            if row.pdd_ms > 0 {
                metrics::histogram!("dialmark_pdd_seconds", "trunk" => trunk.clone())
                    .record(f64::from(row.pdd_ms) / 1000.0);
            }
            if row.failover == 1 {
                metrics::counter!("dialmark_failovers_total", "trunk" => trunk.clone())
                    .increment(1);
                warn!(trunk.name = %trunk, code = row.final_code, reason = %row.reason, "trunk failed; trying next");
                self.shared.failed_over(now, &trunk);
            }
        }
        if self.sinks.attempts.push(row).is_err() {
            tracing::error!("attempt row refused by the sink");
        }
    }

    fn response(&mut self, msg: &Message<'_>, from: Peer) {
        let branch = msg.branch().unwrap_or("");
        if branch.starts_with(FORWARD_BRANCH) {
            return self.forward_response(msg);
        }
        let Some((id, attempt, _)) = call::parse_branch(branch) else {
            debug!(from = %from.addr, "response matching no transaction dropped");
            return;
        };
        let key = hash(msg.call_id());
        if let Some(Entry {
            state: State::Live(c),
            ..
        }) = self.calls.get(&key)
        {
            if c.id.simple().to_string() != id {
                return;
            }
            // Only the address the request went to may answer it.
            let expected = if attempt == 0 {
                None
            } else {
                c.attempt_addr(attempt)
            };
            if attempt != 0 && expected != Some(from.addr) {
                metrics::counter!("dialmark_sip_spoofed_responses_total").increment(1);
                warn!(from = %from.addr, expected = ?expected, "response from an address the request did not go to; dropped");
                return;
            }
            return self.drive(key, Event::Response { attempt, msg });
        }
        if let Some(t) = self.tombstones.get(&key) {
            if t.call_id.simple().to_string() != id {
                return;
            }
            if msg.status().is_some_and(|c| (200..300).contains(&c))
                && msg.cseq().is_some_and(|(_, m)| m == "INVITE")
            {
                if attempt == t.answered && t.trunk.map(|(a, _)| a) == Some(from.addr) {
                    // The answer's 2xx again: the caller ACKs it.
                    self.transport.send_or_reopen(
                        t.carrier,
                        t.carrier_back,
                        wire::strip_top_via(msg),
                    );
                } else {
                    self.release_stray_answer(msg, from, attempt);
                }
            }
            return;
        }
        // A 2xx for a call long gone: never leave the trunk's phone off hook.
        if msg.status().is_some_and(|c| (200..300).contains(&c))
            && msg.cseq().is_some_and(|(_, m)| m == "INVITE")
            && self.snap.trunks.iter().any(|t| t.cfg.address == from.addr)
        {
            self.release_stray_answer(msg, from, attempt);
        }
    }

    /// ACK and BYE for a 2xx the node keeps no call for, back the way it
    /// came.
    fn release_stray_answer(&self, ok: &Message<'_>, from: Peer, attempt: u8) {
        let me = &self.snap.policy.me;
        let tcp = from.tcp.is_some();
        let base = ok.branch().unwrap_or("z9hG4bK-dm-x-0");
        warn!(trunk = %from.addr, attempt, "2xx for a call that is over; ACK and BYE sent");
        for b in [
            crate::originate::ack_for_2xx(ok, me, tcp, &format!("{base}-ack")),
            crate::originate::bye_for_2xx(ok, me, tcp, &format!("{base}-bye")),
        ] {
            self.transport.send(from, b);
        }
    }

    /// A reply to an in-dialog request we forwarded: to the next Via.
    fn forward_response(&self, msg: &Message<'_>) {
        let conn = msg
            .top_via()
            .and_then(|v| wire::param(v, "dmc"))
            .and_then(|c| c.parse::<u64>().ok());
        let bytes = wire::strip_top_via(msg);
        let Ok(up) = wire::parse(&bytes) else { return };
        let Some((addr, tcp)) = up.top_via().and_then(wire::via_destination) else {
            debug!("reply to a forwarded request with no usable Via; dropped");
            return;
        };
        match (tcp, conn) {
            // Over the connection the request came on, else a new one to
            // where the Via says (RFC 3261 §18.2.2).
            (true, Some(id)) => {
                let peer = Peer {
                    addr,
                    tcp: Some(id),
                };
                self.transport.send_or_reopen(peer, Some(addr), bytes)
            }
            (true, None) => self.transport.send_tcp(addr, bytes, None),
            (false, _) => {
                self.transport.send_udp(addr, &bytes);
            }
        }
    }

    /// An in-dialog request (early or confirmed dialog): to the other side
    /// of the dialog its tags name, whoever sent it.
    fn in_dialog(&mut self, msg: &Message<'_>, method: &str, from: Peer) {
        let is_ack = method == "ACK";
        if msg.max_forwards() == 0 {
            if !is_ack {
                self.reply(msg, from, 483);
            }
            return;
        }
        let key = hash(msg.call_id());
        let (from_tag, to_tag) = (msg.from_tag().unwrap_or(""), msg.to_tag().unwrap_or(""));
        let cseq = msg.cseq().map_or(0, |(n, _)| n);
        let target: Option<Hop> = match self.calls.get_mut(&key) {
            Some(Entry {
                state: State::Live(c),
                carrier,
                carrier_back,
                call_id,
                ..
            }) if **call_id == *msg.call_id() => {
                if from_tag == c.carrier_tag() {
                    c.saw_request(true, cseq);
                    c.trunk_for_tag(to_tag).map(|(a, tcp)| Hop::Trunk(a, tcp))
                } else if to_tag == c.carrier_tag() && c.callee_tag_live(from_tag) {
                    c.saw_request(false, cseq);
                    Some(Hop::Carrier(*carrier, *carrier_back))
                } else {
                    None
                }
            }
            _ => self
                .tombstones
                .get(&key)
                .or_else(|| self.adopted.get(&key).map(|a| &a.route))
                .and_then(|t| {
                    let (f, to) = (hash(from_tag), hash(to_tag));
                    if t.trunk_tag == 0 {
                        None
                    } else if (f, to) == (t.carrier_tag, t.trunk_tag) {
                        t.trunk.map(|(a, tcp)| Hop::Trunk(a, tcp))
                    } else if (f, to) == (t.trunk_tag, t.carrier_tag) {
                        Some(Hop::Carrier(t.carrier, t.carrier_back))
                    } else {
                        None
                    }
                }),
        };
        let Some(to) = target else {
            if let Some(h) = self
                .sinks
                .handover
                .clone()
                .filter(|_| !self.adopted.contains_key(&key) && !self.calls.contains_key(&key))
            {
                // Perhaps a call the pair's other node answered: its
                // record decides (481 without one).
                let (tx, call_id) = (self.internal.clone(), msg.call_id().to_string());
                let request = Inbound {
                    bytes: msg.raw.to_vec(),
                    from,
                    received_ms: crate::now_ms(),
                };
                tokio::spawn(async move {
                    let record = h.load(&call_id).await.map(Box::new);
                    let _ = tx.send(Internal::Adopt {
                        key,
                        request,
                        record,
                    });
                });
                return;
            }
            if !is_ack {
                // Never an open relay: not one of our dialogs.
                self.reply(msg, from, 481);
            }
            return;
        };
        let from_caller = matches!(to, Hop::Trunk(..));
        if let Some(d) = self.adopted.get_mut(&key).and_then(|a| a.dialog.as_mut()) {
            d.saw_request(from_caller, cseq);
        }
        let me = &self.snap.policy.me;
        let branch = format!(
            "{FORWARD_BRANCH}{:016x}",
            dialmark_schemas::fnv1a(
                format!("{}|{}", msg.branch().unwrap_or(""), msg.call_id()).as_bytes()
            )
        );
        // The reply comes back on the connection the request came on.
        let conn = from.tcp.map(|id| format!(";dmc={id}")).unwrap_or_default();
        let to_tcp = match to {
            Hop::Trunk(_, tcp) => tcp,
            Hop::Carrier(p, _) => p.tcp.is_some(),
        };
        let via = format!("{}{conn}", me.via(to_tcp, &branch));
        let stamped = msg.top_via().and_then(|v| wire::stamp_via(v, from.addr));
        let bytes = Forward {
            msg,
            uri: None,
            via: &via,
            sender_via: stamped.as_deref(),
            record_route: None,
            own: &me.own(),
            max_forwards: msg.max_forwards() - 1,
            add: &[],
        }
        .build();
        debug!(method, from_caller, "in-dialog request forwarded");
        send_hop(&self.transport, to, bytes);
        if method == "BYE" {
            match self.adopted.remove(&key) {
                Some(a) => self.close_adopted(key, a),
                None => self.drive(key, Event::Bye { from_caller }),
            }
        }
    }

    /// The drain deadline: every call still here is hung up.
    fn release_all(&mut self) {
        let keys: Vec<u64> = self.calls.keys().copied().collect();
        info!(
            shard = self.id,
            calls = keys.len(),
            "drain deadline: hanging up calls in progress"
        );
        for key in keys {
            self.drive(key, Event::Release);
        }
    }
}

/// What a call to a number of this status gets: routed (`None`) or
/// refused with this code and recorded with this disposition. A caller
/// who cancelled while the number was looked up is not routed either.
pub fn verdict(
    status: NumberStatus,
    canceled: bool,
    reject_code: u16,
) -> Option<(u16, Disposition)> {
    match status {
        NumberStatus::Active if canceled => Some((487, Disposition::Abandoned)),
        NumberStatus::Active => None,
        NumberStatus::Quarantine => Some((reject_code, Disposition::RejectedQuarantine)),
        NumberStatus::Stock => Some((reject_code, Disposition::RejectedStock)),
        NumberStatus::Unknown => Some((404, Disposition::RejectedUnknown)),
    }
}

/// The next hop of an in-dialog request.
#[derive(Debug, Clone, Copy)]
enum Hop {
    /// A trunk (over TCP or not).
    Trunk(SocketAddr, bool),
    /// The carrier, and where it listens if its TCP connection is gone.
    Carrier(Peer, Option<SocketAddr>),
}

fn send_hop(transport: &Arc<Transport>, to: Hop, bytes: Vec<u8>) {
    match to {
        Hop::Trunk(addr, true) => transport.send_tcp(addr, bytes, None),
        Hop::Trunk(addr, false) => {
            transport.send_udp(addr, &bytes);
        }
        Hop::Carrier(peer, back) => transport.send_or_reopen(peer, back, bytes),
    }
}

/// Where a carrier that reached us over TCP listens: its Via's sent-by
/// (RFC 3261 §18.2.2), to reopen a connection it closed.
fn carrier_back(msg: &Message<'_>, from: Peer) -> Option<SocketAddr> {
    from.tcp?;
    msg.top_via()
        .and_then(wire::via_destination)
        .map(|(addr, _)| addr)
}

/// The setup of a call refused before routing.
pub(crate) fn reject_setup(msg: &Message<'_>, snap: &Snapshot, status: NumberStatus) -> Setup {
    let raw_user = wire::uri_user(msg.uri().unwrap_or("")).unwrap_or("");
    let number = snap
        .config
        .numbering
        .normalize(raw_user)
        .unwrap_or_else(|_| raw_user.to_string());
    Setup {
        number,
        caller: caller_of(msg, snap),
        site: String::new(),
        pool: String::new(),
        status,
        destinations: Vec::new(),
        trunks: Vec::new(),
        source: Source::default(),
        headers: Vec::new(),
        carrier_reliable: false,
        carrier_via: None,
    }
}

fn caller_of(msg: &Message<'_>, snap: &Snapshot) -> String {
    wire::uri_user(msg.header("from").unwrap_or(""))
        .map(|u| {
            snap.config
                .numbering
                .normalize(u)
                .unwrap_or_else(|_| u.to_string())
        })
        .unwrap_or_default()
}

/// Refuses a new INVITE in overload: 503 with Retry-After, recorded as
/// `overload` (the lost-call audit shows every one).
pub fn shed(
    msg: &Message<'_>,
    from: Peer,
    snap: &Snapshot,
    sinks: &Sinks,
    transport: &Transport,
    now: u64,
) -> (uuid::Uuid, Vec<u8>) {
    metrics::counter!("dialmark_calls_shed_total").increment(1);
    let setup = reject_setup(msg, snap, NumberStatus::Unknown);
    let retry = [(
        "Retry-After",
        snap.config.router.retry_after_seconds.to_string(),
    )];
    reject(
        msg,
        from,
        &setup,
        503,
        &retry,
        Disposition::Overload,
        now,
        sinks,
        transport,
    )
}

/// Sends the refusal and records the call; returns its id and the reply.
#[allow(clippy::too_many_arguments)]
fn reject(
    msg: &Message<'_>,
    from: Peer,
    setup: &Setup,
    code: u16,
    extra: &[(&str, String)],
    d: Disposition,
    now: u64,
    sinks: &Sinks,
    transport: &Transport,
) -> (uuid::Uuid, Vec<u8>) {
    let (bytes, row) = Call::reject(msg, setup, code, extra, d, now);
    transport.send(from, bytes.clone());
    let id = row.call_id;
    record(sinks, row);
    (id, bytes)
}

/// A call's row: counted, then to the sink (an answered call's first row,
/// `ended` = 0, is counted at its end).
pub fn record(sinks: &Sinks, row: CallRow) {
    if row.ended != 0 || row.disposition != Disposition::Answered {
        metrics::counter!("dialmark_calls_total", "disposition" => row.disposition.as_str())
            .increment(1);
        if row.number_status == NumberStatus::Quarantine
            || row.disposition == Disposition::RejectedUnknown
        {
            metrics::counter!("dialmark_calls_to_retired_numbers_total").increment(1);
        }
    }
    if sinks.calls.push(row).is_err() {
        tracing::error!("call row refused by the sink");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{Policy, TrunkRef};
    use dialmark_schemas::rows::Attribution;

    /// A carrier INVITE as SIPp sends it, with an SDP body.
    fn invite() -> Vec<u8> {
        let sdp = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
        format!(
            "INVITE sip:84950000001@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{b}\r\n\
             From: sipp <sip:+79161234567@127.0.0.1:5070>;tag=1234SIPpTag001\r\nTo: <sip:84950000001@127.0.0.1:5060>\r\n\
             Call-ID: 1-1234@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: sip:sipp@127.0.0.1:5070\r\nMax-Forwards: 70\r\n\
             Subject: Performance Test\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len(),
            b = "x".repeat(20),
        )
        .into_bytes()
    }

    fn setup() -> Setup {
        Setup {
            number: "+74950000001".into(),
            caller: "+79161234567".into(),
            site: "shop".into(),
            pool: "shop-main".into(),
            status: NumberStatus::Active,
            destinations: vec!["+74951234567".into()],
            trunks: vec![TrunkRef {
                name: "trunk-a".into(),
                addr: "127.0.0.1:5091".parse().unwrap(),
                transport: Default::default(),
            }],
            source: Source {
                attribution: Attribution::LiveLease,
                session_id: "4b1f0c2d9e8a4f6b8c7d6e5f4a3b2c1d".into(),
                visitor_id: "9e8a4f6b8c7d6e5f4a3b2c1d4b1f0c2d".into(),
                utm_source: "google".into(),
                utm_medium: "cpc".into(),
                utm_campaign: "spring".into(),
                gclid: "EAIaIQobChMI".into(),
                landing_url: "https://shop.example/landing?utm_source=google&utm_campaign=spring"
                    .into(),
                referrer: "https://www.google.com/".into(),
                ..Source::default()
            },
            headers: vec![(
                "X-Dialmark-Source".into(),
                "attribution=live_lease; utm_source=google; utm_campaign=spring".into(),
            )],
            carrier_reliable: false,
            carrier_via: None,
        }
    }

    fn policy() -> Policy {
        crate::shared::policy(&dialmark_schemas::config::Config::from_toml("").unwrap())
    }

    fn entry(state: State) -> Entry {
        let mut e = Entry {
            call_id: "1-1234@127.0.0.1".into(),
            carrier: Peer::udp("127.0.0.1:5070".parse().unwrap()),
            carrier_back: None,
            inv_branch: 1,
            state,
            timers: Vec::with_capacity(4),
            bytes: 0,
        };
        e.bytes = e.footprint();
        e
    }

    /// What a call holds in each state, against the budget's per-call
    /// estimate (benches/README.md quotes these).
    #[test]
    fn footprints_fit_the_budget_estimate() {
        let routing = entry(State::Routing {
            bytes: invite(),
            received_ms: 0,
            number: "+74950000001".into(),
            caller: "+79161234567".into(),
            canceled: false,
        });
        let (mut call, out) = Call::start(invite(), setup(), policy(), 1_000);
        let inv = out
            .iter()
            .find_map(|a| match a {
                Action::ToTrunk { bytes, .. } => Some(bytes.clone()),
                _ => None,
            })
            .unwrap();
        let inv = wire::parse(&inv).unwrap();
        let ring = wire::response(&inv, 180, "Ringing", Some("trunktag"), &[]);
        call.handle(
            Event::Response {
                attempt: 1,
                msg: &wire::parse(&ring).unwrap(),
            },
            1_100,
        );
        let ringing = entry(State::Live(Box::new(call)));
        let (mut call, _) = Call::start(invite(), setup(), policy(), 1_000);
        let ok = wire::response(
            &inv,
            200,
            "OK",
            Some("trunktag"),
            &[("Contact", "<sip:pbx@127.0.0.1:5091>".into())],
        );
        call.handle(
            Event::Response {
                attempt: 1,
                msg: &wire::parse(&ok).unwrap(),
            },
            2_000,
        );
        assert!(call.is_answered());
        let dialog = entry(State::Live(Box::new(call)));
        eprintln!(
            "bytes: routing {} ringing {} dialog {} tombstone {}",
            routing.bytes, ringing.bytes, dialog.bytes, TOMBSTONE_BYTES
        );
        assert!(routing.bytes < ringing.bytes);
        assert!(
            ringing.bytes <= NEW_CALL_BYTES,
            "a ringing call fits the estimate the budget checks"
        );
        assert!(
            dialog.bytes < ringing.bytes,
            "an answered call drops its INVITE copies"
        );
        assert!(dialog.bytes <= 4 * 1024, "{}", dialog.bytes);
    }
}
