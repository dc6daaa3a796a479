//! SMS out (SPEC §3, §5): alert messages sent through the Twilio REST API from a durable outbox.
//!
//! The alert operator decides *whether* an SMS goes out (critical alerts, one per opening, never
//! for backfill records) and to whom ([`Directory`]); this module makes sure it goes out *once*:
//!
//! - [`SmsService::enqueue`] writes the message to the [`outbox`] journal and fsyncs it before
//!   returning, so an accepted message survives a crash. It is idempotent by message id (the
//!   alert id): an id already queued or settled is ignored, also after a restart.
//! - A sender task sends pending messages one by one, in queue order, and records each outcome
//!   in the journal (see [`outbox::Outcome`]): sent, rejected by Twilio (a 4xx: never retried),
//!   dropped because the recipient's hourly budget is spent, or given up after
//!   [`SmsSettings::max_attempts`] retryable failures (429, 5xx, network), which are retried
//!   with exponential backoff and full jitter (or the server's `Retry-After`).
//! - Quiet hours, when configured, hold non-critical messages (and critical ones unless
//!   [`QuietHours::bypass_critical`]) until they end.
//! - Bodies are made to fit one GSM-7 segment ([`gsm7`]).
//!
//! Delivery is at-least-once: a crash between Twilio accepting a message and its `done` record
//! reaching the disk sends it again at the next start. Everything else is exactly once.
//!
//! Without Twilio credentials (`TWILIO_ACCOUNT_SID`, `TWILIO_AUTH_TOKEN`,
//! `TWILIO_PHONE_NUMBER`) the service logs one warning and counts what it would have sent.
//! Logs go to the `alerts` target; phone numbers appear there as their last four digits only.

pub mod directory;
pub mod gsm7;
pub mod outbox;
pub mod twilio;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, NaiveTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use gaveurs_schemas::error::Backoff;
use parking_lot::Mutex;
use reqwest::Url;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use directory::{Directory, DirectoryError};
pub use gsm7::{septets, sms_body};
pub use outbox::{Outbox, Outcome, QueuedSms};
pub use twilio::{Credentials, SendOutcome, TwilioClient};

/// How the service sends. The defaults are SPEC §5's.
#[derive(Debug, Clone)]
pub struct SmsSettings {
    /// The Twilio API root (tests point it at a fake). Default `https://api.twilio.com`.
    pub base_url: String,
    /// Messages a recipient may receive in any 60 minutes; the next ones are dropped (and
    /// logged). Default 5. Counted across restarts.
    pub budget_per_hour: u32,
    /// Whether critical messages are sent even when the budget is spent. Default false.
    pub budget_bypass_critical: bool,
    /// Hours during which messages wait. Default none.
    pub quiet_hours: Option<QuietHours>,
    /// The first retry's maximum delay; it doubles with every failure. Default 1 s.
    pub retry_initial: Duration,
    /// The longest delay between two attempts, `Retry-After` included. Default 5 min.
    pub retry_max: Duration,
    /// Attempts (the first included) before a message is given up. Default 10.
    pub max_attempts: u32,
    /// A message still pending this long after it was queued (or after the quiet hours that
    /// held it ended) is not sent: an alert texted hours late, after an outage, misleads more
    /// than it helps. It is settled `expired`. Default 1 h.
    pub max_age: Duration,
}

impl Default for SmsSettings {
    fn default() -> SmsSettings {
        SmsSettings {
            base_url: twilio::DEFAULT_BASE_URL.to_string(),
            budget_per_hour: 5,
            budget_bypass_critical: false,
            quiet_hours: None,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(5 * 60),
            max_attempts: 10,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// A daily window, in local time, during which messages are held until its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    /// Start, inclusive.
    pub start: NaiveTime,
    /// End, exclusive. Earlier than `start` for a window across midnight (22:00 → 07:00).
    /// Equal to `start`: no quiet hours.
    pub end: NaiveTime,
    /// The time zone `start` and `end` are read in (`Europe/Paris`); DST is followed.
    pub timezone: Tz,
    /// Whether critical messages go out during quiet hours anyway. Default true.
    pub bypass_critical: bool,
}

impl QuietHours {
    /// Quiet hours from `start` to `end` in `timezone`, which critical messages bypass.
    pub fn new(start: NaiveTime, end: NaiveTime, timezone: Tz) -> QuietHours {
        QuietHours {
            start,
            end,
            timezone,
            bypass_critical: true,
        }
    }

    /// When `now` falls inside the quiet hours, the instant they end (always after `now`);
    /// `None` outside them.
    pub fn ends_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = now.with_timezone(&self.timezone);
        let time = local.time();
        let today = local.date_naive();
        let end_date = if self.start < self.end {
            if time < self.start || time >= self.end {
                return None;
            }
            today
        } else if self.start > self.end {
            if time >= self.start {
                today.succ_opt()?
            } else if time < self.end {
                today
            } else {
                return None;
            }
        } else {
            return None;
        };
        let end_local = end_date.and_time(self.end);
        let mapped = self.timezone.from_local_datetime(&end_local);
        // On a DST change the end may be ambiguous (take the first occurrence still to come) or
        // skipped (take the first valid time after the gap). Whatever happens, the end is in the
        // future, so the sender never spins on a deferral that is already over.
        let end = [mapped.earliest(), mapped.latest()]
            .into_iter()
            .flatten()
            .map(|t| t.with_timezone(&Utc))
            .find(|t| *t > now)
            .or_else(|| {
                self.timezone
                    .from_local_datetime(&(end_local + TimeDelta::hours(1)))
                    .earliest()
                    .map(|t| t.with_timezone(&Utc))
                    .filter(|t| *t > now)
            })
            .unwrap_or(now + TimeDelta::minutes(1));
        Some(end)
    }
}

/// One SMS to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsMessage {
    /// The idempotency key, e.g. the alert id: a message whose id was already queued or settled
    /// (in the last 7 days, across restarts) is not queued again.
    pub id: String,
    /// The gaveur the message is about (logs only).
    pub gaveur_id: i64,
    /// The recipient, in E.164 form (see [`Directory`]).
    pub to: String,
    /// The text; passed through [`sms_body`] so that it fits one GSM-7 segment.
    pub body: String,
    /// Critical messages may bypass the quiet hours and the budget (see the settings).
    pub critical: bool,
}

/// What the SMS service did since it started.
#[derive(Debug, Default)]
pub struct SmsCounters {
    sent: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    disabled: AtomicU64,
    dropped_budget: AtomicU64,
    deferred_quiet: AtomicU64,
    expired: AtomicU64,
}

/// A copy of the [`SmsCounters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SmsCountersSnapshot {
    /// Messages Twilio accepted.
    pub sent: u64,
    /// Messages rejected by Twilio or given up after every retry.
    pub failed: u64,
    /// Retryable failures that were scheduled for another attempt.
    pub retried: u64,
    /// Messages not queued because SMS are disabled (no credentials).
    pub disabled: u64,
    /// Messages dropped because their recipient's hourly budget was spent.
    pub dropped_budget: u64,
    /// Times a message was held until the end of the quiet hours.
    pub deferred_quiet: u64,
    /// Messages not sent because they waited longer than `max_age`.
    pub expired: u64,
}

impl SmsCounters {
    pub fn snapshot(&self) -> SmsCountersSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SmsCountersSnapshot {
            sent: get(&self.sent),
            failed: get(&self.failed),
            retried: get(&self.retried),
            disabled: get(&self.disabled),
            dropped_budget: get(&self.dropped_budget),
            deferred_quiet: get(&self.deferred_quiet),
            expired: get(&self.expired),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What the enqueuing side and the sender task share.
struct Shared {
    outbox: Mutex<Outbox>,
    wake: Notify,
}

/// The SMS sink. See the module documentation.
pub struct SmsService {
    /// `None` when SMS are disabled.
    shared: Option<Arc<Shared>>,
    counters: Arc<SmsCounters>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl SmsService {
    /// Starts the service.
    ///
    /// Without credentials, logs one warning (target `alerts`) and returns a disabled service
    /// whose [`enqueue`](SmsService::enqueue) only counts. With credentials, opens the outbox in
    /// `outbox_dir` (created if needed; its pending messages will be sent), spawns the sender
    /// task on the current tokio runtime and returns; the HTTP client itself is created at the
    /// first send. Errors: the outbox cannot be opened, `settings.base_url` is not an http(s)
    /// URL, or there is no current tokio runtime.
    ///
    /// The sender stops when `shutdown` is cancelled or [`stop`](SmsService::stop) is called.
    pub fn start(
        settings: SmsSettings,
        credentials: Option<Credentials>,
        outbox_dir: &Path,
        shutdown: CancellationToken,
    ) -> io::Result<Arc<SmsService>> {
        let counters = Arc::new(SmsCounters::default());
        let stop = shutdown.child_token();
        let Some(credentials) = credentials else {
            tracing::warn!(target: "alerts",
                "SMS disabled: TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN/TWILIO_PHONE_NUMBER not set");
            return Ok(Arc::new(SmsService {
                shared: None,
                counters,
                stop,
                task: Mutex::new(None),
            }));
        };
        let messages_url = twilio::messages_url(&settings.base_url, &credentials.account_sid)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("the SMS service needs a tokio runtime: {e}")))?;
        let outbox = Outbox::open(outbox_dir)?;
        tracing::info!(target: "alerts", outbox = %outbox.path().display(), pending = outbox.pending_len(),
            from = %credentials.from, "SMS enabled (Twilio)");

        let shared = Arc::new(Shared {
            outbox: Mutex::new(outbox),
            wake: Notify::new(),
        });
        let sender = Sender {
            settings,
            credentials,
            messages_url,
            client: None,
            shared: shared.clone(),
            counters: counters.clone(),
            schedule: HashMap::new(),
        };
        let task = runtime.spawn(sender.run(stop.clone()));
        Ok(Arc::new(SmsService {
            shared: Some(shared),
            counters,
            stop,
            task: Mutex::new(Some(task)),
        }))
    }

    /// Queues `message` for sending. Synchronous and blocking (one fsync): call it from a plain
    /// thread, or through `spawn_blocking`.
    ///
    /// `Ok(true)` once the message is durably in the outbox; `Ok(false)` if SMS are disabled
    /// (counted in `disabled`) or its id is already known (nothing written). On `Err` nothing
    /// was queued and the same message may be enqueued again. Messages enqueued after
    /// [`stop`](SmsService::stop) stay in the outbox for the next start.
    pub fn enqueue(&self, message: SmsMessage) -> io::Result<bool> {
        let Some(shared) = &self.shared else {
            bump(&self.counters.disabled);
            tracing::debug!(target: "alerts", id = %message.id, gaveur_id = message.gaveur_id,
                "SMS not sent: SMS are disabled");
            return Ok(false);
        };
        let sms = QueuedSms {
            body: gsm7::sms_body(&message.body),
            id: message.id,
            gaveur_id: message.gaveur_id,
            to: message.to,
            critical: message.critical,
            queued_at: Utc::now(),
        };
        let (id, gaveur_id) = (sms.id.clone(), sms.gaveur_id);
        let queued = shared.outbox.lock().enqueue(sms)?;
        if queued {
            shared.wake.notify_one();
        } else {
            tracing::debug!(target: "alerts", %id, gaveur_id, "SMS already queued or sent");
        }
        Ok(queued)
    }

    /// Whether SMS are sent (credentials were given).
    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    pub fn counters(&self) -> SmsCountersSnapshot {
        self.counters.snapshot()
    }

    /// Messages in the outbox not yet settled (0 when disabled).
    pub fn pending_len(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(0, |shared| shared.outbox.lock().pending_len())
    }

    /// Stops the sender (if `shutdown` was not cancelled already) and waits for it, at most
    /// `timeout`. No new send starts after this is called; a request already in flight gets
    /// the rest of `timeout` to finish, then is abandoned. Unsent messages stay in the outbox
    /// for the next start (an abandoned one too, so it may reach its recipient twice).
    pub async fn stop(&self, timeout: Duration) {
        self.stop.cancel();
        let task = self.task.lock().take();
        let Some(mut task) = task else {
            return;
        };
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            tracing::warn!(target: "alerts", ?timeout,
                "the SMS sender did not stop in time: its request is abandoned, and the message \
                 will be sent again at the next start");
            task.abort();
            let _ = task.await;
        }
        let pending = self.pending_len();
        if pending > 0 {
            tracing::info!(target: "alerts", pending, "SMS left in the outbox for the next start");
        }
    }
}

impl Drop for SmsService {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The retry state of a pending message. In memory only: after a restart every pending message
/// is tried at once, which at worst is one early retry.
#[derive(Debug, Default)]
struct Schedule {
    /// Failed attempts so far.
    attempts: u32,
    /// Not to be sent before this (a backoff, or the end of the quiet hours).
    not_before: Option<Instant>,
    /// The end of the quiet hours that last held it: its age counts from there.
    held_until: Option<DateTime<Utc>>,
}

enum Next {
    Send(QueuedSms),
    /// Nothing due: wait for an enqueue, or until this instant if something is scheduled.
    Wait(Option<Instant>),
}

/// The sender task's state.
struct Sender {
    settings: SmsSettings,
    credentials: Credentials,
    messages_url: Url,
    /// Created at the first send.
    client: Option<TwilioClient>,
    shared: Arc<Shared>,
    counters: Arc<SmsCounters>,
    schedule: HashMap<String, Schedule>,
}

impl Sender {
    async fn run(mut self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.next() {
                Next::Send(sms) => self.send(sms).await,
                Next::Wait(deadline) => {
                    let sleep = async {
                        match deadline {
                            Some(deadline) => tokio::time::sleep_until(deadline).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => break,
                        () = self.shared.wake.notified() => {}
                        () = sleep => {}
                    }
                }
            }
        }
        tracing::debug!(target: "alerts", "SMS sender stopped");
    }

    /// The first pending message, in queue order, that may be sent now. Settles on the way the
    /// messages whose recipient's budget is spent, and defers those caught by the quiet hours.
    fn next(&mut self) -> Next {
        let now = Instant::now();
        let wall_now = Utc::now();
        let shared = self.shared.clone();
        let mut outbox = shared.outbox.lock();
        let mut earliest: Option<Instant> = None;
        let mut over_budget = Vec::new();
        let mut expired = Vec::new();
        let mut due = None;
        let pending: Vec<QueuedSms> = outbox.pending().cloned().collect();
        for sms in pending {
            let schedule = self.schedule.entry(sms.id.clone()).or_default();
            if let Some(not_before) = schedule.not_before
                && not_before > now
            {
                earliest = Some(earliest.map_or(not_before, |e| e.min(not_before)));
                continue;
            }
            if let Some(quiet) = &self.settings.quiet_hours
                && !(sms.critical && quiet.bypass_critical)
                && let Some(end) = quiet.ends_after(wall_now)
            {
                let not_before = now + (end - wall_now).to_std().unwrap_or_default();
                schedule.not_before = Some(not_before);
                schedule.held_until = Some(end);
                earliest = Some(earliest.map_or(not_before, |e| e.min(not_before)));
                bump(&self.counters.deferred_quiet);
                tracing::info!(target: "alerts", id = %sms.id, gaveur_id = sms.gaveur_id,
                    to = %masked(&sms.to), until = %end, "SMS held until the end of the quiet hours");
                continue;
            }
            // Quiet hours first: a message they held counts its age from their end.
            let waiting_since = schedule
                .held_until
                .map_or(sms.queued_at, |end| end.max(sms.queued_at));
            let age = wall_now - waiting_since;
            if age.to_std().is_ok_and(|age| age > self.settings.max_age) {
                expired.push((sms, age));
                continue;
            }
            let sent = outbox.sent_to_since(&sms.to, wall_now - outbox::BUDGET_WINDOW);
            if sent >= self.settings.budget_per_hour as usize
                && !(sms.critical && self.settings.budget_bypass_critical)
            {
                over_budget.push((sms, sent));
                continue;
            }
            due = Some(sms);
            break;
        }
        for (sms, age) in expired {
            bump(&self.counters.expired);
            tracing::warn!(target: "alerts", id = %sms.id, gaveur_id = sms.gaveur_id,
                to = %masked(&sms.to), waited_s = age.num_seconds(), max_age_s = self.settings.max_age.as_secs(),
                outcome = "expired", "SMS expired: pending too long to be sent late");
            self.settle(
                &mut outbox,
                &sms,
                Outcome::Expired {
                    waited_s: age.num_seconds(),
                },
            );
        }
        for (sms, sent) in over_budget {
            bump(&self.counters.dropped_budget);
            tracing::warn!(target: "alerts", id = %sms.id, gaveur_id = sms.gaveur_id,
                to = %masked(&sms.to), sent_last_hour = sent, budget = self.settings.budget_per_hour,
                outcome = "dropped_budget", "SMS dropped: the recipient's hourly budget is spent");
            self.settle(&mut outbox, &sms, Outcome::DroppedBudget);
        }
        match due {
            Some(sms) => Next::Send(sms),
            None => Next::Wait(earliest),
        }
    }

    async fn send(&mut self, sms: QueuedSms) {
        // No `select!` on shutdown here: abandoning a request Twilio may already have accepted
        // is the one way to send a message twice, so it is left to finish (it is bounded by
        // the client's timeout, and `SmsService::stop` bounds the wait anyway).
        let outcome = match self.client() {
            Ok(client) => client.send(&sms.to, &sms.body).await,
            Err(reason) => SendOutcome::Retryable {
                reason,
                retry_after: None,
            },
        };
        let to = masked(&sms.to);
        let shared = self.shared.clone();
        let mut outbox = shared.outbox.lock();
        match outcome {
            SendOutcome::Sent { twilio_sid } => {
                bump(&self.counters.sent);
                tracing::info!(target: "alerts", id = %sms.id, gaveur_id = sms.gaveur_id, %to,
                    outcome = "sent", twilio_sid = twilio_sid.as_deref().unwrap_or("-"), "SMS sent");
                self.settle(&mut outbox, &sms, Outcome::Sent { twilio_sid });
            }
            SendOutcome::Rejected { status, reason } => {
                bump(&self.counters.failed);
                tracing::error!(target: "alerts", id = %sms.id, gaveur_id = sms.gaveur_id, %to,
                    outcome = "rejected", status, %reason, "SMS rejected by Twilio; not retried");
                self.settle(&mut outbox, &sms, Outcome::Rejected { status, reason });
            }
            SendOutcome::Retryable {
                reason,
                retry_after,
            } => {
                let schedule = self.schedule.entry(sms.id.clone()).or_default();
                schedule.attempts += 1;
                let attempts = schedule.attempts;
                if attempts >= self.settings.max_attempts {
                    bump(&self.counters.failed);
                    tracing::error!(target: "alerts", id = %sms.id, gaveur_id = sms.gaveur_id, %to,
                        outcome = "gave_up", attempts, %reason, "SMS given up after its last attempt");
                    self.settle(&mut outbox, &sms, Outcome::GaveUp);
                } else {
                    let delay = backoff(&self.settings, attempts, retry_after);
                    schedule.not_before = Some(Instant::now() + delay);
                    bump(&self.counters.retried);
                    tracing::warn!(target: "alerts", id = %sms.id, gaveur_id = sms.gaveur_id, %to,
                        outcome = "retry", attempts, retry_in = ?delay, %reason, "SMS not sent; will retry");
                }
            }
        }
    }

    fn client(&mut self) -> Result<&TwilioClient, String> {
        if self.client.is_none() {
            let client = TwilioClient::new(self.messages_url.clone(), self.credentials.clone())
                .map_err(|e| format!("cannot create the HTTP client: {e}"))?;
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| "no HTTP client".to_string())
    }

    /// Records the outcome of `sms`. If the journal cannot be written the message is still
    /// settled for this run (it is not sent twice now), but it will be again after a restart.
    fn settle(&mut self, outbox: &mut Outbox, sms: &QueuedSms, outcome: Outcome) {
        self.schedule.remove(&sms.id);
        if let Err(e) = outbox.mark_done(&sms.id, outcome, Utc::now()) {
            tracing::error!(target: "alerts", id = %sms.id, gaveur_id = sms.gaveur_id, error = %e,
                "cannot record an SMS outcome in the outbox; after a restart it will be handled again");
        }
    }
}

/// The delay before the next attempt after `attempts` failures: the server's `Retry-After` if it
/// gave one, else the shared backoff from `retry_initial` (full jitter); never more than
/// `retry_max`.
fn backoff(settings: &SmsSettings, attempts: u32, retry_after: Option<Duration>) -> Duration {
    match retry_after {
        Some(retry_after) => retry_after.min(settings.retry_max),
        None => Backoff::new(settings.retry_initial, settings.retry_max).delay(attempts),
    }
}

/// A phone number as logs show it: its last four digits.
fn masked(phone: &str) -> String {
    let digits: Vec<char> = phone.chars().collect();
    let tail: String = digits[digits.len().saturating_sub(4)..].iter().collect();
    format!("***{tail}")
}
