//! Runs the analytics operator beside the Parquet sink: it receives the log's committed
//! entries, closes micro-batches, and routes the KPI rows — to each row's gaveur channel or
//! site dashboards, to `gaveurs.kpis.v1`, to the `lot_kpis` and `late` datasets, and to the
//! board behind `GET /api/v1/lots/{code_lot}`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use arrow::array::{Array, AsArray, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{Field, Schema};
use gaveurs_operators::analytics::{Engine, KpiRows, LOT_KPIS, StepOutput, json_rows};
use gaveurs_schemas::datasets::{self, Dataset, Partition};
use gaveurs_schemas::event::Event;
use gaveurs_schemas::records::{Record, Site};
use gaveurs_sinks::kafka::KafkaOutput;
use gaveurs_sinks::parquet::derived::DerivedWriter;
use gaveurs_sinks::wal::{Committed, WalEntry};
use gaveurs_sinks::websocket::Hub;
use parking_lot::RwLock;
use serde::Serialize;
use serde_json::{Map, Value};

/// The dataset of meals that arrived behind their lot's watermark.
pub const LATE: &str = "late";

/// The latest KPI rows of every lot, for clients that come back after the live channel's
/// replay buffer has moved on.
#[derive(Default)]
pub struct LotBoard {
    lots: RwLock<HashMap<String, LotView>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LotView {
    pub code_lot: String,
    pub gaveur_id: Option<i64>,
    pub site: Option<String>,
    /// The latest row of each KPI that has a `code_lot` column, by KPI name.
    pub kpis: BTreeMap<String, Map<String, Value>>,
}

impl LotBoard {
    pub fn get(&self, code_lot: &str) -> Option<LotView> {
        self.lots.read().get(code_lot).cloned()
    }

    fn note(&self, kpi: &str, row: &Map<String, Value>) {
        let Some(code_lot) = row.get("code_lot").and_then(Value::as_str) else {
            return;
        };
        let mut lots = self.lots.write();
        let view = lots.entry(code_lot.to_string()).or_insert_with(|| LotView {
            code_lot: code_lot.to_string(),
            ..LotView::default()
        });
        if let Some(id) = row.get("gaveur_id").and_then(Value::as_i64) {
            view.gaveur_id = Some(id);
        }
        if let Some(site) = row.get("site").and_then(Value::as_str) {
            view.site = Some(site.to_string());
        }
        view.kpis.insert(kpi.to_string(), row.clone());
    }
}

/// Where KPI rows go.
pub struct Outputs {
    pub hub: Arc<Hub>,
    pub kafka: Option<Arc<KafkaOutput>>,
    pub board: Arc<LotBoard>,
    pub writer: DerivedWriter,
}

pub struct Batching {
    pub interval: Duration,
    pub max_records: usize,
    /// Derived datasets are published this often (the Parquet roll interval).
    pub publish_every: Duration,
}

/// Reads back every meal and outcome earlier runs published, so lot totals and windows
/// continue where they stopped, then recomputes every remembered lot's `lot_kpis` row (a
/// crash may have lost the last ones). SQAL samples are not read back: the per-day station
/// and site KPIs of the day of a restart start again from its first sample after it.
pub async fn restore(
    engine: &mut Engine,
    parquet_root: &Path,
    outputs: &mut Outputs,
) -> anyhow::Result<usize> {
    // The same catalog `gaveurs query` reads: published files only, schemas merged, so a
    // file of an older version reads its missing columns as null; no files = no rows.
    let catalog = crate::query::Catalog::open(parquet_root)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut records = Vec::new();
    for (dataset, sql) in [
        (Dataset::GavageMeals, "SELECT * FROM gavage_meals"),
        (
            Dataset::LotOutcomes,
            "SELECT *, _event_time AS event_time FROM lot_outcomes",
        ),
    ] {
        let batches = catalog
            .sql(sql)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .collect()
            .await
            .with_context(|| format!("reading {} back", dataset.name()))?;
        for row in json_rows(&batches)? {
            let mut row = row;
            row.insert(
                "record_type".into(),
                Value::from(match dataset {
                    Dataset::GavageMeals => "gavage",
                    _ => "lot_outcome",
                }),
            );
            match serde_json::from_value::<Record>(Value::Object(row)) {
                Ok(record) => records.push(record),
                Err(e) => {
                    tracing::warn!(dataset = dataset.name(), error = %e, "a published row could not be read back for analytics")
                }
            }
        }
    }
    engine.restore(records.iter());
    let codes = engine.lot_codes();
    if !codes.is_empty() {
        let output = engine.recompute_lots(&codes).await?;
        for kpi in &output.kpis {
            if kpi.kpi.dataset.as_deref() == Some(LOT_KPIS) {
                store_lot_kpis(kpi, outputs)?;
            }
        }
    }
    Ok(records.len())
}

/// Runs the operator on its own thread until the log closes its channel; then the last
/// micro-batch is processed and the derived datasets are published.
pub fn spawn(
    mut engine: Engine,
    mut outputs: Outputs,
    batching: Batching,
    replayed: Vec<Committed>,
    committed: Receiver<Arc<Vec<Committed>>>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("analytics".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "analytics could not start; no KPIs this run");
                    return;
                }
            };
            let mut pending: Vec<Arc<WalEntry>> = replayed.into_iter().map(|c| c.entry).collect();
            let mut batch_started = Instant::now();
            let mut last_publish = Instant::now();
            loop {
                let batch_due = batching.interval.saturating_sub(batch_started.elapsed());
                let publish_due = batching
                    .publish_every
                    .saturating_sub(last_publish.elapsed());
                let wait = if pending.is_empty() {
                    publish_due
                } else {
                    batch_due.min(publish_due)
                };
                let closed = match committed.recv_timeout(wait) {
                    Ok(entries) => {
                        if pending.is_empty() {
                            batch_started = Instant::now();
                        }
                        pending.extend(
                            entries
                                .iter()
                                .filter(|c| matches!(c.entry.as_ref(), WalEntry::Event(_)))
                                .map(|c| c.entry.clone()),
                        );
                        false
                    }
                    Err(RecvTimeoutError::Timeout) => false,
                    Err(RecvTimeoutError::Disconnected) => true,
                };
                let batch_full = pending.len() >= batching.max_records;
                if !pending.is_empty()
                    && (closed || batch_full || batch_started.elapsed() >= batching.interval)
                {
                    let batch = std::mem::take(&mut pending);
                    runtime.block_on(step(&mut engine, &batch, &mut outputs));
                }
                if closed || last_publish.elapsed() >= batching.publish_every {
                    publish(&mut outputs.writer);
                    last_publish = Instant::now();
                }
                if closed {
                    let counters = engine.counters();
                    tracing::info!(
                        records = counters.records,
                        late = counters.late,
                        micro_batches = counters.steps,
                        lots = counters.lots,
                        "analytics stopped"
                    );
                    return;
                }
            }
        })
}

fn publish(writer: &mut DerivedWriter) {
    if writer.pending_rows() == 0 {
        return;
    }
    match writer.flush() {
        Ok(flushed) => {
            tracing::debug!(target: "storage", files = flushed.files.len(), rows = flushed.rows, "derived datasets published")
        }
        Err(e) => {
            tracing::error!(target: "storage", error = %e, "derived datasets (lot_kpis, late) not published; they are recomputed at the next start")
        }
    }
}

async fn step(engine: &mut Engine, batch: &[Arc<WalEntry>], outputs: &mut Outputs) {
    let events: Vec<&Event> = batch
        .iter()
        .filter_map(|entry| match entry.as_ref() {
            WalEntry::Event(event) => Some(event),
            WalEntry::DeadLetter(_) => None,
        })
        .collect();
    let records: Vec<&Record> = events.iter().map(|e| &e.record).collect();
    let output = match engine.step(&records).await {
        Ok(output) => output,
        Err(e) => {
            tracing::error!(error = %e, records = records.len(), "a micro-batch's KPIs failed; the records themselves are stored");
            return;
        }
    };
    if let Err(e) = route(&output, &events, outputs) {
        tracing::error!(error = %e, "KPI rows could not be routed");
    }
}

fn route(output: &StepOutput, events: &[&Event], outputs: &mut Outputs) -> anyhow::Result<()> {
    for kpi in &output.kpis {
        let sqal = kpi.kpi.stream.as_deref() == Some("sqal");
        for row in json_rows(&kpi.batches)? {
            let mut message = Map::with_capacity(row.len() + 1);
            message.insert("kpi".into(), Value::from(kpi.kpi.name.as_str()));
            message.extend(row);
            push_live(&outputs.hub, sqal, &message);
            if let Some(kafka) = &outputs.kafka {
                let key = ["code_lot", "device_id", "site"]
                    .iter()
                    .find_map(|c| message.get(*c).and_then(Value::as_str))
                    .unwrap_or_default()
                    .to_string();
                kafka.kpi(&key, &serde_json::to_vec(&message)?);
            }
            outputs.board.note(&kpi.kpi.name, &message);
        }
        if kpi.kpi.dataset.as_deref() == Some(LOT_KPIS) {
            store_lot_kpis(kpi, outputs)?;
        }
    }
    if !output.late.is_empty() {
        store_late(output, events, &mut outputs.writer)?;
    }
    Ok(())
}

/// A row with a `gaveur_id` goes to that gaveur's channel; one with only a `site`, to that
/// site's dashboards.
fn push_live(hub: &Hub, sqal: bool, message: &Map<String, Value>) {
    if let Some(gaveur_id) = message.get("gaveur_id").and_then(Value::as_i64) {
        hub.publish_to_gaveur(gaveur_id, "kpi", message);
    } else if let Some(site) = message
        .get("site")
        .and_then(Value::as_str)
        .and_then(Site::parse)
    {
        let device = message
            .get("device_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        hub.publish_site("kpi", site, sqal, device, message);
    }
}

/// `lot_kpis` rows, stamped with `_computed_at` (the latest row of a lot wins), partitioned by
/// site and the day they were computed.
fn store_lot_kpis(kpi: &KpiRows, outputs: &mut Outputs) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    for batch in &kpi.batches {
        let batch = with_column(
            batch,
            "_computed_at",
            Arc::new(
                TimestampMicrosecondArray::from(vec![now.timestamp_micros(); batch.num_rows()])
                    .with_timezone("UTC"),
            ),
        )?;
        for (site, rows) in split_by_site(&batch)? {
            outputs.writer.append(
                LOT_KPIS,
                Partition {
                    date: now.date_naive(),
                    site,
                },
                rows,
            );
        }
    }
    Ok(())
}

/// Late meals, as in `gavage_meals` plus `_lateness_s`.
fn store_late(
    output: &StepOutput,
    events: &[&Event],
    writer: &mut DerivedWriter,
) -> anyhow::Result<()> {
    let mut by_partition: BTreeMap<Partition, Vec<(&Event, f64)>> = BTreeMap::new();
    for late in &output.late {
        let event = events[late.index];
        by_partition
            .entry(Partition::of_event(event))
            .or_default()
            .push((event, late.lateness.num_milliseconds() as f64 / 1000.0));
    }
    for (partition, rows) in by_partition {
        let events: Vec<&Event> = rows.iter().map(|(e, _)| *e).collect();
        let batch = datasets::events_to_batch(Dataset::GavageMeals, &events)?;
        let lateness: Vec<f64> = rows.iter().map(|(_, s)| *s).collect();
        let batch = with_column(
            &batch,
            "_lateness_s",
            Arc::new(arrow::array::Float64Array::from(lateness)),
        )?;
        writer.append(LATE, partition, batch);
    }
    Ok(())
}

fn with_column(
    batch: &RecordBatch,
    name: &str,
    column: Arc<dyn Array>,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let nullable = column.null_count() > 0;
    fields.push(Field::new(name, column.data_type().clone(), nullable));
    let mut columns = batch.columns().to_vec();
    columns.push(column);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

fn split_by_site(batch: &RecordBatch) -> anyhow::Result<Vec<(String, RecordBatch)>> {
    let Some(sites) = batch
        .column_by_name("site")
        .and_then(|c| c.as_string_opt::<i32>())
    else {
        return Ok(vec![("unknown".to_string(), batch.clone())]);
    };
    let names: Vec<String> = (0..sites.len())
        .map(|i| {
            if sites.is_null(i) {
                "unknown".to_string()
            } else {
                sites.value(i).to_string()
            }
        })
        .collect();
    let mut distinct = names.clone();
    distinct.sort();
    distinct.dedup();
    let mut parts = Vec::with_capacity(distinct.len());
    for site in distinct {
        let mask =
            arrow::array::BooleanArray::from(names.iter().map(|n| *n == site).collect::<Vec<_>>());
        parts.push((site, arrow::compute::filter_record_batch(batch, &mask)?));
    }
    Ok(parts)
}
