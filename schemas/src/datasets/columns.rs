//! Columns filled straight from the records: each call names a column, gives its type and
//! nullability, and reads its values, so a dataset's schema and what fills it are one list
//! (the schema is the list run over no rows). Going through serde and arrow's JSON decoder
//! instead cost the Parquet sink two thirds of its time (perf, Kafka benchmark).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::datatypes::Field;
use chrono::{DateTime, Utc};

pub(super) struct Columns<'r, R> {
    rows: &'r [R],
    fields: Vec<Field>,
    arrays: Vec<ArrayRef>,
}

impl<'r, R> Columns<'r, R> {
    pub(super) fn new(rows: &'r [R]) -> Self {
        Self {
            rows,
            fields: Vec::new(),
            arrays: Vec::new(),
        }
    }

    pub(super) fn finish(self) -> (Vec<Field>, Vec<ArrayRef>) {
        (self.fields, self.arrays)
    }

    fn add(mut self, name: &str, nullable: bool, array: ArrayRef) -> Self {
        self.fields
            .push(Field::new(name, array.data_type().clone(), nullable));
        self.arrays.push(array);
        self
    }

    pub(super) fn text(self, name: &str, value: impl Fn(&'r R) -> &'r str) -> Self {
        let array = StringArray::from_iter_values(self.rows.iter().map(value));
        self.add(name, false, Arc::new(array))
    }

    pub(super) fn optional_text(
        self,
        name: &str,
        value: impl Fn(&'r R) -> Option<&'r str>,
    ) -> Self {
        let array: StringArray = self.rows.iter().map(value).collect();
        self.add(name, true, Arc::new(array))
    }

    /// Text composed for the column (a UUID, a joined list): `write` fills the buffer and
    /// says whether there is a value.
    pub(super) fn written_text(
        self,
        name: &str,
        nullable: bool,
        write: impl Fn(&'r R, &mut String) -> bool,
    ) -> Self {
        let mut builder = StringBuilder::with_capacity(self.rows.len(), self.rows.len() * 36);
        let mut text = String::new();
        for row in self.rows {
            text.clear();
            if write(row, &mut text) {
                builder.append_value(&text);
            } else {
                builder.append_null();
            }
        }
        self.add(name, nullable, Arc::new(builder.finish()))
    }

    pub(super) fn int64(self, name: &str, value: impl Fn(&'r R) -> i64) -> Self {
        let array = Int64Array::from_iter_values(self.rows.iter().map(value));
        self.add(name, false, Arc::new(array))
    }

    pub(super) fn optional_int64(self, name: &str, value: impl Fn(&'r R) -> Option<i64>) -> Self {
        let array: Int64Array = self.rows.iter().map(value).collect();
        self.add(name, true, Arc::new(array))
    }

    pub(super) fn optional_int32(self, name: &str, value: impl Fn(&'r R) -> Option<i32>) -> Self {
        let array: Int32Array = self.rows.iter().map(value).collect();
        self.add(name, true, Arc::new(array))
    }

    pub(super) fn float64(self, name: &str, value: impl Fn(&'r R) -> f64) -> Self {
        let array = Float64Array::from_iter_values(self.rows.iter().map(value));
        self.add(name, false, Arc::new(array))
    }

    pub(super) fn optional_float64(self, name: &str, value: impl Fn(&'r R) -> Option<f64>) -> Self {
        let array: Float64Array = self.rows.iter().map(value).collect();
        self.add(name, true, Arc::new(array))
    }

    pub(super) fn boolean(self, name: &str, value: impl Fn(&'r R) -> bool) -> Self {
        let array: BooleanArray = self.rows.iter().map(|row| Some(value(row))).collect();
        self.add(name, false, Arc::new(array))
    }

    /// An instant, as microseconds since the epoch in UTC.
    pub(super) fn instant(self, name: &str, value: impl Fn(&'r R) -> DateTime<Utc>) -> Self {
        let array = TimestampMicrosecondArray::from_iter_values(
            self.rows.iter().map(|row| value(row).timestamp_micros()),
        )
        .with_timezone("UTC");
        self.add(name, false, Arc::new(array))
    }
}
