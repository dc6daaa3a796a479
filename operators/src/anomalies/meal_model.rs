//! The gavage meal model: what a lot's next meal should be, learnt from the population of
//! real lots, and how far a meal is from it.
//!
//! A lot has about 21 meals, too few to learn from itself, so the model learns the
//! population: at each meal of the protocol (its **step**, `2 × (jour − 1)` plus one for the
//! evening), a linear model predicts `dose_theorique` from the lot's two previous planned doses
//! and its context (site, strain, season), and another predicts the ratio
//! `dose_reelle / dose_theorique` from the lot's previous ratio. A lot seen without its
//! previous meal (its first meal, or a lot met half-way) is predicted by the step's cold
//! models, which know only the context. Each model's residuals have a robust scale per step
//! (1.4826 × median absolute deviation), so a meal's residuals are z-scores.
//!
//! A meal's score is the length of its vector of standardised evidence:
//! - `dose_theorique`: the planned dose against the protocol the population follows (a
//!   curve off the protocol, which no rule sees when the real dose follows it);
//! - `dose_reelle`: the real dose against what the plan and the lot's habit predict (spikes,
//!   drops, refusals);
//! - `tendance`: the lot's ratio against its own course: a run of two or three meals all fed
//!   short (or over) of the median of the lot's earlier ratios, so a level shift shows by its
//!   second meal although one meal that far off is common, and a two-sided CUSUM of the
//!   ratio's deviation from that, so a slow drift adds up until it shows;
//! - `sequence`: meals missing before this one, or a meal that comes again or out of order;
//! - `conditions`: where the record carries them, the weight gain since the last weighing,
//!   the rise of mortality, the barn's temperature and humidity (`conditions.rs`; learnt from
//!   the simulator's farms: the real year has none of these fields).
//!
//! The features are what a record and the earlier records of its lot carry (site, strain,
//! day, moment, doses, the month of its timestamp), nothing only the training CSV has.

use serde::{Deserialize, Serialize};

use gaveurs_schemas::anomaly::Contribution;
use gaveurs_schemas::records::{GavageMeal, Moment};

use super::conditions::{ConditionModel, ConditionTrack, Conditions};

/// The model's name in artifacts and in the `anomalies` dataset.
pub const MODEL_NAME: &str = "gavage_meal";
/// Steps with their own parameters; later steps share the last one.
pub const STEPS: usize = 22;
/// How the artifact is laid out; a loader refuses another.
pub const FORMAT: u32 = 1;

/// Context indicators, in the order of the coefficients (reference: site LL, a CF80 strain,
/// winter).
pub const CONTEXT_FEATURES: [&str; 7] = [
    "site_LS",
    "site_MT",
    "souche_pkl",
    "souche_inconnue",
    "saison_printemps",
    "saison_ete",
    "saison_automne",
];

/// What the model needs to know of one meal.
#[derive(Debug, Clone, Copy)]
pub struct MealFacts<'a> {
    pub site: &'a str,
    pub genetique: Option<&'a str>,
    /// Month of the meal's timestamp, 1–12.
    pub month: u32,
    pub jour: i64,
    pub moment: Moment,
    pub dose_theorique: f64,
    pub dose_reelle: f64,
    pub conditions: Conditions,
}

/// The season of a month (1–12): 0 winter, 1 spring, 2 summer, 3 autumn.
pub(crate) fn season(month: u32) -> u8 {
    match month {
        3..=5 => 1,
        6..=8 => 2,
        9..=11 => 3,
        _ => 0,
    }
}

impl<'a> From<&'a GavageMeal> for MealFacts<'a> {
    /// What a validated record gives the model: the features exist at run time.
    fn from(meal: &'a GavageMeal) -> Self {
        MealFacts {
            site: meal.site.as_str(),
            genetique: meal.genetique.as_deref(),
            month: chrono::Datelike::month(&meal.timestamp),
            jour: meal.jour,
            moment: meal.moment,
            dose_theorique: meal.dose_theorique,
            dose_reelle: meal.dose_reelle,
            conditions: Conditions {
                poids_moyen: meal.poids_moyen,
                taux_mortalite: meal.taux_mortalite,
                temperature_stabule: meal.temperature_stabule,
                humidite_stabule: meal.humidite_stabule,
            },
        }
    }
}

impl MealFacts<'_> {
    /// The meal's place in the protocol, from 0 (day 1, morning); `None` before day 1 (the
    /// preparation day is not fed by the protocol).
    pub fn step(&self) -> Option<i64> {
        (self.jour >= 1).then(|| 2 * (self.jour - 1) + i64::from(self.moment == Moment::Soir))
    }

    pub(crate) fn ratio(&self) -> Option<f64> {
        (self.dose_theorique > 0.0).then(|| self.dose_reelle / self.dose_theorique)
    }

    pub fn context(&self) -> [f64; CONTEXT_FEATURES.len()] {
        let strain = self.genetique.map(str::to_ascii_uppercase);
        let season = season(self.month);
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        [
            flag(self.site == "LS"),
            flag(self.site == "MT"),
            flag(strain.as_deref().is_some_and(|s| s.contains("PKL"))),
            flag(strain.is_none()),
            flag(season == 1),
            flag(season == 2),
            flag(season == 3),
        ]
    }
}

/// A linear prediction with the robust scale of its residuals, and how far in scales its
/// residuals' tails reach on each side (the 99.5th percentile of residual / scale above, and
/// of −residual / scale below): real lots have heavy, lopsided tails (plans raised faster than
/// the protocol, real doses cut far more often than raised, the last meals of a lot), and a
/// step's evidence is counted in units of its own tail on that side, so a step or direction
/// where large residuals are common does not drown the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    pub intercept: f64,
    pub coefficients: Vec<f64>,
    pub scale: f64,
    pub tail_low: f64,
    pub tail_high: f64,
}

impl Linear {
    /// A residual in units of evidence: scales, over the tail on its side.
    pub fn evidence(&self, residual: f64) -> f64 {
        let tail = if residual < 0.0 {
            self.tail_low
        } else {
            self.tail_high
        };
        residual / (self.scale * tail)
    }

    pub fn predict(&self, x: &[f64]) -> f64 {
        affine(self.intercept, &self.coefficients, x)
    }
}

/// `intercept + Σ coefficients · x`.
pub(crate) fn affine(intercept: f64, coefficients: &[f64], x: &[f64]) -> f64 {
    intercept + coefficients.iter().zip(x).map(|(c, v)| c * v).sum::<f64>()
}

/// The four models of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepModels {
    /// `dose_theorique` from [previous, previous − the one before, context…].
    pub planned_warm: Linear,
    /// `dose_theorique` from [context…].
    pub planned_cold: Linear,
    /// The ratio from [previous ratio].
    pub ratio_warm: Linear,
    /// The ratio alone: the population's median and scale at this step (also the CUSUM's
    /// reference).
    pub ratio_cold: Linear,
}

/// How the within-lot trend and the sequence count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrendSettings {
    /// CUSUM allowance, in scales of the step's ratio: deviations smaller than this never
    /// add up.
    pub cusum_allowance: f64,
    /// The CUSUM's tail on the training lots (its 99th percentile): its evidence unit.
    pub cusum_tail: f64,
    /// Evidence of one missing, repeated or swapped meal, in tails.
    pub sequence_weight: f64,
    /// The departure from the lot's course (a share of it) that is one unit of evidence, for
    /// runs of two and of three meals: the run's 99.8th percentile on the training lots over
    /// the threshold the model has without runs, so a run that rare reaches the threshold on
    /// its own. (Runs are not heavy-tailed like single residuals: counted in their 99.5th
    /// percentile, as the others, a run would need to be twice that far off to show.) Zero in
    /// artifacts made before runs were scored, which then score none.
    #[serde(default)]
    pub run_units: [f64; 2],
}

impl Default for TrendSettings {
    fn default() -> Self {
        Self {
            cusum_allowance: 1.0,
            cusum_tail: 1.0,
            sequence_weight: 5.0,
            run_units: [0.0; 2],
        }
    }
}

/// How the model was made: enough to tell two artifacts apart and to trust one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// SHA-256 of the training files' bytes, in the order read.
    pub data_sha256: String,
    pub lots: usize,
    pub meals: usize,
    pub seed: u64,
    /// Share of the validation lots held out for the threshold.
    pub validation_share: f64,
}

/// What the threshold gives on the held-out clean lots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub validation_lots: usize,
    pub validation_meals: usize,
    /// Share of validation meals at or above the threshold.
    pub flagged_share: f64,
    /// Median absolute residual of `dose_theorique` and of the ratio, validation meals.
    pub planned_mae_g: f64,
    pub ratio_mae: f64,
}

/// The meal model's artifact, as written by `gaveurs model train` (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MealModel {
    pub model: String,
    pub format: u32,
    /// A digest of everything below: the same training gives the same version.
    pub version: String,
    pub features: Vec<String>,
    pub steps: Vec<StepModels>,
    pub trend: TrendSettings,
    pub conditions: ConditionModel,
    /// A meal whose score reaches this is an anomaly.
    pub threshold: f64,
    pub training: Provenance,
    pub evaluation: Evaluation,
}

/// The evidence names, in the order of [`Score::parts`].
pub const EVIDENCE: [&str; 5] = [
    "dose_theorique",
    "dose_reelle",
    "tendance",
    "sequence",
    "conditions",
];

/// One meal's score and its evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub score: f64,
    /// (value, expected, z) per [`EVIDENCE`]; the trend's value is the meal's ratio and its
    /// expected value the lot's course (the median of its earlier ratios); the conditions'
    /// part is the length of their evidence, its value and expected value the strongest
    /// one's.
    pub parts: [(f64, f64, f64); 5],
    /// Which condition is the strongest (an index of `conditions::NAMES`).
    pub condition: Option<usize>,
}

impl Score {
    /// The three largest parts, as the `explanation` column: each part's contribution is its
    /// share of the squared score, times the score, so contributions add up to the score.
    pub fn explanation(&self) -> Vec<Contribution> {
        let mut parts: Vec<(usize, f64)> = self
            .parts
            .iter()
            .enumerate()
            .map(|(i, (_, _, z))| (i, z * z))
            .filter(|(_, z2)| *z2 > 0.0)
            .collect();
        parts.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f64 = self.parts.iter().map(|(_, _, z)| z * z).sum();
        parts
            .into_iter()
            .take(3)
            .map(|(i, z2)| Contribution {
                feature: match (i, self.condition) {
                    (4, Some(c)) => super::conditions::NAMES[c].to_string(),
                    _ => EVIDENCE[i].to_string(),
                },
                value: self.parts[i].0,
                expected: self.parts[i].1,
                contribution: if total > 0.0 {
                    self.score * z2 / total
                } else {
                    0.0
                },
            })
            .collect()
    }
}

/// A lot's previous meal, as the model remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Remembered {
    pub step: i64,
    pub dose_theorique: f64,
    pub dose_reelle: f64,
}

/// What the model keeps of a lot between its meals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LotTrack {
    pub last: Option<Remembered>,
    pub before: Option<Remembered>,
    pub cusum_low: f64,
    pub cusum_high: f64,
    /// The lot's ratios so far, for the trend's reference.
    pub ratio_sum: f64,
    pub ratios: u32,
    /// The lot's last [`RATIO_HISTORY`] ratios, oldest first, in ten-thousandths (a state of
    /// 50,000 lots keeps a million of them): the reference of its runs. Empty in states saved
    /// before runs were scored.
    #[serde(default)]
    pub ratio_history: Vec<u16>,
    /// Written by versions that read conditions; empty in older states.
    #[serde(default)]
    pub conditions: ConditionTrack,
}

/// Ratios a lot's track keeps for the runs' reference: more than a lot has meals, so the
/// bound only keeps a lot that never ends from growing its track.
pub const RATIO_HISTORY: usize = 40;
/// Earlier ratios a run's reference needs before a run counts.
const RUN_REFERENCE_MIN: usize = 3;
/// What one unit of a kept ratio is worth.
const KEPT_RATIO_UNITS: f64 = 10_000.0;

/// A ratio as a track keeps it, in ten-thousandths (ratios past 6.5535 are kept as that).
fn kept_ratio(ratio: f64) -> u16 {
    (ratio * KEPT_RATIO_UNITS)
        .round()
        .clamp(0.0, f64::from(u16::MAX)) as u16
}

/// How far the last `run` ratios (the newest is `latest`, the others the end of `history`)
/// all are on one side of the median of the ratios before them, as a share of that median:
/// the smallest departure of the run, on the side where it is largest; 0 without enough
/// history.
pub(crate) fn run_departure(history: &[u16], latest: f64, run: usize) -> (f64, f64) {
    let earlier = run - 1;
    if history.len() < earlier + RUN_REFERENCE_MIN {
        return (0.0, 0.0);
    }
    let (before, in_run) = history.split_at(history.len() - earlier);
    let reference = median(before);
    if reference <= 0.0 {
        return (0.0, 0.0);
    }
    let departures = in_run
        .iter()
        .map(|r| f64::from(*r) / KEPT_RATIO_UNITS)
        .chain(std::iter::once(latest))
        .map(|r| r / reference - 1.0);
    let (low, high) = departures.fold((f64::INFINITY, f64::INFINITY), |(low, high), d| {
        (low.min(-d), high.min(d))
    });
    (low.max(high).max(0.0), reference)
}

/// The median of kept ratios, as a ratio.
fn median(kept: &[u16]) -> f64 {
    if kept.is_empty() {
        return 0.0;
    }
    let mut copy = [0u16; RATIO_HISTORY];
    let values = &mut copy[..kept.len()];
    values.copy_from_slice(kept);
    let mid = values.len() / 2;
    let (lower, upper, _) = values.select_nth_unstable(mid);
    let upper = f64::from(*upper);
    let median = if kept.len() % 2 == 1 {
        upper
    } else {
        let lower = lower.iter().copied().max().unwrap_or_default();
        (f64::from(lower) + upper) / 2.0
    };
    median / KEPT_RATIO_UNITS
}

fn step_index(step: i64) -> usize {
    (step.max(0) as usize).min(STEPS - 1)
}

impl MealModel {
    /// Scores one meal against its lot's track, and moves the track on. `None` for meals
    /// the protocol does not cover (before day 1).
    pub fn score(&self, track: &mut LotTrack, meal: &MealFacts<'_>) -> Option<Score> {
        let step = meal.step()?;
        let models = &self.steps[step_index(step)];
        let context = meal.context();
        let previous = track.last.filter(|last| last.step < step);
        // Planned dose.
        let planned_expected = match previous {
            Some(last) => {
                let slope = track
                    .before
                    .filter(|before| before.step < last.step)
                    .map_or(0.0, |before| last.dose_theorique - before.dose_theorique);
                models.planned_warm.predict(&warm_planned_features(
                    last.dose_theorique,
                    slope,
                    &context,
                ))
            }
            None => models.planned_cold.predict(&context),
        };
        let planned_model = match previous {
            Some(_) => &models.planned_warm,
            None => &models.planned_cold,
        };
        let z_planned = planned_model.evidence(meal.dose_theorique - planned_expected);
        // Real dose, through the ratio.
        let ratio = meal.ratio();
        let (ratio_model, ratio_input) = match previous.and_then(|last| {
            (last.dose_theorique > 0.0).then(|| last.dose_reelle / last.dose_theorique)
        }) {
            Some(previous_ratio) => (&models.ratio_warm, vec![previous_ratio]),
            None => (&models.ratio_cold, vec![]),
        };
        let expected_ratio = ratio_model.predict(&ratio_input);
        let (z_real, real_expected) = match ratio {
            Some(r) => (
                ratio_model.evidence(r - expected_ratio),
                expected_ratio * meal.dose_theorique,
            ),
            // Nothing planned: any real dose is as far from the plan as can be.
            None if meal.dose_reelle > 0.0 => (self.trend.sequence_weight, 0.0),
            None => (0.0, 0.0),
        };
        // Within-lot trend: the ratio against the lot's own course (a lot fed 2 % over its
        // plan all along is not drifting). A run of meals all off that course, counted by its
        // least departure, is rare in real lots even where single meals that far off are not.
        let mut run_evidence = 0.0;
        let mut course = None;
        if let Some(r) = ratio {
            for (run, unit) in [2, 3].into_iter().zip(self.trend.run_units) {
                let (departure, reference) = run_departure(&track.ratio_history, r, run);
                if unit > 0.0 && reference > 0.0 {
                    course = course.or(Some(reference));
                    run_evidence = f64::max(run_evidence, departure / unit);
                }
            }
            if track.ratio_history.len() == RATIO_HISTORY {
                track.ratio_history.remove(0);
            }
            track.ratio_history.push(kept_ratio(r));
            if track.ratios > 0 {
                let mean = track.ratio_sum / f64::from(track.ratios);
                let u = (r - mean) / models.ratio_cold.scale;
                let k = self.trend.cusum_allowance;
                track.cusum_low = (track.cusum_low - u - k).max(0.0);
                track.cusum_high = (track.cusum_high + u - k).max(0.0);
            }
            track.ratio_sum += r;
            track.ratios += 1;
        }
        let cusum = track.cusum_low.max(track.cusum_high);
        let z_trend = f64::max(cusum / self.trend.cusum_tail, run_evidence);
        // Sequence: the step after the previous one is expected.
        let (z_sequence, expected_step) = match track.last {
            Some(last) => {
                let expected = last.step + 1;
                let off = (step - expected).abs() as f64;
                (self.trend.sequence_weight * off.min(3.0), expected as f64)
            }
            None => (0.0, step as f64),
        };
        let observed = self
            .conditions
            .observe(&mut track.conditions, meal.jour, &meal.conditions);
        let z_conditions = observed
            .iter()
            .flatten()
            .map(|o| o.2 * o.2)
            .sum::<f64>()
            .sqrt();
        let strongest = observed
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.map(|o| (i, o.0, o.1, o.2)))
            .max_by(|a, b| a.3.abs().total_cmp(&b.3.abs()));
        let score = (z_planned * z_planned
            + z_real * z_real
            + z_trend * z_trend
            + z_sequence * z_sequence
            + z_conditions * z_conditions)
            .sqrt();
        let remembered = Remembered {
            step,
            dose_theorique: meal.dose_theorique,
            dose_reelle: meal.dose_reelle,
        };
        // A meal that comes again replaces its first copy; an older one leaves the track.
        match track.last {
            Some(last) if last.step == step => track.last = Some(remembered),
            Some(last) if last.step > step => {}
            _ => {
                track.before = track.last;
                track.last = Some(remembered);
            }
        }
        Some(Score {
            score,
            parts: [
                (meal.dose_theorique, planned_expected, z_planned),
                (meal.dose_reelle, real_expected, z_real),
                (
                    ratio.unwrap_or(0.0),
                    course.unwrap_or_else(|| ratio.unwrap_or(0.0)),
                    z_trend,
                ),
                (step as f64, expected_step, z_sequence),
                (
                    strongest.map_or(0.0, |o| o.1),
                    strongest.map_or(0.0, |o| o.2),
                    z_conditions,
                ),
            ],
            condition: strongest.map(|o| o.0),
        })
    }

    /// Checks what a loader must not trust blindly: the layout and that every number is one.
    pub fn check(&self) -> Result<(), String> {
        super::check_header(&self.model, self.format, MODEL_NAME, FORMAT, "meal model")?;
        if self.steps.len() != STEPS {
            return Err(format!("{} steps, expected {STEPS}", self.steps.len()));
        }
        let trend = &self.trend;
        if !(trend.cusum_allowance.is_finite()
            && trend.cusum_tail.is_finite()
            && trend.cusum_tail > 0.0
            && trend.sequence_weight.is_finite())
        {
            return Err("trend settings must be finite, the CUSUM tail positive".into());
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err(format!(
                "threshold {} is not a positive number",
                self.threshold
            ));
        }
        for (i, step) in self.steps.iter().enumerate() {
            for (name, linear, inputs) in [
                (
                    "planned_warm",
                    &step.planned_warm,
                    2 + CONTEXT_FEATURES.len(),
                ),
                ("planned_cold", &step.planned_cold, CONTEXT_FEATURES.len()),
                ("ratio_warm", &step.ratio_warm, 1),
                ("ratio_cold", &step.ratio_cold, 0),
            ] {
                let finite = linear.intercept.is_finite()
                    && linear.coefficients.iter().all(|c| c.is_finite());
                if linear.coefficients.len() != inputs || !finite {
                    return Err(format!(
                        "step {i}: {name} needs {inputs} finite coefficients"
                    ));
                }
                let positive = |v: f64| v.is_finite() && v > 0.0;
                if !(positive(linear.scale)
                    && positive(linear.tail_low)
                    && positive(linear.tail_high))
                {
                    return Err(format!("step {i}: {name} has no positive scale and tail"));
                }
            }
        }
        self.conditions.check()?;
        if self.version != self.digest() {
            return Err("its version does not match its contents (edited by hand?)".into());
        }
        Ok(())
    }

    /// The version a trained model gets: a digest of its parameters, threshold and training.
    pub fn digest(&self) -> String {
        let mut unversioned = self.clone();
        unversioned.version = String::new();
        super::version_digest(MODEL_NAME, &unversioned)
    }
}

pub(crate) fn warm_planned_features(
    previous: f64,
    slope: f64,
    context: &[f64; CONTEXT_FEATURES.len()],
) -> Vec<f64> {
    let mut x = Vec::with_capacity(2 + context.len());
    x.push(previous);
    x.push(slope);
    x.extend_from_slice(context);
    x
}
