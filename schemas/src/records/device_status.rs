use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A station's heartbeat or status message. It updates the device's status and is never
/// stored as a record nor refused for its content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub device_id: String,
    pub received_at: DateTime<Utc>,
    /// The message as sent, for dashboards.
    pub status: serde_json::Value,
}

impl DeviceStatus {
    /// Reads a status message leniently: any JSON object is a heartbeat. `device_id` comes
    /// from the message when present, else from the topic or connection.
    pub fn from_message(
        bytes: &[u8],
        fallback_device: Option<&str>,
        received_at: DateTime<Utc>,
    ) -> Option<Self> {
        let status: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let device_id = status
            .get("device_id")
            .and_then(|v| v.as_str())
            .or(fallback_device)?
            .to_string();
        Some(Self {
            device_id,
            received_at,
            status,
        })
    }
}
