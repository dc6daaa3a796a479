//! The ledger desk: a consumer of the durable log that turns records into ledger events
//! (`super::events`) and appends them to the chains.
//!
//! Like the alert desk, it splits its state by **shard**: the records of one Kafka partition
//! belong to that partition's chain (`data/ledger/kafka_<topic>_p<partition>`, its state in
//! `data/shards/<topic>-<partition>/ledger/state.json`, continued by whichever instance owns
//! the partition now), every other record to this instance's chain (`local` without Kafka,
//! `instance-<id>` with it). A shard's state holds its tallies with how far they go (the log
//! position, or the partition's Kafka offset) and the chain's head at that moment; after a
//! crash the records since are derived again — from the log, or re-read from Kafka — and the
//! events the chain already holds past the saved head are skipped (the chain is fsynced
//! before anything else sees an entry, so it is never behind what was exposed). Nothing is
//! skipped or chained twice.
//!
//! `gaveurs ledger rotate-key` beside a running pipeline leaves a request in the keys folder
//! (`rotate-<chain>.request`); the desk that holds the chain rotates its key and removes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use gaveurs_connectors::sources::kafka::PartitionState;
use gaveurs_schemas::datasets::Partition;
use gaveurs_schemas::datasets::ledger::{self as dataset, LedgerRow};
use gaveurs_sinks::fsutil::{create_dir_durable, write_atomic};
use gaveurs_sinks::parquet::derived::DerivedWriter;
use gaveurs_sinks::wal::{Checkpointer, Committed, LogCursor, LogEnded, WalEntry};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use super::chain::{ChainWriter, Opened, entries_after, now};
use super::entry::{EntryKind, Event};
use super::events::Tallies;
use super::keys::KeyStore;
use crate::alerts::desk::Shard;
use crate::alerts::rules::RuleSet;
use crate::anomalies::desk::ModelSlot;
use crate::log_desk::{LogDesk, STATE_FILE};

/// How often `ledger.log` says how many entries were appended.
const REPORT_EVERY: Duration = Duration::from_secs(60);
/// How often the keys folder is looked at for rotation requests.
const REQUESTS_EVERY: Duration = Duration::from_millis(500);
/// How long taking a partition waits for its previous owner to let go of its chain.
const TAKE_WAIT: Duration = Duration::from_secs(10);
/// The chain without Kafka partitions.
pub const LOCAL_CHAIN: &str = "local";

/// `[ledger]`: the traceability ledger (SPEC §8).
///
/// ```toml
/// [ledger]
/// enabled = true
/// keys_dir = "data/keys/ledger"   # default: <data_dir>/keys/ledger
/// max_lots = 100000
/// state_save_interval_ms = 10000
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    pub enabled: bool,
    /// Where the signing keys are kept (mode 0600 files); default `<data_dir>/keys/ledger`.
    pub keys_dir: Option<PathBuf>,
    /// Lots whose tallies are kept per chain (default 100000); past it the least recently
    /// heard of are forgotten, and a forgotten lot that comes back starts a new tally (its
    /// entries say so: `lot_started` again).
    pub max_lots: usize,
    /// How often the desk's state is saved while records flow (default 10000 ms). Its state
    /// holds a second alert book (tracks of every lot) and is rewritten whole: saved each
    /// second at 20 k meals/s across 50,000 lots, it fell behind the log. A crash derives
    /// again what came after the last save, from the log (or Kafka).
    pub state_save_interval_ms: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            keys_dir: None,
            max_lots: 100_000,
            state_save_interval_ms: 10_000,
        }
    }
}

/// The name of a Kafka partition's chain (`kafka_<topic>_p<partition>`).
pub fn partition_chain(topic: &str, partition: i32) -> String {
    Shard::Kafka {
        topic: topic.to_string(),
        partition,
    }
    .file_prefix("")
}

/// The file `gaveurs ledger rotate-key` leaves for the pipeline that holds `chain`.
pub fn rotation_request(keys_dir: &Path, chain: &str) -> PathBuf {
    keys_dir.join(format!("rotate-{chain}.request"))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Snapshot {
    /// This instance's shard: every log entry up to here is derived.
    through_lsn: u64,
    /// A partition's shard: every record up to this offset is derived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kafka_offset: Option<i64>,
    /// The chain's last entry when the state was saved.
    chain_seq: u64,
    /// The last entry mirrored in the `ledger` dataset.
    #[serde(default)]
    published_seq: u64,
    #[serde(flatten)]
    tallies: Tallies,
}

/// What the desk counted since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerCounters {
    pub appended: u64,
    /// Events already in the chain when the desk derived them again after a crash.
    pub skipped_as_chained: u64,
    pub lots_forgotten: u64,
}

/// One chain and the state that continues it.
struct ShardLedger {
    snapshot: Snapshot,
    writer: ChainWriter,
    state_dir: PathBuf,
    unsaved: bool,
    /// Events to drop because the chain already holds them (derived before a crash).
    already_chained: u64,
    /// Appending failed: nothing more is derived until a restart (or the partition's next
    /// owner) derives again from the saved position.
    halted: bool,
    /// Events derived from the current batch, not yet chained.
    derived: Vec<Event>,
    /// Its saved state says where its entries begin: this instance's chain always, a
    /// partition's once it has derived a record.
    anchored: bool,
}

impl ShardLedger {
    /// Opens the chain (its genesis on a first start) and the saved state; without one,
    /// `fresh` is saved at once, so a crash before the first periodic save still finds where
    /// this shard's entries began.
    fn open(
        ledger_dir: &Path,
        chain: &str,
        keys: &KeyStore,
        state_dir: PathBuf,
        fresh: Snapshot,
        local: bool,
    ) -> anyhow::Result<ShardLedger> {
        let (writer, opened) = ChainWriter::open(ledger_dir, chain, keys)?;
        match &opened {
            Opened::Genesis(entry) => {
                tracing::info!(target: "ledger", chain, key_id = %entry.key, hash = %entry.hash, "ledger started: genesis entry written");
            }
            Opened::Continued {
                head_seq,
                cut_bytes,
            } => {
                tracing::info!(target: "ledger", chain, head_seq, key_id = %writer.key_id(), cut_bytes, "ledger continued");
            }
        }
        let path = state_dir.join(STATE_FILE);
        let head = writer.next_seq() - 1;
        let snapshot = match std::fs::read(&path) {
            Ok(bytes) => {
                let mut snapshot: Snapshot = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "{} is not a ledger state ({e}); move it away to chain from the log's published position",
                        path.display()
                    )
                })?;
                snapshot.tallies.reindex();
                snapshot
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let first = Snapshot {
                    chain_seq: head,
                    ..fresh
                };
                create_dir_durable(&state_dir)
                    .and_then(|()| write_atomic(&path, &serde_json::to_vec(&first)?))
                    .with_context(|| format!("writing {}", path.display()))?;
                first
            }
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        };
        anyhow::ensure!(
            snapshot.chain_seq <= head,
            "the ledger state ({}) has seen entry {} but the chain {chain} ends at {head}: entries were removed; run `gaveurs ledger verify`",
            path.display(),
            snapshot.chain_seq
        );
        // Key entries are not derived from records: only lot events are derived again.
        let already_chained = entries_after(&ledger_dir.join(chain), snapshot.chain_seq)?
            .iter()
            .filter(|e| !matches!(e.kind, EntryKind::Genesis | EntryKind::KeyRotated))
            .count() as u64;
        let snapshot_anchored = local || snapshot.kafka_offset.is_some();
        if already_chained > 0 {
            tracing::info!(target: "ledger", chain, already_chained, from_seq = snapshot.chain_seq, "events chained after the last save are derived again and not chained twice");
        }
        Ok(ShardLedger {
            snapshot,
            writer,
            state_dir,
            unsaved: false,
            already_chained,
            halted: false,
            derived: Vec::new(),
            anchored: snapshot_anchored,
        })
    }

    /// Saves, before a partition's chain that started empty chains anything, the offset its
    /// entries begin at: without it the partition's next owner could not tell which events
    /// the chain already holds.
    fn anchor(&mut self, first_offset: i64) {
        let anchor = Snapshot {
            kafka_offset: Some(first_offset - 1),
            chain_seq: self.writer.next_seq() - 1,
            published_seq: self.snapshot.published_seq,
            ..Snapshot::default()
        };
        let written = serde_json::to_vec(&anchor)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                create_dir_durable(&self.state_dir)
                    .and_then(|()| write_atomic(&self.state_dir.join(STATE_FILE), &bytes))
            });
        match written {
            Ok(()) => self.anchored = true,
            Err(e) => {
                self.halted = true;
                tracing::error!(target: "ledger", chain = self.writer.name(), error = %e, "a partition's ledger state could not be saved before its first entry; this chain stops until the partition is taken again");
            }
        }
    }

    /// Chains what the last records derived, but what the chain already holds.
    fn chain_derived(&mut self, counters: &mut LedgerCounters) {
        if self.derived.is_empty() {
            return;
        }
        let mut events = std::mem::take(&mut self.derived);
        let skip = (self.already_chained as usize).min(events.len());
        self.already_chained -= skip as u64;
        counters.skipped_as_chained += skip as u64;
        events.drain(..skip);
        if events.is_empty() {
            return;
        }
        match self.writer.append(events) {
            Ok(entries) => {
                counters.appended += entries.len() as u64;
                if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
                    tracing::debug!(target: "ledger", chain = self.writer.name(), from_seq = first.seq, to_seq = last.seq, head = %last.hash, "entries appended");
                }
            }
            Err(e) => {
                // The tallies moved past events the chain does not hold: stop here, keep the
                // saved state, and let a restart derive them again.
                self.halted = true;
                tracing::error!(target: "ledger", chain = self.writer.name(), error = %format!("{e:#}"), "ledger append failed; this chain stops until a restart, which derives the missing entries again");
            }
        }
    }
}

struct DeskState {
    shards: BTreeMap<Shard, ShardLedger>,
    rules: RuleSet,
    counters: LedgerCounters,
    last_saved: Instant,
}

/// Where the desk reads and writes.
pub struct LedgerPaths {
    /// `data_dir/ledger`: the chains.
    pub ledger_dir: PathBuf,
    /// This instance's saved state.
    pub state_dir: PathBuf,
    /// `data_dir/shards`: one folder per Kafka partition, shared by every instance.
    pub shards: PathBuf,
    /// `data_dir/parquet`, for the `ledger` dataset.
    pub parquet_root: PathBuf,
}

pub struct LedgerDesk {
    state: Mutex<DeskState>,
    /// Wakes a partition's release waiting for the desk to reach a log position.
    progressed: Condvar,
    keys: KeyStore,
    paths: LedgerPaths,
    max_lots: usize,
    save_every: Duration,
    saving: Mutex<()>,
    checkpoint: OnceLock<Checkpointer>,
    /// The anomaly models the `anomalie` rule scores with (`None`: scoring is off).
    models: Option<ModelSlot>,
    /// When `ledger.log` last reported, and the count then.
    last_report: Mutex<(Instant, u64)>,
    last_requests_look: Mutex<Instant>,
}

impl LedgerDesk {
    /// Opens this instance's chain `local_chain` and its saved state. `published_through`:
    /// where a first start begins (records of earlier runs are not chained). `rules` are
    /// the alert rules whose critical alerts are chained.
    pub fn open(
        config: &LedgerConfig,
        local_chain: &str,
        keys: KeyStore,
        paths: LedgerPaths,
        published_through: u64,
        rules: RuleSet,
        models: Option<ModelSlot>,
    ) -> anyhow::Result<Arc<LedgerDesk>> {
        let local = ShardLedger::open(
            &paths.ledger_dir,
            local_chain,
            &keys,
            paths.state_dir.clone(),
            Snapshot {
                through_lsn: published_through,
                ..Snapshot::default()
            },
            true,
        )?;
        Ok(Arc::new(LedgerDesk {
            state: Mutex::new(DeskState {
                shards: [(Shard::Local, local)].into_iter().collect(),
                rules,
                counters: LedgerCounters::default(),
                last_saved: Instant::now(),
            }),
            progressed: Condvar::new(),
            keys,
            paths,
            max_lots: config.max_lots.max(1),
            save_every: Duration::from_millis(config.state_save_interval_ms.max(1)),
            saving: Mutex::new(()),
            checkpoint: OnceLock::new(),
            models,
            last_report: Mutex::new((Instant::now(), 0)),
            last_requests_look: Mutex::new(Instant::now()),
        }))
    }

    /// The last log entry this instance's state covers.
    pub fn saved_through(&self) -> u64 {
        self.state.lock().shards[&Shard::Local].snapshot.through_lsn
    }

    pub fn counters(&self) -> LedgerCounters {
        self.state.lock().counters
    }

    /// The chains this instance holds now.
    pub fn chains(&self) -> Vec<String> {
        let state = self.state.lock();
        state
            .shards
            .values()
            .map(|s| s.writer.name().to_string())
            .collect()
    }

    /// New alert rules (SIGHUP): the critical alerts of a rule that was disabled clear now.
    pub fn reload(&self, rules: RuleSet) {
        let mut state = self.state.lock();
        let state = &mut *state;
        for shard in state.shards.values_mut().filter(|s| !s.halted) {
            shard
                .snapshot
                .tallies
                .retire_rules(&rules, &mut shard.derived);
            shard.unsaved |= !shard.derived.is_empty();
            shard.chain_derived(&mut state.counters);
        }
        state.rules = rules;
    }

    /// Writes each unsaved shard's `state.json`: snapshots are taken under the state lock
    /// (no batch is then half chained, so each head is the one its tallies describe),
    /// written outside it.
    fn save(&self) -> std::io::Result<()> {
        let _one_writer = self.saving.lock();
        let (files, through) = {
            let mut state = self.state.lock();
            let mut files = Vec::new();
            for shard in state.shards.values_mut().filter(|s| s.unsaved && !s.halted) {
                shard.snapshot.chain_seq = shard.writer.next_seq() - 1;
                let bytes = serde_json::to_vec(&shard.snapshot).map_err(std::io::Error::other)?;
                shard.unsaved = false;
                files.push((shard.state_dir.clone(), bytes));
            }
            state.last_saved = Instant::now();
            let local = &state.shards[&Shard::Local];
            (files, (!local.halted).then_some(local.snapshot.through_lsn))
        };
        if let Err((failed, e)) = crate::log_desk::write_shard_states(&files) {
            let mut state = self.state.lock();
            for shard in state.shards.values_mut() {
                shard.unsaved |= failed.contains(&shard.state_dir.as_path());
            }
            return Err(e);
        }
        if let (Some(checkpoint), Some(through)) = (self.checkpoint.get(), through) {
            checkpoint.checkpoint(through);
        }
        Ok(())
    }

    fn publish_chain(&self, chain: &str, from: u64) -> anyhow::Result<(u64, usize)> {
        let entries = entries_after(&self.paths.ledger_dir.join(chain), from)?;
        let Some(last) = entries.last().map(|e| e.seq) else {
            return Ok((from, 0));
        };
        let rows: Vec<(Partition, LedgerRow)> = entries
            .iter()
            .map(ledger_row)
            .collect::<anyhow::Result<_>>()?;
        let mut by_partition: BTreeMap<&Partition, Vec<&LedgerRow>> = BTreeMap::new();
        for (partition, row) in &rows {
            by_partition.entry(partition).or_default().push(row);
        }
        let mut writer = DerivedWriter::new(self.paths.parquet_root.clone(), "ledger".into());
        for (partition, rows) in by_partition {
            writer.append(dataset::NAME, partition.clone(), dataset::to_batch(&rows)?);
        }
        writer.flush_named(&format!("{chain}-{}", from + 1))?;
        Ok((last, rows.len()))
    }

    /// Rotates the key of each chain held here that `gaveurs ledger rotate-key` asked for.
    fn take_rotation_requests(&self) {
        {
            let mut last = self.last_requests_look.lock();
            if last.elapsed() < REQUESTS_EVERY {
                return;
            }
            *last = Instant::now();
        }
        let mut state = self.state.lock();
        for shard in state.shards.values_mut().filter(|s| !s.halted) {
            let chain = shard.writer.name().to_string();
            let request = rotation_request(self.keys.dir(), &chain);
            if !request.exists() {
                continue;
            }
            let previous = shard.writer.key_id().to_string();
            match shard.writer.rotate(&self.keys, now()) {
                Ok(entry) => {
                    tracing::info!(target: "ledger", chain, seq = entry.seq, previous_key_id = %previous, key_id = %shard.writer.key_id(), "signing key rotated");
                }
                Err(e) => {
                    tracing::error!(target: "ledger", chain, error = %format!("{e:#}"), "signing key not rotated");
                }
            }
            if let Err(e) = std::fs::remove_file(&request) {
                tracing::error!(target: "ledger", chain, error = %e, request = %request.display(), "a rotation request could not be removed");
            }
        }
    }
}

/// The Kafka source tells the desk which partitions this instance owns: each has its chain.
impl PartitionState for LedgerDesk {
    fn taken(&self, topic: &str, partition: i32) -> Option<i64> {
        let chain = partition_chain(topic, partition);
        let state_dir = self
            .paths
            .shards
            .join(Shard::folder(topic, partition))
            .join("ledger");
        // The previous owner lets go of the chain when it hands the partition over.
        let deadline = Instant::now() + TAKE_WAIT;
        let opened = loop {
            match ShardLedger::open(
                &self.paths.ledger_dir,
                &chain,
                &self.keys,
                state_dir.clone(),
                Snapshot::default(),
                false,
            ) {
                Ok(shard) => break Ok(shard),
                Err(e) if Instant::now() >= deadline => break Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let shard = match opened {
            Ok(shard) => shard,
            Err(e) => {
                // Its records are not chained here; its state still says where they begin,
                // so its next owner re-reads them.
                tracing::error!(target: "ledger", topic, partition, chain, error = %format!("{e:#}"), "a partition's ledger chain could not be taken; its records are not chained by this instance");
                return None;
            }
        };
        let next = shard.snapshot.kafka_offset.map(|o| o + 1);
        tracing::info!(target: "ledger", topic, partition, chain, head_seq = shard.writer.next_seq() - 1, derived_through = ?shard.snapshot.kafka_offset, "partition's ledger chain taken");
        self.state.lock().shards.insert(
            Shard::Kafka {
                topic: topic.to_string(),
                partition,
            },
            shard,
        );
        next
    }

    fn offsets_reset(&self, topic: &str, partition: i32) {
        let shard = Shard::Kafka {
            topic: topic.to_string(),
            partition,
        };
        if let Some(shard) = self.state.lock().shards.get_mut(&shard) {
            shard.snapshot.kafka_offset = None;
            shard.unsaved = true;
        }
    }

    fn released(&self, topic: &str, partition: i32, through: u64, wait: Duration) {
        let shard = Shard::Kafka {
            topic: topic.to_string(),
            partition,
        };
        // What this instance consumed of the partition is chained first (within `wait`), so
        // the next owner re-reads as little as possible.
        let deadline = Instant::now() + wait;
        {
            let mut state = self.state.lock();
            while state.shards[&Shard::Local].snapshot.through_lsn < through {
                if self.progressed.wait_until(&mut state, deadline).timed_out() {
                    break;
                }
            }
        }
        LogDesk::publish(self);
        if let Err(e) = self.save() {
            tracing::error!(target: "ledger", topic, partition, error = %e, "a partition's ledger state was not saved at hand-over; the next owner re-reads more");
        }
        // Dropping its writer lets go of the chain.
        if let Some(released) = self.state.lock().shards.remove(&shard) {
            tracing::info!(target: "ledger", topic, partition, chain = released.writer.name(), head_seq = released.writer.next_seq() - 1, derived_through = ?released.snapshot.kafka_offset, "partition's ledger chain handed over");
        }
    }
}

/// An entry as a `ledger` row, and its partition (the date of its time, its lot's site).
fn ledger_row(entry: &super::entry::Entry) -> anyhow::Result<(Partition, LedgerRow)> {
    let time = DateTime::parse_from_rfc3339(&entry.time)
        .with_context(|| format!("entry {} has the time {:?}", entry.seq, entry.time))?
        .with_timezone(&Utc);
    let mut payload = Vec::new();
    super::entry::write_canonical(&mut payload, &entry.payload);
    let site = entry
        .payload
        .get("site")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("-")
        .to_string();
    Ok((
        Partition {
            date: time.date_naive(),
            site,
        },
        LedgerRow {
            chain: entry.chain.clone(),
            seq: entry.seq as i64,
            time: time.timestamp_micros(),
            kind: entry.kind.as_str().to_string(),
            code_lot: entry.code_lot.clone(),
            device_id: entry.device_id.clone(),
            payload: String::from_utf8(payload)?,
            prev: entry.prev.clone(),
            hash: entry.hash.clone(),
            key: entry.key.clone(),
            sig: entry.sig.clone(),
        },
    ))
}

pub fn spawn(
    desk: Arc<LedgerDesk>,
    cursor: LogCursor,
    publish_every: Duration,
) -> std::io::Result<JoinHandle<anyhow::Result<()>>> {
    crate::log_desk::spawn("ledger", desk, cursor, publish_every)
}

impl LogDesk for LedgerDesk {
    fn set_checkpointer(&self, checkpointer: Checkpointer) {
        let _ = self.checkpoint.set(checkpointer);
    }

    fn save_every(&self) -> Duration {
        self.save_every
    }

    fn process(&self, batch: &[Committed], read_through: u64) {
        // Read once per batch, as the alert desk does: a swap takes effect between batches.
        let models = self.models.as_ref().map(ModelSlot::current);
        {
            let mut state = self.state.lock();
            let state = &mut *state;
            for committed in batch {
                let (WalEntry::Event(logged) | WalEntry::Reread(logged)) = committed.entry.as_ref()
                else {
                    continue;
                };
                let (shard_id, offset) = Shard::of(&committed.entry);
                // A partition another instance owns now is that instance's to chain.
                let Some(shard) = state.shards.get_mut(&shard_id) else {
                    continue;
                };
                if shard.halted {
                    continue;
                }
                let snapshot = &mut shard.snapshot;
                if !Shard::is_new(
                    committed,
                    offset,
                    snapshot.through_lsn,
                    snapshot.kafka_offset,
                ) {
                    continue;
                }
                if let (false, Some(offset)) = (shard.anchored, offset) {
                    shard.anchor(offset);
                    if shard.halted {
                        continue;
                    }
                }
                let snapshot = &mut shard.snapshot;
                snapshot.tallies.derive(
                    &state.rules,
                    models.as_deref(),
                    logged,
                    &mut shard.derived,
                );
                if offset.is_some() {
                    snapshot.kafka_offset = offset;
                }
                shard.unsaved = true;
            }

            for shard in state.shards.values_mut() {
                shard.chain_derived(&mut state.counters);
                state.counters.lots_forgotten +=
                    shard.snapshot.tallies.forget_beyond(self.max_lots);
            }
            let local = state
                .shards
                .get_mut(&Shard::Local)
                .expect("this instance's chain is always here");
            if !local.halted && read_through > local.snapshot.through_lsn {
                local.snapshot.through_lsn = read_through;
                local.unsaved = true;
            }
        }
        self.progressed.notify_all();
    }

    fn save_if_due(&self, force: bool) {
        let due = {
            let state = self.state.lock();
            state.shards.values().any(|s| s.unsaved)
                && (force || state.last_saved.elapsed() >= self.save_every)
        };
        if due && let Err(e) = self.save() {
            tracing::error!(target: "ledger", error = %e, "ledger state not saved; the log (or Kafka) keeps the records it would need again");
        }
    }

    /// Mirrors each chain's entries after its last published one in the `ledger` dataset.
    /// The files are named after their chain and first entry, so a crash between writing
    /// them and saving the new position (or a partition's new owner) writes the same names
    /// again: replaced, never doubled.
    fn publish(&self) {
        let work: Vec<(Shard, String, u64)> = {
            let state = self.state.lock();
            state
                .shards
                .iter()
                .filter(|(_, s)| !s.halted && s.writer.next_seq() - 1 > s.snapshot.published_seq)
                .map(|(id, s)| {
                    (
                        id.clone(),
                        s.writer.name().to_string(),
                        s.snapshot.published_seq,
                    )
                })
                .collect()
        };
        for (shard_id, chain, from) in work {
            match self.publish_chain(&chain, from) {
                Ok((last, rows)) => {
                    let mut state = self.state.lock();
                    if let Some(shard) = state.shards.get_mut(&shard_id) {
                        shard.snapshot.published_seq = last;
                        shard.unsaved = true;
                    }
                    drop(state);
                    tracing::debug!(target: "storage", chain, rows, through_seq = last, "ledger entries published");
                }
                Err(e) => {
                    tracing::error!(target: "storage", chain, error = %format!("{e:#}"), "ledger entries not mirrored in the ledger dataset; they are written again later");
                }
            }
        }
    }

    /// A line a minute while entries are appended, so `ledger.log` shows them.
    fn after_turn(&self) {
        self.take_rotation_requests();
        let appended = self.counters().appended;
        let mut last = self.last_report.lock();
        if last.0.elapsed() >= REPORT_EVERY && appended > last.1 {
            let chains = self.chains().join(",");
            tracing::info!(target: "ledger", appended = appended - last.1, seconds = last.0.elapsed().as_secs(), chains, "entries appended");
            *last = (Instant::now(), appended);
        }
    }

    fn stopped(&self, ended: LogEnded) {
        let counters = self.counters();
        let chains = self.chains().join(",");
        tracing::info!(target: "ledger", appended = counters.appended, skipped_as_chained = counters.skipped_as_chained, lots_forgotten = counters.lots_forgotten, chains, caught_up = (ended == LogEnded::Closed), "ledger stopped");
    }
}
