//! What the memory allocator holds, from jemalloc's own counters. After a
//! load peak the node's PSS stays above its pre-load baseline; these tell
//! whether that is the node's data (`allocated`) or pages the allocator
//! keeps (`resident` minus `allocated`: partly filled slabs, and
//! `metadata`, which jemalloc never gives back). Exported on `/metrics`
//! for the NOC and read by the sustained bench before and after its load.

use tikv_jemalloc_ctl::{epoch, opt, stats, stats_print};

/// jemalloc's totals in bytes at the moment of [`AllocatorStats::read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes the node's live allocations take.
    pub allocated: usize,
    /// Bytes of the pages those allocations sit in (≥ allocated).
    pub active: usize,
    /// Bytes of physical memory the allocator holds, metadata included.
    pub resident: usize,
    /// Bytes of the allocator's own bookkeeping.
    pub metadata: usize,
    /// Bytes of address space kept mapped but given back to the system.
    pub retained: usize,
    /// Arenas threads are spread over (`opt.narenas`; the binary asks for
    /// one, `main.rs`; jemalloc adds one of its own for allocations over
    /// 8 MB).
    pub arenas: u32,
}

impl AllocatorStats {
    /// jemalloc's current counters (its statistics are cached per "epoch":
    /// advancing it refreshes them). `None` if jemalloc does not answer.
    pub fn read() -> Option<Self> {
        epoch::advance().ok()?;
        Some(Self {
            allocated: stats::allocated::read().ok()?,
            active: stats::active::read().ok()?,
            resident: stats::resident::read().ok()?,
            metadata: stats::metadata::read().ok()?,
            retained: stats::retained::read().ok()?,
            arenas: opt::narenas::read().ok()?,
        })
    }

    /// Sets `dialmark_router_allocator_bytes{kind=...}` and
    /// `dialmark_router_allocator_arenas`.
    pub fn export(&self) {
        let kinds = [
            ("allocated", self.allocated),
            ("active", self.active),
            ("resident", self.resident),
            ("metadata", self.metadata),
            ("retained", self.retained),
        ];
        for (kind, bytes) in kinds {
            metrics::gauge!("dialmark_router_allocator_bytes", "kind" => kind).set(bytes as f64);
        }
        metrics::gauge!("dialmark_router_allocator_arenas").set(f64::from(self.arenas));
    }
}

/// jemalloc's full report (`malloc_stats_print` as text: totals, then per
/// arena its metadata, thread caches and every size class's slabs), to
/// see where memory stays after a peak. Served on `/debug/allocator`.
pub fn report() -> String {
    let mut options = stats_print::Options::default();
    options.skip_constants = true;
    options.skip_mutex_statistics = true;
    let mut out = Vec::new();
    if let Err(e) = stats_print::stats_print(&mut out, options) {
        return format!("jemalloc gave no report: {e}\n");
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_are_consistent() {
        // The test binary allocates through the system allocator, so only
        // jemalloc's own start-up is counted: still nonzero, and ordered.
        let s = AllocatorStats::read().expect("jemalloc answers");
        assert!(s.metadata > 0, "{s:?}");
        assert!(s.allocated <= s.active, "{s:?}");
        assert!(s.active <= s.resident, "{s:?}");
        assert!(s.arenas >= 1, "{s:?}");
    }

    #[test]
    fn the_report_names_the_metadata() {
        let r = report();
        assert!(r.contains("metadata"), "{r}");
    }
}
