//! INVITEs from sources that are not trusted carriers: refused with 403
//! where they arrive, counted per source and minute, and sampled into
//! ClickHouse: the first INVITE of each source in each minute becomes a
//! `calls` row (`rejected_untrusted`), and each source's minute one
//! `untrusted_sources` row with its count. A flood costs a counter, not a
//! row and a webhook per packet. Memory is bounded: past
//! [`MAX_SOURCES`] sources in a minute, the rest are counted together
//! under the source `*`. Pure: time is passed in Unix seconds.

use std::collections::HashMap;
use std::net::IpAddr;

use dialmark_schemas::rows::UntrustedSource;
use uuid::Uuid;

/// Sources counted apart in one minute at most.
pub const MAX_SOURCES: usize = 10_000;

#[derive(Debug)]
struct Count {
    requests: u32,
    sample: Uuid,
    number: String,
    caller: String,
}

/// One minute's counts.
#[derive(Debug, Default)]
pub struct Abuse {
    minute: u32,
    sources: HashMap<IpAddr, Count>,
    others: Option<Count>,
}

/// What to do with one untrusted INVITE.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The source's first this minute: record it as a call with this id.
    Sample(Uuid),
    /// Counted only.
    Counted,
}

impl Abuse {
    /// Counts an INVITE for `number` from `caller` at `ip`; returns the
    /// rows of a minute that ended, if any.
    pub fn count(
        &mut self,
        ip: IpAddr,
        number: &str,
        caller: &str,
        now_secs: u32,
    ) -> (Verdict, Vec<UntrustedSource>) {
        let done = self.flush(now_secs);
        let fresh = || Count {
            requests: 0,
            sample: Uuid::new_v4(),
            number: String::new(),
            caller: String::new(),
        };
        let slot = if self.sources.contains_key(&ip) || self.sources.len() < MAX_SOURCES {
            self.sources.entry(ip).or_insert_with(fresh)
        } else {
            self.others.get_or_insert_with(fresh)
        };
        slot.requests += 1;
        slot.number.clear();
        slot.number.push_str(number);
        slot.caller.clear();
        slot.caller.push_str(caller);
        let verdict = if slot.requests == 1 {
            Verdict::Sample(slot.sample)
        } else {
            Verdict::Counted
        };
        (verdict, done)
    }

    /// The rows of the counted minute once `now_secs` is past it.
    pub fn flush(&mut self, now_secs: u32) -> Vec<UntrustedSource> {
        let minute = now_secs - now_secs % 60;
        if minute == self.minute {
            return Vec::new();
        }
        let was = std::mem::replace(&mut self.minute, minute);
        let row = |source: String, c: Count| UntrustedSource {
            event_id: Uuid::new_v4(),
            minute: was,
            source,
            requests: c.requests,
            sample_call_id: c.sample,
            last_number: c.number,
            last_caller: c.caller,
        };
        let mut rows: Vec<UntrustedSource> = self
            .sources
            .drain()
            .map(|(ip, c)| row(ip.to_string(), c))
            .collect();
        rows.extend(self.others.take().map(|c| row("*".into(), c)));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sample_and_one_count_per_source_and_minute() {
        let mut a = Abuse::default();
        let (x, y): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t = 1_800_000_040;
        let (v, rows) = a.count(x, "+74950000001", "+1", t);
        assert!(matches!(v, Verdict::Sample(_)) && rows.is_empty());
        for i in 0..999 {
            assert_eq!(
                a.count(x, "+74950000002", "+1", t + i % 19).0,
                Verdict::Counted
            );
        }
        assert!(matches!(
            a.count(y, "+74950000003", "+2", t).0,
            Verdict::Sample(_)
        ));
        // Next minute: the last one's rows come out, sources sample again.
        let (v, mut rows) = a.count(x, "+74950000004", "+1", t + 30);
        assert!(matches!(v, Verdict::Sample(_)));
        rows.sort_by(|a, b| a.source.cmp(&b.source));
        let got: Vec<(&str, u32, u32, &str)> = rows
            .iter()
            .map(|r| {
                (
                    r.source.as_str(),
                    r.minute,
                    r.requests,
                    r.last_number.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("192.0.2.1", 1_800_000_040 - 40, 1000, "+74950000002"),
                ("192.0.2.2", 1_800_000_040 - 40, 1, "+74950000003")
            ]
        );
        assert!(a.flush(t + 30).is_empty(), "nothing twice");
        assert_eq!(a.flush(t + 90).len(), 1);
    }

    #[test]
    fn sources_past_the_cap_are_counted_together() {
        let mut a = Abuse::default();
        let t = 1_800_000_000;
        for n in 0..(MAX_SOURCES as u32 + 500) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            a.count(ip, "+7", "", t);
        }
        assert_eq!(a.sources.len(), MAX_SOURCES);
        let rows = a.flush(t + 60);
        assert_eq!(rows.len(), MAX_SOURCES + 1);
        let others = rows.iter().find(|r| r.source == "*").unwrap();
        assert_eq!(others.requests, 500);
    }
}
