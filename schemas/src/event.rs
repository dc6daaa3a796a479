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
    pub fn idempotency_key(&self) -> String {
        self.record.idempotency_key()
    }
}
