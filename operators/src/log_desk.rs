//! The loop shared by the derived operators that keep their own saved state (the alert desk,
//! the anomaly desk): read the durable log through a cursor in batches, process each in log
//! order, save the state when due (which moves the cursor's checkpoint), publish the rows
//! waiting for a file every `publish_every`, and at the end of the log save and publish
//! once more.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gaveurs_sinks::wal::{Checkpointer, Committed, LogCursor, LogEnded};

/// An operator [`spawn`] runs on the log.
pub trait LogDesk: Send + Sync + 'static {
    /// Receives the cursor's checkpointer when the thread starts: a save moves it.
    fn set_checkpointer(&self, checkpointer: Checkpointer);
    /// How often the state is saved while records flow.
    fn save_every(&self) -> Duration;
    /// One batch of entries in log order; the cursor has read through `read_through`.
    fn process(&self, batch: &[Committed], read_through: u64);
    /// Saves the state if it is due (`force`: the log ended).
    fn save_if_due(&self, force: bool);
    /// Writes the rows waiting for a file.
    fn publish(&self);
    /// After each turn of the loop, with or without a batch.
    fn after_turn(&self) {}
    /// The log ended (closed, or abandoned at shutdown's deadline).
    fn stopped(&self, ended: LogEnded);
}

/// Runs `desk` on its own thread named `name`, until the log ends. Kafka records an earlier
/// run logged are skipped: the owner of their partition re-reads them from Kafka.
pub fn spawn<D: LogDesk>(
    name: &str,
    desk: Arc<D>,
    mut cursor: LogCursor,
    publish_every: Duration,
) -> std::io::Result<JoinHandle<anyhow::Result<()>>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            desk.set_checkpointer(cursor.checkpointer());
            let opened_at = cursor.opened_at();
            let mut last_publish = Instant::now();
            loop {
                let wait = desk
                    .save_every()
                    .min(publish_every.saturating_sub(last_publish.elapsed()));
                let ended = match cursor.next_batch(4096, wait) {
                    Ok(entries) => {
                        let batch: Vec<Committed> = entries
                            .into_iter()
                            .filter(|c| !c.is_earlier_kafka(opened_at))
                            .collect();
                        desk.process(&batch, cursor.read_through());
                        None
                    }
                    Err(ended) => Some(ended),
                };
                desk.save_if_due(ended.is_some());
                if ended.is_some() || last_publish.elapsed() >= publish_every {
                    desk.publish();
                    last_publish = Instant::now();
                }
                desk.after_turn();
                if let Some(ended) = ended {
                    desk.stopped(ended);
                    return Ok(());
                }
            }
        })
}

/// Each desk's (and shard's) saved state, in its folder.
pub(crate) const STATE_FILE: &str = "state.json";

/// Writes each shard's `state.json` (its folder, its bytes). On failure: the folders not
/// written (their shards stay unsaved) and the last error.
pub(crate) fn write_shard_states(
    files: &[(std::path::PathBuf, Vec<u8>)],
) -> Result<(), (Vec<&std::path::Path>, std::io::Error)> {
    let mut failed = Vec::new();
    let mut last_error = None;
    for (dir, bytes) in files {
        let written = gaveurs_sinks::fsutil::create_dir_durable(dir)
            .and_then(|()| gaveurs_sinks::fsutil::write_atomic(&dir.join(STATE_FILE), bytes));
        if let Err(e) = written {
            failed.push(dir.as_path());
            last_error = Some(e);
        }
    }
    match last_error {
        None => Ok(()),
        Some(e) => Err((failed, e)),
    }
}
