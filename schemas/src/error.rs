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

/// What [`RetryHint::WithBackoff`] means, for every retry loop (an external MQTT broker, a
/// Kafka topic, the SMS provider): delays that double from `initial` up to `max`, each drawn
/// at random below its ceiling ("full jitter"), so instances that failed together do not try
/// again together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: std::time::Duration,
    pub max: std::time::Duration,
}

impl Backoff {
    pub const fn new(initial: std::time::Duration, max: std::time::Duration) -> Backoff {
        Backoff { initial, max }
    }

    /// The delay after `failures` failures in a row (the first failure is 1).
    pub fn delay(&self, failures: u32) -> std::time::Duration {
        use rand::Rng;
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        std::time::Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }

    /// A loop's own count of failures in a row.
    pub fn retrying(self) -> Retrying {
        Retrying {
            backoff: self,
            failures: 0,
        }
    }
}

/// Failures in a row of one loop, and the delay they call for.
#[derive(Debug, Clone)]
pub struct Retrying {
    backoff: Backoff,
    failures: u32,
}

impl Retrying {
    /// One more failure: how long to wait before trying again.
    pub fn failed(&mut self) -> std::time::Duration {
        self.failures = self.failures.saturating_add(1);
        self.backoff.delay(self.failures)
    }

    /// It worked: the next failure starts from the first delay again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn delays_double_with_full_jitter_up_to_the_max() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..100 {
            assert!(backoff.delay(1) <= Duration::from_millis(100));
            assert!(backoff.delay(3) <= Duration::from_millis(400));
            assert!(backoff.delay(50) <= Duration::from_secs(1));
        }
        let spread: Vec<_> = (0..20).map(|_| backoff.delay(4)).collect();
        assert!(spread.iter().any(|d| *d != spread[0]), "no jitter");
        let mut retrying = backoff.retrying();
        for _ in 0..10 {
            retrying.failed();
        }
        retrying.succeeded();
        assert!(retrying.failed() <= Duration::from_millis(100));
    }
}
