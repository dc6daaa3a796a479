//! The ledger desk: a consumer of the durable log that turns records into lot events and
//! appends them to the chain.
//!
//! Events are derived from the records alone, in log order, so the same records give the
//! same events. The desk saves its lot tallies with the log position they cover and the
//! chain's head at that moment; after a crash it derives again from the saved position and
//! skips the events the chain already holds past the saved head (the chain is fsynced before
//! anything else sees an entry, so it is never behind what was exposed). Nothing is skipped
//! or chained twice.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;

use anyhow::Context;
use gaveurs_schemas::datasets::Partition;
use gaveurs_schemas::datasets::ledger::{self as dataset, LedgerRow};
use gaveurs_schemas::records::{GavageMeal, LotOutcome, Record, SqalSample};
use gaveurs_sinks::fsutil::{create_dir_durable, write_atomic};
use gaveurs_sinks::parquet::derived::DerivedWriter;
use gaveurs_sinks::wal::{Checkpointer, Committed, LogCursor, LogEnded, WalEntry};

use super::chain::{ChainWriter, Opened, entries_after};
use super::entry::{EntryKind, Event};
use super::keys::KeyStore;
use crate::log_desk::LogDesk;

const STATE_FILE: &str = "state.json";
/// How often `ledger.log` says how many entries were appended.
const REPORT_EVERY: Duration = Duration::from_secs(60);
/// The chain without Kafka partitions.
pub const LOCAL_CHAIN: &str = "local";

/// `[ledger]`: the traceability ledger (SPEC §8).
///
/// ```toml
/// [ledger]
/// enabled = true
/// keys_dir = "data/keys/ledger"   # default: <data_dir>/keys/ledger
/// max_lots = 100000
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    pub enabled: bool,
    /// Where the signing keys are kept (mode 0600 files); default `<data_dir>/keys/ledger`.
    pub keys_dir: Option<PathBuf>,
    /// Lots whose tallies are kept (default 100000); past it the least recently heard of
    /// are forgotten, and a forgotten lot that comes back starts a new tally (its entries
    /// say so: `lot_started` again).
    pub max_lots: usize,
    /// How often the desk's state is saved while records flow (default 1000 ms).
    pub state_save_interval_ms: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            keys_dir: None,
            max_lots: 100_000,
            state_save_interval_ms: 1000,
        }
    }
}

/// A lot as the ledger follows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct LotTally {
    /// Its first meal is chained (a lot's SQAL samples may come first).
    started: bool,
    /// Its site, as its meals, outcome or samples say.
    site: Option<String>,
    /// The feeding day not yet closed.
    day: Option<DayTally>,
    /// Maize eaten per duck over the lot's meals so far (g).
    total_reel_g: f64,
    sqal_samples: u64,
    sqal_compliant: u64,
    sqal_grades: BTreeMap<String, u64>,
    last_heard: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DayTally {
    jour: i64,
    meals: u64,
    theorique_g: f64,
    reelle_g: f64,
    poids_moyen_g: Option<f64>,
    taux_mortalite: Option<f64>,
    last_time: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Snapshot {
    /// Every log entry up to here is derived.
    through_lsn: u64,
    /// The chain's last entry when the state was saved.
    chain_seq: u64,
    /// The last entry mirrored in the `ledger` dataset.
    #[serde(default)]
    published_seq: u64,
    lots: HashMap<String, LotTally>,
}

/// What the desk counted since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerCounters {
    pub appended: u64,
    /// Events already in the chain when the desk derived them again after a crash.
    pub skipped_as_chained: u64,
    pub lots_forgotten: u64,
}

struct State {
    snapshot: Snapshot,
    unsaved: bool,
    last_saved: Instant,
    counters: LedgerCounters,
    /// Events to drop because the chain already holds them (derived before a crash).
    already_chained: u64,
    /// Appending failed: nothing more is derived until a restart re-reads the log from the
    /// saved position.
    halted: bool,
}

/// Where the desk reads and writes.
pub struct LedgerPaths {
    /// `data_dir/ledger`: the chains.
    pub ledger_dir: PathBuf,
    /// This instance's saved state.
    pub state_dir: PathBuf,
    /// `data_dir/parquet`, for the `ledger` dataset.
    pub parquet_root: PathBuf,
    pub instance_id: String,
}

pub struct LedgerDesk {
    state: Mutex<State>,
    writer: Mutex<ChainWriter>,
    chain: String,
    chain_dir: PathBuf,
    parquet_root: PathBuf,
    instance_id: String,
    state_dir: PathBuf,
    max_lots: usize,
    save_every: Duration,
    saving: Mutex<()>,
    checkpoint: OnceLock<Checkpointer>,
    /// When `ledger.log` last reported, and the count then.
    last_report: Mutex<(Instant, u64)>,
}

impl LedgerDesk {
    /// Opens the chain (its genesis on a first start) and the saved state.
    /// `published_through`: where a first start begins (records of earlier runs are not
    /// chained).
    pub fn open(
        config: &LedgerConfig,
        chain: &str,
        keys: &KeyStore,
        paths: LedgerPaths,
        published_through: u64,
    ) -> anyhow::Result<Arc<LedgerDesk>> {
        let LedgerPaths {
            ledger_dir,
            state_dir,
            parquet_root,
            instance_id,
        } = paths;
        let (writer, opened) = ChainWriter::open(&ledger_dir, chain, keys)?;
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
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a ledger state ({e}); move it away to chain from the log's published position",
                    path.display()
                )
            })?,
            // Saved at once, so a crash before the first periodic save still finds where
            // this run's entries began.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let first = Snapshot {
                    through_lsn: published_through,
                    chain_seq: head,
                    published_seq: 0,
                    lots: HashMap::new(),
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
            "the ledger state ({}) has seen entry {} but the chain ends at {head}: entries were removed; run `gaveurs ledger verify`",
            path.display(),
            snapshot.chain_seq
        );
        // Key entries are not derived from records: only lot events are derived again.
        let already_chained = entries_after(&ledger_dir.join(chain), snapshot.chain_seq)?
            .iter()
            .filter(|e| !matches!(e.kind, EntryKind::Genesis | EntryKind::KeyRotated))
            .count() as u64;
        if already_chained > 0 {
            tracing::info!(target: "ledger", already_chained, from_seq = snapshot.chain_seq, "events chained after the last save are derived again and not chained twice");
        }
        Ok(Arc::new(LedgerDesk {
            state: Mutex::new(State {
                snapshot,
                unsaved: false,
                last_saved: Instant::now(),
                counters: LedgerCounters::default(),
                already_chained,
                halted: false,
            }),
            writer: Mutex::new(writer),
            chain: chain.to_string(),
            chain_dir: ledger_dir.join(chain),
            parquet_root,
            instance_id,
            state_dir,
            max_lots: config.max_lots.max(1),
            save_every: Duration::from_millis(config.state_save_interval_ms.max(1)),
            saving: Mutex::new(()),
            checkpoint: OnceLock::new(),
            last_report: Mutex::new((Instant::now(), 0)),
        }))
    }

    pub fn saved_through(&self) -> u64 {
        self.state.lock().snapshot.through_lsn
    }

    pub fn counters(&self) -> LedgerCounters {
        self.state.lock().counters
    }

    fn process(&self, batch: &[Committed], read_through: u64) {
        let mut state = self.state.lock();
        if state.halted {
            return;
        }
        let state = &mut *state;
        let mut events = Vec::new();
        for committed in batch {
            let WalEntry::Event(event) = committed.entry.as_ref() else {
                continue;
            };
            if committed.lsn <= state.snapshot.through_lsn {
                continue;
            }
            let lots = &mut state.snapshot.lots;
            match &event.record {
                Record::Gavage(meal) => on_meal(lots, meal, &mut events),
                Record::LotOutcome(outcome) => on_outcome(lots, outcome, &mut events),
                Record::Sqal(sample) => on_sample(lots, sample, &mut events),
            }
        }
        let skip = (state.already_chained as usize).min(events.len());
        state.already_chained -= skip as u64;
        state.counters.skipped_as_chained += skip as u64;
        let fresh: Vec<Event> = events.into_iter().skip(skip).collect();
        if !fresh.is_empty() {
            let mut writer = self.writer.lock();
            match writer.append(fresh) {
                Ok(entries) => {
                    state.counters.appended += entries.len() as u64;
                    if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
                        tracing::debug!(target: "ledger", from_seq = first.seq, to_seq = last.seq, head = %last.hash, "entries appended");
                    }
                }
                Err(e) => {
                    // The lots' tallies moved past events the chain does not hold: stop
                    // here, keep the saved state, and let a restart derive them again.
                    state.halted = true;
                    tracing::error!(target: "ledger", error = %format!("{e:#}"), "ledger append failed; the ledger stops until a restart, which derives the missing entries again from the log");
                    return;
                }
            }
        }
        state.counters.lots_forgotten += forget_beyond(&mut state.snapshot.lots, self.max_lots);
        if read_through > state.snapshot.through_lsn {
            state.snapshot.through_lsn = read_through;
            state.unsaved = true;
        }
    }

    fn save(&self) -> std::io::Result<()> {
        let _one_writer = self.saving.lock();
        let (bytes, through) = {
            let mut state = self.state.lock();
            if !state.unsaved || state.halted {
                return Ok(());
            }
            // Under the state lock no batch is half appended: the head is the one the
            // tallies and the position describe.
            state.snapshot.chain_seq = self.writer.lock().next_seq() - 1;
            let bytes = serde_json::to_vec(&state.snapshot).map_err(std::io::Error::other)?;
            state.unsaved = false;
            state.last_saved = Instant::now();
            (bytes, state.snapshot.through_lsn)
        };
        let written = create_dir_durable(&self.state_dir)
            .and_then(|()| write_atomic(&self.state_dir.join(STATE_FILE), &bytes));
        if let Err(e) = written {
            self.state.lock().unsaved = true;
            return Err(e);
        }
        if let Some(checkpoint) = self.checkpoint.get() {
            checkpoint.checkpoint(through);
        }
        Ok(())
    }

    fn save_if_due(&self, force: bool) {
        let due = {
            let state = self.state.lock();
            state.unsaved && (force || state.last_saved.elapsed() >= self.save_every)
        };
        if due && let Err(e) = self.save() {
            tracing::error!(target: "ledger", error = %e, "ledger state not saved; the log keeps the records it would need again");
        }
    }
}

impl LedgerDesk {
    /// Mirrors the entries after the last published one in the `ledger` dataset. The files
    /// are named after the first entry they hold, so a crash between writing them and saving
    /// the new position writes the same names again: replaced, never doubled.
    fn publish(&self) {
        let from = {
            let state = self.state.lock();
            if state.halted {
                return;
            }
            state.snapshot.published_seq
        };
        if self.writer.lock().next_seq() - 1 <= from {
            return;
        }
        let written = (|| -> anyhow::Result<(u64, usize)> {
            let entries = entries_after(&self.chain_dir, from)?;
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
            let mut writer =
                DerivedWriter::new(self.parquet_root.clone(), self.instance_id.clone());
            for (partition, rows) in by_partition {
                writer.append(dataset::NAME, partition.clone(), dataset::to_batch(&rows)?);
            }
            writer.flush_named(&format!("ledger-{}-{}", self.chain, from + 1))?;
            Ok((last, rows.len()))
        })();
        match written {
            Ok((last, rows)) => {
                let mut state = self.state.lock();
                state.snapshot.published_seq = last;
                state.unsaved = true;
                drop(state);
                tracing::debug!(target: "storage", rows, through_seq = last, "ledger entries published");
            }
            Err(e) => {
                tracing::error!(target: "storage", error = %format!("{e:#}"), "ledger entries not mirrored in the ledger dataset; they are written again later");
            }
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

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Rounded so an entry reads well; the same sums always round the same.
fn round(value: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (value * p).round() / p
}

fn close_day(code_lot: &str, site: Option<&str>, day: DayTally, events: &mut Vec<Event>) {
    let ecart_pct = (day.theorique_g > 0.0).then(|| {
        round(
            (day.reelle_g - day.theorique_g) / day.theorique_g * 100.0,
            2,
        )
    });
    events.push(Event {
        time: time(&day.last_time),
        kind: EntryKind::DayClosed,
        code_lot: Some(code_lot.to_string()),
        device_id: None,
        payload: json!({
            "site": site,
            "jour": day.jour,
            "repas": day.meals,
            "dose_theorique_g": round(day.theorique_g, 3),
            "dose_reelle_g": round(day.reelle_g, 3),
            "ecart_pct": ecart_pct,
            "poids_moyen_g": day.poids_moyen_g,
            "taux_mortalite": day.taux_mortalite,
        }),
    });
}

fn on_meal(lots: &mut HashMap<String, LotTally>, meal: &GavageMeal, events: &mut Vec<Event>) {
    let lot = lots.entry(meal.code_lot.clone()).or_default();
    lot.last_heard = Some(meal.timestamp);
    lot.site = Some(meal.site.as_str().to_string());
    if !lot.started {
        lot.started = true;
        events.push(Event {
            time: time(&meal.timestamp),
            kind: EntryKind::LotStarted,
            code_lot: Some(meal.code_lot.clone()),
            device_id: None,
            payload: json!({
                "gaveur_id": meal.gaveur_id,
                "site": meal.site.as_str(),
                "genetique": meal.genetique,
                "jour": meal.jour,
                "moment": meal.moment.as_str(),
            }),
        });
    }
    // A meal of a day already closed stays out of the ledger's days (its record is in the
    // log and the datasets); it still counts in the lot's maize.
    lot.total_reel_g += meal.dose_reelle;
    match &mut lot.day {
        Some(day) if day.jour > meal.jour => return,
        Some(day) if day.jour == meal.jour => {
            day.meals += 1;
            day.theorique_g += meal.dose_theorique;
            day.reelle_g += meal.dose_reelle;
            day.poids_moyen_g = meal.poids_moyen.or(day.poids_moyen_g);
            day.taux_mortalite = meal.taux_mortalite.or(day.taux_mortalite);
            day.last_time = day.last_time.max(meal.timestamp);
            return;
        }
        _ => {}
    }
    if let Some(previous) = lot.day.take() {
        close_day(&meal.code_lot, lot.site.as_deref(), previous, events);
    }
    lot.day = Some(DayTally {
        jour: meal.jour,
        meals: 1,
        theorique_g: meal.dose_theorique,
        reelle_g: meal.dose_reelle,
        poids_moyen_g: meal.poids_moyen,
        taux_mortalite: meal.taux_mortalite,
        last_time: meal.timestamp,
    });
}

fn on_outcome(lots: &mut HashMap<String, LotTally>, outcome: &LotOutcome, events: &mut Vec<Event>) {
    let lot = lots.entry(outcome.code_lot.clone()).or_default();
    lot.last_heard = Some(outcome.event_time);
    lot.site = Some(outcome.site.as_str().to_string());
    if let Some(day) = lot.day.take() {
        close_day(&outcome.code_lot, lot.site.as_deref(), day, events);
    }
    let pertes_pct = (outcome.nb_canards_mis_en_gavage > 0).then(|| {
        round(
            (outcome.nb_canards_mis_en_gavage - outcome.nb_canards_accroches) as f64
                / outcome.nb_canards_mis_en_gavage as f64
                * 100.0,
            2,
        )
    });
    let total = (lot.total_reel_g > 0.0).then_some(round(lot.total_reel_g, 3));
    let itm = match (total, outcome.poids_foie_moyen_g) {
        (Some(total), Some(liver)) if liver > 0.0 => Some(round(total / liver, 2)),
        _ => None,
    };
    events.push(Event {
        time: time(&outcome.event_time),
        kind: EntryKind::LotFinished,
        code_lot: Some(outcome.code_lot.clone()),
        device_id: None,
        payload: json!({
            "gaveur_id": outcome.gaveur_id,
            "site": outcome.site.as_str(),
            "date_fin": outcome.date_fin.to_string(),
            "nb_canards_mis_en_gavage": outcome.nb_canards_mis_en_gavage,
            "nb_canards_accroches": outcome.nb_canards_accroches,
            "pertes_pct": pertes_pct,
            "poids_foie_moyen_g": outcome.poids_foie_moyen_g,
            "total_mais_reel_g": total,
            "itm": itm,
        }),
    });
}

fn on_sample(lots: &mut HashMap<String, LotTally>, sample: &SqalSample, events: &mut Vec<Event>) {
    // A sample that names no lot is a station's control, not a lot's: it is not chained.
    let Some(code_lot) = &sample.code_lot else {
        return;
    };
    let lot = lots.entry(code_lot.clone()).or_default();
    lot.last_heard = Some(
        lot.last_heard
            .map_or(sample.timestamp, |t| t.max(sample.timestamp)),
    );
    lot.sqal_samples += 1;
    lot.sqal_compliant += u64::from(sample.is_compliant);
    *lot.sqal_grades
        .entry(sample.grade.as_str().to_string())
        .or_default() += 1;
    events.push(Event {
        time: time(&sample.timestamp),
        kind: EntryKind::SqalControl,
        code_lot: Some(code_lot.clone()),
        device_id: Some(sample.device_id.clone()),
        payload: json!({
            "site": sample.site_code.as_str(),
            "sample_id": sample.sample_id,
            "grade": sample.grade.as_str(),
            "is_compliant": sample.is_compliant,
            "final_score": sample.final_score,
            "lot_samples": lot.sqal_samples,
            "lot_compliant": lot.sqal_compliant,
            "lot_grades": lot.sqal_grades,
        }),
    });
}

/// Past `max`, forgets the least recently heard of lots down to 90 % of it.
fn forget_beyond(lots: &mut HashMap<String, LotTally>, max: usize) -> u64 {
    if lots.len() <= max {
        return 0;
    }
    let keep = max - max / 10;
    let mut heard: Vec<(Option<DateTime<Utc>>, String)> = lots
        .iter()
        .map(|(code, lot)| (lot.last_heard, code.clone()))
        .collect();
    let cut = heard.len() - keep;
    heard.select_nth_unstable(cut - 1);
    for (_, code) in &heard[..cut] {
        lots.remove(code);
    }
    cut as u64
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
        LedgerDesk::process(self, batch, read_through);
    }

    fn save_if_due(&self, force: bool) {
        LedgerDesk::save_if_due(self, force);
    }

    fn publish(&self) {
        LedgerDesk::publish(self);
    }

    /// A line a minute while entries are appended, so `ledger.log` shows them.
    fn after_turn(&self) {
        let appended = self.counters().appended;
        let mut last = self.last_report.lock();
        if last.0.elapsed() >= REPORT_EVERY && appended > last.1 {
            let head = self.writer.lock().next_seq() - 1;
            tracing::info!(target: "ledger", appended = appended - last.1, seconds = last.0.elapsed().as_secs(), head_seq = head, "entries appended");
            *last = (Instant::now(), appended);
        }
    }

    fn stopped(&self, ended: LogEnded) {
        let counters = self.counters();
        let head = self.writer.lock().next_seq() - 1;
        tracing::info!(target: "ledger", appended = counters.appended, skipped_as_chained = counters.skipped_as_chained, lots_forgotten = counters.lots_forgotten, head_seq = head, caught_up = (ended == LogEnded::Closed), "ledger stopped");
    }
}
