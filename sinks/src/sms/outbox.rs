//! The durable SMS outbox: what must be sent survives a crash, and what was sent is not sent
//! again.
//!
//! One append-only journal, `outbox.jsonl`, in the directory the caller gives (one per
//! instance). Each line is a JSON record:
//!
//! - `{"record":"queued","id":…,"gaveur_id":…,"to":…,"body":…,"critical":…,"queued_at":…}` when
//!   a message is accepted;
//! - `{"record":"done","id":…,"to":…,"outcome":{"kind":"sent","twilio_sid":…},"at":…}` when it
//!   is settled; `outcome.kind` is `sent`, `rejected` (with `status` and `reason`),
//!   `dropped_budget`, `gave_up` or `expired` (with `waited_s`).
//!
//! Every append is fsynced before it returns, so a message whose `enqueue` returned is on disk,
//! and a message whose `done` was written is never sent again. Pending messages are the queued
//! ones without a `done`. The window between Twilio accepting a message and its `done` reaching
//! the disk is the only place a crash can send a message twice (at-least-once).
//!
//! On open the journal is read (a torn last line, from a crash in the middle of an append, is
//! ignored) and compacted: rewritten atomically with the pending messages and the `done` records
//! of the last [`DONE_RETENTION`], so that an id seen during that time is still recognised (an
//! `enqueue` of it is a no-op) and the per-recipient hourly budget holds across restarts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::fsutil::{create_dir_durable, write_atomic};

/// The journal's file name inside the outbox directory.
pub const JOURNAL: &str = "outbox.jsonl";

/// How long settled ids are remembered.
pub const DONE_RETENTION: TimeDelta = TimeDelta::days(7);

/// How far back sends are counted for the per-recipient budget.
pub const BUDGET_WINDOW: TimeDelta = TimeDelta::hours(1);

/// A message in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedSms {
    /// The idempotency key (the alert id): a second message with the same id is not queued.
    pub id: String,
    pub gaveur_id: i64,
    /// The recipient, E.164.
    pub to: String,
    pub body: String,
    pub critical: bool,
    pub queued_at: DateTime<Utc>,
}

/// How a message was settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Twilio accepted it.
    Sent { twilio_sid: Option<String> },
    /// Twilio refused it for good (a 4xx other than 429).
    Rejected { status: u16, reason: String },
    /// The recipient had already received their hourly budget of messages.
    DroppedBudget,
    /// Every attempt failed with a retryable error.
    GaveUp,
    /// It waited longer than the configured maximum age and was not sent.
    Expired { waited_s: i64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
enum Record {
    Queued(QueuedSms),
    Done {
        id: String,
        // The recipient is repeated here so that the hourly budget can be rebuilt after
        // compaction has dropped the `queued` line.
        #[serde(default)]
        to: String,
        outcome: Outcome,
        at: DateTime<Utc>,
    },
}

/// The outbox of one instance. Not thread-safe by itself: the SMS service wraps it in a mutex.
#[derive(Debug)]
pub struct Outbox {
    path: PathBuf,
    file: File,
    /// Bytes of the journal known to be whole records: a failed append is cut back to it.
    len: u64,
    /// Pending messages in queue order, by sequence number.
    pending: BTreeMap<u64, QueuedSms>,
    pending_seq: HashMap<String, u64>,
    next_seq: u64,
    /// Ids settled during the retention period (pending ids are in `pending_seq`).
    done: HashSet<String>,
    /// Recipient and time of the messages sent during the budget window (older ones are pruned
    /// as they are met).
    sent: Vec<(String, DateTime<Utc>)>,
}

impl Outbox {
    /// Opens (creating it if needed) the outbox in `dir`, recovers its journal and compacts it.
    pub fn open(dir: &Path) -> io::Result<Outbox> {
        Outbox::open_at(dir, Utc::now())
    }

    /// [`Outbox::open`] with an explicit "now", against which retention is measured.
    pub fn open_at(dir: &Path, now: DateTime<Utc>) -> io::Result<Outbox> {
        create_dir_durable(dir)?;
        let path = dir.join(JOURNAL);
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };

        let mut queued: Vec<QueuedSms> = Vec::new();
        let mut done: HashMap<String, (String, Outcome, DateTime<Utc>)> = HashMap::new();
        let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
        // `split` yields a last, empty piece after the final newline; anything else there is a
        // line whose append was cut short.
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Record>(line) {
                Ok(Record::Queued(sms)) => queued.push(sms),
                Ok(Record::Done {
                    id,
                    to,
                    outcome,
                    at,
                }) => {
                    done.insert(id, (to, outcome, at));
                }
                Err(e) if i == last => {
                    tracing::warn!(target: "alerts", journal = %path.display(), error = %e,
                        "ignoring the torn last line of the SMS outbox (a crash during an append)");
                }
                Err(e) => {
                    // Nothing better to do than skip it: refusing to start would stop every
                    // alert. A lost `queued` loses one SMS, a lost `done` may repeat one.
                    tracing::error!(target: "alerts", journal = %path.display(), line = i + 1, error = %e,
                        "skipping an unreadable line of the SMS outbox");
                }
            }
        }

        let mut compacted = Vec::new();
        let mut pending = Vec::new();
        let mut seen = HashSet::new();
        for sms in queued {
            // Only the first `queued` of an id counts, as `enqueue` would have refused the rest.
            if done.contains_key(&sms.id) || !seen.insert(sms.id.clone()) {
                continue;
            }
            append_line(&mut compacted, &Record::Queued(sms.clone()))?;
            pending.push(sms);
        }
        let mut done: Vec<_> = done.into_iter().collect();
        done.sort_by_key(|(_, (_, _, at))| *at);
        let mut done_ids = HashSet::new();
        let mut sent = Vec::new();
        for (id, (to, outcome, at)) in done {
            if now - at > DONE_RETENTION {
                continue;
            }
            if matches!(outcome, Outcome::Sent { .. }) && now - at <= BUDGET_WINDOW {
                sent.push((to.clone(), at));
            }
            done_ids.insert(id.clone());
            append_line(
                &mut compacted,
                &Record::Done {
                    id,
                    to,
                    outcome,
                    at,
                },
            )?;
        }
        // Creates the journal if it did not exist, and fsyncs the directory either way.
        write_atomic(&path, &compacted)?;
        let file = OpenOptions::new().append(true).open(&path)?;

        let mut outbox = Outbox {
            path,
            file,
            len: compacted.len() as u64,
            pending: BTreeMap::new(),
            pending_seq: HashMap::new(),
            next_seq: 0,
            done: done_ids,
            sent,
        };
        for sms in pending {
            outbox.insert_pending(sms);
        }
        Ok(outbox)
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `id` is pending or was settled during the retention period.
    pub fn is_known(&self, id: &str) -> bool {
        self.pending_seq.contains_key(id) || self.done.contains(id)
    }

    /// Queues `sms`, durably, unless its id is known. `Ok(true)` if it was queued, `Ok(false)`
    /// if the id is known (nothing is written). On error nothing is queued and the id stays
    /// unknown, so the caller may try again.
    pub fn enqueue(&mut self, sms: QueuedSms) -> io::Result<bool> {
        if self.is_known(&sms.id) {
            return Ok(false);
        }
        self.append(&Record::Queued(sms.clone()))?;
        self.insert_pending(sms);
        Ok(true)
    }

    /// Settles the pending message `id`, durably. Unknown or already settled ids are ignored
    /// (`Ok(false)`).
    ///
    /// The message is settled in memory even if the record cannot be written (`Err`): the
    /// outcome did happen, and this run must not send it again. Only a restart would, since the
    /// journal still has it pending.
    pub fn mark_done(&mut self, id: &str, outcome: Outcome, at: DateTime<Utc>) -> io::Result<bool> {
        let Some(seq) = self.pending_seq.remove(id) else {
            return Ok(false);
        };
        let to = self
            .pending
            .remove(&seq)
            .map(|sms| sms.to)
            .unwrap_or_default();
        self.done.insert(id.to_string());
        if matches!(outcome, Outcome::Sent { .. }) {
            self.sent.push((to.clone(), at));
        }
        self.append(&Record::Done {
            id: id.to_string(),
            to,
            outcome,
            at,
        })?;
        Ok(true)
    }

    /// The pending messages, in queue order.
    pub fn pending(&self) -> impl Iterator<Item = &QueuedSms> {
        self.pending.values()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// How many messages were sent to `to` after `since` (by this run or, within the budget
    /// window, by earlier ones).
    pub fn sent_to_since(&mut self, to: &str, since: DateTime<Utc>) -> usize {
        // `sent` only grows with real sends, a handful per hour: pruning here is enough.
        let horizon = since.min(Utc::now() - BUDGET_WINDOW);
        self.sent.retain(|(_, at)| *at > horizon);
        self.sent
            .iter()
            .filter(|(recipient, at)| recipient == to && *at > since)
            .count()
    }

    fn insert_pending(&mut self, sms: QueuedSms) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending_seq.insert(sms.id.clone(), seq);
        self.pending.insert(seq, sms);
    }

    /// Appends one record and fsyncs it. A partial write is cut off again, so that the next
    /// append does not glue itself to a broken line.
    fn append(&mut self, record: &Record) -> io::Result<()> {
        let mut line = Vec::new();
        append_line(&mut line, record)?;
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = self.file.set_len(self.len) {
                    tracing::error!(target: "alerts", journal = %self.path.display(), error = %cut,
                        "cannot cut a failed append off the SMS outbox");
                }
                Err(e)
            }
        }
    }
}

fn append_line(buffer: &mut Vec<u8>, record: &Record) -> io::Result<()> {
    serde_json::to_writer(&mut *buffer, record)?;
    buffer.push(b'\n');
    Ok(())
}
