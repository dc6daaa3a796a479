//! One module's log file: always `<dir>/<module>.log`, renamed `<module>.log.YYYY-MM-DD` at
//! local midnight, rotated files older than the retention deleted at start and at each
//! rotation.
//!
//! tracing-appender's own rolling appender names the active file with a date and rolls at
//! UTC midnight; operators expect `tail -f logs/auth.log` to keep working and a day to end at
//! their midnight, so this writer (behind tracing-appender's non-blocking worker) does it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use chrono::{DateTime, Days, Local, NaiveDate, TimeZone};

/// Where the writer reads the time: the system clock, or a test's.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Local>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Local> {
        Local::now()
    }
}

pub struct RotatingFile {
    dir: PathBuf,
    module: String,
    retention_days: u64,
    clock: Arc<dyn Clock>,
    file: File,
    /// The local day the current file's lines belong to.
    day: NaiveDate,
    /// The local midnight that ends it.
    next_rotation: DateTime<Local>,
}

impl RotatingFile {
    /// Opens (creating) `<dir>/<module>.log`. A current file left from an earlier day is
    /// rotated first, under the date it was last written, and old rotated files are deleted.
    pub fn open(
        dir: &Path,
        module: &str,
        retention_days: u64,
        clock: Arc<dyn Clock>,
    ) -> io::Result<RotatingFile> {
        fs::create_dir_all(dir)?;
        let path = current_path(dir, module);
        let today = clock.now().date_naive();
        if let Ok(metadata) = fs::metadata(&path) {
            let written: DateTime<Local> = metadata.modified()?.into();
            let written = written.date_naive();
            if written < today && metadata.len() > 0 {
                rename_dated(dir, module, written)?;
            }
        }
        let file = append(&path)?;
        let mut writer = RotatingFile {
            dir: dir.to_path_buf(),
            module: module.to_string(),
            retention_days,
            clock,
            file,
            day: today,
            next_rotation: next_midnight(today),
        };
        writer.enforce_retention(today)?;
        Ok(writer)
    }

    fn rotate_if_due(&mut self) -> io::Result<()> {
        let now = self.clock.now();
        if now < self.next_rotation {
            return Ok(());
        }
        self.file.flush()?;
        rename_dated(&self.dir, &self.module, self.day)?;
        self.file = append(&current_path(&self.dir, &self.module))?;
        let today = now.date_naive();
        self.day = today;
        self.next_rotation = next_midnight(today);
        self.enforce_retention(today)
    }

    /// Deletes this module's rotated files dated more than `retention_days` before `today`;
    /// nothing else (other modules' files, files that do not carry a date) is touched.
    fn enforce_retention(&mut self, today: NaiveDate) -> io::Result<()> {
        let Some(oldest_kept) = today.checked_sub_days(Days::new(self.retention_days)) else {
            return Ok(());
        };
        let prefix = format!("{}.log.", self.module);
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(date) = name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            else {
                continue;
            };
            if date < oldest_kept {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

/// Log lines that could not be written (a full or broken logs dir), since start.
pub static LINES_DROPPED: AtomicU64 = AtomicU64::new(0);
/// Whether a failed write was reported on standard error already: once per process, as a
/// filling disk fails and succeeds by turns (a short line still fits in a file's last page).
static REPORTED: AtomicBool = AtomicBool::new(false);

impl Write for RotatingFile {
    /// Never fails: a log line that cannot be written is dropped and counted (SPEC §7: the
    /// pipeline never waits for its logs), with one line on standard error rather than one
    /// per line.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Err(e) = self.rotate_if_due().and_then(|()| self.file.write_all(buf)) {
            LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
            if !REPORTED.swap(true, Ordering::Relaxed) {
                eprintln!(
                    "gaveurs: cannot write {}: {e}; log lines are dropped (counted in \
                         gaveurs_log_lines_dropped_total) until it can be written again",
                    current_path(&self.dir, &self.module).display()
                );
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

pub fn current_path(dir: &Path, module: &str) -> PathBuf {
    dir.join(format!("{module}.log"))
}

fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `<module>.log` → `<module>.log.<day>`; if that name is taken (a restart after a rotation
/// the same day), the lines are appended to it rather than lost.
fn rename_dated(dir: &Path, module: &str, day: NaiveDate) -> io::Result<()> {
    let current = current_path(dir, module);
    let dated = dir.join(format!("{module}.log.{}", day.format("%Y-%m-%d")));
    if dated.exists() {
        let contents = fs::read(&current)?;
        append(&dated)?.write_all(&contents)?;
        return fs::remove_file(&current);
    }
    fs::rename(&current, &dated)
}

fn next_midnight(day: NaiveDate) -> DateTime<Local> {
    let next = day
        .succ_opt()
        .unwrap_or(day)
        .and_hms_opt(0, 0, 0)
        .expect("midnight");
    // A day may lack its midnight (a DST jump): the first instant after it is taken.
    Local
        .from_local_datetime(&next)
        .earliest()
        .unwrap_or_else(|| Local.from_utc_datetime(&next))
}
