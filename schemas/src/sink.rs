//! The durable ClickHouse sink shared by the tracker and the router.
//!
//! [`Sink::push`] appends the row to the table's write-ahead spool (see
//! [`crate::spool`]) and returns without waiting on ClickHouse. A writer
//! task reads the spool in order, inserts batches as RowBinary, and
//! acknowledges a batch only after ClickHouse accepted it. When ClickHouse
//! is down or slow the spool grows (capped by `spool_max_bytes`, reported
//! as `spool_bytes`) and is replayed in order when it is back; a killed
//! process replays on its next start. A replay may repeat a batch whose
//! acknowledgement was lost: rows carry ids and the tables are
//! ReplacingMergeTree, so repeats collapse (reports read with FINAL).
//! Batches ClickHouse rejects as invalid (schema errors) are moved to a
//! dead-letter file instead of blocking the table forever.
//!
//! Deliveries run on the [`crate::background`] thread, below the request
//! path's CPU priority; `push` is the only part on the caller's thread.
//!
//! A sink delivers nothing until its [`SchemaGate`] is open: a process
//! that started while ClickHouse was away keeps its rows in the spool until
//! its migrations ran, rather than insert rows of a newer schema into older
//! tables (rejected: dead letters).
//!
//! A sink may hand its acknowledged rows on to an [`Outbox`]: another spool
//! whose reader (the completed-call webhook) thus sees a row only once it is
//! final in ClickHouse. Rows are appended there before the batch is acked,
//! so a crash in between repeats them (at-least-once, like the inserts).

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clickhouse::Client;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::SinkConfig;
use crate::rows::Table;
use crate::spool;

/// Counters of one sink, read by the metrics endpoints.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Rows accepted by `push` (on disk).
    pub accepted: AtomicU64,
    /// Rows ClickHouse acknowledged.
    pub inserted: AtomicU64,
    /// Insert attempts that failed (each retry counts).
    pub insert_errors: AtomicU64,
    /// Rows refused by `push` (spool full or disk error).
    pub refused: AtomicU64,
    /// Rows moved to the dead-letter file (ClickHouse rejected them).
    pub poisoned: AtomicU64,
    /// Spooled bytes not yet acknowledged by ClickHouse.
    pub spool_bytes: AtomicU64,
}

impl SinkStats {
    /// Publishes the counters as gauges labelled with the table (read at
    /// scrape time by both services' `/metrics`).
    pub fn export(&self, table: &'static str) {
        let v = |x: &AtomicU64| x.load(Ordering::Relaxed) as f64;
        metrics::gauge!("dialmark_sink_inserted_rows", "table" => table).set(v(&self.inserted));
        metrics::gauge!("dialmark_sink_refused_rows", "table" => table).set(v(&self.refused));
        metrics::gauge!("dialmark_sink_insert_errors", "table" => table)
            .set(v(&self.insert_errors));
        metrics::gauge!("dialmark_sink_dead_letter_rows", "table" => table).set(v(&self.poisoned));
        metrics::gauge!("dialmark_sink_spool_bytes", "table" => table).set(v(&self.spool_bytes));
    }
}

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("spool of {table} is full ({bytes} bytes unacknowledged)")]
    Full { table: &'static str, bytes: u64 },
    #[error("spool of {table}: {source}")]
    Disk {
        table: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start the sink thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("row of {table} could not be encoded: {message}")]
    Encode {
        table: &'static str,
        message: String,
    },
}

/// Whether ClickHouse's schema is known to be current (this process's
/// migrations ran); sinks deliver only then. See
/// [`crate::migrate::run_or_retry`].
#[derive(Clone, Debug)]
pub struct SchemaGate(watch::Receiver<bool>);

impl SchemaGate {
    /// An open gate: the migrations ran (or are someone else's job).
    pub fn open() -> Self {
        Self(watch::channel(true).1)
    }

    /// A closed gate and what opens it (`send(true)`).
    pub fn closed() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }
}

/// What the sinks of one process share: the client, the spool config, the
/// role, the lock wait and the schema gate. [`SinkStarter::spawn`] starts
/// one table's sink with them.
pub struct SinkStarter<'a> {
    pub client: Client,
    pub cfg: &'a SinkConfig,
    pub role: &'a str,
    pub lock_wait: Duration,
    pub schema: SchemaGate,
}

impl SinkStarter<'_> {
    /// `T`'s sink; `outbox` as in [`Sink::spawn_with`].
    pub fn spawn<T: Table>(
        &self,
        outbox: Option<Outbox>,
    ) -> Result<(Sink<T>, JoinHandle<()>), SinkError> {
        Sink::spawn_with(
            self.client.clone(),
            self.cfg,
            self.role,
            self.lock_wait,
            outbox,
            self.schema.clone(),
        )
    }
}

/// A spool fed with a sink's rows after ClickHouse acknowledged them.
pub struct Outbox {
    writer: spool::Writer,
    wake: mpsc::Sender<()>,
}

impl Outbox {
    /// `wake` is signalled after each append; the outbox's reader ends
    /// when it closes (the sink's writer task ended).
    pub fn new(writer: spool::Writer, wake: mpsc::Sender<()>) -> Self {
        Self { writer, wake }
    }

    fn append(&mut self, payloads: &[Vec<u8>]) -> std::io::Result<()> {
        for p in payloads {
            self.writer.append(p)?;
        }
        let _ = self.wake.try_send(());
        Ok(())
    }
}

/// Handle to the sink of one table. Cloning is cheap; the writer task
/// ends (after a last delivery attempt) when every handle is dropped.
pub struct Sink<T: Table> {
    writer: Arc<Mutex<spool::Writer>>,
    wake: mpsc::Sender<()>,
    stats: Arc<SinkStats>,
    max_bytes: u64,
    _row: PhantomData<fn(T)>,
}

impl<T: Table> Clone for Sink<T> {
    fn clone(&self) -> Self {
        Self {
            writer: self.writer.clone(),
            wake: self.wake.clone(),
            stats: self.stats.clone(),
            max_bytes: self.max_bytes,
            _row: PhantomData,
        }
    }
}

impl<T: Table> Sink<T> {
    /// Opens `T`'s spool at `cfg.spool_dir/ROLE/TABLE` and starts its
    /// writer task on `client` (bound to the dialmark database). Rows left
    /// in the spool by an earlier run of the same role are delivered first.
    /// `role` names the process kind (`tracker`, `router`, `tracker-cli`):
    /// each spool directory belongs to one process at a time; a second one
    /// waits up to `lock_wait` for it (CLI commands), then fails.
    pub fn spawn(
        client: Client,
        cfg: &SinkConfig,
        role: &str,
        lock_wait: Duration,
    ) -> Result<(Self, JoinHandle<()>), SinkError> {
        Self::spawn_with(client, cfg, role, lock_wait, None, SchemaGate::open())
    }

    /// [`Sink::spawn`], delivering only once `schema` is open and handing
    /// every row ClickHouse acknowledged on to `outbox` (if any).
    pub fn spawn_with(
        client: Client,
        cfg: &SinkConfig,
        role: &str,
        lock_wait: Duration,
        outbox: Option<Outbox>,
        schema: SchemaGate,
    ) -> Result<(Self, JoinHandle<()>), SinkError> {
        let dir = cfg.spool_dir.join(role).join(T::TABLE);
        let disk = |source| SinkError::Disk {
            table: T::TABLE,
            source,
        };
        let writer = spool::Writer::open(&dir, cfg.fsync, lock_wait).map_err(disk)?;
        let reader = spool::Reader::open(&dir).map_err(disk)?;
        let stats = Arc::new(SinkStats::default());
        stats
            .spool_bytes
            .store(reader.backlog_bytes(), Ordering::Relaxed);
        let (wake, rx) = mpsc::channel(1);
        let task = Delivery::<T> {
            client,
            reader,
            rx,
            stats: stats.clone(),
            dead_letter: dir.join("dead-letter.jsonl"),
            outbox,
            schema,
            batch_rows: cfg.batch_rows,
            flush: Duration::from_millis(cfg.flush_ms),
            _row: PhantomData,
        };
        let handle = crate::background::handle()
            .map_err(SinkError::Thread)?
            .spawn(task.run());
        Ok((
            Self {
                writer: Arc::new(Mutex::new(writer)),
                wake,
                stats,
                max_bytes: cfg.spool_max_bytes,
                _row: PhantomData,
            },
            handle,
        ))
    }

    /// Writes a row to the spool; never waits on ClickHouse.
    pub fn push(&self, row: T) -> Result<(), SinkError> {
        let backlog = self.stats.spool_bytes.load(Ordering::Relaxed);
        if backlog >= self.max_bytes {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            error!(table = T::TABLE, backlog, "spool full; row refused");
            return Err(SinkError::Full {
                table: T::TABLE,
                bytes: backlog,
            });
        }
        let json = serde_json::to_vec(&row).map_err(|e| SinkError::Encode {
            table: T::TABLE,
            message: e.to_string(),
        })?;
        let appended = self.writer.lock().expect("spool lock").append(&json);
        if let Err(source) = appended {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            error!(table = T::TABLE, cause = %source, "spool write failed; row refused");
            return Err(SinkError::Disk {
                table: T::TABLE,
                source,
            });
        }
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        self.stats
            .spool_bytes
            .fetch_add(json.len() as u64 + 8, Ordering::Relaxed);
        let _ = self.wake.try_send(());
        Ok(())
    }

    pub fn stats(&self) -> &Arc<SinkStats> {
        &self.stats
    }
}

struct Delivery<T: Table> {
    client: Client,
    reader: spool::Reader,
    rx: mpsc::Receiver<()>,
    stats: Arc<SinkStats>,
    dead_letter: PathBuf,
    outbox: Option<Outbox>,
    schema: SchemaGate,
    batch_rows: usize,
    flush: Duration,
    _row: PhantomData<fn(T)>,
}

impl<T: Table> Delivery<T> {
    async fn run(mut self) {
        if !self.schema_current().await {
            warn!(
                table = T::TABLE,
                "stopping before ClickHouse's schema was brought up to date; the rows stay in the spool for the next start"
            );
            return;
        }
        let mut open = true;
        let mut backoff = Duration::from_millis(200);
        loop {
            // Every handle dropped: deliver what is there, then stop.
            if self.rx.is_closed() {
                open = false;
            }
            match self.deliver_one().await {
                Outcome::Delivered { full } => {
                    backoff = Duration::from_millis(200);
                    if full {
                        continue;
                    }
                }
                Outcome::Empty => {
                    if !open {
                        break;
                    }
                }
                Outcome::Retry => {
                    if !open {
                        warn!(
                            table = T::TABLE,
                            "stopping with rows in the spool; they are delivered on the next start"
                        );
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            if open {
                // Wait for a row, then give its batch `flush` to fill: one
                // INSERT per table per flush interval under load (a full
                // batch goes at once, above), not one per wake-up, which
                // would keep ClickHouse merging small parts.
                match self.rx.recv().await {
                    Some(()) => tokio::time::sleep(self.flush).await,
                    None => open = false,
                }
            }
        }
    }

    /// Waits for the schema gate; false when every handle was dropped
    /// first. Wake-ups meanwhile only mean rows are waiting on disk.
    async fn schema_current(&mut self) -> bool {
        loop {
            if *self.schema.0.borrow_and_update() {
                return true;
            }
            tokio::select! {
                changed = self.schema.0.changed() => {
                    if changed.is_err() {
                        // Nothing can open it any more: wait for the end.
                        while self.rx.recv().await.is_some() {}
                        return false;
                    }
                }
                wake = self.rx.recv() => {
                    if wake.is_none() {
                        return false;
                    }
                }
            }
        }
    }

    /// Reads and decodes the next batch, in place: this task runs on the
    /// low-priority delivery thread, where milliseconds of decoding only
    /// delay the other sinks' deliveries.
    fn next_batch(&mut self) -> std::io::Result<Batch<T>> {
        let (payloads, pos) = self.reader.read(self.batch_rows)?;
        Ok(Batch::decode(payloads, pos))
    }

    async fn deliver_one(&mut self) -> Outcome {
        let Batch {
            rows,
            decoded,
            undecodable,
            pos,
        } = match self.next_batch() {
            Ok(b) => b,
            Err(e) => {
                error!(table = T::TABLE, cause = %e, "spool read failed");
                return Outcome::Retry;
            }
        };
        if rows.is_empty() && undecodable.is_empty() {
            return Outcome::Empty;
        }
        let full = rows.len() + undecodable.len() >= self.batch_rows;
        if !undecodable.is_empty() {
            self.dead(&undecodable, "undecodable spool record");
        }
        let result = if rows.is_empty() {
            Ok(())
        } else {
            insert(&self.client, &rows).await
        };
        match result {
            Ok(()) => {
                self.stats
                    .inserted
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                if let Some(outbox) = &mut self.outbox {
                    if let Err(e) = outbox.append(&decoded) {
                        // Not acked: the batch is inserted again (deduped)
                        // and handed on again later.
                        error!(table = T::TABLE, cause = %e, "outbox write failed; batch kept");
                        self.reader.rewind();
                        return Outcome::Retry;
                    }
                }
                self.ack(pos);
                Outcome::Delivered { full }
            }
            Err(e) if crate::ch::retryable(&e) => {
                self.stats.insert_errors.fetch_add(1, Ordering::Relaxed);
                warn!(table = T::TABLE, rows = rows.len(), cause = %e, "insert failed; rows stay in the spool");
                self.reader.rewind();
                Outcome::Retry
            }
            Err(e) => {
                self.stats.insert_errors.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .poisoned
                    .fetch_add(rows.len() as u64, Ordering::Relaxed);
                error!(table = T::TABLE, rows = rows.len(), cause = %e, dead_letter = %self.dead_letter.display(), "clickhouse rejected a batch; moved to the dead-letter file");
                self.dead(&decoded, &e.to_string());
                self.ack(pos);
                Outcome::Delivered { full }
            }
        }
    }

    fn ack(&mut self, pos: spool::Pos) {
        if let Err(e) = self.reader.ack(pos) {
            error!(table = T::TABLE, cause = %e, "spool ack failed; rows may be inserted again");
        }
        self.stats
            .spool_bytes
            .store(self.reader.backlog_bytes(), Ordering::Relaxed);
    }

    fn dead(&self, payloads: &[Vec<u8>], reason: &str) {
        if let Err(e) = spool::append_dead_letter(&self.dead_letter, payloads) {
            error!(table = T::TABLE, cause = %e, reason, "dead-letter write failed; rows lost");
        } else {
            info!(
                table = T::TABLE,
                rows = payloads.len(),
                reason,
                "rows moved to the dead-letter file"
            );
        }
    }
}

/// One batch read off the spool: the rows that decoded (with their spool
/// records, for the outbox and the dead-letter file), the records that did
/// not, and where the batch ends.
struct Batch<T> {
    rows: Vec<T>,
    decoded: Vec<Vec<u8>>,
    undecodable: Vec<Vec<u8>>,
    pos: spool::Pos,
}

impl<T: Table> Batch<T> {
    fn decode(payloads: Vec<Vec<u8>>, pos: spool::Pos) -> Self {
        let mut rows = Vec::with_capacity(payloads.len());
        let mut decoded = Vec::with_capacity(payloads.len());
        let mut undecodable = Vec::new();
        for p in payloads {
            match serde_json::from_slice::<T>(&p) {
                Ok(r) => {
                    rows.push(r);
                    decoded.push(p);
                }
                Err(_) => undecodable.push(p),
            }
        }
        Self {
            rows,
            decoded,
            undecodable,
            pos,
        }
    }
}

enum Outcome {
    Delivered { full: bool },
    Empty,
    Retry,
}

async fn insert<T: Table>(client: &Client, rows: &[T]) -> Result<(), clickhouse::error::Error> {
    let mut insert = client.insert::<T>(T::TABLE).await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::{TrunkCause, TrunkEvent, TrunkState};

    #[test]
    fn a_batch_keeps_undecodable_records_apart() {
        let row = TrunkEvent::new(
            1_800_000_000,
            "t1",
            "g",
            TrunkState::Down,
            TrunkState::Up,
            TrunkCause::Probe,
            "test".into(),
        );
        let good = serde_json::to_vec(&row).unwrap();
        let bad = b"{\"trunk\": 1".to_vec();
        let pos = spool::Pos { seq: 3, offset: 42 };
        let batch = Batch::<TrunkEvent>::decode(vec![bad.clone(), good.clone()], pos);
        assert_eq!(batch.rows.len(), 1);
        assert_eq!(batch.rows[0].trunk, "t1");
        // The outbox and the dead-letter file get the records as spooled.
        assert_eq!(batch.decoded, vec![good]);
        assert_eq!(batch.undecodable, vec![bad]);
        assert_eq!(batch.pos, pos);
    }
}
