//! The durable log: every accepted record and every dead letter is appended here, and an
//! input is acknowledged only once its entry is on disk.
//!
//! Appends from all connections go into one in-memory buffer; a dedicated writer thread takes
//! the whole buffer, writes it and calls `fdatasync` once (group commit), then publishes the
//! highest durable sequence number (LSN). So one fsync covers everything that arrived while
//! the previous one ran, and acknowledgements leave in LSN order.
//!
//! Everything derived from the log — Parquet, analytics, alerts, the live topic — reads it
//! through its own named [`LogCursor`], at its own pace: the writer never waits for a reader.
//! The newest committed entries stay in memory (a tail bounded in bytes) so readers that keep
//! up never touch the disk; a reader further behind reads the segment files. Each cursor
//! reports a checkpoint (everything up to it is safe in the consumer's own state), and
//! segments are deleted once every cursor's checkpoint has passed them — except that a
//! derived cursor may hold at most `max_retained_bytes` of segments: past that, its oldest
//! segments go anyway (loudly), and it skips ahead. The essential cursor (Parquet) holds the
//! log whatever its size: what it has not published would be lost.
//!
//! On disk the log is a folder of segments named by their first LSN. Each entry is framed as
//! `len: u32 | crc32: u32 | lsn: u64 | payload (JSON)`, the checksum covering LSN and payload.
//! Only the end of the newest segment may hold a torn frame (written when the process died,
//! never acknowledged): it is cut. A bad frame anywhere else is damage to acknowledged data:
//! opening fails, naming the file, the offset and how many entries follow, and
//! [`salvage`](salvage::salvage) keeps every readable entry.

mod checkpoint;
mod cursor;
pub mod salvage;
mod segment;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use gaveurs_schemas::{DeadLetter, Event};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

pub use checkpoint::CheckpointFile;
pub use cursor::{Abandonment, Checkpointer, CursorOptions, CursorStatus, LogCursor, LogEnded};
pub use segment::{Damage, SegmentError};

/// Log sequence number: the position of an entry in the log, from 1.
pub type Lsn = u64;

// Entries always live behind an `Arc`, so the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub enum WalEntry {
    Event(Event),
    DeadLetter(DeadLetter),
    /// A Kafka record the partition's previous owner already published, read again for the
    /// partition's derived state only (its alert state had not taken it in): never stored
    /// or pushed again.
    Reread(Event),
}

impl WalEntry {
    pub fn provenance(&self) -> &gaveurs_schemas::envelope::Provenance {
        match self {
            WalEntry::Event(event) | WalEntry::Reread(event) => &event.envelope.provenance,
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

    /// When the pipeline received the input.
    pub fn received_at(&self) -> chrono::DateTime<chrono::Utc> {
        match self {
            WalEntry::Event(event) | WalEntry::Reread(event) => event.envelope.ingest_time,
            WalEntry::DeadLetter(dead) => dead.received_at,
        }
    }
}

/// The bytes an entry is logged as (JSON).
pub fn encode(entry: &WalEntry) -> Vec<u8> {
    serde_json::to_vec(entry).expect("log entries serialise")
}

/// An entry that is on disk.
#[derive(Debug, Clone)]
pub struct Committed {
    pub lsn: Lsn,
    pub entry: Arc<WalEntry>,
    /// The entry as logged ([`encode`]): kept so a consumer that forwards it (the live
    /// topic) does not encode it again.
    pub encoded: bytes::Bytes,
}

impl Committed {
    /// A Kafka record logged by an earlier run of this instance (at or below `opened_at`,
    /// the last position the log held when it was opened). Such records are never taken
    /// from this log again: whoever owns their partition now re-reads them from Kafka.
    pub fn is_earlier_kafka(&self, opened_at: Lsn) -> bool {
        self.lsn <= opened_at && self.entry.kafka_position().is_some()
    }
}

#[derive(Debug, Clone)]
pub struct WalOptions {
    pub dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    /// Appends wait while this much is buffered and not yet written (backpressure).
    pub max_pending_bytes: usize,
    /// Committed entries kept in memory for the cursors (their encoded size); a cursor
    /// further behind reads the segment files.
    pub tail_bytes: usize,
    /// The most segment bytes a derived (non-essential) cursor may keep on disk; past it
    /// the oldest segments are released anyway and that cursor skips what they held.
    pub max_retained_bytes: u64,
}

impl WalOptions {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            segment_bytes: 64 * 1024 * 1024,
            // Backpressure, not throughput: a group commit of a few MB keeps the disk busy,
            // and every pending byte is held twice (encoded and decoded) until written.
            max_pending_bytes: 8 * 1024 * 1024,
            tail_bytes: 8 * 1024 * 1024,
            max_retained_bytes: 4 * 1024 * 1024 * 1024,
        }
    }
}

/// The log stopped (shutdown, or a write or fsync failed): nothing more becomes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the durable log is closed")]
pub struct WalClosed;

/// Why an append was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendRefused {
    #[error(transparent)]
    Closed(#[from] WalClosed),
    /// The disk is full: the log waits for space, writing what it already took once there
    /// is some, and takes nothing new meanwhile.
    #[error("the data disk is full ({0}); the record was not taken, send it again later")]
    DiskFull(String),
}

/// What an append does while the disk is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse at once, so the producer hears it (MQTT 0x97, a WebSocket error).
    Refuse,
    /// Queue and wait like any backpressure (Kafka: the record stays in its partition).
    Wait,
}

/// Between two attempts to write to a full disk.
const DISK_FULL_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Durable {
    lsn: Lsn,
    failed: bool,
    /// The last write found the disk full; it is retried until there is space.
    disk_full: bool,
}

struct Pending {
    frames: Vec<u8>,
    /// Entries with their encoded size.
    entries: Vec<(Committed, usize)>,
    next_lsn: Lsn,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    writer_wake: Condvar,
    space: Notify,
    durable: watch::Sender<Durable>,
    segments: Mutex<segment::Segments>,
    tail: Mutex<cursor::Tail>,
    /// Wakes cursors waiting for entries.
    tail_grew: Condvar,
    cursors: Mutex<Vec<Arc<cursor::CursorState>>>,
    /// Set when shutdown has run out of time: cursors stop reading.
    abandoned: AtomicBool,
    max_pending_bytes: usize,
    max_retained_bytes: u64,
    /// The last LSN the log held when it was opened.
    opened_at: Lsn,
    /// The error of the write that found the disk full, while it is.
    disk_full: Mutex<Option<String>>,
}

/// A handle to append to the log and to open cursors on it; cheap to clone.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
}

/// Owns the writer thread; [`WalWriter::close`] flushes and stops it.
pub struct WalWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Wal {
    /// Opens the log in `options.dir` (checking every frame: see the module doc on damage)
    /// and starts the writer thread. New entries go to a fresh segment and are numbered after
    /// the highest LSN found, or after `floor` if that is higher: LSNs name published files,
    /// so they never go backwards, even when every segment has been released.
    pub fn open(options: WalOptions, floor: Lsn) -> Result<(Wal, WalWriter), SegmentError> {
        let (mut segments, last_lsn) =
            segment::Segments::recover(&options.dir, options.segment_bytes)?;
        let next_lsn = last_lsn.max(floor) + 1;
        segments.start_segment(next_lsn)?;
        let (durable, _) = watch::channel(Durable {
            lsn: next_lsn - 1,
            failed: false,
            disk_full: false,
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
            tail: Mutex::new(cursor::Tail::new(options.tail_bytes, next_lsn - 1)),
            tail_grew: Condvar::new(),
            cursors: Mutex::new(Vec::new()),
            abandoned: AtomicBool::new(false),
            max_pending_bytes: options.max_pending_bytes,
            max_retained_bytes: options.max_retained_bytes,
            opened_at: last_lsn,
            disk_full: Mutex::new(None),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("gaveurs-wal".into())
                .spawn(move || write_loop(&shared))
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
        ))
    }

    /// Appends one entry and returns its LSN. Waits while the unwritten buffer is full.
    pub async fn append(&self, entry: WalEntry) -> Result<Lsn, WalClosed> {
        let payload = encode(&entry);
        match self.append_encoded(entry, payload, WhenFull::Wait).await {
            Ok(lsn) => Ok(lsn),
            Err(AppendRefused::Closed(closed)) => Err(closed),
            Err(AppendRefused::DiskFull(_)) => unreachable!("waiting appends are not refused"),
        }
    }

    /// [`Wal::append`] for an entry already encoded with [`encode`] (its bytes are also
    /// sent elsewhere), refused or queued while the disk is full as `when_full` says.
    pub async fn append_encoded(
        &self,
        entry: WalEntry,
        payload: Vec<u8>,
        when_full: WhenFull,
    ) -> Result<Lsn, AppendRefused> {
        let entry = Arc::new(entry);
        loop {
            let space = self.shared.space.notified();
            {
                let mut pending = self.shared.pending.lock();
                if pending.closed {
                    return Err(WalClosed.into());
                }
                if when_full == WhenFull::Refuse
                    && let Some(error) = self.disk_full()
                {
                    return Err(AppendRefused::DiskFull(error));
                }
                if pending.frames.is_empty()
                    || pending.frames.len() + payload.len() <= self.shared.max_pending_bytes
                {
                    let lsn = pending.next_lsn;
                    pending.next_lsn += 1;
                    segment::frame(&mut pending.frames, lsn, &payload);
                    let size = payload.len();
                    let encoded = bytes::Bytes::from(payload);
                    pending.entries.push((
                        Committed {
                            lsn,
                            entry,
                            encoded,
                        },
                        size,
                    ));
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

    /// The last LSN the log held when it was opened: entries at or below it were written by
    /// an earlier run.
    pub fn opened_at(&self) -> Lsn {
        self.shared.opened_at
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

    /// True once the log stopped because a write or fsync failed.
    pub fn failed(&self) -> bool {
        self.shared.durable.borrow().failed
    }

    /// While the disk is full: the error the last write got.
    pub fn disk_full(&self) -> Option<String> {
        self.shared.disk_full.lock().clone()
    }

    /// Resolves when the log fails (never, if it does not).
    pub fn on_failure(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.durable.subscribe();
        async move {
            let _ = rx.wait_for(|d| d.failed).await;
        }
    }

    /// Opens a named cursor reading the entries after `options.after`. Its checkpoint starts
    /// there and holds the log until the consumer moves it.
    pub fn cursor(&self, options: CursorOptions) -> LogCursor {
        LogCursor::register(self.shared.clone(), options)
    }

    /// Where every cursor stands, for `/metrics` and logs.
    pub fn cursors(&self) -> Vec<CursorStatus> {
        let durable = self.durable_lsn();
        let cursors = self.shared.cursors.lock().clone();
        let tail = self.shared.tail.lock();
        cursors
            .iter()
            .map(|state| state.status(durable, &tail))
            .collect()
    }

    /// Makes every cursor stop at its next read (shutdown ran out of time): what a
    /// consumer has not read stays in the log for the next start.
    pub fn abandon_cursors(&self) {
        self.shared.abandoned.store(true, Ordering::SeqCst);
        let _tail = self.shared.tail.lock();
        self.shared.tail_grew.notify_all();
    }

    /// Reads every durable entry after `after` from the segment files, in order (e.g. to
    /// seed the dedup index with what is not yet published). Entries that are gone (released)
    /// are not read.
    pub fn scan_after(
        &self,
        after: Lsn,
        mut each: impl FnMut(Committed),
    ) -> Result<(), SegmentError> {
        let through = self.durable_lsn();
        let mut reader = segment::Reader::default();
        let mut next = after + 1;
        while next <= through {
            let files = self.shared.segments.lock().files();
            let batch = reader.read(&files, next, through, 4096)?;
            let read_to = batch
                .entries
                .last()
                .map(|c| c.lsn)
                .or(batch.gone_through)
                .unwrap_or(through);
            next = read_to + 1;
            batch.entries.into_iter().for_each(&mut each);
        }
        Ok(())
    }

    /// Bytes of segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.shared.segments.lock().total_bytes()
    }
}

impl WalWriter {
    /// Refuses new appends, writes and fsyncs what is buffered, and stops the thread. The
    /// cursors then read to the end and are told the log has ended.
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
        self.shared.tail.lock().closed = true;
        self.shared.tail_grew.notify_all();
    }
}

impl Drop for WalWriter {
    fn drop(&mut self) {
        self.shut();
    }
}

fn write_loop(shared: &Shared) {
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
            .map(|(c, _)| c.lsn)
            .expect("frames come with entries");
        let written = write_until_there_is_space(shared, &frames, last);
        if let Err(e) = written {
            tracing::error!(error = %e, "durable log write failed; refusing further input");
            shared.pending.lock().closed = true;
            shared.durable.send_modify(|d| d.failed = true);
            shared.space.notify_waiters();
            let mut tail = shared.tail.lock();
            tail.closed = true;
            shared.tail_grew.notify_all();
            return;
        }
        shared.durable.send_modify(|d| d.lsn = last);
        {
            let mut tail = shared.tail.lock();
            tail.push(entries, Instant::now());
        }
        shared.tail_grew.notify_all();
        spare = frames;
        spare.clear();
    }
}

/// Writes `frames`; while the disk is full, says so (input is refused meanwhile) and tries
/// again, so nothing already taken is lost. Any other error, or a close while waiting, ends
/// the log.
fn write_until_there_is_space(shared: &Shared, frames: &[u8], last: Lsn) -> io::Result<()> {
    loop {
        let written = shared.segments.lock().append_durably(frames, last);
        let error = match written {
            Ok(()) => {
                if shared.disk_full.lock().take().is_some() {
                    shared.durable.send_modify(|d| d.disk_full = false);
                    tracing::warn!(target: "storage", "the data disk has space again; input is taken again");
                }
                return Ok(());
            }
            Err(e) if is_disk_full(&e) => e,
            Err(e) => return Err(e),
        };
        if shared.disk_full.lock().replace(error.to_string()).is_none() {
            shared.durable.send_modify(|d| d.disk_full = true);
            tracing::error!(target: "storage", error = %error,
                "the data disk is full: new input is refused (MQTT 0x97) and Kafka waits, until there is space");
        }
        let mut pending = shared.pending.lock();
        if pending.closed {
            return Err(error);
        }
        shared.writer_wake.wait_for(&mut pending, DISK_FULL_RETRY);
    }
}

fn is_disk_full(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Entry point for `cargo fuzz` (`fuzz/fuzz_targets/wal_frames.rs`), which builds with
/// `--cfg fuzzing`: what recovery does with a segment's bytes, and the decoding of each entry.
#[cfg(fuzzing)]
pub mod fuzzing {
    use super::{WalEntry, segment};

    /// Scans `bytes` as a segment file, decodes every frame found, and decodes `bytes` as
    /// one frame's payload too (random bytes seldom carry a valid checksum).
    pub fn segment_bytes(bytes: &[u8]) {
        let scan = segment::scan(bytes);
        let _ = scan.is_torn_tail(bytes);
        for frame in &scan.frames {
            let payload = &bytes[frame.start + segment::HEADER..frame.end];
            let _ = serde_json::from_slice::<WalEntry>(payload);
        }
        let mut framed = Vec::new();
        segment::frame(&mut framed, 1, bytes);
        let scan = segment::scan(&framed);
        assert!(
            bytes.len() > segment::MAX_FRAME_PAYLOAD || scan.frames.len() == 1,
            "a frame just written must read back"
        );
        if let Ok(entry) = serde_json::from_slice::<WalEntry>(bytes) {
            let again = super::encode(&entry);
            assert!(serde_json::from_slice::<WalEntry>(&again).is_ok());
        }
    }
}

#[cfg(test)]
mod tests;
