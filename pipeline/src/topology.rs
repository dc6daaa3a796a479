//! The consumers of the durable log, registered in one place: each is a named cursor and a
//! thread that reads the log through it at its own pace. Adding an operator is one
//! [`LogConsumers::register`] call in `run.rs`.
//!
//! Every cursor is opened before any consumer starts, so a fast consumer's first checkpoint
//! cannot release segments a slower one has not read. At shutdown, once the log is closed,
//! every consumer reads to the end and finishes its work (a last roll, a last micro-batch, a
//! last save), within the shutdown deadline; past it, the remaining ones are told to stop
//! where they are, and what they have not processed stays in the log for the next start.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gaveurs_sinks::wal::{CursorOptions, LogCursor, Wal};

type Start = Box<dyn FnOnce(LogCursor) -> std::io::Result<JoinHandle<anyhow::Result<()>>> + Send>;

struct Registration {
    options: CursorOptions,
    start: Start,
}

/// The log consumers of this run, before they start.
#[derive(Default)]
pub struct LogConsumers {
    registrations: Vec<Registration>,
}

impl LogConsumers {
    /// `start` receives the consumer's cursor and spawns its thread.
    pub fn register(
        &mut self,
        options: CursorOptions,
        start: impl FnOnce(LogCursor) -> std::io::Result<JoinHandle<anyhow::Result<()>>>
        + Send
        + 'static,
    ) {
        self.registrations.push(Registration {
            options,
            start: Box::new(start),
        });
    }

    /// Opens every cursor, then starts every consumer.
    pub fn start(self, wal: &Wal) -> anyhow::Result<RunningConsumers> {
        let cursors: Vec<(Start, LogCursor)> = self
            .registrations
            .into_iter()
            .map(|r| {
                let name = r.options.name.clone();
                let cursor = wal.cursor(r.options);
                register_lag_metrics(wal, &name);
                (r.start, cursor)
            })
            .collect();
        let mut threads = Vec::with_capacity(cursors.len());
        for (start, cursor) in cursors {
            let name = cursor.name().to_string();
            let handle = start(cursor)
                .map_err(|e| anyhow::anyhow!("cannot start the {name} consumer: {e}"))?;
            threads.push((name, handle));
        }
        Ok(RunningConsumers { threads })
    }
}

/// The consumers' threads.
pub struct RunningConsumers {
    threads: Vec<(String, JoinHandle<anyhow::Result<()>>)>,
}

impl RunningConsumers {
    /// Once the log is closed: waits for every consumer to catch up and finish, until
    /// `deadline`; then makes the others stop where they are. Returns the first failure.
    pub async fn finish(self, wal: &Wal, deadline: Instant) -> anyhow::Result<()> {
        while Instant::now() < deadline && self.threads.iter().any(|(_, t)| !t.is_finished()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let late: Vec<&str> = self
            .threads
            .iter()
            .filter(|(_, t)| !t.is_finished())
            .map(|(name, _)| name.as_str())
            .collect();
        if !late.is_empty() {
            let behind: Vec<String> = wal
                .cursors()
                .into_iter()
                .filter(|c| late.contains(&c.name.as_str()))
                .map(|c| format!("{} ({} entries)", c.name, c.lag_entries))
                .collect();
            tracing::warn!(target: "storage", consumers = %behind.join(", "), "shutdown deadline reached before these log consumers caught up; what they did not process stays in the log for the next start");
            wal.abandon_cursors();
        }
        let mut result = Ok(());
        for (name, thread) in self.threads {
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            let outcome = match joined {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) | Err(_) => Err(anyhow::anyhow!("the {name} consumer panicked")),
            };
            if let Err(e) = outcome
                && result.is_ok()
            {
                result = Err(e.context(format!("the {name} consumer failed")));
            }
        }
        result
    }
}

/// `gaveurs_cursor_lag_entries{cursor}` and `gaveurs_cursor_lag_seconds{cursor}`, read when
/// `/metrics` is scraped.
fn register_lag_metrics(wal: &Wal, name: &str) {
    let metrics = gaveurs_schemas::metrics::registry();
    let status = |wal: &Wal, name: &str| wal.cursors().into_iter().find(|c| c.name == name);
    {
        let (wal, cursor) = (wal.clone(), name.to_string());
        metrics.gauge_fn(
            "gaveurs_cursor_lag_entries",
            "Durable log entries a consumer has not read yet, by cursor.",
            &[("cursor", name)],
            move || status(&wal, &cursor).map_or(0.0, |c| c.lag_entries as f64),
        );
    }
    {
        let (wal, cursor) = (wal.clone(), name.to_string());
        metrics.gauge_fn(
            "gaveurs_cursor_lag_seconds",
            "How long the oldest log entry a consumer has not read has been durable, by cursor.",
            &[("cursor", name)],
            move || status(&wal, &cursor).map_or(0.0, |c| c.lag_seconds),
        );
    }
}

/// Lowers the calling thread's CPU priority (nice 10; on Linux a thread's own): a derived
/// consumer as heavy as analytics then takes the CPU the intake and the log writer leave, so
/// it can fall behind (its cursor lags) but never delays an acknowledgement on a busy machine.
pub fn yield_cpu_to_acknowledgements() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread.
    unsafe {
        let thread = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, 10) != 0 {
            tracing::debug!("could not lower the thread's priority");
        }
    }
}

/// A consumer's thread, named for `top` and thread dumps.
pub fn spawn_named(
    name: &str,
    body: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
) -> std::io::Result<JoinHandle<anyhow::Result<()>>> {
    std::thread::Builder::new().name(name.into()).spawn(body)
}
