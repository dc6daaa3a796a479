//! The `anomalies` dataset: one row per record an anomaly model scored above its threshold,
//! partitioned by the UTC date of the record's event time and its site.

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Fields, SchemaRef};
use arrow::error::ArrowError;
use serde::Serialize;

use super::envelope_columns::EnvelopeColumns;
use super::{Partition, field, schema_with_envelope};
use crate::anomaly::{Anomaly, Contribution};

pub const NAME: &str = "anomalies";

pub fn schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let contribution = Fields::from(vec![
                field("feature", DataType::Utf8, false),
                field("value", DataType::Float64, true),
                field("expected", DataType::Float64, true),
                field("contribution", DataType::Float64, true),
            ]);
            std::sync::Arc::new(schema_with_envelope(vec![
                field("code_lot", DataType::Utf8, true),
                field("jour", DataType::Int64, true),
                field("moment", DataType::Utf8, true),
                field("device_id", DataType::Utf8, true),
                field("sample_id", DataType::Utf8, true),
                field("gaveur_id", DataType::Int64, true),
                field("site", DataType::Utf8, false),
                field("score", DataType::Float64, false),
                field("threshold", DataType::Float64, false),
                field("model", DataType::Utf8, false),
                field("model_version", DataType::Utf8, false),
                field(
                    "explanation",
                    DataType::List(std::sync::Arc::new(Field::new(
                        "item",
                        DataType::Struct(contribution),
                        true,
                    ))),
                    false,
                ),
            ]))
        })
        .clone()
}

#[derive(Serialize)]
struct Row<'a> {
    code_lot: Option<&'a str>,
    jour: Option<i64>,
    moment: Option<&'static str>,
    device_id: Option<&'a str>,
    sample_id: Option<&'a str>,
    gaveur_id: Option<i64>,
    site: &'a str,
    score: f64,
    threshold: f64,
    model: &'a str,
    model_version: &'a str,
    explanation: &'a [Contribution],
    #[serde(flatten)]
    envelope: EnvelopeColumns<'a>,
}

/// The folder an anomaly's row goes to.
pub fn partition(anomaly: &Anomaly) -> Partition {
    Partition {
        date: anomaly.envelope.event_time.date_naive(),
        site: anomaly.site.clone(),
    }
}

pub fn to_batch(anomalies: &[&Anomaly]) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<Row> = anomalies
        .iter()
        .map(|a| Row {
            code_lot: a.code_lot.as_deref(),
            jour: a.jour,
            moment: a.moment.map(|m| m.as_str()),
            device_id: a.device_id.as_deref(),
            sample_id: a.sample_id.as_deref(),
            gaveur_id: a.gaveur_id,
            site: &a.site,
            score: a.score,
            threshold: a.threshold,
            model: &a.model,
            model_version: &a.model_version,
            explanation: &a.explanation,
            envelope: EnvelopeColumns::new(&a.envelope),
        })
        .collect();
    super::serialized_to_batch(schema(), &rows)
}
