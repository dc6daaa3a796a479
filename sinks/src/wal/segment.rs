//! Segment files of the durable log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Committed, Lsn, WalEntry};
use crate::fsutil::{create_dir_durable, sync_dir};

const HEADER: usize = 16;

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

/// Reads the whole frames at the start of `bytes`: `(lsn, payload)` pairs and the length of
/// the valid prefix.
fn read_frames(bytes: &[u8]) -> (Vec<(Lsn, &[u8])>, usize) {
    let mut frames = Vec::new();
    let mut pos = 0;
    while bytes.len() - pos >= HEADER {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap());
        let lsn_bytes = &bytes[pos + 8..pos + 16];
        let end = pos + HEADER + len;
        if end > bytes.len() {
            break;
        }
        let payload = &bytes[pos + HEADER..end];
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(lsn_bytes);
        hasher.update(payload);
        if hasher.finalize() != crc {
            break;
        }
        frames.push((u64::from_le_bytes(lsn_bytes.try_into().unwrap()), payload));
        pos = end;
    }
    (frames, pos)
}

struct Segment {
    first_lsn: Lsn,
    path: PathBuf,
}

pub(super) struct Segments {
    dir: PathBuf,
    /// Closed segments, oldest first, then the active one.
    all: Vec<Segment>,
    active: Option<File>,
    active_bytes: u64,
    segment_bytes: u64,
    /// Highest LSN written to the closed segments and the active one.
    last_written: Lsn,
}

fn segment_path(dir: &Path, first_lsn: Lsn) -> PathBuf {
    dir.join(format!("{first_lsn:020}.wal"))
}

impl Segments {
    /// Lists the segments in `dir`, cuts torn tails, and decodes entries after `published`.
    /// Returns the segments, those entries, and the highest LSN found.
    pub(super) fn recover(
        dir: &Path,
        published: Lsn,
        segment_bytes: u64,
    ) -> Result<(Segments, Vec<Committed>, Lsn), SegmentError> {
        create_dir_durable(dir)?;
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
            all.push(Segment { first_lsn, path });
        }
        all.sort_by_key(|s| s.first_lsn);
        let mut recovered = Vec::new();
        let mut last = 0;
        for segment in &all {
            let bytes = fs::read(&segment.path)?;
            let (frames, valid) = read_frames(&bytes);
            if valid < bytes.len() {
                tracing::warn!(
                    segment = %segment.path.display(),
                    dropped_bytes = bytes.len() - valid,
                    "cutting a torn tail off the durable log (written when the process stopped, never acknowledged)"
                );
                let file = OpenOptions::new().write(true).open(&segment.path)?;
                file.set_len(valid as u64)?;
                file.sync_all()?;
            }
            for (lsn, payload) in frames {
                last = last.max(lsn);
                if lsn <= published {
                    continue;
                }
                let entry: WalEntry =
                    serde_json::from_slice(payload).map_err(|e| SegmentError::Unreadable {
                        lsn,
                        path: segment.path.clone(),
                        message: e.to_string(),
                    })?;
                recovered.push(Committed {
                    lsn,
                    entry: Arc::new(entry),
                });
            }
        }
        recovered.sort_by_key(|c| c.lsn);
        Ok((
            Segments {
                dir: dir.to_path_buf(),
                all,
                active: None,
                active_bytes: 0,
                segment_bytes,
                last_written: last,
            },
            recovered,
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
        self.all.push(Segment { first_lsn, path });
        self.active = Some(file);
        self.active_bytes = 0;
        Ok(())
    }

    /// Writes `frames` (ending at `last_lsn`) to the active segment and fsyncs it; starts a new
    /// segment afterwards if this one is full.
    pub(super) fn append_durably(&mut self, frames: &[u8], last_lsn: Lsn) -> io::Result<()> {
        let file = self.active.as_mut().expect("a segment is active");
        file.write_all(frames)?;
        file.sync_data()?;
        self.active_bytes += frames.len() as u64;
        self.last_written = last_lsn;
        if self.active_bytes >= self.segment_bytes {
            self.start_segment(last_lsn + 1)?;
        }
        Ok(())
    }

    /// Deletes closed segments whose every entry is at or below `lsn`.
    pub(super) fn release_through(&mut self, lsn: Lsn) -> io::Result<()> {
        // Segment i holds LSNs [first_i, first_{i+1}); the last one is active and kept.
        let mut removable = 0;
        while removable + 1 < self.all.len() && self.all[removable + 1].first_lsn <= lsn + 1 {
            removable += 1;
        }
        if removable == 0 {
            return Ok(());
        }
        for segment in self.all.drain(..removable) {
            match fs::remove_file(&segment.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        sync_dir(&self.dir)
    }
}

#[cfg(test)]
pub(super) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}
