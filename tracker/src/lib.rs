//! The dialmark tracker: the HTTP service the snippet talks to and the owner
//! of the number inventory in Redis.
//!
//! # Layout
//! - [`app`]: the axum router and shared state.
//! - [`error`]: the API error type and its HTTP mapping.
#![forbid(unsafe_code)]

pub mod app;
pub mod error;

use anyhow::Context;
use dialmark_schemas::config::Config;
use dialmark_schemas::migrate;
use tracing::info;

/// Applies pending ClickHouse migrations.
pub async fn migrate(config: &Config) -> anyhow::Result<migrate::Report> {
    let server = dialmark_schemas::ch::server_client(&config.clickhouse);
    migrate::apply(&server, &config.clickhouse.database)
        .await
        .with_context(|| format!("migrating ClickHouse at {}", config.clickhouse.url))
}

/// Runs the service until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    migrate(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.tracker.listen)
        .await
        .with_context(|| format!("binding tracker.listen {}", config.tracker.listen))?;
    info!(addr = %listener.local_addr()?, "tracker listening");
    let state = app::AppState::new(config)?;
    axum::serve(
        listener,
        app::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(dialmark_schemas::runtime::shutdown_signal())
    .await?;
    info!("tracker stopped");
    Ok(())
}
