//! `[logs]`: where the module logs go, at which levels, in which format, for how long.

use std::path::PathBuf;

use serde::Deserialize;

/// `[logs]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsConfig {
    /// Log folder. Default `./logs`. One file per module (`main`, `auth`, `audit`, `api`,
    /// `websocket`, `connectors`, `storage`, `alerts`, `ml`, `ledger`) plus `errors`; see
    /// `logs/README.md`.
    #[serde(default = "default_logs_dir")]
    pub dir: PathBuf,
    /// Also log to standard error. Default true.
    #[serde(default = "default_true")]
    pub console: bool,
    /// The level of every module without its own: `trace`, `debug`, `info` (default), `warn`,
    /// `error` or `off`. Reloaded on SIGHUP.
    #[serde(default = "default_level")]
    pub level: String,
    /// Levels of single modules, e.g. `[logs.modules] auth = "debug"`. Reloaded on SIGHUP.
    #[serde(default)]
    pub modules: std::collections::BTreeMap<String, String>,
    /// `text` (default): `2026-01-20 10:00:00 | INFO     | auth      … | message | key=value`;
    /// `json`: one JSON object per line.
    #[serde(default)]
    pub format: LogFormat,
    /// Days a rotated file (`<module>.log.YYYY-MM-DD`) is kept. Default 30.
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// The same for `errors.log`. Default 90.
    #[serde(default = "default_errors_retention_days")]
    pub errors_retention_days: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogsConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults parse")
    }
}

fn default_retention_days() -> u64 {
    30
}
fn default_errors_retention_days() -> u64 {
    90
}
fn default_logs_dir() -> PathBuf {
    PathBuf::from("logs")
}
fn default_true() -> bool {
    true
}
fn default_level() -> String {
    "info".into()
}
