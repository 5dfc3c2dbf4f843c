//! Per-source flood protection, like Kamailio's pike: a token bucket per
//! source IP; a source that empties its bucket is banned for a window and
//! its messages are dropped unread (no reply: a reply would feed a flood).
//! Pure: time is passed in milliseconds.

use std::collections::HashMap;
use std::net::IpAddr;

/// Sources tracked at most; idle ones are pruned beyond that.
const MAX_SOURCES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
    banned_until: u64,
}

/// What to do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// The source just crossed the limit: banned from now on.
    Ban,
    /// The source is banned: drop.
    Drop,
}

#[derive(Debug)]
pub struct Limiter {
    rate: f64,
    burst: f64,
    ban_ms: u64,
    sources: HashMap<IpAddr, Bucket>,
}

impl Limiter {
    /// `rate` messages per second sustained, `burst` at once; 0 turns it off.
    pub fn new(rate: u32, burst: u32, ban_seconds: u64) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(rate)),
            ban_ms: ban_seconds * 1000,
            sources: HashMap::new(),
        }
    }

    pub fn check(&mut self, ip: IpAddr, now_ms: u64) -> Verdict {
        if self.rate == 0.0 {
            return Verdict::Pass;
        }
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&ip) {
            let (rate, burst) = (self.rate, self.burst);
            self.sources.retain(|_, b| {
                b.banned_until > now_ms
                    || b.tokens + (now_ms.saturating_sub(b.at_ms) as f64 / 1000.0) * rate < burst
            });
            if self.sources.len() >= MAX_SOURCES {
                // Every tracked source is active (a flood from many
                // addresses): memory stays bounded, newcomers wait.
                return Verdict::Drop;
            }
        }
        let b = self.sources.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at_ms: now_ms,
            banned_until: 0,
        });
        if b.banned_until > now_ms {
            return Verdict::Drop;
        }
        let elapsed = now_ms.saturating_sub(b.at_ms) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at_ms = now_ms;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Verdict::Pass
        } else {
            b.banned_until = now_ms + self.ban_ms;
            Verdict::Ban
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_ban_then_recover() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let mut l = Limiter::new(10, 20, 5);
        for _ in 0..20 {
            assert_eq!(l.check(ip, 0), Verdict::Pass);
        }
        assert_eq!(l.check(ip, 0), Verdict::Ban);
        assert_eq!(
            l.check(ip, 1_000),
            Verdict::Drop,
            "banned for the window even though tokens refilled"
        );
        assert_eq!(
            l.check(other, 1_000),
            Verdict::Pass,
            "other sources are not affected"
        );
        assert_eq!(l.check(ip, 5_000), Verdict::Pass, "the ban ends");
        // Sustained traffic at the rate passes.
        let mut t = 10_000;
        for _ in 0..100 {
            t += 100;
            assert_eq!(l.check(ip, t), Verdict::Pass);
        }
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_from_many_sources() {
        let mut l = Limiter::new(10, 20, 5);
        let ip = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        for n in 0..MAX_SOURCES as u32 {
            assert_eq!(l.check(ip(n), 0), Verdict::Pass);
        }
        assert_eq!(
            l.check(ip(u32::MAX >> 8), 0),
            Verdict::Drop,
            "no room for a newcomer"
        );
        assert_eq!(l.sources.len(), MAX_SOURCES);
        assert_eq!(l.check(ip(7), 0), Verdict::Pass, "known sources go on");
        // Once the flooders went quiet (buckets full again), room is made.
        assert_eq!(l.check(ip(u32::MAX >> 8), 60_000), Verdict::Pass);
        assert!(l.sources.len() <= MAX_SOURCES);
    }

    #[test]
    fn zero_rate_is_off() {
        let mut l = Limiter::new(0, 0, 5);
        for _ in 0..10_000 {
            assert_eq!(l.check("192.0.2.1".parse().unwrap(), 0), Verdict::Pass);
        }
    }
}
