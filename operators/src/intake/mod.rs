//! The operator chain behind every source: authenticate → validate → authorize → dedup →
//! envelope → live push → durable log. Everything else derived from a record (Parquet,
//! analytics, alerts, the live topic) reads the log through its own cursor. Sources call [`PipelineIntake::submit`]; the returned
//! ticket resolves when the entry is fsynced, which is when the producer may be acknowledged.

use std::sync::Arc;

use crate::auth::audit::{self, AccessContext};
use crate::auth::permissions::{self, Action, Resource, Scope};
use crate::auth::{AuthError, AuthErrorCode, Verifier};
use crate::dedup::DedupIndex;
use crate::validate::{Validated, Validator};
use futures::FutureExt;
use gaveurs_connectors::intake::{
    BadCredentials, ConnectionContext, DurableTicket, Intake, RawInput, Saved, Submitted,
    Unavailable, Verdict,
};
use gaveurs_schemas::dead_letter::Rejection;
use gaveurs_schemas::envelope::Transport;
use gaveurs_schemas::records::{Record, SqalSample};
use gaveurs_schemas::{DeadLetter, Event, Principal};
use gaveurs_sinks::kafka::KafkaOutput;
use gaveurs_sinks::wal::{self, AppendRefused, Lsn, Wal, WalEntry, WhenFull};
use gaveurs_sinks::websocket::Hub;

use crate::devices::DeviceRegistry;

mod metrics;

#[derive(Clone)]
pub struct PipelineIntake {
    inner: Arc<Inner>,
}

pub struct IntakeParts {
    pub validator: Validator,
    pub dedup: Arc<DedupIndex>,
    pub wal: Wal,
    pub hub: Arc<Hub>,
    pub devices: Arc<DeviceRegistry>,
    pub verifier: Arc<Verifier>,
    /// The DLQ and live topics, when Kafka is configured.
    pub kafka: Option<Arc<KafkaOutput>>,
}

struct Inner {
    validator: Validator,
    dedup: Arc<DedupIndex>,
    wal: Wal,
    hub: Arc<Hub>,
    devices: Arc<DeviceRegistry>,
    verifier: Arc<Verifier>,
    kafka: Option<Arc<KafkaOutput>>,
}

impl PipelineIntake {
    pub fn new(parts: IntakeParts) -> Self {
        Self {
            inner: Arc::new(Inner {
                validator: parts.validator,
                dedup: parts.dedup,
                wal: parts.wal,
                hub: parts.hub,
                devices: parts.devices,
                verifier: parts.verifier,
                kafka: parts.kafka,
            }),
        }
    }
}

impl Intake for PipelineIntake {
    fn submit(&self, input: RawInput) -> impl Future<Output = Submitted> + Send {
        let inner = self.inner.clone();
        async move { inner.submit(input).await }
    }

    fn authenticate_connection(
        &self,
        token: &str,
        context: ConnectionContext<'_>,
    ) -> impl Future<Output = Result<(), BadCredentials>> + Send {
        let inner = self.inner.clone();
        let token = token.to_string();
        let source = context.source.to_string();
        let transport = context.transport.to_string();
        async move {
            match inner.verifier.verify(&token, None).await {
                Ok(verified) => {
                    audit::authenticated(AccessContext {
                        resource: &transport,
                        source: &source,
                        request_id: "-",
                        user: Some(verified.principal.display_name()),
                    });
                    Ok(())
                }
                Err(e) => {
                    audit::unauthorized(
                        &e,
                        AccessContext {
                            resource: &transport,
                            source: &source,
                            request_id: "-",
                            user: None,
                        },
                    );
                    Err(BadCredentials(e.to_string()))
                }
            }
        }
    }
}

impl Inner {
    async fn submit(&self, input: RawInput) -> Submitted {
        // Nothing is processed without a verified principal.
        let token = input
            .credentials
            .message_token
            .as_deref()
            .or(input.credentials.connection_token.as_deref());
        let principal = match token {
            None => Err(AuthError::missing()),
            Some(token) => match self.verifier.verify(token, input.produced_at).await {
                Err(e) if e.code == AuthErrorCode::Expired && waited_in_broker(&input) => {
                    self.verify_waited(token, &input, e).await
                }
                verified => verified.map(|v| v.principal),
            },
        };
        let principal = match principal {
            Ok(principal) => principal,
            // Its dead letter was written when the record was first read.
            Err(_) if input.reread => return self.after_everything_so_far(Verdict::Control),
            Err(e) => return self.refuse_auth(e, None, input).await,
        };
        let validated = self
            .validator
            .validate(&input.route, &input.payload, input.received_at);
        if input.reread {
            return self.reread(validated, principal, input).await;
        }
        match validated {
            Ok(Validated::Record(record)) => {
                if let Err(e) = authorize_write(&principal, &record, input.backfill) {
                    return self.refuse_auth(e, Some(&principal), input).await;
                }
                self.accept(record, principal, input).await
            }
            Ok(Validated::DeviceStatus(status)) => {
                let site = SqalSample::site_of_device(&status.device_id)
                    .map(|s| s.as_str().to_string())
                    .or_else(|| input.route.site.clone());
                let scope = Scope {
                    gaveur_id: None,
                    site: site.as_deref(),
                };
                if !permissions::allowed(&principal, Resource::SqalData, Action::Write, scope) {
                    let e = AuthError::forbidden(format!(
                        "{} may not report the status of {}",
                        principal.display_name(),
                        status.device_id
                    ));
                    return self.refuse_auth(e, Some(&principal), input).await;
                }
                tracing::debug!(device = %status.device_id, "device status");
                self.devices.update(status);
                // Nothing is written, but the answer must not overtake earlier messages.
                self.after_everything_so_far(Verdict::Control)
            }
            Err(rejection) => {
                tracing::debug!(
                    reason = %rejection.reason,
                    topic = input.provenance.topic.as_deref().unwrap_or(""),
                    "input refused: {}",
                    rejection.message
                );
                self.dead_letter(rejection, Some(&principal), input).await
            }
        }
    }

    /// The token of a record that waited in an external MQTT broker expired meanwhile: it is
    /// judged at the record's own event time, within the configured grace.
    async fn verify_waited(
        &self,
        token: &str,
        input: &RawInput,
        expired: AuthError,
    ) -> Result<Arc<Principal>, AuthError> {
        let validated = self
            .validator
            .validate(&input.route, &input.payload, input.received_at);
        let Ok(Validated::Record(record)) = validated else {
            return Err(expired);
        };
        let verified = self
            .verifier
            .verify_waited(token, record.event_time())
            .await?;
        Ok(verified.principal)
    }

    /// A record the partition's previous owner already published, read again for the
    /// partition's alert state: logged for the derived operators only — no dedup (its key is
    /// known), no live push, no second row, and no second dead letter if it is refused.
    async fn reread(
        &self,
        validated: Result<Validated, Rejection>,
        principal: Arc<Principal>,
        input: RawInput,
    ) -> Submitted {
        let Ok(Validated::Record(record)) = validated else {
            return self.after_everything_so_far(Verdict::Control);
        };
        if authorize_write(&principal, &record, input.backfill).is_err() {
            return self.after_everything_so_far(Verdict::Control);
        }
        let verdict = Verdict::Accepted {
            saved: saved(&record),
            duplicate: true,
        };
        let event = Event::accepted(
            record,
            input.received_at,
            input.provenance,
            Some(Principal::clone(&principal)),
            input.backfill,
        );
        self.log(WalEntry::Reread(event), verdict).await
    }

    /// A refused token or permission: audit line, dead-letter row, refusal verdict.
    async fn refuse_auth(
        &self,
        error: AuthError,
        principal: Option<&Principal>,
        input: RawInput,
    ) -> Submitted {
        let rejection = Rejection::new(error.code.reject_reason(), error.to_string());
        let dead = self.dead_letter_row(&rejection, principal, &input);
        audit::unauthorized(
            &error,
            AccessContext {
                resource: input.provenance.topic.as_deref().unwrap_or("-"),
                source: input.provenance.source.as_deref().unwrap_or("-"),
                request_id: &dead.event_id.to_string(),
                user: principal.map(|p| p.display_name()),
            },
        );
        self.log_refusal(dead, rejection, &input).await
    }

    async fn dead_letter(
        &self,
        rejection: Rejection,
        principal: Option<&Principal>,
        input: RawInput,
    ) -> Submitted {
        let dead = self.dead_letter_row(&rejection, principal, &input);
        self.log_refusal(dead, rejection, &input).await
    }

    /// The dead-letter row goes to the log (and the DLQ topic); the refusal is the verdict.
    async fn log_refusal(
        &self,
        dead: DeadLetter,
        rejection: Rejection,
        input: &RawInput,
    ) -> Submitted {
        if let Some(kafka) = &self.kafka {
            kafka.dead_letter(&dead, &input.payload);
        }
        metrics::record_rejected(dead.reason_code.as_str(), dead.stage.as_str());
        let verdict = Verdict::Rejected {
            reason: rejection.reason,
            message: rejection.message,
        };
        self.log(WalEntry::DeadLetter(dead), verdict).await
    }

    fn dead_letter_row(
        &self,
        rejection: &Rejection,
        principal: Option<&Principal>,
        input: &RawInput,
    ) -> DeadLetter {
        DeadLetter {
            principal_sub: principal.map(|p| p.sub.clone()),
            ..DeadLetter::new(
                rejection,
                &input.payload,
                input.route.target.stream(),
                input.route.site.clone(),
                input.provenance.clone(),
                input.received_at,
            )
        }
    }

    async fn accept(
        &self,
        record: Record,
        principal: Arc<Principal>,
        input: RawInput,
    ) -> Submitted {
        // Before the dedup index hears of it: a record refused now must not pass for a
        // duplicate when it is sent again.
        if let Some(refused) = self.refused_while_disk_full(&input) {
            return refused;
        }
        let saved = saved(&record);
        match self.dedup.first_sighting(record.dedup_key()) {
            Ok(true) => {}
            Ok(false) => {
                metrics::record_duplicate(record.stream());
                return self.after_everything_so_far(Verdict::Accepted {
                    saved,
                    duplicate: true,
                });
            }
            Err(e) => {
                // Without the index nobody can tell a replay from a new record: not
                // acknowledged, so the producer sends it again.
                tracing::error!(error = %e, "the dedup index cannot be read; the record is not acknowledged");
                return Submitted {
                    verdict: Verdict::Accepted {
                        saved,
                        duplicate: false,
                    },
                    durable: futures::future::ready(Err(Unavailable)).boxed(),
                };
            }
        }
        let event = Event::accepted(
            record,
            input.received_at,
            input.provenance,
            Some(Principal::clone(&principal)),
            input.backfill,
        );
        metrics::record_accepted(event.envelope.stream, event.envelope.provenance.transport);
        // Live views get the record now; they must not wait for the disk (SPEC §3).
        self.hub.publish_event(&event);
        let verdict = Verdict::Accepted {
            saved,
            duplicate: false,
        };
        // The dedup index has seen it: refused now, its resend would pass for a duplicate.
        // So it waits for space like Kafka does (the disk filled since the check above).
        let entry = WalEntry::Event(event);
        let encoded = wal::encode(&entry);
        self.log_encoded(entry, encoded, verdict, WhenFull::Wait)
            .await
    }

    async fn log(&self, entry: WalEntry, verdict: Verdict) -> Submitted {
        let encoded = wal::encode(&entry);
        let when_full = when_full(entry.provenance().transport);
        self.log_encoded(entry, encoded, verdict, when_full).await
    }

    async fn log_encoded(
        &self,
        entry: WalEntry,
        encoded: Vec<u8>,
        verdict: Verdict,
        when_full: WhenFull,
    ) -> Submitted {
        match self.wal.append_encoded(entry, encoded, when_full).await {
            Ok(lsn) => Submitted {
                verdict,
                durable: self.ticket(lsn),
            },
            Err(refused @ AppendRefused::DiskFull(_)) => Submitted {
                verdict: Verdict::Busy {
                    message: refused.to_string(),
                },
                durable: futures::future::ready(Ok(())).boxed(),
            },
            Err(AppendRefused::Closed(_)) => Submitted {
                verdict,
                durable: futures::future::ready(Err(Unavailable)).boxed(),
            },
        }
    }

    /// While the disk is full, input from producers that can hear a refusal is refused.
    fn refused_while_disk_full(&self, input: &RawInput) -> Option<Submitted> {
        if when_full(input.provenance.transport) == WhenFull::Wait {
            return None;
        }
        let message = AppendRefused::DiskFull(self.wal.disk_full()?).to_string();
        Some(Submitted {
            verdict: Verdict::Busy { message },
            durable: futures::future::ready(Ok(())).boxed(),
        })
    }

    /// A duplicate's first copy may not be durable yet, and a status answer must stay in
    /// order: both wait for everything appended before them.
    fn after_everything_so_far(&self, verdict: Verdict) -> Submitted {
        Submitted {
            verdict,
            durable: self.ticket(self.wal.last_appended()),
        }
    }

    fn ticket(&self, lsn: Lsn) -> DurableTicket {
        self.wal
            .durable(lsn)
            .map(|r| r.map_err(|_| Unavailable))
            .boxed()
    }
}

/// A producer that can hear a refusal is told at once that the disk is full; Kafka and an
/// external broker keep the record until the log takes it.
fn when_full(transport: Transport) -> WhenFull {
    match transport {
        Transport::Mqtt | Transport::WebSocket => WhenFull::Refuse,
        Transport::MqttBroker | Transport::Kafka | Transport::Log => WhenFull::Wait,
    }
}

/// MQTT keeps no publish time: a record from an external broker may have waited there,
/// through an outage of the pipeline, for longer than its token lived.
fn waited_in_broker(input: &RawInput) -> bool {
    input.produced_at.is_none() && input.provenance.transport == Transport::MqttBroker
}

/// May `principal` write this record? Meals and outcomes are gavage data of their gaveur and
/// site; samples are SQAL data of their station's site. A `backfill` record silences SMS, so
/// it also needs the right to replay (SPEC §1.4).
fn authorize_write(
    principal: &Principal,
    record: &Record,
    backfill: bool,
) -> Result<(), AuthError> {
    let (resource, scope, what) = match record {
        Record::Gavage(meal) => (
            Resource::GavageData,
            Scope {
                gaveur_id: Some(meal.gaveur_id),
                site: Some(meal.site.as_str()),
            },
            format!("gavage data of gaveur {} at {}", meal.gaveur_id, meal.site),
        ),
        Record::LotOutcome(outcome) => (
            Resource::GavageData,
            Scope {
                gaveur_id: Some(outcome.gaveur_id),
                site: Some(outcome.site.as_str()),
            },
            format!("the outcome of gaveur {}'s lot", outcome.gaveur_id),
        ),
        Record::Sqal(sample) => (
            Resource::SqalData,
            Scope {
                gaveur_id: None,
                site: Some(sample.site_code.as_str()),
            },
            format!("SQAL data of {}", sample.device_id),
        ),
    };
    if !permissions::allowed(principal, resource, Action::Write, scope) {
        return Err(AuthError::forbidden(format!(
            "{} may not write {what}",
            principal.display_name()
        )));
    }
    if backfill && !permissions::allowed(principal, resource, Action::Replay, scope) {
        return Err(AuthError::forbidden(format!(
            "{} may not replay {what} as backfill (only admin and the site's gateway may)",
            principal.display_name()
        )));
    }
    Ok(())
}

fn saved(record: &Record) -> Saved {
    match record {
        Record::Gavage(meal) => Saved::Meal {
            code_lot: meal.code_lot.clone(),
            jour: meal.jour,
            moment: meal.moment.as_str(),
        },
        Record::Sqal(sample) => Saved::Sample {
            sample_id: sample.sample_id.clone(),
            final_score: sample.final_score,
            grade: sample.grade,
        },
        Record::LotOutcome(outcome) => Saved::Outcome {
            code_lot: outcome.code_lot.clone(),
        },
    }
}
