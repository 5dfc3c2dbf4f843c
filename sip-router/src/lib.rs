//! The dialmark SIP routing node: a transaction-stateful proxy that looks
//! tracking numbers up in Redis, forwards calls over failover trunks, and
//! records every attempt and call in ClickHouse.
//!
//! Work is sharded by Call-ID across `router.shards` tasks (one per core by
//! default): receivers read the sockets and hand each message to the shard
//! that owns its Call-ID; each shard owns its calls, timers and tombstones
//! outright; the control task owns trunk health and publishes read-only
//! snapshots of the trunk table. Capacity is a memory budget, not a call
//! count.
//!
//! # Layout
//! - [`wire`]: framing, header index and rewrites on raw SIP bytes.
//! - [`originate`]: the requests the node sends itself (probes, CANCEL,
//!   ACK, BYE), built with rsip.
//! - [`call`]: one call as a pure state machine (attempts, failover,
//!   hunting, CANCEL, abandoned branches, retransmissions, rows).
//! - [`dialog`]: a confirmed dialog's legs, for the BYEs that release it.
//! - [`timer`]: a shard's cancellable timers.
//! - [`transport`]: sockets, receivers, TCP connections, the send path.
//! - [`dispatch`]: from a received message to the shard that owns it.
//! - [`shard`]: the routing loop of one shard.
//! - [`journal`]: answered calls in progress, closed as `node_lost` after a crash.
//! - [`control`]: trunk table, probes, passive health, alerts, reload.
//! - [`shared`]: what the tasks share: snapshot, budget, flags.
//! - [`health`]: the trunk up/down breaker.
//! - [`directory`]: DID routing records (cached) and call attribution.
//! - [`ratelimit`]: per-source flood protection with a ban window.
//! - [`abuse`]: untrusted INVITEs counted per source and minute, sampled.
//! - [`reload`]: what a SIGHUP config reload takes over.
//! - [`alert`]: the Alertmanager-compatible webhook.
//! - [`webhook`]: the signed call webhooks, global and per site (durable spools).
//! - [`live`]: the live call feed on Redis pub/sub, for the marketers' call log.
//! - [`http`]: `/healthz`, `/metrics`, `/status` for the NOC.
//! - [`allocator`]: jemalloc's counters (our data vs. pages it keeps).
//! - [`ha`]: the active/standby pair: the leader lease, the takeover.
//! - [`handover`]: answered calls in Redis, carried to their end by the
//!   pair's other node.
#![forbid(unsafe_code)]

pub mod abuse;
pub mod alert;
pub mod allocator;
pub mod call;
pub mod control;
pub mod dialog;
pub mod directory;
pub mod dispatch;
pub mod ha;
pub mod handover;
pub mod health;
pub mod http;
pub mod journal;
pub mod live;
pub mod manual;
pub mod originate;
pub mod quality;
pub mod ratelimit;
pub mod reload;
pub mod shard;
pub mod shared;
pub mod timer;
pub mod transport;
pub mod webhook;
pub mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dialmark_schemas::config::Config;
use dialmark_schemas::migrate;
use dialmark_schemas::rows::{Call, CallAttempt, TrunkEvent, UntrustedSource};
use dialmark_schemas::sink::SinkStarter;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// Milliseconds since the Unix epoch.
pub use dialmark_schemas::unix_now_ms as now_ms;

/// Shards when `router.shards` is 0: one per core.
fn shard_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs the node until SIGINT/SIGTERM, drains calls (hanging up those
/// still up at `router.drain_seconds`), flushes the sinks.
/// On SIGHUP, re-reads `config_path` (when given) and takes it over
/// without dropping calls; a config that does not load is refused and the
/// running one stays.
pub async fn serve(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    // Calls do not wait for the analytics: with ClickHouse away the node
    // serves, and its rows wait in the spool until the migrations ran.
    let schema = migrate::run_or_retry(&config.clickhouse)
        .await
        .with_context(|| format!("migrating ClickHouse at {}", config.clickhouse.url))?;
    let metrics =
        dialmark_schemas::runtime::install_metrics().context("installing the metrics recorder")?;
    let config = Arc::new(config);
    let r = &config.router;
    let directory = directory::Directory::new(
        config.redis.clone(),
        Duration::from_millis(r.route_cache_ms),
        config.tracker.attribution_window_seconds,
    );
    // One of a pair: a standby until it holds the lease; the address may
    // then still be held a moment by the active it replaces.
    let (pair, predecessor) = match r.ha.enabled {
        true => {
            let (redis, lease, before) =
                ha::standby(&r.ha, &directory, r.http, metrics.clone()).await?;
            (Some((redis, lease)), before)
        }
        false => (None, None),
    };
    let (udp, granted) = match pair {
        Some(_) => {
            ha::bind_when_free("router.udp", || async {
                transport::bind_udp(r.udp, r.udp_recv_buffer_bytes)
            })
            .await
        }
        None => transport::bind_udp(r.udp, r.udp_recv_buffer_bytes)
            .with_context(|| format!("binding router.udp {}", r.udp))?,
    };
    let udp = Arc::new(udp);
    info!(addr = %udp.local_addr()?, "router listening (udp)");
    transport::report_recv_buffer(r.udp_recv_buffer_bytes, granted);
    let tcp = match (r.tcp, &pair) {
        (Some(a), Some(_)) => {
            Some(ha::bind_when_free("router.tcp", || tokio::net::TcpListener::bind(a)).await)
        }
        (Some(a), None) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding router.tcp {a}"))?,
        ),
        (None, _) => None,
    };
    if let Some(l) = &tcp {
        info!(addr = %l.local_addr()?, "router listening (tcp)");
    }
    let http = tokio::net::TcpListener::bind(r.http)
        .await
        .with_context(|| format!("binding router.http {}", r.http))?;
    info!(addr = %http.local_addr()?, "router http listening");

    let ch = dialmark_schemas::ch::client(&config.clickhouse);
    let hooks = webhook::start(
        &r.call_webhook,
        directory.clone(),
        live::Live::start(directory.clone()),
        &config.sink.spool_dir,
        config.sink.fsync,
    )
    .context("opening the call webhook spools")?;
    let sinks = SinkStarter {
        client: ch,
        cfg: &config.sink,
        role: "router",
        lock_wait: Duration::ZERO,
        schema,
    };
    let (calls, t1) = sinks.spawn::<Call>(Some(hooks.outbox))?;
    let (attempts, t2) = sinks.spawn::<CallAttempt>(None)?;
    let (trunk_events, t3) = sinks.spawn::<TrunkEvent>(None)?;
    let (untrusted, t4) = sinks.spawn::<UntrustedSource>(None)?;
    let sink_stats = vec![
        ("calls", calls.stats().clone()),
        ("call_attempts", attempts.stats().clone()),
        ("trunk_events", trunk_events.stats().clone()),
        ("untrusted_sources", untrusted.stats().clone()),
    ];
    // A pair's answered calls, for the other node to carry on.
    let handover = pair.as_ref().map(|(_, lease)| {
        handover::Handover::start(
            directory.clone(),
            Duration::from_secs(r.max_call_seconds),
            &r.ha.group,
            lease.node(),
        )
    });
    let sinks = shard::Sinks {
        calls,
        attempts,
        trunk_events,
        untrusted,
        events: hooks.events,
        handover,
    };
    // Calls a killed predecessor left up: closed as node_lost, on record.
    let journal_dir = config.sink.spool_dir.join("router").join("journal");
    let (lost, old) = journal::recover(&journal_dir).context("reading the call journal")?;
    if !lost.is_empty() {
        warn!(
            calls = lost.len(),
            "calls left up by the previous run recorded as node_lost"
        );
    }
    for row in lost {
        shard::record(&sinks, row);
    }
    for f in old {
        std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
    }
    // Calls that were ringing at the node this one took over from.
    if let (Some(h), Some(dead)) = (&sinks.handover, &predecessor) {
        let lost = h.lost_ringing(&r.ha.group, &dead.node, dead.seen_ms).await;
        if !lost.is_empty() {
            warn!(calls = lost.len(), node = %dead.node, "calls ringing at the other node's death recorded as node_lost");
        }
        for row in lost {
            shard::record(&sinks, row);
        }
    }
    let n = shard_count(r.shards);
    let shared = Arc::new(shared::Shared::new(
        shared::Snapshot::new(config.clone(), Vec::new()),
        n,
        r.max_memory_mb << 20,
    ));
    let transport = Arc::new(transport::Transport::new(
        udp,
        Duration::from_millis(r.tcp_message_timeout_ms),
    ));
    let (control_tx, control_rx) = mpsc::channel(65_536);
    // The trunk state (operators' overrides, trunks down) the pair's last
    // active left.
    let saved = match &sinks.handover {
        Some(h) => h.saved_trunks().await,
        None => Default::default(),
    };
    // Publishes the trunk table before any shard reads it.
    let control = control::Control::new(
        config.clone(),
        shared.clone(),
        transport.clone(),
        sinks.clone(),
        saved,
    );
    let mut queues = Vec::new();
    let mut shard_ctl = Vec::new();
    let mut shard_tasks = Vec::new();
    for id in 0..n {
        let (urgent_tx, urgent) = mpsc::channel(65_536);
        let (fresh_tx, fresh) = mpsc::channel(4_096);
        let (ctl_tx, ctl) = mpsc::channel(4);
        let (shard, routed) = shard::Shard::new(
            id,
            shared.clone(),
            transport.clone(),
            directory.clone(),
            sinks.clone(),
            control_tx.clone(),
            journal::Journal::open(&journal_dir, id).context("opening the call journal")?,
        );
        let inputs = shard::ShardInputs { urgent, fresh, ctl };
        shard_tasks.push(tokio::spawn(shard.run(inputs, routed)));
        queues.push(dispatch::ShardQueues {
            urgent: urgent_tx,
            fresh: fresh_tx,
        });
        shard_ctl.push(ctl_tx);
    }
    info!(
        shards = n,
        budget_mb = r.max_memory_mb,
        "routing shards started"
    );
    let control_task = tokio::spawn(control.run(control_rx));
    let dispatcher = dispatch::Dispatcher::new(
        queues,
        control_tx.clone(),
        shared.clone(),
        transport.clone(),
        sinks.clone(),
    );
    let receivers: Vec<_> = (0..n.max(2))
        .map(|_| {
            tokio::spawn(transport::udp_receiver(
                transport.clone(),
                dispatcher.clone(),
            ))
        })
        .collect();
    let reloader = config_path.map(|p| tokio::spawn(reload_on_sighup(p, control_tx.clone())));
    let message_timeout = Duration::from_millis(r.tcp_message_timeout_ms);
    let acceptor = tcp.map(|l| {
        tokio::spawn(transport::tcp_acceptor(
            l,
            transport.clone(),
            dispatcher.clone(),
            message_timeout,
        ))
    });
    let abuse_flush = tokio::spawn({
        let d = dispatcher.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                d.flush_abuse(false);
            }
        }
    });
    transport.set_dispatcher(dispatcher.clone());
    let http_state = http::HttpState {
        shared: shared.clone(),
        control: control_tx.clone(),
        metrics: Some(metrics),
        sinks: sink_stats,
    };
    let http_task = tokio::spawn(async move {
        let app =
            http::router(http_state).into_make_service_with_connect_info::<std::net::SocketAddr>();
        let _ = axum::serve(http, app).await;
    });

    match pair.clone() {
        Some((redis, lease)) => {
            tokio::select! {
                _ = dialmark_schemas::runtime::shutdown_signal() => {}
                holder = ha::keep(redis, lease) => {
                    // Fencing: the other node serves the address now; this
                    // one leaves at once (answered calls are in its journal,
                    // closed as node_lost at its next start).
                    error!(holder, "another node holds the leader lease: exiting");
                    std::process::exit(3);
                }
            }
        }
        None => dialmark_schemas::runtime::shutdown_signal().await,
    }
    let drain = Duration::from_secs(r.drain_seconds);
    info!(
        drain_seconds = r.drain_seconds,
        "shutting down: draining calls (OPTIONS now answer 503)"
    );
    shared
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for c in &shard_ctl {
        let _ = c.send(shard::ShardCtl::Drain).await;
    }
    let mut all = std::pin::pin!(futures_join(shard_tasks));
    if tokio::time::timeout(drain, &mut all).await.is_err() {
        warn!("drain deadline: hanging up the calls still up (BYE both ways)");
        for c in &shard_ctl {
            let _ = c.send(shard::ShardCtl::Release).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut all).await;
    }
    info!("routing stopped");
    for t in receivers
        .into_iter()
        .chain(acceptor)
        .chain(reloader)
        .chain([abuse_flush])
    {
        t.abort();
    }
    dispatcher.flush_abuse(true);
    drop(dispatcher);
    transport.close_outbound();
    let _ = control_tx.send(control::ControlMsg::Shutdown).await;
    let _ = control_task.await;
    http_task.abort();
    drop(sinks);
    // Every sink handle is gone with the shards: writers flush and end.
    let flush = async {
        for t in [t1, t2, t3, t4, hooks.task] {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), flush)
        .await
        .is_err()
    {
        tracing::error!("sinks did not flush within 10 s; queued rows lost");
    }
    if let Some((mut redis, lease)) = pair {
        // The standby takes over at its next poll, not at the lease's expiry.
        if let Err(e) = lease.release(&mut redis).await {
            warn!(cause = %e, "could not release the leader lease; it lapses by itself");
        }
    }
    info!("router stopped");
    Ok(())
}

/// Waits for every task.
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// Re-reads the config file on each SIGHUP and hands it to the node.
async fn reload_on_sighup(path: PathBuf, tx: mpsc::Sender<control::ControlMsg>) {
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
                if tx
                    .send(control::ControlMsg::Reload(Box::new(c)))
                    .await
                    .is_err()
                {
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
