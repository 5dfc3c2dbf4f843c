//! A shard added to a running ClickHouse cluster, as `ops/README.md`
//! ("Adding a shard") tells an operator to: the cluster file with the new
//! shard appended goes on every server (18.16 reloads `<remote_servers>`
//! on its own), its URL into `clickhouse.servers`, the migrations run
//! again. The new server gets the tables, the rows written before stay
//! where they are and read back whole, and new rows spread over all three
//! shards. Three servers of the test clusters `ops/test` starts (it gives
//! their data dirs, where the cluster file goes).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dialmark_e2e::cluster::{attempt, drop_all, wait_inserted};
use dialmark_e2e::env;
use dialmark_schemas::config::{ClickHouseConfig, SinkConfig};
use dialmark_schemas::rows::CallAttempt;
use dialmark_schemas::sink::Sink;
use dialmark_schemas::{ch, cluster, migrate};

const ID_BASE: u128 = 0xd1a3_0000_0000;

/// The TCP port in a server's config (`ops/lib.sh` wrote it there).
fn tcp_port(dir: &Path) -> u16 {
    let xml = std::fs::read_to_string(dir.join("etc/config.xml")).expect("server config");
    let at = xml.find("<tcp_port>").expect("<tcp_port>") + "<tcp_port>".len();
    xml[at..]
        .split('<')
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("a port")
}

fn cluster_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("etc/config.d/cluster-{name}.xml"))
}

/// Puts cluster `name` with one shard per port on every server of
/// `dirs`, and waits until each of them (by `urls`) has reloaded it.
async fn set_cluster(cfg: &ClickHouseConfig, dirs: &[PathBuf], urls: &[String], ports: &[u16]) {
    let shards: String = ports
        .iter()
        .map(|p| {
            format!("<shard><replica><host>127.0.0.1</host><port>{p}</port></replica></shard>")
        })
        .collect();
    let xml = format!(
        "<yandex><remote_servers><{n}>{shards}</{n}></remote_servers></yandex>\n",
        n = cfg.cluster
    );
    for dir in dirs {
        std::fs::write(cluster_file(dir, &cfg.cluster), &xml).unwrap();
    }
    let until = Instant::now() + Duration::from_secs(60);
    for url in urls {
        loop {
            let n: u64 = ch::member_client(cfg, url)
                .query("SELECT count() FROM system.clusters WHERE cluster = ?")
                .bind(cfg.cluster.as_str())
                .fetch_one()
                .await
                .unwrap();
            if n == ports.len() as u64 {
                break;
            }
            assert!(
                Instant::now() < until,
                "{url} did not reload the cluster file"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn write(cfg: &ClickHouseConfig, calls: std::ops::Range<u32>) {
    let sc = SinkConfig {
        batch_rows: 100,
        flush_ms: 50,
        spool_dir: env::scratch_dir("grow-sink"),
        ..SinkConfig::default()
    };
    let (sink, task) =
        Sink::<CallAttempt>::spawn(ch::client(cfg), &sc, "test", Duration::ZERO).unwrap();
    let n = calls.len() as u64;
    for call in calls {
        sink.push(attempt(ID_BASE, call, 1, 30_000)).unwrap();
    }
    wait_inserted(&sink, n, Duration::from_secs(30)).await;
    drop(sink);
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_added_to_a_running_cluster_gets_the_tables_and_new_rows() {
    let all = env::clickhouse_replicated("grow");
    let all_dirs = env::clickhouse_replicated_dirs();
    // Shard 1's and shard 2's first servers, then shard 2's second one as
    // the new shard (plain tables: no replication in this cluster).
    let picks = [0, 2, 3];
    let urls: Vec<String> = picks.iter().map(|&i| all.servers[i].clone()).collect();
    let dirs: Vec<PathBuf> = picks.iter().map(|&i| all_dirs[i].clone()).collect();
    let ports: Vec<u16> = dirs.iter().map(|d| tcp_port(d)).collect();
    let name = format!("dm_grow_{}", &all.database[all.database.len() - 8..]);
    let two = ClickHouseConfig {
        url: urls[0].clone(),
        cluster: name,
        servers: urls[..2].to_vec(),
        replicated: false,
        ..all.clone()
    };
    set_cluster(&two, &dirs, &urls, &ports[..2]).await;
    migrate::run(&two).await.unwrap();
    write(&two, 0..200).await;

    // The new shard: on every server's cluster file, in the config, then
    // the migrations.
    set_cluster(&two, &dirs, &urls, &ports).await;
    let three = ClickHouseConfig {
        servers: urls.clone(),
        ..two.clone()
    };
    let report = migrate::run(&three).await.unwrap();
    assert_eq!(
        report.applied.len(),
        migrate::MIGRATIONS.len(),
        "every migration ran on the new server"
    );
    write(&three, 200..500).await;

    let local = cluster::local_database(&three.database);
    let mut per_shard = Vec::new();
    for url in &urls {
        let n: u64 = ch::member_client(&three, url)
            .query(&format!(
                "SELECT uniqExact(call_id) FROM {local}.call_attempts"
            ))
            .fetch_one()
            .await
            .unwrap();
        per_shard.push(n);
    }
    assert!(
        per_shard.iter().all(|&n| n > 0),
        "rows on every shard: {per_shard:?}"
    );
    assert_eq!(per_shard.iter().sum::<u64>(), 500, "{per_shard:?}");
    for url in &urls {
        let (n, talk): (u64, u64) = ch::client(&ClickHouseConfig {
            url: url.clone(),
            ..three.clone()
        })
        .query("SELECT count(), sum(talk_ms) FROM call_attempts FINAL")
        .fetch_one()
        .await
        .unwrap();
        assert_eq!((n, talk), (500, 500 * 30_000), "through {url}");
    }
    drop_all(&three).await;
    for dir in &dirs {
        let _ = std::fs::remove_file(cluster_file(dir, &three.cluster));
    }
}
