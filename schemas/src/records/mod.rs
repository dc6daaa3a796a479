//! The records producers send (SPEC §1), each as a wire type (what may arrive, which is also
//! what the published JSON Schema describes) and a validated, normalised type (what the
//! pipeline stores and pushes).

mod device_status;
mod gavage;
mod outcome;
mod sqal;

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use device_status::DeviceStatus;
pub use gavage::{GavageMeal, GavageMealInput, Moment};
pub use outcome::{LotOutcome, LotOutcomeInput};
pub use sqal::{Grade, Matrix8x8, SqalMeasurementInput, SqalSample};

use crate::envelope::StreamKind;

/// A production site.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum Site {
    LL,
    LS,
    MT,
}

impl Site {
    pub const ALL: [Site; 3] = [Site::LL, Site::LS, Site::MT];

    pub fn as_str(self) -> &'static str {
        match self {
            Site::LL => "LL",
            Site::LS => "LS",
            Site::MT => "MT",
        }
    }

    pub fn parse(text: &str) -> Option<Site> {
        Site::ALL.into_iter().find(|site| site.as_str() == text)
    }
}

/// The idempotency key of a meal (SPEC §1.1), from its fields.
pub fn meal_key(code_lot: &str, jour: i64, moment: &str) -> String {
    format!("gavage\u{1f}{code_lot}\u{1f}{jour}\u{1f}{moment}")
}

/// The idempotency key of a SQAL sample (sample ids alone collide across stations).
pub fn sample_key(device_id: &str, sample_id: &str) -> String {
    format!("sqal\u{1f}{device_id}\u{1f}{sample_id}")
}

/// The idempotency key of a lot outcome.
pub fn outcome_key(code_lot: &str) -> String {
    format!("lot_outcome\u{1f}{code_lot}")
}

/// A lot code's digest, as the dedup index keys lots.
pub fn lot_digest(code_lot: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(code_lot.as_bytes())
}

/// Where the dedup index keeps a record's key: a meal's or outcome's with its lot (a lot's
/// keys are loaded and evicted together; within a lot, 64 bits of the key's digest), a SQAL
/// sample's on its own (a station sends samples for ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DedupKey {
    Lot { lot: u64, key: u64 },
    Sample(u128),
}

impl DedupKey {
    /// The key of a lot record (a meal or outcome), from its idempotency key text.
    pub fn lot_record(code_lot: &str, idempotency_key: &str) -> DedupKey {
        DedupKey::Lot {
            lot: lot_digest(code_lot),
            key: xxhash_rust::xxh3::xxh3_128(idempotency_key.as_bytes()) as u64,
        }
    }

    pub fn sample(device_id: &str, sample_id: &str) -> DedupKey {
        DedupKey::Sample(xxhash_rust::xxh3::xxh3_128(
            sample_key(device_id, sample_id).as_bytes(),
        ))
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An accepted, validated record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record_type", rename_all = "snake_case")]
pub enum Record {
    Gavage(GavageMeal),
    Sqal(Box<SqalSample>),
    LotOutcome(LotOutcome),
}

impl Record {
    pub fn stream(&self) -> StreamKind {
        match self {
            Record::Gavage(_) => StreamKind::Gavage,
            Record::Sqal(_) => StreamKind::Sqal,
            Record::LotOutcome(_) => StreamKind::LotOutcome,
        }
    }

    /// The key that makes a replayed record a duplicate (SPEC §1): `code_lot` + `jour` +
    /// `moment` for a meal, `device_id` + `sample_id` for a SQAL sample, `code_lot` for an
    /// outcome.
    pub fn idempotency_key(&self) -> String {
        match self {
            Record::Gavage(m) => meal_key(&m.code_lot, m.jour, m.moment.as_str()),
            Record::Sqal(s) => sample_key(&s.device_id, &s.sample_id),
            Record::LotOutcome(o) => outcome_key(&o.code_lot),
        }
    }

    /// Where the dedup index keeps this record's key.
    pub fn dedup_key(&self) -> DedupKey {
        match self {
            Record::Sqal(_) => DedupKey::Sample(self.idempotency_hash()),
            Record::Gavage(_) | Record::LotOutcome(_) => DedupKey::Lot {
                lot: lot_digest(self.partition_key()),
                key: self.idempotency_hash() as u64,
            },
        }
    }

    /// A fixed-size, stable digest of [`Self::idempotency_key`], which is what the dedup index
    /// keeps and persists (16 bytes a record instead of the whole key).
    pub fn idempotency_hash(&self) -> u128 {
        xxhash_rust::xxh3::xxh3_128(self.idempotency_key().as_bytes())
    }

    /// The partition key of the envelope: `code_lot` for lot records, `device_id` for SQAL.
    pub fn partition_key(&self) -> &str {
        match self {
            Record::Gavage(m) => &m.code_lot,
            Record::Sqal(s) => &s.device_id,
            Record::LotOutcome(o) => &o.code_lot,
        }
    }

    pub fn event_time(&self) -> chrono::DateTime<chrono::Utc> {
        match self {
            Record::Gavage(m) => m.timestamp,
            Record::Sqal(s) => s.timestamp,
            Record::LotOutcome(o) => o.event_time,
        }
    }

    pub fn site(&self) -> Site {
        match self {
            Record::Gavage(m) => m.site,
            Record::Sqal(s) => s.site_code,
            Record::LotOutcome(o) => o.site,
        }
    }

    /// The gaveur who owns the record, when it belongs to a lot.
    pub fn gaveur_id(&self) -> Option<i64> {
        match self {
            Record::Gavage(m) => Some(m.gaveur_id),
            Record::LotOutcome(o) => Some(o.gaveur_id),
            Record::Sqal(_) => None,
        }
    }
}
