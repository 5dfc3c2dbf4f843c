//! The crate's error type: where a failure came from and whether retrying
//! can help (a ClickHouse outage can; a schema mismatch cannot).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("config: {field}: {reason}")]
    Config { field: String, reason: String },
    #[error("config file {path}: {source}")]
    ConfigRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ConfigParse { path: String, message: String },
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("migration {version} ({name}) was changed after it was applied (checksum {applied} != {current})")]
    MigrationChanged {
        version: u32,
        name: String,
        applied: String,
        current: String,
    },
    #[error("migration {name}: {reason}")]
    MigrationInvalid { name: String, reason: String },
    #[error("clickhouse cluster: server {url}: {reason}")]
    Cluster { url: String, reason: String },
}

impl Error {
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Whether the same operation may succeed later without a change of
    /// config or code (network trouble, server restarting).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::ClickHouse(e) => crate::ch::retryable(e),
            _ => false,
        }
    }
}
