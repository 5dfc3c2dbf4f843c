//! The ClickHouse sink shared by the tracker and the router: callers hand a
//! row to [`Sink::push`], which never waits; a background task batches rows
//! (by count and by time) and inserts them as RowBinary. Retryable failures
//! (server down, timeouts) are retried with capped exponential backoff while
//! new rows queue up to `queue_rows`; poison failures (schema errors) are
//! logged and counted instead of looping forever.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, warn};

use crate::config::SinkConfig;
use crate::rows::Table;

/// Counters of one sink, read by the metrics endpoints.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Rows accepted by `push`.
    pub accepted: AtomicU64,
    /// Rows ClickHouse acknowledged.
    pub inserted: AtomicU64,
    /// Insert attempts that failed (each retry counts).
    pub insert_errors: AtomicU64,
    /// Rows refused by `push` because the queue was full.
    pub refused: AtomicU64,
    /// Rows given up on because ClickHouse rejected them as invalid.
    pub poisoned: AtomicU64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SinkError {
    #[error("sink queue for {table} is full")]
    Full { table: &'static str },
    #[error("sink for {table} is shut down")]
    Closed { table: &'static str },
}

/// Handle to the sink of one table. Cloning is cheap; the writer task ends
/// (after a final flush) when every handle is dropped.
pub struct Sink<T: Table> {
    tx: mpsc::Sender<T>,
    stats: Arc<SinkStats>,
}

impl<T: Table> Clone for Sink<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<T: Table> Sink<T> {
    /// Starts the writer task for `T`'s table on `client` (bound to the
    /// dialmark database).
    pub fn spawn(client: Client, cfg: &SinkConfig) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.queue_rows);
        let stats = Arc::new(SinkStats::default());
        let writer = Writer::<T> {
            client,
            rx,
            stats: stats.clone(),
            batch_rows: cfg.batch_rows,
            flush: Duration::from_millis(cfg.flush_ms),
            _row: PhantomData,
        };
        (Self { tx, stats }, tokio::spawn(writer.run()))
    }

    /// Queues a row without waiting.
    pub fn push(&self, row: T) -> Result<(), SinkError> {
        match self.tx.try_send(row) {
            Ok(()) => {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                error!(table = T::TABLE, "sink queue full; row refused");
                Err(SinkError::Full { table: T::TABLE })
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(SinkError::Closed { table: T::TABLE }),
        }
    }

    pub fn stats(&self) -> &Arc<SinkStats> {
        &self.stats
    }

    /// Rows waiting in memory.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

struct Writer<T: Table> {
    client: Client,
    rx: mpsc::Receiver<T>,
    stats: Arc<SinkStats>,
    batch_rows: usize,
    flush: Duration,
    _row: PhantomData<T>,
}

impl<T: Table> Writer<T> {
    async fn run(mut self) {
        let mut batch: Vec<T> = Vec::with_capacity(self.batch_rows.min(4096));
        loop {
            let Some(first) = self.rx.recv().await else {
                break;
            };
            batch.push(first);
            let deadline = Instant::now() + self.flush;
            let mut closed = false;
            while batch.len() < self.batch_rows {
                tokio::select! {
                    row = self.rx.recv() => match row {
                        Some(r) => batch.push(r),
                        None => { closed = true; break; }
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.deliver(&batch).await;
            batch.clear();
            if closed {
                break;
            }
        }
    }

    /// Inserts one batch, retrying while the failure is retryable.
    async fn deliver(&self, batch: &[T]) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match insert(&self.client, batch).await {
                Ok(()) => {
                    self.stats
                        .inserted
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    self.stats.insert_errors.fetch_add(1, Ordering::Relaxed);
                    if !crate::ch::retryable(&e) {
                        self.stats
                            .poisoned
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        error!(table = T::TABLE, rows = batch.len(), cause = %e, "clickhouse rejected batch; rows dropped");
                        return;
                    }
                    warn!(table = T::TABLE, rows = batch.len(), cause = %e, retry_in_ms = backoff.as_millis() as u64, "insert failed; will retry");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

async fn insert<T: Table>(client: &Client, rows: &[T]) -> Result<(), clickhouse::error::Error> {
    let mut insert = client.insert::<T>(T::TABLE).await?;
    for row in rows {
        insert.write(row).await?;
    }
    insert.end().await
}
