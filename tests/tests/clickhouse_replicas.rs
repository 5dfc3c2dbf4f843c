//! dialmark on a replicated ClickHouse cluster (`clickhouse.replicated`):
//! two shards of two replicas each, through one ZooKeeper, all started by
//! `ops/test`. The migrations make `Replicated*MergeTree` tables on all
//! four servers; the sink's rows reach both replicas of their shard; with
//! one replica killed (SIGKILL) the sink keeps writing and loses nothing,
//! and the replica catches up when it is back; a new replica (one with
//! no schema: the databases dropped, which also drops its ZooKeeper
//! entries) gets the shard's current schema and rows at the next
//! migration run; a database made unreplicated is refused. One test: the phases share the servers and one
//! of them kills a server.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dialmark_e2e::cluster::{attempt, drop_all, wait_inserted};
use dialmark_e2e::env;
use dialmark_schemas::config::{ClickHouseConfig, SinkConfig};
use dialmark_schemas::rows::CallAttempt;
use dialmark_schemas::sink::Sink;
use dialmark_schemas::{ch, cluster, migrate, Error};

/// A number from one server, with no database selected (`None`: the
/// server did not answer).
async fn on(cfg: &ClickHouseConfig, url: &str, sql: &str) -> Option<u64> {
    ch::member_client(cfg, url)
        .query(sql)
        .fetch_one()
        .await
        .ok()
}

/// The data dir of `servers[1]` (shard 1's second replica), as `ops/test`
/// started it: its PID file, config and log are there.
fn killable_dir() -> PathBuf {
    env::clickhouse_replicated_dirs().swap_remove(1)
}

fn pid_of(dir: &std::path::Path) -> i32 {
    std::fs::read_to_string(dir.join("clickhouse.pid"))
        .expect("the replica's PID file")
        .trim()
        .parse()
        .expect("a PID")
}

/// Starts the server of `dir` again as `ops/lib.sh` does, its PID in the
/// PID file so `ops/test` stops it at the end.
fn restart(dir: &std::path::Path) {
    let log = std::fs::File::create(dir.join("log/stdout.log")).unwrap();
    let child = Command::new("clickhouse-server")
        .arg(format!(
            "--config-file={}",
            dir.join("etc/config.xml").display()
        ))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start clickhouse-server");
    std::fs::write(dir.join("clickhouse.pid"), child.id().to_string()).unwrap();
    // Not waited for: it outlives the test, ops/test stops it.
    std::mem::forget(child);
}

/// Rows of `call_attempts` on each server's own replica.
async fn local_counts(cfg: &ClickHouseConfig) -> Vec<Option<u64>> {
    let local = cluster::local_database(&cfg.database);
    let mut out = Vec::new();
    for url in &cfg.servers {
        out.push(
            on(
                cfg,
                url,
                &format!("SELECT count() FROM {local}.call_attempts"),
            )
            .await,
        );
    }
    out
}

/// Waits until both replicas of each shard hold the same rows and the
/// shards add up to `rows`.
async fn replicas_agree(cfg: &ClickHouseConfig, rows: u64, within: Duration) -> Vec<Option<u64>> {
    let until = Instant::now() + within;
    loop {
        let n = local_counts(cfg).await;
        // servers: shard 1 replica 1, shard 1 replica 2, shard 2 replica 1, shard 2 replica 2.
        if let (Some(a), Some(b)) = (n[0], n[2]) {
            if n[1] == Some(a) && n[3] == Some(b) && a + b == rows {
                return n;
            }
        }
        assert!(
            Instant::now() < until,
            "replicas still differ after {within:?}: {n:?} (want {rows} rows in all)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn push_and_wait(sink: &Sink<CallAttempt>, calls: std::ops::Range<u32>, total: u64) {
    for call in calls {
        sink.push(attempt(0xd1a2_0000_0000, call, 1, 57_000))
            .unwrap();
    }
    wait_inserted(sink, total, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replicated_shards_keep_every_row_through_a_dead_replica_and_a_new_replica() {
    let cfg = env::clickhouse_replicated("replicas");
    let local = cluster::local_database(&cfg.database);
    assert_eq!(cfg.servers.len(), 4, "two shards of two replicas");

    // Without `replicated` the cluster's replicas are refused, naming the key.
    let plain = ClickHouseConfig {
        replicated: false,
        ..cfg.clone()
    };
    let err = migrate::run(&plain).await.unwrap_err();
    assert!(
        matches!(&err, Error::Cluster { reason, .. } if reason.contains("clickhouse.replicated")),
        "{err}"
    );

    // A database made unreplicated (on the servers of the one-replica
    // cluster, which have ZooKeeper too) is refused, not half-converted.
    let made_plain = env::clickhouse_cluster("replicas_plain");
    migrate::run(&made_plain).await.unwrap();
    let err = migrate::run(&ClickHouseConfig {
        replicated: true,
        ..made_plain.clone()
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("made without clickhouse.replicated") && err.contains("call_attempts"),
        "{err}"
    );
    drop_all(&made_plain).await;

    let report = migrate::run(&cfg).await.unwrap();
    assert_eq!(report.applied.len(), migrate::MIGRATIONS.len());
    assert!(migrate::run(&cfg).await.unwrap().applied.is_empty());
    for url in &cfg.servers {
        let replicated = on(
            &cfg,
            url,
            &format!(
                "SELECT count() FROM system.tables WHERE database = '{local}' \
                 AND engine LIKE 'Replicated%MergeTree'"
            ),
        )
        .await
        .unwrap();
        assert_eq!(replicated, cluster::SHARD_KEYS.len() as u64, "{url}");
        let recorded = on(
            &cfg,
            url,
            &format!("SELECT count() FROM {local}.schema_migrations FINAL"),
        )
        .await
        .unwrap();
        assert_eq!(recorded, migrate::MIGRATIONS.len() as u64, "{url}");
    }

    let sc = SinkConfig {
        batch_rows: 50,
        flush_ms: 50,
        spool_dir: env::scratch_dir("replicas-sink"),
        ..SinkConfig::default()
    };
    let (sink, task) =
        Sink::<CallAttempt>::spawn(ch::client(&cfg), &sc, "test", Duration::ZERO).unwrap();
    push_and_wait(&sink, 0..200, 200).await;
    let n = replicas_agree(&cfg, 200, Duration::from_secs(30)).await;
    assert!(n[0].unwrap() > 0 && n[2].unwrap() > 0, "both shards: {n:?}");

    // Shard 1's second replica dies: the sink keeps writing (the
    // Distributed tables use the live replica), nothing waits or is lost.
    let dir = killable_dir();
    let pid = pid_of(&dir);
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 {pid}");
    let until = Instant::now() + Duration::from_secs(10);
    while on(&cfg, &cfg.servers[1], "SELECT 1").await.is_some() {
        assert!(Instant::now() < until, "the killed replica still answers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    push_and_wait(&sink, 200..400, 400).await;
    // Read whole while it is down, once shard 2's two live replicas hold
    // the same rows (an insert lands on one; the other fetches it a moment
    // later, and a read may go to either).
    let db = ch::client(&cfg);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (rows, talk): (u64, u64) = db
            .query("SELECT count(), sum(talk_ms) FROM call_attempts FINAL")
            .fetch_one()
            .await
            .unwrap();
        if (rows, talk) == (400, 400 * 57_000) {
            break;
        }
        assert!(
            Instant::now() < until,
            "read with a replica down: {rows} rows, {talk} ms of talk"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Back: it fetches what it missed from its twin.
    restart(&dir);
    replicas_agree(&cfg, 400, Duration::from_secs(90)).await;

    // Rebuilt as a new replica: its databases dropped. The next migration
    // run gives it the shard's tables as they are now (later ALTERs
    // included) and it fetches the rows again.
    for db in [cfg.database.clone(), local.clone()] {
        ch::member_client(&cfg, &cfg.servers[1])
            .query(&format!("DROP DATABASE {db}"))
            .execute()
            .await
            .unwrap();
    }
    let again = migrate::run(&cfg).await.unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
    replicas_agree(&cfg, 400, Duration::from_secs(60)).await;
    let columns = |url: String| {
        let cfg = cfg.clone();
        let local = local.clone();
        async move {
            ch::member_client(&cfg, &url)
                .query(
                    "SELECT concat(name, ' ', type) FROM system.columns \
                     WHERE database = ? AND table = 'call_attempts'",
                )
                .bind(local)
                .fetch_all::<String>()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        columns(cfg.servers[1].clone()).await,
        columns(cfg.servers[0].clone()).await
    );
    let via_new: u64 = ch::client(&ClickHouseConfig {
        url: cfg.servers[1].clone(),
        ..cfg.clone()
    })
    .query("SELECT count() FROM call_attempts FINAL")
    .fetch_one()
    .await
    .unwrap();
    assert_eq!(via_new, 400, "read through the rebuilt replica");

    drop(sink);
    task.await.unwrap();
    drop_all(&cfg).await;
}
