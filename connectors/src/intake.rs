//! The contract between sources and the pipeline.

use std::future::Future;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use gaveurs_schemas::RejectReason;
use gaveurs_schemas::envelope::Provenance;
use gaveurs_schemas::records::Grade;
pub use gaveurs_schemas::route::{Route, Target};

/// Tokens presented with an input; verified by the auth operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// `Bearer …` carried by the message itself (MQTT 5 user property, Kafka header).
    pub message_token: Option<String>,
    /// The token of the connection (MQTT CONNECT password, WebSocket header or `?token=`).
    pub connection_token: Option<String>,
}

/// One input, as a source received it.
#[derive(Debug, Clone)]
pub struct RawInput {
    pub route: Route,
    pub payload: Bytes,
    pub provenance: Provenance,
    pub credentials: Credentials,
    pub received_at: DateTime<Utc>,
    /// When the record was produced to a broker that kept it (Kafka): its token is judged
    /// as of then, so a backlog read after an outage is not refused as expired.
    pub produced_at: Option<DateTime<Utc>>,
    /// Set by replays: such records never trigger an SMS. Producers ask for it with
    /// [`BACKFILL`] (an MQTT 5 user property or a Kafka header) set to `true`.
    pub backfill: bool,
    /// Already published by the partition's previous owner and read again only for the
    /// derived state that had not caught up with it (the alert state of a partition taken
    /// over): never stored or pushed again.
    pub reread: bool,
}

/// Name of the MQTT 5 user property (embedded listener, external broker) and of the Kafka
/// header that flags a record as a backfill (`gaveurs replay` sets it): value `true`, in any
/// case. Anything else, or no such property, is a live record.
pub const BACKFILL: &str = "backfill";

/// Whether the value of a [`BACKFILL`] property or header says `true` (any case, surrounding
/// blanks ignored).
pub fn backfill_flag(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"true")
}

/// Whether MQTT 5 user properties flag the record as a backfill: a [`BACKFILL`] property
/// (name in any case) whose value is `true`.
pub fn backfill_in_user_properties(properties: &[(String, String)]) -> bool {
    properties
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case(BACKFILL) && backfill_flag(v.as_bytes()))
}

/// What the producer is told about an accepted record.
#[derive(Debug, Clone, PartialEq)]
pub enum Saved {
    Meal {
        code_lot: String,
        jour: i64,
        moment: &'static str,
    },
    Sample {
        sample_id: String,
        final_score: f64,
        grade: Grade,
    },
    Outcome {
        code_lot: String,
    },
}

/// The intake's decision on one input.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Stored (or, when `duplicate`, already stored earlier under the same idempotency key).
    Accepted { saved: Saved, duplicate: bool },
    /// A heartbeat or status message: applied, nothing stored.
    Control,
    /// Refused; its dead-letter row is in the log.
    Rejected {
        reason: RejectReason,
        message: String,
    },
    /// Not taken, and nothing written: the pipeline cannot keep anything now (its disk is
    /// full). The producer sends it again later (MQTT 5 0x97).
    Busy { message: String },
}

/// The intake stopped before the input became durable (shutdown or a failed disk): the
/// producer must not be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pipeline stopped before the input was durable")]
pub struct Unavailable;

/// Resolves once the input (and everything submitted before it) is durable.
pub type DurableTicket = BoxFuture<'static, Result<(), Unavailable>>;

pub struct Submitted {
    pub verdict: Verdict,
    pub durable: DurableTicket,
}

/// A connection's credentials were refused (MQTT CONNACK 0x86 / 0x04).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadCredentials(pub String);

/// Who is connecting, for the audit log.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionContext<'a> {
    pub transport: &'a str,
    pub source: &'a str,
}

/// What sources need from the pipeline. Implementations must keep the order of durability:
/// a ticket resolves only after the tickets of every earlier `submit` from the same caller.
pub trait Intake: Clone + Send + Sync + 'static {
    /// Validates, authorizes and logs one input. Waits (backpressure) while the durable log
    /// is full; never waits for durability itself — that is what the ticket is for.
    fn submit(&self, input: RawInput) -> impl Future<Output = Submitted> + Send;

    /// Checks a token presented when a connection opens (an MQTT CONNECT password).
    fn authenticate_connection(
        &self,
        token: &str,
        context: ConnectionContext<'_>,
    ) -> impl Future<Output = Result<(), BadCredentials>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backfill_is_true_in_any_case_and_nothing_else() {
        for yes in ["true", "TRUE", "True", " true "] {
            assert!(backfill_flag(yes.as_bytes()), "{yes:?}");
        }
        for no in ["", "false", "1", "yes", "truee", "t"] {
            assert!(!backfill_flag(no.as_bytes()), "{no:?}");
        }
        let props = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(backfill_in_user_properties(&props(&[
            ("authorization", "Bearer x"),
            ("Backfill", "true")
        ])));
        assert!(!backfill_in_user_properties(&props(&[(
            "backfill", "false"
        )])));
        assert!(!backfill_in_user_properties(&props(&[("other", "true")])));
        assert!(!backfill_in_user_properties(&[]));
    }
}
