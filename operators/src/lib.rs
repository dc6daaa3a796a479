//! Operators: the steps every input goes through between a source and the durable log, and
//! the derived operators that read the log through their own cursors.
//!
//! - [`intake`]: the chain behind every source — authenticate, validate, authorize, dedup,
//!   envelope, live push, durable log.
//! - [`auth`]: Keycloak tokens, permissions, the audit trail.
//! - [`validate`]: size, JSON, the record contract of SPEC §1, and agreement with the topic.
//! - [`dedup`]: idempotency keys, so a replayed record is stored once.
//! - [`devices`]: the last status of each SQAL station.
//! - [`analytics`]: KPIs in event time, as SQL queries (DataFusion) over micro-batches;
//!   [`analytics::consumer`] runs them on the log and keeps the lot board.
//! - [`alerts`]: the rules of SPEC §5 and the lifecycle of the alerts they raise;
//!   [`alerts::desk`] runs them on the log, per shard, and answers for them.
//! - [`log_desk`]: the loop that runs the alert and anomaly desks on the log.
//! - [`anomalies`]: the anomaly models (training, scoring, evaluation by injection);
//!   [`anomalies::desk`] scores every record on the log.

pub mod alerts;
pub mod analytics;
pub mod anomalies;
pub mod auth;
pub mod dedup;
pub mod devices;
pub mod intake;
pub mod ledger;
pub mod log_desk;
pub mod validate;
