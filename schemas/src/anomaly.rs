//! An anomaly: a record an anomaly model scored above its threshold (SPEC §3 `anomalies`,
//! the `anomalie` push).

use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::records::Moment;

/// One feature's part in a score: what the record carried, what the model expected there,
/// and how much of the score it makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    pub feature: String,
    pub value: f64,
    pub expected: f64,
    pub contribution: f64,
}

/// A scored record above threshold. Meals carry `code_lot`, `jour` and `moment`; SQAL samples
/// `device_id` and `sample_id` (and their lot when the station knows it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// The model's name, e.g. `gavage_meal`.
    pub model: String,
    pub model_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_lot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jour: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moment: Option<Moment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gaveur_id: Option<i64>,
    pub site: String,
    pub score: f64,
    pub threshold: f64,
    /// The top contributing features, largest first (at most three).
    pub explanation: Vec<Contribution>,
    /// The scored record's envelope: which record, when, whether it was backfill.
    pub envelope: Envelope,
}
