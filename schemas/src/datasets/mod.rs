//! One Arrow schema per Parquet dataset (SPEC §3), and the conversion of records into
//! RecordBatches of that schema. Meals, nearly every row the pipeline writes, and the envelope
//! columns are filled straight from the records (`columns.rs`: one list names, types and fills
//! each column, and the schema is that list run over no rows). The other datasets go through
//! a serde row type and arrow's JSON decoder, the row type in the same file as its schema;
//! `every_column_is_filled` checks they agree.
//!
//! Columns are the record's own field names at top level; envelope fields sit beside them
//! with a `_` prefix. Nothing is nested but the SQAL matrices (`list<list<int32>>`, 8×8).

pub mod alerts;
pub mod anomalies;
mod columns;
mod dlq;
mod envelope_columns;
mod gavage_meals;
pub mod ledger;
mod lot_outcomes;
mod sqal_samples;

use std::sync::{Arc, OnceLock};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use chrono::NaiveDate;
use serde::Serialize;

use crate::dead_letter::DeadLetter;
use crate::event::Event;
use crate::records::Record;

/// A Parquet dataset: a folder `parquet/<name>/date=YYYY-MM-DD/site=XX/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dataset {
    GavageMeals,
    SqalSamples,
    LotOutcomes,
    Dlq,
}

impl Dataset {
    pub const ALL: [Dataset; 4] = [
        Dataset::GavageMeals,
        Dataset::SqalSamples,
        Dataset::LotOutcomes,
        Dataset::Dlq,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dataset::GavageMeals => "gavage_meals",
            Dataset::SqalSamples => "sqal_samples",
            Dataset::LotOutcomes => "lot_outcomes",
            Dataset::Dlq => "dlq",
        }
    }

    pub fn schema(self) -> SchemaRef {
        static SCHEMAS: OnceLock<[SchemaRef; 4]> = OnceLock::new();
        let all = SCHEMAS.get_or_init(|| {
            [
                Arc::new(gavage_meals::schema()),
                Arc::new(sqal_samples::schema()),
                Arc::new(lot_outcomes::schema()),
                Arc::new(dlq::schema()),
            ]
        });
        all[self as usize].clone()
    }

    pub fn of(record: &Record) -> Dataset {
        match record {
            Record::Gavage(_) => Dataset::GavageMeals,
            Record::Sqal(_) => Dataset::SqalSamples,
            Record::LotOutcome(_) => Dataset::LotOutcomes,
        }
    }
}

/// The `date=…/site=…` folder a row belongs to. The date is the UTC date of the event time
/// (of the receipt time for dead letters), so a folder never depends on the reader's zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    pub date: NaiveDate,
    pub site: String,
}

impl Partition {
    pub fn of_event(event: &Event) -> Partition {
        Partition {
            date: event.envelope.event_time.date_naive(),
            site: event.record.site().as_str().to_string(),
        }
    }

    pub fn of_dead_letter(dead: &DeadLetter) -> Partition {
        Partition {
            date: dead.received_at.date_naive(),
            site: dead.site.clone().unwrap_or_else(|| "unknown".to_string()),
        }
    }

    /// Relative folder, e.g. `date=2026-01-20/site=LL`.
    pub fn path(&self) -> String {
        format!("date={}/site={}", self.date, self.site)
    }
}

/// Builds one RecordBatch of `dataset` from accepted events; every event must belong to it.
pub fn events_to_batch(dataset: Dataset, events: &[&Event]) -> Result<RecordBatch, ArrowError> {
    match dataset {
        Dataset::GavageMeals => gavage_meals::batch(events),
        Dataset::SqalSamples => rows_to_batch(dataset, &sqal_samples::rows(events)?),
        Dataset::LotOutcomes => rows_to_batch(dataset, &lot_outcomes::rows(events)?),
        Dataset::Dlq => Err(ArrowError::InvalidArgumentError(
            "dead letters are not events; use dead_letters_to_batch".into(),
        )),
    }
}

pub fn dead_letters_to_batch(rows: &[&DeadLetter]) -> Result<RecordBatch, ArrowError> {
    rows_to_batch(Dataset::Dlq, &dlq::rows(rows))
}

fn rows_to_batch<R: Serialize>(dataset: Dataset, rows: &[R]) -> Result<RecordBatch, ArrowError> {
    serialized_to_batch(dataset.schema(), rows)
}

/// Rows that serialise to `schema`'s columns, as one batch.
pub(crate) fn serialized_to_batch<R: Serialize>(
    schema: SchemaRef,
    rows: &[R],
) -> Result<RecordBatch, ArrowError> {
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .build_decoder()?;
    decoder.serialize(rows)?;
    Ok(decoder
        .flush()?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

fn wrong_dataset(expected: Dataset) -> ArrowError {
    ArrowError::InvalidArgumentError(format!(
        "a record that does not belong to {} was routed to it",
        expected.name()
    ))
}

pub(crate) fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub(crate) fn field(name: &str, data_type: DataType, nullable: bool) -> Field {
    Field::new(name, data_type, nullable)
}

pub(crate) fn schema_with_envelope(mut fields: Vec<Field>) -> Schema {
    fields.extend(envelope_columns::fields());
    Schema::new(fields)
}

#[cfg(test)]
mod tests;
