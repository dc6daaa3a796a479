//! The `ledger` dataset: the traceability ledger's entries, mirrored for analysts (the chain
//! files under `data/ledger/` stay the record; these rows are a copy). Partitioned by the UTC
//! date of the entry's time and the lot's site (`-` for the key entries).

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use serde::Serialize;

use super::{field, utc_micros};

pub const NAME: &str = "ledger";

pub fn schema() -> SchemaRef {
    static SCHEMA: std::sync::OnceLock<SchemaRef> = std::sync::OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
                field("chain", DataType::Utf8, false),
                field("seq", DataType::Int64, false),
                field("time", utc_micros(), false),
                field("type", DataType::Utf8, false),
                field("code_lot", DataType::Utf8, true),
                field("device_id", DataType::Utf8, true),
                field("payload", DataType::Utf8, false),
                field("prev", DataType::Utf8, false),
                field("hash", DataType::Utf8, false),
                field("key", DataType::Utf8, false),
                field("sig", DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// One entry as a row: `time` in microseconds since the epoch, `payload` as its canonical
/// JSON text.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerRow {
    pub chain: String,
    pub seq: i64,
    pub time: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub code_lot: Option<String>,
    pub device_id: Option<String>,
    pub payload: String,
    pub prev: String,
    pub hash: String,
    pub key: String,
    pub sig: String,
}

pub fn to_batch(rows: &[&LedgerRow]) -> Result<RecordBatch, ArrowError> {
    super::serialized_to_batch(schema(), rows)
}
