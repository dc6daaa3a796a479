//! Runs the analytics operator beside the Parquet sink: it reads the log's committed
//! entries through its own cursor, closes micro-batches, and routes the KPI rows — to each row's gaveur channel or
//! site dashboards, to `gaveurs.kpis.v1`, to the `lot_kpis` and `late` datasets, and to the
//! board behind `GET /api/v1/lots/{code_lot}`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::analytics::{Engine, LOT_KPIS, StepOutput, json_rows};
use crate::anomalies::desk::ModelSlot;
use crate::anomalies::outcome::{LotSoFar, OutcomeModel};
use crate::dedup::DedupIndex;
use anyhow::Context;
use arrow::array::{Array, AsArray, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{Field, Schema};
use gaveurs_schemas::datasets::{self, Dataset, Partition};
use gaveurs_schemas::event::Event;
use gaveurs_schemas::records::{Record, Site};
use gaveurs_sinks::kafka::KafkaOutput;
use gaveurs_sinks::parquet::RollControl;
use gaveurs_sinks::parquet::derived::DerivedWriter;
use gaveurs_sinks::wal::{CheckpointFile, LogCursor, LogEnded, WalEntry};
use gaveurs_sinks::websocket::Hub;
use parking_lot::RwLock;
use serde::Serialize;
use serde_json::{Map, Value};

/// The dataset of meals that arrived behind their lot's watermark.
pub const LATE: &str = "late";

/// The latest KPI rows of the lots in memory, for clients that come back after the live
/// channel's replay buffer has moved on. Bounded: a lot leaves it when the analytics
/// operator forgets it, and at most `max_lots` stay (the least recently updated go); a lot
/// that is not here is read from the `lot_kpis` dataset ([`lot_view_from_parquet`]).
pub struct LotBoard {
    lots: RwLock<HashMap<String, BoardEntry>>,
    max_lots: usize,
}

/// A lot on the board, kept compact: each KPI's latest row as its JSON text (a row as a JSON
/// map takes several times the memory, and tens of thousands of lots are on the board), with
/// a digest of its values to tell a changed row from a recomputed one.
struct BoardEntry {
    gaveur_id: Option<i64>,
    site: Option<Box<str>>,
    /// KPI name → (digest of the row's values, the row as JSON).
    kpis: Vec<(Box<str>, u64, Box<str>)>,
    touched: Instant,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LotView {
    pub code_lot: String,
    pub gaveur_id: Option<i64>,
    pub site: Option<String>,
    /// The latest row of each KPI that has a `code_lot` column, by KPI name.
    pub kpis: BTreeMap<String, Map<String, Value>>,
}

/// Columns that differ between two computations of the same values.
const NOT_VALUES: [&str; 3] = ["kpi", "_computed_at", "date"];

impl Default for LotBoard {
    fn default() -> Self {
        Self::new(50_000)
    }
}

impl LotBoard {
    pub fn new(max_lots: usize) -> Self {
        Self {
            lots: RwLock::new(HashMap::new()),
            max_lots: max_lots.max(1),
        }
    }

    pub fn get(&self, code_lot: &str) -> Option<LotView> {
        let lots = self.lots.read();
        let entry = lots.get(code_lot)?;
        Some(LotView {
            code_lot: code_lot.to_string(),
            gaveur_id: entry.gaveur_id,
            site: entry.site.as_deref().map(str::to_string),
            kpis: entry
                .kpis
                .iter()
                .filter_map(|(name, _, json)| {
                    Some((name.to_string(), serde_json::from_str(json).ok()?))
                })
                .collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.lots.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps `row` as the lot's latest `kpi` row; false when it holds the same values as the
    /// one already kept (nothing changed).
    fn note(&self, kpi: &str, row: &Map<String, Value>) -> bool {
        let Some(code_lot) = row.get("code_lot").and_then(Value::as_str) else {
            return true;
        };
        let digest = values_digest(row);
        let mut lots = self.lots.write();
        if !lots.contains_key(code_lot) && lots.len() >= self.max_lots {
            // The least recently updated tenth goes: a stream of new lots does not sort on
            // every row.
            let mut by_age: Vec<(Instant, String)> = lots
                .iter()
                .map(|(code, entry)| (entry.touched, code.clone()))
                .collect();
            let count = (self.max_lots / 10).max(1).min(by_age.len());
            by_age.select_nth_unstable(count - 1);
            for (_, code) in &by_age[..count] {
                lots.remove(code);
            }
        }
        let entry = lots
            .entry(code_lot.to_string())
            .or_insert_with(|| BoardEntry {
                gaveur_id: None,
                site: None,
                kpis: Vec::new(),
                touched: Instant::now(),
            });
        entry.touched = Instant::now();
        if let Some(id) = row.get("gaveur_id").and_then(Value::as_i64) {
            entry.gaveur_id = Some(id);
        }
        if let Some(site) = row.get("site").and_then(Value::as_str)
            && entry.site.as_deref() != Some(site)
        {
            entry.site = Some(site.into());
        }
        let json: Box<str> = serde_json::to_string(row)
            .expect("a JSON map serialises")
            .into();
        match entry.kpis.iter_mut().find(|(name, _, _)| &**name == kpi) {
            Some((_, kept, kept_json)) => {
                let changed = *kept != digest;
                *kept = digest;
                *kept_json = json;
                changed
            }
            None => {
                entry.kpis.push((kpi.into(), digest, json));
                true
            }
        }
    }

    fn forget(&self, codes: &[String]) {
        if codes.is_empty() {
            return;
        }
        let mut lots = self.lots.write();
        for code in codes {
            lots.remove(code);
        }
    }
}

/// A digest of a row's values: the columns that do not change between two computations of
/// the same values left out, null columns too, in column-name order.
fn values_digest(row: &Map<String, Value>) -> u64 {
    let values: BTreeMap<&str, &Value> = row
        .iter()
        .filter(|(k, v)| !NOT_VALUES.contains(&k.as_str()) && !v.is_null())
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let text = serde_json::to_string(&values).expect("JSON values serialise");
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// Where KPI rows go, and what the operator reads back.
pub struct Outputs {
    pub hub: Arc<Hub>,
    pub kafka: Option<Arc<KafkaOutput>>,
    pub board: Arc<LotBoard>,
    pub writer: DerivedWriter,
    /// Published datasets, to restore a lot that left memory (or a previous run's lots).
    pub parquet_root: PathBuf,
    /// Whether a lot has published records (so a lot not in memory is worth restoring).
    pub dedup: Arc<DedupIndex>,
    /// What the Parquet sink has published: the checkpoint never passes it, so a restart
    /// finds in Parquet every record before the checkpoint.
    pub published: Arc<RollControl>,
    pub checkpoint: CheckpointFile,
    /// The lot outcome model that adds `itm_pred` and `poids_foie_pred` to lot rows (`None`:
    /// `[ml] enabled = false`).
    pub models: Option<ModelSlot>,
}

pub struct Batching {
    pub interval: Duration,
    pub max_records: usize,
    /// Derived datasets are published this often (the Parquet roll interval).
    pub publish_every: Duration,
    /// Test only (`[analytics] test_step_delay_ms`): each micro-batch takes this much longer,
    /// to show that a slow operator never delays acknowledgements.
    pub step_delay: Duration,
}

/// Restores lots that are not in memory but have published records: their meals and
/// outcome (so totals and windows continue), and their latest `lot_kpis` row (so a row is
/// written again only when a value changes). SQAL samples are not read back.
pub async fn restore_lots(
    engine: &mut Engine,
    outputs: &Outputs,
    codes: &[String],
) -> anyhow::Result<usize> {
    if codes.is_empty() {
        return Ok(0);
    }
    // The same catalog `gaveurs query` reads: published files only, schemas merged, so a
    // file of an older version reads its missing columns as null; no files = no rows.
    let catalog = gaveurs_query::Catalog::open(&outputs.parquet_root)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let list = codes
        .iter()
        .map(|c| format!("'{}'", c.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(",");
    let mut records = Vec::new();
    for (record_type, sql) in [
        (
            "gavage",
            format!("SELECT * FROM gavage_meals WHERE code_lot IN ({list})"),
        ),
        (
            "lot_outcome",
            format!(
                "SELECT *, _event_time AS event_time FROM lot_outcomes WHERE code_lot IN ({list})"
            ),
        ),
    ] {
        for mut row in read(&catalog, &sql).await? {
            row.insert("record_type".into(), Value::from(record_type));
            match serde_json::from_value::<Record>(Value::Object(row)) {
                Ok(record) => records.push(record),
                Err(e) => {
                    tracing::warn!(record_type, error = %e, "a published row could not be read back for analytics")
                }
            }
        }
    }
    engine.restore(records.iter());
    let sql = format!("SELECT * FROM {LOT_KPIS} WHERE code_lot IN ({list})");
    for mut row in read(&catalog, &sql).await? {
        row.insert("kpi".into(), Value::from("lot"));
        outputs.board.note("lot", &row);
    }
    Ok(records.len())
}

async fn read(
    catalog: &gaveurs_query::Catalog,
    sql: &str,
) -> anyhow::Result<Vec<Map<String, Value>>> {
    let batches = catalog
        .sql(sql)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .collect()
        .await
        .with_context(|| format!("reading back: {sql}"))?;
    Ok(json_rows(&batches)?)
}

/// A lot that is not in memory, from its latest `lot_kpis` row (`GET /api/v1/lots/{code}`).
pub async fn lot_view_from_parquet(
    parquet_root: &Path,
    code_lot: &str,
) -> anyhow::Result<Option<LotView>> {
    let catalog = gaveurs_query::Catalog::open(parquet_root)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let sql = format!(
        "SELECT * FROM {LOT_KPIS} WHERE code_lot = '{}'",
        code_lot.replace('\'', "''")
    );
    let Some(mut row) = read(&catalog, &sql).await?.into_iter().next() else {
        return Ok(None);
    };
    row.remove("date");
    row.insert("kpi".into(), Value::from("lot"));
    Ok(Some(LotView {
        code_lot: code_lot.to_string(),
        gaveur_id: row.get("gaveur_id").and_then(Value::as_i64),
        site: row.get("site").and_then(Value::as_str).map(str::to_string),
        kpis: [("lot".to_string(), row)].into_iter().collect(),
    }))
}

/// A gaveur's lots as published (`lot_kpis`: each lot's latest row), for `GET /api/v1/lots`.
pub async fn gaveur_lots_from_parquet(
    parquet_root: &Path,
    gaveur_id: i64,
) -> anyhow::Result<Vec<Map<String, Value>>> {
    let catalog = gaveurs_query::Catalog::open(parquet_root)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let sql = format!("SELECT * FROM {LOT_KPIS} WHERE gaveur_id = {gaveur_id} ORDER BY code_lot");
    let mut rows = read(&catalog, &sql).await?;
    for row in &mut rows {
        row.remove("date");
    }
    Ok(rows)
}

/// A lot's meals as published, in feeding order, for `GET /api/v1/lots/{code}/meals`.
pub async fn lot_meals_from_parquet(
    parquet_root: &Path,
    code_lot: &str,
) -> anyhow::Result<Vec<Map<String, Value>>> {
    let catalog = gaveurs_query::Catalog::open(parquet_root)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let sql = format!(
        "SELECT code_lot, gaveur_id, site, jour, moment, dose_theorique, dose_reelle, poids_moyen, taux_mortalite \
         FROM gavage_meals WHERE code_lot = '{}' ORDER BY jour, moment",
        code_lot.replace('\'', "''")
    );
    read(&catalog, &sql).await
}

/// Runs the operator on its own thread, reading the log through `cursor`, until the log
/// ends; then the last micro-batch is processed and the derived datasets are published.
/// The log keeps what the operator has not yet read (its checkpoint is what it processed).
pub fn spawn(
    mut engine: Engine,
    mut outputs: Outputs,
    batching: Batching,
    mut cursor: LogCursor,
) -> std::io::Result<JoinHandle<anyhow::Result<()>>> {
    std::thread::Builder::new()
        .name("analytics".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "analytics could not start; no KPIs this run");
                    return Ok(());
                }
            };
            let opened_at = cursor.opened_at();
            let mut pending: Vec<Arc<WalEntry>> = Vec::new();
            let mut pending_through = cursor.read_through();
            let mut processed_through = pending_through;
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
                let room = batching.max_records.saturating_sub(pending.len()).max(1);
                let ended = match cursor.next_batch(room, wait) {
                    Ok(entries) => {
                        if pending.is_empty() && !entries.is_empty() {
                            batch_started = Instant::now();
                        }
                        if let Some(last) = entries.last() {
                            pending_through = last.lsn;
                        }
                        pending.extend(
                            entries
                                .iter()
                                .filter(|c| !c.is_earlier_kafka(opened_at))
                                .filter(|c| matches!(c.entry.as_ref(), WalEntry::Event(_)))
                                .map(|c| c.entry.clone()),
                        );
                        None
                    }
                    Err(ended) => Some(ended),
                };
                let finishing = ended == Some(LogEnded::Closed);
                if (ended.is_some() && !finishing) || cursor.abandoned() {
                    // Out of time: what was not processed stays in the log, and the
                    // checkpoint where it was. Rows derived since the last publication are
                    // not published either: the next start derives them again from the
                    // checkpoint, and writing them now could outlast the shutdown deadline.
                    tracing::info!(unprocessed = pending.len(), "analytics stopped before catching up with the log");
                    return Ok(());
                }
                let batch_full = pending.len() >= batching.max_records;
                if !pending.is_empty()
                    && (finishing || batch_full || batch_started.elapsed() >= batching.interval)
                {
                    let batch = std::mem::take(&mut pending);
                    let abandonment = cursor.abandonment();
                    let stepped = runtime.block_on(async {
                        tokio::select! {
                            _ = step(&mut engine, &batch, &mut outputs) => true,
                            _ = abandonment.passed() => false,
                        }
                    });
                    if !stepped {
                        // A step on a loaded machine can take seconds: at the deadline it is
                        // dropped, and the next start derives its rows again.
                        tracing::info!(unprocessed = batch.len(), "analytics stopped before catching up with the log");
                        return Ok(());
                    }
                    outputs.board.forget(&engine.take_evicted());
                    if !batching.step_delay.is_zero() {
                        std::thread::sleep(batching.step_delay);
                    }
                }
                if pending.is_empty() {
                    processed_through = pending_through;
                }
                if finishing || last_publish.elapsed() >= batching.publish_every {
                    if publish(&mut outputs.writer) {
                        // Everything up to here is processed, its rows are published, and
                        // its records are in Parquet (a lot restored later finds them).
                        let through = processed_through.min(outputs.published.published());
                        match outputs.checkpoint.save(through) {
                            Ok(()) => cursor.checkpoint(through),
                            Err(e) => tracing::error!(target: "storage", error = %e, "analytics checkpoint not saved; a restart processes more of the log again"),
                        }
                    }
                    last_publish = Instant::now();
                }
                if finishing {
                    let counters = engine.counters();
                    tracing::info!(
                        records = counters.records,
                        late = counters.late,
                        micro_batches = counters.steps,
                        lots = counters.lots,
                        "analytics stopped"
                    );
                    return Ok(());
                }
            }
        })
}

/// Publishes the buffered derived rows; true when nothing is left buffered.
fn publish(writer: &mut DerivedWriter) -> bool {
    if writer.pending_rows() == 0 {
        return true;
    }
    match writer.flush() {
        Ok(flushed) => {
            tracing::debug!(target: "storage", files = flushed.files.len(), rows = flushed.rows, "derived datasets published");
            true
        }
        Err(e) => {
            tracing::error!(target: "storage", error = %e, "derived datasets (lot_kpis, late) not published; the checkpoint stays, so a restart computes them again");
            false
        }
    }
}

async fn step(engine: &mut Engine, batch: &[Arc<WalEntry>], outputs: &mut Outputs) {
    let events: Vec<&Event> = batch
        .iter()
        .filter_map(|entry| match entry.as_ref() {
            WalEntry::Event(event) => Some(event),
            WalEntry::DeadLetter(_) | WalEntry::Reread(_) => None,
        })
        .collect();
    let records: Vec<&Record> = events.iter().map(|e| &e.record).collect();
    // Lots this batch touches that are not in memory but were published (a lot forgotten
    // earlier, or one of a previous run): read back first, so their totals continue.
    let mut away: Vec<String> = records
        .iter()
        .filter(|r| !matches!(r, Record::Sqal(_)))
        .map(|r| r.partition_key())
        .filter(|code| !engine.is_resident(code))
        .map(str::to_string)
        .collect();
    away.sort();
    away.dedup();
    away.retain(|code| outputs.dedup.lot_published(code).unwrap_or(true));
    if !away.is_empty() {
        match restore_lots(engine, outputs, &away).await {
            Ok(restored) => {
                tracing::debug!(
                    lots = away.len(),
                    records = restored,
                    "lots restored from Parquet"
                )
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), lots = away.len(), "lots could not be restored from Parquet; their KPIs count this batch only")
            }
        }
    }
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
    // Read once per micro-batch: a swapped model predicts from the next one.
    let models = outputs.models.as_ref().map(ModelSlot::current);
    for kpi in &output.kpis {
        let sqal = kpi.kpi.stream.as_deref() == Some("sqal");
        let lot_rows = kpi.kpi.dataset.as_deref() == Some(LOT_KPIS);
        let predicted;
        let batches = match &models {
            Some(models) if lot_rows => {
                predicted = kpi
                    .batches
                    .iter()
                    .map(|b| with_predicted_outcome(b, &models.outcome))
                    .collect::<Result<Vec<_>, _>>()?;
                &predicted
            }
            _ => &kpi.batches,
        };
        let mut changed = Vec::new();
        for row in json_rows(batches)? {
            let mut message = Map::with_capacity(row.len() + 1);
            message.insert("kpi".into(), Value::from(kpi.kpi.name.as_str()));
            message.extend(row);
            let new_values = outputs.board.note(&kpi.kpi.name, &message);
            changed.push(new_values);
            // A lot's row that says nothing new (a record seen again after a restart, a
            // late meal that changes no total) is neither pushed nor stored.
            if lot_rows && !new_values {
                continue;
            }
            push_live(&outputs.hub, sqal, &message);
            if let Some(kafka) = &outputs.kafka {
                let key = ["code_lot", "device_id", "site"]
                    .iter()
                    .find_map(|c| message.get(*c).and_then(Value::as_str))
                    .unwrap_or_default()
                    .to_string();
                kafka.kpi(&key, &serde_json::to_vec(&message)?);
            }
        }
        if lot_rows {
            store_lot_kpis(batches, &changed, outputs)?;
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

/// `lot_kpis` rows whose values changed (`changed`, one flag per row in order), stamped
/// with `_computed_at` (the latest row of a lot wins), partitioned by site and the day they
/// were computed.
fn store_lot_kpis(
    batches: &[RecordBatch],
    changed: &[bool],
    outputs: &mut Outputs,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let mut flags = changed.iter().copied();
    for batch in batches {
        let mask: arrow::array::BooleanArray = (0..batch.num_rows())
            .map(|_| Some(flags.next().unwrap_or(true)))
            .collect();
        let batch = arrow::compute::filter_record_batch(batch, &mask)?;
        if batch.num_rows() == 0 {
            continue;
        }
        let batch = with_column(
            &batch,
            "_computed_at",
            Arc::new(
                TimestampMicrosecondArray::from(vec![now.timestamp_micros(); batch.num_rows()])
                    .with_timezone("UTC"),
            ),
            false,
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
            false,
        )?;
        writer.append(LATE, partition, batch);
    }
    Ok(())
}

/// A batch of lot rows with `itm_pred` and `poids_foie_pred`: the outcome `model` predicts
/// from each row's feeding so far (null before a lot's first meal). A lot query without the
/// columns the model reads (a configured one) gets no prediction.
fn with_predicted_outcome(
    batch: &RecordBatch,
    model: &OutcomeModel,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::array::Float64Array;
    use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
    let column = |name: &str| batch.column_by_name(name);
    let (Some(site), Some(first), Some(jours), Some(repas), Some(real), Some(planned), Some(gap)) = (
        column("site").and_then(|c| c.as_string_opt::<i32>()),
        column("premier_repas").and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>()),
        column("jours").and_then(|c| c.as_primitive_opt::<Int64Type>()),
        column("repas").and_then(|c| c.as_primitive_opt::<Int64Type>()),
        column("mais_total_g").and_then(|c| c.as_primitive_opt::<Float64Type>()),
        column("mais_theorique_total_g").and_then(|c| c.as_primitive_opt::<Float64Type>()),
        column("ecart_moyen_pct").and_then(|c| c.as_primitive_opt::<Float64Type>()),
    ) else {
        return Ok(batch.clone());
    };
    let predicted: Vec<_> = (0..batch.num_rows())
        .map(|row| {
            if first.is_null(row) || site.is_null(row) {
                return None;
            }
            let month = chrono::DateTime::from_timestamp_micros(first.value(row))
                .map_or(1, |t| chrono::Datelike::month(&t));
            model.predict(&LotSoFar {
                site: site.value(row),
                month,
                jours: jours.value(row),
                repas: repas.value(row),
                mais_total_g: real.value(row),
                mais_theorique_total_g: planned.value(row),
                ecart_moyen_pct: (!gap.is_null(row)).then(|| gap.value(row)),
            })
        })
        .collect();
    let itm: Float64Array = predicted.iter().map(|p| p.map(|p| p.itm)).collect();
    let foie: Float64Array = predicted
        .iter()
        .map(|p| p.map(|p| p.poids_foie_g))
        .collect();
    // Nullable whatever this batch holds, so every file of the dataset has one schema.
    let batch = with_column(batch, "itm_pred", Arc::new(itm), true)?;
    with_column(&batch, "poids_foie_pred", Arc::new(foie), true)
}

/// `batch` with `column` added as `name` (nullable if asked, or if it holds a null).
fn with_column(
    batch: &RecordBatch,
    name: &str,
    column: Arc<dyn Array>,
    nullable: bool,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let nullable = nullable || column.null_count() > 0;
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
