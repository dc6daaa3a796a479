//! Writing a query result: an aligned table, CSV with a header row, a JSON array of row
//! objects, or an Arrow IPC stream.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::ipc::writer::StreamWriter;
use arrow::json::writer::JsonArray;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// Output of `gaveurs query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header row; list columns as `[1, 2, 3]`, binary as hex.
    Csv,
    /// One JSON array of row objects (`[{"code_lot": …}, …]`); nulls written as `null`.
    Json,
    /// An Arrow IPC stream (`application/vnd.apache.arrow.stream`).
    Arrow,
}

/// Writes record batches of one schema in a [`Format`].
pub struct BatchWriter<W: Write> {
    inner: Inner<W>,
}

enum Inner<W: Write> {
    Table {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        out: W,
    },
    Csv(Box<arrow::csv::Writer<W>>),
    Json(arrow::json::Writer<W, JsonArray>),
    Arrow(StreamWriter<W>),
}

impl<W: Write> BatchWriter<W> {
    /// For CSV, writes the header row at once, so an empty result still names its columns.
    pub fn new(format: Format, schema: SchemaRef, out: W) -> Result<Self, ArrowError> {
        let inner = match format {
            Format::Table => Inner::Table {
                schema,
                batches: Vec::new(),
                out,
            },
            Format::Csv => {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(out);
                writer.write(&csv_compatible(&RecordBatch::new_empty(schema))?)?;
                Inner::Csv(Box::new(writer))
            }
            Format::Json => Inner::Json(
                arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build(out),
            ),
            Format::Arrow => Inner::Arrow(StreamWriter::try_new(out, &schema)?),
        };
        Ok(Self { inner })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        match &mut self.inner {
            Inner::Table { batches, .. } => batches.push(batch.clone()),
            Inner::Csv(writer) => writer.write(&csv_compatible(batch)?)?,
            Inner::Json(writer) => writer.write(batch)?,
            Inner::Arrow(writer) => writer.write(batch)?,
        }
        Ok(())
    }

    /// Ends the output (the closing `]`, the IPC end-of-stream marker) and flushes it.
    pub fn finish(self) -> Result<W, ArrowError> {
        let mut out = match self.inner {
            Inner::Table {
                schema,
                batches,
                mut out,
            } => {
                let table =
                    arrow::util::pretty::pretty_format_batches_with_schema(schema, &batches)?;
                writeln!(out, "{table}")?;
                out
            }
            Inner::Csv(writer) => writer.into_inner(),
            Inner::Json(mut writer) => {
                writer.finish()?;
                let mut out = writer.into_inner();
                out.write_all(b"\n")?;
                out
            }
            Inner::Arrow(mut writer) => {
                writer.finish()?;
                writer.into_inner()?
            }
        };
        out.flush()?;
        Ok(out)
    }
}

/// CSV has no nested values: list and struct columns are written as their text form.
fn csv_compatible(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    if !batch.columns().iter().any(|c| c.data_type().is_nested()) {
        return Ok(batch.clone());
    }
    let options = FormatOptions::default();
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if !column.data_type().is_nested() {
            fields.push(field.clone());
            columns.push(column.clone());
            continue;
        }
        let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
        let mut text = StringBuilder::new();
        for row in 0..column.len() {
            if column.is_null(row) {
                text.append_null();
            } else {
                text.append_value(formatter.value(row).to_string());
            }
        }
        fields.push(Arc::new(Field::new(field.name(), DataType::Utf8, true)));
        columns.push(Arc::new(text.finish()));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// The SQL name of a column type, for `--help` and the HTTP answer's `columns`.
pub fn sql_type(data_type: &DataType) -> String {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Int8 => "tinyint".into(),
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "int".into(),
        DataType::Int64 => "bigint".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            format!("{}", data_type).to_lowercase()
        }
        DataType::Float32 => "float".into(),
        DataType::Float64 => "double".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Timestamp(unit, tz) => {
            let unit = match unit {
                TimeUnit::Second => "s",
                TimeUnit::Millisecond => "ms",
                TimeUnit::Microsecond => "µs",
                TimeUnit::Nanosecond => "ns",
            };
            match tz {
                Some(tz) => format!("timestamp({unit}) {tz}"),
                None => format!("timestamp({unit})"),
            }
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "binary".into(),
        DataType::List(item) | DataType::LargeList(item) | DataType::ListView(item) => {
            format!("list<{}>", sql_type(item.data_type()))
        }
        DataType::FixedSizeList(item, n) => format!("list<{}>[{n}]", sql_type(item.data_type())),
        // Fields apart with ';', as the help lists columns apart with ','.
        DataType::Struct(fields) => format!(
            "struct<{}>",
            fields
                .iter()
                .map(|f| format!("{} {}", f.name(), sql_type(f.data_type())))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, ListArray, StringArray};
    use arrow::datatypes::Int64Type;

    use super::*;

    fn batch() -> RecordBatch {
        let lists = ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            None,
        ]);
        RecordBatch::try_from_iter(vec![
            (
                "code_lot",
                Arc::new(StringArray::from(vec![Some("LL1"), None])) as ArrayRef,
            ),
            ("jour", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
            ("m", Arc::new(lists) as ArrayRef),
        ])
        .unwrap()
    }

    fn render(format: Format, batches: &[RecordBatch]) -> String {
        let mut writer = BatchWriter::new(format, batch().schema(), Vec::new()).unwrap();
        for b in batches {
            writer.write(b).unwrap();
        }
        String::from_utf8(writer.finish().unwrap()).unwrap()
    }

    #[test]
    fn csv_has_a_header_even_when_empty_and_flattens_lists() {
        assert_eq!(render(Format::Csv, &[]), "code_lot,jour,m\n");
        assert_eq!(
            render(Format::Csv, &[batch()]),
            "code_lot,jour,m\nLL1,1,\"[1, 2]\"\n,2,\n"
        );
    }

    #[test]
    fn json_is_one_array_with_explicit_nulls() {
        assert_eq!(render(Format::Json, &[]), "[]\n");
        let value: serde_json::Value =
            serde_json::from_str(&render(Format::Json, &[batch(), batch()])).unwrap();
        assert_eq!(value.as_array().unwrap().len(), 4);
        assert_eq!(
            value[1],
            serde_json::json!({"code_lot": null, "jour": 2, "m": null})
        );
    }

    #[test]
    fn table_names_the_columns_of_an_empty_result() {
        let text = render(Format::Table, &[]);
        assert!(text.contains("code_lot") && text.contains("jour"), "{text}");
    }
}
