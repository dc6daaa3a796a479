//! The `alerts` dataset: one row per transition of an alert (opened, updated, acknowledged,
//! cleared), partitioned by the UTC date of the alert's last evaluation and its site.

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::error::ArrowError;
use serde::Serialize;

use super::{Partition, field, utc_micros};
use crate::alert::AlertChange;

pub const NAME: &str = "alerts";

pub fn schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            std::sync::Arc::new(Schema::new(vec![
                field("alert_id", DataType::Utf8, false),
                field("rule", DataType::Utf8, false),
                field("severity", DataType::Utf8, false),
                field("state", DataType::Utf8, false),
                field("transition", DataType::Utf8, false),
                field("code_lot", DataType::Utf8, true),
                field("device_id", DataType::Utf8, true),
                field("gaveur_id", DataType::Int64, true),
                field("site", DataType::Utf8, true),
                field("value", DataType::Float64, true),
                field("threshold", DataType::Float64, true),
                field("opened_at", utc_micros(), false),
                field("updated_at", utc_micros(), false),
                field("cleared_at", utc_micros(), true),
                field("count", DataType::Int64, false),
                field("acknowledged_by", DataType::Utf8, true),
                field("acknowledged_at", utc_micros(), true),
                field("message", DataType::Utf8, false),
                field("backfill", DataType::Boolean, false),
                field("_recorded_at", utc_micros(), false),
            ]))
        })
        .clone()
}

#[derive(Serialize)]
struct Row<'a> {
    alert_id: &'a str,
    rule: &'a str,
    severity: &'static str,
    state: &'static str,
    transition: &'static str,
    code_lot: Option<&'a str>,
    device_id: Option<&'a str>,
    gaveur_id: Option<i64>,
    site: Option<&'a str>,
    value: f64,
    threshold: f64,
    opened_at: i64,
    updated_at: i64,
    cleared_at: Option<i64>,
    count: u64,
    acknowledged_by: Option<&'a str>,
    acknowledged_at: Option<i64>,
    message: &'a str,
    backfill: bool,
    _recorded_at: i64,
}

/// The folder a transition's row goes to.
pub fn partition(change: &AlertChange) -> Partition {
    Partition {
        date: change.alert.updated_at.date_naive(),
        site: change
            .alert
            .site
            .clone()
            .unwrap_or_else(|| "unknown".to_string()),
    }
}

pub fn to_batch(changes: &[&AlertChange]) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<Row> = changes
        .iter()
        .map(|c| {
            let a = &c.alert;
            Row {
                alert_id: &a.alert_id,
                rule: &a.rule,
                severity: a.severity.as_str(),
                state: a.state.as_str(),
                transition: c.transition.as_str(),
                code_lot: a.code_lot.as_deref(),
                device_id: a.device_id.as_deref(),
                gaveur_id: a.gaveur_id,
                site: a.site.as_deref(),
                value: a.value,
                threshold: a.threshold,
                opened_at: a.opened_at.timestamp_micros(),
                updated_at: a.updated_at.timestamp_micros(),
                cleared_at: a.cleared_at.map(|t| t.timestamp_micros()),
                count: a.count,
                acknowledged_by: a.acknowledged_by.as_deref(),
                acknowledged_at: a.acknowledged_at.map(|t| t.timestamp_micros()),
                message: &a.message,
                backfill: a.backfill,
                _recorded_at: c.recorded_at.timestamp_micros(),
            }
        })
        .collect();
    super::serialized_to_batch(schema(), &rows)
}
