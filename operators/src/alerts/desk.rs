//! Runs the alert operator beside the Parquet sink: it receives the log's committed entries
//! in log order, evaluates the rules (`crate::alerts`), and routes every
//! transition — `alerte` on the owner's channel, `alert` on the dashboards,
//! `gaveurs.alerts.v1`, the `alerts` dataset, `GET /api/v1/alerts` — and asks the SMS sink
//! for a text when an alert opens critical.
//!
//! Its state is split by **shard**: the records of one Kafka partition belong to that
//! partition (`data/shards/<topic>-<partition>/alerts/state.json`, continued by whichever
//! instance owns the partition now), every other record to this instance
//! (`instances/<id>/alerts/state.json`). A shard's state holds its book, how far it has
//! evaluated (the log position for this instance's shard, the Kafka offset for a partition),
//! and the transitions not yet in a published file. After a crash the records since the last
//! save are evaluated again — from the log for this instance's shard, from Kafka for a
//! partition (the Kafka source starts a partition at the first offset its alert state still
//! needs, re-reading what is already published for the alerts alone) — and the same records
//! in the same order give the same transitions and the same alert ids. A text is asked for
//! only once the state that says so is saved, so an instance that takes a partition over
//! never texts an opening its previous owner texted. The `alerts` files — written only after
//! a save that lists their rows, under names fixed by that save — are replaced rather than
//! duplicated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::alerts::rules::RuleSet;
use crate::alerts::{AckError, AlertBook, Raised};
use crate::anomalies::desk::ModelSlot;
use crate::auth::permissions::{self, Action, Resource, Scope};
use crate::log_desk::{LogDesk, STATE_FILE};
use anyhow::Context;
use chrono::Utc;
use gaveurs_connectors::sources::kafka::PartitionState;
use gaveurs_schemas::Principal;
use gaveurs_schemas::alert::{Alert, AlertChange, Severity};
use gaveurs_schemas::datasets::alerts as dataset;
use gaveurs_schemas::records::Site;
use gaveurs_sinks::kafka::KafkaOutput;
use gaveurs_sinks::parquet::derived::DerivedWriter;
use gaveurs_sinks::sms::{Directory, SmsMessage, SmsService, sms_body};
use gaveurs_sinks::wal::{Checkpointer, Committed, LogCursor, LogEnded, WalEntry};
use gaveurs_sinks::websocket::Hub;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Whose alert state a record's alerts belong to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shard {
    /// Records that did not come from Kafka: this instance's own.
    Local,
    /// One partition of a Kafka input topic.
    Kafka { topic: String, partition: i32 },
}

impl Shard {
    /// The shard of a logged record, with its Kafka offset.
    pub(crate) fn of(entry: &WalEntry) -> (Shard, Option<i64>) {
        match entry.kafka_position() {
            Some((topic, partition, offset)) => (
                Shard::Kafka {
                    topic: topic.to_string(),
                    partition,
                },
                Some(offset),
            ),
            None => (Shard::Local, None),
        }
    }

    /// Whether a shard's state, which covers the log up to `through_lsn` (this instance's
    /// shard) or its partition up to `kafka_offset`, has yet to take in `committed` (whose
    /// Kafka offset is `offset`). A record read again for another partition state is not
    /// new to a state that starts empty: such a state starts at what is published.
    pub(crate) fn is_new(
        committed: &Committed,
        offset: Option<i64>,
        through_lsn: u64,
        kafka_offset: Option<i64>,
    ) -> bool {
        match (offset, kafka_offset) {
            (None, _) => committed.lsn > through_lsn,
            (Some(offset), Some(covered)) => offset > covered,
            (Some(_), None) => !matches!(committed.entry.as_ref(), WalEntry::Reread(_)),
        }
    }

    /// Folder name of a partition's shared state: `<topic>-<partition>`.
    pub(crate) fn folder(topic: &str, partition: i32) -> String {
        format!("{topic}-{partition}")
    }

    /// What names its `alerts` files (one writer per shard, so a new owner replaces the
    /// files its previous owner wrote for the same rows).
    pub(crate) fn file_prefix(&self, instance_id: &str) -> String {
        match self {
            Shard::Local => instance_id.to_string(),
            Shard::Kafka { topic, partition } => {
                format!("kafka_{}_p{partition}", topic.replace(['.', '-'], "_"))
            }
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Snapshot {
    /// This instance's shard: every log entry up to here is reflected in `book`.
    through_lsn: u64,
    /// A partition's shard: every record up to this offset is reflected in `book`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kafka_offset: Option<i64>,
    /// Names the next `alerts` files.
    publish_seq: u64,
    /// Transitions not yet in a published file.
    pending: Vec<AlertChange>,
    book: AlertBook,
}

impl Snapshot {
    fn load(dir: &Path) -> anyhow::Result<Option<Snapshot>> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut snapshot: Snapshot = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading alert state {}", path.display()))?;
                snapshot.book.reindex();
                Ok(Some(snapshot))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// This instance's saved state, read before the log opens so the log can replay what it
/// does not cover.
pub struct SavedAlerts {
    dir: PathBuf,
    snapshot: Snapshot,
}

impl SavedAlerts {
    /// Reads `dir/state.json`. Without one (first start), alerting starts at the published
    /// position: records of earlier runs are not evaluated (and never texted) again.
    pub fn load(dir: &Path, published_through: u64) -> anyhow::Result<SavedAlerts> {
        let snapshot = Snapshot::load(dir)?.unwrap_or(Snapshot {
            through_lsn: published_through,
            ..Snapshot::default()
        });
        Ok(SavedAlerts {
            dir: dir.to_path_buf(),
            snapshot,
        })
    }

    /// The last log entry the saved state covers.
    pub fn through(&self) -> u64 {
        self.snapshot.through_lsn
    }
}

/// Where transitions go.
pub struct AlertOutputs {
    pub hub: Arc<Hub>,
    pub kafka: Option<Arc<KafkaOutput>>,
    pub sms: Arc<SmsService>,
    pub directory: Directory,
    /// `data_dir/parquet`, for the `alerts` dataset.
    pub parquet_root: PathBuf,
}

/// Where shard states live.
pub struct AlertPaths {
    /// `data_dir/shards`: one folder per Kafka partition, shared by every instance.
    pub shards: PathBuf,
    /// `data_dir/instances`: every instance's own state, read (never written) for
    /// `GET /api/v1/alerts`.
    pub instances: PathBuf,
    pub instance_id: String,
}

struct ShardState {
    snapshot: Snapshot,
    dir: PathBuf,
    unsaved: bool,
}

struct DeskState {
    shards: BTreeMap<Shard, ShardState>,
    rules: RuleSet,
    text_from: Severity,
    last_saved: Instant,
}

impl DeskState {
    fn local(&mut self) -> &mut ShardState {
        self.shards
            .get_mut(&Shard::Local)
            .expect("this instance's shard is always here")
    }
}

/// The alert operator's state, shared by its thread, the HTTP and WebSocket handlers, and
/// the Kafka source (which says which partitions this instance owns). The state lock is
/// held for evaluation and bookkeeping only; files are written and messages routed outside
/// it.
pub struct AlertDesk {
    paths: AlertPaths,
    state: Mutex<DeskState>,
    /// Wakes a partition's release waiting for the operator to reach a log position.
    progressed: Condvar,
    /// One `state.json` writer at a time, in the order their snapshots were taken.
    saving: Mutex<()>,
    save_every: Duration,
    hub: Arc<Hub>,
    kafka: Option<Arc<KafkaOutput>>,
    sms: Arc<SmsService>,
    directory: Directory,
    parquet_root: PathBuf,
    /// Moves the alerts cursor's checkpoint to what this instance's saved state covers: the
    /// log keeps every entry after it. Set when the operator's thread starts.
    checkpoint: OnceLock<Checkpointer>,
    models: Option<ModelSlot>,
}

/// Why an acknowledgement failed.
#[derive(Debug, thiserror::Error)]
pub enum AckFailure {
    #[error(transparent)]
    Refused(#[from] AckError),
    #[error("{0} may not acknowledge alert {1}")]
    Forbidden(String, String),
    #[error("the acknowledgement could not be saved: {0}")]
    Storage(String),
    #[error(
        "alert {0} belongs to Kafka partition {1}, which another instance owns now; acknowledge it there"
    )]
    Elsewhere(String, String),
}

impl AlertDesk {
    /// `models` are the anomaly models the `anomalie` rule scores with (`None`: scoring is
    /// off, and so is the rule).
    pub fn new(
        saved: SavedAlerts,
        rules: RuleSet,
        text_from: Severity,
        outputs: AlertOutputs,
        paths: AlertPaths,
        save_every: Duration,
        models: Option<ModelSlot>,
    ) -> Arc<AlertDesk> {
        let local = ShardState {
            snapshot: saved.snapshot,
            dir: saved.dir,
            unsaved: false,
        };
        Arc::new(AlertDesk {
            state: Mutex::new(DeskState {
                shards: [(Shard::Local, local)].into_iter().collect(),
                rules,
                text_from,
                last_saved: Instant::now(),
            }),
            paths,
            progressed: Condvar::new(),
            saving: Mutex::new(()),
            save_every,
            hub: outputs.hub,
            kafka: outputs.kafka,
            sms: outputs.sms,
            directory: outputs.directory,
            parquet_root: outputs.parquet_root,
            checkpoint: OnceLock::new(),
            models,
        })
    }

    /// New thresholds (SIGHUP). Active alerts keep their state and the next evaluation uses
    /// the new rules; the alerts of a rule that was disabled clear now, as nothing would
    /// evaluate them again.
    pub fn reload(&self, rules: RuleSet, text_from: Severity) {
        let retired = {
            let mut state = self.state.lock();
            let mut retired = Vec::new();
            for shard in state.shards.values_mut() {
                let changes = shard.snapshot.book.retire_rules(&rules, Utc::now());
                shard.snapshot.pending.extend(changes.iter().cloned());
                shard.unsaved |= !changes.is_empty();
                retired.extend(changes);
            }
            state.rules = rules;
            state.text_from = text_from;
            retired
        };
        for change in &retired {
            self.route(change);
        }
    }

    /// The last log entry this instance's state covers.
    pub fn saved_through(&self) -> u64 {
        self.state.lock().local().snapshot.through_lsn
    }

    pub fn counters(&self) -> crate::alerts::AlertCounters {
        let state = self.state.lock();
        let mut total = crate::alerts::AlertCounters::default();
        for shard in state.shards.values() {
            let c = shard.snapshot.book.counters();
            total.evaluated += c.evaluated;
            total.opened += c.opened;
            total.updated += c.updated;
            total.cleared += c.cleared;
            total.acknowledged += c.acknowledged;
            total.suppressed += c.suppressed;
        }
        total
    }

    /// Alerts the caller may see that `keep` accepts, newest opening first: this
    /// instance's shards from memory, every other shard and instance from its saved state
    /// (at most one save interval old), so any instance answers for all of them.
    pub fn alerts(&self, principal: &Principal, keep: impl Fn(&Alert) -> bool) -> Vec<Alert> {
        let mut alerts: BTreeMap<String, Alert> = BTreeMap::new();
        let mine: Vec<PathBuf> = {
            let state = self.state.lock();
            for shard in state.shards.values() {
                for alert in shard.snapshot.book.alerts() {
                    alerts.insert(alert.alert_id.clone(), alert.clone());
                }
            }
            state.shards.values().map(|s| s.dir.clone()).collect()
        };
        for dir in self.saved_elsewhere() {
            if mine.contains(&dir) {
                continue;
            }
            match Snapshot::load(&dir) {
                Ok(Some(snapshot)) => {
                    for alert in snapshot.book.alerts() {
                        alerts
                            .entry(alert.alert_id.clone())
                            .or_insert_with(|| alert.clone());
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(target: "alerts", dir = %dir.display(), error = %format!("{e:#}"), "an alert state could not be read")
                }
            }
        }
        let mut alerts: Vec<Alert> = alerts
            .into_values()
            .filter(|a| keep(a) && may_see(principal, a))
            .collect();
        alerts.sort_by(|a, b| {
            b.opened_at
                .cmp(&a.opened_at)
                .then(a.alert_id.cmp(&b.alert_id))
        });
        alerts
    }

    /// Every saved alert state folder: each partition's, each instance's.
    fn saved_elsewhere(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for (root, inner) in [
            (&self.paths.shards, "alerts"),
            (&self.paths.instances, "alerts"),
        ] {
            let Ok(entries) = std::fs::read_dir(root) else {
                continue;
            };
            for entry in entries.flatten() {
                dirs.push(entry.path().join(inner));
            }
        }
        dirs.sort();
        dirs
    }

    /// Acknowledges an alert for `principal` (its gaveur, a superviseur or an admin). Blocks
    /// on a save: an acknowledgement survives a restart. `Ok(None)`: it already was.
    pub fn acknowledge(
        &self,
        alert_id: &str,
        principal: &Principal,
    ) -> Result<Option<Alert>, AckFailure> {
        let change = {
            let mut state = self.state.lock();
            let Some(shard) = state
                .shards
                .values_mut()
                .find(|s| s.snapshot.book.find(alert_id).is_some())
            else {
                drop(state);
                return Err(self.not_here(alert_id));
            };
            let alert = shard.snapshot.book.find(alert_id).expect("just found");
            if !may_acknowledge(principal, alert) {
                return Err(AckFailure::Forbidden(
                    principal.display_name().to_string(),
                    alert_id.to_string(),
                ));
            }
            let Some(change) =
                shard
                    .snapshot
                    .book
                    .acknowledge(alert_id, principal.display_name(), Utc::now())?
            else {
                return Ok(None);
            };
            shard.snapshot.pending.push(change.clone());
            shard.unsaved = true;
            change
        };
        self.route(&change);
        self.save()
            .map_err(|e| AckFailure::Storage(e.to_string()))?;
        tracing::info!(target: "alerts", alert_id, rule = %change.alert.rule, by = principal.display_name(), "alert acknowledged");
        Ok(Some(change.alert))
    }

    /// Why an alert this instance does not hold cannot be acknowledged here.
    fn not_here(&self, alert_id: &str) -> AckFailure {
        let Ok(entries) = std::fs::read_dir(&self.paths.shards) else {
            return AckError::Unknown(alert_id.to_string()).into();
        };
        for entry in entries.flatten() {
            if let Ok(Some(snapshot)) = Snapshot::load(&entry.path().join("alerts"))
                && snapshot.book.find(alert_id).is_some()
            {
                return AckFailure::Elsewhere(
                    alert_id.to_string(),
                    entry.file_name().to_string_lossy().into_owned(),
                );
            }
        }
        AckError::Unknown(alert_id.to_string()).into()
    }

    /// Evaluates the events of one batch of committed entries, in log order, then routes
    /// what they raised; texts are asked for once the state that records them is saved.
    fn process(&self, batch: &[Committed], read_through: u64) {
        // Read once per batch, as the anomaly desk does: a swap takes effect between batches.
        let model = self.models.as_ref().map(ModelSlot::current);
        let raised = {
            let mut state = self.state.lock();
            let state = &mut *state;
            let now = Utc::now();
            let mut raised = Vec::new();
            for committed in batch {
                let (WalEntry::Event(event) | WalEntry::Reread(event)) = committed.entry.as_ref()
                else {
                    continue;
                };
                let (shard_id, offset) = Shard::of(&committed.entry);
                // A partition another instance owns now is that instance's to evaluate.
                let Some(shard) = state.shards.get_mut(&shard_id) else {
                    continue;
                };
                if !Shard::is_new(
                    committed,
                    offset,
                    shard.snapshot.through_lsn,
                    shard.snapshot.kafka_offset,
                ) {
                    continue;
                }
                let changes = shard.snapshot.book.evaluate_scored(
                    &state.rules,
                    model.as_deref(),
                    event,
                    state.text_from,
                    now,
                );
                shard
                    .snapshot
                    .pending
                    .extend(changes.iter().map(|r| r.change.clone()));
                if offset.is_some() {
                    shard.snapshot.kafka_offset = offset;
                }
                shard.unsaved = true;
                raised.extend(changes);
            }
            let local = state.local();
            if read_through > local.snapshot.through_lsn {
                local.snapshot.through_lsn = read_through;
                local.unsaved = true;
            }
            raised
        };
        self.progressed.notify_all();
        if raised.iter().any(|r| r.text)
            && let Err(e) = self.save()
        {
            // Texting anyway: a crash before the next save could repeat it, never lose it.
            tracing::error!(target: "alerts", error = %e, "alert state not saved before texting");
        }
        for raised in &raised {
            self.deliver(raised);
        }
    }

    fn deliver(&self, raised: &Raised) {
        let alert = &raised.change.alert;
        let subject = alert
            .code_lot
            .as_deref()
            .or(alert.device_id.as_deref())
            .unwrap_or("");
        let transition = raised.change.transition.as_str();
        // An alert held for days updates on every record: those lines are for debugging.
        if raised.change.transition == gaveurs_schemas::alert::Transition::Updated {
            tracing::debug!(target: "alerts", alert_id = %alert.alert_id, rule = %alert.rule, transition, subject, count = alert.count, value = alert.value, "{}", alert.message);
        } else {
            tracing::info!(target: "alerts", alert_id = %alert.alert_id, rule = %alert.rule, severity = alert.severity.as_str(), transition, subject, value = alert.value, "{}", alert.message);
        }
        // Logged before it is pushed: whoever sees the push finds the line written under the
        // levels of that moment.
        self.route(&raised.change);
        if raised.text {
            self.text(alert);
        }
    }

    /// The live and Kafka copies of a transition.
    fn route(&self, change: &AlertChange) {
        push_live(&self.hub, change);
        if let Some(kafka) = &self.kafka {
            let alert = &change.alert;
            let key = alert
                .code_lot
                .as_deref()
                .or(alert.device_id.as_deref())
                .unwrap_or_default();
            match serde_json::to_vec(change) {
                Ok(json) => kafka.alert(key, &json),
                Err(e) => {
                    tracing::warn!(target: "alerts", error = %e, "an alert could not be encoded for Kafka")
                }
            }
        }
    }

    fn text(&self, alert: &Alert) {
        let Some(gaveur_id) = alert.gaveur_id else {
            tracing::info!(target: "alerts", alert_id = %alert.alert_id, "alert not texted: it belongs to no known gaveur");
            return;
        };
        let Some(phone) = self.directory.phone(gaveur_id) else {
            if self.sms.enabled() {
                tracing::warn!(target: "alerts", alert_id = %alert.alert_id, gaveur_id, "alert not texted: the gaveur has no phone in [sms] directory");
            }
            return;
        };
        let severity = match alert.severity {
            Severity::Critical => "CRITIQUE",
            Severity::Warning => "ALERTE",
            Severity::Info => "INFO",
        };
        let message = SmsMessage {
            id: alert.alert_id.clone(),
            gaveur_id,
            to: phone.to_string(),
            body: sms_body(&format!("gaveurs {severity}: {}", alert.message)),
            critical: alert.severity == Severity::Critical,
        };
        if let Err(e) = self.sms.enqueue(message) {
            tracing::error!(target: "alerts", alert_id = %alert.alert_id, error = %e, "the SMS outbox could not take a message; it is not sent");
        }
    }

    /// Writes each unsaved shard's `state.json`: snapshots are taken under the state lock,
    /// written outside it.
    fn save(&self) -> std::io::Result<()> {
        let _one_writer = self.saving.lock();
        let (files, through) = {
            let mut state = self.state.lock();
            let mut files = Vec::new();
            for shard in state.shards.values_mut().filter(|s| s.unsaved) {
                let bytes = serde_json::to_vec(&shard.snapshot).map_err(std::io::Error::other)?;
                shard.unsaved = false;
                files.push((shard.dir.clone(), bytes));
            }
            state.last_saved = Instant::now();
            (files, state.local().snapshot.through_lsn)
        };
        if let Err((failed, e)) = crate::log_desk::write_shard_states(&files) {
            let mut state = self.state.lock();
            for shard in state.shards.values_mut() {
                shard.unsaved |= failed.contains(&shard.dir.as_path());
            }
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
            state.shards.values().any(|s| s.unsaved)
                && (force || state.last_saved.elapsed() >= self.save_every)
        };
        if due && let Err(e) = self.save() {
            tracing::error!(target: "alerts", error = %e, "alert state not saved; the log (or Kafka) keeps the records it would need again");
        }
    }

    /// Publishes the transitions not yet in a file, shard by shard: saved first (they are
    /// listed in the state with the sequence number that names their files), written under
    /// those names — one file per partition, so writing them again after a crash replaces
    /// them — then forgotten in a second save.
    fn publish(&self) {
        let work: Vec<(Shard, Vec<AlertChange>, u64)> = {
            let state = self.state.lock();
            state
                .shards
                .iter()
                .filter(|(_, s)| !s.snapshot.pending.is_empty())
                .map(|(id, s)| {
                    (
                        id.clone(),
                        s.snapshot.pending.clone(),
                        s.snapshot.publish_seq,
                    )
                })
                .collect()
        };
        if work.is_empty() {
            return;
        }
        if let Err(e) = self.save() {
            tracing::error!(target: "storage", error = %e, "alert transitions not published; they stay in the alert state and are published later");
            return;
        }
        for (shard_id, changes, seq) in work {
            let result = (|| -> anyhow::Result<usize> {
                let mut by_partition: BTreeMap<_, Vec<&AlertChange>> = BTreeMap::new();
                for change in &changes {
                    by_partition
                        .entry(dataset::partition(change))
                        .or_default()
                        .push(change);
                }
                let mut writer = DerivedWriter::new(
                    self.parquet_root.clone(),
                    shard_id.file_prefix(&self.paths.instance_id),
                );
                for (partition, changes) in by_partition {
                    writer.append(dataset::NAME, partition, dataset::to_batch(&changes)?);
                }
                let flushed = writer.flush_named(&format!("alerts-{seq}"))?;
                let mut state = self.state.lock();
                if let Some(shard) = state.shards.get_mut(&shard_id)
                    && shard.snapshot.publish_seq == seq
                {
                    // Only appended to meanwhile, so what was published is the front.
                    shard.snapshot.pending.drain(..changes.len());
                    shard.snapshot.publish_seq = seq + 1;
                    shard.unsaved = true;
                }
                Ok(flushed.rows)
            })();
            match result {
                Ok(rows) => {
                    tracing::debug!(target: "storage", rows, shard = ?shard_id, "alert transitions published")
                }
                Err(e) => {
                    tracing::error!(target: "storage", error = %e, "alert transitions not published; they stay in the alert state and are published later")
                }
            }
        }
        if let Err(e) = self.save() {
            tracing::error!(target: "alerts", error = %e, "alert state not saved after publishing; the same files are written again later");
        }
    }
}

/// The Kafka source tells the desk which partitions this instance owns.
impl PartitionState for AlertDesk {
    fn taken(&self, topic: &str, partition: i32) -> Option<i64> {
        let dir = self
            .paths
            .shards
            .join(Shard::folder(topic, partition))
            .join("alerts");
        let snapshot = match Snapshot::load(&dir) {
            Ok(snapshot) => snapshot.unwrap_or_default(),
            Err(e) => {
                tracing::error!(target: "alerts", topic, partition, error = %format!("{e:#}"), "a partition's alert state could not be read; it starts empty");
                Snapshot::default()
            }
        };
        let next = snapshot.kafka_offset.map(|o| o + 1);
        let shard = Shard::Kafka {
            topic: topic.to_string(),
            partition,
        };
        tracing::info!(target: "alerts", topic, partition, alerts = snapshot.book.alerts().count(), evaluated_through = ?snapshot.kafka_offset, "partition's alert state taken");
        self.state.lock().shards.insert(
            shard,
            ShardState {
                snapshot,
                dir,
                unsaved: false,
            },
        );
        next
    }

    fn offsets_reset(&self, topic: &str, partition: i32) {
        let shard = Shard::Kafka {
            topic: topic.to_string(),
            partition,
        };
        if let Some(state) = self.state.lock().shards.get_mut(&shard) {
            state.snapshot.kafka_offset = None;
            state.unsaved = true;
        }
    }

    fn released(&self, topic: &str, partition: i32, through: u64, wait: Duration) {
        let shard = Shard::Kafka {
            topic: topic.to_string(),
            partition,
        };
        // What this instance consumed of the partition is evaluated first (within `wait`),
        // so the next owner re-reads as little as possible.
        let deadline = Instant::now() + wait;
        {
            let mut state = self.state.lock();
            while state.local().snapshot.through_lsn < through {
                if self.progressed.wait_until(&mut state, deadline).timed_out() {
                    break;
                }
            }
        }
        self.publish();
        if let Err(e) = self.save() {
            tracing::error!(target: "alerts", topic, partition, error = %e, "a partition's alert state was not saved at hand-over; the next owner re-reads more");
        }
        if let Some(released) = self.state.lock().shards.remove(&shard) {
            tracing::info!(target: "alerts", topic, partition, evaluated_through = ?released.snapshot.kafka_offset, "partition's alert state handed over");
        }
    }
}

/// A transition on the owner's channel (`alerte`) and the site's dashboards (`alert`); also
/// how transitions raised by other instances (read from `gaveurs.alerts.v1`) reach this
/// instance's clients.
pub fn push_live(hub: &Hub, change: &AlertChange) {
    let alert = &change.alert;
    let mut data = match serde_json::to_value(alert) {
        Ok(Value::Object(map)) => map,
        _ => return,
    };
    data.insert("transition".into(), Value::from(change.transition.as_str()));
    if let Some(gaveur_id) = alert.gaveur_id {
        hub.publish_to_gaveur(gaveur_id, "alerte", &data);
    }
    if let Some(site) = alert.site.as_deref().and_then(Site::parse) {
        hub.publish_site(
            "alert",
            site,
            alert.device_id.is_some(),
            alert.device_id.clone(),
            &data,
        );
    }
}

/// Who may acknowledge: the gaveur who owns the alert, a superviseur, an admin.
fn may_acknowledge(principal: &Principal, alert: &Alert) -> bool {
    match alert.gaveur_id {
        Some(gaveur_id) => permissions::allowed(
            principal,
            Resource::GavageData,
            Action::Read,
            Scope {
                gaveur_id: Some(gaveur_id),
                site: alert.site.as_deref(),
            },
        ),
        None => principal.has_role("superviseur") || principal.has_role("admin"),
    }
}

/// Who may see an alert: a lot's alerts whoever may read that gaveur's gavage data, a
/// station's alerts whoever may read SQAL data of its site (a token that names a site sees
/// that site's stations only), and the gaveur of the sample's lot.
pub fn may_see(principal: &Principal, alert: &Alert) -> bool {
    let site = alert.site.as_deref();
    let gavage = alert.gaveur_id.is_some()
        && permissions::allowed(
            principal,
            Resource::GavageData,
            Action::Read,
            Scope {
                gaveur_id: alert.gaveur_id,
                site,
            },
        );
    let everywhere = principal.has_role("superviseur") || principal.has_role("admin");
    let sqal = alert.device_id.is_some()
        && permissions::allowed(
            principal,
            Resource::SqalData,
            Action::Read,
            Scope {
                gaveur_id: None,
                site,
            },
        )
        && (everywhere
            || principal
                .site_id
                .as_deref()
                .is_none_or(|own| Some(own) == site));
    gavage || sqal
}

/// Runs the operator on its own thread, reading the log through `cursor` from what this
/// instance's saved state covers, until the log ends; then the state is saved and the last
/// transitions published. Kafka records an earlier run logged are skipped: the owner of
/// their partition re-reads them from Kafka, from what that partition's state covers.
pub fn spawn(
    desk: Arc<AlertDesk>,
    cursor: LogCursor,
    publish_every: Duration,
) -> std::io::Result<JoinHandle<anyhow::Result<()>>> {
    crate::log_desk::spawn("alerts", desk, cursor, publish_every)
}

impl LogDesk for AlertDesk {
    fn set_checkpointer(&self, checkpointer: Checkpointer) {
        let _ = self.checkpoint.set(checkpointer);
    }

    fn save_every(&self) -> Duration {
        self.save_every
    }

    fn process(&self, batch: &[Committed], read_through: u64) {
        AlertDesk::process(self, batch, read_through);
    }

    fn save_if_due(&self, force: bool) {
        AlertDesk::save_if_due(self, force);
    }

    fn publish(&self) {
        AlertDesk::publish(self);
    }

    fn stopped(&self, ended: LogEnded) {
        let counters = self.counters();
        tracing::info!(target: "alerts", evaluated = counters.evaluated, opened = counters.opened, cleared = counters.cleared, acknowledged = counters.acknowledged, caught_up = (ended == LogEnded::Closed), "alerts stopped");
    }
}
