//! `gaveurs log salvage`: what an operator runs when start-up refuses a damaged log. Every
//! readable entry is kept in place; each unreadable range is moved to a quarantine file
//! beside the log, and reported so the caller can dead-letter it (stage `log`, reason
//! `log_damaged`). Runs on a stopped pipeline only.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::Lsn;
use super::segment::{list, scan};
use crate::fsutil::{create_dir_durable, sync_dir};

/// Where quarantined bytes go, inside the log folder.
pub const QUARANTINE_DIR: &str = "quarantine";

/// One unreadable range taken out of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub segment: PathBuf,
    /// Byte offset of the range in the segment as it was.
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// The file the bytes were saved to.
    pub saved_to: PathBuf,
    /// The readable entries on either side, to say which LSNs were lost.
    pub lsn_before: Option<Lsn>,
    pub lsn_after: Option<Lsn>,
}

#[derive(Debug, Default)]
pub struct SalvageReport {
    pub segments: usize,
    pub entries_kept: u64,
    pub quarantined: Vec<Quarantined>,
}

/// Rewrites every damaged segment in `dir` with its readable frames only.
pub fn salvage(dir: &Path) -> io::Result<SalvageReport> {
    let mut report = SalvageReport::default();
    let quarantine = dir.join(QUARANTINE_DIR);
    for (_, path) in list(dir)? {
        report.segments += 1;
        let bytes = fs::read(&path)?;
        let scan = scan(&bytes);
        report.entries_kept += scan.frames.len() as u64;
        if scan.bad.is_empty() {
            continue;
        }
        create_dir_durable(&quarantine)?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("segment")
            .to_string();
        for &(start, end) in &scan.bad {
            let saved_to = quarantine.join(format!("{name}.{start}.bin"));
            let mut file = File::create(&saved_to)?;
            file.write_all(&bytes[start..end])?;
            file.sync_all()?;
            report.quarantined.push(Quarantined {
                segment: path.clone(),
                offset: start as u64,
                bytes: bytes[start..end].to_vec(),
                saved_to,
                lsn_before: scan
                    .frames
                    .iter()
                    .rev()
                    .find(|f| f.end <= start)
                    .map(|f| f.lsn),
                lsn_after: scan.frames.iter().find(|f| f.start >= end).map(|f| f.lsn),
            });
        }
        sync_dir(&quarantine)?;
        let mut kept = Vec::with_capacity(bytes.len());
        for frame in &scan.frames {
            kept.extend_from_slice(&bytes[frame.start..frame.end]);
        }
        let tmp = dir.join(format!(".{name}.salvage.tmp"));
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&kept)?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
    }
    Ok(report)
}
