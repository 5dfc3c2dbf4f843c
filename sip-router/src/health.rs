//! Trunk health as a small breaker: `up` until `down_after` consecutive
//! failures (OPTIONS probe timeouts or 503s, or real calls that got no
//! provisional reply), then `down` until `up_after` consecutive probe
//! successes. Pure: the caller feeds results and gets a transition back.
//!
//! Failures count when consecutive: a reply to a real call since the last
//! failure starts the count again. A real call's timeout counts only when
//! no call got a reply from the trunk within the provisional timeout
//! ([`Health::call_timed_out`]):
//! at thousands of calls a second, a burst of lost packets (a full socket
//! buffer on a busy box) times out a few calls in a row on a trunk that is
//! answering every other call, and downing it would fail every call that
//! needed it.

use dialmark_schemas::rows::{TrunkCause, TrunkState};

/// A state change to report (row, metric, log line, webhook).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: TrunkState,
    pub to: TrunkState,
    pub cause: TrunkCause,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Health {
    state: TrunkState,
    failures: u32,
    successes: u32,
    down_after: u32,
    up_after: u32,
    /// Unix ms of the last state change.
    pub since_ms: u64,
    /// Unix ms of the last failure counted.
    last_failure_ms: u64,
}

impl Health {
    pub fn new(down_after: u32, up_after: u32, now_ms: u64) -> Self {
        Self {
            state: TrunkState::Up,
            failures: 0,
            successes: 0,
            down_after: down_after.max(1),
            up_after: up_after.max(1),
            since_ms: now_ms,
            last_failure_ms: 0,
        }
    }

    /// A trunk the pair's last active left down at `since_ms`: down until
    /// `up_after` successes, as if this node had seen it fail.
    pub fn inherited_down(down_after: u32, up_after: u32, since_ms: u64) -> Self {
        Self {
            state: TrunkState::Down,
            ..Self::new(down_after, up_after, since_ms)
        }
    }

    /// A real call got no provisional reply within `window_ms` (the
    /// provisional timeout): a failure, unless a call got a reply from the
    /// trunk within that window (`last_reply_ms`, Unix ms, 0 = never): a
    /// call timing out now lost its packets; the trunk is alive.
    pub fn call_timed_out(
        &mut self,
        window_ms: u64,
        now_ms: u64,
        last_reply_ms: u64,
    ) -> Option<Transition> {
        if last_reply_ms > 0 && now_ms.saturating_sub(last_reply_ms) < window_ms {
            return None;
        }
        self.failure(
            TrunkCause::Passive,
            "no provisional reply to a call",
            now_ms,
            last_reply_ms,
        )
    }

    /// New thresholds (config reload); the state and counts stay.
    pub fn retune(&mut self, down_after: u32, up_after: u32) {
        self.down_after = down_after.max(1);
        self.up_after = up_after.max(1);
    }

    pub fn state(&self) -> TrunkState {
        self.state
    }

    pub fn is_up(&self) -> bool {
        self.state == TrunkState::Up
    }

    /// A probe answered (or a real call got a reply): the trunk is alive.
    pub fn success(&mut self, cause: TrunkCause, now_ms: u64) -> Option<Transition> {
        self.failures = 0;
        match self.state {
            // Health knows only up and down; degraded and drained live elsewhere.
            TrunkState::Up | TrunkState::Degraded | TrunkState::Drained => None,
            TrunkState::Down => {
                // Only probes bring a trunk back: a down trunk gets no calls.
                self.successes += 1;
                (self.successes >= self.up_after).then(|| {
                    self.set(
                        TrunkState::Up,
                        cause,
                        format!("{} consecutive successful probes", self.successes),
                        now_ms,
                    )
                })
            }
        }
    }

    /// A probe failed, or a real call failed on the trunk; `last_reply_ms`
    /// is when a real call last got a reply from it (a reply since the
    /// last failure breaks the run).
    pub fn failure(
        &mut self,
        cause: TrunkCause,
        reason: &str,
        now_ms: u64,
        last_reply_ms: u64,
    ) -> Option<Transition> {
        self.successes = 0;
        match self.state {
            TrunkState::Down | TrunkState::Degraded | TrunkState::Drained => None,
            TrunkState::Up => {
                if last_reply_ms > self.last_failure_ms {
                    self.failures = 0;
                }
                self.last_failure_ms = now_ms;
                self.failures += 1;
                (self.failures >= self.down_after).then(|| {
                    self.set(
                        TrunkState::Down,
                        cause,
                        format!("{} consecutive failures; last: {reason}", self.failures),
                        now_ms,
                    )
                })
            }
        }
    }

    fn set(
        &mut self,
        to: TrunkState,
        cause: TrunkCause,
        reason: String,
        now_ms: u64,
    ) -> Transition {
        let from = self.state;
        self.state = to;
        self.failures = 0;
        self.successes = 0;
        self.since_ms = now_ms;
        Transition {
            from,
            to,
            cause,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_n_failures_up_after_m_successes() {
        let mut h = Health::new(3, 2, 0);
        let fail = |h: &mut Health, t| h.failure(TrunkCause::Probe, "timeout", t, 0);
        assert!(fail(&mut h, 1).is_none());
        assert!(fail(&mut h, 2).is_none());
        // A success in between resets the count.
        assert!(h.success(TrunkCause::Probe, 3).is_none());
        assert!(fail(&mut h, 4).is_none());
        assert!(fail(&mut h, 5).is_none());
        let t = fail(&mut h, 6).unwrap();
        assert_eq!((t.from, t.to), (TrunkState::Up, TrunkState::Down));
        assert!(t.reason.contains("3 consecutive"));
        assert!(!h.is_up());
        assert_eq!(h.since_ms, 6);
        assert!(fail(&mut h, 7).is_none(), "no repeated down");
        assert!(h.success(TrunkCause::Probe, 8).is_none());
        assert!(fail(&mut h, 9).is_none());
        assert!(
            h.success(TrunkCause::Probe, 10).is_none(),
            "a failure resets the success count"
        );
        let t = h.success(TrunkCause::Probe, 11).unwrap();
        assert_eq!((t.from, t.to), (TrunkState::Down, TrunkState::Up));
        assert!(h.is_up());
    }

    #[test]
    fn a_recent_reply_outweighs_a_timeout() {
        let mut h = Health::new(3, 2, 0);
        // Timeouts while the trunk answers other calls do not count...
        for t in [10_500, 11_000, 11_999] {
            assert!(h.call_timed_out(2_000, t, 10_000).is_none());
        }
        assert!(h.is_up());
        // ...once it has been quiet for the window, they do.
        assert!(h.call_timed_out(2_000, 12_000, 10_000).is_none());
        assert!(h.call_timed_out(2_000, 12_001, 10_000).is_none());
        let t = h.call_timed_out(2_000, 12_002, 10_000).unwrap();
        assert_eq!((t.to, t.cause), (TrunkState::Down, TrunkCause::Passive));
        let mut never = Health::new(1, 1, 0);
        assert!(
            never.call_timed_out(2_000, 1_000, 0).is_some(),
            "no reply ever: the timeout counts"
        );
    }

    #[test]
    fn a_reply_between_failures_breaks_the_run() {
        let mut h = Health::new(2, 1, 0);
        assert!(h
            .failure(TrunkCause::Passive, "no ringing", 1_000, 0)
            .is_none());
        // A call got a reply at 1_500: the next failure starts a new run.
        assert!(h
            .failure(TrunkCause::Passive, "no ringing", 2_000, 1_500)
            .is_none());
        let t = h
            .failure(TrunkCause::Passive, "no ringing", 3_000, 1_500)
            .unwrap();
        assert_eq!(t.cause, TrunkCause::Passive);
        assert!(t.reason.contains("no ringing"));
    }

    #[test]
    fn an_inherited_down_trunk_needs_its_successes_to_come_up() {
        let mut h = Health::inherited_down(3, 2, 1_000);
        assert!(!h.is_up());
        assert_eq!(h.since_ms, 1_000);
        assert_eq!(h.success(TrunkCause::Probe, 2_000), None);
        let up = h.success(TrunkCause::Probe, 3_000).expect("up");
        assert_eq!((up.from, up.to), (TrunkState::Down, TrunkState::Up));
    }
}
