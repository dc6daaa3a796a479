//! What an input claims to be, from its topic or path, before its payload is read.

use crate::envelope::StreamKind;

/// What a topic or path says an input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Gavage,
    LotOutcome,
    /// The Kafka gavage topic carries meals and, marked `"record_type": "lot_outcome"`, outcomes.
    GavageOrOutcome,
    Sqal,
    /// Station heartbeats and status: never stored, never refused.
    DeviceStatus,
    /// A topic that maps to no stream; the input is dead-lettered.
    Unknown,
}

impl Target {
    pub fn stream(self) -> Option<StreamKind> {
        match self {
            Target::Gavage | Target::GavageOrOutcome => Some(StreamKind::Gavage),
            Target::LotOutcome => Some(StreamKind::LotOutcome),
            Target::Sqal => Some(StreamKind::Sqal),
            Target::DeviceStatus | Target::Unknown => None,
        }
    }
}

/// The stream an input is for, and what its topic asserts about it; a record that
/// contradicts its topic (another gaveur, site or device) is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub target: Target,
    pub site: Option<String>,
    pub gaveur_id: Option<i64>,
    pub device_id: Option<String>,
}

impl Route {
    pub fn to(target: Target) -> Self {
        Self {
            target,
            site: None,
            gaveur_id: None,
            device_id: None,
        }
    }
}
