use arrow::datatypes::Field;
use serde::Serialize;

use super::columns::Columns;
use crate::envelope::{Envelope, Provenance};

pub(super) fn fields() -> Vec<Field> {
    let none: &[Envelope] = &[];
    add(Columns::new(none), |envelope| envelope).finish().0
}

pub(super) fn provenance_fields() -> Vec<Field> {
    let none: &[Provenance] = &[];
    add_provenance(Columns::new(none), |provenance| provenance)
        .finish()
        .0
}

/// The envelope's columns, filled straight from each row's envelope.
pub(super) fn add<'r, R>(
    columns: Columns<'r, R>,
    envelope: impl Fn(&'r R) -> &'r Envelope + Copy,
) -> Columns<'r, R> {
    let principal = move |row: &'r R| envelope(row).principal.as_ref();
    let columns = columns
        .written_text("_event_id", false, |row, text| {
            let mut buffer = uuid::Uuid::encode_buffer();
            text.push_str(
                envelope(row)
                    .event_id
                    .hyphenated()
                    .encode_lower(&mut buffer),
            );
            true
        })
        .text("_stream", |row| envelope(row).stream.as_str())
        .text("_key", |row| &envelope(row).key)
        .instant("_event_time", |row| envelope(row).event_time)
        .instant("_ingest_time", |row| envelope(row).ingest_time)
        .boolean("_backfill", |row| envelope(row).backfill)
        .optional_text("_principal_sub", |row| {
            principal(row).map(|p| p.sub.as_str())
        })
        .optional_int64("_principal_gaveur_id", |row| {
            principal(row).and_then(|p| p.gaveur_id)
        })
        .optional_text("_principal_site_id", |row| {
            principal(row).and_then(|p| p.site_id.as_deref())
        })
        // Comma-separated, to keep the dataset flat.
        .written_text("_principal_roles", true, |row, text| {
            let Some(p) = principal(row) else {
                return false;
            };
            for (i, role) in p.roles.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(role);
            }
            true
        });
    add_provenance(columns, move |row| &envelope(row).provenance)
}

fn add_provenance<'r, R>(
    columns: Columns<'r, R>,
    provenance: impl Fn(&'r R) -> &'r Provenance + Copy,
) -> Columns<'r, R> {
    columns
        .text("_transport", |row| provenance(row).transport.as_str())
        .optional_text("_topic", |row| provenance(row).topic.as_deref())
        .optional_int32("_partition", |row| provenance(row).partition)
        .optional_int64("_offset", |row| provenance(row).offset)
        .optional_int32("_packet_id", |row| provenance(row).packet_id.map(i32::from))
        .optional_text("_source", |row| provenance(row).source.as_deref())
}

/// The same columns through serde, for the datasets still filled by arrow's JSON decoder.
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
