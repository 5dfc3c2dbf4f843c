//! The dialmark SIP routing node.
//!
//! # Layout
//! - [`http`]: `/healthz`, `/metrics` and `/status` for the NOC.
#![forbid(unsafe_code)]

pub mod http;

use anyhow::Context;
use dialmark_schemas::config::Config;
use dialmark_schemas::migrate;
use tracing::info;

/// Runs the node until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let server = dialmark_schemas::ch::server_client(&config.clickhouse);
    migrate::apply(&server, &config.clickhouse.database)
        .await
        .with_context(|| format!("migrating ClickHouse at {}", config.clickhouse.url))?;
    let udp = tokio::net::UdpSocket::bind(config.router.udp)
        .await
        .with_context(|| format!("binding router.udp {}", config.router.udp))?;
    info!(addr = %udp.local_addr()?, "router listening (udp)");
    let http = tokio::net::TcpListener::bind(config.router.http)
        .await
        .with_context(|| format!("binding router.http {}", config.router.http))?;
    info!(addr = %http.local_addr()?, "router http listening");
    axum::serve(http, http::router())
        .with_graceful_shutdown(dialmark_schemas::runtime::shutdown_signal())
        .await?;
    info!("router stopped");
    Ok(())
}
