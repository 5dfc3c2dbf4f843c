//! `dialmark-tracker report`: runs a report of `schemas/reports/` against
//! ClickHouse and streams it as a table, CSV or JSON lines.

use dialmark_schemas::config::Config;
use dialmark_schemas::reports::{self, Params};
use tokio::io::AsyncWriteExt;

/// Output formats and the ClickHouse format behind each.
pub fn clickhouse_format(format: &str) -> Option<&'static str> {
    Some(match format {
        "table" => "PrettyCompactMonoBlock",
        "csv" => "CSVWithNames",
        "tsv" => "TabSeparatedWithNames",
        "json" => "JSONEachRow",
        _ => return None,
    })
}

/// Runs report `name` and writes it to `out`.
pub async fn run(
    config: &Config,
    name: &str,
    params: &Params,
    format: &str,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> anyhow::Result<()> {
    let ch_format = clickhouse_format(format).ok_or_else(|| {
        anyhow::anyhow!("--format: {format:?} is not one of table, csv, tsv, json")
    })?;
    let sql = reports::render(name, params)?;
    let client = dialmark_schemas::ch::client(&config.clickhouse);
    stream(&client, &sql, ch_format, out).await?;
    out.flush().await?;
    Ok(())
}

/// Runs complete SQL and writes its output in `ch_format` to `out`.
pub async fn stream(
    client: &clickhouse::Client,
    sql: &str,
    ch_format: &str,
    out: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> Result<(), clickhouse::error::Error> {
    // query_raw: the SQL is complete; a `?` in a site id is not a bind marker.
    let mut cursor = client
        .query_raw(sql)
        .with_setting("output_format_json_quote_64bit_integers", "0")
        .fetch_bytes(ch_format)?;
    while let Some(chunk) = cursor.next().await? {
        out.write_all(&chunk)
            .await
            .map_err(|e| clickhouse::error::Error::Custom(e.to_string()))?;
    }
    Ok(())
}

/// [`stream`] into memory (an API answer).
pub async fn fetch(
    client: &clickhouse::Client,
    sql: &str,
    ch_format: &str,
) -> Result<Vec<u8>, clickhouse::error::Error> {
    let mut out = Vec::new();
    stream(client, sql, ch_format, &mut out).await?;
    Ok(out)
}
