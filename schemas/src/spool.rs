//! The sink's write-ahead spool: every row is appended to an on-disk log
//! before `push` returns, and leaves it only after ClickHouse acknowledged
//! the batch that carried it. The log is the queue: a ClickHouse outage or
//! a killed process loses nothing that `push` accepted.
//!
//! Layout, per table: `DIR/TABLE/SEQ.wal` segments of records
//! `[len: u32 LE][crc32: u32 LE][JSON row]`, and `DIR/TABLE/acked` holding
//! `SEQ OFFSET` of the first record not yet acknowledged (written by
//! rename, so it is never torn). A torn record at a segment's tail (crash
//! mid-write) ends that segment; appends after a restart go to a new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A new segment is started past this size.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Largest record we accept or read back.
pub const MAX_RECORD: usize = 1024 * 1024;
/// Read buffer of the delivery side.
const READ_BUFFER: usize = 64 * 1024;

/// When the spool calls fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Never: rows survive a killed process (page cache), not a power cut.
    #[default]
    Never,
    /// After every row: survives a power cut, costs a disk flush per row.
    Always,
}

/// A position in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub seq: u64,
    pub offset: u64,
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs: Vec<u64> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".wal").and_then(|s| s.parse().ok()))
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// The appending side (one per table, behind a mutex).
pub struct Writer {
    /// Held for the writer's life: one process per spool directory.
    _lock: File,
    dir: PathBuf,
    file: File,
    seq: u64,
    offset: u64,
    fsync: Fsync,
}

impl Writer {
    /// Opens the table's spool directory and starts a fresh segment.
    /// Another process holding the directory is waited for up to
    /// `lock_wait` (short-lived commands queue up), then refused.
    pub fn open(dir: &Path, fsync: Fsync, lock_wait: std::time::Duration) -> io::Result<Writer> {
        fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        let until = std::time::Instant::now() + lock_wait;
        while lock.try_lock().is_err() {
            if std::time::Instant::now() >= until {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is in use by another process (one process per spool directory)",
                        dir.display()
                    ),
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let seq = segments(dir)?.last().map_or(1, |s| s + 1);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(seg_path(dir, seq))?;
        Ok(Writer {
            _lock: lock,
            dir: dir.to_path_buf(),
            file,
            seq,
            offset: 0,
            fsync,
        })
    }

    /// Appends one record; returns the position after it.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<Pos> {
        if payload.len() > MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record too large",
            ));
        }
        if self.offset >= SEGMENT_BYTES {
            self.seq += 1;
            self.file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(seg_path(&self.dir, self.seq))?;
            self.offset = 0;
        }
        let mut rec = Vec::with_capacity(payload.len() + 8);
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        rec.extend_from_slice(payload);
        // One write: a killed process leaves a whole record or a torn tail.
        self.file.write_all(&rec)?;
        if self.fsync == Fsync::Always {
            self.file.sync_data()?;
        }
        self.offset += rec.len() as u64;
        Ok(Pos {
            seq: self.seq,
            offset: self.offset,
        })
    }
}

/// The reading side, owned by the sink's writer task.
pub struct Reader {
    dir: PathBuf,
    /// Next record to read.
    cursor: Pos,
    /// First record not acknowledged.
    acked: Pos,
    /// Buffered: a batch of small records costs a few reads, not two each.
    /// Kept open at the end of the written data: the writer appends there.
    file: Option<BufReader<File>>,
    /// Where the cursor stood when the next segment was seen: the end of
    /// this one is read once more from there before it is left.
    sealed: Option<Pos>,
}

impl Reader {
    /// Opens at the last acknowledged position.
    pub fn open(dir: &Path) -> io::Result<Reader> {
        fs::create_dir_all(dir)?;
        let acked = match fs::read_to_string(dir.join("acked")) {
            Ok(s) => {
                let mut it = s.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
                Pos {
                    seq: it.next().unwrap_or(0),
                    offset: it.next().unwrap_or(0),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Pos::default(),
            Err(e) => return Err(e),
        };
        let first = segments(dir)?.into_iter().find(|s| *s >= acked.seq);
        let cursor = match first {
            Some(s) if s == acked.seq => acked,
            Some(s) => Pos { seq: s, offset: 0 },
            None => acked,
        };
        Ok(Reader {
            dir: dir.to_path_buf(),
            cursor,
            acked: cursor,
            file: None,
            sealed: None,
        })
    }

    /// Reads up to `max` records from the cursor. Returns the payloads and
    /// the position after the last one; stops early at the end of the
    /// written data.
    pub fn read(&mut self, max: usize) -> io::Result<(Vec<Vec<u8>>, Pos)> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.next_record()? {
                Some(p) => out.push(p),
                None => break,
            }
        }
        Ok((out, self.cursor))
    }

    fn next_record(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if self.file.is_none() {
                match File::open(seg_path(&self.dir, self.cursor.seq)) {
                    Ok(mut f) => {
                        f.seek(SeekFrom::Start(self.cursor.offset))?;
                        self.file = Some(BufReader::with_capacity(READ_BUFFER, f));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        // No segment at the cursor: move to the next one, if any.
                        match segments(&self.dir)?
                            .into_iter()
                            .find(|s| *s > self.cursor.seq)
                        {
                            Some(s) => {
                                self.cursor = Pos { seq: s, offset: 0 };
                                continue;
                            }
                            None => return Ok(None),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            let f = self.file.as_mut().expect("opened above");
            let mut head = [0u8; 8];
            let got = read_full(f, &mut head)?;
            let payload = if got == 8 {
                let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
                let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
                if len > MAX_RECORD {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "corrupt spool record length",
                    ));
                }
                let mut payload = vec![0u8; len];
                let whole = read_full(f, &mut payload)? == len && crc32fast::hash(&payload) == crc;
                whole.then_some(payload)
            } else {
                None
            };
            if let Some(payload) = payload {
                self.cursor.offset += 8 + payload.len() as u64;
                return Ok(Some(payload));
            }
            // The end of what is written here so far: caught up with the
            // writer, a record it is still writing, or the torn tail of a
            // crash.
            if !seg_path(&self.dir, self.cursor.seq + 1).exists() {
                // The writer appends here. At a record's boundary the open
                // file reads on from the cursor when it does (a wake-up
                // costs a read, not an open, a 64 kB buffer and a directory
                // listing: it came once per call with the webhook outbox);
                // in the middle of one, read it again from the cursor.
                if got != 0 {
                    self.file = None;
                }
                return Ok(None);
            }
            // The writer moved to the next segment (numbered consecutively:
            // it starts at the last + 1) and never writes here again. What
            // it wrote before may have landed after the read above: read
            // once more from the cursor before leaving; ending at the same
            // place again, the rest is a crash's torn tail.
            self.file = None;
            if self.sealed == Some(self.cursor) {
                self.cursor = Pos {
                    seq: self.cursor.seq + 1,
                    offset: 0,
                };
            } else {
                self.sealed = Some(self.cursor);
            }
        }
    }

    /// Everything before `pos` reached ClickHouse: persist, drop finished segments.
    pub fn ack(&mut self, pos: Pos) -> io::Result<()> {
        if pos <= self.acked {
            return Ok(());
        }
        let tmp = self.dir.join("acked.tmp");
        fs::write(&tmp, format!("{} {}\n", pos.seq, pos.offset))?;
        fs::rename(&tmp, self.dir.join("acked"))?;
        for s in segments(&self.dir)? {
            if s < pos.seq {
                let _ = fs::remove_file(seg_path(&self.dir, s));
            }
        }
        self.acked = pos;
        Ok(())
    }

    /// Rewinds to the last acknowledged position (a batch failed).
    pub fn rewind(&mut self) {
        self.cursor = self.acked;
        self.file = None;
    }

    /// Bytes written but not acknowledged (the backlog).
    pub fn backlog_bytes(&self) -> u64 {
        let Ok(seqs) = segments(&self.dir) else {
            return 0;
        };
        seqs.into_iter()
            .filter(|s| *s >= self.acked.seq)
            .map(|s| {
                let len = fs::metadata(seg_path(&self.dir, s))
                    .map(|m| m.len())
                    .unwrap_or(0);
                if s == self.acked.seq {
                    len.saturating_sub(self.acked.offset)
                } else {
                    len
                }
            })
            .sum()
    }
}

fn read_full(f: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Appends `records` (one per line) to a dead-letter file and syncs it:
/// rows that can never be delivered, kept for a person to look at.
pub fn append_dead_letter<R: AsRef<[u8]>>(path: &Path, records: &[R]) -> io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    for r in records {
        f.write_all(r.as_ref())?;
        f.write_all(b"\n")?;
    }
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_ack_and_restart() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Writer::open(d.path(), Fsync::Never, std::time::Duration::ZERO).unwrap();
        for i in 0..5 {
            w.append(format!("row{i}").as_bytes()).unwrap();
        }
        let mut r = Reader::open(d.path()).unwrap();
        let (rows, pos) = r.read(3).unwrap();
        assert_eq!(
            rows,
            vec![b"row0".to_vec(), b"row1".to_vec(), b"row2".to_vec()]
        );
        // Insert failed: the same rows come again.
        r.rewind();
        let (again, _) = r.read(3).unwrap();
        assert_eq!(again, rows);
        r.ack(pos).unwrap();
        assert!(r.backlog_bytes() > 0);
        drop(w);
        drop(r);
        // Restart: unacknowledged rows come back, acknowledged ones do not;
        // new rows go to a new segment after them.
        let mut w = Writer::open(d.path(), Fsync::Always, std::time::Duration::ZERO).unwrap();
        w.append(b"row5").unwrap();
        let mut r = Reader::open(d.path()).unwrap();
        let (rows, pos) = r.read(100).unwrap();
        assert_eq!(
            rows,
            vec![b"row3".to_vec(), b"row4".to_vec(), b"row5".to_vec()]
        );
        r.ack(pos).unwrap();
        assert_eq!(r.backlog_bytes(), 0);
        assert_eq!(
            segments(d.path()).unwrap().len(),
            1,
            "finished segments are deleted"
        );
        let (none, _) = r.read(10).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn one_process_per_directory() {
        let d = tempfile::tempdir().unwrap();
        let _w = Writer::open(d.path(), Fsync::Never, std::time::Duration::ZERO).unwrap();
        let err = Writer::open(d.path(), Fsync::Never, std::time::Duration::ZERO)
            .err()
            .expect("second writer refused");
        assert!(err.to_string().contains("in use"), "{err}");
    }

    #[test]
    fn a_caught_up_reader_reads_on_from_its_open_file() {
        // A caught-up reader woken for each new record used to reopen its
        // segment every time (an open, a 64 kB buffer and a directory
        // listing per call). With the segment's name gone, only a reader
        // that kept the file open sees what the writer appends next.
        let d = tempfile::tempdir().unwrap();
        let mut w = Writer::open(d.path(), Fsync::Never, std::time::Duration::ZERO).unwrap();
        let mut r = Reader::open(d.path()).unwrap();
        w.append(b"a").unwrap();
        assert_eq!(r.read(10).unwrap().0, vec![b"a".to_vec()]);
        assert!(r.read(10).unwrap().0.is_empty(), "caught up");
        fs::remove_file(seg_path(d.path(), 1)).unwrap();
        w.append(b"b").unwrap();
        assert_eq!(r.read(10).unwrap().0, vec![b"b".to_vec()]);
    }

    #[test]
    fn a_caught_up_reader_follows_the_writer_into_its_next_segment() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Writer::open(d.path(), Fsync::Never, std::time::Duration::ZERO).unwrap();
        let mut r = Reader::open(d.path()).unwrap();
        let big = vec![b'x'; MAX_RECORD];
        let mut written = 0;
        while w.seq == 1 {
            w.append(&big).unwrap();
            written += 1;
            // Caught up now and then, as a delivery is.
            if written % 5 == 0 {
                assert_eq!(r.read(100).unwrap().0.len(), 5);
            }
        }
        w.append(b"last").unwrap();
        let (rows, pos) = r.read(100).unwrap();
        assert_eq!(rows.len(), written % 5 + 1);
        assert_eq!(rows.last().unwrap(), b"last");
        assert_eq!(pos.seq, 2, "in the writer's new segment");
        assert!(r.read(100).unwrap().0.is_empty());
    }

    #[test]
    fn torn_tail_is_skipped_after_restart() {
        let d = tempfile::tempdir().unwrap();
        let mut w = Writer::open(d.path(), Fsync::Never, std::time::Duration::ZERO).unwrap();
        w.append(b"whole").unwrap();
        // A crash in the middle of a record.
        let path = seg_path(d.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[50, 0, 0, 0, 1, 2]).unwrap();
        drop(w);
        let mut w = Writer::open(d.path(), Fsync::Never, std::time::Duration::ZERO).unwrap();
        w.append(b"after").unwrap();
        let mut r = Reader::open(d.path()).unwrap();
        let (rows, _) = r.read(10).unwrap();
        assert_eq!(rows, vec![b"whole".to_vec(), b"after".to_vec()]);
    }
}
