//! Logging set-up: the console (standard error) and `logs/main.log`.

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogsConfig;

/// Keeps the non-blocking writers alive; dropping it flushes them.
pub struct LogGuard {
    _file: WorkerGuard,
}

pub fn init(config: &LogsConfig) -> anyhow::Result<LogGuard> {
    std::fs::create_dir_all(&config.dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.dir.join("main.log"))?;
    let (file_writer, file_guard) = tracing_appender::non_blocking(file);
    let filter = || EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let file_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(file_writer)
        .with_filter(filter());
    let console_layer = config.console.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    tracing_subscriber::registry()
        .with(file_layer)
        .with(console_layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("logging already initialised: {e}"))?;
    Ok(LogGuard { _file: file_guard })
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
