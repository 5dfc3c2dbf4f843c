//! The dialmark data contract, shared by the tracker and the SIP router.
//!
//! Everything both services must agree on lives here, so that a change to a
//! table, a Redis key or a config field is one change in one place.
//!
//! # Layout
//! - [`background`]: the low-priority thread the sinks deliver from.
//! - [`ch`]: building a ClickHouse client; retry vs poison errors.
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
