//! Segment files of the durable log: framing, recovery, sequential reading.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Committed, Lsn, WalEntry};
use crate::fsutil::{create_dir_durable, sync_dir};

pub(super) const HEADER: usize = 16;

/// No frame is larger: a header that says more is damage, not a record.
/// Bytes of entries one read from the files hands a cursor at most (past its first entry):
/// a cursor that fell behind on large records (SQAL samples, dead letters of 1 MB inputs)
/// must not pull thousands of them into memory at once.
const DISK_BATCH_BYTES: usize = 4 * 1024 * 1024;

pub(super) const MAX_FRAME_PAYLOAD: usize = 256 * 1024 * 1024;

/// A frame found while resynchronising after damage must continue the numbering within
/// this distance, so random bytes are not taken for a frame.
const RESYNC_LSN_WINDOW: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("durable log I/O: {0}")]
    Io(#[from] io::Error),
    #[error("durable log entry {lsn} in {path} cannot be read: {message}")]
    Unreadable {
        lsn: Lsn,
        path: PathBuf,
        message: String,
    },
    #[error("{0}")]
    Damaged(Damage),
}

/// Unreadable bytes where acknowledged entries are (anywhere but the torn tail of the
/// newest segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub path: PathBuf,
    /// Byte offset of the first unreadable frame in that file.
    pub offset: u64,
    /// How many bytes cannot be read there.
    pub bad_bytes: u64,
    /// Readable entries after the damage, in that file and the later ones.
    pub entries_after: u64,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the durable log is damaged: {} cannot be read at byte {} ({} bytes unreadable) and {} acknowledged entries follow it; nothing was changed. Run `gaveurs log salvage` to keep every readable entry (the unreadable bytes go to a quarantine file and a dlq row)",
            self.path.display(),
            self.offset,
            self.bad_bytes,
            self.entries_after
        )
    }
}

/// Appends one frame for `payload` at `lsn` to `buf`.
pub(super) fn frame(buf: &mut Vec<u8>, lsn: Lsn, payload: &[u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&lsn.to_le_bytes());
    crc.update(payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(payload);
}

struct Header {
    len: usize,
    crc: u32,
    lsn: Lsn,
}

fn header(bytes: &[u8]) -> Header {
    Header {
        len: u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize,
        crc: u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")),
        lsn: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
    }
}

fn checksum(lsn: Lsn, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&lsn.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// A whole, valid frame at `pos`: its header and end.
fn frame_at(bytes: &[u8], pos: usize) -> Option<(Header, usize)> {
    if bytes.len() - pos < HEADER {
        return None;
    }
    let h = header(&bytes[pos..pos + HEADER]);
    if h.len > MAX_FRAME_PAYLOAD {
        return None;
    }
    let end = pos + HEADER + h.len;
    if end > bytes.len() || checksum(h.lsn, &bytes[pos + HEADER..end]) != h.crc {
        return None;
    }
    Some((h, end))
}

/// A valid frame in `bytes`, its LSN and byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FrameSpan {
    pub lsn: Lsn,
    pub start: usize,
    pub end: usize,
}

/// What a segment's bytes hold: its valid frames and the unreadable ranges between them.
#[derive(Debug, Default)]
pub(super) struct Scan {
    pub frames: Vec<FrameSpan>,
    pub bad: Vec<(usize, usize)>,
}

impl Scan {
    /// The only bad range is the end of the file, and it looks like a write the process
    /// did not finish — a frame cut short, or zeros the filesystem left — rather than a
    /// complete frame whose bytes changed.
    pub(super) fn is_torn_tail(&self, bytes: &[u8]) -> bool {
        let [(start, end)] = self.bad[..] else {
            return false;
        };
        if end != bytes.len() {
            return false;
        }
        let rest = &bytes[start..];
        if rest.len() < HEADER {
            return true;
        }
        let h = header(&rest[..HEADER]);
        let cut_short = h.len <= MAX_FRAME_PAYLOAD && HEADER + h.len > rest.len();
        let zero_filled = rest[HEADER.min(rest.len())..].iter().all(|b| *b == 0)
            || rest[..HEADER].iter().all(|b| *b == 0);
        cut_short || zero_filled
    }
}

/// Finds every valid frame; after a bad one, looks for the next frame that continues the
/// numbering.
pub(super) fn scan(bytes: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut pos = 0;
    let mut last_lsn: Option<Lsn> = None;
    while pos < bytes.len() {
        if let Some((h, end)) = frame_at(bytes, pos) {
            scan.frames.push(FrameSpan {
                lsn: h.lsn,
                start: pos,
                end,
            });
            last_lsn = Some(h.lsn);
            pos = end;
            continue;
        }
        let bad_start = pos;
        let mut next = pos + 1;
        let resumed = loop {
            if bytes.len().saturating_sub(next) < HEADER {
                break None;
            }
            let h = header(&bytes[next..next + HEADER]);
            let plausible = match last_lsn {
                Some(last) => h.lsn > last && h.lsn - last <= RESYNC_LSN_WINDOW,
                None => h.lsn > 0,
            };
            if plausible && frame_at(bytes, next).is_some() {
                break Some(next);
            }
            next += 1;
        };
        match resumed {
            Some(at) => {
                scan.bad.push((bad_start, at));
                pos = at;
            }
            None => {
                scan.bad.push((bad_start, bytes.len()));
                break;
            }
        }
    }
    scan
}

pub(super) fn segment_path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(format!("{first_lsn:020}.wal"))
}

/// The segment files in `dir`, oldest first: `(first lsn, path)`.
pub(super) fn list(dir: &Path) -> io::Result<Vec<(Lsn, PathBuf)>> {
    let mut all = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(first_lsn) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<Lsn>().ok())
        else {
            continue;
        };
        all.push((first_lsn, path));
    }
    all.sort();
    Ok(all)
}

struct Segment {
    first_lsn: Lsn,
    path: PathBuf,
    bytes: u64,
}

pub(super) struct Segments {
    dir: PathBuf,
    /// Closed segments, oldest first, then the active one.
    all: Vec<Segment>,
    active: Option<File>,
    segment_bytes: u64,
}

impl Segments {
    /// Lists the segments in `dir` and checks every frame. A torn tail of the newest segment
    /// is cut; any other unreadable frame is [`SegmentError::Damaged`]. Returns the segments
    /// and the highest LSN found.
    pub(super) fn recover(dir: &Path, segment_bytes: u64) -> Result<(Segments, Lsn), SegmentError> {
        create_dir_durable(dir)?;
        let files = list(dir)?;
        let mut scans = Vec::with_capacity(files.len());
        for (first_lsn, path) in &files {
            let bytes = fs::read(path)?;
            let scan = scan(&bytes);
            scans.push((*first_lsn, path.clone(), bytes, scan));
        }
        // The newest segment that holds anything: a restart starts an empty one.
        let newest = scans.iter().rposition(|(_, _, bytes, _)| !bytes.is_empty());
        for (i, (_, path, bytes, scan)) in scans.iter().enumerate() {
            let Some(&(start, end)) = scan.bad.first() else {
                continue;
            };
            if Some(i) == newest && scan.is_torn_tail(bytes) {
                continue;
            }
            let later: usize = scans[i + 1..].iter().map(|s| s.3.frames.len()).sum();
            let after_here = scan.frames.iter().filter(|f| f.start > start).count();
            return Err(SegmentError::Damaged(Damage {
                path: path.clone(),
                offset: start as u64,
                bad_bytes: (end - start) as u64,
                entries_after: (later + after_here) as u64,
            }));
        }
        let mut all = Vec::with_capacity(scans.len());
        let mut last = 0;
        for (first_lsn, path, bytes, scan) in scans {
            let mut len = bytes.len() as u64;
            if let Some(&(start, _)) = scan.bad.first() {
                tracing::warn!(
                    segment = %path.display(),
                    dropped_bytes = bytes.len() - start,
                    "cutting a torn tail off the durable log (written when the process stopped, never acknowledged)"
                );
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(start as u64)?;
                file.sync_all()?;
                len = start as u64;
            }
            if let Some(f) = scan.frames.last() {
                last = last.max(f.lsn);
            }
            all.push(Segment {
                first_lsn,
                path,
                bytes: len,
            });
        }
        Ok((
            Segments {
                dir: dir.to_path_buf(),
                all,
                active: None,
                segment_bytes,
            },
            last,
        ))
    }

    pub(super) fn start_segment(&mut self, first_lsn: Lsn) -> io::Result<()> {
        let path = segment_path(&self.dir, first_lsn);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        sync_dir(&self.dir)?;
        // An empty segment left by the previous run can carry the same name.
        self.all.retain(|s| s.first_lsn != first_lsn);
        self.all.push(Segment {
            first_lsn,
            path,
            bytes: 0,
        });
        self.active = Some(file);
        Ok(())
    }

    /// Writes `frames` (ending at `last_lsn`) to the active segment and fsyncs it; starts a new
    /// segment afterwards if this one is full.
    /// A failed write is cut back off the file, so the same frames can be written again
    /// (the disk was full).
    pub(super) fn append_durably(&mut self, frames: &[u8], last_lsn: Lsn) -> io::Result<()> {
        let file = self.active.as_mut().expect("a segment is active");
        let active = self.all.last_mut().expect("a segment is active");
        if let Err(e) = file.write_all(frames).and_then(|()| file.sync_data()) {
            file.set_len(active.bytes)?;
            file.seek(SeekFrom::Start(active.bytes))?;
            return Err(e);
        }
        active.bytes += frames.len() as u64;
        if active.bytes >= self.segment_bytes
            && let Err(e) = self.start_segment(last_lsn + 1)
        {
            // What was written is durable; the next write tries again to start a segment.
            tracing::warn!(target: "storage", error = %e, "cannot start a new log segment; the current one grows");
        }
        Ok(())
    }

    /// `(first lsn, path)` of every segment, for readers that read outside the lock.
    pub(super) fn files(&self) -> Vec<(Lsn, PathBuf)> {
        self.all
            .iter()
            .map(|s| (s.first_lsn, s.path.clone()))
            .collect()
    }

    pub(super) fn total_bytes(&self) -> u64 {
        self.all.iter().map(|s| s.bytes).sum()
    }

    /// Bytes kept if every closed segment wholly at or below `lsn` is released.
    fn retained_after(&self, lsn: Lsn) -> u64 {
        let removable = self.removable(lsn);
        self.all[removable..].iter().map(|s| s.bytes).sum()
    }

    /// How many leading segments hold only entries at or below `lsn` (never the active one).
    fn removable(&self, lsn: Lsn) -> usize {
        // Segment i holds LSNs [first_i, first_{i+1}).
        let mut removable = 0;
        while removable + 1 < self.all.len() && self.all[removable + 1].first_lsn <= lsn + 1 {
            removable += 1;
        }
        removable
    }

    /// Where to release up to: `wanted` (every cursor is past it), or further when that
    /// keeps more than `cap` bytes — but never past `essential`.
    pub(super) fn release_point(&self, wanted: Lsn, essential: Lsn, cap: u64) -> Lsn {
        if self.retained_after(wanted) <= cap || essential <= wanted {
            return wanted;
        }
        for segment in &self.all[1..] {
            let through = segment.first_lsn - 1;
            if through <= wanted {
                continue;
            }
            if through >= essential {
                return essential;
            }
            if self.retained_after(through) <= cap {
                return through;
            }
        }
        essential.min(wanted.max(self.all.last().map_or(wanted, |s| s.first_lsn - 1)))
    }

    /// Forgets the closed segments whose every entry is at or below `lsn` and returns their
    /// paths, to be deleted outside the lock.
    pub(super) fn take_released(&mut self, lsn: Lsn) -> Vec<PathBuf> {
        let removable = self.removable(lsn);
        self.all.drain(..removable).map(|s| s.path).collect()
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Deletes released segment files and fsyncs the folder.
pub(super) fn delete(dir: &Path, paths: &[PathBuf]) -> io::Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    for path in paths {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    sync_dir(dir)
}

/// Entries read from the segment files.
pub(super) struct ReadBatch {
    pub entries: Vec<Committed>,
    /// Entries from the wanted position up to here are gone (their segments released).
    pub gone_through: Option<Lsn>,
}

struct OpenSegment {
    first_lsn: Lsn,
    path: PathBuf,
    file: BufReader<File>,
    /// Byte offset of the next frame.
    offset: u64,
    /// LSN the next frame is expected to hold or pass.
    next: Lsn,
}

/// Reads entries from the segment files in order, keeping its place between calls.
#[derive(Default)]
pub(super) struct Reader {
    open: Option<OpenSegment>,
}

impl Reader {
    /// Up to `max` entries from `want` on, none past `upto`.
    pub(super) fn read(
        &mut self,
        files: &[(Lsn, PathBuf)],
        want: Lsn,
        upto: Lsn,
        max: usize,
    ) -> Result<ReadBatch, SegmentError> {
        let mut batch = ReadBatch {
            entries: Vec::new(),
            gone_through: None,
        };
        let Some(first) = files.first().map(|f| f.0) else {
            batch.gone_through = Some(upto);
            return Ok(batch);
        };
        if want < first {
            batch.gone_through = Some((first - 1).min(upto));
            return Ok(batch);
        }
        let mut index = files
            .iter()
            .rposition(|(lsn, _)| *lsn <= want)
            .expect("want is at or after the first segment");
        let mut want = want;
        let mut bytes_left = DISK_BATCH_BYTES;
        loop {
            let (first_lsn, path) = &files[index];
            let reuse = self
                .open
                .as_ref()
                .is_some_and(|o| o.first_lsn == *first_lsn && o.next == want);
            if !reuse {
                let file = match File::open(path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        // Released while we looked: what it held is gone.
                        let end = files.get(index + 1).map_or(upto, |f| f.0 - 1);
                        batch.gone_through = Some(end.min(upto));
                        self.open = None;
                        return Ok(batch);
                    }
                    Err(e) => return Err(e.into()),
                };
                self.open = Some(OpenSegment {
                    first_lsn: *first_lsn,
                    path: path.clone(),
                    file: BufReader::with_capacity(1 << 20, file),
                    offset: 0,
                    next: *first_lsn,
                });
            }
            let open = self.open.as_mut().expect("just opened");
            let finished_segment =
                read_frames(open, &mut batch.entries, want, upto, max, &mut bytes_left)?;
            if let Some(last) = batch.entries.last() {
                want = last.lsn + 1;
            }
            if batch.entries.len() >= max || want > upto || bytes_left == 0 {
                return Ok(batch);
            }
            if !finished_segment || index + 1 >= files.len() {
                return Ok(batch);
            }
            index += 1;
            want = want.max(files[index].0);
        }
    }
}

/// Reads frames from `open` into `out` until `max`, `bytes_left` spent (after one entry at
/// least), a frame past `upto`, or the end of the file (returns true then).
fn read_frames(
    open: &mut OpenSegment,
    out: &mut Vec<Committed>,
    want: Lsn,
    upto: Lsn,
    max: usize,
    bytes_left: &mut usize,
) -> Result<bool, SegmentError> {
    open.file.seek(SeekFrom::Start(open.offset))?;
    let mut head = [0u8; HEADER];
    let mut payload = Vec::new();
    while out.len() < max && (*bytes_left > 0 || out.is_empty()) {
        match open.file.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(true),
            Err(e) => return Err(e.into()),
        }
        let h = header(&head);
        if h.lsn > upto {
            return Ok(false);
        }
        if h.len > MAX_FRAME_PAYLOAD {
            return Err(damaged_while_running(open, h.lsn));
        }
        payload.resize(h.len, 0);
        match open.file.read_exact(&mut payload) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(true),
            Err(e) => return Err(e.into()),
        }
        if checksum(h.lsn, &payload) != h.crc {
            return Err(damaged_while_running(open, h.lsn));
        }
        open.offset += (HEADER + h.len) as u64;
        open.next = h.lsn + 1;
        if h.lsn < want {
            continue;
        }
        let entry: WalEntry =
            serde_json::from_slice(&payload).map_err(|e| SegmentError::Unreadable {
                lsn: h.lsn,
                path: open.path.clone(),
                message: e.to_string(),
            })?;
        *bytes_left = bytes_left.saturating_sub(h.len);
        out.push(Committed {
            lsn: h.lsn,
            entry: Arc::new(entry),
            encoded: std::mem::take(&mut payload).into(),
        });
    }
    Ok(false)
}

fn damaged_while_running(open: &OpenSegment, lsn: Lsn) -> SegmentError {
    SegmentError::Unreadable {
        lsn,
        path: open.path.clone(),
        message: format!(
            "the frame at byte {} changed on disk after it was checked",
            open.offset
        ),
    }
}

#[cfg(test)]
pub(super) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    list(dir).unwrap().into_iter().map(|(_, p)| p).collect()
}
