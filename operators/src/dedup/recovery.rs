//! Start-up work that reads the published datasets back.

use std::path::Path;

use crate::dedup::DedupIndex;
use anyhow::Context;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use gaveurs_schemas::records::{DedupKey, meal_key, outcome_key};

/// Writes the dedup key of every published record into the index: on the first start after
/// an upgrade from a version that kept digests only (they say nothing of which lot a key
/// belongs to), or when the index file was lost. Returns how many keys were written.
pub async fn rebuild_dedup_keys(dedup: &DedupIndex, parquet_root: &Path) -> anyhow::Result<usize> {
    let catalog = gaveurs_query::Catalog::open(parquet_root)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut keys: Vec<DedupKey> = Vec::new();
    let queries = [
        "SELECT code_lot, CAST(jour AS BIGINT) AS jour, moment FROM gavage_meals",
        "SELECT code_lot FROM lot_outcomes",
        "SELECT device_id, sample_id FROM sqal_samples",
    ];
    for sql in queries {
        let batches: Vec<RecordBatch> = catalog
            .sql(sql)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .collect()
            .await
            .with_context(|| format!("reading keys back: {sql}"))?;
        for batch in &batches {
            let text = |name: &str| {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_string_opt::<i32>().cloned())
            };
            if let (Some(device), Some(sample)) = (text("device_id"), text("sample_id")) {
                for row in 0..batch.num_rows() {
                    if !device.is_null(row) && !sample.is_null(row) {
                        keys.push(DedupKey::sample(device.value(row), sample.value(row)));
                    }
                }
                continue;
            }
            let Some(lots) = text("code_lot") else {
                continue;
            };
            let jours = batch
                .column_by_name("jour")
                .and_then(|c| c.as_primitive_opt::<Int64Type>().cloned());
            let moments = text("moment");
            for row in 0..batch.num_rows() {
                if lots.is_null(row) {
                    continue;
                }
                let code_lot = lots.value(row);
                let key = match (&jours, &moments) {
                    (Some(jours), Some(moments))
                        if !jours.is_null(row) && !moments.is_null(row) =>
                    {
                        meal_key(code_lot, jours.value(row), moments.value(row))
                    }
                    (None, None) => outcome_key(code_lot),
                    _ => continue,
                };
                keys.push(DedupKey::lot_record(code_lot, &key));
            }
        }
    }
    dedup
        .published(&keys)
        .context("writing the published keys")?;
    Ok(keys.len())
}
