//! `gaveurs replay`: past feeding data (gzip CSV in the layout of `../shared/data`) published
//! to a running pipeline as records flagged `backfill`, so they never trigger an SMS.
//!
//! Every meal becomes a full gavage record and every lot an outcome (see [`records`]). They
//! go over one MQTT 5 connection at QoS 1, each PUBLISH with the user properties
//! `authorization: Bearer <token>` and `backfill: true`: all meals first, in file order, then
//! — once every meal is acknowledged, so a lot's meals are durable before its outcome — every
//! outcome. A window of unacknowledged PUBLISHes (the listener's Receive Maximum, at most
//! [`MAX_WINDOW`]) keeps the pipeline busy; `rate` paces instead. A refusal (PUBACK reason
//! ≥ 0x80, e.g. 0x99 for a negative dose) is counted and reported, never a reason to stop.
//!
//! The replay ends once every record is acknowledged or refused. A lost connection ends it
//! with an error (there is no reconnect): what was acknowledged is durable, and replaying the
//! same files again stores nothing twice, since a record whose idempotency key was stored
//! before is acknowledged as a duplicate.

pub mod csv;
pub mod records;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use gaveurs_connectors::intake::BACKFILL;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use records::{Kind, Outgoing, Plan, Skipped, plan};

use crate::producer::{MqttVersion, ProducerError, ProducerReader, ProducerWriter, ServerPacket};

/// Most PUBLISHes in flight, whatever Receive Maximum the server announces.
pub const MAX_WINDOW: usize = 1024;
/// How long the replay waits for an acknowledgement before it gives up on the pipeline.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// A PINGREQ goes out when nothing else did for this long (slow `--rate`): the listener
/// closes connections idle for 1.5 × the keep-alive of 60 s.
const PING_EVERY: Duration = Duration::from_secs(30);
/// Progress goes to stderr at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Refusals and skipped rows listed in the report.
const LISTED: usize = 10;

/// Makes a fresh token (a dev-mode token minted again before the last one expires).
pub type Mint = Box<dyn Fn() -> anyhow::Result<String> + Send>;

pub struct ReplayOptions {
    /// The embedded listener (or a broker; its PUBACKs then say nothing about refusals).
    pub mqtt: SocketAddr,
    /// Records per second; `None` = as fast as acknowledgements allow.
    pub rate: Option<f64>,
    pub token: String,
    /// How to renew `token`, and how often.
    pub renew: Option<(Duration, Mint)>,
    /// Print progress on stderr every few seconds.
    pub progress: bool,
}

/// Sent, accepted and refused records of one kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub sent: u64,
    pub accepted: u64,
    pub refused: u64,
}

/// A record the pipeline refused.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub reason: u8,
    pub label: String,
    /// The pipeline's reason string (MQTT 5), e.g. `dose_reelle: must be ≥ 0 (got -4)`.
    pub why: Option<String>,
}

/// What a replay did.
#[derive(Debug, Default)]
pub struct Summary {
    pub meals: Counts,
    pub outcomes: Counts,
    /// CSV rows that became no record.
    pub skipped: Vec<Skipped>,
    /// The first refusals, in acknowledgement order.
    pub refusals: Vec<Refusal>,
    /// Refusals per MQTT 5 reason code.
    pub reasons: BTreeMap<u8, u64>,
    pub elapsed: Duration,
}

impl Summary {
    fn records(&self) -> u64 {
        self.meals.accepted + self.meals.refused + self.outcomes.accepted + self.outcomes.refused
    }

    fn per_second(&self) -> f64 {
        self.records() as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }

    /// One machine-readable line (stdout): `replayed meals=… meals_accepted=… …`.
    pub fn line(&self) -> String {
        format!(
            "replayed meals={} meals_accepted={} meals_refused={} outcomes={} outcomes_accepted={} outcomes_refused={} skipped={} elapsed_s={:.3} records_per_s={:.0}",
            self.meals.sent,
            self.meals.accepted,
            self.meals.refused,
            self.outcomes.sent,
            self.outcomes.accepted,
            self.outcomes.refused,
            self.skipped.len(),
            self.elapsed.as_secs_f64(),
            self.per_second(),
        )
    }

    /// The report for people (stderr).
    pub fn report(&self) -> String {
        let mut out = String::new();
        let counts = |what: &str, c: &Counts| {
            format!(
                "replay: {what}: {} sent, {} accepted, {} refused\n",
                c.sent, c.accepted, c.refused
            )
        };
        out += &counts("meals", &self.meals);
        out += &counts("outcomes", &self.outcomes);
        out += &format!(
            "replay: {} CSV rows skipped; {} records acknowledged in {:.1} s ({:.0} records/s)\n",
            self.skipped.len(),
            self.records(),
            self.elapsed.as_secs_f64(),
            self.per_second()
        );
        if !self.reasons.is_empty() {
            let by_code: Vec<String> = self
                .reasons
                .iter()
                .map(|(code, n)| format!("{n} × 0x{code:02X} ({})", reason_name(*code)))
                .collect();
            out += &format!("replay: refused: {}\n", by_code.join(", "));
            for refusal in &self.refusals {
                out += &format!(
                    "  0x{:02X} {}{}\n",
                    refusal.reason,
                    refusal.label,
                    refusal
                        .why
                        .as_deref()
                        .map(|w| format!(": {w}"))
                        .unwrap_or_default()
                );
            }
            let total: u64 = self.reasons.values().sum();
            if total > self.refusals.len() as u64 {
                out += &format!(
                    "  … and {} more (the pipeline's dlq dataset has every one, with its reason)\n",
                    total - self.refusals.len() as u64
                );
            }
        }
        if !self.skipped.is_empty() {
            out += "replay: skipped rows:\n";
            for skipped in self.skipped.iter().take(LISTED) {
                out += &format!("  {skipped}\n");
            }
            if self.skipped.len() > LISTED {
                out += &format!("  … and {} more\n", self.skipped.len() - LISTED);
            }
        }
        out
    }
}

/// MQTT 5 names of the reason codes the pipeline refuses with.
fn reason_name(code: u8) -> &'static str {
    match code {
        0x80 => "unspecified error",
        0x83 => "implementation specific error",
        0x87 => "not authorized",
        0x90 => "topic name invalid",
        0x97 => "quota exceeded",
        0x99 => "payload format invalid",
        _ => "refused",
    }
}

/// Publishes the plan. The summary is returned even when the replay failed part-way (with
/// the error): what it says was acknowledged is durable.
pub async fn publish(
    plan: Plan,
    options: ReplayOptions,
    stop: CancellationToken,
) -> (Summary, anyhow::Result<()>) {
    let started = Instant::now();
    let mut summary = Summary {
        skipped: plan.skipped,
        ..Summary::default()
    };
    let result = async {
        let mut session = Session::connect(&options, started).await?;
        session
            .send_all(&plan.meals, &mut summary, &stop, &options)
            .await?;
        session
            .send_all(&plan.outcomes, &mut summary, &stop, &options)
            .await?;
        let _ = session.writer.disconnect().await;
        Ok(())
    }
    .await;
    summary.elapsed = started.elapsed();
    (summary, result)
}

struct Session {
    writer: ProducerWriter,
    reader: ProducerReader,
    addr: SocketAddr,
    window: usize,
    /// Per packet id, the index of the record it carries (in the current phase).
    in_flight: Vec<Option<usize>>,
    pending: usize,
    next_pkid: u16,
    token: String,
    token_since: Instant,
    /// When the next record may go, with `rate`.
    next_due: Instant,
    last_write: Instant,
    /// The last acknowledgement, or when the window stopped being empty.
    last_progress: Instant,
    last_report: Instant,
    started: Instant,
}

impl Session {
    async fn connect(options: &ReplayOptions, started: Instant) -> anyhow::Result<Session> {
        let addr = options.mqtt;
        let client_id = format!("gaveurs-replay-{:08x}", rand::random::<u32>());
        // The token also goes as the CONNECT password, so a bad one is refused at once
        // rather than record by record.
        let (writer, reader) = crate::producer::connect(
            addr,
            MqttVersion::V5,
            &client_id,
            Some(&options.token),
        )
        .await
        .map_err(|e| match e {
            ProducerError::Refused(code) => anyhow::anyhow!(
                "the pipeline at {addr} refused the connection (CONNACK 0x{code:02X}{}): check --token, or --user and --config for a dev-mode token",
                if code == 0x86 || code == 0x87 {
                    ", bad token"
                } else {
                    ""
                }
            ),
            ProducerError::Io(io) => anyhow::anyhow!(
                "cannot reach the pipeline's MQTT listener at {addr}: {io} (is `gaveurs run` running, and is --mqtt its [mqtt] listen address?)"
            ),
            other => anyhow::anyhow!("MQTT connection to {addr} failed: {other}"),
        })?;
        let window = reader
            .receive_maximum()
            .map_or(MAX_WINDOW, usize::from)
            .clamp(1, MAX_WINDOW);
        let now = Instant::now();
        Ok(Session {
            writer,
            reader,
            addr,
            window,
            in_flight: vec![None; 65_536],
            pending: 0,
            next_pkid: 0,
            token: options.token.clone(),
            token_since: now,
            next_due: now,
            last_write: now,
            last_progress: now,
            last_report: now,
            started,
        })
    }

    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if self.in_flight[usize::from(self.next_pkid)].is_none() {
                return self.next_pkid;
            }
        }
    }

    /// Publishes `records` and waits until each is acknowledged or refused.
    async fn send_all(
        &mut self,
        records: &[Outgoing],
        summary: &mut Summary,
        stop: &CancellationToken,
        options: &ReplayOptions,
    ) -> anyhow::Result<()> {
        let interval = options.rate.map(|r| Duration::from_secs_f64(1.0 / r));
        let mut next = 0;
        loop {
            let mut wrote = false;
            while next < records.len() && self.pending < self.window {
                let now = Instant::now();
                if interval.is_some() && self.next_due > now {
                    break;
                }
                if let Some((every, mint)) = &options.renew
                    && self.token_since.elapsed() >= *every
                {
                    self.token = mint().context("cannot renew the dev-mode token")?;
                    self.token_since = now;
                }
                let record = &records[next];
                let pkid = self.pkid();
                self.writer
                    .publish_with_properties(
                        &record.topic,
                        record.payload.clone(),
                        1,
                        pkid,
                        Some(&self.token),
                        &[(BACKFILL, "true")],
                    )
                    .with_context(|| format!("cannot encode {}", record.label))?;
                if self.pending == 0 {
                    self.last_progress = now;
                }
                self.in_flight[usize::from(pkid)] = Some(next);
                self.pending += 1;
                counts(summary, record.kind).sent += 1;
                next += 1;
                wrote = true;
                if let Some(interval) = interval {
                    // Late sends may catch up a little (timers are coarse), never in a burst.
                    self.next_due = self.next_due.max(now - Duration::from_millis(100)) + interval;
                }
            }
            if wrote {
                self.writer
                    .flush()
                    .await
                    .map_err(|e| self.lost(e, summary))?;
                self.last_write = Instant::now();
            }
            if next == records.len() && self.pending == 0 {
                return Ok(());
            }
            // Wait for an acknowledgement, the next record's turn, or a keep-alive.
            let mut wake = self.last_write + PING_EVERY;
            if self.pending > 0 {
                wake = wake.min(self.last_progress + ACK_TIMEOUT);
            }
            if interval.is_some() && next < records.len() && self.pending < self.window {
                wake = wake.min(self.next_due);
            }
            let packet = tokio::select! {
                _ = stop.cancelled() => anyhow::bail!("interrupted"),
                packet = self.reader.next_with_reason() => packet,
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if self.pending > 0 && now >= self.last_progress + ACK_TIMEOUT {
                        anyhow::bail!(
                            "no acknowledgement from {} for {} s with {} records in flight: is the pipeline stuck?",
                            self.addr,
                            ACK_TIMEOUT.as_secs(),
                            self.pending
                        );
                    }
                    if now >= self.last_write + PING_EVERY {
                        self.writer.raw(&[0xC0, 0x00]);
                        self.writer.flush().await.map_err(|e| self.lost(e, summary))?;
                        self.last_write = now;
                    }
                    continue;
                }
            };
            match packet.map_err(|e| self.lost(e, summary))? {
                (ServerPacket::Ack { pkid, reason }, why) => {
                    let Some(index) = self.in_flight[usize::from(pkid)].take() else {
                        anyhow::bail!(
                            "the server acknowledged packet {pkid}, which is not in flight"
                        );
                    };
                    self.pending -= 1;
                    self.last_progress = Instant::now();
                    let record = &records[index];
                    if reason >= 0x80 {
                        counts(summary, record.kind).refused += 1;
                        *summary.reasons.entry(reason).or_default() += 1;
                        if summary.refusals.len() < LISTED {
                            summary.refusals.push(Refusal {
                                reason,
                                label: record.label.clone(),
                                why,
                            });
                        }
                    } else {
                        counts(summary, record.kind).accepted += 1;
                    }
                    if options.progress && self.last_report.elapsed() >= PROGRESS_EVERY {
                        self.last_report = Instant::now();
                        eprintln!(
                            "replay: {} records acknowledged ({} refused) in {:.0} s",
                            summary.records(),
                            summary.meals.refused + summary.outcomes.refused,
                            self.started.elapsed().as_secs_f64()
                        );
                    }
                }
                (ServerPacket::Disconnect { reason }, why) => {
                    anyhow::bail!(
                        "the pipeline closed the connection (DISCONNECT 0x{reason:02X}{}) with {} records unacknowledged{}",
                        why.map(|w| format!(": {w}")).unwrap_or_default(),
                        self.pending,
                        RERUN
                    );
                }
                // PINGRESP, and anything else a server may send.
                (_, _) => {}
            }
        }
    }

    fn lost(&self, error: impl std::fmt::Display, summary: &Summary) -> anyhow::Error {
        anyhow::anyhow!(
            "lost the connection to {} after {} acknowledgements, with {} records unacknowledged: {error}{}",
            self.addr,
            summary.records(),
            self.pending,
            RERUN
        )
    }
}

const RERUN: &str =
    "; what was acknowledged is durable, and replaying the same files again stores nothing twice";

fn counts(summary: &mut Summary, kind: Kind) -> &mut Counts {
    match kind {
        Kind::Meal => &mut summary.meals,
        Kind::Outcome => &mut summary.outcomes,
    }
}
