//! Logging set-up: the console (standard error), `logs/main.log`, and `logs/audit.log` for
//! the auth operator's audit events (target `audit`: refusals, token validations,
//! authenticated connections).

use std::path::Path;

use tracing::Level;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogsConfig;

/// Keeps the non-blocking writers alive; dropping it flushes them.
pub struct LogGuard {
    _main: WorkerGuard,
    _audit: WorkerGuard,
}

fn append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

pub fn init(config: &LogsConfig) -> anyhow::Result<LogGuard> {
    std::fs::create_dir_all(&config.dir)?;
    let (main_writer, main_guard) =
        tracing_appender::non_blocking(append(&config.dir.join("main.log"))?);
    let (audit_writer, audit_guard) =
        tracing_appender::non_blocking(append(&config.dir.join("audit.log"))?);
    let filter = || EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let file_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(main_writer)
        .with_filter(filter());
    // Audit events are kept whatever the configured level: they are a record, not a diagnostic.
    let audit_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(audit_writer)
        .with_filter(Targets::new().with_target("audit", Level::INFO));
    let console_layer = config.console.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    tracing_subscriber::registry()
        .with(file_layer)
        .with(audit_layer)
        .with(console_layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("logging already initialised: {e}"))?;
    Ok(LogGuard {
        _main: main_guard,
        _audit: audit_guard,
    })
}

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

use tracing_subscriber::Layer;

/// Peak resident memory (VmHWM) of a process in MB, for the load tools' reports.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
