//! One inbound call as a state machine: the carrier's INVITE server
//! transaction, serial forwarding attempts over the trunk plan (trunk
//! failover, destination hunting), CANCEL, the dialog until BYE, and the
//! `call_attempts` / `calls` rows. Pure: it takes an [`Event`] and the
//! current time in milliseconds and returns [`Action`]s; the node does the
//! I/O and runs the timers.

use std::net::SocketAddr;

use dialmark_schemas::rows::{
    Attribution, Call as CallRow, CallAttempt, Disposition, NumberStatus, Outcome,
};
use uuid::Uuid;

use crate::wire::{self, Forward, Message};

/// SIP timer T1 (RFC 3261 §17.1.1.1).
pub const T1_MS: u64 = 500;
/// How long a finished call lingers to absorb retransmissions (Timer J/H).
pub const LINGER_MS: u64 = 32_000;

/// Call timing and policy, from `[router]` config.
#[derive(Debug, Clone)]
pub struct Policy {
    pub provisional_timeout_ms: u64,
    pub ring_timeout_ms: u64,
    pub overall_timeout_ms: u64,
    pub max_call_ms: u64,
    pub failover_codes: Vec<u16>,
    /// `host:port` we put in Via and Record-Route.
    pub advertise: String,
}

/// A trunk an attempt may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkRef {
    pub name: String,
    pub addr: SocketAddr,
}

/// What the call is attributed to, stamped at arrival.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    pub attribution: Attribution,
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
}

/// Timers the call arms; each names the attempt it belongs to, so a timer
/// of a finished attempt is recognised as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Retransmit the INVITE of an attempt over UDP (Timer A).
    Retransmit(u8),
    /// No provisional reply from the trunk in time: fail over.
    NoProvisional(u8),
    /// Ringing too long at this destination: hunt to the next.
    Ring(u8),
    /// The caller must not wait longer.
    Overall,
    /// Trunk sent no final reply after our CANCEL.
    CancelGuard(u8),
    /// An answered call has run for the maximum duration.
    MaxDuration,
    /// Forget the call.
    Linger,
}

/// Inputs of the state machine.
#[derive(Debug)]
pub enum Event<'a> {
    /// A response from a trunk to attempt `n`'s INVITE.
    Response {
        attempt: u8,
        msg: &'a Message<'a>,
    },
    /// The carrier retransmitted the INVITE.
    InviteRetransmit,
    /// The carrier cancelled the INVITE.
    Cancel,
    /// Sending attempt `n`'s INVITE failed (ICMP, TCP refused).
    TransportError {
        attempt: u8,
    },
    /// A BYE in the dialog from either side.
    Bye,
    Timer(Timer),
}

/// Outputs: what the node must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send to the carrier that sent the INVITE.
    ToCarrier(Vec<u8>),
    /// Send to a trunk.
    ToTrunk { addr: SocketAddr, bytes: Vec<u8> },
    /// Arm a timer at an absolute time (ms); replaces an equal timer.
    Arm { timer: Timer, at_ms: u64 },
    /// A new attempt on `trunk`: its branch belongs to this call.
    Branch {
        branch: String,
        attempt: u8,
        trunk: String,
    },
    /// A finished attempt's row.
    Attempt(Box<CallAttempt>),
    /// The call's final row.
    Record(Box<CallRow>),
    /// A trunk did not answer in time (passive health).
    TrunkTimeout(String),
    /// A trunk sent its first reply on an attempt: it is alive (passive
    /// health weighs a later timeout against it).
    TrunkReplied(String),
    /// The call can be forgotten.
    Forget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Trying,
    Canceling,
    Answered,
    Finished,
}

#[derive(Debug, Clone)]
struct Attempt {
    n: u8,
    trunk: TrunkRef,
    destination: String,
    invite: Vec<u8>,
    started_ms: u64,
    provisional_ms: Option<u64>,
    answered_ms: Option<u64>,
    retransmit_every: u64,
    final_code: Option<u16>,
    done: bool,
}

/// One inbound call.
pub struct Call {
    pub id: Uuid,
    pub sip_call_id: String,
    invite: Vec<u8>,
    setup: Setup,
    policy: Policy,
    received_ms: u64,
    phase: Phase,
    attempts: Vec<Attempt>,
    dest_idx: usize,
    trunk_idx: usize,
    to_tag: String,
    /// Last response we sent the carrier for the INVITE (for retransmissions).
    last_to_carrier: Option<Vec<u8>>,
    ringing_ms: Option<u64>,
    answered_ms: Option<u64>,
    final_code: u16,
    disposition: Option<Disposition>,
}

fn secs(ms: u64) -> u32 {
    (ms / 1000) as u32
}

fn dur(from: u64, to: u64) -> u32 {
    to.saturating_sub(from).min(u64::from(u32::MAX)) as u32
}

impl Call {
    /// Starts routing a call whose INVITE (raw bytes, already checked) came
    /// from a trusted carrier and was answered with 100 Trying by the node.
    /// Sends the first attempt.
    pub fn start(
        invite: Vec<u8>,
        setup: Setup,
        policy: Policy,
        now_ms: u64,
    ) -> (Call, Vec<Action>) {
        let id = Uuid::new_v4();
        let sip_call_id = wire::parse(&invite)
            .map(|m| m.call_id().to_string())
            .unwrap_or_default();
        let mut call = Call {
            id,
            sip_call_id,
            invite,
            setup,
            policy,
            received_ms: now_ms,
            phase: Phase::Trying,
            attempts: Vec::new(),
            dest_idx: 0,
            trunk_idx: 0,
            to_tag: id.simple().to_string()[..12].to_string(),
            last_to_carrier: None,
            ringing_ms: None,
            answered_ms: None,
            final_code: 0,
            disposition: None,
        };
        // The node already sent 100 Trying; keep it for INVITE retransmissions.
        if let Ok(inv) = wire::parse(&call.invite) {
            call.last_to_carrier = Some(wire::response(&inv, 100, "Trying", None, &[]));
        }
        let mut out = Vec::new();
        out.push(Action::Arm {
            timer: Timer::Overall,
            at_ms: now_ms + call.policy.overall_timeout_ms,
        });
        if call.setup.trunks.is_empty() || call.setup.destinations.is_empty() {
            call.fail(
                503,
                "Service Unavailable",
                Disposition::Failed,
                now_ms,
                &mut out,
            );
        } else {
            call.next_attempt(now_ms, &mut out);
        }
        (call, out)
    }

    /// Records a call we reject without forwarding (quarantine, unknown,
    /// untrusted...). Returns the reply and the row.
    pub fn reject(
        invite: &Message<'_>,
        setup: &Setup,
        code: u16,
        reason: &str,
        disposition: Disposition,
        now_ms: u64,
    ) -> (Vec<u8>, CallRow) {
        let tag = Uuid::new_v4().simple().to_string()[..12].to_string();
        let bytes = wire::response(invite, code, reason, Some(&tag), &[]);
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

    /// Whether the call is over (final reply sent, or BYE seen).
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// The trunk of the answered attempt (in-dialog requests go there).
    pub fn answered_trunk(&self) -> Option<SocketAddr> {
        self.attempts
            .iter()
            .find(|a| a.answered_ms.is_some())
            .map(|a| a.trunk.addr)
    }

    pub fn handle(&mut self, event: Event<'_>, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::InviteRetransmit => {
                if let Some(last) = &self.last_to_carrier {
                    out.push(Action::ToCarrier(last.clone()));
                }
            }
            Event::Response { attempt, msg } => self.on_response(attempt, msg, now_ms, &mut out),
            Event::Cancel => self.on_cancel(now_ms, &mut out),
            Event::TransportError { attempt } => {
                if self.is_current(attempt) && self.phase == Phase::Trying {
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
            Event::Bye => {
                if self.phase == Phase::Answered {
                    self.finish_answered(now_ms, Disposition::Answered, &mut out);
                }
            }
            Event::Timer(t) => self.on_timer(t, now_ms, &mut out),
        }
        out
    }

    fn current(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| !a.done)
    }

    fn is_current(&self, n: u8) -> bool {
        self.current().is_some_and(|a| a.n == n)
    }

    fn reply(&mut self, code: u16, reason: &str, out: &mut Vec<Action>) {
        let Ok(inv) = wire::parse(&self.invite) else {
            return;
        };
        let tag = (code > 100).then_some(self.to_tag.as_str());
        let bytes = wire::response(&inv, code, reason, tag, &[]);
        self.last_to_carrier = Some(bytes.clone());
        out.push(Action::ToCarrier(bytes));
    }

    fn next_attempt(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let n = self.attempts.len() as u8 + 1;
        let trunk = self.setup.trunks[self.trunk_idx].clone();
        let destination = self.setup.destinations[self.dest_idx].clone();
        let Ok(inv) = wire::parse(&self.invite) else {
            self.fail(
                500,
                "Server Internal Error",
                Disposition::Failed,
                now_ms,
                out,
            );
            return;
        };
        let branch = format!("z9hG4bK-dm-{}-{n}", self.id.simple());
        let via = format!("SIP/2.0/UDP {};branch={branch}", self.policy.advertise);
        let uri = format!("sip:{destination}@{}", trunk.addr);
        let rr = format!("<sip:{};lr>", self.policy.advertise);
        let add: Vec<(&str, String)> = self
            .setup
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let bytes = Forward {
            msg: &inv,
            uri: Some(&uri),
            via: &via,
            record_route: Some(&rr),
            drop_first_route: inv
                .header("route")
                .is_some_and(|r| r.contains(&self.policy.advertise)),
            max_forwards: inv.max_forwards().saturating_sub(1),
            add: &add,
        }
        .build();
        out.push(Action::Branch {
            branch,
            attempt: n,
            trunk: trunk.name.clone(),
        });
        out.push(Action::ToTrunk {
            addr: trunk.addr,
            bytes: bytes.clone(),
        });
        out.push(Action::Arm {
            timer: Timer::Retransmit(n),
            at_ms: now_ms + T1_MS,
        });
        out.push(Action::Arm {
            timer: Timer::NoProvisional(n),
            at_ms: now_ms + self.policy.provisional_timeout_ms,
        });
        self.attempts.push(Attempt {
            n,
            trunk,
            destination,
            invite: bytes,
            started_ms: now_ms,
            provisional_ms: None,
            answered_ms: None,
            retransmit_every: T1_MS,
            final_code: None,
            done: false,
        });
    }

    fn on_response(&mut self, n: u8, msg: &Message<'_>, now_ms: u64, out: &mut Vec<Action>) {
        let Some(code) = msg.status() else { return };
        let Some(idx) = self.attempts.iter().position(|a| a.n == n) else {
            return;
        };
        let a = &self.attempts[idx];
        if a.provisional_ms.is_none() && a.answered_ms.is_none() && a.final_code.is_none() {
            out.push(Action::TrunkReplied(a.trunk.name.clone()));
        }
        // A 2xx retransmission (or a late 2xx of a finished call): pass it on.
        if (200..300).contains(&code)
            && (self.attempts[idx].answered_ms.is_some() || self.phase == Phase::Finished)
        {
            out.push(Action::ToCarrier(wire::strip_top_via(msg)));
            return;
        }
        if self.attempts[idx].done {
            // A final reply of an attempt we gave up on: ACK non-2xx, drop.
            if code >= 300 {
                out.push(self.ack(idx, msg));
            }
            return;
        }
        if code < 200 {
            let a = &mut self.attempts[idx];
            if a.provisional_ms.is_none() {
                a.provisional_ms = Some(now_ms);
            }
            if code == 100 {
                return;
            }
            if self.ringing_ms.is_none() && (code == 180 || code == 183) {
                self.ringing_ms = Some(now_ms);
            }
            if matches!(code, 180 | 183) && self.phase == Phase::Trying {
                out.push(Action::Arm {
                    timer: Timer::Ring(n),
                    at_ms: now_ms + self.policy.ring_timeout_ms,
                });
            }
            if self.phase == Phase::Trying {
                out.push(Action::ToCarrier(wire::strip_top_via(msg)));
            }
            return;
        }
        if code < 300 {
            // Answered.
            let a = &mut self.attempts[idx];
            a.answered_ms = Some(now_ms);
            a.final_code = Some(code);
            self.answered_ms = Some(now_ms);
            self.final_code = code;
            self.phase = Phase::Answered;
            let fwd = wire::strip_top_via(msg);
            self.last_to_carrier = Some(fwd.clone());
            out.push(Action::ToCarrier(fwd));
            out.push(Action::Arm {
                timer: Timer::MaxDuration,
                at_ms: now_ms + self.policy.max_call_ms,
            });
            return;
        }
        // Non-2xx final reply: ACK hop by hop, then decide.
        out.push(self.ack(idx, msg));
        let reason = msg.reason().to_string();
        if self.phase == Phase::Canceling {
            self.end_attempt(n, code, &reason, Outcome::Canceled, false, now_ms, out);
            self.abandon(now_ms, out);
            return;
        }
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
        let fwd = wire::strip_top_via(msg);
        self.finish_unanswered(code, fwd, disposition, now_ms, out);
    }

    fn ack(&self, idx: usize, resp: &Message<'_>) -> Action {
        let a = &self.attempts[idx];
        let bytes = match wire::parse(&a.invite) {
            Ok(inv) => wire::ack_or_cancel(&inv, "ACK", resp.header("to")),
            Err(_) => Vec::new(),
        };
        Action::ToTrunk {
            addr: a.trunk.addr,
            bytes,
        }
    }

    fn on_cancel(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if self.phase != Phase::Trying {
            return;
        }
        self.phase = Phase::Canceling;
        if let Some(a) = self.current() {
            let n = a.n;
            let addr = a.trunk.addr;
            if let Ok(inv) = wire::parse(&a.invite) {
                out.push(Action::ToTrunk {
                    addr,
                    bytes: wire::ack_or_cancel(&inv, "CANCEL", None),
                });
            }
            out.push(Action::Arm {
                timer: Timer::CancelGuard(n),
                at_ms: now_ms + self.policy.provisional_timeout_ms,
            });
        } else {
            self.abandon(now_ms, out);
        }
    }

    fn on_timer(&mut self, t: Timer, now_ms: u64, out: &mut Vec<Action>) {
        match t {
            Timer::Retransmit(n) => {
                if !self.is_current(n) || self.phase == Phase::Answered {
                    return;
                }
                let idx = self.attempts.len() - 1;
                let a = &mut self.attempts[idx];
                if a.provisional_ms.is_some() {
                    return;
                }
                a.retransmit_every = (a.retransmit_every * 2).min(4_000);
                out.push(Action::ToTrunk {
                    addr: a.trunk.addr,
                    bytes: a.invite.clone(),
                });
                out.push(Action::Arm {
                    timer: Timer::Retransmit(n),
                    at_ms: now_ms + a.retransmit_every,
                });
            }
            Timer::NoProvisional(n) => {
                if !self.is_current(n) || self.phase != Phase::Trying {
                    return;
                }
                let a = self.attempts.last().expect("current");
                if a.provisional_ms.is_some() {
                    return;
                }
                out.push(Action::TrunkTimeout(a.trunk.name.clone()));
                self.cancel_current(out);
                self.trunk_failed(
                    n,
                    408,
                    "no provisional response",
                    Outcome::Timeout,
                    now_ms,
                    out,
                );
            }
            Timer::Ring(n) => {
                if !self.is_current(n) || self.phase != Phase::Trying {
                    return;
                }
                self.cancel_current(out);
                self.end_attempt(
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
                    self.fail(
                        480,
                        "Temporarily Unavailable",
                        Disposition::Missed,
                        now_ms,
                        out,
                    );
                }
            }
            Timer::Overall => {
                if self.phase != Phase::Trying && self.phase != Phase::Canceling {
                    return;
                }
                if let Some(a) = self.current() {
                    let n = a.n;
                    self.cancel_current(out);
                    self.end_attempt(
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
                self.fail(408, "Request Timeout", d, now_ms, out);
            }
            Timer::CancelGuard(n) => {
                if self.phase == Phase::Canceling && self.is_current(n) {
                    self.end_attempt(n, 487, "canceled", Outcome::Canceled, false, now_ms, out);
                    self.abandon(now_ms, out);
                }
            }
            Timer::MaxDuration => {
                if self.phase == Phase::Answered {
                    self.finish_answered(now_ms, Disposition::Timeout, out);
                }
            }
            Timer::Linger => {
                if self.phase == Phase::Finished {
                    out.push(Action::Forget);
                }
            }
        }
    }

    fn cancel_current(&self, out: &mut Vec<Action>) {
        if let Some(a) = self.current() {
            if a.provisional_ms.is_some() {
                if let Ok(inv) = wire::parse(&a.invite) {
                    out.push(Action::ToTrunk {
                        addr: a.trunk.addr,
                        bytes: wire::ack_or_cancel(&inv, "CANCEL", None),
                    });
                }
            }
        }
    }

    /// Whether another trunk is left for the current destination.
    fn has_next_trunk(&self) -> bool {
        self.trunk_idx + 1 < self.setup.trunks.len()
    }

    /// Ends the current attempt as a trunk failure and tries the next trunk,
    /// or fails the call when none is left.
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
        self.end_attempt(n, code, reason, outcome, next, now_ms, out);
        if next {
            self.trunk_idx += 1;
            self.next_attempt(now_ms, out);
        } else {
            self.fail(503, "Service Unavailable", Disposition::Failed, now_ms, out);
        }
    }

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
    ) {
        let Some(a) = self.attempts.iter_mut().find(|a| a.n == n) else {
            return;
        };
        if a.done && a.final_code.is_some() {
            return;
        }
        a.done = true;
        a.final_code = Some(code);
        let row = CallAttempt {
            call_id: self.id,
            attempt: n,
            sip_call_id: self.sip_call_id.clone(),
            trunk: a.trunk.name.clone(),
            destination: a.destination.clone(),
            started: secs(a.started_ms),
            ended: secs(now_ms),
            pdd_ms: a.provisional_ms.map_or(0, |p| dur(a.started_ms, p)),
            answer_ms: a.answered_ms.map_or(0, |p| dur(a.started_ms, p)),
            talk_ms: 0,
            final_code: code,
            reason: reason.to_string(),
            outcome,
            failover: u8::from(failover),
        };
        out.push(Action::Attempt(Box::new(row)));
    }

    /// The caller hung up before an answer.
    fn abandon(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        self.fail(
            487,
            "Request Terminated",
            Disposition::Abandoned,
            now_ms,
            out,
        );
    }

    fn fail(
        &mut self,
        code: u16,
        reason: &str,
        disposition: Disposition,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        if self.phase == Phase::Finished {
            return;
        }
        self.reply(code, reason, out);
        self.final_code = code;
        self.close(disposition, now_ms, out);
    }

    fn finish_unanswered(
        &mut self,
        code: u16,
        fwd: Vec<u8>,
        disposition: Disposition,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        self.last_to_carrier = Some(fwd.clone());
        out.push(Action::ToCarrier(fwd));
        self.final_code = code;
        self.close(disposition, now_ms, out);
    }

    fn finish_answered(&mut self, now_ms: u64, disposition: Disposition, out: &mut Vec<Action>) {
        if let Some(idx) = self.attempts.iter().position(|a| a.answered_ms.is_some()) {
            let a = &self.attempts[idx];
            let answered = a.answered_ms.expect("answered");
            let row = CallAttempt {
                call_id: self.id,
                attempt: a.n,
                sip_call_id: self.sip_call_id.clone(),
                trunk: a.trunk.name.clone(),
                destination: a.destination.clone(),
                started: secs(a.started_ms),
                ended: secs(now_ms),
                pdd_ms: a
                    .provisional_ms
                    .map_or(dur(a.started_ms, answered), |p| dur(a.started_ms, p)),
                answer_ms: dur(a.started_ms, answered),
                talk_ms: dur(answered, now_ms),
                final_code: a.final_code.unwrap_or(200),
                reason: String::new(),
                outcome: Outcome::Answered,
                failover: 0,
            };
            self.attempts[idx].done = true;
            out.push(Action::Attempt(Box::new(row)));
        }
        self.close(disposition, now_ms, out);
    }

    fn close(&mut self, disposition: Disposition, now_ms: u64, out: &mut Vec<Action>) {
        self.phase = Phase::Finished;
        self.disposition = Some(disposition);
        let last = self.attempts.last();
        let ring_end = self.answered_ms.unwrap_or(now_ms);
        let ring_ms = self.ringing_ms.map_or(0, |r| dur(r, ring_end));
        let row = row(
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
        );
        out.push(Action::Record(Box::new(row)));
        out.push(Action::Arm {
            timer: Timer::Linger,
            at_ms: now_ms + LINGER_MS,
        });
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
    }
}

#[cfg(test)]
mod tests;
