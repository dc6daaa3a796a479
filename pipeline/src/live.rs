//! The `live` log consumer: every accepted record, as logged, to `gaveurs.live.v1`, which
//! every instance reads into its WebSocket hub so a gaveur connected anywhere sees every
//! record of their lots. A notification, not a copy of record: after a crash, the records
//! since the last saved checkpoint are sent again (receivers' channels may show them twice)
//! rather than lost.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gaveurs_sinks::kafka::KafkaOutput;
use gaveurs_sinks::wal::{CheckpointFile, LogCursor, WalEntry};

/// The checkpoint is saved at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(1);

pub fn spawn(
    kafka: Arc<KafkaOutput>,
    mut cursor: LogCursor,
    mut checkpoint: CheckpointFile,
) -> std::io::Result<JoinHandle<anyhow::Result<()>>> {
    crate::topology::spawn_named("live-topic", move || {
        let opened_at = cursor.opened_at();
        let mut last_save = Instant::now();
        loop {
            let ended = match cursor.next_batch(1024, SAVE_EVERY) {
                Ok(batch) => {
                    for committed in batch.iter().filter(|c| !c.is_earlier_kafka(opened_at)) {
                        if let WalEntry::Event(event) = committed.entry.as_ref() {
                            kafka.live(&event.envelope.key, &committed.encoded);
                        }
                    }
                    false
                }
                Err(_) => true,
            };
            let through = cursor.read_through();
            if ended || last_save.elapsed() >= SAVE_EVERY {
                checkpoint.save(through)?;
                cursor.checkpoint(through);
                last_save = Instant::now();
            }
            if ended {
                return Ok(());
            }
        }
    })
}
