//! One inbound call as a state machine: the carrier's INVITE server
//! transaction (final replies retransmitted until ACK, Timers G/H), serial
//! forwarding attempts over the trunk plan (trunk failover, destination
//! hunting), the caller's CANCEL, abandoned branches (CANCEL on a late
//! 1xx, ACK + BYE on a late 2xx), the dialog until BYE (released both
//! ways at the maximum duration or the drain deadline), and the
//! `call_attempts` / `calls` rows. Pure: it takes an [`Event`] and the
//! current time in milliseconds and returns [`Action`]s; the shard does
//! the I/O and runs the timers.

use std::net::SocketAddr;

use dialmark_schemas::rows::{
    Attribution, Call as CallRow, CallAttempt, Confidence, Disposition, NumberStatus, Outcome,
};
use uuid::Uuid;

use dialmark_schemas::config::TrunkTransport;

use crate::dialog::Dialog;
use crate::originate;
use crate::wire::{self, Forward, Message};

/// SIP timer T1 (RFC 3261 §17.1.1.1).
pub const T1_MS: u64 = 500;
/// SIP timer T2: the longest retransmission interval of a reply or a
/// non-INVITE request.
pub const T2_MS: u64 = 4_000;
/// 64·T1 (Timers B, F, H): how long a transaction waits for its peer.
pub const TRANSACTION_MS: u64 = 64 * T1_MS;

/// Call timing and policy, from `[router]` config.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub provisional_timeout_ms: u64,
    /// No 180/183/2xx within this long of the INVITE ("100 Trying, then
    /// silence"): fail over.
    pub ringing_timeout_ms: u64,
    pub ring_timeout_ms: u64,
    pub overall_timeout_ms: u64,
    pub max_call_ms: u64,
    pub failover_codes: Vec<u16>,
    /// The carrier's reply when every trunk failed (480 by default: a 503
    /// reads as "this node is down" to carrier SBCs).
    pub all_failed_code: u16,
    /// Where we are, per transport, for Via and Record-Route.
    pub me: Me,
}

/// The node's own `host:port` per transport (`router.advertise` for UDP,
/// `router.tcp` or the same for TCP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub udp: String,
    pub tcp: String,
}

impl Me {
    pub fn host(&self, tcp: bool) -> &str {
        if tcp {
            &self.tcp
        } else {
            &self.udp
        }
    }

    /// Our Via for a request sent over UDP or TCP.
    pub fn via(&self, tcp: bool, branch: &str) -> String {
        let proto = if tcp { "TCP" } else { "UDP" };
        format!("SIP/2.0/{proto} {};branch={branch}", self.host(tcp))
    }

    /// Our Record-Route for a call from a carrier on one transport to a
    /// trunk on another: one entry, or two when they differ (RFC 5658),
    /// the one facing the trunk first.
    pub fn record_route(&self, carrier_tcp: bool, trunk_tcp: bool) -> String {
        let rr = |tcp: bool| {
            if tcp {
                format!("<sip:{};transport=tcp;lr>", self.tcp)
            } else {
                format!("<sip:{};lr>", self.udp)
            }
        };
        if carrier_tcp == trunk_tcp {
            rr(trunk_tcp)
        } else {
            format!("{}, {}", rr(trunk_tcp), rr(carrier_tcp))
        }
    }

    /// Both addresses: Route entries naming one of them are ours.
    pub fn own(&self) -> [&str; 2] {
        [&self.udp, &self.tcp]
    }

    pub fn is_ours(&self, hostport: &str) -> bool {
        hostport == self.udp || hostport == self.tcp
    }
}

/// A trunk an attempt may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkRef {
    pub name: String,
    pub addr: SocketAddr,
    pub transport: TrunkTransport,
}

/// What the call is attributed to, stamped at arrival.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    pub attribution: Attribution,
    pub confidence: Confidence,
    pub session_id: String,
    pub visitor_id: String,
    pub source_label: String,
    pub utm_source: String,
    pub utm_medium: String,
    pub utm_campaign: String,
    pub utm_term: String,
    pub utm_content: String,
    pub gclid: String,
    pub yclid: String,
    pub referrer: String,
    pub landing_url: String,
    pub country: String,
    pub region: String,
    pub city: String,
    pub gbraid: String,
    pub wbraid: String,
    pub fbclid: String,
    pub msclkid: String,
    /// Yandex Metrica's ClientId.
    pub ym_uid: String,
    /// The touch's channel (`paid_search`, `offline`…), '' when unknown.
    pub channel: String,
    /// When the touch (the ad click) happened, Unix seconds.
    pub touch_ts: u32,
    pub first_touch_ts: u32,
    pub first_channel: String,
    pub first_utm_source: String,
    pub first_utm_medium: String,
    pub first_utm_campaign: String,
}

/// Everything known about the call when routing starts.
#[derive(Debug, Clone)]
pub struct Setup {
    pub number: String,
    pub caller: String,
    pub site: String,
    pub pool: String,
    pub status: NumberStatus,
    pub destinations: Vec<String>,
    /// Trunks in the order to try (healthy first).
    pub trunks: Vec<TrunkRef>,
    pub source: Source,
    /// Extra headers for the client's PBX (attribution).
    pub headers: Vec<(String, String)>,
    /// The carrier's transport is reliable (TCP): replies are not
    /// retransmitted (RFC 3261 §17.2.1).
    pub carrier_reliable: bool,
    /// The carrier's Via stamped with `received`/`rport` ([`wire::stamp_via`]).
    pub carrier_via: Option<String>,
}

/// Timers the call arms; each names the attempt it belongs to, so the
/// shard cancels exactly the ones the call no longer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Retransmit the INVITE of an attempt over UDP (Timer A).
    Retransmit(u8),
    /// No provisional reply from the trunk in time: fail over.
    NoProvisional(u8),
    /// 100 Trying but no ringing in time: fail over.
    Ringing(u8),
    /// Ringing too long at this destination: hunt to the next.
    Ring(u8),
    /// The caller must not wait longer.
    Overall,
    /// An abandoned attempt's trunk never gave a final reply: forget it.
    Abandoned(u8),
    /// Retransmit a CANCEL or BYE the node sent (attempt `n`; 0 is the
    /// carrier's leg).
    Resend(u8),
    /// An answered call has run for the maximum duration.
    MaxDuration,
    /// Retransmit our final non-2xx reply to the carrier (Timer G).
    ReplyRetransmit,
    /// The carrier never ACKed our final reply (Timer H).
    ReplyTimeout,
}

/// Inputs of the state machine.
#[derive(Debug)]
pub enum Event<'a> {
    /// A response from a trunk to attempt `n`'s INVITE, or to a CANCEL or
    /// BYE the node sent on it (`n` = 0: the carrier's reply to our BYE).
    Response {
        attempt: u8,
        msg: &'a Message<'a>,
    },
    /// The carrier retransmitted the INVITE.
    InviteRetransmit,
    /// The carrier cancelled the INVITE.
    Cancel,
    /// The carrier ACKed our non-2xx final reply.
    Ack,
    /// Sending attempt `n`'s INVITE failed (ICMP, TCP refused).
    TransportError {
        attempt: u8,
    },
    /// A BYE in the dialog from either side (forwarded by the shard).
    Bye {
        /// Sent by the caller (the carrier's side), not by a trunk.
        from_caller: bool,
    },
    /// The node stops (drain deadline): release the call now.
    Release,
    Timer(Timer),
}

/// Where a message the call sends goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Carrier,
    Trunk(SocketAddr, bool),
}

/// Outputs: what the shard must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send to the carrier that sent the INVITE.
    ToCarrier(Vec<u8>),
    /// Send to a trunk on behalf of attempt `attempt`, over TCP or UDP.
    ToTrunk {
        attempt: u8,
        addr: SocketAddr,
        tcp: bool,
        bytes: Vec<u8>,
    },
    /// Arm a timer at an absolute time (ms); replaces an armed equal timer.
    Arm { timer: Timer, at_ms: u64 },
    /// Cancel a timer if armed.
    Disarm(Timer),
    /// Attempt `attempt` starts on `trunk` (it carries the call until its
    /// row).
    AttemptStarted { attempt: u8, trunk: String },
    /// An attempt's row: when it ends, and again when a late reply on an
    /// abandoned attempt changes what happened (same row key: it replaces
    /// the first).
    Attempt(Box<CallAttempt>),
    /// The call's row: at the answer (`ended` = 0: in progress) and at its end.
    Record(Box<CallRow>),
    /// A trunk did not answer in time (passive health, weighed against
    /// its other calls' replies).
    TrunkTimeout(String),
    /// A trunk failed a call in a way no packet loss explains (100 Trying,
    /// then silence): counts against its health as it is.
    TrunkFailed { trunk: String, reason: String },
    /// A trunk sent its first reply on an attempt: it is alive.
    TrunkReplied(String),
    /// A trunk answered the call (its quality counts the answer now; the
    /// attempt's row comes at the hang-up).
    Answered { trunk: String, pdd_ms: u32 },
    /// The call rings (its first 18x, or an answer with none before it):
    /// what is known of it now, for the `call.started` webhook; `ended`
    /// holds when it started ringing.
    Started(Box<CallRow>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Trying,
    Answered,
    /// A final non-2xx reply went to the carrier over UDP: retransmitted
    /// until its ACK.
    Completed,
    /// Over: the final row is written.
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// INVITE sent, nothing heard.
    Calling,
    /// A provisional reply came.
    Proceeding,
    Answered,
    /// The node gave up on the attempt (failover, ring timeout, caller's
    /// CANCEL); its trunk may still answer. `cancel_pending`: no
    /// provisional came yet, so the CANCEL waits for one (RFC 3261 §9.1).
    Abandoned {
        cancel_pending: bool,
    },
    /// Nothing more is expected from the trunk.
    Done,
}

/// A CANCEL or BYE the node sent and retransmits (over UDP) until a reply.
#[derive(Debug, Clone)]
struct Resend {
    bytes: Vec<u8>,
    to: Dest,
    every_ms: u64,
    until_ms: u64,
}

#[derive(Debug, Clone)]
struct Attempt {
    n: u8,
    trunk: TrunkRef,
    destination: String,
    /// Our INVITE to the trunk while it may be needed (retransmission,
    /// CANCEL, ACK); dropped once the attempt is settled.
    invite: Option<Vec<u8>>,
    /// The attempt's requests go over TCP.
    tcp: bool,
    started_ms: u64,
    provisional_ms: Option<u64>,
    /// The first 18x (RFC 6076 post-dial delay ends there, not at 100).
    rang_ms: Option<u64>,
    answered_ms: Option<u64>,
    retransmit_every: u64,
    state: State,
    /// The trunk's To tag (early or confirmed dialog).
    remote_tag: Option<String>,
    /// The row written when the attempt was abandoned, for a late update.
    row: Option<Box<CallAttempt>>,
    resend: Option<Resend>,
}

impl Attempt {
    fn settled(&self) -> bool {
        matches!(self.state, State::Done | State::Answered) && self.resend.is_none()
    }
}

/// One inbound call.
pub struct Call {
    pub id: Uuid,
    pub sip_call_id: String,
    /// The carrier's INVITE, until the call is answered or over.
    invite: Option<Vec<u8>>,
    /// The carrier's From tag: in-dialog requests from the caller carry it.
    carrier_tag: String,
    setup: Setup,
    policy: Policy,
    received_ms: u64,
    phase: Phase,
    attempts: Vec<Attempt>,
    dest_idx: usize,
    trunk_idx: usize,
    to_tag: String,
    /// Our final non-2xx reply while it is retransmitted (Timer G).
    final_reply: Option<Vec<u8>>,
    reply_every: u64,
    /// The To tag of the final reply the carrier got (ours or a trunk's).
    reply_tag: String,
    ringing_ms: Option<u64>,
    answered_ms: Option<u64>,
    final_code: u16,
    disposition: Option<Disposition>,
    dialog: Option<Box<Dialog>>,
    /// Our BYE to the carrier (max duration, drain).
    carrier_bye: Option<Resend>,
}

fn secs(ms: u64) -> u32 {
    (ms / 1000) as u32
}

fn dur(from: u64, to: u64) -> u32 {
    to.saturating_sub(from).min(u64::from(u32::MAX)) as u32
}

/// Our branch of attempt `n` of call `id`: `z9hG4bK-dm-<id>-<n>`; a BYE
/// the node sends on it ends in `-bye`.
pub fn branch(id: &Uuid, n: u8, bye: bool) -> String {
    let suffix = if bye { "-bye" } else { "" };
    format!("z9hG4bK-dm-{}-{n}{suffix}", id.simple())
}

/// Reads our own call branch back: (call id in hex, attempt, is a BYE's).
pub fn parse_branch(b: &str) -> Option<(&str, u8, bool)> {
    let rest = b.strip_prefix("z9hG4bK-dm-")?;
    let (id, tail) = rest.split_once('-')?;
    let (n, bye) = match tail.strip_suffix("-bye") {
        Some(n) => (n, true),
        None => (tail, false),
    };
    Some((id, n.parse().ok()?, bye))
}

impl Call {
    fn new(invite: Vec<u8>, setup: Setup, policy: Policy, now_ms: u64) -> Call {
        let id = Uuid::new_v4();
        let (sip_call_id, carrier_tag) = wire::parse(&invite)
            .map(|m| {
                (
                    m.call_id().to_string(),
                    m.from_tag().unwrap_or("").to_string(),
                )
            })
            .unwrap_or_default();
        Call {
            id,
            sip_call_id,
            invite: Some(invite),
            carrier_tag,
            setup,
            policy,
            received_ms: now_ms,
            phase: Phase::Trying,
            attempts: Vec::new(),
            dest_idx: 0,
            trunk_idx: 0,
            to_tag: id.simple().to_string()[..12].to_string(),
            final_reply: None,
            reply_every: T1_MS,
            reply_tag: String::new(),
            ringing_ms: None,
            answered_ms: None,
            final_code: 0,
            disposition: None,
            dialog: None,
            carrier_bye: None,
        }
    }

    /// Starts routing a call whose INVITE (raw bytes, already checked) came
    /// from a trusted carrier and was answered with 100 Trying by the node.
    /// Sends the first attempt.
    pub fn start(
        invite: Vec<u8>,
        setup: Setup,
        policy: Policy,
        now_ms: u64,
    ) -> (Call, Vec<Action>) {
        let mut call = Call::new(invite, setup, policy, now_ms);
        let mut out = vec![Action::Arm {
            timer: Timer::Overall,
            at_ms: now_ms + call.policy.overall_timeout_ms,
        }];
        if call.setup.trunks.is_empty() || call.setup.destinations.is_empty() {
            let code = call.policy.all_failed_code;
            call.fail(code, Disposition::Failed, now_ms, &mut out);
        } else {
            call.next_attempt(now_ms, &mut out);
        }
        (call, out)
    }

    /// A call from a carrier refused without forwarding (quarantine,
    /// unknown number, too many hops, draining...): the reply is
    /// retransmitted until the ACK like any final error reply, and the
    /// call is recorded.
    pub fn refuse(
        invite: Vec<u8>,
        setup: Setup,
        policy: Policy,
        code: u16,
        disposition: Disposition,
        now_ms: u64,
    ) -> (Call, Vec<Action>) {
        let mut call = Call::new(invite, setup, policy, now_ms);
        let mut out = Vec::new();
        call.fail(code, disposition, now_ms, &mut out);
        (call, out)
    }

    /// Records a call refused without any state kept (untrusted sources,
    /// overload). Returns the reply and the row.
    pub fn reject(
        invite: &Message<'_>,
        setup: &Setup,
        code: u16,
        extra: &[(&str, String)],
        disposition: Disposition,
        now_ms: u64,
    ) -> (Vec<u8>, CallRow) {
        let tag = Uuid::new_v4().simple().to_string()[..12].to_string();
        let bytes = wire::response(invite, code, wire::reason_phrase(code), Some(&tag), extra);
        let row = row(
            Uuid::new_v4(),
            invite.call_id(),
            setup,
            now_ms,
            None,
            now_ms,
            0,
            code,
            0,
            "",
            "",
            disposition,
        );
        (bytes, row)
    }

    pub fn is_answered(&self) -> bool {
        self.phase == Phase::Answered
    }

    /// Whether the call's final row is written (it may still wait for an
    /// ACK or for an abandoned trunk).
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Completed | Phase::Ended)
    }

    /// Nothing is left to do: the shard keeps only a tombstone.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Ended
            && self.carrier_bye.is_none()
            && self.attempts.iter().all(Attempt::settled)
    }

    /// The carrier's From tag.
    pub fn carrier_tag(&self) -> &str {
        &self.carrier_tag
    }

    /// The final status the carrier got, and the To tag it carried (for
    /// INVITE retransmissions after the call is gone); `None` when the
    /// call was answered.
    pub fn final_reply(&self) -> Option<(u16, &str)> {
        (self.answered_ms.is_none() && self.final_code >= 300)
            .then_some((self.final_code, self.reply_tag.as_str()))
    }

    /// An answered call's in-progress row (`ended` = 0), while it talks.
    pub fn progress_row(&self) -> Option<CallRow> {
        let answered = self.answered_ms.filter(|_| self.phase == Phase::Answered)?;
        let mut r = self.row(Disposition::Answered, answered);
        r.ended = 0;
        Some(r)
    }

    /// Where attempt `n`'s INVITE went (its replies must come from there).
    pub fn attempt_addr(&self, n: u8) -> Option<SocketAddr> {
        self.attempts
            .iter()
            .find(|a| a.n == n)
            .map(|a| a.trunk.addr)
    }

    /// The attempt that answered (0: none).
    pub fn answered_attempt(&self) -> u8 {
        self.attempts
            .iter()
            .find(|a| a.answered_ms.is_some())
            .map_or(0, |a| a.n)
    }

    /// The To tag of the answered attempt's trunk.
    pub fn answered_tag(&self) -> Option<&str> {
        self.attempts
            .iter()
            .find(|a| a.answered_ms.is_some())
            .and_then(|a| a.remote_tag.as_deref())
    }

    /// The trunk of the answered attempt, and whether it is reached over TCP.
    pub fn answered_trunk(&self) -> Option<(SocketAddr, bool)> {
        self.attempts
            .iter()
            .find(|a| a.answered_ms.is_some())
            .map(|a| (a.trunk.addr, a.tcp))
    }

    /// The trunk an in-dialog request from the caller goes to: the
    /// attempt whose (early or confirmed) dialog carries `to_tag`, while
    /// it is live. `None`: no such dialog (481).
    pub fn trunk_for_tag(&self, to_tag: &str) -> Option<(SocketAddr, bool)> {
        self.attempts
            .iter()
            .find(|a| a.remote_tag.as_deref() == Some(to_tag))
            .filter(|a| matches!(a.state, State::Proceeding | State::Answered))
            .filter(|a| self.phase == Phase::Trying || a.state == State::Answered)
            .map(|a| (a.trunk.addr, a.tcp))
    }

    /// Whether a request from the callee's side with `from_tag` belongs to
    /// a live dialog of this call.
    pub fn callee_tag_live(&self, from_tag: &str) -> bool {
        self.attempts
            .iter()
            .find(|a| a.remote_tag.as_deref() == Some(from_tag))
            .is_some_and(|a| {
                a.state == State::Answered
                    || (self.phase == Phase::Trying && a.state == State::Proceeding)
            })
    }

    /// An in-dialog request passed through (for the CSeq of a BYE the node
    /// may have to send later).
    pub fn saw_request(&mut self, from_caller: bool, cseq: u32) {
        if let Some(d) = &mut self.dialog {
            d.saw_request(from_caller, cseq);
        }
    }

    /// Bytes held by the call, for the node's memory budget.
    pub fn footprint(&self) -> usize {
        let s = &self.setup;
        let src = &s.source;
        let strings = [
            &self.sip_call_id,
            &self.carrier_tag,
            &self.to_tag,
            &self.reply_tag,
            &s.number,
            &s.caller,
            &s.site,
            &s.pool,
            &src.session_id,
            &src.visitor_id,
            &src.source_label,
            &src.utm_source,
            &src.utm_medium,
            &src.utm_campaign,
            &src.utm_term,
            &src.utm_content,
            &src.gclid,
            &src.yclid,
            &src.referrer,
            &src.landing_url,
            &src.country,
            &src.region,
            &src.city,
            &src.gbraid,
            &src.wbraid,
            &src.fbclid,
            &src.msclkid,
            &src.ym_uid,
            &src.channel,
            &src.first_channel,
            &src.first_utm_source,
            &src.first_utm_medium,
            &src.first_utm_campaign,
        ]
        .iter()
        .map(|s| s.capacity())
        .sum::<usize>();
        let lists = s.destinations.iter().map(String::capacity).sum::<usize>()
            + s.trunks
                .iter()
                .map(|t| t.name.capacity() + 48)
                .sum::<usize>()
            + s.headers
                .iter()
                .map(|(k, v)| k.capacity() + v.capacity() + 48)
                .sum::<usize>();
        let attempts = self
            .attempts
            .iter()
            .map(|a| {
                std::mem::size_of::<Attempt>()
                    + a.destination.capacity()
                    + a.invite.as_ref().map_or(0, Vec::capacity)
                    + a.remote_tag.as_ref().map_or(0, String::capacity)
                    + a.row
                        .as_ref()
                        .map_or(0, |_| std::mem::size_of::<CallAttempt>() + 128)
                    + a.resend.as_ref().map_or(0, |r| r.bytes.capacity())
            })
            .sum::<usize>();
        std::mem::size_of::<Call>()
            + strings
            + lists
            + attempts
            + self.invite.as_ref().map_or(0, Vec::capacity)
            + self.final_reply.as_ref().map_or(0, Vec::capacity)
            + self.dialog.as_ref().map_or(0, |d| d.footprint())
            + self.carrier_bye.as_ref().map_or(0, |r| r.bytes.capacity())
    }

    pub fn handle(&mut self, event: Event<'_>, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::InviteRetransmit => self.invite_retransmit(&mut out),
            Event::Response { attempt, msg } => self.on_response(attempt, msg, now_ms, &mut out),
            Event::Cancel => self.caller_left("canceled by the caller", now_ms, &mut out),
            Event::Ack => {
                if self.phase == Phase::Completed {
                    self.final_reply = None;
                    self.phase = Phase::Ended;
                    out.push(Action::Disarm(Timer::ReplyRetransmit));
                    out.push(Action::Disarm(Timer::ReplyTimeout));
                }
            }
            Event::TransportError { attempt } => {
                let calling = self
                    .current()
                    .is_some_and(|a| a.n == attempt && a.state == State::Calling);
                if calling && self.phase == Phase::Trying {
                    // The INVITE never left: nothing to CANCEL.
                    if let Some(a) = self.attempt_mut(attempt) {
                        a.state = State::Done;
                    }
                    self.trunk_failed(
                        attempt,
                        503,
                        "transport error",
                        Outcome::TransportError,
                        now_ms,
                        &mut out,
                    );
                }
            }
            Event::Bye { from_caller } => match self.phase {
                Phase::Answered => self.finish_answered(now_ms, Disposition::Answered, &mut out),
                // A BYE on the early dialog (RFC 3261 §15: the caller may
                // send one; it went on to the trunk): the caller is gone,
                // as after a CANCEL, and its INVITE gets 487.
                Phase::Trying if from_caller => {
                    self.caller_left("BYE before the answer", now_ms, &mut out)
                }
                // A callee must not (§15); the trunk's final reply to the
                // INVITE, or its timers, settle the attempt.
                Phase::Trying | Phase::Completed | Phase::Ended => {}
            },
            Event::Release => match self.phase {
                Phase::Answered => {
                    self.release(now_ms, &mut out);
                    self.finish_answered(now_ms, Disposition::Answered, &mut out);
                }
                Phase::Trying => {
                    if let Some(n) = self.current().map(|a| a.n) {
                        self.abandon(
                            n,
                            503,
                            "node shutting down",
                            Outcome::Canceled,
                            false,
                            now_ms,
                            &mut out,
                        );
                    }
                    self.fail(503, Disposition::Failed, now_ms, &mut out);
                }
                Phase::Completed | Phase::Ended => {}
            },
            Event::Timer(t) => self.on_timer(t, now_ms, &mut out),
        }
        out
    }

    /// The caller gave up while the call was being set up: the branch is
    /// cancelled, the INVITE answered 487.
    fn caller_left(&mut self, why: &str, now_ms: u64, out: &mut Vec<Action>) {
        if self.phase != Phase::Trying {
            return;
        }
        if let Some(n) = self.current().map(|a| a.n) {
            self.abandon(n, 487, why, Outcome::Canceled, false, now_ms, out);
        }
        self.fail(487, Disposition::Abandoned, now_ms, out);
    }

    fn current(&self) -> Option<&Attempt> {
        self.attempts
            .last()
            .filter(|a| matches!(a.state, State::Calling | State::Proceeding))
    }

    fn attempt_mut(&mut self, n: u8) -> Option<&mut Attempt> {
        self.attempts.iter_mut().find(|a| a.n == n)
    }

    fn invite_retransmit(&mut self, out: &mut Vec<Action>) {
        match self.phase {
            Phase::Trying => {
                if let Some(inv) = self.invite.as_deref().and_then(|b| wire::parse(b).ok()) {
                    out.push(Action::ToCarrier(wire::response(
                        &inv,
                        100,
                        "Trying",
                        None,
                        &[],
                    )));
                }
            }
            Phase::Completed => {
                if let Some(r) = &self.final_reply {
                    out.push(Action::ToCarrier(r.clone()));
                }
            }
            // The trunk retransmits its 2xx until the ACK; the shard answers
            // retransmissions of a finished call from its tombstone.
            Phase::Answered | Phase::Ended => {}
        }
    }

    fn next_attempt(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let n = self.attempts.len() as u8 + 1;
        let trunk = self.setup.trunks[self.trunk_idx].clone();
        let destination = self.setup.destinations[self.dest_idx].clone();
        let Some(inv) = self.invite.as_deref().and_then(|b| wire::parse(b).ok()) else {
            self.fail(500, Disposition::Failed, now_ms, out);
            return;
        };
        let branch = branch(&self.id, n, false);
        let uri = format!("sip:{destination}@{}", trunk.addr);
        let add: Vec<(&str, String)> = self
            .setup
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let me = &self.policy.me;
        let build = |tcp: bool| {
            Forward {
                msg: &inv,
                uri: Some(&uri),
                via: &me.via(tcp, &branch),
                sender_via: self.setup.carrier_via.as_deref(),
                record_route: Some(&me.record_route(self.setup.carrier_reliable, tcp)),
                own: &me.own(),
                max_forwards: inv.max_forwards().saturating_sub(1),
                add: &add,
            }
            .build()
        };
        // UDP unless the trunk is TCP, or "auto" and the request is large.
        let mut tcp = trunk.transport == TrunkTransport::Tcp;
        let mut bytes = build(tcp);
        if !tcp && trunk.transport.tcp_for(bytes.len()) {
            tcp = true;
            bytes = build(true);
        }
        out.push(Action::AttemptStarted {
            attempt: n,
            trunk: trunk.name.clone(),
        });
        out.push(Action::ToTrunk {
            attempt: n,
            addr: trunk.addr,
            tcp,
            bytes: bytes.clone(),
        });
        if !tcp {
            out.push(Action::Arm {
                timer: Timer::Retransmit(n),
                at_ms: now_ms + T1_MS,
            });
        }
        out.push(Action::Arm {
            timer: Timer::NoProvisional(n),
            at_ms: now_ms + self.policy.provisional_timeout_ms,
        });
        if self.policy.ringing_timeout_ms > 0 {
            out.push(Action::Arm {
                timer: Timer::Ringing(n),
                at_ms: now_ms + self.policy.ringing_timeout_ms,
            });
        }
        self.attempts.push(Attempt {
            n,
            trunk,
            destination,
            invite: Some(bytes),
            tcp,
            started_ms: now_ms,
            provisional_ms: None,
            rang_ms: None,
            answered_ms: None,
            retransmit_every: T1_MS,
            state: State::Calling,
            remote_tag: None,
            row: None,
            resend: None,
        });
    }

    fn on_response(&mut self, n: u8, msg: &Message<'_>, now_ms: u64, out: &mut Vec<Action>) {
        let Some(code) = msg.status() else { return };
        let method = msg.cseq().map(|(_, m)| m).unwrap_or_default();
        if method == "CANCEL" || method == "BYE" {
            // The reply to our CANCEL or BYE: stop retransmitting it. (The
            // INVITE's final reply follows a CANCEL.)
            self.settle_resend(n, &method, out);
            return;
        }
        if method != "INVITE" {
            return;
        }
        let Some(idx) = self.attempts.iter().position(|a| a.n == n) else {
            return;
        };
        let a = &mut self.attempts[idx];
        let silent = matches!(
            a.state,
            State::Calling
                | State::Abandoned {
                    cancel_pending: true
                }
        );
        if silent && a.provisional_ms.is_none() && a.answered_ms.is_none() {
            out.push(Action::TrunkReplied(a.trunk.name.clone()));
        }
        if code > 100 && a.remote_tag.is_none() {
            a.remote_tag = msg.to_tag().map(str::to_string);
        }
        match a.state {
            State::Abandoned { cancel_pending } => {
                return self.late_reply(idx, code, cancel_pending, msg, now_ms, out)
            }
            State::Answered => {
                // 2xx retransmission: the carrier ACKs it end to end.
                if (200..300).contains(&code) {
                    out.push(Action::ToCarrier(wire::strip_top_via(msg)));
                }
                return;
            }
            State::Done => {
                if (200..300).contains(&code) {
                    self.release_late_answer(idx, msg, now_ms, out);
                } else if code >= 300 {
                    // A retransmitted final reply: ACK it again.
                    out.push(ack(&self.attempts[idx], msg));
                }
                return;
            }
            State::Calling | State::Proceeding => {}
        }
        if code < 200 {
            self.provisional(idx, code, msg, now_ms, out);
        } else if code < 300 {
            self.answered(idx, msg, now_ms, out);
        } else {
            self.final_failure(idx, code, msg, now_ms, out);
        }
    }

    fn provisional(
        &mut self,
        idx: usize,
        code: u16,
        msg: &Message<'_>,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let a = &mut self.attempts[idx];
        let n = a.n;
        if a.provisional_ms.is_none() {
            a.provisional_ms = Some(now_ms);
            a.state = State::Proceeding;
            out.push(Action::Disarm(Timer::Retransmit(n)));
            out.push(Action::Disarm(Timer::NoProvisional(n)));
        }
        if code == 100 {
            return;
        }
        if a.rang_ms.is_none() {
            a.rang_ms = Some(now_ms);
            out.push(Action::Disarm(Timer::Ringing(n)));
            out.push(Action::Arm {
                timer: Timer::Ring(n),
                at_ms: now_ms + self.policy.ring_timeout_ms,
            });
        }
        if self.ringing_ms.is_none() {
            self.ringing_ms = Some(now_ms);
            out.push(self.started(now_ms));
        }
        out.push(Action::ToCarrier(wire::strip_top_via(msg)));
    }

    /// The `call.started` event: the row so far, `ended` set to when it
    /// rang (nothing is answered or over yet).
    fn started(&self, now_ms: u64) -> Action {
        let mut r = self.row(Disposition::Answered, now_ms);
        r.answered = 0;
        r.ring_ms = 0;
        Action::Started(Box::new(r))
    }

    fn answered(&mut self, idx: usize, msg: &Message<'_>, now_ms: u64, out: &mut Vec<Action>) {
        let code = msg.status().unwrap_or(200);
        if self.ringing_ms.is_none() {
            out.push(self.started(now_ms));
        }
        let a = &mut self.attempts[idx];
        let (n, tcp) = (a.n, a.tcp);
        a.answered_ms = Some(now_ms);
        a.state = State::Answered;
        a.invite = None;
        out.push(Action::Answered {
            trunk: a.trunk.name.clone(),
            pdd_ms: a
                .rang_ms
                .map_or(dur(a.started_ms, now_ms), |p| dur(a.started_ms, p)),
        });
        for t in [
            Timer::Retransmit(n),
            Timer::NoProvisional(n),
            Timer::Ringing(n),
            Timer::Ring(n),
            Timer::Overall,
        ] {
            out.push(Action::Disarm(t));
        }
        self.answered_ms = Some(now_ms);
        self.final_code = code;
        self.phase = Phase::Answered;
        if let Some(inv) = self.invite.take() {
            if let Ok(inv) = wire::parse(&inv) {
                self.dialog = Some(Box::new(Dialog::confirmed(
                    &inv,
                    msg,
                    &self.policy.me,
                    self.setup.carrier_reliable,
                    tcp,
                )));
            }
        }
        out.push(Action::ToCarrier(wire::strip_top_via(msg)));
        out.push(Action::Arm {
            timer: Timer::MaxDuration,
            at_ms: now_ms + self.policy.max_call_ms,
        });
        // On record from its answer: a node killed mid-call loses no call.
        if let Some(r) = self.progress_row() {
            out.push(Action::Record(Box::new(r)));
        }
    }

    fn final_failure(
        &mut self,
        idx: usize,
        code: u16,
        msg: &Message<'_>,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        out.push(ack(&self.attempts[idx], msg));
        // The trunk's transaction is over: nothing to CANCEL.
        self.attempts[idx].state = State::Done;
        let n = self.attempts[idx].n;
        let reason = msg.reason().to_string();
        if self.policy.failover_codes.contains(&code) {
            let outcome = if code == 408 {
                Outcome::Timeout
            } else {
                Outcome::Rejected
            };
            self.trunk_failed(n, code, &reason, outcome, now_ms, out);
            return;
        }
        // The callee (or the client's PBX) said no: no failover.
        let (outcome, disposition) = match code {
            486 | 600 => (Outcome::Busy, Disposition::Busy),
            408 | 480 | 487 | 603 => (Outcome::NoAnswer, Disposition::Missed),
            _ => (Outcome::Rejected, Disposition::Failed),
        };
        self.end_attempt(n, code, &reason, outcome, false, now_ms, out);
        self.reply_tag = msg.to_tag().unwrap_or("").to_string();
        let fwd = wire::strip_top_via(msg);
        self.send_final(code, fwd, now_ms, out);
        self.close(disposition, now_ms, out);
    }

    /// A reply on an attempt the node gave up on.
    fn late_reply(
        &mut self,
        idx: usize,
        code: u16,
        cancel_pending: bool,
        msg: &Message<'_>,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        if code < 200 {
            if cancel_pending {
                // The first sign of life of a trunk we left: now it may be
                // CANCELled, and must be, or its phone rings for nobody.
                let a = &mut self.attempts[idx];
                a.state = State::Abandoned {
                    cancel_pending: false,
                };
                a.provisional_ms.get_or_insert(now_ms);
                self.send_cancel(idx, now_ms, out);
                self.late_outcome(
                    idx,
                    Outcome::CancelledLate,
                    &format!("late {code} after the node gave up; CANCEL sent"),
                    now_ms,
                    out,
                );
            }
        } else if code < 300 {
            self.release_late_answer(idx, msg, now_ms, out);
        } else {
            out.push(ack(&self.attempts[idx], msg));
            self.settle(idx, out);
        }
    }

    /// A 2xx on an attempt that is not the call's answer: ACK it and hang
    /// up (BYE), built from the 2xx itself.
    fn release_late_answer(
        &mut self,
        idx: usize,
        ok: &Message<'_>,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let a = &self.attempts[idx];
        let (n, addr, tcp) = (a.n, a.trunk.addr, a.tcp);
        let first = !matches!(&a.resend, Some(r) if r.bytes.starts_with(b"BYE"));
        let me = &self.policy.me;
        out.push(Action::ToTrunk {
            attempt: n,
            addr,
            tcp,
            // The ACK of a 2xx is a transaction of its own: a branch of its own.
            bytes: originate::ack_for_2xx(
                ok,
                me,
                tcp,
                &format!("{}-ack", branch(&self.id, n, false)),
            ),
        });
        if !first {
            return; // a 2xx retransmission: the BYE is on its way already
        }
        let bye = originate::bye_for_2xx(ok, me, tcp, &branch(&self.id, n, true));
        out.push(Action::ToTrunk {
            attempt: n,
            addr,
            tcp,
            bytes: bye.clone(),
        });
        self.attempts[idx].resend = Some(Resend {
            bytes: bye,
            to: Dest::Trunk(addr, tcp),
            every_ms: if tcp { TRANSACTION_MS } else { T1_MS },
            until_ms: now_ms + TRANSACTION_MS,
        });
        out.push(Action::Disarm(Timer::Abandoned(n)));
        out.push(Action::Arm {
            timer: Timer::Resend(n),
            at_ms: now_ms + T1_MS,
        });
        let a = &mut self.attempts[idx];
        a.state = State::Done;
        a.invite = None;
        self.late_outcome(
            idx,
            Outcome::AnsweredLateReleased,
            "late 2xx after the node gave up; ACK and BYE sent",
            now_ms,
            out,
        );
    }

    /// Rewrites an abandoned attempt's row with what happened after.
    fn late_outcome(
        &mut self,
        idx: usize,
        outcome: Outcome,
        reason: &str,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        if let Some(row) = self.attempts[idx].row.as_mut() {
            row.outcome = outcome;
            row.reason = reason.to_string();
            row.version = row.version.max(now_ms.saturating_sub(1)) + 1;
            out.push(Action::Attempt(row.clone()));
        }
    }

    fn send_cancel(&mut self, idx: usize, now_ms: u64, out: &mut Vec<Action>) {
        let a = &mut self.attempts[idx];
        let Some(inv) = a.invite.as_deref().and_then(|b| wire::parse(b).ok()) else {
            return;
        };
        let bytes = originate::cancel(&inv);
        out.push(Action::ToTrunk {
            attempt: a.n,
            addr: a.trunk.addr,
            tcp: a.tcp,
            bytes: bytes.clone(),
        });
        // Over TCP the transport delivers: only Timer F's wait remains.
        a.resend = Some(Resend {
            bytes,
            to: Dest::Trunk(a.trunk.addr, a.tcp),
            every_ms: if a.tcp { TRANSACTION_MS } else { T1_MS },
            until_ms: now_ms + TRANSACTION_MS,
        });
        out.push(Action::Arm {
            timer: Timer::Resend(a.n),
            at_ms: now_ms + if a.tcp { TRANSACTION_MS } else { T1_MS },
        });
    }

    fn settle_resend(&mut self, n: u8, method: &str, out: &mut Vec<Action>) {
        let slot = if n == 0 {
            &mut self.carrier_bye
        } else {
            match self.attempts.iter_mut().find(|a| a.n == n) {
                Some(a) => &mut a.resend,
                None => return,
            }
        };
        if slot
            .as_ref()
            .is_some_and(|r| r.bytes.starts_with(method.as_bytes()))
        {
            *slot = None;
            out.push(Action::Disarm(Timer::Resend(n)));
        }
    }

    /// The attempt needs nothing more from its trunk.
    fn settle(&mut self, idx: usize, out: &mut Vec<Action>) {
        let a = &mut self.attempts[idx];
        a.state = State::Done;
        a.invite = None;
        a.row = None;
        out.push(Action::Disarm(Timer::Abandoned(a.n)));
        if a.resend.take().is_some() {
            out.push(Action::Disarm(Timer::Resend(a.n)));
        }
    }

    fn on_timer(&mut self, t: Timer, now_ms: u64, out: &mut Vec<Action>) {
        let current = self.current().map(|a| (a.n, a.state));
        match t {
            Timer::Retransmit(n) => {
                let Some(a) = self
                    .attempts
                    .iter_mut()
                    .find(|a| a.n == n && a.state == State::Calling)
                else {
                    return;
                };
                a.retransmit_every = (a.retransmit_every * 2).min(T2_MS);
                if let Some(inv) = &a.invite {
                    out.push(Action::ToTrunk {
                        attempt: n,
                        addr: a.trunk.addr,
                        tcp: a.tcp,
                        bytes: inv.clone(),
                    });
                }
                out.push(Action::Arm {
                    timer: Timer::Retransmit(n),
                    at_ms: now_ms + a.retransmit_every,
                });
            }
            Timer::NoProvisional(n) => {
                if current != Some((n, State::Calling)) || self.phase != Phase::Trying {
                    return;
                }
                let trunk = self.attempts.last().expect("current").trunk.name.clone();
                out.push(Action::TrunkTimeout(trunk));
                self.trunk_failed(
                    n,
                    408,
                    "no provisional response",
                    Outcome::Timeout,
                    now_ms,
                    out,
                );
            }
            Timer::Ringing(n) => {
                if current != Some((n, State::Proceeding)) || self.phase != Phase::Trying {
                    return;
                }
                let a = self.attempts.last().expect("current");
                if a.rang_ms.is_some() {
                    return;
                }
                let reason = format!(
                    "no ringing within {} ms (100 Trying, then silence)",
                    self.policy.ringing_timeout_ms
                );
                out.push(Action::TrunkFailed {
                    trunk: a.trunk.name.clone(),
                    reason: reason.clone(),
                });
                self.trunk_failed(n, 408, &reason, Outcome::Timeout, now_ms, out);
            }
            Timer::Ring(n) => {
                if current.map(|(c, _)| c) != Some(n) || self.phase != Phase::Trying {
                    return;
                }
                self.abandon(
                    n,
                    487,
                    "ring timeout",
                    Outcome::NoAnswer,
                    false,
                    now_ms,
                    out,
                );
                if self.dest_idx + 1 < self.setup.destinations.len() {
                    // Destination hunting: next destination, trunks from the top.
                    self.dest_idx += 1;
                    self.trunk_idx = 0;
                    self.next_attempt(now_ms, out);
                } else {
                    self.fail(480, Disposition::Missed, now_ms, out);
                }
            }
            Timer::Overall => {
                if self.phase != Phase::Trying {
                    return;
                }
                if let Some((n, _)) = current {
                    self.abandon(
                        n,
                        408,
                        "overall timeout",
                        Outcome::Timeout,
                        false,
                        now_ms,
                        out,
                    );
                }
                let d = if self.ringing_ms.is_some() {
                    Disposition::Missed
                } else {
                    Disposition::Failed
                };
                self.fail(408, d, now_ms, out);
            }
            Timer::Abandoned(n) => {
                if let Some(idx) = self.attempts.iter().position(|a| a.n == n) {
                    if matches!(self.attempts[idx].state, State::Abandoned { .. }) {
                        self.settle(idx, out);
                    }
                }
            }
            Timer::Resend(n) => {
                let slot = if n == 0 {
                    &mut self.carrier_bye
                } else {
                    match self.attempts.iter_mut().find(|a| a.n == n) {
                        Some(a) => &mut a.resend,
                        None => return,
                    }
                };
                let Some(r) = slot else { return };
                if now_ms >= r.until_ms {
                    *slot = None; // Timer F: the peer is gone
                    return;
                }
                r.every_ms = (r.every_ms * 2).min(T2_MS);
                out.push(match r.to {
                    Dest::Carrier => Action::ToCarrier(r.bytes.clone()),
                    Dest::Trunk(addr, tcp) => Action::ToTrunk {
                        attempt: n,
                        addr,
                        tcp,
                        bytes: r.bytes.clone(),
                    },
                });
                out.push(Action::Arm {
                    timer: Timer::Resend(n),
                    at_ms: now_ms + r.every_ms,
                });
            }
            Timer::MaxDuration => {
                if self.phase == Phase::Answered {
                    self.release(now_ms, out);
                    self.finish_answered(now_ms, Disposition::Timeout, out);
                }
            }
            Timer::ReplyRetransmit => {
                if self.phase != Phase::Completed {
                    return;
                }
                if let Some(r) = &self.final_reply {
                    out.push(Action::ToCarrier(r.clone()));
                }
                self.reply_every = (self.reply_every * 2).min(T2_MS);
                out.push(Action::Arm {
                    timer: Timer::ReplyRetransmit,
                    at_ms: now_ms + self.reply_every,
                });
            }
            Timer::ReplyTimeout => {
                if self.phase == Phase::Completed {
                    self.final_reply = None;
                    self.phase = Phase::Ended;
                    out.push(Action::Disarm(Timer::ReplyRetransmit));
                }
            }
        }
    }

    /// Gives up on attempt `n`: CANCEL now if the trunk sent a provisional
    /// reply, else as soon as it sends one; writes its row.
    #[allow(clippy::too_many_arguments)]
    fn abandon(
        &mut self,
        n: u8,
        code: u16,
        reason: &str,
        outcome: Outcome,
        failover: bool,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(idx) = self.attempts.iter().position(|a| a.n == n) else {
            return;
        };
        let proceeding = match self.attempts[idx].state {
            State::Calling => false,
            State::Proceeding => true,
            _ => return,
        };
        self.attempts[idx].state = State::Abandoned {
            cancel_pending: !proceeding,
        };
        for t in [
            Timer::Retransmit(n),
            Timer::NoProvisional(n),
            Timer::Ringing(n),
            Timer::Ring(n),
        ] {
            out.push(Action::Disarm(t));
        }
        if proceeding {
            self.send_cancel(idx, now_ms, out);
        }
        out.push(Action::Arm {
            timer: Timer::Abandoned(n),
            at_ms: now_ms + TRANSACTION_MS,
        });
        if let Some(row) = self.end_attempt(n, code, reason, outcome, failover, now_ms, out) {
            self.attempts[idx].row = Some(row);
        }
    }

    /// Whether another trunk is left for the current destination.
    fn has_next_trunk(&self) -> bool {
        self.trunk_idx + 1 < self.setup.trunks.len()
    }

    /// Gives up on the current attempt as a trunk failure and tries the
    /// next trunk, or fails the call when none is left.
    fn trunk_failed(
        &mut self,
        n: u8,
        code: u16,
        reason: &str,
        outcome: Outcome,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let next = self.has_next_trunk();
        let live = self
            .attempts
            .iter()
            .any(|a| a.n == n && matches!(a.state, State::Calling | State::Proceeding));
        if live {
            self.abandon(n, code, reason, outcome, next, now_ms, out);
        } else {
            self.end_attempt(n, code, reason, outcome, next, now_ms, out);
        }
        if next {
            self.trunk_idx += 1;
            self.next_attempt(now_ms, out);
        } else {
            let code = self.policy.all_failed_code;
            self.fail(code, Disposition::Failed, now_ms, out);
        }
    }

    /// Writes attempt `n`'s row (once) and returns it.
    #[allow(clippy::too_many_arguments)]
    fn end_attempt(
        &mut self,
        n: u8,
        code: u16,
        reason: &str,
        outcome: Outcome,
        failover: bool,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) -> Option<Box<CallAttempt>> {
        let id = self.id;
        let sip_call_id = self.sip_call_id.clone();
        let site = self.setup.site.clone();
        let a = self.attempt_mut(n)?;
        if matches!(a.state, State::Calling | State::Proceeding) {
            a.state = State::Done;
            a.invite = None;
        }
        let row = Box::new(CallAttempt {
            call_id: id,
            attempt: n,
            sip_call_id,
            trunk: a.trunk.name.clone(),
            destination: a.destination.clone(),
            started: secs(a.started_ms),
            ended: secs(now_ms),
            pdd_ms: a.rang_ms.map_or(0, |p| dur(a.started_ms, p)),
            answer_ms: a.answered_ms.map_or(0, |p| dur(a.started_ms, p)),
            talk_ms: 0,
            final_code: code,
            reason: reason.to_string(),
            outcome,
            failover: u8::from(failover),
            version: now_ms,
            duration_ms: dur(a.started_ms, now_ms),
            site,
        });
        out.push(Action::Attempt(row.clone()));
        Some(row)
    }

    /// Sends our own final reply `code` to the carrier and closes the call.
    fn fail(&mut self, code: u16, disposition: Disposition, now_ms: u64, out: &mut Vec<Action>) {
        if self.is_finished() {
            return;
        }
        let Some(inv) = self.invite.as_deref().and_then(|b| wire::parse(b).ok()) else {
            self.close(disposition, now_ms, out);
            return;
        };
        let bytes = wire::response(
            &inv,
            code,
            wire::reason_phrase(code),
            Some(&self.to_tag),
            &[],
        );
        self.reply_tag = self.to_tag.clone();
        self.send_final(code, bytes, now_ms, out);
        self.close(disposition, now_ms, out);
    }

    /// Sends a final non-2xx reply to the carrier; over UDP it is
    /// retransmitted until the ACK (Timer G) or Timer H.
    fn send_final(&mut self, code: u16, bytes: Vec<u8>, now_ms: u64, out: &mut Vec<Action>) {
        self.final_code = code;
        out.push(Action::ToCarrier(bytes.clone()));
        out.push(Action::Disarm(Timer::Overall));
        if self.setup.carrier_reliable {
            return;
        }
        self.final_reply = Some(bytes);
        self.reply_every = T1_MS;
        out.push(Action::Arm {
            timer: Timer::ReplyRetransmit,
            at_ms: now_ms + T1_MS,
        });
        out.push(Action::Arm {
            timer: Timer::ReplyTimeout,
            at_ms: now_ms + TRANSACTION_MS,
        });
    }

    /// The confirmed dialog (after the answer, until the call ends).
    pub fn dialog(&self) -> Option<&Dialog> {
        self.dialog.as_deref()
    }

    /// Hangs up both legs of an answered call (BYE each way).
    fn release(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let Some(d) = self.dialog.as_mut() else {
            return;
        };
        let answered = self
            .attempts
            .iter()
            .find(|a| a.state == State::Answered)
            .map_or(0, |a| a.n);
        let to_carrier = d.bye_to_caller(&branch(&self.id, 0, true));
        let to_trunk = d.bye_to_callee(&branch(&self.id, answered, true));
        let every = |tcp: bool| if tcp { TRANSACTION_MS } else { T1_MS };
        out.push(Action::ToCarrier(to_carrier.clone()));
        let carrier_tcp = self.setup.carrier_reliable;
        self.carrier_bye = Some(Resend {
            bytes: to_carrier,
            to: Dest::Carrier,
            every_ms: every(carrier_tcp),
            until_ms: now_ms + TRANSACTION_MS,
        });
        out.push(Action::Arm {
            timer: Timer::Resend(0),
            at_ms: now_ms + every(carrier_tcp),
        });
        if let Some(a) = self
            .attempts
            .iter_mut()
            .find(|a| a.state == State::Answered)
        {
            out.push(Action::ToTrunk {
                attempt: a.n,
                addr: a.trunk.addr,
                tcp: a.tcp,
                bytes: to_trunk.clone(),
            });
            a.resend = Some(Resend {
                bytes: to_trunk,
                to: Dest::Trunk(a.trunk.addr, a.tcp),
                every_ms: every(a.tcp),
                until_ms: now_ms + TRANSACTION_MS,
            });
            out.push(Action::Arm {
                timer: Timer::Resend(a.n),
                at_ms: now_ms + every(a.tcp),
            });
        }
    }

    /// The answered attempt's row as of `now_ms` (talk time to it), with
    /// when its INVITE went out and when it answered (Unix ms).
    pub fn answered_attempt_row(&self, now_ms: u64) -> Option<(CallAttempt, u64, u64)> {
        let a = self.attempts.iter().find(|a| a.state == State::Answered)?;
        let answered = a.answered_ms?;
        let row = CallAttempt {
            call_id: self.id,
            attempt: a.n,
            sip_call_id: self.sip_call_id.clone(),
            trunk: a.trunk.name.clone(),
            destination: a.destination.clone(),
            started: secs(a.started_ms),
            ended: secs(now_ms),
            pdd_ms: a
                .rang_ms
                .map_or(dur(a.started_ms, answered), |p| dur(a.started_ms, p)),
            answer_ms: dur(a.started_ms, answered),
            talk_ms: dur(answered, now_ms),
            final_code: self.final_code,
            reason: String::new(),
            outcome: Outcome::Answered,
            failover: 0,
            version: now_ms,
            duration_ms: dur(a.started_ms, now_ms),
            site: self.setup.site.clone(),
        };
        Some((row, a.started_ms, answered))
    }

    fn finish_answered(&mut self, now_ms: u64, disposition: Disposition, out: &mut Vec<Action>) {
        out.push(Action::Disarm(Timer::MaxDuration));
        if let Some((row, _, _)) = self.answered_attempt_row(now_ms) {
            out.push(Action::Attempt(Box::new(row)));
        }
        self.dialog = None;
        self.close(disposition, now_ms, out);
    }

    fn close(&mut self, disposition: Disposition, now_ms: u64, out: &mut Vec<Action>) {
        self.phase = if self.final_reply.is_some() {
            Phase::Completed
        } else {
            Phase::Ended
        };
        self.invite = None;
        self.disposition = Some(disposition);
        out.push(Action::Record(Box::new(self.row(disposition, now_ms))));
    }

    fn row(&self, disposition: Disposition, now_ms: u64) -> CallRow {
        let last = self.attempts.last();
        let ring_end = self.answered_ms.unwrap_or(now_ms);
        let ring_ms = self.ringing_ms.map_or(0, |r| dur(r, ring_end));
        row(
            self.id,
            &self.sip_call_id,
            &self.setup,
            self.received_ms,
            self.answered_ms,
            now_ms,
            ring_ms,
            self.final_code,
            self.attempts.len() as u8,
            last.map_or("", |a| a.trunk.name.as_str()),
            last.map_or("", |a| a.destination.as_str()),
            disposition,
        )
    }
}

/// The hop-by-hop ACK of a non-2xx final reply to an attempt's INVITE.
fn ack(a: &Attempt, resp: &Message<'_>) -> Action {
    let bytes = match a.invite.as_deref().map(wire::parse) {
        Some(Ok(inv)) => originate::ack_for_failure(&inv, resp),
        // The INVITE is gone (a reply long after the attempt settled): the
        // reply carries every header the ACK copies but the request URI.
        _ => originate::ack_for_failure_from_reply(
            resp,
            &format!("sip:{}@{}", a.destination, a.trunk.addr),
        ),
    };
    Action::ToTrunk {
        attempt: a.n,
        addr: a.trunk.addr,
        tcp: a.tcp,
        bytes,
    }
}

#[allow(clippy::too_many_arguments)]
fn row(
    id: Uuid,
    sip_call_id: &str,
    setup: &Setup,
    received_ms: u64,
    answered_ms: Option<u64>,
    ended_ms: u64,
    ring_ms: u32,
    final_code: u16,
    attempts: u8,
    final_trunk: &str,
    destination: &str,
    disposition: Disposition,
) -> CallRow {
    let s = &setup.source;
    CallRow {
        call_id: id,
        sip_call_id: sip_call_id.to_string(),
        received: secs(received_ms),
        answered: answered_ms.map_or(0, secs),
        ended: secs(ended_ms),
        ring_ms,
        talk_ms: answered_ms.map_or(0, |a| dur(a, ended_ms)),
        caller: setup.caller.clone(),
        number: setup.number.clone(),
        number_status: setup.status,
        site: setup.site.clone(),
        pool: setup.pool.clone(),
        disposition,
        final_code,
        attempts,
        final_trunk: final_trunk.to_string(),
        destination: destination.to_string(),
        attribution: s.attribution,
        session_id: s.session_id.clone(),
        visitor_id: s.visitor_id.clone(),
        source_label: s.source_label.clone(),
        utm_source: s.utm_source.clone(),
        utm_medium: s.utm_medium.clone(),
        utm_campaign: s.utm_campaign.clone(),
        utm_term: s.utm_term.clone(),
        utm_content: s.utm_content.clone(),
        gclid: s.gclid.clone(),
        yclid: s.yclid.clone(),
        referrer: s.referrer.clone(),
        landing_url: s.landing_url.clone(),
        country: s.country.clone(),
        region: s.region.clone(),
        city: s.city.clone(),
        version: ended_ms,
        gbraid: s.gbraid.clone(),
        wbraid: s.wbraid.clone(),
        fbclid: s.fbclid.clone(),
        msclkid: s.msclkid.clone(),
        ym_uid: s.ym_uid.clone(),
        channel: s.channel.clone(),
        touch_ts: s.touch_ts,
        first_touch_ts: s.first_touch_ts,
        first_channel: s.first_channel.clone(),
        first_utm_source: s.first_utm_source.clone(),
        first_utm_medium: s.first_utm_medium.clone(),
        first_utm_campaign: s.first_utm_campaign.clone(),
        attribution_confidence: s.confidence,
    }
}

#[cfg(test)]
mod tests;
