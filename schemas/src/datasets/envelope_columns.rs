use arrow::datatypes::{DataType, Field};
use serde::Serialize;

use super::{field, utc_micros};
use crate::envelope::{Envelope, Provenance};

pub(super) fn fields() -> Vec<Field> {
    vec![
        field("_event_id", DataType::Utf8, false),
        field("_stream", DataType::Utf8, false),
        field("_key", DataType::Utf8, false),
        field("_event_time", utc_micros(), false),
        field("_ingest_time", utc_micros(), false),
        field("_backfill", DataType::Boolean, false),
        field("_principal_sub", DataType::Utf8, true),
        field("_principal_gaveur_id", DataType::Int64, true),
        field("_principal_site_id", DataType::Utf8, true),
        field("_principal_roles", DataType::Utf8, true),
    ]
    .into_iter()
    .chain(provenance_fields())
    .collect()
}

pub(super) fn provenance_fields() -> Vec<Field> {
    vec![
        field("_transport", DataType::Utf8, false),
        field("_topic", DataType::Utf8, true),
        field("_partition", DataType::Int32, true),
        field("_offset", DataType::Int64, true),
        field("_packet_id", DataType::Int32, true),
        field("_source", DataType::Utf8, true),
    ]
}

#[derive(Serialize)]
pub(super) struct EnvelopeColumns<'a> {
    _event_id: String,
    _stream: &'static str,
    _key: &'a str,
    _event_time: i64,
    _ingest_time: i64,
    _backfill: bool,
    _principal_sub: Option<&'a str>,
    _principal_gaveur_id: Option<i64>,
    _principal_site_id: Option<&'a str>,
    /// Comma-separated, to keep the dataset flat.
    _principal_roles: Option<String>,
    #[serde(flatten)]
    provenance: ProvenanceColumns<'a>,
}

impl<'a> EnvelopeColumns<'a> {
    pub(super) fn new(envelope: &'a Envelope) -> Self {
        let principal = envelope.principal.as_ref();
        Self {
            _event_id: envelope.event_id.to_string(),
            _stream: envelope.stream.as_str(),
            _key: &envelope.key,
            _event_time: envelope.event_time.timestamp_micros(),
            _ingest_time: envelope.ingest_time.timestamp_micros(),
            _backfill: envelope.backfill,
            _principal_sub: principal.map(|p| p.sub.as_str()),
            _principal_gaveur_id: principal.and_then(|p| p.gaveur_id),
            _principal_site_id: principal.and_then(|p| p.site_id.as_deref()),
            _principal_roles: principal.map(|p| p.roles.join(",")),
            provenance: ProvenanceColumns::new(&envelope.provenance),
        }
    }
}

#[derive(Serialize)]
pub(super) struct ProvenanceColumns<'a> {
    _transport: &'static str,
    _topic: Option<&'a str>,
    _partition: Option<i32>,
    _offset: Option<i64>,
    _packet_id: Option<i32>,
    _source: Option<&'a str>,
}

impl<'a> ProvenanceColumns<'a> {
    pub(super) fn new(provenance: &'a Provenance) -> Self {
        Self {
            _transport: provenance.transport.as_str(),
            _topic: provenance.topic.as_deref(),
            _partition: provenance.partition,
            _offset: provenance.offset,
            _packet_id: provenance.packet_id.map(i32::from),
            _source: provenance.source.as_deref(),
        }
    }
}
