//! The Parquet sink: turns the durable log into datasets under
//! `parquet/<dataset>/date=YYYY-MM-DD/site=XX/` (SPEC §3).
//!
//! Entries are read from the log through the sink's cursor, in LSN order, and appended to one open file per (dataset, partition).
//! A roll publishes every open file at once: at least every `roll_interval`, sooner when many
//! rows are buffered, and at shutdown. Files are written hidden
//! (`.<instance>-wal-<first>.parquet.tmp`) and renamed to
//! `<instance>-wal-<first lsn>-<last lsn>.parquet` when published.
//!
//! A roll is made crash-safe by a small state file in the instance's private folder:
//! 1. every file of the roll is completed and fsynced under its hidden name;
//! 2. the dedup keys of its records are handed to the dedup index, which writes them to
//!    its database (so a record is a duplicate for ever once its file can be seen);
//! 3. the roll's intent (its LSN and its renames) is written to `state.json`;
//! 4. the files are renamed and their folders fsynced;
//! 5. `state.json` records the new published LSN, and the log may forget what it covered.
//!
//! At start, an intent left by a crash is finished (the hidden files are complete), other
//! hidden files of this instance are deleted, and the sink's log cursor starts after the
//! published LSN. So every logged entry reaches exactly one published file.
//!
//! With Kafka input, a roll also writes the instance's shared [`manifest`] (before step 2),
//! which tells every instance which Kafka offsets are published.

pub mod compact;
pub mod derived;
pub mod manifest;
mod state;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gaveurs_schemas::datasets::{self, Dataset, Partition};
use gaveurs_schemas::records::DedupKey;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::fsutil::{create_dir_durable, sync_dir};
use crate::wal::{Committed, LogCursor, LogEnded, Lsn, WalEntry};

pub use state::{RecoveredState, recover, retire_legacy_digests};

#[derive(Debug, Clone)]
pub struct ParquetOptions {
    /// `data_dir/parquet`, shared by every instance.
    pub root: PathBuf,
    /// This instance's private folder for the roll state.
    pub state_dir: PathBuf,
    pub instance_id: String,
    pub roll_interval: Duration,
    /// A roll starts early once this many rows are buffered.
    pub max_rows_per_roll: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("parquet sink I/O: {0}")]
    Io(#[from] io::Error),
    #[error("parquet encoding: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow conversion: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

impl SinkError {
    /// The disk filled up: worth trying again once there is space, unlike a broken file.
    pub fn is_disk_full(&self) -> bool {
        match self {
            SinkError::Io(e) => e.kind() == io::ErrorKind::StorageFull,
            // The parquet and arrow crates wrap the I/O error, or keep only its text.
            other => {
                let text = format!("{other:?}");
                text.contains("StorageFull") || text.contains("os error 28")
            }
        }
    }
}

/// Between attempts to write Parquet files to a full disk.
const DISK_FULL_RETRY: Duration = Duration::from_secs(2);

/// What one roll published.
#[derive(Debug, Clone)]
pub struct PublishedRoll {
    /// Every log entry at or below this LSN is in a published file.
    pub through: Lsn,
    pub files: Vec<PathBuf>,
    pub rows: usize,
    pub bytes: u64,
}

/// The published LSN, and requests to publish sooner than the roll interval (a Kafka
/// partition being handed over must be published before its offsets are committed).
#[derive(Debug)]
pub struct RollControl {
    requested: AtomicU64,
    published: parking_lot::Mutex<Lsn>,
    changed: parking_lot::Condvar,
}

impl RollControl {
    pub fn new(published: Lsn) -> Arc<RollControl> {
        Arc::new(RollControl {
            requested: AtomicU64::new(0),
            published: parking_lot::Mutex::new(published),
            changed: parking_lot::Condvar::new(),
        })
    }

    /// Every log entry at or below this LSN is in a published file.
    pub fn published(&self) -> Lsn {
        *self.published.lock()
    }

    /// Asks for a roll covering `through` and waits for it, at most `timeout`; true once
    /// published.
    pub fn publish_through(&self, through: Lsn, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.requested.fetch_max(through, Ordering::SeqCst);
        let mut published = self.published.lock();
        while *published < through {
            if self
                .changed
                .wait_until(&mut published, deadline)
                .timed_out()
            {
                return *published >= through;
            }
        }
        true
    }

    fn requested(&self) -> Lsn {
        self.requested.load(Ordering::SeqCst)
    }

    fn set_published(&self, through: Lsn) {
        *self.published.lock() = through;
        self.changed.notify_all();
    }
}

/// Receives the dedup keys of a roll's records (see `Sink::on_keys`).
pub type OnKeys = Box<dyn FnMut(&[DedupKey]) -> io::Result<()> + Send>;

/// How often the sink looks for a roll request while one is pending.
const REQUEST_POLL: Duration = Duration::from_millis(20);

/// Rows converted to Arrow and handed to the Parquet encoder at a time.
const CONVERT_ROWS: usize = 4096;
/// Buffered entries are converted sooner when they are this large (encoded): 4,096 dead
/// letters of 64 KB, or SQAL samples, must not become one half-gigabyte Arrow batch.
const CONVERT_BYTES: usize = 2 * 1024 * 1024;
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// A row group is closed once its encoded data in memory reaches this, whatever its rows (a
/// row group of meals reaches its row count long before; dead letters of 64 KB do not).
const ROW_GROUP_BYTES: usize = 8 * 1024 * 1024;

struct OpenFile {
    dataset: Dataset,
    dir: PathBuf,
    tmp_name: String,
    writer: ArrowWriter<File>,
    buffered: Vec<Arc<WalEntry>>,
    /// The encoded size of `buffered`.
    buffered_bytes: usize,
    first_lsn: Lsn,
    last_lsn: Lsn,
    rows: usize,
}

impl OpenFile {
    fn convert(&mut self) -> Result<(), SinkError> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        let batch = if self.dataset == Dataset::Dlq {
            let rows: Vec<_> = self
                .buffered
                .iter()
                .filter_map(|e| match e.as_ref() {
                    WalEntry::DeadLetter(d) => Some(d),
                    WalEntry::Event(_) | WalEntry::Reread(_) => None,
                })
                .collect();
            datasets::dead_letters_to_batch(&rows)?
        } else {
            let rows: Vec<_> = self
                .buffered
                .iter()
                .filter_map(|e| match e.as_ref() {
                    WalEntry::Event(event) => Some(event),
                    WalEntry::DeadLetter(_) | WalEntry::Reread(_) => None,
                })
                .collect();
            datasets::events_to_batch(self.dataset, &rows)?
        };
        self.writer.write(&batch)?;
        if self.writer.in_progress_size() >= ROW_GROUP_BYTES {
            self.writer.flush()?;
        }
        self.buffered.clear();
        self.buffered_bytes = 0;
        Ok(())
    }

    fn final_name(&self, instance: &str) -> String {
        format!(
            "{instance}-wal-{:020}-{:020}.parquet",
            self.first_lsn, self.last_lsn
        )
    }
}

struct Sink {
    options: ParquetOptions,
    open: BTreeMap<(Dataset, Partition), OpenFile>,
    /// Dedup keys of the records in the open files.
    keys: Vec<DedupKey>,
    /// Told the keys of each roll's records once its files are complete, before they are
    /// renamed (the dedup index writes them to disk).
    on_keys: OnKeys,
    published_through: Lsn,
    last_seen: Lsn,
    buffered_rows: usize,
    oldest_unpublished: Option<Instant>,
    control: Arc<RollControl>,
    /// Kafka offsets in published files (cumulative) and in the open files.
    kafka_published: manifest::KafkaOffsets,
    kafka_open: manifest::KafkaOffsets,
}

/// Runs the sink on the calling thread, reading the log through `cursor` (essential: the
/// log keeps what this sink has not published), until the log ends; then everything is
/// published. Kafka records an earlier run logged are skipped: whoever owns their partition
/// now re-reads them from Kafka.
pub fn run(
    options: ParquetOptions,
    recovered: &RecoveredState,
    cursor: LogCursor,
    control: Arc<RollControl>,
    on_keys: OnKeys,
) -> Result<(), SinkError> {
    let mut sink = Sink {
        options,
        open: BTreeMap::new(),
        keys: Vec::new(),
        on_keys,
        published_through: recovered.published_through,
        last_seen: recovered.published_through,
        buffered_rows: 0,
        oldest_unpublished: None,
        control,
        kafka_published: recovered.kafka.clone(),
        kafka_open: manifest::KafkaOffsets::new(),
    };
    let mut cursor = cursor;
    let mut result = sink.run(&mut cursor);
    while let Err(e) = &result
        && e.is_disk_full()
        && !cursor.log_closed()
    {
        tracing::error!(target: "storage", error = %e, retry_in = ?DISK_FULL_RETRY,
            "parquet files not written: the data disk is full; the entries stay in the log and are written once there is space");
        std::thread::sleep(DISK_FULL_RETRY);
        // What the open files held is read from the log again; half-written files go.
        sink.open.clear();
        result = match state::recover(&sink.options) {
            Ok(recovered) => {
                sink.start_over(&recovered, &mut cursor);
                sink.run(&mut cursor)
            }
            Err(e) => Err(e.into()),
        };
    }
    if let Err(e) = &result {
        tracing::error!(error = %e, "parquet sink failed; its entries stay in the durable log");
    }
    result
}

/// How long the sink waits for entries when nothing is buffered: only new entries can
/// answer a roll request then.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Entries taken from the log at a time.
const READ_BATCH: usize = 4096;

impl Sink {
    /// Back to what `recovered` says is published, reading the log again from there.
    fn start_over(&mut self, recovered: &RecoveredState, cursor: &mut LogCursor) {
        self.open.clear();
        self.keys.clear();
        self.published_through = recovered.published_through;
        self.last_seen = recovered.published_through;
        self.buffered_rows = 0;
        self.oldest_unpublished = None;
        self.kafka_published = recovered.kafka.clone();
        self.kafka_open = manifest::KafkaOffsets::new();
        self.control.set_published(recovered.published_through);
        cursor.rewind_to(recovered.published_through);
    }

    fn run(&mut self, cursor: &mut LogCursor) -> Result<(), SinkError> {
        let opened_at = cursor.opened_at();
        loop {
            let wait = match self.oldest_unpublished {
                // A roll request is not an entry: while rows wait, look for one every
                // REQUEST_POLL.
                Some(since) => (since + self.options.roll_interval)
                    .saturating_duration_since(Instant::now())
                    .min(REQUEST_POLL),
                None => IDLE_WAIT,
            };
            match cursor.next_batch(READ_BATCH, wait) {
                Ok(batch) => {
                    for committed in &batch {
                        if committed.is_earlier_kafka(opened_at) {
                            self.pass(committed.lsn);
                        } else {
                            self.add(committed)?;
                        }
                    }
                    let due = self
                        .oldest_unpublished
                        .is_some_and(|since| since.elapsed() >= self.options.roll_interval);
                    if due
                        || self.buffered_rows >= self.options.max_rows_per_roll
                        || self.request_reached()
                    {
                        self.roll(cursor)?;
                    }
                }
                Err(LogEnded::Closed) => {
                    self.roll(cursor)?;
                    return Ok(());
                }
                // Out of time, or the files cannot be read: what is not published stays in
                // the log (its hidden files are removed at the next start).
                Err(LogEnded::Abandoned | LogEnded::Unreadable) => return Ok(()),
            }
        }
    }

    /// An entry that makes no row here still counts as published once the next roll is.
    fn pass(&mut self, lsn: Lsn) {
        if lsn > self.last_seen {
            self.last_seen = lsn;
            self.oldest_unpublished.get_or_insert_with(Instant::now);
        }
    }

    /// A roll was requested through an LSN this sink has now seen.
    fn request_reached(&self) -> bool {
        let requested = self.control.requested();
        requested > self.published_through && requested <= self.last_seen
    }

    fn add(&mut self, committed: &Committed) -> Result<(), SinkError> {
        if committed.lsn <= self.last_seen {
            return Ok(());
        }
        if matches!(committed.entry.as_ref(), WalEntry::Reread(_)) {
            // Published by the partition's previous owner.
            self.pass(committed.lsn);
            return Ok(());
        }
        if let Some((topic, partition, offset)) = committed.entry.kafka_position() {
            let slot = self
                .kafka_open
                .entry(topic.to_string())
                .or_default()
                .entry(partition)
                .or_insert(offset);
            *slot = (*slot).max(offset);
        }
        let (dataset, partition) = match committed.entry.as_ref() {
            WalEntry::Event(event) => {
                self.keys.push(event.record.dedup_key());
                (Dataset::of(&event.record), Partition::of_event(event))
            }
            WalEntry::DeadLetter(dead) => (Dataset::Dlq, Partition::of_dead_letter(dead)),
            WalEntry::Reread(_) => unreachable!("passed above"),
        };
        let key = (dataset, partition);
        if !self.open.contains_key(&key) {
            let file = self.open_file(key.0, &key.1, committed.lsn)?;
            self.open.insert(key.clone(), file);
        }
        let file = self.open.get_mut(&key).expect("just opened");
        file.buffered.push(committed.entry.clone());
        file.buffered_bytes += committed.encoded.len();
        file.last_lsn = committed.lsn;
        file.rows += 1;
        if file.buffered.len() >= CONVERT_ROWS || file.buffered_bytes >= CONVERT_BYTES {
            file.convert()?;
        }
        self.last_seen = committed.lsn;
        self.buffered_rows += 1;
        self.oldest_unpublished.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn open_file(
        &self,
        dataset: Dataset,
        partition: &Partition,
        first_lsn: Lsn,
    ) -> Result<OpenFile, SinkError> {
        let dir = self
            .options
            .root
            .join(dataset.name())
            .join(partition.path());
        create_dir_durable(&dir)?;
        let tmp_name = format!(
            ".{}-wal-{first_lsn:020}.parquet.tmp",
            self.options.instance_id
        );
        let file = File::create(dir.join(&tmp_name))?;
        let schema = dataset.schema();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(writer_properties(&schema)?))?;
        Ok(OpenFile {
            dataset,
            dir,
            tmp_name,
            writer,
            buffered: Vec::new(),
            buffered_bytes: 0,
            first_lsn,
            last_lsn: first_lsn,
            rows: 0,
        })
    }

    fn roll(&mut self, cursor: &LogCursor) -> Result<(), SinkError> {
        if self.open.is_empty() {
            self.oldest_unpublished = None;
            // Entries that produced no row (none do today) still count as published.
            if self.last_seen > self.published_through {
                self.published_through = self.last_seen;
                self.control.set_published(self.last_seen);
                cursor.checkpoint(self.last_seen);
            }
            return Ok(());
        }
        let instance = self.options.instance_id.clone();
        let mut renames = Vec::new();
        let mut rows = 0;
        let mut bytes = 0;
        let mut counts = Vec::new();
        for (_, mut file) in std::mem::take(&mut self.open) {
            file.convert()?;
            let final_name = file.final_name(&instance);
            for (key, value) in [
                ("gaveurs.instance", instance.clone()),
                ("gaveurs.source", "wal".to_string()),
                ("gaveurs.first_lsn", file.first_lsn.to_string()),
                ("gaveurs.last_lsn", file.last_lsn.to_string()),
            ] {
                file.writer
                    .append_key_value_metadata(KeyValue::new(key.to_string(), value));
            }
            let handle = file.writer.into_inner()?;
            handle.sync_all()?;
            let size = handle.metadata()?.len();
            counts.push((file.dataset, file.rows, size));
            bytes += size;
            rows += file.rows;
            renames.push((file.dir.join(&file.tmp_name), file.dir.join(final_name)));
        }
        let through = self.last_seen;
        (self.on_keys)(&self.keys)?;
        let mut kafka = self.kafka_published.clone();
        manifest::merge(&mut kafka, &self.kafka_open);
        if !kafka.is_empty() {
            let rolling = state::Rolling::new(&self.options.root, through, &renames);
            manifest::write(
                &self.options.root,
                &manifest::Manifest {
                    instance: instance.clone(),
                    through,
                    renames: rolling.renames,
                    kafka: kafka.clone(),
                },
            )?;
        }
        state::write(
            &self.options,
            &state::State {
                published_through: self.published_through,
                rolling: Some(state::Rolling::new(&self.options.root, through, &renames)),
            },
        )?;
        publish_renames(&renames)?;
        state::write(
            &self.options,
            &state::State {
                published_through: through,
                rolling: None,
            },
        )?;
        self.published_through = through;
        self.kafka_published = kafka;
        self.kafka_open.clear();
        self.control.set_published(through);
        self.keys.clear();
        self.buffered_rows = 0;
        self.oldest_unpublished = None;
        let roll = PublishedRoll {
            through,
            files: renames.into_iter().map(|(_, to)| to).collect(),
            rows,
            bytes,
        };
        tracing::debug!(
            through,
            files = roll.files.len(),
            rows,
            bytes,
            "published parquet files"
        );
        for (dataset, rows, bytes) in counts {
            count_published(dataset.name(), rows as u64, bytes);
        }
        // The log may now forget what this roll covered (once the other cursors have too).
        cursor.checkpoint(through);
        Ok(())
    }
}

/// How every dataset file is written: zstd, row groups of at most `ROW_GROUP_ROWS`, and a
/// bloom filter on `code_lot` where there is one, so reading one lot back (analytics
/// restoring a lot, `GET /api/v1/lots/{code}`) skips the row groups that cannot hold it.
pub fn writer_properties(
    schema: &arrow::datatypes::Schema,
) -> Result<WriterProperties, parquet::errors::ParquetError> {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("gaveurs {}", env!("CARGO_PKG_VERSION")));
    if schema.field_with_name("code_lot").is_ok() {
        builder = builder.set_column_bloom_filter_enabled("code_lot".into(), true);
    }
    Ok(builder.build())
}

/// A Parquet file published, its rows and bytes (`/metrics`), by the log's sink and the
/// derived writers alike. Once per file, so the label sets built here cost nothing per record.
pub(crate) fn count_published(dataset: &str, rows: u64, bytes: u64) {
    let metrics = gaveurs_telemetry::registry();
    metrics
        .counter(
            "gaveurs_parquet_files_total",
            "Parquet files published.",
            &[],
        )
        .inc();
    metrics
        .counter(
            "gaveurs_parquet_bytes_total",
            "Bytes of the Parquet files published.",
            &[],
        )
        .inc_by(bytes);
    metrics
        .counter(
            "gaveurs_records_out_total",
            "Rows written out, by sink and dataset.",
            &[("sink", "parquet"), ("dataset", dataset)],
        )
        .inc_by(rows);
}

/// Renames hidden files to their published names and fsyncs the folders once each.
fn publish_renames(renames: &[(PathBuf, PathBuf)]) -> io::Result<()> {
    let mut dirs: Vec<&Path> = Vec::new();
    for (from, to) in renames {
        match std::fs::rename(from, to) {
            Ok(()) => {}
            // Already renamed before a crash.
            Err(e) if e.kind() == io::ErrorKind::NotFound && to.exists() => {}
            Err(e) => return Err(e),
        }
        if let Some(dir) = to.parent()
            && !dirs.contains(&dir)
        {
            dirs.push(dir);
        }
    }
    for dir in dirs {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
