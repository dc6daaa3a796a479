//! What the analytics operator remembers between micro-batches: every lot's meals and outcome
//! (a lot's totals need all of them, whatever their age), its event-time watermark and closed
//! days, and recent SQAL samples.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use gaveurs_schemas::records::{GavageMeal, Grade, LotOutcome, Moment, Site, SqalSample};

/// What the KPIs need of one meal, and no more: a lot keeps up to ~30 of them for weeks,
/// and tens of thousands of lots may be in memory. Its code, gaveur and site are its lot's.
#[derive(Debug, Clone, Copy)]
pub(super) struct Meal {
    pub jour: i64,
    pub moment: Moment,
    pub dose_theorique: f64,
    pub dose_reelle: f64,
    pub poids_moyen: Measure,
    pub nb_canards_vivants: Option<i64>,
    pub taux_mortalite: Measure,
    pub temperature_stabule: Measure,
    pub humidite_stabule: Measure,
    pub timestamp: DateTime<Utc>,
}

// 88 bytes, where `Option<f64>` fields made it 120.
const _: () = assert!(std::mem::size_of::<Meal>() <= 88);

/// An optional measurement in eight bytes instead of an `Option`'s sixteen, NaN standing for
/// none: a record reaches analytics as JSON, which has no NaN (a NaN is logged as null).
#[derive(Debug, Clone, Copy)]
pub(super) struct Measure(f64);

impl Measure {
    fn of(value: Option<f64>) -> Measure {
        Measure(value.unwrap_or(f64::NAN))
    }

    pub fn get(self) -> Option<f64> {
        (!self.0.is_nan()).then_some(self.0)
    }
}

impl Meal {
    pub fn of(meal: &GavageMeal) -> Meal {
        Meal {
            jour: meal.jour,
            moment: meal.moment,
            dose_theorique: meal.dose_theorique,
            dose_reelle: meal.dose_reelle,
            poids_moyen: Measure::of(meal.poids_moyen),
            nb_canards_vivants: meal.nb_canards_vivants,
            taux_mortalite: Measure::of(meal.taux_mortalite),
            temperature_stabule: Measure::of(meal.temperature_stabule),
            humidite_stabule: Measure::of(meal.humidite_stabule),
            timestamp: meal.timestamp,
        }
    }
}

/// One closed day of a lot, as the window KPIs read it (`window_lot_days`); the same sums as
/// SQL's `sum`, `count` and `max` over the day's meals, in the lot's meal order.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct LotDay {
    /// Sum of `|dose_reelle - dose_theorique| / dose_theorique * 100` over the meals with a
    /// positive `dose_theorique`; none when there is no such meal.
    pub ecart_abs_sum: Option<f64>,
    pub ecart_n: i64,
    pub mortalite: Option<f64>,
}

impl LotDay {
    pub fn add(&mut self, meal: &Meal) {
        if meal.dose_theorique > 0.0 {
            let gap =
                ((meal.dose_reelle - meal.dose_theorique) / meal.dose_theorique * 100.0).abs();
            self.ecart_abs_sum = Some(self.ecart_abs_sum.map_or(gap, |sum| sum + gap));
            self.ecart_n += 1;
        }
        if let Some(rate) = meal.taux_mortalite.get() {
            self.mortalite = Some(self.mortalite.map_or(rate, |max| max.max(rate)));
        }
    }
}

/// A lot's meals in (`jour`, `moment`) order, one per idempotency key (a record seen twice
/// replaces itself). A sorted vector rather than a B-tree: a lot has about thirty meals, and
/// the B-tree's half-filled nodes took three times the memory, for tens of thousands of lots.
#[derive(Debug, Default)]
pub(super) struct LotMeals(Vec<Meal>);

impl LotMeals {
    pub fn insert(&mut self, meal: Meal) {
        match self
            .0
            .binary_search_by_key(&(meal.jour, meal.moment), |m| (m.jour, m.moment))
        {
            Ok(index) => self.0[index] = meal,
            Err(index) => self.0.insert(index, meal),
        }
    }

    pub fn values(&self) -> std::slice::Iter<'_, Meal> {
        self.0.iter()
    }

    /// Gives back the spare capacity of a lot that gets no more meals (its outcome is in).
    pub fn shrink(&mut self) {
        self.0.shrink_to_fit();
    }
}

/// One lot: its meals by idempotency key (a record seen twice replaces itself).
#[derive(Debug)]
pub(super) struct LotState {
    pub gaveur_id: i64,
    pub site: Site,
    pub meals: LotMeals,
    pub outcome: Option<LotOutcome>,
    /// The newest event time of the lot; its watermark trails it by the allowed lateness.
    pub max_event_time: Option<DateTime<Utc>>,
    /// Days (UTC dates of event time) whose window contribution is final.
    pub closed_days: BTreeSet<NaiveDate>,
    /// When a record last touched the lot (processing time), for eviction.
    pub touched: std::time::Instant,
}

impl LotState {
    pub fn new(gaveur_id: i64, site: Site) -> Self {
        Self {
            gaveur_id,
            site,
            meals: LotMeals::default(),
            outcome: None,
            max_event_time: None,
            closed_days: BTreeSet::new(),
            touched: std::time::Instant::now(),
        }
    }

    /// Event time before which a meal of this lot is late. An outcome closes the lot: every
    /// meal after it is late.
    pub fn watermark(&self, lateness: Duration) -> Option<DateTime<Utc>> {
        if self.outcome.is_some() {
            return Some(DateTime::<Utc>::MAX_UTC);
        }
        self.max_event_time.map(|t| t - lateness)
    }

    /// Days that the watermark has passed and that were not closed before.
    pub fn close_days(&mut self, lateness: Duration) -> Vec<NaiveDate> {
        let Some(watermark) = self.watermark(lateness) else {
            return Vec::new();
        };
        let days: BTreeSet<NaiveDate> = self
            .meals
            .values()
            .map(|m| m.timestamp.date_naive())
            .filter(|day| {
                day.succ_opt()
                    .and_then(|next| next.and_hms_opt(0, 0, 0))
                    .is_some_and(|end| end.and_utc() <= watermark)
            })
            .collect();
        let newly: Vec<NaiveDate> = days.difference(&self.closed_days).copied().collect();
        self.closed_days.extend(newly.iter().copied());
        newly
    }

    /// Each closed day's meals summed, as the window KPIs read them.
    pub fn closed_day_sums(&self) -> BTreeMap<NaiveDate, LotDay> {
        let mut days: BTreeMap<NaiveDate, LotDay> = BTreeMap::new();
        for meal in self.meals.values() {
            let day = meal.timestamp.date_naive();
            if self.closed_days.contains(&day) {
                days.entry(day).or_default().add(meal);
            }
        }
        days
    }

    pub fn last_activity(&self) -> Option<DateTime<Utc>> {
        let outcome = self.outcome.as_ref().map(|o| o.event_time);
        self.max_event_time.max(outcome)
    }
}

/// The columns of a SQAL sample that KPIs use (the matrices stay out of memory).
#[derive(Debug, Clone)]
pub(super) struct SampleRow {
    pub device_id: String,
    pub sample_id: String,
    pub site: Site,
    pub code_lot: Option<String>,
    pub grade: Grade,
    pub final_score: f64,
    pub is_compliant: bool,
    pub poids_foie_estime_g: Option<f64>,
    pub event_time: DateTime<Utc>,
}

impl SampleRow {
    pub fn of(sample: &SqalSample) -> Self {
        Self {
            device_id: sample.device_id.clone(),
            sample_id: sample.sample_id.clone(),
            site: sample.site_code,
            code_lot: sample.code_lot.clone(),
            grade: sample.grade,
            final_score: sample.final_score,
            is_compliant: sample.is_compliant,
            poids_foie_estime_g: sample.poids_foie_estime_g,
            event_time: sample.timestamp,
        }
    }
}

/// Samples by (site, day) for the per-day device and site KPIs, and by lot; each keyed by
/// (device, sample id) so a sample seen twice counts once.
#[derive(Debug, Default)]
pub(super) struct Samples {
    pub by_day: BTreeMap<(NaiveDate, Site), BTreeMap<(String, String), SampleRow>>,
    pub by_lot: HashMap<String, BTreeMap<(String, String), SampleRow>>,
}

impl Samples {
    pub fn insert(&mut self, row: SampleRow) {
        let id = (row.device_id.clone(), row.sample_id.clone());
        if let Some(lot) = &row.code_lot {
            self.by_lot
                .entry(lot.clone())
                .or_default()
                .insert(id.clone(), row.clone());
        }
        self.by_day
            .entry((row.event_time.date_naive(), row.site))
            .or_default()
            .insert(id, row);
    }

    /// Forgets days before `keep_from`, and the samples of lots no longer remembered.
    pub fn evict(&mut self, keep_from: NaiveDate, lots: &HashSet<String>) {
        self.by_day.retain(|(day, _), _| *day >= keep_from);
        self.by_lot.retain(|lot, _| !lots.contains(lot));
    }
}
