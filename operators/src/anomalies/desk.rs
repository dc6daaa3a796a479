//! Runs anomaly scoring as a consumer of the durable log: every gavage meal is scored, in
//! log order, against its lot's track (`meal_model`), and every SQAL sample against its
//! station's (`sqal_model`); a record at or above its model's threshold becomes an
//! [`Anomaly`] — a row of the `anomalies` dataset, an `anomalie` message on its gaveur's
//! channel (a sample's gaveur is its lot's, when the sample names a lot the desk has seen
//! fed) and an `alert` (`alert_type: "anomalie"`) on the dashboards.
//!
//! Its state (`instances/<id>/anomalies/state.json`) holds the lots' and stations' tracks, how far in the
//! log they reach, and the anomalies not yet in a published file. After a crash the records
//! since the last save are scored again from the same tracks, so they give the same
//! anomalies; the `anomalies` files are written only after a save that lists their rows,
//! under names fixed by that save (`<instance>-anomalies-<seq>`), so writing them again
//! replaces them instead of adding a copy. The model is read once per batch: a model swapped
//! meanwhile scores from the next batch on, and no record is scored by both.
//!
//! Records a Kafka partition brings are scored by the instance that logs them; a lot whose
//! partition moves to another instance is met there without its track and scored by the
//! cold models (what a lot met half-way gets), not from its history.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use gaveurs_schemas::anomaly::Anomaly;
use gaveurs_schemas::datasets::anomalies as dataset;
use gaveurs_schemas::event::Event;
use gaveurs_schemas::records::{GavageMeal, Record, Site, SqalSample as SampleRecord};
use gaveurs_sinks::fsutil::{create_dir_durable, write_atomic};
use gaveurs_sinks::parquet::derived::DerivedWriter;
use gaveurs_sinks::wal::{Checkpointer, Committed, LogCursor, LogEnded, WalEntry};
use gaveurs_sinks::websocket::Hub;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Models;
use super::meal_model::{LotTrack, MODEL_NAME, MealFacts, MealModel};
use super::sqal_model::{self, DeviceTrack, SqalModel};
use crate::log_desk::LogDesk;

const STATE_FILE: &str = "state.json";
/// How often `ml.log` says how many meals were scored.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// The models the desk scores with, swapped whole.
#[derive(Clone)]
pub struct ModelSlot(Arc<RwLock<Arc<Models>>>);

impl ModelSlot {
    pub fn new(models: Models) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(models))))
    }

    pub fn current(&self) -> Arc<Models> {
        self.0.read().clone()
    }

    /// Puts `models` in place; returns those it replaced.
    pub fn swap(&self, models: Models) -> Arc<Models> {
        std::mem::replace(&mut *self.0.write(), Arc::new(models))
    }
}

/// A lot's track, its gaveur, and when it was last fed (event time), to forget quiet lots.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tracked {
    track: LotTrack,
    last_seen: DateTime<Utc>,
    #[serde(default)]
    gaveur_id: Option<i64>,
}

/// A station's track and when it last measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Station {
    track: DeviceTrack,
    last_seen: DateTime<Utc>,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoringCounters {
    pub scored: u64,
    pub anomalies: u64,
    /// Lots forgotten to keep within `max_lots`.
    pub lots_forgotten: u64,
    /// SQAL samples scored, and those found anomalous.
    pub samples_scored: u64,
    pub sample_anomalies: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct Snapshot {
    /// Every log entry up to here is reflected in `lots` and `pending`.
    through_lsn: u64,
    /// Names the next `anomalies` files.
    publish_seq: u64,
    /// Anomalies not yet in a published file.
    pending: Vec<Anomaly>,
    lots: HashMap<String, Tracked>,
    /// Written by versions that score SQAL samples; empty in older states.
    #[serde(default)]
    stations: HashMap<String, Station>,
}

struct State {
    snapshot: Snapshot,
    unsaved: bool,
    last_saved: Instant,
    counters: ScoringCounters,
}

/// Where the desk writes.
pub struct ScoringOutputs {
    pub hub: Arc<Hub>,
    /// `data_dir/parquet`.
    pub parquet_root: PathBuf,
    /// `instances/<id>/anomalies`.
    pub state_dir: PathBuf,
    pub instance_id: String,
}

pub struct AnomalyDesk {
    state: Mutex<State>,
    models: ModelSlot,
    outputs: ScoringOutputs,
    max_lots: usize,
    save_every: Duration,
    saving: Mutex<()>,
    checkpoint: OnceLock<Checkpointer>,
    /// When `ml.log` last said how many meals were scored, and the counts then.
    last_report: Mutex<(Instant, ScoringCounters)>,
}

impl AnomalyDesk {
    /// Opens the desk on its saved state; without one (a first start, or an upgrade from a
    /// version that did not score), scoring starts after `published_through`.
    pub fn open(
        models: ModelSlot,
        outputs: ScoringOutputs,
        published_through: u64,
        max_lots: usize,
        save_every: Duration,
    ) -> anyhow::Result<Arc<AnomalyDesk>> {
        let path = outputs.state_dir.join(STATE_FILE);
        let snapshot = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not an anomaly state ({e}); move it away to score from the log's start",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot {
                through_lsn: published_through,
                ..Snapshot::default()
            },
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        };
        Ok(Arc::new(AnomalyDesk {
            state: Mutex::new(State {
                snapshot,
                unsaved: false,
                last_saved: Instant::now(),
                counters: ScoringCounters::default(),
            }),
            models,
            outputs,
            max_lots: max_lots.max(1),
            save_every,
            saving: Mutex::new(()),
            checkpoint: OnceLock::new(),
            last_report: Mutex::new((Instant::now(), ScoringCounters::default())),
        }))
    }

    /// Every log entry up to here is scored in the saved state.
    pub fn saved_through(&self) -> u64 {
        self.state.lock().snapshot.through_lsn
    }

    pub fn counters(&self) -> ScoringCounters {
        self.state.lock().counters
    }

    pub fn models(&self) -> &ModelSlot {
        &self.models
    }

    /// Loads the models `config` names and swaps them in; a model that does not load is
    /// refused with its reason, and the running ones stay.
    pub fn reload(&self, config: &super::MlConfig, base: &std::path::Path, why: &str) -> bool {
        match config.models(base) {
            Ok(models) => {
                let running = self.models.current();
                if *running == models {
                    return false;
                }
                let (meal, sqal) = (models.meal.version.clone(), models.sqal.version.clone());
                let (meal_threshold, sqal_threshold) =
                    (models.meal.threshold, models.sqal.threshold);
                let previous = self.models.swap(models);
                tracing::info!(target: "ml", previous = %previous.meal.version, version = %meal, threshold = meal_threshold, previous_sqal = %previous.sqal.version, sqal_version = %sqal, sqal_threshold, why, "models swapped");
                true
            }
            Err(e) => {
                let running = self.models.current();
                tracing::error!(target: "ml", error = %format!("{e:#}"), why, running = %running.meal.version, running_sqal = %running.sqal.version, "model refused; the running models stay");
                false
            }
        }
    }

    /// Scores one batch of committed entries in log order, then pushes what it found.
    fn process(&self, batch: &[Committed], read_through: u64) {
        let models = self.models.current();
        let found = {
            let mut state = self.state.lock();
            let state = &mut *state;
            let mut found = Vec::new();
            for committed in batch {
                // A re-read Kafka record is already scored: it is logged again for the
                // alerts of its partition alone.
                let WalEntry::Event(event) = committed.entry.as_ref() else {
                    continue;
                };
                if committed.lsn <= state.snapshot.through_lsn {
                    continue;
                }
                match &event.record {
                    Record::Gavage(meal) => {
                        state.counters.scored += 1;
                        if let Some(anomaly) =
                            score_meal(&models.meal, &mut state.snapshot, event, meal)
                        {
                            state.counters.anomalies += 1;
                            found.push(anomaly);
                        }
                    }
                    Record::LotOutcome(outcome) => {
                        state.snapshot.lots.remove(&outcome.code_lot);
                    }
                    Record::Sqal(sample) => {
                        state.counters.samples_scored += 1;
                        if let Some(anomaly) =
                            score_sample(&models.sqal, &mut state.snapshot, event, sample)
                        {
                            state.counters.sample_anomalies += 1;
                            found.push(anomaly);
                        }
                    }
                }
            }
            state.counters.lots_forgotten += forget_beyond(&mut state.snapshot.lots, self.max_lots);
            forget_beyond(&mut state.snapshot.stations, self.max_lots);
            state.snapshot.pending.extend(found.iter().cloned());
            if read_through > state.snapshot.through_lsn {
                state.snapshot.through_lsn = read_through;
                state.unsaved = true;
            }
            found
        };
        for anomaly in &found {
            self.deliver(anomaly);
        }
    }

    fn deliver(&self, anomaly: &Anomaly) {
        let lead = anomaly.explanation.first();
        tracing::info!(
            target: "ml",
            model = %anomaly.model,
            model_version = %anomaly.model_version,
            code_lot = anomaly.code_lot.as_deref().unwrap_or(""),
            device_id = anomaly.device_id.as_deref(),
            sample_id = anomaly.sample_id.as_deref(),
            jour = anomaly.jour,
            moment = anomaly.moment.map(|m| m.as_str()),
            score = anomaly.score,
            threshold = anomaly.threshold,
            feature = lead.map(|c| c.feature.as_str()),
            backfill = anomaly.envelope.backfill,
            "anomaly"
        );
        push_live(&self.outputs.hub, anomaly);
    }

    fn save(&self) -> std::io::Result<()> {
        let _one_writer = self.saving.lock();
        let (bytes, through) = {
            let mut state = self.state.lock();
            if !state.unsaved {
                return Ok(());
            }
            let bytes = serde_json::to_vec(&state.snapshot).map_err(std::io::Error::other)?;
            state.unsaved = false;
            state.last_saved = Instant::now();
            (bytes, state.snapshot.through_lsn)
        };
        let dir = &self.outputs.state_dir;
        let written =
            create_dir_durable(dir).and_then(|()| write_atomic(&dir.join(STATE_FILE), &bytes));
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
            tracing::error!(target: "ml", error = %e, "anomaly state not saved; the log keeps the records it would need again");
        }
    }

    /// Publishes the anomalies not yet in a file: saved first (listed in the state with the
    /// sequence number that names their files), written under those names, then forgotten
    /// in a second save.
    fn publish(&self) {
        let (pending, seq) = {
            let mut state = self.state.lock();
            if state.snapshot.pending.is_empty() {
                return;
            }
            state.unsaved = true;
            (state.snapshot.pending.clone(), state.snapshot.publish_seq)
        };
        if let Err(e) = self.save() {
            tracing::error!(target: "storage", error = %e, "anomalies not published; they stay in the anomaly state and are published later");
            return;
        }
        let written = (|| -> anyhow::Result<usize> {
            let mut by_partition: BTreeMap<_, Vec<&Anomaly>> = BTreeMap::new();
            for anomaly in &pending {
                by_partition
                    .entry(dataset::partition(anomaly))
                    .or_default()
                    .push(anomaly);
            }
            let mut writer = DerivedWriter::new(
                self.outputs.parquet_root.clone(),
                self.outputs.instance_id.clone(),
            );
            for (partition, anomalies) in by_partition {
                writer.append(dataset::NAME, partition, dataset::to_batch(&anomalies)?);
            }
            Ok(writer.flush_named(&format!("anomalies-{seq}"))?.rows)
        })();
        match written {
            Ok(rows) => {
                let mut state = self.state.lock();
                if state.snapshot.publish_seq == seq {
                    // Only appended to meanwhile, so what was published is the front.
                    state.snapshot.pending.drain(..pending.len());
                    state.snapshot.publish_seq = seq + 1;
                    state.unsaved = true;
                }
                drop(state);
                tracing::debug!(target: "storage", rows, "anomalies published");
            }
            Err(e) => {
                tracing::error!(target: "storage", error = %e, "anomalies not published; they stay in the anomaly state and are published later");
            }
        }
        if let Err(e) = self.save() {
            tracing::error!(target: "ml", error = %e, "anomaly state not saved after publishing; the same files are written again later");
        }
    }
}

/// Scores a meal and, above the threshold, makes it an anomaly.
fn score_meal(
    model: &MealModel,
    snapshot: &mut Snapshot,
    event: &Event,
    meal: &GavageMeal,
) -> Option<Anomaly> {
    let at = event.envelope.event_time;
    let tracked = snapshot
        .lots
        .entry(meal.code_lot.clone())
        .or_insert_with(|| Tracked {
            track: LotTrack::default(),
            last_seen: at,
            gaveur_id: None,
        });
    tracked.last_seen = tracked.last_seen.max(at);
    tracked.gaveur_id = Some(meal.gaveur_id);
    let facts = MealFacts::from(meal);
    let score = model.score(&mut tracked.track, &facts)?;
    (score.score >= model.threshold).then(|| Anomaly {
        model: MODEL_NAME.to_string(),
        model_version: model.version.clone(),
        code_lot: Some(meal.code_lot.clone()),
        jour: Some(meal.jour),
        moment: Some(meal.moment),
        device_id: None,
        sample_id: None,
        gaveur_id: Some(meal.gaveur_id),
        site: meal.site.as_str().to_string(),
        score: round(score.score),
        threshold: model.threshold,
        explanation: rounded(score.explanation()),
        envelope: event.envelope.clone(),
    })
}

/// Scores a SQAL sample against its station's track and, above the threshold, makes it an
/// anomaly.
fn score_sample(
    model: &SqalModel,
    snapshot: &mut Snapshot,
    event: &Event,
    sample: &SampleRecord,
) -> Option<Anomaly> {
    let at = event.envelope.event_time;
    let station = snapshot
        .stations
        .entry(sample.device_id.clone())
        .or_insert_with(|| Station {
            track: DeviceTrack::default(),
            last_seen: at,
        });
    station.last_seen = station.last_seen.max(at);
    let score = model.score(&mut station.track, sample);
    (score.score >= model.threshold).then(|| Anomaly {
        model: sqal_model::MODEL_NAME.to_string(),
        model_version: model.version.clone(),
        code_lot: sample.code_lot.clone(),
        jour: None,
        moment: None,
        device_id: Some(sample.device_id.clone()),
        sample_id: Some(sample.sample_id.clone()),
        gaveur_id: sample
            .code_lot
            .as_ref()
            .and_then(|lot| snapshot.lots.get(lot))
            .and_then(|tracked| tracked.gaveur_id),
        site: sample.site_code.as_str().to_string(),
        score: round(score.score),
        threshold: model.threshold,
        explanation: rounded(score.explanation),
        envelope: event.envelope.clone(),
    })
}

fn rounded(
    explanation: Vec<gaveurs_schemas::anomaly::Contribution>,
) -> Vec<gaveurs_schemas::anomaly::Contribution> {
    explanation
        .into_iter()
        .map(|mut c| {
            c.value = round(c.value);
            c.expected = round(c.expected);
            c.contribution = round(c.contribution);
            c
        })
        .collect()
}

/// Four decimals: enough to read, and the same digits whatever the platform's last bit.
fn round(value: f64) -> f64 {
    (value * 10_000.0).round() / 10_000.0
}

/// Something tracked, and when it was last heard of (event time).
trait LastSeen {
    fn last_seen(&self) -> DateTime<Utc>;
}

impl LastSeen for Tracked {
    fn last_seen(&self) -> DateTime<Utc> {
        self.last_seen
    }
}

impl LastSeen for Station {
    fn last_seen(&self) -> DateTime<Utc> {
        self.last_seen
    }
}

/// Keeps at most `max` lots (or stations): past it, the least recently heard of go (by event
/// time, then key, so a replay forgets the same ones).
fn forget_beyond<T: LastSeen>(lots: &mut HashMap<String, T>, max: usize) -> u64 {
    if lots.len() <= max {
        return 0;
    }
    // Down to 90 % at once, so a full table does not sort on every batch.
    let keep = max - max / 10;
    let forget = lots.len() - keep;
    let mut by_age: Vec<(DateTime<Utc>, &String)> = lots
        .iter()
        .map(|(code, tracked)| (tracked.last_seen(), code))
        .collect();
    // The `forget` oldest, without sorting the rest (keys are unique, so the set is fixed).
    by_age.select_nth_unstable(forget - 1);
    let oldest: Vec<String> = by_age[..forget]
        .iter()
        .map(|(_, code)| (*code).clone())
        .collect();
    for code in oldest {
        lots.remove(&code);
    }
    forget as u64
}

/// An anomaly on its gaveur's channel (`anomalie`) and on the site's dashboards, as the V3
/// dashboards know it: an `alert` whose `alert_type` is `anomalie`.
pub fn push_live(hub: &Hub, anomaly: &Anomaly) {
    let data = json!({
        "model": anomaly.model,
        "model_version": anomaly.model_version,
        "code_lot": anomaly.code_lot,
        "jour": anomaly.jour,
        "moment": anomaly.moment,
        "device_id": anomaly.device_id,
        "sample_id": anomaly.sample_id,
        "gaveur_id": anomaly.gaveur_id,
        "site": anomaly.site,
        "score": anomaly.score,
        "threshold": anomaly.threshold,
        "explanation": anomaly.explanation,
        "event_id": anomaly.envelope.event_id,
        "timestamp": anomaly.envelope.event_time,
        "backfill": anomaly.envelope.backfill,
    });
    if let Some(gaveur_id) = anomaly.gaveur_id {
        hub.publish_to_gaveur(gaveur_id, "anomalie", &data);
    }
    if let Some(site) = Site::parse(&anomaly.site) {
        let mut alert = data.clone();
        if let Value::Object(map) = &mut alert {
            map.insert("alert_type".into(), json!("anomalie"));
            map.insert("severity".into(), json!("warning"));
            map.insert("message".into(), json!(message(anomaly)));
        }
        hub.publish_site(
            "alert",
            site,
            anomaly.device_id.is_some(),
            anomaly.device_id.clone(),
            &alert,
        );
    }
}

fn message(anomaly: &Anomaly) -> String {
    let subject = match (&anomaly.code_lot, anomaly.jour, anomaly.moment) {
        (Some(lot), Some(jour), Some(moment)) => format!("lot {lot} jour {jour} {moment}"),
        _ => anomaly.device_id.clone().unwrap_or_default(),
    };
    match anomaly.explanation.first() {
        Some(lead) => format!(
            "anomalie {subject}: {} {} (attendu {}), score {:.1} ≥ {:.1}",
            lead.feature, lead.value, lead.expected, anomaly.score, anomaly.threshold
        ),
        None => format!(
            "anomalie {subject}: score {:.1} ≥ {:.1}",
            anomaly.score, anomaly.threshold
        ),
    }
}

/// Runs the desk on its own thread until the log ends; then the state is saved and the last
/// anomalies published.
pub fn spawn(
    desk: Arc<AnomalyDesk>,
    cursor: LogCursor,
    publish_every: Duration,
) -> std::io::Result<JoinHandle<anyhow::Result<()>>> {
    crate::log_desk::spawn("anomalies", desk, cursor, publish_every)
}

impl LogDesk for AnomalyDesk {
    fn set_checkpointer(&self, checkpointer: Checkpointer) {
        let _ = self.checkpoint.set(checkpointer);
    }

    fn save_every(&self) -> Duration {
        self.save_every
    }

    fn process(&self, batch: &[Committed], read_through: u64) {
        AnomalyDesk::process(self, batch, read_through);
    }

    fn save_if_due(&self, force: bool) {
        AnomalyDesk::save_if_due(self, force);
    }

    fn publish(&self) {
        AnomalyDesk::publish(self);
    }

    /// A line a minute while records are scored, so `ml.log` shows the rate.
    fn after_turn(&self) {
        let counters = self.counters();
        let mut last = self.last_report.lock();
        let scored = counters.scored + counters.samples_scored;
        if last.0.elapsed() >= REPORT_EVERY && scored > last.1.scored + last.1.samples_scored {
            let (lots, stations) = {
                let state = self.state.lock();
                (state.snapshot.lots.len(), state.snapshot.stations.len())
            };
            tracing::info!(target: "ml", scored = counters.scored - last.1.scored, samples_scored = counters.samples_scored - last.1.samples_scored, sample_anomalies = counters.sample_anomalies - last.1.sample_anomalies, anomalies = counters.anomalies - last.1.anomalies, seconds = last.0.elapsed().as_secs(), lots, stations, "records scored");
            *last = (Instant::now(), counters);
        }
    }

    fn stopped(&self, ended: LogEnded) {
        let counters = self.counters();
        tracing::info!(target: "ml", scored = counters.scored, samples_scored = counters.samples_scored, sample_anomalies = counters.sample_anomalies, anomalies = counters.anomalies, lots_forgotten = counters.lots_forgotten, caught_up = (ended == LogEnded::Closed), "anomaly scoring stopped");
    }
}

/// Swaps the models in when an artifact file `config` names changes (its size or time),
/// looking every `every`, until `stop`.
pub async fn watch_model_file(
    desk: Arc<AnomalyDesk>,
    config: super::MlConfig,
    base: PathBuf,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let paths = config.artifact_paths(&base);
    if paths.is_empty() {
        return;
    }
    let seen = |paths: &[PathBuf]| -> Vec<_> {
        paths
            .iter()
            .map(|path| {
                std::fs::metadata(path)
                    .ok()
                    .map(|m| (m.len(), m.modified().ok()))
            })
            .collect()
    };
    let mut last = seen(&paths);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let now = seen(&paths);
        if now != last && now.iter().all(Option::is_some) {
            last = now;
            desk.reload(&config, &base, "artifact file changed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_bound_the_least_recently_heard_of_go_first() {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut lots: HashMap<String, Station> = (0..20)
            .map(|i| {
                // Two stations per second: the code breaks the tie.
                let last_seen = start + chrono::Duration::seconds(i / 2);
                (
                    format!("S{i:02}"),
                    Station {
                        track: DeviceTrack::default(),
                        last_seen,
                    },
                )
            })
            .collect();
        assert_eq!(forget_beyond(&mut lots, 20), 0);
        assert_eq!(
            forget_beyond(&mut lots, 11),
            10,
            "down to 90 % of 11: 10 kept"
        );
        let mut kept: Vec<&String> = lots.keys().collect();
        kept.sort();
        assert_eq!(kept.first().map(|k| k.as_str()), Some("S10"));
        assert_eq!(kept.len(), 10);
    }
}
