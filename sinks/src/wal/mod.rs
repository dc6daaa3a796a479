//! The durable log: every accepted record and every dead letter is appended here, and an
//! input is acknowledged only once its entry is on disk.
//!
//! Appends from all connections go into one in-memory buffer; a dedicated writer thread takes
//! the whole buffer, writes it and calls `fdatasync` once (group commit), then publishes the
//! highest durable sequence number (LSN) and hands the entries to the sinks downstream. So
//! one fsync covers everything that arrived while the previous one ran, and acknowledgements
//! leave in LSN order.
//!
//! On disk the log is a folder of segments named by their first LSN. Each entry is framed as
//! `len: u32 | crc32: u32 | lsn: u64 | payload (JSON)`, the checksum covering LSN and payload.
//! A frame that is short or fails its checksum ends its segment: it was being written when the
//! process died, so it was never acknowledged. Segments whose entries are all published to
//! Parquet are deleted.

mod segment;

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use gaveurs_schemas::{DeadLetter, Event};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

pub use segment::SegmentError;

/// Log sequence number: the position of an entry in the log, from 1.
pub type Lsn = u64;

// Entries always live behind an `Arc`, so the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub enum WalEntry {
    Event(Event),
    DeadLetter(DeadLetter),
}

impl WalEntry {
    pub fn provenance(&self) -> &gaveurs_schemas::envelope::Provenance {
        match self {
            WalEntry::Event(event) => &event.envelope.provenance,
            WalEntry::DeadLetter(dead) => &dead.provenance,
        }
    }

    /// `(topic, partition, offset)` of an input read from Kafka.
    pub fn kafka_position(&self) -> Option<(&str, i32, i64)> {
        let provenance = self.provenance();
        if provenance.transport != gaveurs_schemas::envelope::Transport::Kafka {
            return None;
        }
        Some((
            provenance.topic.as_deref()?,
            provenance.partition?,
            provenance.offset?,
        ))
    }
}

/// The bytes an entry is logged as (JSON).
pub fn encode(entry: &WalEntry) -> Vec<u8> {
    serde_json::to_vec(entry).expect("log entries serialise")
}

/// An entry that is on disk, on its way to the sinks.
#[derive(Debug, Clone)]
pub struct Committed {
    pub lsn: Lsn,
    pub entry: Arc<WalEntry>,
}

#[derive(Debug, Clone)]
pub struct WalOptions {
    pub dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Appends wait while this much is buffered and not yet written (backpressure).
    pub max_pending_bytes: usize,
    /// Read back entries after this position instead of after the published one, for a
    /// consumer whose own saved state lags the Parquet sink (the alert operator). Entries
    /// at or below the published position are the caller's to filter for the other sinks.
    pub replay_after: Option<Lsn>,
}

impl WalOptions {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            segment_bytes: 64 * 1024 * 1024,
            max_pending_bytes: 32 * 1024 * 1024,
            replay_after: None,
        }
    }
}

/// The log stopped (shutdown, or a write or fsync failed): nothing more becomes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the durable log is closed")]
pub struct WalClosed;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Durable {
    lsn: Lsn,
    failed: bool,
}

struct Pending {
    frames: Vec<u8>,
    entries: Vec<Committed>,
    next_lsn: Lsn,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    writer_wake: Condvar,
    space: Notify,
    durable: watch::Sender<Durable>,
    segments: Mutex<segment::Segments>,
    max_pending_bytes: usize,
}

/// A handle to append to the log; cheap to clone.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
}

/// What the log held beyond the published position when it was opened: entries to hand to
/// the sinks again.
pub struct Recovered {
    pub entries: Vec<Committed>,
}

/// Owns the writer thread; [`WalWriter::close`] flushes and stops it.
pub struct WalWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Where committed entries go; each receives every batch in LSN order.
pub type Downstream = std::sync::mpsc::SyncSender<Arc<Vec<Committed>>>;

impl Wal {
    /// Opens the log in `options.dir`, reads back every entry after `published_through` (or
    /// after `options.replay_after`, when that is earlier), and starts the writer thread. New
    /// entries go to a fresh segment.
    pub fn open(
        options: WalOptions,
        published_through: Lsn,
        downstream: Vec<Downstream>,
    ) -> Result<(Wal, WalWriter, Recovered), SegmentError> {
        let replay_after = options
            .replay_after
            .map_or(published_through, |lsn| lsn.min(published_through));
        let (segments, recovered, last_lsn) =
            segment::Segments::recover(&options.dir, replay_after, options.segment_bytes)?;
        // LSNs name published files, so they never go backwards, even when every segment
        // has been released.
        let next_lsn = last_lsn.max(published_through) + 1;
        let mut segments = segments;
        segments.start_segment(next_lsn)?;
        let (durable, _) = watch::channel(Durable {
            lsn: next_lsn - 1,
            failed: false,
        });
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                frames: Vec::with_capacity(1 << 20),
                entries: Vec::new(),
                next_lsn,
                closed: false,
            }),
            writer_wake: Condvar::new(),
            space: Notify::new(),
            durable,
            segments: Mutex::new(segments),
            max_pending_bytes: options.max_pending_bytes,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("gaveurs-wal".into())
                .spawn(move || write_loop(&shared, &downstream))
                .map_err(SegmentError::Io)?
        };
        Ok((
            Wal {
                shared: shared.clone(),
            },
            WalWriter {
                shared,
                thread: Some(thread),
            },
            Recovered { entries: recovered },
        ))
    }

    /// Appends one entry and returns its LSN. Waits while the unwritten buffer is full.
    pub async fn append(&self, entry: WalEntry) -> Result<Lsn, WalClosed> {
        let payload = encode(&entry);
        self.append_encoded(entry, payload).await
    }

    /// [`Wal::append`] for an entry already encoded with [`encode`] (its bytes are also
    /// sent elsewhere, e.g. to the live topic).
    pub async fn append_encoded(
        &self,
        entry: WalEntry,
        payload: Vec<u8>,
    ) -> Result<Lsn, WalClosed> {
        let entry = Arc::new(entry);
        loop {
            let space = self.shared.space.notified();
            {
                let mut pending = self.shared.pending.lock();
                if pending.closed {
                    return Err(WalClosed);
                }
                if pending.frames.is_empty()
                    || pending.frames.len() + payload.len() <= self.shared.max_pending_bytes
                {
                    let lsn = pending.next_lsn;
                    pending.next_lsn += 1;
                    segment::frame(&mut pending.frames, lsn, &payload);
                    pending.entries.push(Committed { lsn, entry });
                    drop(pending);
                    self.shared.writer_wake.notify_one();
                    return Ok(lsn);
                }
            }
            space.await;
        }
    }

    /// The LSN of the last entry appended so far (durable or not).
    pub fn last_appended(&self) -> Lsn {
        self.shared.pending.lock().next_lsn - 1
    }

    /// Resolves once every entry up to `lsn` is durable; fails if the log stopped first.
    pub fn durable(
        &self,
        lsn: Lsn,
    ) -> impl Future<Output = Result<(), WalClosed>> + Send + 'static {
        let mut rx = self.shared.durable.subscribe();
        async move {
            let state = rx
                .wait_for(|d| d.lsn >= lsn || d.failed)
                .await
                .map_err(|_| WalClosed)?;
            if state.lsn >= lsn {
                Ok(())
            } else {
                Err(WalClosed)
            }
        }
    }

    /// The highest LSN known durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.durable.borrow().lsn
    }

    /// Deletes the segments whose entries are all at or below `lsn` (published elsewhere).
    pub fn release_through(&self, lsn: Lsn) {
        if let Err(e) = self.shared.segments.lock().release_through(lsn) {
            tracing::warn!(error = %e, lsn, "could not delete released log segments");
        }
    }

    /// True once the log stopped because a write or fsync failed.
    pub fn failed(&self) -> bool {
        self.shared.durable.borrow().failed
    }

    /// Resolves when the log fails (never, if it does not).
    pub fn on_failure(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.durable.subscribe();
        async move {
            let _ = rx.wait_for(|d| d.failed).await;
        }
    }
}

impl WalWriter {
    /// Refuses new appends, writes and fsyncs what is buffered, and stops the thread. The
    /// downstream senders are dropped, which tells the sinks the log has ended.
    pub fn close(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        self.shared.pending.lock().closed = true;
        self.shared.writer_wake.notify_all();
        self.shared.space.notify_waiters();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        self.shut();
    }
}

fn write_loop(shared: &Shared, downstream: &[Downstream]) {
    let mut spare = Vec::with_capacity(1 << 20);
    loop {
        let (frames, entries) = {
            let mut pending = shared.pending.lock();
            while pending.frames.is_empty() && !pending.closed {
                shared.writer_wake.wait(&mut pending);
            }
            if pending.frames.is_empty() {
                break;
            }
            let frames = std::mem::replace(&mut pending.frames, std::mem::take(&mut spare));
            (frames, std::mem::take(&mut pending.entries))
        };
        shared.space.notify_waiters();
        let last = entries
            .last()
            .map(|c| c.lsn)
            .expect("frames come with entries");
        let written = shared.segments.lock().append_durably(&frames, last);
        if let Err(e) = written {
            tracing::error!(error = %e, "durable log write failed; refusing further input");
            shared.pending.lock().closed = true;
            shared.durable.send_modify(|d| d.failed = true);
            shared.space.notify_waiters();
            return;
        }
        shared.durable.send_modify(|d| d.lsn = last);
        let batch = Arc::new(entries);
        for sink in downstream {
            // A sink that hung up is shutting down; the entries are safe in the log.
            let _ = sink.send(batch.clone());
        }
        spare = frames;
        spare.clear();
    }
}

#[cfg(test)]
mod tests;
