//! Training the meal model (`gaveurs model train`): deterministic, single-threaded, from the
//! meals of real lots as the pipeline would receive them.
//!
//! Lots, never meals, are split: a share of them (chosen by a seeded hash of `code_lot`, so
//! the same seed always holds out the same lots) is kept out of fitting to set the threshold
//! at the score that at most `flag_rate` of their meals reach. Each step's linear models are
//! fitted by least squares (linfa), then fitted again without the meals more than
//! `TRIM_SCALES` robust scales away: real lots hold refusals and typing slips, and one of them
//! must not bend the curve every other lot follows.

use std::collections::HashMap;

use linfa::prelude::*;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2};

use super::meal_model::{
    CONTEXT_FEATURES, Evaluation, FORMAT, Linear, LotTrack, MODEL_NAME, MealFacts, MealModel,
    Provenance, STEPS, StepModels, TrendSettings, run_departure, warm_planned_features,
};
use chrono::Datelike;
use gaveurs_schemas::records::{GavageMeal, Moment};

/// Residuals beyond this many robust scales are left out of the second fit.
const TRIM_SCALES: f64 = 5.0;
/// The share of a model's residuals beyond its tail, on each side.
const TAIL_RATE: f64 = 0.005;
/// Share of the training meals whose run off their lot's course is, alone, an anomaly.
const RUN_RATE: f64 = 0.002;
/// A tail is at least this many scales: a step whose residuals are all tight must still
/// take a clear departure to count as one unit.
const MIN_TAIL_SCALES: f64 = 3.0;
/// The smallest scales: a step where every lot was fed the same must not make a gram an
/// anomaly.
const MIN_PLANNED_SCALE_G: f64 = 2.0;
const MIN_RATIO_SCALE: f64 = 0.005;

/// One meal of a training lot, owning what [`MealFacts`] borrows.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingMeal {
    pub site: String,
    pub genetique: Option<String>,
    pub month: u32,
    pub jour: i64,
    pub moment: Moment,
    pub dose_theorique: f64,
    pub dose_reelle: f64,
}

impl TrainingMeal {
    pub fn facts(&self) -> MealFacts<'_> {
        MealFacts {
            site: &self.site,
            genetique: self.genetique.as_deref(),
            month: self.month,
            jour: self.jour,
            moment: self.moment,
            dose_theorique: self.dose_theorique,
            dose_reelle: self.dose_reelle,
            // The recorded year carries no weight, mortality or climate.
            conditions: Default::default(),
        }
    }
}

impl From<&GavageMeal> for TrainingMeal {
    fn from(meal: &GavageMeal) -> Self {
        TrainingMeal {
            site: meal.site.as_str().to_string(),
            genetique: meal.genetique.clone(),
            month: meal.timestamp.month(),
            jour: meal.jour,
            moment: meal.moment,
            dose_theorique: meal.dose_theorique,
            dose_reelle: meal.dose_reelle,
        }
    }
}

/// A lot's meals, in the order they were fed.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingLot {
    pub code_lot: String,
    pub meals: Vec<TrainingMeal>,
}

#[derive(Debug, Clone)]
pub struct TrainingOptions {
    pub seed: u64,
    /// Share of lots held out to set the threshold.
    pub validation_share: f64,
    /// Share of held-out meals allowed at or above the threshold.
    pub flag_rate: f64,
    pub trend: TrendSettings,
    /// The conditions' model (trained apart, on data that has conditions).
    pub conditions: super::conditions::ConditionModel,
}

impl Default for TrainingOptions {
    fn default() -> Self {
        Self {
            seed: 2023,
            validation_share: 0.2,
            flag_rate: 0.01,
            trend: TrendSettings::default(),
            conditions: super::conditions::ConditionModel::default(),
        }
    }
}

/// Whether a lot is held out, for a seed: the same lots for the same seed, whatever order
/// they come in.
pub fn held_out(code_lot: &str, seed: u64, share: f64) -> bool {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(code_lot.as_bytes(), seed);
    (h % 10_000) as f64 / 10_000.0 < share
}

/// The examples of one step, gathered lot by lot.
#[derive(Default)]
struct StepExamples {
    planned_warm: (Vec<Vec<f64>>, Vec<f64>),
    planned_cold: (Vec<Vec<f64>>, Vec<f64>),
    ratio_warm: (Vec<Vec<f64>>, Vec<f64>),
    ratio_cold: (Vec<Vec<f64>>, Vec<f64>),
}

fn step_of(step: i64) -> usize {
    (step.max(0) as usize).min(STEPS - 1)
}

fn gather(lots: &[&TrainingLot]) -> Vec<StepExamples> {
    let mut steps: Vec<StepExamples> = (0..STEPS).map(|_| StepExamples::default()).collect();
    for lot in lots {
        let mut previous: Option<(i64, f64, f64)> = None;
        let mut before: Option<(i64, f64, f64)> = None;
        for meal in &lot.meals {
            let facts = meal.facts();
            let Some(step) = facts.step() else { continue };
            let examples = &mut steps[step_of(step)];
            let context = facts.context();
            examples.planned_cold.0.push(context.to_vec());
            examples.planned_cold.1.push(meal.dose_theorique);
            let ratio = (meal.dose_theorique > 0.0).then(|| meal.dose_reelle / meal.dose_theorique);
            if let Some(ratio) = ratio {
                examples.ratio_cold.0.push(Vec::new());
                examples.ratio_cold.1.push(ratio);
            }
            // Only a lot's next meal teaches the warm models what follows a meal.
            if let Some((last_step, last_planned, last_real)) = previous
                && last_step + 1 == step
            {
                let slope = before
                    .filter(|(s, _, _)| *s + 1 == last_step)
                    .map_or(0.0, |(_, planned, _)| last_planned - planned);
                examples
                    .planned_warm
                    .0
                    .push(warm_planned_features(last_planned, slope, &context));
                examples.planned_warm.1.push(meal.dose_theorique);
                if let (Some(ratio), true) = (ratio, last_planned > 0.0) {
                    examples.ratio_warm.0.push(vec![last_real / last_planned]);
                    examples.ratio_warm.1.push(ratio);
                }
            }
            before = previous;
            previous = Some((step, meal.dose_theorique, meal.dose_reelle));
        }
    }
    steps
}

/// The robust scale of residuals: 1.4826 × their median absolute deviation from 0 (the
/// fit already centres them).
fn robust_scale(residuals: &[f64]) -> f64 {
    let mut absolute: Vec<f64> = residuals.iter().map(|r| r.abs()).collect();
    median(&mut absolute) * 1.4826
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Least squares with an intercept; columns that never vary are left out (their coefficient
/// is 0), which keeps the problem well posed at steps where, say, one site never feeds.
fn least_squares(x: &[Vec<f64>], y: &[f64], width: usize) -> anyhow::Result<Linear> {
    if y.is_empty() {
        anyhow::bail!("no examples");
    }
    let varying: Vec<usize> = (0..width)
        .filter(|&j| x.iter().any(|row| row[j] != x[0][j]))
        .collect();
    if varying.is_empty() || y.len() <= varying.len() + 1 {
        let mut ys = y.to_vec();
        return Ok(Linear {
            intercept: median(&mut ys),
            coefficients: vec![0.0; width],
            scale: 0.0,
            tail_low: 0.0,
            tail_high: 0.0,
        });
    }
    let records = Array2::from_shape_fn((y.len(), varying.len()), |(i, j)| x[i][varying[j]]);
    let targets = Array1::from(y.to_vec());
    let fitted = LinearRegression::new()
        .fit(&Dataset::new(records, targets))
        .map_err(|e| anyhow::anyhow!("least squares: {e}"))?;
    let mut coefficients = vec![0.0; width];
    for (j, &column) in varying.iter().enumerate() {
        coefficients[column] = fitted.params()[j];
    }
    Ok(Linear {
        intercept: fitted.intercept(),
        coefficients,
        scale: 0.0,
        tail_low: 0.0,
        tail_high: 0.0,
    })
}

/// Fits, trims what lies beyond [`TRIM_SCALES`], fits again, and sets the robust scale.
fn fit(
    examples: &(Vec<Vec<f64>>, Vec<f64>),
    width: usize,
    min_scale: f64,
) -> anyhow::Result<Linear> {
    let (x, y) = examples;
    let residuals = |model: &Linear, x: &[Vec<f64>], y: &[f64]| -> Vec<f64> {
        x.iter()
            .zip(y)
            .map(|(row, target)| target - model.predict(row))
            .collect()
    };
    let first = least_squares(x, y, width)?;
    let scale = robust_scale(&residuals(&first, x, y)).max(min_scale);
    let kept: Vec<usize> = residuals(&first, x, y)
        .iter()
        .enumerate()
        .filter(|(_, r)| r.abs() <= TRIM_SCALES * scale)
        .map(|(i, _)| i)
        .collect();
    let x_kept: Vec<Vec<f64>> = kept.iter().map(|&i| x[i].clone()).collect();
    let y_kept: Vec<f64> = kept.iter().map(|&i| y[i]).collect();
    let mut model = least_squares(&x_kept, &y_kept, width)?;
    model.scale = robust_scale(&residuals(&model, &x_kept, &y_kept)).max(min_scale);
    // Tails are read on every example, the trimmed ones too: they are what real lots do.
    let standardised: Vec<f64> = residuals(&model, x, y)
        .iter()
        .map(|r| r / model.scale)
        .collect();
    let below: Vec<f64> = standardised.iter().map(|z| -z).collect();
    model.tail_high = upper_quantile(&standardised, TAIL_RATE).max(MIN_TAIL_SCALES);
    model.tail_low = upper_quantile(&below, TAIL_RATE).max(MIN_TAIL_SCALES);
    Ok(model)
}

/// Fits every step's models on `lots`, without a threshold yet.
fn fit_steps(lots: &[&TrainingLot]) -> anyhow::Result<Vec<StepModels>> {
    let mut steps = fit_steps_exactly(lots)?;
    for step in &mut steps {
        for linear in [
            &mut step.planned_warm,
            &mut step.planned_cold,
            &mut step.ratio_warm,
            &mut step.ratio_cold,
        ] {
            tidy(linear);
        }
    }
    Ok(steps)
}

fn fit_steps_exactly(lots: &[&TrainingLot]) -> anyhow::Result<Vec<StepModels>> {
    let context = CONTEXT_FEATURES.len();
    gather(lots)
        .iter()
        .enumerate()
        .map(|(i, examples)| {
            let step = (|| -> anyhow::Result<StepModels> {
                let planned_cold = fit(&examples.planned_cold, context, MIN_PLANNED_SCALE_G)?;
                let ratio_cold = fit(&examples.ratio_cold, 0, MIN_RATIO_SCALE)?;
                // The first meal never follows one: its warm models are never used, and are
                // the cold ones.
                let warm_or_cold =
                    |examples: &(Vec<Vec<f64>>, Vec<f64>), width, min_scale, cold: &Linear| {
                        if examples.1.is_empty() {
                            Ok(Linear {
                                intercept: cold.intercept,
                                coefficients: vec![0.0; width],
                                scale: cold.scale,
                                tail_low: cold.tail_low,
                                tail_high: cold.tail_high,
                            })
                        } else {
                            fit(examples, width, min_scale)
                        }
                    };
                Ok(StepModels {
                    planned_warm: warm_or_cold(
                        &examples.planned_warm,
                        2 + context,
                        MIN_PLANNED_SCALE_G,
                        &planned_cold,
                    )?,
                    ratio_warm: warm_or_cold(
                        &examples.ratio_warm,
                        1,
                        MIN_RATIO_SCALE,
                        &ratio_cold,
                    )?,
                    planned_cold,
                    ratio_cold,
                })
            })();
            step.map_err(|e| anyhow::anyhow!("step {i} ({}): {e}", describe_step(i)))
        })
        .collect()
}

fn describe_step(step: usize) -> String {
    let day = step / 2 + 1;
    let moment = if step.is_multiple_of(2) {
        "matin"
    } else {
        "soir"
    };
    if step == STEPS - 1 {
        format!("jour {day} {moment} and later")
    } else {
        format!("jour {day} {moment}")
    }
}

/// Every meal's score, lot by lot, in feeding order.
pub fn scores(model: &MealModel, lots: &[&TrainingLot]) -> Vec<f64> {
    let mut scores = Vec::new();
    for lot in lots {
        let mut track = LotTrack::default();
        for meal in &lot.meals {
            if let Some(score) = model.score(&mut track, &meal.facts()) {
                scores.push(score.score);
            }
        }
    }
    scores
}

/// The value at or above which `rate` of `values` lie.
pub fn upper_quantile(values: &[f64], rate: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::INFINITY;
    }
    let index = ((1.0 - rate) * sorted.len() as f64).ceil() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Trains the meal model: fits on the lots not held out, sets the threshold on those held
/// out, and records both in the artifact.
pub fn train(
    lots: &[TrainingLot],
    data_sha256: &str,
    options: &TrainingOptions,
) -> anyhow::Result<MealModel> {
    let (validation, fitting): (Vec<&TrainingLot>, Vec<&TrainingLot>) = lots
        .iter()
        .partition(|lot| held_out(&lot.code_lot, options.seed, options.validation_share));
    if fitting.is_empty() || validation.is_empty() {
        anyhow::bail!(
            "{} lots are too few to fit the model and hold some out for its threshold",
            lots.len()
        );
    }
    let mut model = MealModel {
        model: MODEL_NAME.to_string(),
        format: FORMAT,
        version: String::new(),
        features: feature_names(),
        steps: fit_steps(&fitting)?,
        trend: options.trend.clone(),
        conditions: options.conditions.clone(),
        threshold: f64::INFINITY,
        training: Provenance {
            data_sha256: data_sha256.to_string(),
            lots: lots.len(),
            meals: lots.iter().map(|l| l.meals.len()).sum(),
            seed: options.seed,
            validation_share: options.validation_share,
        },
        evaluation: Evaluation {
            validation_lots: 0,
            validation_meals: 0,
            flagged_share: 0.0,
            planned_mae_g: 0.0,
            ratio_mae: 0.0,
        },
    };
    // The trend's units: the tails of the CUSUM and of the runs over the fitting lots.
    let mut cusums = Vec::new();
    let mut runs = [Vec::new(), Vec::new()];
    for lot in &fitting {
        let mut track = LotTrack::default();
        for meal in &lot.meals {
            let facts = meal.facts();
            let history = track.ratio_history.clone();
            if model.score(&mut track, &facts).is_some() {
                cusums.push(track.cusum_low.max(track.cusum_high));
                if let Some(ratio) = facts.ratio() {
                    for (run, departures) in [2, 3].into_iter().zip(&mut runs) {
                        departures.push(run_departure(&history, ratio, run).0);
                    }
                }
            }
        }
    }
    model.trend.cusum_tail =
        significant(upper_quantile(&cusums, TAIL_RATE).max(options.trend.cusum_allowance));
    let without_runs = upper_quantile(&scores(&model, &validation), options.flag_rate);
    model.trend.run_units =
        runs.map(|departures| significant(upper_quantile(&departures, RUN_RATE) / without_runs));
    let held_out_scores = scores(&model, &validation);
    // Rounded up to 3 decimals, so the artifact reads well and still flags no more.
    model.threshold =
        (upper_quantile(&held_out_scores, options.flag_rate) * 1000.0).ceil() / 1000.0;
    model.evaluation = evaluate_fit(&model, &validation, &held_out_scores);
    model.version = model.digest();
    Ok(model)
}

/// `value` to 10 significant digits, and below 1e-9 to 0 (a coefficient that small is
/// rounding noise of the fit): the artifact's numbers then read back as the very same floats
/// (a decimal that short, scaled by a power of ten that is itself exact, parses exactly), so
/// its version — a digest of them — still matches after a trip through the file.
pub(crate) fn significant(value: f64) -> f64 {
    if value.abs() < 1e-9 || !value.is_finite() {
        return if value.is_finite() { 0.0 } else { value };
    }
    let shift = 9 - value.abs().log10().floor() as i32;
    if shift >= 0 {
        let p = 10f64.powi(shift);
        (value * p).round() / p
    } else {
        let p = 10f64.powi(-shift);
        (value / p).round() * p
    }
}

fn tidy(linear: &mut Linear) {
    linear.intercept = significant(linear.intercept);
    for c in &mut linear.coefficients {
        *c = significant(*c);
    }
    linear.scale = significant(linear.scale);
    linear.tail_low = significant(linear.tail_low);
    linear.tail_high = significant(linear.tail_high);
}

fn evaluate_fit(model: &MealModel, validation: &[&TrainingLot], scores: &[f64]) -> Evaluation {
    let mut planned = Vec::new();
    let mut ratio = Vec::new();
    for lot in validation {
        let mut track = LotTrack::default();
        for meal in &lot.meals {
            if let Some(score) = model.score(&mut track, &meal.facts()) {
                planned.push((score.parts[0].0 - score.parts[0].1).abs());
                if meal.dose_theorique > 0.0 {
                    ratio.push(((score.parts[1].0 - score.parts[1].1) / meal.dose_theorique).abs());
                }
            }
        }
    }
    let flagged = scores.iter().filter(|s| **s >= model.threshold).count();
    let round = |v: f64, digits: i32| (v * 10f64.powi(digits)).round() / 10f64.powi(digits);
    Evaluation {
        validation_lots: validation.len(),
        validation_meals: scores.len(),
        flagged_share: round(flagged as f64 / scores.len().max(1) as f64, 5),
        planned_mae_g: round(median(&mut planned), 3),
        ratio_mae: round(median(&mut ratio), 5),
    }
}

fn feature_names() -> Vec<String> {
    [
        "jour",
        "moment",
        "dose_theorique",
        "dose_reelle",
        "dose_theorique_precedente",
        "pente_precedente",
        "ratio_precedent",
    ]
    .iter()
    .copied()
    .chain(CONTEXT_FEATURES)
    .map(str::to_string)
    .collect()
}

/// Groups meals by lot, keeping the order each lot's meals came in.
pub fn group_by_lot(meals: impl IntoIterator<Item = (String, TrainingMeal)>) -> Vec<TrainingLot> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut lots: Vec<TrainingLot> = Vec::new();
    for (code_lot, meal) in meals {
        let i = *index.entry(code_lot.clone()).or_insert_with(|| {
            lots.push(TrainingLot {
                code_lot,
                meals: Vec::new(),
            });
            lots.len() - 1
        });
        lots[i].meals.push(meal);
    }
    lots
}
