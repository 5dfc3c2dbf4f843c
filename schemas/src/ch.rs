//! ClickHouse connection: one way to build a client that works with both
//! ClickHouse 18.16 and current servers, and the classification of server
//! errors into "retry later" and "poison" (retrying cannot help).

use clickhouse::Client;

use crate::config::ClickHouseConfig;

/// A client for the server, without a database selected.
///
/// Validation is off because 18.16 cannot answer the crate's schema probe
/// (it needs RowBinaryWithNamesAndTypes).
pub fn server_client(cfg: &ClickHouseConfig) -> Client {
    connect(&cfg.url, cfg)
}

/// A client for one server of the cluster (`clickhouse.servers`), without
/// a database selected: the migrations run on each.
pub fn member_client(cfg: &ClickHouseConfig, url: &str) -> Client {
    connect(url, cfg)
}

fn connect(url: &str, cfg: &ClickHouseConfig) -> Client {
    let mut c = Client::default()
        .with_url(url)
        .with_user(&cfg.user)
        .with_validation(false);
    if !cfg.password.is_empty() {
        c = c.with_password(&cfg.password);
    }
    c
}

/// A client bound to the dialmark database.
///
/// On a cluster the tables there are `Distributed`: an INSERT returns once
/// every shard holds its rows (so the sink's spool may let them go), an IN
/// or JOIN over another Distributed table is computed once and sent to the
/// shards (GLOBAL: the tables are sharded by different keys), and the
/// local shard is read over the network like the others (18.16's shortcut
/// for it fails on FINAL with DEFAULT columns: "Cannot find column").
pub fn client(cfg: &ClickHouseConfig) -> Client {
    let c = server_client(cfg).with_database(&cfg.database);
    if cfg.cluster.is_empty() {
        return c;
    }
    c.with_setting("insert_distributed_sync", "1")
        .with_setting("distributed_product_mode", "global")
        .with_setting("prefer_localhost_replica", "0")
}

/// ClickHouse error codes that mean the request itself is wrong: schema
/// mismatch, unknown table or column, type or parse errors. Resending the
/// same rows cannot succeed.
const POISON_CODES: &[u32] = &[
    16,  // NO_SUCH_COLUMN_IN_TABLE
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    33,  // CANNOT_READ_ALL_DATA
    36,  // BAD_ARGUMENTS
    47,  // UNKNOWN_IDENTIFIER
    53,  // TYPE_MISMATCH
    60,  // UNKNOWN_TABLE
    62,  // SYNTAX_ERROR
    81,  // UNKNOWN_DATABASE
    117, // INCORRECT_DATA
];

/// Whether an error is worth retrying (server down, slow, overloaded).
pub fn retryable(err: &clickhouse::error::Error) -> bool {
    use clickhouse::error::Error as E;
    match err {
        E::BadResponse(text) => match error_code(text) {
            Some(code) => !POISON_CODES.contains(&code),
            None => true,
        },
        E::Network(_) | E::TimedOut => true,
        _ => false,
    }
}

/// The `Code: N` of a ClickHouse error text.
fn error_code(text: &str) -> Option<u32> {
    let rest = &text[text.find("Code: ")? + 6..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_server_errors() {
        let poison = clickhouse::error::Error::BadResponse(
            "Code: 60, e.displayText() = DB::Exception: Table x.y doesn't exist".into(),
        );
        assert!(!retryable(&poison));
        let busy = clickhouse::error::Error::BadResponse(
            "Code: 241, e.displayText() = DB::Exception: Memory limit exceeded".into(),
        );
        assert!(retryable(&busy));
        assert!(retryable(&clickhouse::error::Error::TimedOut));
    }
}
