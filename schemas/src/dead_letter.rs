//! Rejected inputs. Every refused input becomes one dead-letter row that says at which stage
//! and why it was refused, where it came from, and what it was (its raw bytes, truncated).

use std::fmt;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::envelope::{Provenance, StreamKind};
use crate::error::{Classified, ErrorDomain};

/// Raw bytes kept in a dead-letter row; the rest is dropped and `raw_len` says how much there was.
pub const DEAD_LETTER_RAW_LIMIT: usize = 64 * 1024;

/// The step of the operator chain that refused an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Size and framing checks before anything is parsed.
    Intake,
    /// Topic or path → stream.
    Route,
    /// JSON parsing.
    Decode,
    /// Field rules of SPEC §1.
    Validate,
    /// Token verification and permissions.
    Auth,
    /// The durable log: bytes of an accepted entry that can no longer be read.
    Log,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Intake => "intake",
            Stage::Route => "route",
            Stage::Decode => "decode",
            Stage::Validate => "validate",
            Stage::Auth => "auth",
            Stage::Log => "log",
        }
    }
}

/// Why an input was refused: a closed vocabulary, used for metrics, MQTT reason codes and
/// dead-letter rows alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Larger than the configured record limit (1 MiB by default).
    Oversize,
    NotJson,
    SchemaInvalid,
    /// A topic or path that maps to no stream.
    UnknownTopic,
    /// The record contradicts its topic (another site, gaveur or device).
    TopicMismatch,
    /// An event time further ahead of the record's receipt than the allowed clock skew
    /// (`[storage] max_future_skew_s`, 5 min by default): the producer's clock is wrong.
    TimestampInFuture,
    /// An event time before 2000-01-01: an unset or reset clock, not farm data.
    TimestampOutOfRange,
    MissingToken,
    InvalidToken,
    ExpiredToken,
    Forbidden,
    /// Unreadable bytes `gaveurs log salvage` took out of a damaged log segment.
    LogDamaged,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Oversize => "oversize",
            RejectReason::NotJson => "not_json",
            RejectReason::SchemaInvalid => "schema_invalid",
            RejectReason::UnknownTopic => "unknown_topic",
            RejectReason::TopicMismatch => "topic_mismatch",
            RejectReason::TimestampInFuture => "timestamp_in_future",
            RejectReason::TimestampOutOfRange => "timestamp_out_of_range",
            RejectReason::MissingToken => "missing_token",
            RejectReason::InvalidToken => "invalid_token",
            RejectReason::ExpiredToken => "expired_token",
            RejectReason::Forbidden => "forbidden",
            RejectReason::LogDamaged => "log_damaged",
        }
    }

    pub fn stage(self) -> Stage {
        match self {
            RejectReason::Oversize => Stage::Intake,
            RejectReason::NotJson => Stage::Decode,
            RejectReason::SchemaInvalid
            | RejectReason::TimestampInFuture
            | RejectReason::TimestampOutOfRange => Stage::Validate,
            RejectReason::UnknownTopic | RejectReason::TopicMismatch => Stage::Route,
            RejectReason::MissingToken
            | RejectReason::InvalidToken
            | RejectReason::ExpiredToken
            | RejectReason::Forbidden => Stage::Auth,
            RejectReason::LogDamaged => Stage::Log,
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused input, before it is written: the reason and a message for the producer.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: RejectReason,
    /// Says what is wrong without echoing the payload.
    pub message: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for Rejection {}

impl Classified for Rejection {
    fn domain(&self) -> ErrorDomain {
        ErrorDomain::User
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub event_id: Uuid,
    #[serde(serialize_with = "crate::time::serialize_utc")]
    pub received_at: DateTime<Utc>,
    pub stage: Stage,
    pub reason_code: RejectReason,
    pub reason: String,
    /// The stream the input was meant for, when its route was known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamKind>,
    /// The site from the topic or path, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    pub provenance: Provenance,
    /// `sub` of the token, when one was presented and could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_sub: Option<String>,
    /// The first [`DEAD_LETTER_RAW_LIMIT`] bytes of the input.
    #[serde(with = "base64_bytes")]
    pub raw: Vec<u8>,
    /// Size of the whole input.
    pub raw_len: u64,
}

impl DeadLetter {
    pub fn new(
        rejection: &Rejection,
        raw: &[u8],
        stream: Option<StreamKind>,
        site: Option<String>,
        provenance: Provenance,
        received_at: DateTime<Utc>,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            received_at,
            stage: rejection.reason.stage(),
            reason_code: rejection.reason,
            reason: rejection.message.clone(),
            stream,
            site,
            provenance,
            principal_sub: None,
            raw: raw[..raw.len().min(DEAD_LETTER_RAW_LIMIT)].to_vec(),
            raw_len: raw.len() as u64,
        }
    }
}

mod base64_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}
