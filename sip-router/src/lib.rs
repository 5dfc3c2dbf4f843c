//! The dialmark SIP routing node: a transaction-stateful proxy that looks
//! tracking numbers up in Redis, forwards calls over failover trunks, and
//! records every attempt and call in ClickHouse.
//!
//! # Layout
//! - [`wire`]: framing, header index and rewrites on raw SIP bytes.
//! - [`call`]: one call as a pure state machine (attempts, failover,
//!   hunting, CANCEL, dialog, rows).
//! - [`health`]: the trunk up/down breaker.
//! - [`directory`]: DID routing records (cached) and call attribution.
//! - [`node`]: the I/O loop: sockets, timers, policy, probes.
//! - [`ratelimit`]: per-source flood protection with a ban window.
//! - [`reload`]: what a SIGHUP config reload takes over.
//! - [`alert`]: the Alertmanager-compatible webhook.
//! - [`webhook`]: the signed completed-call webhook (durable outbox).
//! - [`http`]: `/healthz`, `/metrics`, `/status` for the NOC.
#![forbid(unsafe_code)]

pub mod alert;
pub mod call;
pub mod directory;
pub mod health;
pub mod http;
pub mod node;
pub mod ratelimit;
pub mod reload;
pub mod webhook;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dialmark_schemas::config::Config;
use dialmark_schemas::migrate;
use dialmark_schemas::rows::{Call, CallAttempt, TrunkEvent};
use dialmark_schemas::sink::Sink;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// Runs the node until SIGINT/SIGTERM, drains calls, flushes the sinks.
/// On SIGHUP, re-reads `config_path` (when given) and takes it over
/// without dropping calls; a config that does not load is refused and the
/// running one stays.
pub async fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let server = dialmark_schemas::ch::server_client(&config.clickhouse);
    migrate::apply(&server, &config.clickhouse.database)
        .await
        .with_context(|| format!("migrating ClickHouse at {}", config.clickhouse.url))?;
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let config = Arc::new(config);
    let r = &config.router;
    let udp = Arc::new(
        tokio::net::UdpSocket::bind(r.udp)
            .await
            .with_context(|| format!("binding router.udp {}", r.udp))?,
    );
    info!(addr = %udp.local_addr()?, "router listening (udp)");
    let tcp = match r.tcp {
        Some(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding router.tcp {a}"))?;
            info!(addr = %l.local_addr()?, "router listening (tcp)");
            Some(l)
        }
        None => None,
    };
    let http = tokio::net::TcpListener::bind(r.http)
        .await
        .with_context(|| format!("binding router.http {}", r.http))?;
    info!(addr = %http.local_addr()?, "router http listening");

    let ch = dialmark_schemas::ch::client(&config.clickhouse);
    let (outbox, hook_task) =
        match webhook::start(&r.call_webhook, &config.sink.spool_dir, config.sink.fsync)
            .context("opening the call webhook spool")?
        {
            Some((outbox, task)) => (Some(outbox), Some(task)),
            None => (None, None),
        };
    let (calls, t1) = Sink::<Call>::spawn_with_outbox(
        ch.clone(),
        &config.sink,
        "router",
        Duration::ZERO,
        outbox,
    )?;
    let (attempts, t2) =
        Sink::<CallAttempt>::spawn(ch.clone(), &config.sink, "router", Duration::ZERO)?;
    let (trunk_events, t3) = Sink::<TrunkEvent>::spawn(ch, &config.sink, "router", Duration::ZERO)?;
    let sink_stats = (
        calls.stats().clone(),
        attempts.stats().clone(),
        trunk_events.stats().clone(),
    );
    let sinks = node::Sinks {
        calls,
        attempts,
        trunk_events,
    };
    let directory = directory::Directory::new(
        config.redis.clone(),
        Duration::from_millis(r.route_cache_ms),
        config.tracker.attribution_window_seconds,
    );
    let status = Arc::new(node::Status::default());
    let (tx, rx) = mpsc::channel(65_536);
    let node = node::Node::new(
        config.clone(),
        udp.clone(),
        directory,
        sinks,
        alert::Alerter::new(
            r.alert_webhook.clone(),
            Duration::from_secs(r.alert_hold_down_seconds),
        ),
        status.clone(),
        tx.clone(),
    );
    let reader = tokio::spawn(node::udp_reader(udp, tx.clone()));
    let reloader = config_path.map(|p| tokio::spawn(reload_on_sighup(p, tx.clone())));
    let message_timeout = Duration::from_millis(r.tcp_message_timeout_ms);
    let acceptor = tcp.map(|l| tokio::spawn(node::tcp_acceptor(l, tx.clone(), message_timeout)));
    let http_state = http::HttpState {
        status,
        metrics: Some(metrics),
        sinks: vec![
            ("calls", sink_stats.0),
            ("call_attempts", sink_stats.1),
            ("trunk_events", sink_stats.2),
        ],
    };
    let http_task = tokio::spawn(async move {
        let _ = axum::serve(http, http::router(http_state)).await;
    });
    let loop_task = tokio::spawn(node.run(
        rx,
        Duration::from_secs(config.router.max_call_seconds.min(30)),
    ));
    dialmark_schemas::runtime::shutdown_signal().await;
    info!("shutting down: draining calls");
    let _ = tx.send(node::Input::Shutdown).await;
    drop(tx);
    let _ = loop_task.await;
    reader.abort();
    for t in acceptor.into_iter().chain(reloader) {
        t.abort();
    }
    http_task.abort();
    // The node is gone and with it every sink handle: writers flush and end.
    let flush = async {
        for t in [t1, t2, t3].into_iter().chain(hook_task) {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), flush)
        .await
        .is_err()
    {
        tracing::error!("sinks did not flush within 10 s; queued rows lost");
    }
    info!("router stopped");
    Ok(())
}

/// Re-reads the config file on each SIGHUP and hands it to the node.
async fn reload_on_sighup(path: PathBuf, tx: mpsc::Sender<node::Input>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(cause = %e, "no SIGHUP handler: config reload is off");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match Config::load(&path) {
            Ok(c) => {
                info!(path = %path.display(), "SIGHUP: reloading the config");
                if tx.send(node::Input::Reload(Box::new(c))).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                metrics::counter!("dialmark_config_reloads_total", "result" => "refused")
                    .increment(1);
                error!(path = %path.display(), cause = %e, "config reload refused; the running config stays");
            }
        }
    }
}
