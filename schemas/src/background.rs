//! The one thread that runs every sink's delivery (spool read, JSON
//! decode, RowBinary encode, the insert) below the request path's CPU
//! priority.
//!
//! The tracker and the router share their cores with Redis and often with
//! ClickHouse. A second's worth of rows is tens of milliseconds of CPU in
//! one stretch; on the request runtime's workers every visit or SIP
//! message queued there would wait behind it. This thread runs at nice
//! [`NICE`] (on Linux a nice value belongs to a thread, not the process):
//! it takes whatever CPU the request path leaves, and still gets a share
//! under overload, when the spool absorbs the lag.

use std::io;
use std::sync::{Mutex, PoisonError};

use tokio::runtime::Handle;
use tracing::warn;

/// Nice value of the delivery thread: weight 110 against the workers'
/// 1024, so a busy worker wins almost every time slice.
pub const NICE: i32 = 10;

static HANDLE: Mutex<Option<Handle>> = Mutex::new(None);

/// The delivery runtime, started on first use (one per process).
pub fn handle() -> io::Result<Handle> {
    let mut slot = HANDLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(h) = &*slot {
        return Ok(h.clone());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = rt.handle().clone();
    std::thread::Builder::new()
        .name("dm-sink".into())
        .spawn(move || {
            lower_priority();
            // The runtime lives as long as the process: sinks' tasks end
            // on their own and are awaited through their join handles.
            rt.block_on(std::future::pending::<()>());
        })?;
    *slot = Some(handle.clone());
    Ok(handle)
}

/// Moves the calling thread to nice [`NICE`], unless it already runs
/// lower (a process started with `nice -n 15` stays there; raising it
/// back would need privileges).
fn lower_priority() {
    let tid = Some(rustix::thread::gettid());
    let current = rustix::process::getpriority_process(tid).unwrap_or(0);
    if current >= NICE {
        return;
    }
    if let Err(e) = rustix::process::setpriority_process(tid, NICE) {
        warn!(cause = %e, "could not lower the sink thread's CPU priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a task spawned on the delivery runtime runs on.
    fn where_it_runs() -> (Option<String>, rustix::thread::Pid, i32) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let task = handle().unwrap().spawn(async {
            let tid = rustix::thread::gettid();
            let name = std::thread::current().name().map(str::to_owned);
            (
                name,
                tid,
                rustix::process::getpriority_process(Some(tid)).unwrap(),
            )
        });
        rt.block_on(task).unwrap()
    }

    #[test]
    fn deliveries_share_one_thread_below_the_request_path() {
        let (name, tid, nice) = where_it_runs();
        assert_eq!(name.as_deref(), Some("dm-sink"));
        assert!(nice >= NICE, "nice {nice}");
        assert_ne!(tid, rustix::thread::gettid());
        // A second sink gets the same thread, not another one.
        assert_eq!(where_it_runs().1, tid);
    }
}
