//! Alerts (SPEC §5): what an alert is, wherever it goes — the `alerts` dataset, the
//! `alerte` message of a gaveur's channel, `alert` on the dashboards, `gaveurs.alerts.v1`
//! and `GET /api/v1/alerts`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The one severity vocabulary of every alert.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(text: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// The condition holds (or held within the last N evaluations) and nobody acknowledged it.
    Open,
    /// Still active, but its gaveur or a superviseur has seen it.
    Acknowledged,
    /// The condition has been false for N consecutive evaluations.
    Cleared,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Open => "open",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Cleared => "cleared",
        }
    }

    /// Open or acknowledged: the condition has not cleared yet.
    pub fn is_active(self) -> bool {
        !matches!(self, AlertState::Cleared)
    }
}

/// What just happened to an alert; each transition is one row and one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transition {
    Opened,
    Updated,
    Acknowledged,
    Cleared,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Opened => "opened",
            Transition::Updated => "updated",
            Transition::Acknowledged => "acknowledged",
            Transition::Cleared => "cleared",
        }
    }
}

/// An alert as its owner sees it. The key of an alert is `rule` + `code_lot` (lot rules) or
/// `rule` + `device_id` (SQAL station rules); one key has at most one active alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub alert_id: String,
    pub rule: String,
    pub severity: Severity,
    pub state: AlertState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_lot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The gaveur who owns the lot (for a station alert: the gaveur of the sample's lot, when
    /// the sample named one the pipeline knows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gaveur_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The last value the rule measured, in the unit of its threshold.
    pub value: f64,
    /// The threshold that value crossed.
    pub threshold: f64,
    /// Event times: when the condition was first seen, and last evaluated.
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<DateTime<Utc>>,
    /// Evaluations that found the condition true since the alert opened.
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// A sentence for people (French, as the farms read it).
    pub message: String,
    /// Opened by a replayed (`backfill`) record: shown and stored, never texted.
    #[serde(default)]
    pub backfill: bool,
}

/// One transition of one alert, as stored in the `alerts` dataset and sent on Kafka.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertChange {
    pub transition: Transition,
    pub alert: Alert,
    /// Wall-clock time of the transition (the alert's own times are event times).
    pub recorded_at: DateTime<Utc>,
}
