//! Compaction of closed days, and retention: keeps the Parquet datasets bounded.
//!
//! Every roll publishes one small file per (dataset, partition), so a year of rolls is tens
//! of thousands of files, slow for every reader. Periodically (on its own thread, see
//! [`spawn`]) each instance:
//!
//! 1. **removes expired partitions**: for a dataset with `retention_days`, every
//!    `date=YYYY-MM-DD` folder older than that loses its published files (every instance's),
//!    then the emptied folders; hidden files (a write in progress) are left alone;
//! 2. **compacts closed days**: in each `date=…/site=…` folder of a day that ended more than
//!    the grace ago, it merges *its own* small published files into one file (or a few, each
//!    at most `max_file_bytes`).
//!
//! # Names say what a file covers
//!
//! Each writer of an instance names its files by a key that only grows (see [`FileName`]):
//! the log's sink by LSN range (`<instance>-wal-<first>-<last>`), the derived writer by
//! flush (`<instance>-derived-<millis>-<n>`), the alert operator by publication sequence
//! (`<instance>-alerts-<seq>[-<chunk>]`), the anomaly desk likewise
//! (`<instance>-anomalies-<seq>[-<chunk>]`). A compacted file is named by the range of keys it
//! covers — `<instance>-wal-<min first>-<max last>`, `<instance>-derived-<lo>-<lo n>-<hi>-<hi
//! n>`, `<instance>-alerts-<lo>-<lo chunk>-<hi>-<hi chunk>` — and only ever merges a run of
//! files that are consecutive in that order, so the files whose key lies inside its range are
//! exactly its inputs. Readers therefore skip any file whose range another file of the same
//! instance and writer, in the same folder, strictly contains ([`superseded`]; the query
//! catalog applies it to every listing).
//!
//! # Crash safety
//!
//! A merge writes the new file hidden (`.<name>.tmp`) and fsyncs it, renames it to its
//! published name and fsyncs the folder, then deletes its inputs and fsyncs the folder again.
//! A crash before the rename leaves a hidden file (never read, removed with the instance's
//! other hidden files at start); after it, the inputs are superseded, so a reader that applies
//! the rule counts each row once whether they are still there or not, and the next pass
//! deletes those left over before anything else. Only a reader that ignores the rule (e.g.
//! DuckDB over the raw folder) sees the rows twice, between the rename and the deletes.
//!
//! # What is never merged
//!
//! - Another instance's files, files whose names do not parse (another writer, an older
//!   scheme), hidden files, and files of a day not yet closed.
//! - A log file whose last LSN is above the published LSN in the instance's `state.json`:
//!   its roll is still in progress (its intent, or a roll manifest a peer may finish, still
//!   names it as a rename target).
//! - The alert files of the instance's newest sequence: after a crash the alert operator
//!   publishes that sequence again, possibly with more rows, under the same names; a newer
//!   sequence on disk proves the older ones final.
//! - Files whose Arrow schemas differ (written by different versions): only runs of files
//!   with the same columns are merged, so a day that spans an upgrade keeps one file per
//!   schema, and nothing is cast.
//! - Files already `max_file_bytes` or larger.
//!
//! The derived writer never names a new file at or below a key the instance already used in
//! the folder ([`last_derived_millis`]), so a clock that went back cannot put a new file inside
//! a compacted range.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use chrono::{DateTime, NaiveDate, Utc};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::SinkError;
use super::manifest::MANIFEST_DIR;
use crate::fsutil::sync_dir;

/// A key in one writer's sequence: (LSN, 0) for the log's sink, (millis, n) for the derived
/// writer, (sequence, chunk) for alerts.
pub type Key = (u64, u64);

/// Which writer named a file, which fixes how its name orders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `sinks/src/parquet/mod.rs`: `<instance>-wal-<first lsn>-<last lsn>`.
    Wal,
    /// `DerivedWriter::flush`: `<instance>-derived-<millis>-<n>`.
    Derived,
    /// `DerivedWriter::flush_named("alerts-<seq>")`: `<instance>-alerts-<seq>[-<chunk>]`.
    Alerts,
    /// `DerivedWriter::flush_named("anomalies-<seq>")`: the anomaly desk's publications,
    /// named like the alert operator's.
    Anomalies,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Wal => "wal",
            Kind::Derived => "derived",
            Kind::Alerts => "alerts",
            Kind::Anomalies => "anomalies",
        }
    }
}

/// A published file name read as the range of keys it covers, inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileName {
    pub instance: String,
    pub kind: Kind,
    pub lo: Key,
    pub hi: Key,
}

impl FileName {
    /// Reads a published name (`….parquet`, not hidden); `None` for names no writer of this
    /// version produces, which are then never compacted nor hidden.
    pub fn parse(name: &str) -> Option<FileName> {
        if name.starts_with('.') {
            return None;
        }
        let stem = name.strip_suffix(".parquet")?;
        let parts: Vec<&str> = stem.split('-').collect();
        // Numbers are read from the right, since an instance id may contain '-' and digits.
        let mut end = parts.len();
        while end > 0
            && parts.len() - end < 4
            && !parts[end - 1].is_empty()
            && parts[end - 1].bytes().all(|b| b.is_ascii_digit())
        {
            end -= 1;
        }
        if end < 2 {
            return None;
        }
        let numbers = parts[end..]
            .iter()
            .map(|p| p.parse::<u64>().ok())
            .collect::<Option<Vec<u64>>>()?;
        let kind = match parts[end - 1] {
            "wal" => Kind::Wal,
            "derived" => Kind::Derived,
            "alerts" => Kind::Alerts,
            "anomalies" => Kind::Anomalies,
            _ => return None,
        };
        let instance = parts[..end - 1].join("-");
        if instance.is_empty() {
            return None;
        }
        let (lo, hi) = match (kind, numbers.as_slice()) {
            (Kind::Wal, &[first, last]) if first <= last => ((first, 0), (last, 0)),
            (Kind::Derived | Kind::Alerts | Kind::Anomalies, &[first, second]) => {
                ((first, second), (first, second))
            }
            (Kind::Alerts | Kind::Anomalies, &[seq]) => ((seq, 0), (seq, 0)),
            (Kind::Derived | Kind::Alerts | Kind::Anomalies, &[a, b, c, d]) if (a, b) < (c, d) => {
                ((a, b), (c, d))
            }
            _ => return None,
        };
        Some(FileName {
            instance,
            kind,
            lo,
            hi,
        })
    }

    /// The published name; a compacted file of the log keeps the log's own form.
    pub fn render(&self) -> String {
        let FileName {
            instance,
            kind,
            lo,
            hi,
        } = self;
        match kind {
            Kind::Wal => format!("{instance}-wal-{:020}-{:020}.parquet", lo.0, hi.0),
            Kind::Derived if lo == hi => format!("{instance}-derived-{}-{}.parquet", lo.0, lo.1),
            Kind::Alerts | Kind::Anomalies if lo == hi && lo.1 == 0 => {
                format!("{instance}-{}-{}.parquet", kind.as_str(), lo.0)
            }
            Kind::Alerts | Kind::Anomalies if lo == hi => {
                format!("{instance}-{}-{}-{}.parquet", kind.as_str(), lo.0, lo.1)
            }
            _ => format!(
                "{instance}-{}-{}-{}-{}-{}.parquet",
                kind.as_str(),
                lo.0,
                lo.1,
                hi.0,
                hi.1
            ),
        }
    }

    fn same_writer(&self, other: &FileName) -> bool {
        self.kind == other.kind && self.instance == other.instance
    }
}

/// Of the file names of one folder, those a reader must skip: each covers a range that
/// another file of the same instance and writer strictly contains — the inputs of a
/// compaction, between its rename and its deletes or after a crash there. Names that do not
/// parse are never skipped.
pub fn superseded<'a>(names: &[&'a str]) -> HashSet<&'a str> {
    let mut parsed: Vec<(FileName, &'a str)> = names
        .iter()
        .filter_map(|name| FileName::parse(name).map(|f| (f, *name)))
        .collect();
    // Per writer, by range start, wider ranges first: a file is contained iff a file before
    // it reaches at least as far, and the one that reaches furthest earliest is the widest.
    parsed.sort_by(|(a, _), (b, _)| {
        (&a.instance, a.kind, a.lo, std::cmp::Reverse(a.hi)).cmp(&(
            &b.instance,
            b.kind,
            b.lo,
            std::cmp::Reverse(b.hi),
        ))
    });
    let mut hidden = HashSet::new();
    let mut cover: Option<&FileName> = None;
    for (file, name) in &parsed {
        match cover {
            Some(c) if c.same_writer(file) => {
                if c.hi >= file.hi && (c.lo, c.hi) != (file.lo, file.hi) {
                    hidden.insert(*name);
                } else if file.hi > c.hi {
                    cover = Some(file);
                }
            }
            _ => cover = Some(file),
        }
    }
    hidden
}

/// The greatest millis this instance's derived writer has used in `dir` (in a published or
/// compacted name), so the next file can be named above it.
pub fn last_derived_millis(dir: &Path, instance: &str) -> io::Result<Option<u64>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut last = None;
    for entry in entries {
        let name = entry?.file_name();
        if let Some(file) = FileName::parse(&name.to_string_lossy())
            && file.kind == Kind::Derived
            && file.instance == instance
        {
            last = last.max(Some(file.hi.0));
        }
    }
    Ok(last)
}

#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// `data_dir/parquet`, shared by every instance.
    pub root: PathBuf,
    /// This instance's Parquet state folder (its `state.json` says which rolls are done).
    pub state_dir: PathBuf,
    pub instance_id: String,
    /// Merge closed days' files (false: only retention runs).
    pub compact: bool,
    /// A day is closed this long after its end (midnight UTC), when late rows are rare.
    pub compact_after: Duration,
    /// A compacted file holds at most about this many bytes of input files.
    pub max_file_bytes: u64,
    /// Days kept per dataset folder; a dataset not named keeps everything.
    pub retention_days: BTreeMap<String, u32>,
    /// How often a pass runs.
    pub interval: Duration,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Small files merged into compacted files (and deleted).
    pub compacted_files: usize,
    /// Compacted files published.
    pub written_files: usize,
    pub compacted_rows: u64,
    /// Inputs an interrupted earlier pass had left behind its compacted file.
    pub leftovers_removed: usize,
    /// `date=` folders removed by retention, and the files in them.
    pub removed_partitions: usize,
    pub removed_files: usize,
    /// Folders skipped because of an error (logged).
    pub failures: usize,
    /// The pass ended early because the pipeline is stopping.
    pub stopped: bool,
}

impl PassReport {
    fn did_something(&self) -> bool {
        self.compacted_files
            + self.leftovers_removed
            + self.removed_partitions
            + self.removed_files
            + self.failures
            > 0
    }
}

/// A point in a merge where a test can make the pass stop as a SIGKILL would: nothing after
/// it runs, nothing is cleaned up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The hidden file is complete and fsynced.
    Written,
    /// It has its published name; no input is deleted yet.
    Renamed,
    /// This many inputs are deleted.
    Deleted(usize),
}

#[derive(Debug)]
enum Interrupted {
    Stop,
    Crash,
}

/// Runs retention, then compaction, once. `now` decides which days are closed and which
/// partitions expired; `stop` is checked between folders, files and batches.
pub fn run_once(
    options: &CompactOptions,
    now: DateTime<Utc>,
    stop: &AtomicBool,
) -> Result<PassReport, SinkError> {
    run_with_crash(options, now, stop, &|_| false)
}

/// [`run_once`] that stops dead (like a SIGKILL) at the first step where `crash` says so.
pub fn run_with_crash(
    options: &CompactOptions,
    now: DateTime<Utc>,
    stop: &AtomicBool,
    crash: &dyn Fn(Step) -> bool,
) -> Result<PassReport, SinkError> {
    let mut report = PassReport::default();
    let datasets = dataset_dirs(&options.root)?;
    for (dataset, dir) in &datasets {
        let Some(&days) = options.retention_days.get(dataset) else {
            continue;
        };
        let cutoff = now.date_naive() - chrono::Days::new(u64::from(days));
        if let Err(e) = expire(dataset, dir, cutoff, stop, &mut report) {
            report.failures += 1;
            tracing::error!(target: "storage", dataset, error = %e, "retention failed; the next pass tries again");
        }
        if stop.load(Ordering::Relaxed) {
            report.stopped = true;
            return Ok(report);
        }
    }
    if !options.compact {
        return Ok(report);
    }

    let mut folders = Vec::new();
    for (dataset, dir) in &datasets {
        list_folders(dataset, dir, &options.instance_id, &mut folders)?;
    }
    // Read after the listing: a listed log file whose LSNs are at or below this was
    // published by a roll that has fully ended.
    let published = super::state::read_published(&options.state_dir)?;
    // A publication sequence's newest file may be written again after a crash: it waits.
    let frontier = |kind: Kind| {
        folders
            .iter()
            .flat_map(|f| &f.files)
            .filter(|f| f.name.kind == kind)
            .map(|f| f.name.hi.0)
            .max()
    };
    let (alerts_frontier, anomalies_frontier) = (frontier(Kind::Alerts), frontier(Kind::Anomalies));
    let closes = |date: NaiveDate| {
        date.succ_opt()
            .and_then(|next| next.and_hms_opt(0, 0, 0))
            .map(|midnight| midnight.and_utc())
            .and_then(|end| {
                end.checked_add_signed(chrono::Duration::from_std(options.compact_after).ok()?)
            })
    };
    for folder in folders {
        if closes(folder.date).is_none_or(|closed| closed > now) {
            continue;
        }
        if stop.load(Ordering::Relaxed) {
            report.stopped = true;
            break;
        }
        let eligible = |f: &FileName| match f.kind {
            Kind::Wal => f.hi.0 <= published,
            Kind::Alerts => alerts_frontier.is_some_and(|newest| f.hi.0 < newest),
            Kind::Anomalies => anomalies_frontier.is_some_and(|newest| f.hi.0 < newest),
            Kind::Derived => true,
        };
        match compact_folder(options, &folder, &eligible, stop, crash, &mut report) {
            Ok(()) => {}
            Err(Interrupted::Stop) => {
                report.stopped = true;
                break;
            }
            Err(Interrupted::Crash) => return Ok(report),
        }
    }
    Ok(report)
}

/// One partition folder and this instance's published files in it.
struct Folder {
    dataset: String,
    date: NaiveDate,
    dir: PathBuf,
    files: Vec<Listed>,
}

struct Listed {
    name: FileName,
    file_name: String,
    path: PathBuf,
    bytes: u64,
}

/// Dataset folders under the root (not `_rolls`, not hidden).
fn dataset_dirs(root: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in read_dir_or_empty(root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type()?.is_dir() && !name.starts_with(['.', '_']) && name != MANIFEST_DIR {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn read_dir_or_empty(
    dir: &Path,
) -> io::Result<Box<dyn Iterator<Item = io::Result<std::fs::DirEntry>>>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(Box::new(entries)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(e) => Err(e),
    }
}

fn partition_date(folder_name: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(folder_name.strip_prefix("date=")?, "%Y-%m-%d").ok()
}

/// Every folder under each `date=` folder of a dataset, with this instance's files.
fn list_folders(
    dataset: &str,
    dataset_dir: &Path,
    instance: &str,
    out: &mut Vec<Folder>,
) -> io::Result<()> {
    let mut dates = Vec::new();
    for entry in read_dir_or_empty(dataset_dir)? {
        let entry = entry?;
        if let Some(date) = partition_date(&entry.file_name().to_string_lossy())
            && entry.file_type()?.is_dir()
        {
            dates.push((date, entry.path()));
        }
    }
    dates.sort();
    for (date, date_dir) in dates {
        let mut stack = vec![date_dir];
        while let Some(dir) = stack.pop() {
            let mut files = Vec::new();
            for entry in read_dir_or_empty(&dir)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    if !name.starts_with('.') {
                        stack.push(entry.path());
                    }
                    continue;
                }
                if let Some(parsed) = FileName::parse(&name)
                    && parsed.instance == instance
                {
                    // A file deleted meanwhile (a peer's retention) is simply not listed.
                    let Ok(meta) = entry.metadata() else { continue };
                    files.push(Listed {
                        name: parsed,
                        file_name: name,
                        path: entry.path(),
                        bytes: meta.len(),
                    });
                }
            }
            if !files.is_empty() {
                out.push(Folder {
                    dataset: dataset.to_string(),
                    date,
                    dir,
                    files,
                });
            }
        }
    }
    Ok(())
}

/// Removes the published files of every `date=` folder older than `cutoff`, then the folders
/// that are empty.
fn expire(
    dataset: &str,
    dataset_dir: &Path,
    cutoff: NaiveDate,
    stop: &AtomicBool,
    report: &mut PassReport,
) -> io::Result<()> {
    let mut expired = Vec::new();
    for entry in read_dir_or_empty(dataset_dir)? {
        let entry = entry?;
        if let Some(date) = partition_date(&entry.file_name().to_string_lossy())
            && date < cutoff
            && entry.file_type()?.is_dir()
        {
            expired.push((date, entry.path()));
        }
    }
    expired.sort();
    for (date, dir) in expired {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (files, emptied) = remove_published(&dir)?;
        report.removed_files += files;
        metrics().retention_files.inc_by(files as u64);
        if emptied {
            sync_dir(dataset_dir)?;
            report.removed_partitions += 1;
            metrics().retention_partitions.inc();
            tracing::info!(target: "storage", dataset, %date, files, "retention removed a partition");
        } else {
            // A hidden file: a write in progress (a late row for this day), or another
            // instance's leftover that its next start removes. Its published file, if
            // any, goes at a later pass.
            tracing::info!(target: "storage", dataset, %date, files, "retention emptied a partition but kept its hidden files");
        }
    }
    Ok(())
}

/// Deletes every file not hidden under `dir`, then each folder left empty; returns the files
/// deleted and whether `dir` itself is gone. The caller fsyncs `dir`'s parent.
fn remove_published(dir: &Path) -> io::Result<(usize, bool)> {
    let mut removed = 0;
    let mut changed = false;
    for entry in read_dir_or_empty(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            let (files, gone) = remove_published(&path)?;
            removed += files;
            changed |= gone;
        } else if !entry.file_name().to_string_lossy().starts_with('.') {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    removed += 1;
                    changed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    if changed && dir.exists() {
        sync_dir(dir)?;
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok((removed, true)),
        // Another instance's retention got there first.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((removed, true)),
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok((removed, false)),
        Err(e) => Err(e),
    }
}

/// A candidate input: listed, eligible, footer read.
struct Candidate<'a> {
    listed: &'a Listed,
    schema: SchemaRef,
    rows: u64,
}

fn compact_folder(
    options: &CompactOptions,
    folder: &Folder,
    eligible: &dyn Fn(&FileName) -> bool,
    stop: &AtomicBool,
    crash: &dyn Fn(Step) -> bool,
    report: &mut PassReport,
) -> Result<(), Interrupted> {
    let fail = |report: &mut PassReport, e: &dyn std::fmt::Display| {
        report.failures += 1;
        tracing::error!(target: "storage", folder = %folder.dir.display(), error = %e, "compaction failed in this folder; the next pass tries again");
    };
    // Leftovers of an interrupted pass first: their rows are in the file that supersedes
    // them, and they would break the runs below.
    let names: Vec<&str> = folder.files.iter().map(|f| f.file_name.as_str()).collect();
    let hidden = superseded(&names);
    let mut removed = 0;
    for file in &folder.files {
        if hidden.contains(file.file_name.as_str()) {
            match std::fs::remove_file(&file.path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    fail(report, &e);
                    return Ok(());
                }
            }
        }
    }
    if removed > 0 {
        if let Err(e) = sync_dir(&folder.dir) {
            fail(report, &e);
            return Ok(());
        }
        report.leftovers_removed += removed;
        metrics().compacted_files.inc_by(removed as u64);
        tracing::info!(target: "storage", folder = %folder.dir.display(), files = removed, "removed files an interrupted compaction had already merged");
    }
    let mut remaining: Vec<&Listed> = folder
        .files
        .iter()
        .filter(|f| !hidden.contains(f.file_name.as_str()))
        .collect();
    remaining.sort_by_key(|f| (f.name.kind, f.name.lo));

    for group in groups(&remaining, eligible, options.max_file_bytes, report) {
        if stop.load(Ordering::Relaxed) {
            return Err(Interrupted::Stop);
        }
        match merge(folder, &group, stop, crash) {
            Ok(rows) => {
                report.compacted_files += group.len();
                report.written_files += 1;
                report.compacted_rows += rows;
                metrics().compacted_files.inc_by(group.len() as u64);
                metrics().written_files.inc();
            }
            Err(MergeError::Interrupted(i)) => return Err(i),
            Err(MergeError::Failed(e)) => fail(report, &e),
        }
    }
    Ok(())
}

/// Runs of consecutive eligible files of one writer with the same columns, each at most
/// `max_bytes` (a larger file stays alone); only runs of two or more files are returned.
fn groups<'a>(
    files: &[&'a Listed],
    eligible: &dyn Fn(&FileName) -> bool,
    max_bytes: u64,
    report: &mut PassReport,
) -> Vec<Vec<Candidate<'a>>> {
    let mut out = Vec::new();
    let mut current: Vec<Candidate<'a>> = Vec::new();
    let mut current_bytes = 0;
    let mut close = |current: &mut Vec<Candidate<'a>>, bytes: &mut u64| {
        if current.len() >= 2 {
            out.push(std::mem::take(current));
        }
        current.clear();
        *bytes = 0;
    };
    for listed in files {
        if !eligible(&listed.name) || listed.bytes >= max_bytes {
            close(&mut current, &mut current_bytes);
            continue;
        }
        let footer = File::open(&listed.path)
            .map_err(SinkError::from)
            .and_then(|file| Ok(ParquetRecordBatchReaderBuilder::try_new(file)?));
        let (schema, rows) = match footer {
            Ok(builder) => (
                builder.schema().clone(),
                builder.metadata().file_metadata().num_rows().max(0) as u64,
            ),
            Err(e) => {
                report.failures += 1;
                tracing::warn!(target: "storage", file = %listed.path.display(), error = %e, "unreadable Parquet footer; the file is left as it is");
                close(&mut current, &mut current_bytes);
                continue;
            }
        };
        let continues = current.last().is_some_and(|last| {
            last.listed.name.kind == listed.name.kind
                && last.schema.fields() == schema.fields()
                && current_bytes + listed.bytes <= max_bytes
        });
        if !continues {
            close(&mut current, &mut current_bytes);
        }
        current_bytes += listed.bytes;
        current.push(Candidate {
            listed,
            schema,
            rows,
        });
    }
    close(&mut current, &mut current_bytes);
    out
}

enum MergeError {
    Interrupted(Interrupted),
    Failed(SinkError),
}

impl<E: Into<SinkError>> From<E> for MergeError {
    fn from(e: E) -> Self {
        MergeError::Failed(e.into())
    }
}

/// Rows converted and written at a time, and the encoded size past which a row group is
/// closed early (SQAL rows are large: this bounds the memory a merge needs).
const READ_BATCH_ROWS: usize = 8192;
const ROW_GROUP_ROWS: usize = 128 * 1024;
const ROW_GROUP_BYTES: usize = 64 * 1024 * 1024;

/// Merges `group` into one file; returns its rows.
fn merge(
    folder: &Folder,
    group: &[Candidate<'_>],
    stop: &AtomicBool,
    crash: &dyn Fn(Step) -> bool,
) -> Result<u64, MergeError> {
    let first = &group[0].listed.name;
    let target = FileName {
        instance: first.instance.clone(),
        kind: first.kind,
        lo: first.lo,
        hi: group[group.len() - 1].listed.name.hi,
    };
    let name = target.render();
    let published = folder.dir.join(&name);
    if published.exists() {
        // Cannot happen while ranges only grow (its inputs would be superseded, and gone).
        return Err(MergeError::Failed(SinkError::Io(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", published.display()),
        ))));
    }
    let hidden = folder.dir.join(format!(".{name}.tmp"));
    let started = Instant::now();
    let written = write_merged(&hidden, &target, group, stop);
    let rows = match written {
        Ok(rows) => rows,
        Err(e) => {
            // Stopping or failing: the hidden file is worthless; a crash here would leave it
            // to the start-up clean-up instead.
            let _ = std::fs::remove_file(&hidden);
            return Err(e);
        }
    };
    if crash(Step::Written) {
        return Err(MergeError::Interrupted(Interrupted::Crash));
    }
    std::fs::rename(&hidden, &published)?;
    sync_dir(&folder.dir)?;
    if crash(Step::Renamed) {
        return Err(MergeError::Interrupted(Interrupted::Crash));
    }
    for (n, input) in group.iter().enumerate() {
        match std::fs::remove_file(&input.listed.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if crash(Step::Deleted(n + 1)) {
            return Err(MergeError::Interrupted(Interrupted::Crash));
        }
    }
    sync_dir(&folder.dir)?;
    tracing::debug!(target: "storage", dataset = %folder.dataset, folder = %folder.dir.display(), file = %name, inputs = group.len(), rows, ms = started.elapsed().as_millis() as u64, "compacted");
    Ok(rows)
}

/// Writes the rows of `group`, in order, to `hidden` and fsyncs it.
fn write_merged(
    hidden: &Path,
    target: &FileName,
    group: &[Candidate<'_>],
    stop: &AtomicBool,
) -> Result<u64, MergeError> {
    let schema = group[0].schema.clone();
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("gaveurs {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut writer = ArrowWriter::try_new(File::create(hidden)?, schema.clone(), Some(properties))?;
    let mut rows = 0u64;
    for input in group {
        if stop.load(Ordering::Relaxed) {
            return Err(MergeError::Interrupted(Interrupted::Stop));
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&input.listed.path)?)?
            .with_batch_size(READ_BATCH_ROWS)
            .build()?;
        for batch in reader {
            if stop.load(Ordering::Relaxed) {
                return Err(MergeError::Interrupted(Interrupted::Stop));
            }
            // Same columns, checked when grouping; the schema-level metadata may differ.
            let batch = RecordBatch::try_new(schema.clone(), batch?.columns().to_vec())?;
            rows += batch.num_rows() as u64;
            writer.write(&batch)?;
            if writer.in_progress_size() >= ROW_GROUP_BYTES {
                writer.flush()?;
            }
        }
    }
    let expected: u64 = group.iter().map(|c| c.rows).sum();
    if rows != expected {
        return Err(MergeError::Failed(SinkError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("read {rows} rows where the footers promise {expected}"),
        ))));
    }
    let mut metadata = vec![
        ("gaveurs.instance", target.instance.clone()),
        ("gaveurs.source", target.kind.as_str().to_string()),
        ("gaveurs.compacted_from", group.len().to_string()),
    ];
    if target.kind == Kind::Wal {
        metadata.push(("gaveurs.first_lsn", target.lo.0.to_string()));
        metadata.push(("gaveurs.last_lsn", target.hi.0.to_string()));
    }
    for (key, value) in metadata {
        writer.append_key_value_metadata(KeyValue::new(key.to_string(), value));
    }
    writer.into_inner()?.sync_all()?;
    Ok(rows)
}

/// The compaction and retention thread; [`StorageTask::stop`] ends it.
pub struct StorageTask {
    stop: Arc<AtomicBool>,
    wake: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl StorageTask {
    /// Ends the thread: a pass in progress stops at the next file or batch (a merge it
    /// abandons leaves no published trace), so this returns promptly.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StorageTask {
    /// Dropped without `stop` (start-up failed later): the thread ends at its next check.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.take();
    }
}

/// Starts the thread: a pass every `interval`, the first one interval after start (start-up
/// is busy with recovery and with the analytics operator reading every published file
/// back). Nothing runs when compaction is off and no dataset has a retention.
pub fn spawn(options: CompactOptions) -> io::Result<StorageTask> {
    let stop = Arc::new(AtomicBool::new(false));
    if !options.compact && options.retention_days.is_empty() {
        tracing::info!(target: "storage", "parquet compaction off and no retention: every file is kept as published");
        return Ok(StorageTask {
            stop,
            wake: None,
            thread: None,
        });
    }
    // Registered now, so /metrics shows them at zero.
    metrics();
    let (wake, woken) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("gaveurs-storage".into())
        .spawn({
            let stop = stop.clone();
            move || {
                tracing::info!(target: "storage", compact = options.compact, interval_s = options.interval.as_secs_f64(), retention = ?options.retention_days, "parquet compaction and retention every interval");
                // A message or a hang-up: stop.
                while let Err(RecvTimeoutError::Timeout) = woken.recv_timeout(options.interval) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let started = Instant::now();
                    match run_once(&options, Utc::now(), &stop) {
                        Ok(report) if report.did_something() => {
                            tracing::info!(target: "storage", compacted = report.compacted_files, into = report.written_files, rows = report.compacted_rows, leftovers = report.leftovers_removed, expired_partitions = report.removed_partitions, expired_files = report.removed_files, failures = report.failures, ms = started.elapsed().as_millis() as u64, "parquet compaction and retention pass")
                        }
                        Ok(_) => {
                            tracing::debug!(target: "storage", ms = started.elapsed().as_millis() as u64, "parquet compaction and retention: nothing to do")
                        }
                        Err(e) => {
                            tracing::error!(target: "storage", error = %e, "parquet compaction and retention pass failed; the next one tries again")
                        }
                    }
                }
            }
        })?;
    Ok(StorageTask {
        stop,
        wake: Some(wake),
        thread: Some(thread),
    })
}

struct Metrics {
    compacted_files: gaveurs_telemetry::Counter,
    written_files: gaveurs_telemetry::Counter,
    retention_partitions: gaveurs_telemetry::Counter,
    retention_files: gaveurs_telemetry::Counter,
}

fn metrics() -> &'static Metrics {
    static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(|| {
        let registry = gaveurs_telemetry::registry();
        Metrics {
            compacted_files: registry.counter(
                "gaveurs_parquet_compacted_files_total",
                "Small Parquet files merged into compacted files and removed.",
                &[],
            ),
            written_files: registry.counter(
                "gaveurs_parquet_compactions_total",
                "Compacted Parquet files published.",
                &[],
            ),
            retention_partitions: registry.counter(
                "gaveurs_parquet_retention_removed_partitions_total",
                "Parquet date= partitions removed by retention.",
                &[],
            ),
            retention_files: registry.counter(
                "gaveurs_parquet_retention_removed_files_total",
                "Parquet files removed by retention.",
                &[],
            ),
        }
    })
}

#[cfg(test)]
mod tests;
