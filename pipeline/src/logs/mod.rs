//! Logs (SPEC §7): one file per module in the logs folder, plus `errors` with every WARN and
//! above from all of them, and the console.
//!
//! Every event is formatted once, on the thread that emits it, into one line —
//! `2026-01-20 10:00:00 | INFO     | auth                           | message | request_id=… | user=…`
//! (newlines in values escaped), or a JSON object with `[logs] format = "json"` — and handed to
//! the module's non-blocking writer (tracing-appender's worker thread in front of a
//! [`file::RotatingFile`]), so a slow disk never blocks a connection task. The module of an
//! event is its target when it names one (`tracing::info!(target: "alerts", …)`), else the
//! crate and module it comes from ([`module_of`]). After the message come the event's fields,
//! then those of the spans it is in (`request_id`, `event_id`, `user`, `code_lot`…).
//! Levels are per module and reloaded on SIGHUP; `audit` events are kept whatever the level.

pub mod file;
mod format;
mod settings;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use parking_lot::RwLock;
use tracing::{Level, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use file::{Clock, RotatingFile, SystemClock};
use format::{Fields, SpanFields};
pub use settings::{LogFormat, LogsConfig};

/// The modules, each with its own file `logs/<module>.log`.
pub const MODULES: [&str; 10] = [
    "main",
    "auth",
    "audit",
    "api",
    "websocket",
    "connectors",
    "storage",
    "alerts",
    "ml",
    "ledger",
];

/// The file that receives every WARN and above, whatever its module.
pub const ERRORS: &str = "errors";

/// Lines waiting for a module file's writer thread; past it, lines are dropped (and the
/// appender counts them) rather than blocking the thread that logs.
const LINES_QUEUED_PER_FILE: usize = 4096;

/// Which module an event belongs to: a target that is a module name, else by where the code
/// lives. Anything else (start-up, shutdown, libraries) is `main`.
pub fn module_of(target: &str) -> &'static str {
    if let Some(module) = MODULES.iter().find(|m| **m == target) {
        return module;
    }
    const BY_PATH: &[(&str, &str)] = &[
        ("gaveurs_operators::auth", "auth"),
        ("gaveurs_pipeline::auth", "auth"),
        ("gaveurs_api", "api"),
        ("gaveurs_query", "api"),
        ("gaveurs_sinks::websocket", "websocket"),
        ("gaveurs_connectors::sources::websocket", "websocket"),
        ("gaveurs_connectors", "connectors"),
        ("gaveurs_sinks::kafka", "connectors"),
        ("gaveurs_operators::intake", "connectors"),
        ("gaveurs_loadgen", "connectors"),
        ("rdkafka", "connectors"),
        ("gaveurs_sinks::parquet", "storage"),
        ("gaveurs_sinks::wal", "storage"),
        ("gaveurs_sinks::fsutil", "storage"),
        ("gaveurs_operators::alerts", "alerts"),
        ("gaveurs_sinks::sms", "alerts"),
        ("gaveurs_operators::analytics", "ml"),
        ("datafusion", "ml"),
    ];
    BY_PATH
        .iter()
        .find(|(prefix, _)| {
            target == *prefix
                || target
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with("::"))
        })
        .map_or("main", |(_, module)| module)
}

/// The level of every module, shared by the files and the console; [`Levels::reload`] swaps
/// them (SIGHUP).
#[derive(Clone, Debug)]
pub struct Levels(Arc<RwLock<LevelMap>>);

#[derive(Debug, Clone, PartialEq)]
struct LevelMap {
    default: LevelFilter,
    modules: HashMap<&'static str, LevelFilter>,
}

impl LevelMap {
    fn from_config(config: &LogsConfig) -> anyhow::Result<LevelMap> {
        let parse = |what: &str, text: &str| -> anyhow::Result<LevelFilter> {
            text.parse::<LevelFilter>().map_err(|_| {
                anyhow::anyhow!(
                    "[logs] {what}: {text:?} is not trace, debug, info, warn, error or off"
                )
            })
        };
        let mut modules = HashMap::new();
        for (name, level) in &config.modules {
            let Some(module) = MODULES.iter().find(|m| **m == name.as_str()) else {
                bail!(
                    "[logs.modules] {name}: no such module (modules: {})",
                    MODULES.join(", ")
                );
            };
            modules.insert(*module, parse(&format!("modules.{name}"), level)?);
        }
        Ok(LevelMap {
            default: parse("level", &config.level)?,
            modules,
        })
    }

    fn enabled(&self, module: &str, level: &Level) -> bool {
        let filter = self.modules.get(module).copied().unwrap_or(self.default);
        filter >= *level
    }
}

impl Levels {
    pub fn from_config(config: &LogsConfig) -> anyhow::Result<Levels> {
        Ok(Levels(Arc::new(RwLock::new(LevelMap::from_config(
            config,
        )?))))
    }

    /// Applies the levels of a newly read `[logs]`; on a mistake, keeps the current ones.
    pub fn reload(&self, config: &LogsConfig) -> anyhow::Result<()> {
        let levels = LevelMap::from_config(config)?;
        *self.0.write() = levels;
        // The filters' verdicts are cached per call site: ask them again.
        tracing::callsite::rebuild_interest_cache();
        Ok(())
    }

    /// Whether an event of `module` at `level` is written to the module's file and console.
    pub fn enabled(&self, module: &str, level: &Level) -> bool {
        module == "audit" && *level <= Level::INFO || self.0.read().enabled(module, level)
    }
}

/// Checks `[logs]` without touching any file (`gaveurs check`, config loading).
pub fn check(config: &LogsConfig) -> anyhow::Result<()> {
    LevelMap::from_config(config).map(|_| ())
}

/// Keeps the non-blocking writers alive; dropping it flushes them.
pub struct LogGuard {
    _workers: Vec<WorkerGuard>,
}

/// The per-module writers and the `errors` writer.
struct ModuleFiles {
    writers: HashMap<&'static str, NonBlocking>,
    errors: NonBlocking,
    levels: Levels,
    format: LogFormat,
}

/// Opens every module's file (each is created at start, even if nothing is logged to it) and
/// installs the files and the console as the process's logger.
pub fn init(config: &LogsConfig) -> anyhow::Result<(LogGuard, Levels)> {
    init_with_clock(config, Arc::new(SystemClock))
}

pub fn init_with_clock(
    config: &LogsConfig,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<(LogGuard, Levels)> {
    let levels = Levels::from_config(config)?;
    let (layer, guard) = ModuleFiles::open(&config.dir, config, levels.clone(), clock)?;
    let console_levels = levels.clone();
    let console = config.console.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter_fn(move |metadata| {
                console_levels.enabled(module_of(metadata.target()), metadata.level())
            }))
    });
    tracing_subscriber::registry()
        .with(layer)
        .with(console)
        .try_init()
        .map_err(|e| anyhow::anyhow!("logging already initialised: {e}"))?;
    Ok((guard, levels))
}

impl ModuleFiles {
    fn open(
        dir: &Path,
        config: &LogsConfig,
        levels: Levels,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<(
        impl Layer<tracing_subscriber::Registry> + Send + Sync,
        LogGuard,
    )> {
        let mut workers = Vec::new();
        let mut open = |module: &str, retention_days: u64| -> anyhow::Result<NonBlocking> {
            let file = RotatingFile::open(dir, module, retention_days, clock.clone())
                .with_context(|| {
                    format!("opening {}", file::current_path(dir, module).display())
                })?;
            // The appender's default queue holds 128,000 lines per file, allocated up front (4 MB
            // each, for every module); a few thousand absorb any burst this process logs.
            let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
                .buffered_lines_limit(LINES_QUEUED_PER_FILE)
                .finish(file);
            workers.push(guard);
            Ok(writer)
        };
        let mut writers = HashMap::new();
        for module in MODULES {
            writers.insert(module, open(module, config.retention_days)?);
        }
        let errors = open(ERRORS, config.errors_retention_days)?;
        let files = ModuleFiles {
            writers,
            errors,
            levels: levels.clone(),
            format: config.format,
        };
        let layer = files.with_filter(filter_fn(move |metadata| {
            *metadata.level() <= Level::WARN
                || metadata.is_span()
                || levels.enabled(module_of(metadata.target()), metadata.level())
        }));
        Ok((layer, LogGuard { _workers: workers }))
    }
}

impl<S> Layer<S> for ModuleFiles
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attributes: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        context: LayerContext<'_, S>,
    ) {
        let mut fields = SpanFields::default();
        attributes.record(&mut fields);
        if let Some(span) = context.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        context: LayerContext<'_, S>,
    ) {
        if let Some(span) = context.span(id) {
            let mut extensions = span.extensions_mut();
            if let Some(fields) = extensions.get_mut::<SpanFields>() {
                values.record(fields);
            }
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, context: LayerContext<'_, S>) {
        let metadata = event.metadata();
        let module = module_of(metadata.target());
        let to_module = self.levels.enabled(module, metadata.level());
        let to_errors = *metadata.level() <= Level::WARN;
        if !to_module && !to_errors {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(scope) = context.event_scope(event) {
            for span in scope.from_root() {
                if let Some(span_fields) = span.extensions().get::<SpanFields>() {
                    fields.add_span(span_fields);
                }
            }
        }
        let line = format::line(
            self.format,
            chrono::Local::now(),
            metadata.level(),
            module,
            metadata.target(),
            &fields,
        );
        // A full queue drops the line (tracing-appender's lossy mode) rather than stall.
        if to_module && let Some(writer) = self.writers.get(module) {
            let _ = writer.clone().write_all(line.as_bytes());
        }
        if to_errors {
            let _ = self.errors.clone().write_all(line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests;
