//! The dialmark tracker: the HTTP service the snippet talks to and the owner
//! of the number inventory in Redis.
//!
//! # Layout
//! - [`app`]: the axum router, shared state, snippet file, `/metrics`.
//! - [`visit`]: the snippet API (`/v1/visits`, keep-alive, CORS).
//! - [`pool`]: the lease engine (atomic Lua scripts per pool).
//! - [`bot`]: visits that get no lease: crawlers, automation, network rate.
//! - [`touch`]: a visit's touch: channel rules, ignored referrers, age.
//! - [`inventory`]: sites, pools, numbers and the number lifecycle.
//! - [`release`]: the quarantine release on the tracker's own timer.
//! - [`sample`]: pool use sampled over time (`pool_samples`).
//! - [`admin`]: the admin API and the inventory file loader.
//! - [`access`]: the admin token and the sites' read tokens.
//! - [`calls`]: the calls API (call log, one call, reports) and its OpenAPI.
//! - [`live`]: the live call feed from the router, relayed to call logs.
//! - [`numbers`]: the numbers API (pools, their use now and over time).
//! - [`install`]: the install check (the site's origins, the last visits).
//! - [`webapp`]: the marketers' web app (`/app`) over the calls API.
//! - [`report`]: the `report` command over `schemas/reports/`.
//! - [`geo`]: client IP, MaxMind geo, IP truncation.
//! - [`error`]: the error type and its HTTP mapping.
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod app;
pub mod bot;
pub mod calls;
pub mod error;
pub mod geo;
pub mod install;
pub mod inventory;
pub mod live;
pub mod numbers;
pub mod pool;
pub mod release;
pub mod report;
pub mod sample;
pub mod touch;
pub mod visit;
pub mod webapp;

use anyhow::Context;
use dialmark_schemas::config::Config;
use dialmark_schemas::migrate;
use tracing::info;

/// Applies pending ClickHouse migrations.
pub async fn migrate(config: &Config) -> anyhow::Result<migrate::Report> {
    migrate::run(&config.clickhouse)
        .await
        .with_context(|| format!("migrating ClickHouse at {}", config.clickhouse.url))
}

/// Runs the service until SIGINT/SIGTERM, then flushes the sinks.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    // Visits do not wait for the analytics: with ClickHouse away the
    // tracker serves, and its rows wait in the spool until the migrations ran.
    let schema = migrate::run_or_retry(&config.clickhouse)
        .await
        .with_context(|| format!("migrating ClickHouse at {}", config.clickhouse.url))?;
    let metrics =
        dialmark_schemas::runtime::install_metrics().context("installing the metrics recorder")?;
    let listener = tokio::net::TcpListener::bind(config.tracker.listen)
        .await
        .with_context(|| format!("binding tracker.listen {}", config.tracker.listen))?;
    info!(addr = %listener.local_addr()?, "tracker listening");
    let (state, sinks) = app::AppState::new(config, Some(metrics), "tracker", schema).await?;
    let q = &state.config.tracker.quarantine;
    let timer = (q.release_interval_seconds > 0).then(|| {
        tokio::spawn(release::run(
            state.inventory.clone(),
            std::time::Duration::from_secs(q.release_interval_seconds),
            q.dry_run,
        ))
    });
    let sampler = (state.config.tracker.pool_sample_seconds > 0).then(|| {
        tokio::spawn(sample::run(
            state.clone(),
            std::time::Duration::from_secs(state.config.tracker.pool_sample_seconds),
        ))
    });
    axum::serve(
        listener,
        app::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(dialmark_schemas::runtime::shutdown_signal())
    .await?;
    // The router (and with it every sink handle) is gone: writers flush and end.
    for t in timer.into_iter().chain(sampler) {
        t.abort();
        let _ = t.await;
    }
    let flush = futures_join(sinks.0);
    if tokio::time::timeout(std::time::Duration::from_secs(10), flush)
        .await
        .is_err()
    {
        tracing::error!("sinks did not flush within 10 s; queued rows lost");
    }
    info!("tracker stopped");
    Ok(())
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}
