//! Console logging for the commands other than `run` (whose logs are set up by
//! [`crate::logs`]), and small helpers for describing paths and measuring memory.

use std::path::Path;

use tracing_subscriber::EnvFilter;

/// For commands that only print (check): warnings to standard error.
pub fn init_console_only() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::new("warn"))
        .try_init();
}

pub fn describe(path: &Path) -> String {
    path.canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Peak resident memory (VmHWM) of a process in MB, for the load tools' reports.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    status_mb(pid, "VmHWM:")
}

/// The resident memory of process `pid` now, MB (Linux).
pub fn rss_mb(pid: u32) -> Option<f64> {
    status_mb(pid, "VmRSS:")
}

fn status_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
