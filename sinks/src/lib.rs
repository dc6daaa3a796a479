//! Sinks: where records go once accepted.
//!
//! - [`wal`]: the durable log. An input is acknowledged once its entry is fsynced here.
//! - [`parquet`]: turns the log into Parquet datasets, published atomically, and tells the
//!   log what it may forget.
//! - [`websocket`]: live pushes to each gaveur's channel and to dashboards.
//! - [`sms`]: alert SMS through Twilio, sent from a durable outbox.

pub mod fsutil;
pub mod kafka;
pub mod parquet;
pub mod sms;
pub mod wal;
pub mod websocket;
