//! Trunk health as a small breaker: `up` until `down_after` consecutive
//! failures (OPTIONS probe timeouts or 503s, or real calls that got no
//! provisional reply), then `down` until `up_after` consecutive probe
//! successes. Pure: the caller feeds results and gets a transition back.
//!
//! A real call's timeout counts only when no other call got a reply from
//! the trunk within the provisional timeout ([`Health::call_timed_out`]):
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
    /// Unix ms of the last reply a real call got from the trunk.
    last_reply_ms: Option<u64>,
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
            last_reply_ms: None,
        }
    }

    /// A real call got a reply (any status) from the trunk.
    pub fn replied(&mut self, now_ms: u64) {
        self.last_reply_ms = Some(now_ms);
    }

    /// A real call got a reply from the trunk in the `window_ms` before
    /// `now_ms`: a call timing out now lost its packets; the trunk is alive.
    fn replied_within(&self, now_ms: u64, window_ms: u64) -> bool {
        self.last_reply_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < window_ms)
    }

    /// A real call got no provisional reply within `window_ms` (the
    /// provisional timeout): a failure, unless another call got a reply
    /// from the trunk within that window.
    pub fn call_timed_out(&mut self, window_ms: u64, now_ms: u64) -> Option<Transition> {
        if self.replied_within(now_ms, window_ms) {
            return None;
        }
        self.failure(
            TrunkCause::Passive,
            "no provisional reply to a call",
            now_ms,
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
            TrunkState::Up => None,
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

    /// A probe failed, or a real call got no provisional reply in time.
    pub fn failure(&mut self, cause: TrunkCause, reason: &str, now_ms: u64) -> Option<Transition> {
        self.successes = 0;
        match self.state {
            TrunkState::Down => None,
            TrunkState::Up => {
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
        assert!(h.failure(TrunkCause::Probe, "timeout", 1).is_none());
        assert!(h.failure(TrunkCause::Probe, "timeout", 2).is_none());
        // A success in between resets the count.
        assert!(h.success(TrunkCause::Probe, 3).is_none());
        assert!(h.failure(TrunkCause::Probe, "timeout", 4).is_none());
        assert!(h.failure(TrunkCause::Probe, "timeout", 5).is_none());
        let t = h.failure(TrunkCause::Probe, "timeout", 6).unwrap();
        assert_eq!((t.from, t.to), (TrunkState::Up, TrunkState::Down));
        assert!(t.reason.contains("3 consecutive"));
        assert!(!h.is_up());
        assert_eq!(h.since_ms, 6);
        assert!(
            h.failure(TrunkCause::Probe, "timeout", 7).is_none(),
            "no repeated down"
        );
        assert!(h.success(TrunkCause::Probe, 8).is_none());
        assert!(h.failure(TrunkCause::Probe, "timeout", 9).is_none());
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
        assert!(!h.replied_within(5_000, 2_000), "no reply yet");
        h.replied(10_000);
        assert!(h.replied_within(11_999, 2_000));
        assert!(
            !h.replied_within(12_000, 2_000),
            "quiet for the whole window"
        );
        // Timeouts while the trunk answers other calls do not count...
        for t in [10_500, 11_000, 11_999] {
            assert!(h.call_timed_out(2_000, t).is_none());
        }
        assert!(h.is_up());
        // ...once it has been quiet for the window, they do.
        assert!(h.call_timed_out(2_000, 12_000).is_none());
        assert!(h.call_timed_out(2_000, 12_001).is_none());
        let t = h.call_timed_out(2_000, 12_002).unwrap();
        assert_eq!((t.to, t.cause), (TrunkState::Down, TrunkCause::Passive));
    }

    #[test]
    fn passive_failures_count_too() {
        let mut h = Health::new(2, 1, 0);
        assert!(h
            .failure(TrunkCause::Passive, "no provisional", 1)
            .is_none());
        let t = h.failure(TrunkCause::Passive, "no provisional", 2).unwrap();
        assert_eq!(t.cause, TrunkCause::Passive);
    }
}
