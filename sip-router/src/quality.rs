//! Trunk quality, live, and the rerouting breaker built on it. Per trunk,
//! the attempts of the last 15 minutes in 5-second buckets, from which
//! the 1-, 5- and 15-minute windows give attempts, ASR, NER (ITU-T E.411),
//! SEER and ISA (RFC 6076), PDD p50/p95 and the failover share, with the
//! definitions of the `trunk_quality` report (schemas/README.md). The
//! breaker degrades a trunk whose NER collapses (below a floor, or well
//! below its own baseline) or whose PDD p95 grows past a ceiling, with a
//! minimum sample, while its OPTIONS may well still answer: a degraded
//! trunk goes after the others of its group and gets only a probing share
//! of calls, and is restored once that share has looked good for the
//! recovery window. Pure: time is passed in seconds.

use std::collections::VecDeque;

use dialmark_schemas::rows::Outcome;

/// Bucket width.
pub const BUCKET_S: u64 = 5;
/// The longest window kept.
pub const KEEP_S: u64 = 15 * 60;
/// The windows reported.
pub const WINDOWS_S: [u64; 3] = [60, 300, 900];
/// The history drawn on `/status` (sparklines): one point a minute for
/// the last hour.
pub const HISTORY_POINT_S: u64 = 60;
pub const HISTORY_S: u64 = 60 * 60;

/// One finished attempt, as quality sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub outcome: Outcome,
    pub final_code: u16,
    pub pdd_ms: u32,
    pub failover: bool,
}

impl Sample {
    /// E.411 effective: the network did its job (answered, busy, no
    /// answer, the user said no, or it rang before giving up).
    pub fn effective(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Answered | Outcome::Busy | Outcome::NoAnswer
        ) || (matches!(self.outcome, Outcome::Canceled | Outcome::Timeout) && self.pdd_ms > 0)
            || matches!(self.final_code, 480 | 486 | 600 | 603)
    }

    /// RFC 6076 ineffective: the network failed the attempt.
    pub fn ineffective(&self) -> bool {
        self.outcome == Outcome::TransportError
            || matches!(self.final_code, 500 | 503 | 504)
            || (self.final_code == 408 && self.pdd_ms == 0)
    }

    /// RFC 6076 §4.7 SEER's numerator (200, 480, 486, 600, 603).
    pub fn seer(&self) -> bool {
        self.outcome == Outcome::Answered || matches!(self.final_code, 480 | 486 | 600 | 603)
    }
}

/// PDD histogram bins: 20 ms wide under 1 s, 250 ms under 10 s, 5 s
/// under 60 s, then one: a bucket costs the same at 4,000 calls a second
/// as at one, and a percentile is within a bin of the truth.
const PDD_BINS: usize = 97;

fn pdd_bin(ms: u32) -> usize {
    match ms {
        0..1_000 => ms as usize / 20,
        1_000..10_000 => 50 + (ms as usize - 1_000) / 250,
        10_000..60_000 => 86 + (ms as usize - 10_000) / 5_000,
        _ => PDD_BINS - 1,
    }
}

/// A bin's upper edge, ms: the percentile reported.
fn pdd_edge(bin: usize) -> u32 {
    let b = bin as u32;
    match bin {
        0..50 => (b + 1) * 20,
        50..86 => 1_000 + (b - 49) * 250,
        86..96 => 10_000 + (b - 85) * 5_000,
        _ => u32::MAX,
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    start_s: u64,
    attempts: u32,
    answered: u32,
    effective: u32,
    ineffective: u32,
    seer: u32,
    failovers: u32,
    /// Calls answered in this bucket that were over within the short-call
    /// limit (counted when they end, in the bucket of their answer).
    short: u32,
    /// PDD of the attempts that rang.
    pdd: [u32; PDD_BINS],
}

impl Default for Bucket {
    fn default() -> Self {
        Self {
            start_s: 0,
            attempts: 0,
            answered: 0,
            effective: 0,
            ineffective: 0,
            seer: 0,
            failovers: 0,
            short: 0,
            pdd: [0; PDD_BINS],
        }
    }
}

/// A window's numbers. Ratios are `None` without attempts.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    pub window_s: u64,
    pub attempts: u32,
    pub asr: Option<f64>,
    pub ner: Option<f64>,
    pub seer: Option<f64>,
    pub isa: Option<f64>,
    pub pdd_p50_ms: Option<u32>,
    pub pdd_p95_ms: Option<u32>,
    pub failover_share: Option<f64>,
    /// Calls answered in the window at least [`SHORT_CALL_MS`] (and a
    /// bucket) ago: each of them has shown whether it was short.
    pub settled_answers: u32,
    /// Of those, the share that was over within [`SHORT_CALL_MS`]. Judged
    /// by answer time, so a trunk's long calls still ending from before an
    /// incident do not dilute it.
    pub short_share: Option<f64>,
}

/// A call answered and over within this is "short": a trunk that answers
/// and hangs up (or connects to nothing) makes most of its calls short,
/// while real calls last minutes (2.5 % of calls with a 2-minute mean are
/// under 3 s).
pub const SHORT_CALL_MS: u32 = 3_000;

/// One point of a trunk's last hour.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Point {
    /// The minute's start, Unix seconds.
    pub t: u64,
    pub attempts: u32,
    pub asr: Option<f64>,
    pub ner: Option<f64>,
    pub pdd_p95_ms: Option<u32>,
}

/// One trunk's recent attempts: 5-second buckets for the windows judged
/// and reported, minute buckets for the last hour's history (about 26 kB
/// a trunk).
#[derive(Debug, Default)]
pub struct Quality {
    buckets: VecDeque<Bucket>,
    minutes: VecDeque<Bucket>,
}

/// The bucket of `now_s` in a series of `width_s` buckets kept `keep_s`.
fn slot(series: &mut VecDeque<Bucket>, width_s: u64, keep_s: u64, now_s: u64) -> &mut Bucket {
    let start = now_s - now_s % width_s;
    if series.back().is_none_or(|b| b.start_s != start) {
        series.push_back(Bucket {
            start_s: start,
            ..Bucket::default()
        });
    }
    while series.front().is_some_and(|b| b.start_s + keep_s <= start) {
        series.pop_front();
    }
    series.back_mut().expect("pushed")
}

impl Quality {
    pub fn record(&mut self, now_s: u64, s: Sample) {
        for b in self.buckets(now_s) {
            b.attempts += 1;
            b.answered += u32::from(s.outcome == Outcome::Answered);
            b.effective += u32::from(s.effective());
            b.ineffective += u32::from(s.ineffective());
            b.seer += u32::from(s.seer());
            b.failovers += u32::from(s.failover);
            if s.pdd_ms > 0 {
                b.pdd[pdd_bin(s.pdd_ms)] += 1;
            }
        }
    }

    /// A call answered in second `answered_s` was over within
    /// [`SHORT_CALL_MS`]: counted in its answer's buckets (both series).
    pub fn short_call(&mut self, answered_s: u64) {
        for series in [&mut self.buckets, &mut self.minutes] {
            if let Some(b) = series.iter_mut().rev().find(|b| b.start_s <= answered_s) {
                b.short += 1;
            }
        }
    }

    /// The 5-second and the minute bucket of `now_s`.
    fn buckets(&mut self, now_s: u64) -> [&mut Bucket; 2] {
        [
            slot(&mut self.buckets, BUCKET_S, KEEP_S, now_s),
            slot(&mut self.minutes, HISTORY_POINT_S, HISTORY_S, now_s),
        ]
    }

    /// The last hour, a point a minute, oldest first; minutes without
    /// attempts are points with none.
    pub fn history(&self, now_s: u64) -> Vec<Point> {
        let last = now_s - now_s % HISTORY_POINT_S;
        let first = (last + HISTORY_POINT_S).saturating_sub(HISTORY_S);
        (first..=last)
            .step_by(HISTORY_POINT_S as usize)
            .map(|t| {
                // By start, not by position: a clock stepped back leaves
                // the series out of order.
                let s = match self.minutes.iter().find(|b| b.start_s == t) {
                    Some(b) => stats(std::iter::once(b), HISTORY_POINT_S, HISTORY_POINT_S, now_s),
                    None => Stats::default(),
                };
                Point {
                    t,
                    attempts: s.attempts,
                    asr: s.asr,
                    ner: s.ner,
                    pdd_p95_ms: s.pdd_p95_ms,
                }
            })
            .collect()
    }

    /// The last `window_s` seconds up to `now_s`.
    pub fn window(&self, now_s: u64, window_s: u64) -> Stats {
        self.span(now_s.saturating_sub(window_s), now_s, window_s)
    }

    /// The buckets overlapping `from_s..=to_s`, reported as `window_s`.
    fn span(&self, from_s: u64, to_s: u64, window_s: u64) -> Stats {
        stats(
            self.buckets
                .iter()
                .filter(|b| b.start_s + BUCKET_S > from_s && b.start_s <= to_s),
            BUCKET_S,
            window_s,
            to_s,
        )
    }
}

/// The numbers of some buckets `width_s` wide together, reported as
/// `window_s`; short calls among the answers settled by `now_s`.
fn stats<'a>(
    buckets: impl Iterator<Item = &'a Bucket>,
    width_s: u64,
    window_s: u64,
    now_s: u64,
) -> Stats {
    let mut t = Bucket::default();
    let (mut settled, mut short) = (0, 0);
    for b in buckets {
        if b.start_s + width_s + u64::from(SHORT_CALL_MS / 1000) <= now_s {
            settled += b.answered;
            short += b.short;
        }
        t.attempts += b.attempts;
        t.answered += b.answered;
        t.effective += b.effective;
        t.ineffective += b.ineffective;
        t.seer += b.seer;
        t.failovers += b.failovers;
        for (sum, n) in t.pdd.iter_mut().zip(b.pdd) {
            *sum += n;
        }
    }
    let ratio = |n: u32| (t.attempts > 0).then(|| f64::from(n) / f64::from(t.attempts));
    let rang: u32 = t.pdd.iter().sum();
    let pct = |p: f64| {
        let rank = (p * f64::from(rang)).ceil().max(1.0) as u32;
        let mut seen = 0;
        t.pdd
            .iter()
            .position(|&n| {
                seen += n;
                seen >= rank
            })
            .filter(|_| rang > 0)
            .map(pdd_edge)
    };
    Stats {
        window_s,
        attempts: t.attempts,
        asr: ratio(t.answered),
        ner: ratio(t.effective),
        seer: ratio(t.seer),
        isa: ratio(t.ineffective),
        pdd_p50_ms: pct(0.5),
        pdd_p95_ms: pct(0.95),
        failover_share: ratio(t.failovers),
        settled_answers: settled,
        short_share: (settled > 0).then(|| f64::from(short) / f64::from(settled)),
    }
}

/// When a trunk is degraded (per trunk group, `router.quality`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub enabled: bool,
    /// The window judged.
    pub window_s: u64,
    /// Attempts in the window before anything is judged.
    pub min_attempts: u32,
    /// NER below this degrades.
    pub ner_floor: f64,
    /// NER this far below the trunk's own baseline (its 15-minute NER
    /// while healthy) degrades.
    pub ner_drop: f64,
    /// PDD p95 above this degrades (ms).
    pub pdd_p95_ceiling_ms: u32,
    /// A share of short calls (of the answered calls that ended) this far
    /// above the trunk's own baseline degrades.
    pub short_share_rise: f64,
    /// A degraded trunk's probing share must look good this long.
    pub recovery_s: u64,
}

/// A change to report (trunk event, metric, log, alert).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub degraded: bool,
    /// `ner`, `pdd_p95_ms` or `short_share`: what tripped it, or what it
    /// recovered on.
    pub metric: &'static str,
    /// The metric over the window judged.
    pub value: f64,
    /// What it was compared with: the floor, the baseline or the ceiling.
    pub limit: f64,
    /// The same in words, with the sample size.
    pub reason: String,
}

/// One trunk's rerouting state.
#[derive(Debug, Default)]
pub struct Breaker {
    degraded_since: Option<u64>,
    /// The trunk's NER while healthy (15-minute window), for the relative rule.
    baseline_ner: Option<f64>,
    /// Its share of short calls while healthy: a trunk is judged on short
    /// calls only against its own normal (test traffic and some services
    /// are all short calls).
    baseline_short: Option<f64>,
    /// What degraded it: the metric and its limit, for the recovery's event.
    tripped: Option<(&'static str, f64)>,
}

fn pct(v: f64) -> String {
    format!("{:.0} %", v * 100.0)
}

impl Breaker {
    pub fn is_degraded(&self) -> bool {
        self.degraded_since.is_some()
    }

    /// Degraded since `since_s` by `metric` against `limit`, as another
    /// node judged it (the pair's last active): recovers as if it had
    /// tripped here, on the calls this node sees.
    pub fn inherit(&mut self, since_s: u64, metric: &str, limit: f64) {
        let metric = match metric {
            "pdd_p95_ms" => "pdd_p95_ms",
            "short_share" => "short_share",
            _ => "ner",
        };
        self.degraded_since = Some(since_s);
        self.tripped = Some((metric, limit));
    }

    /// Judges the trunk now; a change when it degrades or recovers.
    pub fn evaluate(&mut self, q: &Quality, now_s: u64, r: &Rule) -> Option<Change> {
        let since = match self.degraded_since {
            Some(since) => since,
            None if !r.enabled => return None,
            None => {
                let w = q.window(now_s, r.window_s);
                let Some(c) = self.fault(&w, r) else {
                    // The trunk's normal: the 15 minutes before the window
                    // judged, so an incident's start does not move it.
                    let before = now_s.saturating_sub(r.window_s + BUCKET_S);
                    let long = q.span(now_s.saturating_sub(KEEP_S), before, KEEP_S);
                    if long.attempts >= r.min_attempts {
                        self.baseline_ner = long.ner;
                    }
                    if long.settled_answers >= r.min_attempts {
                        self.baseline_short = long.short_share;
                    }
                    return None;
                };
                self.degraded_since = Some(now_s);
                self.tripped = Some((c.metric, c.limit));
                return Some(c);
            }
        };
        let (metric, limit) = self.tripped.unwrap_or(("ner", r.ner_floor));
        if !r.enabled {
            self.degraded_since = None;
            return Some(Change {
                degraded: false,
                metric,
                value: 0.0,
                limit,
                reason: "quality rerouting turned off".into(),
            });
        }
        if now_s < since + r.recovery_s {
            return None;
        }
        // Judged on the probing share's attempts of the recovery window.
        let rec = q.window(now_s, r.recovery_s);
        let enough = rec.attempts >= (r.min_attempts / 4).max(1)
            && (metric != "short_share" || rec.settled_answers >= (r.min_attempts / 4).max(1));
        let lenient = Rule {
            min_attempts: 0,
            ..r.clone()
        };
        if !enough || self.fault(&rec, &lenient).is_some() {
            return None;
        }
        self.degraded_since = None;
        let value = match metric {
            "pdd_p95_ms" => rec.pdd_p95_ms.map_or(0.0, f64::from),
            "short_share" => rec.short_share.unwrap_or(0.0),
            _ => rec.ner.unwrap_or(0.0),
        };
        Some(Change {
            degraded: false,
            metric,
            value,
            limit,
            reason: format!(
                "recovered: NER {}, PDD p95 {} ms over {} attempts in {} s",
                rec.ner.map_or("–".into(), pct),
                rec.pdd_p95_ms.unwrap_or(0),
                rec.attempts,
                r.recovery_s
            ),
        })
    }

    /// What is wrong with a window, if anything.
    fn fault(&self, w: &Stats, r: &Rule) -> Option<Change> {
        if w.attempts < r.min_attempts {
            return None;
        }
        let ner = w.ner?;
        let degraded = |metric, value, limit, reason| Change {
            degraded: true,
            metric,
            value,
            limit,
            reason,
        };
        if ner < r.ner_floor {
            return Some(degraded(
                "ner",
                ner,
                r.ner_floor,
                format!(
                    "NER {} over {} attempts in {} s, under the {} floor",
                    pct(ner),
                    w.attempts,
                    w.window_s,
                    pct(r.ner_floor)
                ),
            ));
        }
        if let Some(base) = self.baseline_ner.filter(|b| ner < b - r.ner_drop) {
            return Some(degraded(
                "ner",
                ner,
                base,
                format!(
                    "NER {} over {} attempts in {} s, down from its {} baseline",
                    pct(ner),
                    w.attempts,
                    w.window_s,
                    pct(base)
                ),
            ));
        }
        let short = w
            .short_share
            .filter(|_| w.settled_answers >= r.min_attempts);
        if let (Some(short), Some(base)) = (short, self.baseline_short) {
            if short > base + r.short_share_rise {
                return Some(degraded(
                    "short_share",
                    short,
                    base,
                    format!(
                        "{} of {} calls answered in {} s were over within {} s, up from its {} baseline",
                        pct(short),
                        w.settled_answers,
                        w.window_s,
                        SHORT_CALL_MS / 1000,
                        pct(base)
                    ),
                ));
            }
        }
        let p95 = w.pdd_p95_ms.filter(|&p| p > r.pdd_p95_ceiling_ms)?;
        Some(degraded(
            "pdd_p95_ms",
            f64::from(p95),
            f64::from(r.pdd_p95_ceiling_ms),
            format!(
                "PDD p95 {p95} ms over {} attempts in {} s, over the {} ms ceiling",
                w.attempts, w.window_s, r.pdd_p95_ceiling_ms
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(outcome: Outcome, code: u16, pdd: u32) -> Sample {
        Sample {
            outcome,
            final_code: code,
            pdd_ms: pdd,
            failover: code >= 500 || (code == 408 && pdd == 0),
        }
    }

    fn rule() -> Rule {
        Rule {
            enabled: true,
            window_s: 60,
            min_attempts: 20,
            ner_floor: 0.7,
            ner_drop: 0.25,
            pdd_p95_ceiling_ms: 8_000,
            short_share_rise: 0.4,
            recovery_s: 120,
        }
    }

    #[test]
    fn history_has_a_point_a_minute_for_the_last_hour() {
        let mut q = Quality::default();
        let t0 = 1_000_040; // 20 s into a minute
                            // Minute 0: 3 answered of 4 (PDD 1 s); minute 2: 1 failed; then
                            // 70 minutes later one more answered: the first two fall out.
        for i in 0..3 {
            q.record(t0 + i, s(Outcome::Answered, 200, 990));
        }
        q.record(t0 + 5, s(Outcome::Rejected, 503, 0));
        q.record(t0 + 120, s(Outcome::Rejected, 503, 0));
        let h = q.history(t0 + 150);
        assert_eq!(h.len(), 60);
        let first = h.len() - 3;
        assert_eq!(h[first].t, t0 - 20);
        assert_eq!((h[first].attempts, h[first].asr), (4, Some(0.75)));
        assert_eq!(h[first].pdd_p95_ms, Some(1_000));
        assert_eq!((h[first + 1].attempts, h[first + 1].ner), (0, None));
        assert_eq!((h[first + 2].attempts, h[first + 2].ner), (1, Some(0.0)));
        assert!(h[..first].iter().all(|p| p.attempts == 0));
        assert!(h.windows(2).all(|w| w[1].t == w[0].t + 60));

        let later = t0 + 70 * 60;
        q.record(later, s(Outcome::Answered, 200, 500));
        let h = q.history(later);
        assert_eq!(h.iter().map(|p| p.attempts).sum::<u32>(), 1);
        assert_eq!(h.last().map(|p| p.attempts), Some(1));
        // The 5-second windows still hold only the last 15 minutes.
        assert_eq!(q.window(later, KEEP_S).attempts, 1);
    }

    #[test]
    fn windows_count_what_the_report_counts() {
        let mut q = Quality::default();
        let t = 1_000_000;
        for i in 0..10 {
            q.record(t + i, s(Outcome::Answered, 200, 300 + i as u32 * 10));
        }
        q.record(t + 20, s(Outcome::Busy, 486, 500));
        q.record(t + 30, s(Outcome::Rejected, 503, 0));
        q.record(t + 40, s(Outcome::Timeout, 408, 0));
        q.record(t + 45, s(Outcome::Timeout, 408, 900)); // rang, then no answer
        let w = q.window(t + 50, 60);
        assert_eq!(w.attempts, 14);
        assert_eq!(w.asr, Some(10.0 / 14.0));
        assert_eq!(
            w.ner,
            Some(12.0 / 14.0),
            "answered, busy, and the one that rang"
        );
        assert_eq!(w.isa, Some(2.0 / 14.0), "503 and the silent 408");
        assert_eq!(w.seer, Some(11.0 / 14.0));
        assert_eq!(w.failover_share, Some(2.0 / 14.0));
        // 12 rang: the 6th is 350 ms (bin 340..360), the 12th 900 (900..920).
        assert_eq!((w.pdd_p50_ms, w.pdd_p95_ms), (Some(360), Some(920)));
        // The 1-minute window forgets; the 15-minute one keeps.
        assert_eq!(q.window(t + 130, 60).attempts, 0);
        assert_eq!(q.window(t + 130, 900).attempts, 14);
        q.record(t + 1_000, s(Outcome::Answered, 200, 100));
        assert_eq!(
            q.window(t + 1_000, 900).attempts,
            1,
            "older than 15 minutes: gone"
        );
    }

    #[test]
    fn a_collapsing_ner_degrades_and_a_good_probing_share_restores() {
        let (mut q, mut b, r) = (Quality::default(), Breaker::default(), rule());
        let mut t = 2_000_000;
        // 10 minutes healthy: the baseline.
        for _ in 0..600 {
            q.record(t, s(Outcome::Answered, 200, 400));
            t += 1;
            assert_eq!(b.evaluate(&q, t, &r), None);
        }
        // The trunk starts answering 503 to 30 % of INVITEs.
        let mut tripped = None;
        for i in 0..120 {
            let code = if i % 10 < 3 { 503 } else { 200 };
            q.record(
                t,
                s(
                    if code == 200 {
                        Outcome::Answered
                    } else {
                        Outcome::Rejected
                    },
                    code,
                    400,
                ),
            );
            t += 1;
            if let Some(c) = b.evaluate(&q, t, &r) {
                tripped = Some((i, c));
                break;
            }
        }
        let (after, c) = tripped.expect("degraded");
        assert!(c.degraded && c.reason.contains("NER"), "{c:?}");
        assert_eq!(c.metric, "ner");
        assert!(
            c.value < 0.85 && c.limit > 0.95,
            "against its baseline: {c:?}"
        );
        assert!(
            after < 60,
            "detected within the window: after {after} attempts"
        );
        assert!(b.is_degraded());
        // Too early to come back, however good.
        q.record(t, s(Outcome::Answered, 200, 400));
        assert_eq!(b.evaluate(&q, t + 60, &r), None);
        // Its probing share (a call in 20) answers for the recovery window.
        for k in 0..12 {
            q.record(t + 130 + k * 10, s(Outcome::Answered, 200, 400));
        }
        let c = b.evaluate(&q, t + 260, &r).expect("recovered");
        assert!(!c.degraded && c.reason.starts_with("recovered"), "{c:?}");
        assert_eq!((c.metric, c.value), ("ner", 1.0));
    }

    #[test]
    fn an_inherited_degradation_holds_until_this_nodes_calls_recover_it() {
        let (mut q, mut b, r) = (Quality::default(), Breaker::default(), rule());
        let since = 5_000_000;
        b.inherit(since, "pdd_p95_ms", 8_000.0);
        assert!(b.is_degraded());
        // No calls here yet: nothing to judge it on, it stays degraded
        // (and its alert, already firing, is not sent again).
        assert_eq!(b.evaluate(&q, since + 600, &r), None);
        assert!(b.is_degraded());
        // Its probing share rings slowly still: degraded.
        for k in 0..10 {
            q.record(since + 600 + k * 10, s(Outcome::Answered, 200, 9_500));
        }
        assert_eq!(b.evaluate(&q, since + 700, &r), None);
        // Then rings fast for the recovery window: restored, on the metric
        // that tripped it at the other node.
        for k in 0..12 {
            q.record(since + 710 + k * 10, s(Outcome::Answered, 200, 400));
        }
        let c = b.evaluate(&q, since + 840, &r).expect("recovered");
        assert!(!c.degraded, "{c:?}");
        assert_eq!((c.metric, c.limit), ("pdd_p95_ms", 8_000.0));
    }

    #[test]
    fn slow_ringing_degrades_and_small_samples_never_do() {
        let (mut q, mut b, r) = (Quality::default(), Breaker::default(), rule());
        let t = 3_000_000;
        for i in 0..19 {
            q.record(t + i, s(Outcome::Rejected, 503, 0));
        }
        assert_eq!(
            b.evaluate(&q, t + 19, &r),
            None,
            "19 attempts are not a sample"
        );
        let (mut q, mut b) = (Quality::default(), Breaker::default());
        for i in 0..30 {
            q.record(t + i, s(Outcome::Answered, 200, 9_500));
        }
        let c = b.evaluate(&q, t + 30, &r).expect("PDD");
        assert!(c.reason.contains("PDD p95 9750 ms"), "{c:?}");
        assert_eq!(
            (c.metric, c.value, c.limit),
            ("pdd_p95_ms", 9_750.0, 8_000.0)
        );
    }

    #[test]
    fn a_trunk_that_answers_and_hangs_up_degrades_on_short_calls() {
        let (mut q, mut b, r) = (Quality::default(), Breaker::default(), rule());
        let mut t = 4_000_000;
        // Ten minutes of real calls: 1 in 20 is over in a second, the
        // baseline (a long call only ever counts as answered).
        for i in 0..600 {
            q.record(t, s(Outcome::Answered, 200, 400));
            if i % 20 == 0 {
                q.short_call(t);
            }
            t += 1;
            assert_eq!(b.evaluate(&q, t, &r), None);
        }
        let w = q.window(t, 60);
        // The last 3 s and their bucket are not settled yet.
        assert!((50..60).contains(&w.settled_answers), "{w:?}");
        assert_eq!(w.short_share, Some(3.0 / f64::from(w.settled_answers)));
        // Answered (NER 100 %), but every call is over in 2 s: judged by
        // the calls answered since, however many long ones still end.
        let mut tripped = None;
        for i in 0..60 {
            q.record(t, s(Outcome::Answered, 200, 400));
            q.short_call(t);
            t += 1;
            if let Some(c) = b.evaluate(&q, t, &r) {
                tripped = Some((i, c));
                break;
            }
        }
        let (after, c) = tripped.expect("short calls");
        assert_eq!(c.metric, "short_share");
        assert!((0.05..0.07).contains(&c.limit), "its baseline: {c:?}");
        assert!(after < 40 && c.value > 0.45, "{after}: {c:?}");
        assert!(
            c.reason
                .contains("calls answered in 60 s were over within 3 s"),
            "{c:?}"
        );
        // A trunk whose calls were always short (a test rig) is not judged on them.
        let (mut q, mut b) = (Quality::default(), Breaker::default());
        for i in 0..300 {
            q.record(t + i, s(Outcome::Answered, 200, 400));
            q.short_call(t + i);
            assert_eq!(b.evaluate(&q, t + i + 1, &r), None);
        }
    }

    #[test]
    fn pdd_bins_cover_every_value_and_edges_bound_them() {
        for ms in [
            1,
            19,
            20,
            999,
            1_000,
            1_249,
            9_999,
            10_000,
            59_999,
            60_000,
            u32::MAX,
        ] {
            let bin = pdd_bin(ms);
            assert!(bin < PDD_BINS, "{ms}");
            assert!(pdd_edge(bin) > ms || ms == u32::MAX, "{ms} in bin {bin}");
            assert!(
                bin == 0 || pdd_edge(bin - 1) <= ms,
                "{ms}: the bin below ends under it"
            );
        }
    }
}
