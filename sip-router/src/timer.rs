//! A shard's timers: an ordered set of deadlines, each with a handle its
//! owner keeps and cancels when the state the timer guards goes away, so a
//! finished call leaves nothing scheduled (a 4-hour max-duration timer of
//! a call that ended after a minute is gone with the call, not left to
//! fire into nothing). Pure: time is passed in milliseconds.

use std::collections::BTreeMap;

/// The handle of an armed timer: its deadline and a sequence number that
/// keeps equal deadlines apart and makes a handle unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Handle {
    at_ms: u64,
    seq: u64,
}

impl Handle {
    pub fn at_ms(&self) -> u64 {
        self.at_ms
    }
}

/// Armed timers carrying a `K` each, fired in deadline order.
#[derive(Debug)]
pub struct Timers<K> {
    armed: BTreeMap<Handle, K>,
    seq: u64,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Self {
            armed: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<K> Timers<K> {
    /// Arms a timer; keep the handle to cancel it.
    pub fn arm(&mut self, at_ms: u64, key: K) -> Handle {
        self.seq += 1;
        let h = Handle {
            at_ms,
            seq: self.seq,
        };
        self.armed.insert(h, key);
        h
    }

    /// Cancels a timer; `None` when it fired or was cancelled already.
    pub fn cancel(&mut self, h: Handle) -> Option<K> {
        self.armed.remove(&h)
    }

    /// The earliest deadline.
    pub fn next_at(&self) -> Option<u64> {
        self.armed.first_key_value().map(|(h, _)| h.at_ms)
    }

    /// Takes the earliest timer due at `now_ms`, if any.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(Handle, K)> {
        if self.next_at()? > now_ms {
            return None;
        }
        self.armed.pop_first()
    }

    pub fn len(&self) -> usize {
        self.armed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.armed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_order_and_cancelled_timers_never_fire() {
        let mut t = Timers::default();
        let late = t.arm(300, "late");
        let early = t.arm(100, "early");
        let same = t.arm(100, "same deadline, armed later");
        assert_eq!(t.len(), 3);
        assert_eq!(t.next_at(), Some(100));
        assert_eq!(t.cancel(early), Some("early"));
        assert_eq!(t.cancel(early), None, "a handle cancels once");
        assert!(t.pop_due(99).is_none(), "nothing due yet");
        assert_eq!(t.pop_due(100), Some((same, "same deadline, armed later")));
        assert!(t.pop_due(299).is_none());
        assert_eq!(t.cancel(late), Some("late"));
        assert!(t.pop_due(u64::MAX).is_none());
        assert!(t.is_empty(), "nothing is left scheduled");
    }

    #[test]
    fn a_fired_handle_cancels_nothing() {
        let mut t = Timers::default();
        let h = t.arm(10, 1);
        let other = t.arm(10, 2);
        assert_eq!(t.pop_due(10), Some((h, 1)));
        assert_eq!(t.cancel(h), None);
        assert_eq!(t.len(), 1);
        assert_eq!(t.cancel(other), Some(2));
    }
}
