//! The analytics operator (SPEC §4): KPIs in event time, as SQL queries over Arrow
//! RecordBatches run by DataFusion.
//!
//! Accepted records accumulate into micro-batches. For each micro-batch the operator updates
//! its state (every meal and outcome of every lot it remembers, recent SQAL samples), builds
//! the tables below for the lots, days, windows and stations the batch touched, and runs every
//! KPI query over them. A KPI is a query: adding one is adding a `[analytics.kpis.<name>]`
//! entry with its SQL, not Rust code. Each result row goes to the channel of its `gaveur_id`
//! when it has one, else to the dashboards of its `site`, and to `gaveurs.kpis.v1`; the
//! query marked `dataset = "lot_kpis"` also fills that dataset.
//!
//! Tables a query can read (all columns of event time are UTC):
//! - `batch_meals`: the meals of this micro-batch; `meals`: every meal of the lots it
//!   touched (`code_lot, gaveur_id, site, jour, moment, dose_theorique, dose_reelle,
//!   poids_moyen, nb_canards_vivants, taux_mortalite, temperature_stabule, humidite_stabule,
//!   event_time, event_date`).
//! - `touched_days (code_lot, jour)`: the lot-days the micro-batch touched.
//! - `outcomes`: the outcomes of those lots (`code_lot, gaveur_id, site,
//!   nb_canards_mis_en_gavage, nb_canards_accroches, poids_foie_moyen_g, date_fin,
//!   event_time`); `lot_samples`: their SQAL samples (samples that carry a `code_lot`).
//! - `window_days (scope, key, window_days, window_start, window_end, day)`: the gaveur
//!   (`scope = 'gaveur'`, key = the id) and site windows to recompute, one row per day they
//!   cover; `window_lot_days (scope, key, day, code_lot, ecart_abs_sum, ecart_n, mortalite)`:
//!   the closed lot-days in those windows, each summed (`ecart_abs_sum` of the meals'
//!   absolute dose gaps in % where `dose_theorique > 0`, `ecart_n` of them, the highest
//!   `taux_mortalite`); `window_meals`: the same lot-days' meals, with `scope`, `key` and `day`
//!   in front (built only when a configured query reads it); `finished_lots (scope, key, day,
//!   code_lot, itm)`: lots whose outcome day falls in them.
//! - `sqal_scoped`: the SQAL samples of the devices and sites (per day: `period` =
//!   `YYYY-MM-DD`) and lots (`period = 'lot'`) the batch touched, with `scope`, `key` and
//!   `period` in front of `device_id, sample_id, site, code_lot, grade, final_score,
//!   is_compliant, poids_foie_estime_g, event_time`.
//!
//! Event time: every accepted record is counted in its lot's totals whatever its age.
//! Windows close on a watermark kept per lot — its newest event time minus the allowed
//! lateness, or the end of time once its outcome is in — so a gateway that was offline for
//! hours and then flushes its backlog is not late. A meal older than its lot's watermark is
//! *late*: it still counts, is reported (the `late` dataset and a counter), and recomputes
//! the windows it falls in.

pub mod consumer;
mod state;
mod tables;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use gaveurs_schemas::records::{GavageMeal, LotOutcome, Record, Site};
use serde::Deserialize;

use state::{LotDay, LotState, Meal, SampleRow, Samples};
use tables::{FinishedRef, LotDayRef, MealRef, SampleRef, WindowRef};

/// One KPI: a named SQL query over the tables of this module.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KpiQuery {
    #[serde(skip)]
    pub name: String,
    /// The query. Its rows need a `gaveur_id` column (to reach that gaveur's channel) or a
    /// `site` column (to reach that site's dashboards).
    pub sql: String,
    /// `lot_kpis`: the rows also fill that dataset (one row per `code_lot`, latest wins).
    #[serde(default)]
    pub dataset: Option<String>,
    /// `sqal`: the rows reach dashboards as SQAL messages (kept by `data_type: sqal_only`).
    #[serde(default)]
    pub stream: Option<String>,
}

/// The dataset the lot KPIs fill.
pub const LOT_KPIS: &str = "lot_kpis";

/// The KPIs shipped by default; `[analytics.kpis.<name>]` replaces one or adds one.
pub fn default_kpis() -> Vec<KpiQuery> {
    let kpi = |name: &str, sql: &str, dataset: Option<&str>, stream: Option<&str>| KpiQuery {
        name: name.to_string(),
        sql: sql.to_string(),
        dataset: dataset.map(str::to_string),
        stream: stream.map(str::to_string),
    };
    vec![
        kpi("meal", include_str!("kpis/meal.sql"), None, None),
        kpi("lot_day", include_str!("kpis/lot_day.sql"), None, None),
        kpi("lot", include_str!("kpis/lot.sql"), Some(LOT_KPIS), None),
        kpi("windows", include_str!("kpis/windows.sql"), None, None),
        kpi("sqal", include_str!("kpis/sqal.sql"), None, Some("sqal")),
    ]
}

#[derive(Debug, Clone)]
pub struct AnalyticsSettings {
    /// How far behind its lot's newest meal a meal may be before it is late.
    pub allowed_lateness: Duration,
    /// How long (in event time, behind the newest record) a finished lot is remembered: at
    /// least the longest window plus the lateness, so windows that still change see it.
    pub lot_retention: Duration,
    /// A lot without a record for this long (processing time) leaves memory.
    pub lot_idle: std::time::Duration,
    /// At most this many lots stay in memory (least recently touched leave first, never
    /// one touched within `lot_min_residency`).
    pub max_lots: usize,
    /// A lot stays at least this long after its last record, so what it holds is published
    /// (and can be restored from Parquet) before it may leave.
    pub lot_min_residency: std::time::Duration,
    /// How long per-day SQAL samples are remembered.
    pub sample_retention: Duration,
    pub kpis: Vec<KpiQuery>,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        Self {
            allowed_lateness: Duration::hours(1),
            lot_retention: Duration::days(8),
            lot_idle: std::time::Duration::from_secs(48 * 3600),
            max_lots: 50_000,
            lot_min_residency: std::time::Duration::from_secs(300),
            sample_retention: Duration::days(2),
            kpis: default_kpis(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error("KPI query `{name}` failed: {source}")]
    Query {
        name: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("building the analytics tables: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("analytics tables: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

/// The rows one KPI query produced for a micro-batch.
#[derive(Debug, Clone)]
pub struct KpiRows {
    pub kpi: KpiQuery,
    pub batches: Vec<RecordBatch>,
}

impl KpiRows {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// A meal that arrived behind its lot's watermark.
#[derive(Debug, Clone, PartialEq)]
pub struct LateMeal {
    /// Index of the record in the micro-batch.
    pub index: usize,
    pub code_lot: String,
    /// How far behind the watermark it was.
    pub lateness: Duration,
}

#[derive(Debug, Default)]
pub struct StepOutput {
    pub kpis: Vec<KpiRows>,
    pub late: Vec<LateMeal>,
}

/// Counters for logs and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct AnalyticsCounters {
    pub records: u64,
    pub late: u64,
    pub steps: u64,
    pub lots: usize,
}

pub struct Engine {
    settings: AnalyticsSettings,
    ctx: SessionContext,
    lots: HashMap<String, LotState>,
    lots_of_gaveur: HashMap<i64, BTreeSet<String>>,
    lots_of_site: HashMap<Site, BTreeSet<String>>,
    /// Lots that left memory since the caller last asked (their board entries go too).
    evicted: Vec<String>,
    samples: Samples,
    /// ITM and outcome day of finished lots, from the `lot_kpis` query.
    finished: HashMap<String, (NaiveDate, Option<f64>)>,
    newest_event: Option<DateTime<Utc>>,
    counters: AnalyticsCounters,
    /// A configured query reads `window_meals`. The default ones read `window_lot_days`:
    /// with thousands of lots on a site, every meal of the site's last fortnight made a
    /// table of hundreds of thousands of rows per micro-batch.
    custom_window_meals: bool,
}

/// What a micro-batch touched.
#[derive(Default)]
struct Touched<'a> {
    lots: BTreeSet<String>,
    days: BTreeSet<(String, i64)>,
    batch_meals: Vec<&'a GavageMeal>,
    /// (scope, key) → days whose windows to recompute.
    window_days: BTreeMap<(&'static str, String), BTreeSet<NaiveDate>>,
    sample_keys: BTreeSet<(&'static str, String, String)>,
}

impl Engine {
    pub fn new(settings: AnalyticsSettings) -> Self {
        // One partition: the tables are small, and planning for parallelism costs more than
        // it saves on two cores.
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_information_schema(false);
        let custom_window_meals = settings.kpis.iter().any(|k| k.sql.contains("window_meals"));
        Self {
            settings,
            ctx: SessionContext::new_with_config(config),
            lots: HashMap::new(),
            lots_of_gaveur: HashMap::new(),
            lots_of_site: HashMap::new(),
            evicted: Vec::new(),
            samples: Samples::default(),
            finished: HashMap::new(),
            newest_event: None,
            counters: AnalyticsCounters::default(),
            custom_window_meals,
        }
    }

    pub fn settings(&self) -> &AnalyticsSettings {
        &self.settings
    }

    pub fn counters(&self) -> AnalyticsCounters {
        AnalyticsCounters {
            lots: self.lots.len(),
            ..self.counters
        }
    }

    /// Checks every KPI query against empty tables, so a typo in configuration is an error at
    /// start rather than at the first record.
    pub async fn check_queries(&mut self) -> Result<(), AnalyticsError> {
        let touched = Touched::default();
        self.register_tables(&touched)?;
        for kpi in &self.settings.kpis {
            self.ctx
                .sql(&kpi.sql)
                .await
                .map_err(|source| AnalyticsError::Query {
                    name: kpi.name.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Remembers records read back at start (published files and the log) without emitting
    /// anything: their KPIs were emitted before. Their days count as closed.
    pub fn restore<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) {
        let lateness = self.settings.allowed_lateness;
        let mut touched = BTreeSet::new();
        for record in records {
            self.note_time(record.event_time());
            match record {
                Record::Gavage(meal) => {
                    let lot = self.lot_entry(&meal.code_lot, meal.gaveur_id, meal.site);
                    lot.max_event_time = lot.max_event_time.max(Some(meal.timestamp));
                    lot.meals.insert(Meal::of(meal));
                    touched.insert(meal.code_lot.clone());
                }
                Record::LotOutcome(outcome) => {
                    let lot = self.lot_entry(&outcome.code_lot, outcome.gaveur_id, outcome.site);
                    lot.outcome = Some(outcome.clone());
                    lot.meals.shrink();
                    touched.insert(outcome.code_lot.clone());
                }
                Record::Sqal(sample) => self.samples.insert(SampleRow::of(sample)),
            }
        }
        for code in touched {
            if let Some(lot) = self.lots.get_mut(&code) {
                lot.close_days(lateness);
            }
        }
    }

    /// Restores the ITM of a finished lot as last computed (so windows can average it).
    pub fn restore_finished(&mut self, code_lot: &str, day: NaiveDate, itm: Option<f64>) {
        self.finished.insert(code_lot.to_string(), (day, itm));
    }

    /// Codes of every remembered lot: at start, their `lot_kpis` rows are recomputed, so a
    /// row lost in a crash is written again.
    pub fn lot_codes(&self) -> Vec<String> {
        let mut codes: Vec<String> = self.lots.keys().cloned().collect();
        codes.sort();
        codes
    }

    /// Runs the KPI queries for lots without new records (e.g. at start): only the queries
    /// that read whole lots (`meals`, `outcomes`) produce rows.
    pub async fn recompute_lots(&mut self, codes: &[String]) -> Result<StepOutput, AnalyticsError> {
        let touched = Touched {
            lots: codes.iter().cloned().collect(),
            ..Touched::default()
        };
        let kpis = self.run_queries(&touched).await?;
        Ok(StepOutput {
            kpis,
            late: Vec::new(),
        })
    }

    /// One micro-batch of accepted records, in log order.
    pub async fn step(&mut self, records: &[&Record]) -> Result<StepOutput, AnalyticsError> {
        let lateness = self.settings.allowed_lateness;
        let mut touched = Touched::default();
        let mut late = Vec::new();
        let mut closing = BTreeSet::new();
        // Within a micro-batch, records are taken in event-time order: disorder inside one
        // batch is never lateness.
        let mut order: Vec<usize> = (0..records.len()).collect();
        order.sort_by_key(|&i| records[i].event_time());
        for index in order {
            let record = records[index];
            self.note_time(record.event_time());
            match record {
                Record::Gavage(meal) => {
                    let lot = self.lot_entry(&meal.code_lot, meal.gaveur_id, meal.site);
                    if let Some(watermark) = lot.watermark(lateness)
                        && meal.timestamp < watermark
                    {
                        let lateness = match &lot.outcome {
                            Some(_) => Duration::zero(),
                            None => watermark - meal.timestamp,
                        };
                        late.push(LateMeal {
                            index,
                            code_lot: meal.code_lot.clone(),
                            lateness,
                        });
                        // Its day was closed: the windows it falls in are corrected.
                        let day = meal.timestamp.date_naive();
                        touched
                            .window_days
                            .entry(("gaveur", meal.gaveur_id.to_string()))
                            .or_default()
                            .insert(day);
                        touched
                            .window_days
                            .entry(("site", meal.site.as_str().to_string()))
                            .or_default()
                            .insert(day);
                        lot.closed_days.insert(day);
                    }
                    lot.max_event_time = lot.max_event_time.max(Some(meal.timestamp));
                    lot.meals.insert(Meal::of(meal));
                    touched.lots.insert(meal.code_lot.clone());
                    touched.days.insert((meal.code_lot.clone(), meal.jour));
                    touched.batch_meals.push(meal);
                    closing.insert(meal.code_lot.clone());
                }
                Record::LotOutcome(outcome) => {
                    let lot = self.lot_entry(&outcome.code_lot, outcome.gaveur_id, outcome.site);
                    lot.outcome = Some(outcome.clone());
                    lot.meals.shrink();
                    touched.lots.insert(outcome.code_lot.clone());
                    closing.insert(outcome.code_lot.clone());
                }
                Record::Sqal(sample) => {
                    let row = SampleRow::of(sample);
                    let day = row.event_time.date_naive().to_string();
                    touched
                        .sample_keys
                        .insert(("device", row.device_id.clone(), day.clone()));
                    touched
                        .sample_keys
                        .insert(("site", row.site.as_str().to_string(), day));
                    if let Some(lot) = &row.code_lot {
                        touched
                            .sample_keys
                            .insert(("lot", lot.clone(), "lot".to_string()));
                        // The lot's liver weight may come from its samples.
                        if self.lots.contains_key(lot) {
                            touched.lots.insert(lot.clone());
                        }
                    }
                    self.samples.insert(row);
                }
            }
        }
        for code in &closing {
            let lot = self.lots.get_mut(code).expect("touched lots exist");
            let (gaveur, site) = (lot.gaveur_id.to_string(), lot.site.as_str().to_string());
            for day in lot.close_days(lateness) {
                for key in [("gaveur", gaveur.clone()), ("site", site.clone())] {
                    touched.window_days.entry(key).or_default().insert(day);
                }
            }
        }
        self.counters.records += records.len() as u64;
        self.counters.late += late.len() as u64;
        self.counters.steps += 1;
        let kpis = self.run_queries(&touched).await?;
        self.evict();
        Ok(StepOutput { kpis, late })
    }

    /// The engine's clock: the newest event time seen, never ahead of the wall clock (a
    /// record dated in the future must not age every lot at once).
    fn note_time(&mut self, time: DateTime<Utc>) {
        let time = time.min(Utc::now());
        self.newest_event = self.newest_event.max(Some(time));
    }

    /// Whether the lot's state is in memory. A lot that is not may have published records:
    /// the caller restores them ([`Engine::restore`]) before a batch that touches it.
    pub fn is_resident(&self, code_lot: &str) -> bool {
        self.lots.contains_key(code_lot)
    }

    /// Lots that left memory since the last call.
    pub fn take_evicted(&mut self) -> Vec<String> {
        std::mem::take(&mut self.evicted)
    }

    fn lot_entry(&mut self, code_lot: &str, gaveur_id: i64, site: Site) -> &mut LotState {
        if !self.lots.contains_key(code_lot) {
            self.lots_of_gaveur
                .entry(gaveur_id)
                .or_default()
                .insert(code_lot.to_string());
            self.lots_of_site
                .entry(site)
                .or_default()
                .insert(code_lot.to_string());
        }
        let lot = self
            .lots
            .entry(code_lot.to_string())
            .or_insert_with(|| LotState::new(gaveur_id, site));
        lot.touched = std::time::Instant::now();
        lot
    }

    /// Runs every query; the `lot_kpis` one first, because windows average its ITMs.
    async fn run_queries(&mut self, touched: &Touched<'_>) -> Result<Vec<KpiRows>, AnalyticsError> {
        let mut kpis = self.settings.kpis.clone();
        kpis.sort_by_key(|k| k.dataset.as_deref() != Some(LOT_KPIS));
        let mut results = Vec::with_capacity(kpis.len());
        self.register_tables(touched)?;
        let mut windows_stale = false;
        for kpi in kpis {
            if windows_stale && kpi.dataset.as_deref() != Some(LOT_KPIS) {
                self.register_windows(touched)?;
                windows_stale = false;
            }
            let batches = self
                .run(&kpi)
                .await
                .map_err(|source| AnalyticsError::Query {
                    name: kpi.name.clone(),
                    source,
                })?;
            if kpi.dataset.as_deref() == Some(LOT_KPIS) {
                self.note_finished(&batches);
                windows_stale = true;
            }
            results.push(KpiRows { kpi, batches });
        }
        Ok(results)
    }

    async fn run(
        &self,
        kpi: &KpiQuery,
    ) -> Result<Vec<RecordBatch>, datafusion::error::DataFusionError> {
        let batches = self.ctx.sql(&kpi.sql).await?.collect().await?;
        Ok(batches.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    /// Remembers finished lots' ITM and outcome day from the `lot_kpis` rows.
    fn note_finished(&mut self, batches: &[RecordBatch]) {
        use arrow::array::{Array, AsArray};
        use arrow::datatypes::{Date32Type, Float64Type};
        for batch in batches {
            let (Some(code), Some(date_fin), Some(itm)) = (
                batch.column_by_name("code_lot"),
                batch.column_by_name("date_fin"),
                batch.column_by_name("itm"),
            ) else {
                return;
            };
            let (Some(code), Some(date_fin), Some(itm)) = (
                code.as_string_opt::<i32>(),
                date_fin.as_primitive_opt::<Date32Type>(),
                itm.as_primitive_opt::<Float64Type>(),
            ) else {
                return;
            };
            for row in 0..batch.num_rows() {
                if date_fin.is_null(row) {
                    continue;
                }
                let Some(day) = date_fin.value_as_date(row) else {
                    continue;
                };
                let itm = (!itm.is_null(row)).then(|| itm.value(row));
                self.finished
                    .insert(code.value(row).to_string(), (day, itm));
            }
        }
    }

    fn register(
        &self,
        name: &str,
        schema: SchemaRef,
        batch: RecordBatch,
    ) -> Result<(), AnalyticsError> {
        let partitions = if batch.num_rows() == 0 {
            vec![vec![]]
        } else {
            vec![vec![batch]]
        };
        let table = MemTable::try_new(schema, partitions)?;
        self.ctx.deregister_table(name)?;
        self.ctx.register_table(name, Arc::new(table))?;
        Ok(())
    }

    fn register_tables(&self, touched: &Touched<'_>) -> Result<(), AnalyticsError> {
        let lots: Vec<&LotState> = touched
            .lots
            .iter()
            .filter_map(|code| self.lots.get(code))
            .collect();
        let compact: Vec<Meal> = touched.batch_meals.iter().map(|m| Meal::of(m)).collect();
        let batch_meals: Vec<MealRef> = touched
            .batch_meals
            .iter()
            .zip(&compact)
            .map(|(full, meal)| MealRef {
                scope: None,
                code_lot: &full.code_lot,
                gaveur_id: full.gaveur_id,
                site: full.site,
                meal,
            })
            .collect();
        self.register(
            "batch_meals",
            tables::meal_schema(false),
            tables::meals(&batch_meals, false)?,
        )?;
        let meals: Vec<MealRef> = touched
            .lots
            .iter()
            .filter_map(|code| Some((code, self.lots.get(code)?)))
            .flat_map(|(code, lot)| {
                lot.meals.values().map(move |meal| MealRef {
                    scope: None,
                    code_lot: code,
                    gaveur_id: lot.gaveur_id,
                    site: lot.site,
                    meal,
                })
            })
            .collect();
        self.register(
            "meals",
            tables::meal_schema(false),
            tables::meals(&meals, false)?,
        )?;
        let days: Vec<(&str, i64)> = touched.days.iter().map(|(c, j)| (c.as_str(), *j)).collect();
        self.register(
            "touched_days",
            tables::touched_days_schema(),
            tables::touched_days(&days)?,
        )?;
        let outcomes: Vec<&LotOutcome> = lots.iter().filter_map(|l| l.outcome.as_ref()).collect();
        self.register(
            "outcomes",
            tables::outcome_schema(),
            tables::outcomes(&outcomes)?,
        )?;
        let lot_samples: Vec<SampleRef> = touched
            .lots
            .iter()
            .filter_map(|code| self.samples.by_lot.get(code))
            .flat_map(|rows| rows.values().map(|row| SampleRef { scope: None, row }))
            .collect();
        self.register(
            "lot_samples",
            tables::sample_schema(false),
            tables::samples(&lot_samples, false)?,
        )?;
        self.register_windows(touched)?;
        self.register_samples(touched)?;
        Ok(())
    }

    fn register_windows(&self, touched: &Touched<'_>) -> Result<(), AnalyticsError> {
        let mut windows = Vec::new();
        let mut meals = Vec::new();
        let mut lot_days = Vec::new();
        let mut summed: HashMap<&str, BTreeMap<NaiveDate, LotDay>> = HashMap::new();
        let mut finished = Vec::new();
        for ((scope, key), trigger_days) in &touched.window_days {
            // The 1-day window of each day, and every 7-day window that contains it.
            let mut starts: BTreeSet<(NaiveDate, i64)> = BTreeSet::new();
            for day in trigger_days {
                starts.insert((*day, 1));
                for back in 0..7 {
                    starts.insert((*day - Duration::days(back), 7));
                }
            }
            let mut covered: BTreeSet<NaiveDate> = BTreeSet::new();
            for (start, days) in &starts {
                for offset in 0..*days {
                    covered.insert(*start + Duration::days(offset));
                }
                windows.push(WindowRef {
                    scope,
                    key: key.clone(),
                    start: *start,
                    days: *days,
                });
            }
            let (Some(&first), Some(&last)) = (covered.first(), covered.last()) else {
                continue;
            };
            let codes = match *scope {
                "gaveur" => key
                    .parse::<i64>()
                    .ok()
                    .and_then(|id| self.lots_of_gaveur.get(&id)),
                _ => Site::parse(key).and_then(|site| self.lots_of_site.get(&site)),
            };
            for code in codes.into_iter().flatten() {
                let Some(lot) = self.lots.get(code) else {
                    continue;
                };
                // A lot is in a gaveur's windows and its site's: its days are summed once.
                let days = summed
                    .entry(code.as_str())
                    .or_insert_with(|| lot.closed_day_sums());
                lot_days.extend(
                    days.range(first..=last)
                        .filter(|(day, _)| covered.contains(day))
                        .map(|(day, sums)| LotDayRef {
                            scope,
                            key: key.clone(),
                            day: *day,
                            code_lot: code,
                            sums: *sums,
                        }),
                );
                if self.custom_window_meals {
                    for meal in lot.meals.values() {
                        let day = meal.timestamp.date_naive();
                        if covered.contains(&day) && lot.closed_days.contains(&day) {
                            meals.push(MealRef {
                                scope: Some((scope, key.clone(), day)),
                                code_lot: code,
                                gaveur_id: lot.gaveur_id,
                                site: lot.site,
                                meal,
                            });
                        }
                    }
                }
                if let Some((day, itm)) = self.finished.get(code)
                    && covered.contains(day)
                {
                    finished.push(FinishedRef {
                        scope,
                        key: key.clone(),
                        day: *day,
                        code_lot: code,
                        itm: *itm,
                    });
                }
            }
        }
        self.register(
            "window_days",
            tables::window_days_schema(),
            tables::window_days(&windows)?,
        )?;
        self.register(
            "window_lot_days",
            tables::window_lot_days_schema(),
            tables::window_lot_days(&lot_days)?,
        )?;
        self.register(
            "window_meals",
            tables::meal_schema(true),
            tables::meals(&meals, true)?,
        )?;
        self.register(
            "finished_lots",
            tables::finished_lots_schema(),
            tables::finished_lots(&finished)?,
        )?;
        Ok(())
    }

    fn register_samples(&self, touched: &Touched<'_>) -> Result<(), AnalyticsError> {
        let mut rows: Vec<SampleRef> = Vec::new();
        for (scope, key, period) in &touched.sample_keys {
            let scoping = || Some((*scope, key.as_str(), period.clone()));
            match *scope {
                "lot" => {
                    if let Some(samples) = self.samples.by_lot.get(key) {
                        rows.extend(samples.values().map(|row| SampleRef {
                            scope: scoping(),
                            row,
                        }));
                    }
                }
                _ => {
                    let Ok(day) = period.parse::<NaiveDate>() else {
                        continue;
                    };
                    for ((d, site), samples) in self.samples.by_day.range((day, Site::LL)..) {
                        if *d != day {
                            break;
                        }
                        let matches = |row: &SampleRow| match *scope {
                            "device" => row.device_id == *key,
                            _ => site.as_str() == key,
                        };
                        rows.extend(samples.values().filter(|row| matches(row)).map(|row| {
                            SampleRef {
                                scope: scoping(),
                                row,
                            }
                        }));
                    }
                }
            }
        }
        self.register(
            "sqal_scoped",
            tables::sample_schema(true),
            tables::samples(&rows, true)?,
        )?;
        Ok(())
    }

    /// Forgets, so memory stays bounded whatever the history: finished lots past their
    /// retention (event time behind the newest record, so a replay of last year's data is
    /// not forgotten at once), lots idle for `lot_idle`, and the least recently touched lots
    /// beyond `max_lots`. A forgotten lot that gets a record again is restored from Parquet
    /// by the caller. Old SQAL days go too.
    fn evict(&mut self) {
        let Some(newest) = self.newest_event else {
            return;
        };
        let lot_horizon = newest - self.settings.lot_retention;
        let idle = self.settings.lot_idle;
        let mut expired: Vec<String> = self
            .lots
            .iter()
            .filter(|(_, lot)| {
                let finished =
                    lot.outcome.is_some() && lot.last_activity().is_some_and(|t| t < lot_horizon);
                finished || lot.touched.elapsed() >= idle
            })
            .map(|(code, _)| code.clone())
            .collect();
        let over = (self.lots.len() - expired.len()).saturating_sub(self.settings.max_lots);
        if over > 0 {
            let residency = self.settings.lot_min_residency;
            let already: HashSet<&String> = expired.iter().collect();
            let mut candidates: Vec<(std::time::Instant, &String)> = self
                .lots
                .iter()
                .filter(|(code, lot)| lot.touched.elapsed() >= residency && !already.contains(code))
                .map(|(code, lot)| (lot.touched, code))
                .collect();
            candidates.sort();
            expired.extend(candidates.into_iter().take(over).map(|(_, c)| c.clone()));
        }
        let mut gone = HashSet::new();
        for code in expired {
            if let Some(lot) = self.lots.remove(&code) {
                if let Some(codes) = self.lots_of_gaveur.get_mut(&lot.gaveur_id) {
                    codes.remove(&code);
                    if codes.is_empty() {
                        self.lots_of_gaveur.remove(&lot.gaveur_id);
                    }
                }
                if let Some(codes) = self.lots_of_site.get_mut(&lot.site) {
                    codes.remove(&code);
                }
                self.finished.remove(&code);
                gone.insert(code.clone());
                self.evicted.push(code);
            }
        }
        let sample_horizon = (newest - self.settings.sample_retention).date_naive();
        self.samples.evict(sample_horizon, &gone);
    }
}

#[cfg(test)]
mod tests;

/// KPI rows as JSON objects (dates as `YYYY-MM-DD`, times as RFC 3339, nulls kept), the
/// shape they take on WebSockets, Kafka and the HTTP API.
pub fn json_rows(
    batches: &[RecordBatch],
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, arrow::error::ArrowError> {
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(Vec::new());
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&bytes).map_err(|e| arrow::error::ArrowError::JsonError(e.to_string()))
}
