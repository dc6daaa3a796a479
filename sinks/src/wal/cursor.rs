//! Named cursors: how every consumer of the log reads it at its own pace.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::segment::{self, SegmentError};
use super::{Committed, Lsn, Shared};

/// Committed entries kept in memory, newest last, bounded by their encoded size.
pub(super) struct Tail {
    entries: VecDeque<(Committed, usize, Instant)>,
    bytes: usize,
    max_bytes: usize,
    /// The highest durable LSN.
    pub durable: Lsn,
    /// No entry will be added any more.
    pub closed: bool,
}

impl Tail {
    pub(super) fn new(max_bytes: usize, durable: Lsn) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            max_bytes,
            durable,
            closed: false,
        }
    }

    pub(super) fn push(&mut self, entries: Vec<(Committed, usize)>, at: Instant) {
        for (committed, size) in entries {
            self.durable = committed.lsn;
            self.bytes += size;
            self.entries.push_back((committed, size, at));
        }
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            if let Some((_, size, _)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    fn first_lsn(&self) -> Option<Lsn> {
        self.entries.front().map(|(c, _, _)| c.lsn)
    }

    /// Entries from `lsn` on (one run's LSNs are consecutive), at most `max`.
    fn from(&self, lsn: Lsn, max: usize) -> Vec<Committed> {
        let Some(first) = self.first_lsn() else {
            return Vec::new();
        };
        let start = (lsn - first) as usize;
        self.entries
            .range(start.min(self.entries.len())..)
            .take(max)
            .map(|(c, _, _)| c.clone())
            .collect()
    }

    fn committed_at(&self, lsn: Lsn) -> Option<Instant> {
        let first = self.first_lsn()?;
        let index = lsn.checked_sub(first)? as usize;
        self.entries.get(index).map(|(_, _, at)| *at)
    }
}

/// How to open a cursor.
#[derive(Debug, Clone)]
pub struct CursorOptions {
    /// `parquet`, `analytics`, `alerts`, `live`…: in metrics and logs.
    pub name: String,
    /// The consumer's checkpoint: it reads the entries after it.
    pub after: Lsn,
    /// The log keeps every entry an essential cursor has not checkpointed, whatever the
    /// size; a derived cursor is bounded by `WalOptions::max_retained_bytes`.
    pub essential: bool,
}

/// Why a cursor gives no more entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LogEnded {
    /// The log was closed and this cursor has read everything in it.
    #[error("the durable log is closed and fully read")]
    Closed,
    /// Shutdown ran out of time; the unread entries stay in the log for the next start.
    #[error("shutdown ran out of time before this cursor caught up")]
    Abandoned,
    /// The segment files could not be read.
    #[error("the durable log could not be read")]
    Unreadable,
}

/// Where a cursor stands.
#[derive(Debug, Clone, PartialEq)]
pub struct CursorStatus {
    pub name: String,
    pub read_through: Lsn,
    pub checkpoint: Lsn,
    /// Durable entries not yet read.
    pub lag_entries: u64,
    /// How long the oldest entry not yet read has been durable (0 when caught up).
    pub lag_seconds: f64,
    /// Entries this cursor never read because the log released them (retention cap).
    pub skipped: u64,
}

pub(super) struct CursorState {
    name: String,
    essential: bool,
    read_through: AtomicU64,
    checkpoint: AtomicU64,
    /// Receipt time of the last entry read (µs since the epoch; 0 = none yet).
    last_received_us: AtomicI64,
    skipped: AtomicU64,
    capped: AtomicBool,
}

impl CursorState {
    pub(super) fn status(&self, durable: Lsn, tail: &Tail) -> CursorStatus {
        let read_through = self.read_through.load(Ordering::Acquire);
        let lag_entries = durable.saturating_sub(read_through);
        let lag_seconds = if lag_entries == 0 {
            0.0
        } else if let Some(at) = tail.committed_at(read_through + 1) {
            at.elapsed().as_secs_f64()
        } else {
            // On disk only: the last entry read was received before the next one, so this
            // bounds the lag from above.
            match self.last_received_us.load(Ordering::Acquire) {
                0 => tail
                    .entries
                    .front()
                    .map_or(0.0, |(_, _, at)| at.elapsed().as_secs_f64()),
                us => {
                    let now = chrono::Utc::now().timestamp_micros();
                    (now - us).max(0) as f64 / 1e6
                }
            }
        };
        CursorStatus {
            name: self.name.clone(),
            read_through,
            checkpoint: self.checkpoint.load(Ordering::Acquire),
            lag_entries,
            lag_seconds,
            skipped: self.skipped.load(Ordering::Acquire),
        }
    }
}

/// One consumer's position in the log. Reads return entries in LSN order; the consumer
/// calls [`LogCursor::checkpoint`] once what it derived from them is safe in its own state.
/// Whether the shutdown deadline passed, for a consumer in the middle of a long step.
#[derive(Clone)]
pub struct Abandonment(Arc<Shared>);

impl Abandonment {
    pub fn is_set(&self) -> bool {
        self.0.abandoned.load(Ordering::SeqCst)
    }

    /// Resolves once the deadline has passed (checked every 20 ms; needs a tokio timer).
    pub async fn passed(&self) {
        while !self.is_set() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

pub struct LogCursor {
    shared: Arc<Shared>,
    state: Arc<CursorState>,
    disk: segment::Reader,
}

impl LogCursor {
    pub(super) fn register(shared: Arc<Shared>, options: CursorOptions) -> Self {
        let state = Arc::new(CursorState {
            name: options.name,
            essential: options.essential,
            read_through: AtomicU64::new(options.after),
            checkpoint: AtomicU64::new(options.after),
            last_received_us: AtomicI64::new(0),
            skipped: AtomicU64::new(0),
            capped: AtomicBool::new(false),
        });
        shared.cursors.lock().push(state.clone());
        Self {
            shared,
            state,
            disk: segment::Reader::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Every entry up to here has been read.
    pub fn read_through(&self) -> Lsn {
        self.state.read_through.load(Ordering::Acquire)
    }

    /// The last LSN the log held when it was opened (see [`Committed::is_earlier_kafka`]).
    pub fn opened_at(&self) -> Lsn {
        self.shared.opened_at
    }

    /// A handle that moves this cursor's checkpoint from another thread.
    pub fn checkpointer(&self) -> Checkpointer {
        Checkpointer {
            shared: self.shared.clone(),
            state: self.state.clone(),
        }
    }

    /// Reads again from after `lsn` (never before the checkpoint: the log may have released
    /// what lies before it). For a consumer that lost what it derived from the entries it
    /// read, and goes back to what it had made safe.
    pub fn rewind_to(&mut self, lsn: Lsn) {
        let lsn = lsn.max(self.state.checkpoint.load(Ordering::Acquire));
        self.state.read_through.store(lsn, Ordering::Release);
        self.disk = segment::Reader::default();
    }

    /// Whether the shutdown deadline passed ([`super::Wal::abandon_cursors`]): a consumer
    /// should leave now, leaving what it has not checkpointed to the log.
    pub fn abandoned(&self) -> bool {
        self.abandonment().is_set()
    }

    /// [`Self::abandoned`], to watch while the cursor itself is borrowed (during a long step).
    pub fn abandonment(&self) -> Abandonment {
        Abandonment(self.shared.clone())
    }

    /// Whether the log was closed (shutdown): nothing more will be appended.
    pub fn log_closed(&self) -> bool {
        self.shared.tail.lock().closed
    }

    /// The highest durable LSN.
    pub fn durable(&self) -> Lsn {
        self.shared.tail.lock().durable
    }

    /// The next entries, at most `max`, waiting up to `wait` for some (an empty batch when
    /// none came). From memory when the cursor keeps up, from the segment files when it is
    /// further behind. Ends once the log is closed and everything is read.
    pub fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Committed>, LogEnded> {
        let deadline = Instant::now() + wait;
        loop {
            if self.shared.abandoned.load(Ordering::SeqCst) {
                return Err(LogEnded::Abandoned);
            }
            let want = self.read_through() + 1;
            let mut tail = self.shared.tail.lock();
            if want > tail.durable {
                if tail.closed {
                    return Err(LogEnded::Closed);
                }
                let timed_out = self
                    .shared
                    .tail_grew
                    .wait_until(&mut tail, deadline)
                    .timed_out();
                if timed_out && want > tail.durable && !tail.closed {
                    return Ok(Vec::new());
                }
                continue;
            }
            if tail.first_lsn().is_some_and(|first| first <= want) {
                let batch = tail.from(want, max.max(1));
                drop(tail);
                self.delivered(&batch);
                return Ok(batch);
            }
            // Behind the memory tail: read the files, without holding any lock the writer
            // needs.
            let upto = match tail.first_lsn() {
                Some(first) => first - 1,
                None => tail.durable,
            };
            drop(tail);
            let files = self.shared.segments.lock().files();
            let read = self
                .disk
                .read(&files, want, upto, max.max(1))
                .map_err(|e| self.unreadable(e))?;
            if let Some(gone) = read.gone_through {
                self.skip(want, gone);
                if read.entries.is_empty() {
                    continue;
                }
            }
            if read.entries.is_empty() {
                // Nothing readable on disk below the tail (entries lost to salvage): on
                // to the tail.
                self.skip(want, upto);
                continue;
            }
            self.delivered(&read.entries);
            return Ok(read.entries);
        }
    }

    /// Everything up to `lsn` is safe in the consumer's own state: the log may release it.
    pub fn checkpoint(&self, lsn: Lsn) {
        checkpoint(&self.shared, &self.state, lsn);
    }

    fn delivered(&self, batch: &[Committed]) {
        if let Some(last) = batch.last() {
            self.state
                .read_through
                .fetch_max(last.lsn, Ordering::AcqRel);
            self.state.last_received_us.store(
                last.entry.received_at().timestamp_micros(),
                Ordering::Release,
            );
        }
    }

    fn skip(&self, want: Lsn, through: Lsn) {
        if through < want {
            return;
        }
        let count = through - want + 1;
        self.state.skipped.fetch_add(count, Ordering::AcqRel);
        self.state.read_through.fetch_max(through, Ordering::AcqRel);
        self.state.checkpoint.fetch_max(through, Ordering::AcqRel);
        gaveurs_telemetry::registry()
            .counter(
                "gaveurs_cursor_skipped_entries_total",
                "Log entries a cursor never read because the log released them (retention cap) or could not read them.",
                &[("cursor", &self.state.name)],
            )
            .inc_by(count);
        tracing::error!(
            target: "storage",
            cursor = %self.state.name,
            from = want,
            through,
            entries = count,
            "a log cursor skipped entries that are no longer in the log; what it derives from them is missing"
        );
    }

    fn unreadable(&self, error: SegmentError) -> LogEnded {
        tracing::error!(target: "storage", cursor = %self.state.name, error = %error, "a log cursor cannot read the segment files; it stops");
        LogEnded::Unreadable
    }
}

impl Drop for LogCursor {
    /// A consumer that stopped no longer holds the log.
    fn drop(&mut self) {
        self.shared
            .cursors
            .lock()
            .retain(|c| !Arc::ptr_eq(c, &self.state));
    }
}

/// Moves a cursor's checkpoint from wherever the consumer saves its state.
#[derive(Clone)]
pub struct Checkpointer {
    shared: Arc<Shared>,
    state: Arc<CursorState>,
}

impl Checkpointer {
    /// See [`LogCursor::checkpoint`].
    pub fn checkpoint(&self, lsn: Lsn) {
        checkpoint(&self.shared, &self.state, lsn);
    }
}

fn checkpoint(shared: &Shared, state: &CursorState, lsn: Lsn) {
    let previous = state.checkpoint.fetch_max(lsn, Ordering::AcqRel);
    if lsn > previous {
        release(shared);
    }
}

/// Deletes the segments every cursor has checkpointed past — or, when a derived cursor
/// lags so far that the log would keep more than its cap, past that cursor too (loudly).
fn release(shared: &Shared) {
    let cursors = shared.cursors.lock().clone();
    if cursors.is_empty() {
        return;
    }
    let checkpoint = |c: &Arc<CursorState>| c.checkpoint.load(Ordering::Acquire);
    let wanted = cursors.iter().map(checkpoint).min().unwrap_or(0);
    let essential = cursors
        .iter()
        .filter(|c| c.essential)
        .map(checkpoint)
        .min()
        .unwrap_or_else(|| shared.tail.lock().durable);
    let (released, dir, point) = {
        let mut segments = shared.segments.lock();
        let point = segments.release_point(wanted, essential, shared.max_retained_bytes);
        (
            segments.take_released(point),
            segments.dir().to_path_buf(),
            point,
        )
    };
    if point > wanted {
        for cursor in cursors.iter().filter(|c| checkpoint(c) < point) {
            gaveurs_telemetry::registry()
                .counter(
                    "gaveurs_log_retention_capped_total",
                    "Times the log released segments a lagging cursor had not read, to stay within [storage] log_max_retained_mb.",
                    &[("cursor", &cursor.name)],
                )
                .inc();
            if !cursor.capped.swap(true, Ordering::AcqRel) {
                tracing::error!(
                    target: "storage",
                    cursor = %cursor.name,
                    checkpoint = checkpoint(cursor),
                    released_through = point,
                    cap_bytes = shared.max_retained_bytes,
                    "a log cursor is so far behind that the log reached its retention cap; its oldest segments are released and it will skip what they held"
                );
            }
        }
    }
    if let Err(e) = segment::delete(&dir, &released) {
        tracing::warn!(target: "storage", error = %e, "could not delete released log segments");
    }
}
