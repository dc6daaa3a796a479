//! Operators: the steps every input goes through between a source and the durable log.
//!
//! - [`validate`]: size, JSON, the record contract of SPEC §1, and agreement with the topic.
//! - [`dedup`]: idempotency keys, so a replayed record is stored once.
//! - [`analytics`]: KPIs in event time, as SQL queries (DataFusion) over micro-batches.
//! - [`alerts`]: the rules of SPEC §5 and the lifecycle of the alerts they raise.

pub mod alerts;
pub mod analytics;
pub mod auth;
pub mod dedup;
pub mod validate;
