//! The envelope every accepted record carries (SPEC §1.4).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The logical stream a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Gavage,
    Sqal,
    LotOutcome,
}

impl StreamKind {
    pub const ALL: [StreamKind; 3] = [StreamKind::Gavage, StreamKind::Sqal, StreamKind::LotOutcome];

    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Gavage => "gavage",
            StreamKind::Sqal => "sqal",
            StreamKind::LotOutcome => "lot_outcome",
        }
    }
}

impl fmt::Display for StreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a record reached the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// The pipeline's own MQTT listener.
    Mqtt,
    /// An external MQTT broker the pipeline subscribes to.
    MqttBroker,
    WebSocket,
    Kafka,
    /// The durable log itself (a damaged range found by `gaveurs log salvage`).
    Log,
}

impl Transport {
    pub const ALL: [Transport; 5] = [
        Transport::Mqtt,
        Transport::MqttBroker,
        Transport::WebSocket,
        Transport::Kafka,
        Transport::Log,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::MqttBroker => "mqtt_broker",
            Transport::WebSocket => "websocket",
            Transport::Kafka => "kafka",
            Transport::Log => "log",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where exactly an input came from, precise enough to find it again at its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub transport: Transport,
    /// MQTT or Kafka topic, or WebSocket path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// MQTT packet id (QoS 1 and 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packet_id: Option<u16>,
    /// Producer address (`ip:port`) or MQTT client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Provenance {
    pub fn new(transport: Transport) -> Self {
        Self {
            transport,
            topic: None,
            partition: None,
            offset: None,
            packet_id: None,
            source: None,
        }
    }
}

/// The verified identity behind a record or a connection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Principal {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Realm roles (`admin`, `superviseur`, `gaveur`, `technicien_sqal`, `consommateur`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Client roles by client id, e.g. `sensors` → `[gateway]`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub client_roles: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gaveur_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
}

impl Principal {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn has_client_role(&self, client: &str, role: &str) -> bool {
        self.client_roles
            .get(client)
            .is_some_and(|roles| roles.iter().any(|r| r == role))
    }

    /// `preferred_username`, else `sub`: who to name in logs.
    pub fn display_name(&self) -> &str {
        self.username.as_deref().unwrap_or(&self.sub)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: Uuid,
    pub stream: StreamKind,
    /// Partition key: `code_lot` for lot records, `device_id` for SQAL.
    pub key: String,
    #[serde(serialize_with = "crate::time::serialize_utc")]
    pub event_time: DateTime<Utc>,
    #[serde(serialize_with = "crate::time::serialize_utc")]
    pub ingest_time: DateTime<Utc>,
    pub provenance: Provenance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<Principal>,
    /// Set by replays; such records never trigger an SMS.
    #[serde(default)]
    pub backfill: bool,
}
