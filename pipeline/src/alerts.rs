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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
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
use gaveurs_schemas::event::Event;
use gaveurs_schemas::records::Site;
use gaveurs_sinks::fsutil::{create_dir_durable, write_atomic};
use gaveurs_sinks::kafka::KafkaOutput;
use gaveurs_sinks::parquet::derived::DerivedWriter;
use gaveurs_sinks::sms::{Directory, SmsMessage, SmsService, sms_body};
use gaveurs_sinks::wal::{Committed, WalEntry};
use gaveurs_sinks::websocket::Hub;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How often the state is saved while records flow (and at every acknowledgement and stop).
const SAVE_EVERY: Duration = Duration::from_secs(1);

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
    writer: DerivedWriter,
    unsaved: bool,
    last_saved: Instant,
}

/// The alert operator's state, shared by its thread and the HTTP and WebSocket handlers.
pub struct AlertDesk {
    dir: PathBuf,
    state: Mutex<DeskState>,
    hub: Arc<Hub>,
    kafka: Option<Arc<KafkaOutput>>,
    sms: Arc<SmsService>,
    directory: Directory,
    /// What the saved state covers: the log may not delete entries beyond it.
    saved_through: Arc<AtomicU64>,
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
        saved_through: Arc<AtomicU64>,
    ) -> Arc<AlertDesk> {
        saved_through.store(saved.snapshot.through_lsn, Ordering::Release);
        Arc::new(AlertDesk {
            dir: saved.dir,
            state: Mutex::new(DeskState {
                snapshot: saved.snapshot,
                rules,
                text_from,
                writer: outputs.writer,
                unsaved: false,
                last_saved: Instant::now(),
            }),
            hub: outputs.hub,
            kafka: outputs.kafka,
            sms: outputs.sms,
            directory: outputs.directory,
            saved_through,
        })
    }

    /// New thresholds (SIGHUP). Active alerts keep their state; the next evaluation uses
    /// the new rules, so an alert whose condition no longer holds clears after N records.
    pub fn reload(&self, rules: RuleSet, text_from: Severity) {
        let mut state = self.state.lock();
        state.rules = rules;
        state.text_from = text_from;
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
        let mut state = self.state.lock();
        let Some(alert) = state.snapshot.book.find(alert_id) else {
            return Err(AckError::Unknown(alert_id.to_string()).into());
        };
        if !may_see(principal, alert) {
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
        let alert = change.alert.clone();
        self.route(&change);
        state.snapshot.pending.push(change);
        self.save(&mut state)
            .map_err(|e| AckFailure::Storage(e.to_string()))?;
        tracing::info!(target: "alerts", alert_id, rule = %alert.rule, by = principal.display_name(), "alert acknowledged");
        Ok(Some(alert))
    }

    /// Evaluates the events of one batch of committed entries, in event order.
    fn process(&self, batch: &[Committed]) {
        let mut state = self.state.lock();
        let through = state.snapshot.through_lsn;
        let mut events: Vec<&Event> = batch
            .iter()
            .filter(|c| c.lsn > through)
            .filter_map(|c| match c.entry.as_ref() {
                WalEntry::Event(event) => Some(event),
                WalEntry::DeadLetter(_) => None,
            })
            .collect();
        events.sort_by_key(|e| e.envelope.event_time);
        let now = Utc::now();
        let state = &mut *state;
        for event in events {
            let raised = state
                .snapshot
                .book
                .evaluate(&state.rules, event, state.text_from, now);
            for raised in raised {
                self.deliver(&raised);
                state.snapshot.pending.push(raised.change);
            }
        }
        if let Some(last) = batch.last() {
            state.snapshot.through_lsn = state.snapshot.through_lsn.max(last.lsn);
            state.unsaved = true;
        }
    }

    fn deliver(&self, raised: &Raised) {
        self.route(&raised.change);
        let alert = &raised.change.alert;
        tracing::info!(target: "alerts", alert_id = %alert.alert_id, rule = %alert.rule, severity = alert.severity.as_str(), transition = raised.change.transition.as_str(), code_lot = alert.code_lot.as_deref().unwrap_or(""), device_id = alert.device_id.as_deref().unwrap_or(""), value = alert.value, "{}", alert.message);
        if raised.text {
            self.text(alert);
        }
    }

    /// The live and Kafka copies of a transition.
    fn route(&self, change: &AlertChange) {
        let alert = &change.alert;
        let mut data = match serde_json::to_value(alert) {
            Ok(Value::Object(map)) => map,
            _ => return,
        };
        data.insert("transition".into(), Value::from(change.transition.as_str()));
        if let Some(gaveur_id) = alert.gaveur_id {
            self.hub.publish_to_gaveur(gaveur_id, "alerte", &data);
        }
        if let Some(site) = alert.site.as_deref().and_then(Site::parse) {
            self.hub.publish_site(
                "alert",
                site,
                alert.device_id.is_some(),
                alert.device_id.clone(),
                &data,
            );
        }
        if let Some(kafka) = &self.kafka {
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

    fn save(&self, state: &mut DeskState) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(&state.snapshot).map_err(std::io::Error::other)?;
        create_dir_durable(&self.dir)?;
        write_atomic(&self.dir.join("state.json"), &bytes)?;
        state.unsaved = false;
        state.last_saved = Instant::now();
        self.saved_through
            .store(state.snapshot.through_lsn, Ordering::Release);
        Ok(())
    }

    fn save_if_due(&self, force: bool) {
        let mut state = self.state.lock();
        if state.unsaved
            && (force || state.last_saved.elapsed() >= SAVE_EVERY)
            && let Err(e) = self.save(&mut state)
        {
            tracing::error!(target: "alerts", error = %e, "alert state not saved; the log keeps the records it would need again");
        }
    }

    /// Publishes the transitions not yet in a file: saved first (they are listed in the
    /// state, with the file names' sequence number), then written under those names, then
    /// forgotten in a second save.
    fn publish(&self) {
        let mut state = self.state.lock();
        if state.snapshot.pending.is_empty() {
            return;
        }
        let result = (|| -> anyhow::Result<usize> {
            self.save(&mut state)?;
            let state = &mut *state;
            let mut by_partition: std::collections::BTreeMap<_, Vec<&AlertChange>> =
                Default::default();
            for change in &state.snapshot.pending {
                by_partition
                    .entry(dataset::partition(change))
                    .or_default()
                    .push(change);
            }
            for (partition, changes) in by_partition {
                state
                    .writer
                    .append(dataset::NAME, partition, dataset::to_batch(&changes)?);
            }
            let flushed = state
                .writer
                .flush_named(&format!("alerts-{}", state.snapshot.publish_seq))?;
            state.snapshot.pending.clear();
            state.snapshot.publish_seq += 1;
            Ok(flushed.rows)
        })();
        match result.and_then(|rows| Ok((rows, self.save(&mut state)?))) {
            Ok((rows, ())) => {
                tracing::debug!(target: "storage", rows, "alert transitions published")
            }
            Err(e) => {
                tracing::error!(target: "storage", error = %e, "alert transitions not published; they stay in the alert state and are published later")
            }
        }
    }
}

/// Who may see (and acknowledge) an alert: a lot's alerts whoever may read that gaveur's
/// gavage data, a station's alerts whoever may read that site's SQAL data (and the gaveur
/// of the sample's lot).
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
    let sqal = alert.device_id.is_some()
        && permissions::allowed(
            principal,
            Resource::SqalData,
            Action::Read,
            Scope {
                gaveur_id: None,
                site,
            },
        );
    gavage || sqal
}

/// Runs the operator on its own thread until the log closes its channel; then the state is
/// saved and the last transitions published.
pub fn spawn(
    desk: Arc<AlertDesk>,
    replayed: Vec<Committed>,
    committed: Receiver<Arc<Vec<Committed>>>,
    publish_every: Duration,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("alerts".into())
        .spawn(move || {
            desk.process(&replayed);
            let mut last_publish = Instant::now();
            loop {
                let wait = SAVE_EVERY.min(publish_every.saturating_sub(last_publish.elapsed()));
                let closed = match committed.recv_timeout(wait) {
                    Ok(entries) => {
                        desk.process(&entries);
                        false
                    }
                    Err(RecvTimeoutError::Timeout) => false,
                    Err(RecvTimeoutError::Disconnected) => true,
                };
                desk.save_if_due(closed);
                if closed || last_publish.elapsed() >= publish_every {
                    desk.publish();
                    last_publish = Instant::now();
                }
                if closed {
                    let counters = desk.counters();
                    tracing::info!(target: "alerts", evaluated = counters.evaluated, opened = counters.opened, cleared = counters.cleared, acknowledged = counters.acknowledged, "alerts stopped");
                    return;
                }
            }
        })
}
