//! Runs the alert operator beside the Parquet sink: it receives the log's committed entries
//! in log order, evaluates the rules (`gaveurs_operators::alerts`), and routes every
//! transition — `alerte` on the owner's channel, `alert` on the dashboards,
//! `gaveurs.alerts.v1`, the `alerts` dataset, `GET /api/v1/alerts` — and asks the SMS sink
//! for a text when an alert opens critical.
//!
//! Its state (`instances/<id>/alerts/state.json`) holds the book, the last log position it
//! covers, and the transitions not yet in a published file. The log keeps every entry the
//! saved state does not cover, so after a crash the entries since the last save are
//! evaluated again: the same records in the same order give the same transitions and the
//! same alert ids, so the SMS outbox (keyed by alert id) neither loses nor repeats a text,
//! and the `alerts` files — written only after a save that lists their rows, under names
//! fixed by that save — are replaced rather than duplicated.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use gaveurs_operators::alerts::rules::RuleSet;
use gaveurs_operators::alerts::{AckError, AlertBook, Raised};
use gaveurs_operators::auth::permissions::{self, Action, Resource, Scope};
use gaveurs_schemas::Principal;
use gaveurs_schemas::alert::{Alert, AlertChange, Severity};
use gaveurs_schemas::datasets::alerts as dataset;
use gaveurs_schemas::records::Site;
use gaveurs_sinks::fsutil::{create_dir_durable, write_atomic};
use gaveurs_sinks::kafka::KafkaOutput;
use gaveurs_sinks::parquet::derived::DerivedWriter;
use gaveurs_sinks::sms::{Directory, SmsMessage, SmsService, sms_body};
use gaveurs_sinks::wal::{Checkpointer, Committed, LogCursor, LogEnded, WalEntry};
use gaveurs_sinks::websocket::Hub;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Default, Serialize, Deserialize)]
struct Snapshot {
    /// Every log entry up to here is reflected in `book`.
    through_lsn: u64,
    /// Names the next `alerts` files.
    publish_seq: u64,
    /// Transitions not yet in a published file.
    pending: Vec<AlertChange>,
    book: AlertBook,
}

/// The saved state, read before the log opens so the log can replay what it does not cover.
pub struct SavedAlerts {
    dir: PathBuf,
    snapshot: Snapshot,
}

impl SavedAlerts {
    /// Reads `dir/state.json`. Without one (first start), alerting starts at the published
    /// position: records of earlier runs are not evaluated (and never texted) again.
    pub fn load(dir: &Path, published_through: u64) -> anyhow::Result<SavedAlerts> {
        let path = dir.join("state.json");
        let snapshot = match std::fs::read(&path) {
            Ok(bytes) => {
                let mut snapshot: Snapshot = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading alert state {}", path.display()))?;
                snapshot.book.reindex();
                snapshot
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot {
                through_lsn: published_through,
                ..Snapshot::default()
            },
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
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
    pub writer: DerivedWriter,
}

struct DeskState {
    snapshot: Snapshot,
    rules: RuleSet,
    text_from: Severity,
    /// Kafka records this state already reflects that Kafka will deliver again (they were
    /// not yet in a published file when the last run stopped): skipped once each.
    already_evaluated: HashSet<u128>,
    unsaved: bool,
    last_saved: Instant,
}

/// The alert operator's state, shared by its thread and the HTTP and WebSocket handlers.
/// The state lock is held for evaluation and bookkeeping only; files are written and
/// messages routed outside it.
pub struct AlertDesk {
    dir: PathBuf,
    state: Mutex<DeskState>,
    writer: Mutex<DerivedWriter>,
    /// One `state.json` writer at a time, in the order their snapshots were taken.
    saving: Mutex<()>,
    save_every: Duration,
    hub: Arc<Hub>,
    kafka: Option<Arc<KafkaOutput>>,
    sms: Arc<SmsService>,
    directory: Directory,
    /// Moves the alerts cursor's checkpoint to what the saved state covers: the log keeps
    /// every entry after it. Set when the operator's thread starts.
    checkpoint: OnceLock<Checkpointer>,
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
}

impl AlertDesk {
    pub fn new(
        saved: SavedAlerts,
        rules: RuleSet,
        text_from: Severity,
        outputs: AlertOutputs,
        already_evaluated: HashSet<u128>,
        save_every: Duration,
    ) -> Arc<AlertDesk> {
        Arc::new(AlertDesk {
            dir: saved.dir,
            state: Mutex::new(DeskState {
                snapshot: saved.snapshot,
                rules,
                text_from,
                already_evaluated,
                unsaved: false,
                last_saved: Instant::now(),
            }),
            writer: Mutex::new(outputs.writer),
            saving: Mutex::new(()),
            save_every,
            hub: outputs.hub,
            kafka: outputs.kafka,
            sms: outputs.sms,
            directory: outputs.directory,
            checkpoint: OnceLock::new(),
        })
    }

    /// New thresholds (SIGHUP). Active alerts keep their state and the next evaluation uses
    /// the new rules; the alerts of a rule that was disabled clear now, as nothing would
    /// evaluate them again.
    pub fn reload(&self, rules: RuleSet, text_from: Severity) {
        let retired = {
            let mut state = self.state.lock();
            let retired = state.snapshot.book.retire_rules(&rules, Utc::now());
            state.snapshot.pending.extend(retired.iter().cloned());
            state.unsaved |= !retired.is_empty();
            state.rules = rules;
            state.text_from = text_from;
            retired
        };
        for change in &retired {
            self.route(change);
        }
    }

    /// The last log entry the state covers.
    pub fn saved_through(&self) -> u64 {
        self.state.lock().snapshot.through_lsn
    }

    pub fn counters(&self) -> gaveurs_operators::alerts::AlertCounters {
        self.state.lock().snapshot.book.counters()
    }

    /// Alerts the caller may see that `keep` accepts, newest opening first.
    pub fn alerts(&self, principal: &Principal, keep: impl Fn(&Alert) -> bool) -> Vec<Alert> {
        let state = self.state.lock();
        let mut alerts: Vec<Alert> = state
            .snapshot
            .book
            .alerts()
            .filter(|a| keep(a) && may_see(principal, a))
            .cloned()
            .collect();
        alerts.sort_by(|a, b| {
            b.opened_at
                .cmp(&a.opened_at)
                .then(a.alert_id.cmp(&b.alert_id))
        });
        alerts
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
            let Some(alert) = state.snapshot.book.find(alert_id) else {
                return Err(AckError::Unknown(alert_id.to_string()).into());
            };
            if !may_acknowledge(principal, alert) {
                return Err(AckFailure::Forbidden(
                    principal.display_name().to_string(),
                    alert_id.to_string(),
                ));
            }
            let Some(change) =
                state
                    .snapshot
                    .book
                    .acknowledge(alert_id, principal.display_name(), Utc::now())?
            else {
                return Ok(None);
            };
            state.snapshot.pending.push(change.clone());
            state.unsaved = true;
            change
        };
        self.route(&change);
        self.save()
            .map_err(|e| AckFailure::Storage(e.to_string()))?;
        tracing::info!(target: "alerts", alert_id, rule = %change.alert.rule, by = principal.display_name(), "alert acknowledged");
        Ok(Some(change.alert))
    }

    /// Evaluates the events of one batch of committed entries, in log order, then routes
    /// what they raised.
    fn process(&self, batch: &[Committed], read_through: u64) {
        let raised = {
            let mut state = self.state.lock();
            let state = &mut *state;
            let through = state.snapshot.through_lsn;
            let now = Utc::now();
            let mut raised = Vec::new();
            for committed in batch.iter().filter(|c| c.lsn > through) {
                let WalEntry::Event(event) = committed.entry.as_ref() else {
                    continue;
                };
                if !state.already_evaluated.is_empty()
                    && state
                        .already_evaluated
                        .remove(&event.record.idempotency_hash())
                {
                    continue;
                }
                raised.extend(state.snapshot.book.evaluate(
                    &state.rules,
                    event,
                    state.text_from,
                    now,
                ));
            }
            state
                .snapshot
                .pending
                .extend(raised.iter().map(|r| r.change.clone()));
            if read_through > through {
                state.snapshot.through_lsn = read_through;
                state.unsaved = true;
            }
            raised
        };
        for raised in &raised {
            self.deliver(raised);
        }
    }

    fn deliver(&self, raised: &Raised) {
        self.route(&raised.change);
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

    /// Writes `state.json`: the snapshot is taken under the state lock, written outside it.
    fn save(&self) -> std::io::Result<()> {
        let _one_writer = self.saving.lock();
        let (bytes, through) = {
            let mut state = self.state.lock();
            let bytes = serde_json::to_vec(&state.snapshot).map_err(std::io::Error::other)?;
            state.unsaved = false;
            state.last_saved = Instant::now();
            (bytes, state.snapshot.through_lsn)
        };
        let written = create_dir_durable(&self.dir)
            .and_then(|()| write_atomic(&self.dir.join("state.json"), &bytes));
        if written.is_err() {
            self.state.lock().unsaved = true;
        }
        written?;
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
            tracing::error!(target: "alerts", error = %e, "alert state not saved; the log keeps the records it would need again");
        }
    }

    /// Publishes the transitions not yet in a file: saved first (they are listed in the
    /// state with the sequence number that names their files), written under those names —
    /// one file per partition, so writing them again after a crash replaces them — then
    /// forgotten in a second save.
    fn publish(&self) {
        let (changes, seq) = {
            let state = self.state.lock();
            if state.snapshot.pending.is_empty() {
                return;
            }
            (state.snapshot.pending.clone(), state.snapshot.publish_seq)
        };
        let result = (|| -> anyhow::Result<usize> {
            self.save()?;
            let mut by_partition: std::collections::BTreeMap<_, Vec<&AlertChange>> =
                Default::default();
            for change in &changes {
                by_partition
                    .entry(dataset::partition(change))
                    .or_default()
                    .push(change);
            }
            let mut writer = self.writer.lock();
            for (partition, changes) in by_partition {
                writer.append(dataset::NAME, partition, dataset::to_batch(&changes)?);
            }
            let flushed = writer.flush_named(&format!("alerts-{seq}"))?;
            drop(writer);
            {
                let mut state = self.state.lock();
                // Only appended to meanwhile, so what was published is the front.
                state.snapshot.pending.drain(..changes.len());
                state.snapshot.publish_seq = seq + 1;
                state.unsaved = true;
            }
            self.save()?;
            Ok(flushed.rows)
        })();
        match result {
            Ok(rows) => tracing::debug!(target: "storage", rows, "alert transitions published"),
            Err(e) => {
                tracing::error!(target: "storage", error = %e, "alert transitions not published; they stay in the alert state and are published later")
            }
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

/// Runs the operator on its own thread, reading the log through `cursor` from what the
/// saved state covers, until the log ends; then the state is saved and the last transitions
/// published. Kafka records an earlier run logged are evaluated only if they were published
/// (Kafka resumes after the published offsets, so it will not deliver them again); the others
/// are re-read from Kafka.
pub fn spawn(
    desk: Arc<AlertDesk>,
    mut cursor: LogCursor,
    published_at_start: u64,
    publish_every: Duration,
) -> std::io::Result<JoinHandle<anyhow::Result<()>>> {
    std::thread::Builder::new()
        .name("alerts".into())
        .spawn(move || {
            let _ = desk.checkpoint.set(cursor.checkpointer());
            let opened_at = cursor.opened_at();
            let mut last_publish = Instant::now();
            loop {
                let wait = desk
                    .save_every
                    .min(publish_every.saturating_sub(last_publish.elapsed()));
                let ended = match cursor.next_batch(4096, wait) {
                    Ok(entries) => {
                        let evaluated: Vec<Committed> = entries
                            .into_iter()
                            .filter(|c| {
                                !c.is_earlier_kafka(opened_at) || c.lsn <= published_at_start
                            })
                            .collect();
                        desk.process(&evaluated, cursor.read_through());
                        None
                    }
                    Err(ended) => Some(ended),
                };
                desk.save_if_due(ended.is_some());
                if ended.is_some() || last_publish.elapsed() >= publish_every {
                    desk.publish();
                    last_publish = Instant::now();
                }
                if let Some(ended) = ended {
                    let counters = desk.counters();
                    tracing::info!(target: "alerts", evaluated = counters.evaluated, opened = counters.opened, cleared = counters.cleared, acknowledged = counters.acknowledged, caught_up = (ended == LogEnded::Closed), "alerts stopped");
                    return Ok(());
                }
            }
        })
}
