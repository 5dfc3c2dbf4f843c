//! The dialmark data contract, shared by the tracker and the SIP router.
//!
//! Everything both services must agree on lives here, so that a change to a
//! table, a Redis key or a config field is one change in one place.
//!
//! # Layout
//! - [`background`]: the low-priority thread the sinks deliver from.
//! - [`ch`]: building a ClickHouse client; retry vs poison errors.
//! - [`cluster`]: the tables on a ClickHouse cluster (local tables on each
//!   server, Distributed ones over them, sharding keys).
//! - [`config`]: the one TOML config format of both services, with defaults
//!   and a `validate()` that names the bad field.
//! - [`number`]: the one E.164 number normaliser.
//! - [`layout`]: the Redis key layout and the pool Lua scripts.
//! - [`migrate`]: ordered, idempotent ClickHouse migrations recorded in
//!   `schema_migrations`.
//! - [`reports`]: the report SQL and its safe parameter filling.
//! - [`rows`]: the row types written to ClickHouse.
//! - [`runtime`]: process plumbing shared by both binaries.
//! - [`sink`]: the durable ClickHouse sink that never blocks a caller.
//! - [`spool`]: the sink's write-ahead log on disk.
//! - [`store`]: one Redis connection type for a node or a cluster.
//! - [`error`]: the crate's error type.
#![forbid(unsafe_code)]

pub mod background;
pub mod ch;
pub mod cluster;
pub mod config;
pub mod digest;
pub mod error;
pub mod layout;
pub mod migrate;
pub mod number;
pub mod reports;
pub mod rows;
pub mod runtime;
pub mod sink;
pub mod spool;
pub mod store;

pub use error::Error;

/// Unix seconds as RFC 3339 UTC (civil-from-days, Howard Hinnant).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Unix seconds of `YYYY-MM-DD`, `YYYY-MM-DD hh:mm:ss` or
/// `YYYY-MM-DDThh:mm:ss` (UTC): the inverse of [`rfc3339`] (days from
/// civil, Howard Hinnant); `None` when it is not one of those.
pub fn unix_of(text: &str) -> Option<u32> {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { text.get(r)?.parse().ok() };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = match b.len() {
        10 => (0, 0, 0),
        19 if b[10] == b' ' || b[10] == b'T' => (num(11..13)?, num(14..16)?, num(17..19)?),
        _ => return None,
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u32::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch, the unit of every `DateTime` column.
pub fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// FNV-1a 64: a stable content hash (migration checksums, ETags); not for
/// security.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_back() {
        for t in [0, 951_782_400, 1_795_000_000, 1_796_174_967] {
            let text = rfc3339(t);
            assert_eq!(
                unix_of(text.trim_end_matches('Z')),
                Some(t as u32),
                "{text}"
            );
            assert_eq!(unix_of(&text.replace('T', " ")[..19]), Some(t as u32));
        }
        assert_eq!(unix_of("2026-11-18"), Some(1_795_000_000 - 40_000));
        for bad in [
            "2026-13-01",
            "2026-11-18x",
            "yesterday",
            "2026-11-18 25:00:00",
        ] {
            assert_eq!(unix_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
