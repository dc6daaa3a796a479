//! Error domains, after Arroyo: every failure says whose fault it is and whether trying again
//! can help, so retry and dead-letter routing are decided by type, never by matching strings.

use serde::{Deserialize, Serialize};

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorDomain {
    /// The input or the producer is wrong (bad JSON, bad token): dead-letter it, never retry.
    User,
    /// Something outside the process failed (a broker, the SMS provider): retry with backoff.
    External,
    /// The pipeline itself failed (disk, bug): stop acknowledging and surface it.
    Internal,
}

/// What the caller should do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryHint {
    Never,
    WithBackoff,
}

/// Implemented by every error type that crosses a component boundary.
pub trait Classified {
    fn domain(&self) -> ErrorDomain;
    fn retry(&self) -> RetryHint {
        match self.domain() {
            ErrorDomain::External => RetryHint::WithBackoff,
            ErrorDomain::User | ErrorDomain::Internal => RetryHint::Never,
        }
    }
}
