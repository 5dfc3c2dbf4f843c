//! Sink throughput: how fast the project's durable ClickHouse sink
//! (`dialmark_schemas::sink::Sink`, `visits` rows) gets rows into a real
//! ClickHouse over HTTP at each `--batches` size, and what its write-ahead
//! spool (`dialmark_schemas::spool`) does on its own.
//!
//! Per batch size B (the sink's `batch_rows`):
//! - live: `push` of `--rows` rows as fast as one task can (the request
//!   path's cost: JSON encoding + one spool append per row), while the
//!   sink's writer task delivers them; rows/s from the first push until
//!   ClickHouse acknowledged the last row;
//! - replay: the same number of rows already in the spool (a restart after
//!   an outage); rows/s from the sink's start until all are acknowledged.
//!
//! Spool alone (no ClickHouse): appends with `fsync = never` and `always`,
//! and a replay (read + ack in batches of 10,000) of what was appended;
//! the segments were just written, so the reads come from the page cache.
//!
//! Every run's rows are counted back in ClickHouse (`uniqExact(visit_id)`
//! per run tag). Needs ClickHouse's HTTP URL; `benches/sink/run` starts
//! ClickHouse 18.16 and puts the Markdown into `benches/README.md`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use dialmark_schemas::config::{ClickHouseConfig, SinkConfig};
use dialmark_schemas::rows::{NumberKind, Visit};
use dialmark_schemas::sink::Sink;
use dialmark_schemas::spool::{self, Fsync};

#[derive(Parser, Debug)]
#[command(about = "Sink and spool throughput into ClickHouse")]
struct Args {
    /// ClickHouse HTTP URL.
    #[arg(long)]
    clickhouse: String,
    #[arg(long, default_value = "bench_sink")]
    database: String,
    /// Spool directory (emptied first).
    #[arg(long)]
    spool: PathBuf,
    /// Rows per run.
    #[arg(long, default_value_t = 300_000)]
    rows: usize,
    #[arg(long, value_delimiter = ',', default_values_t = vec![1_000, 10_000, 100_000])]
    batches: Vec<usize>,
    /// Rows appended with fsync after each (a disk flush per row).
    #[arg(long, default_value_t = 2_000)]
    fsync_rows: usize,
    /// ClickHouse's PID, to report its CPU next to the sink's.
    #[arg(long)]
    clickhouse_pid: Option<u32>,
    /// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// Writes the results as Markdown here.
    #[arg(long)]
    markdown: PathBuf,
}

/// CPU seconds (user + system) of this process and of ClickHouse so far.
#[derive(Clone, Copy)]
struct Cpu {
    own: f64,
    clickhouse: f64,
}

fn ticks(pid: &str, clk_tck: u64) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 12th, stime the 13th.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / clk_tck as f64
}

impl Cpu {
    fn now(args: &Args) -> Cpu {
        Cpu {
            own: ticks("self", args.clk_tck),
            clickhouse: args
                .clickhouse_pid
                .map_or(0.0, |p| ticks(&p.to_string(), args.clk_tck)),
        }
    }

    /// CPU over `since`..now as % of one core over `wall`.
    fn percent(self, since: Cpu, wall: Duration) -> (f64, f64) {
        let w = wall.as_secs_f64();
        (
            100.0 * (self.own - since.own) / w,
            100.0 * (self.clickhouse - since.clickhouse) / w,
        )
    }
}

/// A visit as the tracker records one: an ad click with the usual fields.
fn visit(tag: &str, i: usize) -> Visit {
    Visit {
        visit_id: uuid::Uuid::new_v4(),
        ts: dialmark_schemas::unix_now(),
        site: tag.into(),
        pool: "bench".into(),
        session_id: format!("{:032x}", rand::random::<u128>()),
        visitor_id: format!("{:032x}", rand::random::<u128>()),
        number: format!("+7496{:07}", i % 10_000_000),
        number_kind: NumberKind::Pool,
        url: format!(
            "https://shop.bench.test/catalog/item-{}?utm_source=google&utm_medium=cpc&utm_campaign=spring&gclid=Cj0KCQbench{i}",
            i % 500
        ),
        referrer: "https://www.google.com/".into(),
        utm_source: "google".into(),
        utm_medium: "cpc".into(),
        utm_campaign: "spring".into(),
        utm_term: String::new(),
        utm_content: String::new(),
        gclid: format!("Cj0KCQbench{i}"),
        yclid: String::new(),
        fbclid: String::new(),
        msclkid: String::new(),
        ip: "203.0.113.0".into(),
        country: "RU".into(),
        region: "RU-MOW".into(),
        city: "Moscow".into(),
        user_agent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36".into(),
        gbraid: String::new(),
        wbraid: String::new(),
        ym_uid: String::new(),
        channel: "paid_search".into(),
        touch_ts: dialmark_schemas::unix_now(),
        first_touch_ts: dialmark_schemas::unix_now(),
        first_channel: "paid_search".into(),
        first_utm_source: "google".into(),
        first_utm_medium: "cpc".into(),
        first_utm_campaign: "spring".into(),
        no_lease: String::new(),
    }
}

fn sink_config(spool_dir: &Path, batch: usize) -> SinkConfig {
    SinkConfig {
        batch_rows: batch,
        flush_ms: 1_000,
        spool_dir: spool_dir.to_path_buf(),
        fsync: Fsync::Never,
        spool_max_bytes: 1 << 34,
    }
}

/// Rows of `tag` in ClickHouse (distinct ids: a repeated batch collapses).
fn count(args: &Args, tag: &str) -> anyhow::Result<u64> {
    let q = format!(
        "SELECT uniqExact(visit_id) FROM {}.visits WHERE site = '{tag}'",
        args.database
    );
    let text = ureq::post(&args.clickhouse)
        .send(q)?
        .body_mut()
        .read_to_string()?;
    text.trim().parse().context("count")
}

/// Waits until the sink's writer acknowledged `n` rows; the time it took.
async fn delivered(sink: &Sink<Visit>, n: u64, started: Instant) -> anyhow::Result<Duration> {
    let deadline = started + Duration::from_secs(600);
    while sink.stats().inserted.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            bail!("ClickHouse took fewer than {n} rows in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(started.elapsed())
}

/// Stops a sink: drop every handle, wait for the writer task.
async fn stop(sink: Sink<Visit>, task: tokio::task::JoinHandle<()>) {
    drop(sink);
    let _ = task.await;
}

struct SinkRun {
    batch: usize,
    push_rows_s: f64,
    live_rows_s: f64,
    replay_rows_s: f64,
    /// (sink process, ClickHouse) CPU % of one core during the replay.
    replay_cpu: (f64, f64),
    live_insert_errors: u64,
    counted: (u64, u64),
}

async fn sink_runs(args: &Args, ch: &clickhouse::Client, batch: usize) -> anyhow::Result<SinkRun> {
    let n = args.rows;
    // live: push everything while the writer delivers
    let tag = format!("live-{batch}");
    let rows: Vec<Visit> = (0..n).map(|i| visit(&tag, i)).collect();
    let cfg = sink_config(&args.spool, batch);
    let (sink, task) = Sink::<Visit>::spawn(ch.clone(), &cfg, &tag, Duration::ZERO)?;
    let started = Instant::now();
    for r in rows {
        sink.push(r)?;
    }
    let push = started.elapsed();
    let live = delivered(&sink, n as u64, started).await?;
    let live_insert_errors = sink.stats().insert_errors.load(Ordering::Relaxed);
    stop(sink, task).await;

    // replay: the rows are on disk before the sink starts
    let rtag = format!("replay-{batch}");
    let dir = args.spool.join(&rtag).join("visits");
    let mut w = spool::Writer::open(&dir, Fsync::Never, Duration::ZERO)?;
    for i in 0..n {
        w.append(&serde_json::to_vec(&visit(&rtag, i))?)?;
    }
    drop(w);
    let cpu = Cpu::now(args);
    let started = Instant::now();
    let (sink, task) = Sink::<Visit>::spawn(ch.clone(), &cfg, &rtag, Duration::ZERO)?;
    let replay = delivered(&sink, n as u64, started).await?;
    let replay_cpu = Cpu::now(args).percent(cpu, replay);
    stop(sink, task).await;

    Ok(SinkRun {
        batch,
        push_rows_s: n as f64 / push.as_secs_f64(),
        live_rows_s: n as f64 / live.as_secs_f64(),
        replay_rows_s: n as f64 / replay.as_secs_f64(),
        replay_cpu,
        live_insert_errors,
        counted: (count(args, &tag)?, count(args, &rtag)?),
    })
}

struct SpoolRun {
    record_bytes: usize,
    append_never: f64,
    append_always: f64,
    replay: f64,
}

fn spool_runs(args: &Args) -> anyhow::Result<SpoolRun> {
    let payloads: Vec<Vec<u8>> = (0..args.rows)
        .map(|i| serde_json::to_vec(&visit("spool", i)))
        .collect::<Result<_, _>>()?;
    let dir = args.spool.join("spool-only");
    let mut w = spool::Writer::open(&dir, Fsync::Never, Duration::ZERO)?;
    let t = Instant::now();
    for p in &payloads {
        w.append(p)?;
    }
    let append_never = payloads.len() as f64 / t.elapsed().as_secs_f64();
    drop(w);

    let mut r = spool::Reader::open(&dir)?;
    let t = Instant::now();
    let mut read = 0;
    loop {
        let (batch, pos) = r.read(10_000)?;
        if batch.is_empty() {
            break;
        }
        read += batch.len();
        r.ack(pos)?;
    }
    let replay = read as f64 / t.elapsed().as_secs_f64();
    if read != payloads.len() {
        bail!("spool replay read {read} of {} records", payloads.len());
    }

    let dir = args.spool.join("spool-fsync");
    let mut w = spool::Writer::open(&dir, Fsync::Always, Duration::ZERO)?;
    let t = Instant::now();
    for p in payloads.iter().take(args.fsync_rows) {
        w.append(p)?;
    }
    let append_always = args.fsync_rows as f64 / t.elapsed().as_secs_f64();
    Ok(SpoolRun {
        record_bytes: payloads.iter().map(|p| p.len() + 8).sum::<usize>() / payloads.len(),
        append_never,
        append_always,
        replay,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = std::fs::remove_dir_all(&args.spool);
    std::fs::create_dir_all(&args.spool)?;
    let cfg = ClickHouseConfig {
        url: args.clickhouse.clone(),
        database: args.database.clone(),
        ..ClickHouseConfig::default()
    };
    dialmark_schemas::migrate::run(&cfg)
        .await
        .context("migrating the bench database")?;
    let ch = dialmark_schemas::ch::client(&cfg);

    let spool = spool_runs(&args)?;
    eprintln!(
        "spool: {:.0} appends/s (fsync never), {:.0}/s (fsync always), replay {:.0} records/s",
        spool.append_never, spool.append_always, spool.replay
    );
    let mut runs = Vec::new();
    for &b in &args.batches {
        let r = sink_runs(&args, &ch, b).await?;
        eprintln!(
            "batch {b}: push {:.0} rows/s, live {:.0} rows/s, replay {:.0} rows/s, counted {:?}",
            r.push_rows_s, r.live_rows_s, r.replay_rows_s, r.counted
        );
        runs.push(r);
    }
    let _ = std::fs::remove_dir_all(&args.spool);

    let n = args.rows as u64;
    let mut md = String::new();
    md.push_str(&format!(
        "`visits` rows (~{} bytes of JSON each in the spool) through `Sink<Visit>` into ClickHouse 18.16 \
         over HTTP (RowBinary, LZ4), {} rows per run, ClickHouse on the same two cores; CPU in % of \
         one core over the replay (the box has 200 %).\n\n",
        spool.record_bytes, args.rows
    ));
    md.push_str("| batch_rows | push (request path) rows/s | live: push → all in ClickHouse, rows/s | replay of a full spool, rows/s | replay CPU: sink / ClickHouse | rows in ClickHouse (live / replay) |\n");
    md.push_str("| ---: | ---: | ---: | ---: | ---: | --- |\n");
    for r in &runs {
        let ok = |c: u64| {
            if c == n {
                format!("{c} ✓")
            } else {
                format!("{c} ✗")
            }
        };
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} % / {:.0} % | {} / {}{} |\n",
            r.batch,
            r.push_rows_s,
            r.live_rows_s,
            r.replay_rows_s,
            r.replay_cpu.0,
            r.replay_cpu.1,
            ok(r.counted.0),
            ok(r.counted.1),
            if r.live_insert_errors > 0 {
                format!(" ({} insert retries)", r.live_insert_errors)
            } else {
                String::new()
            }
        ));
    }
    md.push_str(&format!(
        "\nSpool alone ({} records): append {:.0} records/s with `fsync = never`, {:.0} records/s with \
         `fsync = always` ({} records, a disk flush each); replay (read + ack, 10,000 per batch, page \
         cache warm) {:.0} records/s.\n",
        args.rows, spool.append_never, spool.append_always, args.fsync_rows, spool.replay
    ));
    std::fs::write(&args.markdown, md)?;
    if runs.iter().any(|r| r.counted != (n, n)) {
        bail!("ClickHouse does not hold every row; see the table");
    }
    Ok(())
}
