use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::records::Record;

/// An accepted record in its envelope: what the durable log holds and every sink receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub envelope: Envelope,
    pub record: Record,
}

impl Event {
    /// A record accepted now: a fresh event id, its stream, partition key and event time.
    pub fn accepted(
        record: Record,
        ingest_time: chrono::DateTime<chrono::Utc>,
        provenance: crate::envelope::Provenance,
        principal: Option<crate::Principal>,
        backfill: bool,
    ) -> Self {
        Event {
            envelope: Envelope {
                event_id: uuid::Uuid::now_v7(),
                stream: record.stream(),
                key: record.partition_key().to_string(),
                event_time: record.event_time(),
                ingest_time,
                provenance,
                principal,
                backfill,
            },
            record,
        }
    }

    pub fn idempotency_key(&self) -> String {
        self.record.idempotency_key()
    }
}
