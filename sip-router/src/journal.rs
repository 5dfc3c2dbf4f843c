//! A shard's journal of answered calls in progress, so a node killed
//! mid-call loses no call. At the answer the call's row is written here
//! (and goes to ClickHouse with `ended` = 0); at its end, after its final
//! row is in the sink's spool, a close mark. At the next start every call
//! the journals hold open is closed as `node_lost` with what was known:
//! its answer, and the journal's last write as its end.
//!
//! One file per shard (`DIR/journal-<shard>-<seq>.jsonl`, one JSON record
//! per line, written unbuffered: it survives a killed process). When a
//! file has grown past [`Journal::ROTATE_MIN`] and four times what its
//! open calls take, a new one is started and the calls up are copied into
//! it a batch at a time (paced by the shard: in its idle moments, else one
//! batch per 100 ms) while new records go there too; once all are
//! copied the old file is removed (on a thread of its own), so the
//! journal stays proportional to the calls up. Copying 100,000 calls at
//! once held a shard ~1.3 s, and copying them back to back or unlinking
//! the old file in the shard still put a saturated shard's messages past
//! `overload_delay_ms` (the sustained bench's shedding episodes); a killed
//! process meanwhile leaves both files, which recovery reads in order.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::thread;

use dialmark_schemas::rows::{Call as CallRow, Disposition};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A rotated-out file being removed; joining it waits for that.
pub type Removal = thread::JoinHandle<io::Result<()>>;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Record {
    Open(Box<CallRow>),
    Close(Uuid),
}

pub struct Journal {
    dir: PathBuf,
    shard: usize,
    seq: u64,
    file: File,
    written: u64,
    rotate_at: u64,
    /// A rotation in progress: the previous file, removed once its calls
    /// are copied.
    old: Option<PathBuf>,
}

fn path(dir: &Path, shard: usize, seq: u64) -> PathBuf {
    dir.join(format!("journal-{shard}-{seq:010}.jsonl"))
}

fn journals(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("journal-") && n.ends_with(".jsonl"))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    out.sort();
    Ok(out)
}

/// The calls a previous run left open, closed as `node_lost`, and the
/// journal files they came from (remove them once the rows are recorded).
pub fn recover(dir: &Path) -> io::Result<(Vec<CallRow>, Vec<PathBuf>)> {
    let files = journals(dir)?;
    let mut open: HashMap<Uuid, CallRow> = HashMap::new();
    // The node was alive until its last write to any of them.
    let mut ended = 0;
    for f in &files {
        let modified = fs::metadata(f)?
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as u32);
        ended = ended.max(modified);
        for line in BufReader::new(File::open(f)?).lines() {
            // A torn last line (killed mid-write) is skipped.
            let Ok(rec) = serde_json::from_str::<Record>(&line?) else {
                continue;
            };
            match rec {
                Record::Open(row) => {
                    open.insert(row.call_id, *row);
                }
                Record::Close(id) => {
                    open.remove(&id);
                }
            }
        }
    }
    let rows = open
        .into_values()
        .map(|mut row| {
            let ended = ended.max(row.answered);
            row.disposition = Disposition::NodeLost;
            row.ended = ended;
            row.version = row.version.max(u64::from(ended) * 1000) + 1;
            row.talk_ms = (ended - row.answered).saturating_mul(1000);
            row
        })
        .collect();
    Ok((rows, files))
}

impl Journal {
    /// Files are rotated past this size (and four times their open calls).
    pub const ROTATE_MIN: u64 = 16 << 20;

    /// Starts shard `shard`'s journal in `dir` (after [`recover`]).
    pub fn open(dir: &Path, shard: usize) -> io::Result<Journal> {
        fs::create_dir_all(dir)?;
        let seq = 0;
        Ok(Journal {
            file: Self::create(dir, shard, seq)?,
            dir: dir.to_path_buf(),
            shard,
            seq,
            written: 0,
            rotate_at: Self::ROTATE_MIN,
            old: None,
        })
    }

    fn create(dir: &Path, shard: usize, seq: u64) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path(dir, shard, seq))
    }

    fn write(&mut self, rec: &Record) -> io::Result<()> {
        let mut line = Vec::new();
        push(&mut line, rec)?;
        self.append(&line)
    }

    /// `lines` at the end of the file, in one write.
    fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        self.file.write_all(lines)?;
        self.written += lines.len() as u64;
        Ok(())
    }

    /// An answered call (its in-progress row).
    pub fn opened(&mut self, row: &CallRow) -> io::Result<()> {
        self.write(&Record::Open(Box::new(row.clone())))
    }

    /// The call's final row is in the sink.
    pub fn closed(&mut self, id: Uuid) -> io::Result<()> {
        self.write(&Record::Close(id))
    }

    /// Time for a new file (none is being filled from the old one).
    pub fn wants_rotation(&self) -> bool {
        self.old.is_none() && self.written >= self.rotate_at
    }

    pub fn rotating(&self) -> bool {
        self.old.is_some()
    }

    /// Starts a new file: records go there from now on; the calls up are
    /// then copied with [`Journal::copy`] and the old file removed by
    /// [`Journal::finish_rotation`].
    pub fn start_rotation(&mut self) -> io::Result<()> {
        let old = path(&self.dir, self.shard, self.seq);
        self.seq += 1;
        self.file = Self::create(&self.dir, self.shard, self.seq)?;
        self.written = 0;
        self.old = Some(old);
        Ok(())
    }

    /// Copies calls up (their in-progress rows) into the new file, in
    /// one write.
    pub fn copy(&mut self, open: impl Iterator<Item = CallRow>) -> io::Result<()> {
        let mut buf = Vec::new();
        for row in open {
            push(&mut buf, &Record::Open(Box::new(row)))?;
        }
        self.append(&buf)
    }

    /// The copy failed: the old file is left for recovery to read (and
    /// removed at the next start); the new one goes on as the only one.
    pub fn keep_old(&mut self) {
        self.old = None;
        self.rotate_at = Self::ROTATE_MIN.max(self.written * 4);
    }

    /// Every call up is copied: the old file goes, removed on a thread of
    /// its own (the handle says when it is gone). Unlinking a file of a
    /// few hundred MB drops its page cache and, on a `discard`-mounted
    /// ext4, trims its blocks: done in the shard, that held it ~0.3 s, the
    /// sustained bench's shedding episodes. A kill before it is gone leaves
    /// a file recovery reads, as during the copy.
    pub fn finish_rotation(&mut self) -> io::Result<Option<Removal>> {
        self.rotate_at = Self::ROTATE_MIN.max(self.written * 4);
        let Some(old) = self.old.take() else {
            return Ok(None);
        };
        thread::Builder::new()
            .name(format!("journal-{}-rm", self.shard))
            .spawn(move || {
                let done = fs::remove_file(&old);
                if let Err(e) = &done {
                    tracing::error!(file = %old.display(), cause = %e, "journal file not removed");
                }
                done
            })
            .map(Some)
    }
}

/// `rec` as one line appended to `buf`.
fn push(buf: &mut Vec<u8>, rec: &Record) -> io::Result<()> {
    serde_json::to_writer(&mut *buf, rec).map_err(io::Error::other)?;
    buf.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dialmark_schemas::rows::{Attribution, NumberStatus};

    fn row(answered: u32) -> CallRow {
        CallRow {
            call_id: Uuid::new_v4(),
            sip_call_id: "c@x".into(),
            received: answered - 3,
            answered,
            ended: 0,
            ring_ms: 2_000,
            talk_ms: 0,
            caller: "+79161234567".into(),
            number: "+74950000001".into(),
            number_status: NumberStatus::Active,
            site: "shop".into(),
            pool: "shop".into(),
            disposition: Disposition::Answered,
            final_code: 200,
            attempts: 1,
            final_trunk: "a".into(),
            destination: "+74951234567".into(),
            attribution: Attribution::LiveLease,
            session_id: String::new(),
            visitor_id: String::new(),
            source_label: String::new(),
            utm_source: "google".into(),
            utm_medium: String::new(),
            utm_campaign: String::new(),
            utm_term: String::new(),
            utm_content: String::new(),
            gclid: String::new(),
            yclid: String::new(),
            referrer: String::new(),
            landing_url: String::new(),
            country: String::new(),
            region: String::new(),
            city: String::new(),
            version: u64::from(answered) * 1000,
            gbraid: String::new(),
            wbraid: String::new(),
            fbclid: String::new(),
            msclkid: String::new(),
            ym_uid: String::new(),
            channel: String::new(),
            touch_ts: 0,
            first_touch_ts: 0,
            first_channel: String::new(),
            first_utm_source: String::new(),
            first_utm_medium: String::new(),
            first_utm_campaign: String::new(),
            attribution_confidence: Default::default(),
        }
    }

    #[test]
    fn open_calls_come_back_as_node_lost_and_closed_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let now = dialmark_schemas::unix_now();
        let (a, b, c) = (row(now - 60), row(now - 30), row(now - 10));
        let mut j0 = Journal::open(dir.path(), 0).unwrap();
        let mut j1 = Journal::open(dir.path(), 1).unwrap();
        j0.opened(&a).unwrap();
        j1.opened(&b).unwrap();
        j0.opened(&c).unwrap();
        j0.closed(c.call_id).unwrap();
        // A torn line from a kill mid-write.
        j1.file.write_all(b"{\"open\":{\"call_id\"").unwrap();
        drop((j0, j1));
        let (mut rows, files) = recover(dir.path()).unwrap();
        rows.sort_by_key(|r| r.answered);
        assert_eq!(files.len(), 2);
        let ids: Vec<Uuid> = rows.iter().map(|r| r.call_id).collect();
        assert_eq!(ids, [a.call_id, b.call_id]);
        for r in &rows {
            assert_eq!(r.disposition, Disposition::NodeLost);
            assert!(r.ended >= now, "ended at the journal's last write");
            assert_eq!(r.talk_ms, (r.ended - r.answered) * 1000);
            assert_eq!(r.utm_source, "google", "what was known is kept");
        }
    }

    #[test]
    fn a_rotation_cut_short_by_a_kill_loses_no_call_and_revives_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), 1).unwrap();
        let (a, b, c) = (row(1_000), row(1_000), row(1_000));
        for r in [&a, &b, &c] {
            j.opened(r).unwrap();
        }
        j.start_rotation().unwrap();
        assert!(j.rotating() && !j.wants_rotation());
        // Meanwhile b ends (its close in the new file, it is never
        // copied) and d is answered; a is copied, c not yet: killed here.
        j.closed(b.call_id).unwrap();
        let d = row(1_000);
        j.opened(&d).unwrap();
        j.copy(std::iter::once(a.clone())).unwrap();
        assert_eq!(
            journals(dir.path()).unwrap().len(),
            2,
            "both files meanwhile"
        );
        let ids = |dir: &Path| {
            let (rows, _) = recover(dir).unwrap();
            let mut ids: Vec<Uuid> = rows.iter().map(|r| r.call_id).collect();
            ids.sort();
            ids
        };
        let mut up = vec![a.call_id, c.call_id, d.call_id];
        up.sort();
        assert_eq!(ids(dir.path()), up);
        // Done: one file, the same calls up.
        j.copy(std::iter::once(c.clone())).unwrap();
        let removal = j.finish_rotation().unwrap().expect("an old file");
        assert!(!j.rotating());
        removal.join().unwrap().unwrap();
        assert_eq!(journals(dir.path()).unwrap().len(), 1);
        assert_eq!(ids(dir.path()), up);
    }

    #[test]
    fn rotation_keeps_only_the_calls_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), 3).unwrap();
        let up = row(1_000);
        j.opened(&up).unwrap();
        for _ in 0..10 {
            let gone = row(1_000);
            j.opened(&gone).unwrap();
            j.closed(gone.call_id).unwrap();
        }
        j.start_rotation().unwrap();
        j.copy(std::iter::once(up.clone())).unwrap();
        j.finish_rotation()
            .unwrap()
            .unwrap()
            .join()
            .unwrap()
            .unwrap();
        let files = journals(dir.path()).unwrap();
        assert_eq!(files.len(), 1, "the old file is gone");
        let (rows, _) = recover(dir.path()).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].call_id, up.call_id);
        assert!(std::fs::metadata(&files[0]).unwrap().len() < 2_000);
    }
}
