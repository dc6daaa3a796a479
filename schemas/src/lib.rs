//! Record contracts of the gaveurs pipeline (SPEC §1, §3).
//!
//! Everything a record is, independent of how it travels: the typed input records producers
//! send ([`records`]), how they are checked and normalised ([`validation`]), the envelope every
//! accepted record carries ([`envelope`]), the dead-letter row of every refused input
//! ([`dead_letter`]), the Arrow schema of every Parquet dataset ([`datasets`]), and the alerts
//! raised from records ([`alert`]), and the anomalies models find in them ([`anomaly`]).
//!
//! Input records ignore unknown keys at every level: stations send large extras (raw histogram
//! blocks, analysis results) that the pipeline does not use.

pub mod alert;
pub mod anomaly;
pub mod datasets;
pub mod dead_letter;
pub mod envelope;
pub mod error;
pub mod event;
pub mod json_schema;
pub mod records;
pub mod route;
pub mod time;
pub mod validation;

pub use dead_letter::{DeadLetter, RejectReason, Stage};
pub use envelope::{Envelope, Principal, Provenance, StreamKind, Transport};
pub use error::{ErrorDomain, RetryHint};
pub use event::Event;
pub use records::{GavageMeal, LotOutcome, Record, SqalSample};
pub use validation::{DecodeError, ValidationError};
