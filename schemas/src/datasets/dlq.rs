use arrow::datatypes::{DataType, Schema};
use serde::Serialize;

use super::envelope_columns::{ProvenanceColumns, provenance_fields};
use super::{field, utc_micros};
use crate::dead_letter::DeadLetter;

pub(super) fn schema() -> Schema {
    let mut fields = vec![
        field("_event_id", DataType::Utf8, false),
        field("received_at", utc_micros(), false),
        field("stage", DataType::Utf8, false),
        field("reason_code", DataType::Utf8, false),
        field("reason", DataType::Utf8, false),
        field("stream", DataType::Utf8, true),
        field("site", DataType::Utf8, true),
        field("principal_sub", DataType::Utf8, true),
        field("raw", DataType::Binary, false),
        field("raw_len", DataType::Int64, false),
        field("raw_truncated", DataType::Boolean, false),
    ];
    fields.extend(provenance_fields());
    Schema::new(fields)
}

#[derive(Serialize)]
pub(super) struct Row<'a> {
    _event_id: String,
    received_at: i64,
    stage: &'static str,
    reason_code: &'static str,
    reason: &'a str,
    stream: Option<&'static str>,
    site: Option<&'a str>,
    principal_sub: Option<&'a str>,
    /// Hex, which is how the JSON decoder fills a binary column.
    raw: String,
    raw_len: i64,
    raw_truncated: bool,
    #[serde(flatten)]
    provenance: ProvenanceColumns<'a>,
}

pub(super) fn rows<'a>(dead: &[&'a DeadLetter]) -> Vec<Row<'a>> {
    dead.iter()
        .map(|d| Row {
            _event_id: d.event_id.to_string(),
            received_at: d.received_at.timestamp_micros(),
            stage: d.stage.as_str(),
            reason_code: d.reason_code.as_str(),
            reason: &d.reason,
            stream: d.stream.map(|s| s.as_str()),
            site: d.site.as_deref(),
            principal_sub: d.principal_sub.as_deref(),
            raw: hex::encode(&d.raw),
            raw_len: d.raw_len as i64,
            raw_truncated: (d.raw.len() as u64) < d.raw_len,
            provenance: ProvenanceColumns::new(&d.provenance),
        })
        .collect()
}
