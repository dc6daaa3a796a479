//! Datasets derived from accepted records (`lot_kpis`, `late`): written by the analytics
//! operator, not by the log.
//!
//! They need no roll protocol of their own: everything in them can be computed again from
//! the published records, and at start the analytics operator recomputes what a crash may
//! have lost (the `lot_kpis` rows of every lot it remembers). A flush writes one file per
//! (dataset, partition) under a hidden name, fsyncs it, renames it to
//! `<instance>-derived-<millis>-<n>.parquet` (millis above any this instance already used in
//! that folder, so names only grow, which compaction relies on) and fsyncs the folder. A
//! hidden file left by a crash is removed at start with the instance's other hidden files.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use gaveurs_schemas::datasets::Partition;
use parquet::arrow::ArrowWriter;

use super::SinkError;
use crate::fsutil::{create_dir_durable, sync_dir};

pub struct DerivedWriter {
    root: PathBuf,
    instance_id: String,
    buffered: BTreeMap<(String, Partition), Vec<RecordBatch>>,
    files_written: u64,
}

/// What a flush published.
#[derive(Debug, Default, Clone)]
pub struct DerivedFlush {
    pub files: Vec<PathBuf>,
    pub rows: usize,
}

impl DerivedWriter {
    /// `root` is `data_dir/parquet`, shared by every instance.
    pub fn new(root: PathBuf, instance_id: String) -> Self {
        Self {
            root,
            instance_id,
            buffered: BTreeMap::new(),
            files_written: 0,
        }
    }

    pub fn append(&mut self, dataset: &str, partition: Partition, batch: RecordBatch) {
        if batch.num_rows() == 0 {
            return;
        }
        self.buffered
            .entry((dataset.to_string(), partition))
            .or_default()
            .push(batch);
    }

    pub fn pending_rows(&self) -> usize {
        self.buffered.values().flatten().map(|b| b.num_rows()).sum()
    }

    /// Publishes every buffered row.
    pub fn flush(&mut self) -> Result<DerivedFlush, SinkError> {
        let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
        self.flush_files(|dir, instance, n, _| {
            // Above every millis this instance already used here: a compacted file covers a
            // range of them and readers skip what it covers, so a clock that went back must
            // not put a new file inside it (`compact.rs`).
            let millis = match super::compact::last_derived_millis(dir, instance)? {
                Some(last) if last >= now => last + 1,
                _ => now,
            };
            Ok(format!("{instance}-derived-{millis}-{n}.parquet"))
        })
    }

    /// Publishes every buffered row as `<instance>-<stem>.parquet` in each partition's
    /// folder, so publishing the same rows (or more) again after a crash replaces the files
    /// instead of adding a second copy.
    pub fn flush_named(&mut self, stem: &str) -> Result<DerivedFlush, SinkError> {
        self.flush_files(|_, instance, _, chunk| {
            Ok(match chunk {
                0 => format!("{instance}-{stem}.parquet"),
                k => format!("{instance}-{stem}-{k}.parquet"),
            })
        })
    }

    /// `name(folder, instance, files written so far, chunk of this partition)`: a partition
    /// has more than one chunk only when the rows' schema changed.
    fn flush_files(
        &mut self,
        name: impl Fn(&Path, &str, u64, usize) -> std::io::Result<String>,
    ) -> Result<DerivedFlush, SinkError> {
        let mut flushed = DerivedFlush::default();
        for ((dataset, partition), batches) in std::mem::take(&mut self.buffered) {
            let dir = self.root.join(&dataset).join(partition.path());
            create_dir_durable(&dir)?;
            // Batches of one dataset share a schema unless the KPI queries changed between
            // runs; a schema change starts a new file.
            let mut start = 0;
            let mut chunk = 0;
            while start < batches.len() {
                let schema = batches[start].schema();
                let end = batches[start..]
                    .iter()
                    .position(|b| b.schema() != schema)
                    .map_or(batches.len(), |n| start + n);
                self.files_written += 1;
                let name = name(&dir, &self.instance_id, self.files_written, chunk)?;
                chunk += 1;
                let hidden = dir.join(format!(".{name}.tmp"));
                let file = File::create(&hidden)?;
                let properties = super::writer_properties(&schema)?;
                let mut writer = ArrowWriter::try_new(file, schema, Some(properties))?;
                for batch in &batches[start..end] {
                    writer.write(batch)?;
                    flushed.rows += batch.num_rows();
                }
                let file = writer.into_inner()?;
                file.sync_all()?;
                let bytes = file.metadata()?.len();
                let published = dir.join(&name);
                std::fs::rename(&hidden, &published)?;
                sync_dir(&dir)?;
                flushed.files.push(published);
                let rows: usize = batches[start..end].iter().map(|b| b.num_rows()).sum();
                super::count_published(&dataset, rows as u64, bytes);
                start = end;
            }
        }
        Ok(flushed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use chrono::NaiveDate;

    use super::*;

    #[test]
    fn a_flush_publishes_one_readable_file_per_partition() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = DerivedWriter::new(dir.path().to_path_buf(), "i1".into());
        let schema = Arc::new(Schema::new(vec![
            Field::new("code_lot", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = |lot: &str, n: i64| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(vec![lot])),
                    Arc::new(Int64Array::from(vec![n])),
                ],
            )
            .unwrap()
        };
        let partition = |site: &str| Partition {
            date: NaiveDate::from_ymd_opt(2026, 1, 5).unwrap(),
            site: site.into(),
        };
        writer.append("lot_kpis", partition("LL"), batch("LL1", 1));
        writer.append("lot_kpis", partition("LL"), batch("LL1", 2));
        writer.append("lot_kpis", partition("LS"), batch("LS1", 3));
        let flushed = writer.flush().unwrap();
        assert_eq!(flushed.rows, 3);
        assert_eq!(flushed.files.len(), 2);
        let ll = &flushed.files[0];
        assert!(ll.starts_with(dir.path().join("lot_kpis/date=2026-01-05/site=LL")));
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
            File::open(ll).unwrap(),
            1024,
        )
        .unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 2);
        assert_eq!(
            writer.flush().unwrap().files.len(),
            0,
            "nothing left to publish"
        );
    }
}
