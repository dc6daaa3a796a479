//! The operator chain behind every source: validate → dedup → envelope → live push →
//! durable log.
//! Sources call [`PipelineIntake::submit`]; the returned ticket resolves when the entry is
//! fsynced, which is when the producer may be acknowledged.

use std::sync::Arc;

use futures::FutureExt;
use gaveurs_connectors::intake::{
    DurableTicket, Intake, RawInput, Saved, Submitted, Unavailable, Verdict,
};
use gaveurs_operators::dedup::DedupIndex;
use gaveurs_operators::validate::{Validated, Validator};
use gaveurs_schemas::envelope::Envelope;
use gaveurs_schemas::records::Record;
use gaveurs_schemas::{DeadLetter, Event};
use gaveurs_sinks::wal::{Lsn, Wal, WalEntry};
use gaveurs_sinks::websocket::Hub;

use crate::devices::DeviceRegistry;

#[derive(Clone)]
pub struct PipelineIntake {
    inner: Arc<Inner>,
}

struct Inner {
    validator: Validator,
    dedup: DedupIndex,
    wal: Wal,
    hub: Arc<Hub>,
    devices: Arc<DeviceRegistry>,
}

impl PipelineIntake {
    pub fn new(
        validator: Validator,
        dedup: DedupIndex,
        wal: Wal,
        hub: Arc<Hub>,
        devices: Arc<DeviceRegistry>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                validator,
                dedup,
                wal,
                hub,
                devices,
            }),
        }
    }
}

impl Intake for PipelineIntake {
    fn submit(&self, input: RawInput) -> impl Future<Output = Submitted> + Send {
        let inner = self.inner.clone();
        async move { inner.submit(input).await }
    }
}

impl Inner {
    async fn submit(&self, input: RawInput) -> Submitted {
        let validated = self
            .validator
            .validate(&input.route, &input.payload, input.received_at);
        match validated {
            Ok(Validated::Record(record)) => self.accept(record, input).await,
            Ok(Validated::DeviceStatus(status)) => {
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
                let dead = DeadLetter::new(
                    &rejection,
                    &input.payload,
                    input.route.target.stream(),
                    input.route.site.clone(),
                    input.provenance,
                    input.received_at,
                );
                let verdict = Verdict::Rejected {
                    reason: rejection.reason,
                    message: rejection.message,
                };
                self.log(WalEntry::DeadLetter(dead), verdict).await
            }
        }
    }

    async fn accept(&self, record: Record, input: RawInput) -> Submitted {
        let saved = saved(&record);
        if !self.dedup.first_sighting(record.idempotency_hash()) {
            return self.after_everything_so_far(Verdict::Accepted {
                saved,
                duplicate: true,
            });
        }
        let event = Event {
            envelope: Envelope {
                event_id: uuid::Uuid::now_v7(),
                stream: record.stream(),
                key: record.partition_key().to_string(),
                event_time: record.event_time(),
                ingest_time: input.received_at,
                provenance: input.provenance,
                principal: None,
                backfill: input.backfill,
            },
            record,
        };
        // Live views get the record now; they must not wait for the disk (SPEC §3).
        self.hub.publish_event(&event);
        self.log(
            WalEntry::Event(event),
            Verdict::Accepted {
                saved,
                duplicate: false,
            },
        )
        .await
    }

    async fn log(&self, entry: WalEntry, verdict: Verdict) -> Submitted {
        match self.wal.append(entry).await {
            Ok(lsn) => Submitted {
                verdict,
                durable: self.ticket(lsn),
            },
            Err(_) => Submitted {
                verdict,
                durable: futures::future::ready(Err(Unavailable)).boxed(),
            },
        }
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
