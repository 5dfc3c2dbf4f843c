//! The durable sink against the real ClickHouse: rows pushed while
//! ClickHouse is unreachable wait in the spool and arrive exactly once
//! after a restart; rows ClickHouse rejects go to the dead-letter file.

use std::time::Duration;

use dialmark_e2e::env;
use dialmark_schemas::config::SinkConfig;
use dialmark_schemas::rows::{TrunkCause, TrunkEvent, TrunkState};
use dialmark_schemas::sink::{SchemaGate, Sink};
use dialmark_schemas::{ch, migrate};

fn event(i: u32) -> TrunkEvent {
    TrunkEvent::new(
        1_800_000_000 + i,
        &format!("t{i}"),
        "g",
        TrunkState::Down,
        TrunkState::Up,
        TrunkCause::Probe,
        "test".into(),
    )
}

fn sink_cfg(dir: &std::path::Path) -> SinkConfig {
    SinkConfig {
        batch_rows: 100,
        flush_ms: 50,
        spool_dir: dir.to_path_buf(),
        ..SinkConfig::default()
    }
}

/// Rows as stored, without FINAL: a duplicate must not exist at all, not
/// merely be merged away.
async fn count(cfg: &dialmark_schemas::config::ClickHouseConfig) -> u64 {
    ch::client(cfg)
        .query("SELECT count() FROM trunk_events")
        .fetch_one()
        .await
        .unwrap()
}

/// Polls a sink counter until `done` holds (10 s at most).
async fn stat_until(what: &str, read: impl Fn() -> u64, done: impl Fn(u64) -> bool) -> u64 {
    let mut v = read();
    for _ in 0..200 {
        if done(v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        v = read();
    }
    panic!("{what}: still {v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_survive_an_outage_and_a_restart_exactly_once() {
    let cfg = env::clickhouse("sink");
    migrate::apply(&ch::server_client(&cfg), &cfg.database)
        .await
        .unwrap();
    let spool = env::scratch_dir("sink");
    let sc = sink_cfg(&spool);

    // ClickHouse "down": nothing listens on this port.
    let mut dead = cfg.clone();
    dead.url = format!("http://127.0.0.1:{}", dialmark_e2e::process::free_port());
    let (sink, task) =
        Sink::<TrunkEvent>::spawn(ch::client(&dead), &sc, "test", Duration::ZERO).unwrap();
    for i in 0..250 {
        sink.push(event(i)).unwrap();
    }
    let stats = sink.stats().clone();
    stat_until(
        "insert errors while ClickHouse is down",
        || {
            stats
                .insert_errors
                .load(std::sync::atomic::Ordering::Relaxed)
        },
        |n| n > 0,
    )
    .await;
    assert!(
        sink.stats()
            .spool_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "backlog is reported"
    );
    // The process stops while ClickHouse is away: rows stay on disk.
    drop(sink);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count(&cfg).await, 0);

    // Next start, ClickHouse is back: the spool is replayed, in order, once.
    let (sink, task) =
        Sink::<TrunkEvent>::spawn(ch::client(&cfg), &sc, "test", Duration::ZERO).unwrap();
    sink.push(event(250)).unwrap();
    for _ in 0..100 {
        if count(&cfg).await == 251 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count(&cfg).await, 251);
    assert_eq!(
        sink.stats()
            .inserted
            .load(std::sync::atomic::Ordering::Relaxed),
        251
    );
    drop(sink);
    task.await.unwrap();
    // A third start has nothing left to send: its backlog is empty, and
    // over a few flush intervals it inserts nothing.
    let (sink, task) =
        Sink::<TrunkEvent>::spawn(ch::client(&cfg), &sc, "test", Duration::ZERO).unwrap();
    assert_eq!(
        sink.stats()
            .spool_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    tokio::time::sleep(Duration::from_millis(4 * sc.flush_ms)).await;
    assert_eq!(
        sink.stats()
            .inserted
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    drop(sink);
    task.await.unwrap();
    assert_eq!(count(&cfg).await, 251);
    ch::server_client(&cfg)
        .query(&format!("DROP DATABASE {}", cfg.database))
        .execute()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_rows_go_to_the_dead_letter_file() {
    let cfg = env::clickhouse("sinkpoison");
    // The database exists but has no tables: ClickHouse answers "unknown table".
    ch::server_client(&cfg)
        .query(&format!("CREATE DATABASE {}", cfg.database))
        .execute()
        .await
        .unwrap();
    let spool = env::scratch_dir("sinkpoison");
    let (sink, task) =
        Sink::<TrunkEvent>::spawn(ch::client(&cfg), &sink_cfg(&spool), "test", Duration::ZERO)
            .unwrap();
    for i in 0..3 {
        sink.push(event(i)).unwrap();
    }
    let dead = spool.join("test/trunk_events/dead-letter.jsonl");
    for _ in 0..50 {
        if dead.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&dead).expect("dead-letter file");
    assert_eq!(text.lines().count(), 3);
    assert!(text.contains("\"trunk\":\"t1\""));
    assert_eq!(
        sink.stats()
            .poisoned
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    drop(sink);
    task.await.unwrap();
    ch::server_client(&cfg)
        .query(&format!("DROP DATABASE {}", cfg.database))
        .execute()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_wait_in_the_spool_until_the_schema_gate_opens() {
    use std::sync::atomic::Ordering::Relaxed;
    // Not migrated: an insert now would be rejected (unknown database) and
    // its rows set aside as dead letters.
    let cfg = env::clickhouse("sinkgate");
    let spool = env::scratch_dir("sinkgate");
    let sc = sink_cfg(&spool);
    let (open, gate) = SchemaGate::closed();
    let (sink, task) = Sink::<TrunkEvent>::spawn_with(
        ch::client(&cfg),
        &sc,
        "test",
        Duration::ZERO,
        None,
        gate.clone(),
    )
    .unwrap();
    for i in 0..20 {
        sink.push(event(i)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(10 * sc.flush_ms)).await;
    let s = sink.stats().clone();
    assert_eq!(
        (
            s.inserted.load(Relaxed),
            s.insert_errors.load(Relaxed),
            s.poisoned.load(Relaxed)
        ),
        (0, 0, 0),
        "nothing tried while the gate is closed"
    );
    // A stop while it is closed keeps the rows for the next start.
    drop(sink);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();

    let (sink, task) =
        Sink::<TrunkEvent>::spawn_with(ch::client(&cfg), &sc, "test", Duration::ZERO, None, gate)
            .unwrap();
    sink.push(event(20)).unwrap();
    migrate::run(&cfg).await.unwrap();
    open.send(true).unwrap();
    let s = sink.stats().clone();
    stat_until(
        "rows delivered once the gate opened",
        || s.inserted.load(Relaxed),
        |n| n == 21,
    )
    .await;
    assert_eq!(count(&cfg).await, 21);
    assert_eq!(s.poisoned.load(Relaxed), 0);
    assert!(!spool.join("test/trunk_events/dead-letter.jsonl").exists());
    drop(sink);
    task.await.unwrap();
    ch::server_client(&cfg)
        .query(&format!("DROP DATABASE {}", cfg.database))
        .execute()
        .await
        .unwrap();
}
