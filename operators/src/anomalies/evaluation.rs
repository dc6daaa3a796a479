//! `gaveurs model eval`: how well the meal model finds anomalies it never saw, against the
//! rules of SPEC §5 alone.
//!
//! Lots (never meals) are split by a seeded hash: the model is trained on one part, exactly as
//! `gaveurs model train` trains it (threshold included), and each lot of the other part is
//! scored clean, then once per anomaly type with one labelled event injected at a seeded
//! meal. An event is found when a meal at or after its start, within the type's window, scores
//! at or above the threshold; its delay is how many meals after the start that meal came.

use std::fmt::Write as _;

use super::density::{DensityModel, evidence, evidence_of};
use super::meal_model::{LotTrack, MealModel};
use super::training::{
    TrainingLot, TrainingMeal, TrainingOptions, held_out, train, upper_quantile,
};

/// Components of the mixture compared with the residual model.
const MIXTURE_COMPONENTS: usize = 6;

/// The anomalies injected, with the window (in meals after the start) within which a
/// detection counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// `dose_reelle` × (1 + 20–50 %) at one meal.
    Spike,
    /// `dose_reelle` × (1 − 20–50 %) at one meal.
    Drop,
    /// One meal never arrives.
    MissedMeal,
    /// `dose_reelle` × (1 − 10–20 %) for three meals.
    LevelShift,
    /// `dose_reelle` × (1 − n × 1–3 %) from the start to the lot's end.
    Drift,
    /// `dose_theorique` and `dose_reelle` × (1 ± 10–25 %) from the start to the lot's end:
    /// a plan off the protocol that the real dose follows, which no rule sees.
    OffProtocol,
    /// One meal is sent twice.
    Duplicate,
    /// One day's matin and soir arrive in the wrong order.
    Swap,
}

impl Injected {
    pub const ALL: [Injected; 8] = [
        Injected::Spike,
        Injected::Drop,
        Injected::MissedMeal,
        Injected::LevelShift,
        Injected::Drift,
        Injected::OffProtocol,
        Injected::Duplicate,
        Injected::Swap,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Injected::Spike => "spike +20–50 %",
            Injected::Drop => "drop −20–50 %",
            Injected::MissedMeal => "missed meal",
            Injected::LevelShift => "level shift −10–20 % ×3",
            Injected::Drift => "drift −1–3 %/meal",
            Injected::OffProtocol => "off-protocol plan ±10–25 %",
            Injected::Duplicate => "duplicated meal",
            Injected::Swap => "swapped matin/soir",
        }
    }

    /// The range an aim of the issue speaks of, as (what it measures, its floor): spikes and
    /// drops of at least 30 %, level shifts of at least 15 %; every injected event of the
    /// other types.
    pub fn aim_floor(self) -> Option<f64> {
        match self {
            Injected::Spike | Injected::Drop => Some(0.30),
            Injected::LevelShift => Some(0.15),
            _ => None,
        }
    }

    /// The range the injected amount is drawn from.
    fn range(self) -> (f64, f64) {
        match self {
            Injected::Spike | Injected::Drop => (0.2, 0.5),
            Injected::LevelShift => (0.10, 0.20),
            Injected::Drift => (0.01, 0.03),
            Injected::OffProtocol => (0.10, 0.25),
            _ => (0.0, 0.0),
        }
    }

    /// Meals after the start within which a detection counts.
    pub fn window(self) -> usize {
        match self {
            Injected::Drift => 4,
            _ => 2,
        }
    }
}

/// A number in [0, 1) fixed by the seed and what it is for.
pub(crate) fn uniform(seed: u64, lot: &str, what: &str) -> f64 {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(format!("{lot}\u{1f}{what}").as_bytes(), seed);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The amount injected into `lot` for `kind` (a fraction of the dose).
pub fn magnitude(lot: &TrainingLot, kind: Injected, seed: u64) -> f64 {
    let (low, high) = kind.range();
    low + (high - low) * uniform(seed, &lot.code_lot, &format!("{kind:?}"))
}

/// A lot's meals with one event injected, and the position (in the returned meals) at
/// which the event starts.
pub fn inject(lot: &TrainingLot, kind: Injected, seed: u64) -> Option<(Vec<TrainingMeal>, usize)> {
    let n = lot.meals.len();
    if n < 8 {
        return None;
    }
    let tag = format!("{kind:?}");
    // Not the first two meals (nothing to compare with) nor the last three (the lot's end
    // is its own story).
    let start =
        2 + (uniform(seed, &lot.code_lot, &format!("{tag} start")) * (n - 5) as f64) as usize;
    let drawn = magnitude(lot, kind, seed);
    let mut meals = lot.meals.clone();
    match kind {
        Injected::Spike => meals[start].dose_reelle *= 1.0 + drawn,
        Injected::Drop => meals[start].dose_reelle *= 1.0 - drawn,
        Injected::MissedMeal => {
            meals.remove(start);
        }
        Injected::LevelShift => {
            let factor = 1.0 - drawn;
            for meal in meals.iter_mut().skip(start).take(3) {
                meal.dose_reelle *= factor;
            }
        }
        Injected::Drift => {
            let per_meal = drawn;
            for (i, meal) in meals.iter_mut().skip(start).enumerate() {
                meal.dose_reelle *= (1.0 - per_meal * (i + 1) as f64).max(0.0);
            }
        }
        Injected::OffProtocol => {
            let sign = if uniform(seed, &lot.code_lot, "sign") < 0.5 {
                -1.0
            } else {
                1.0
            };
            let factor = 1.0 + sign * drawn;
            for meal in meals.iter_mut().skip(start) {
                meal.dose_theorique *= factor;
                meal.dose_reelle *= factor;
            }
        }
        Injected::Duplicate => {
            let again = meals[start].clone();
            meals.insert(start + 1, again);
            return Some((meals, start + 1));
        }
        Injected::Swap => {
            // The first matin at or after the start, with its soir behind it.
            let matin = (start..n - 1).find(|&i| {
                meals[i].moment == gaveurs_schemas::records::Moment::Matin
                    && meals[i + 1].jour == meals[i].jour
            })?;
            meals.swap(matin, matin + 1);
            return Some((meals, matin));
        }
    }
    Some((meals, start))
}

/// The SPEC §5 rules that look at a meal's doses: `refus_alimentaire` (≤ 70 % of the plan)
/// and `dose_ecart` (|écart| ≥ 10 %, warning).
pub fn rules_flag(meal: &TrainingMeal) -> bool {
    meal.dose_theorique > 0.0 && {
        let ratio = meal.dose_reelle / meal.dose_theorique;
        ratio <= 0.70 || (ratio - 1.0).abs() * 100.0 >= 10.0
    }
}

/// Which meals each family flags: (residual model, mixture density).
fn flags(model: &MealModel, density: &DensityModel, meals: &[TrainingMeal]) -> Vec<(bool, bool)> {
    let mut track = LotTrack::default();
    meals
        .iter()
        .map(|meal| match model.score(&mut track, &meal.facts()) {
            Some(score) => (
                score.score >= model.threshold,
                density.surprise(&evidence_of(&score)) >= density.threshold,
            ),
            None => (false, false),
        })
        .collect()
}

/// One type's results.
#[derive(Debug, Clone, Default)]
pub struct TypeResult {
    pub events: usize,
    pub model: usize,
    pub rules: usize,
    pub both: usize,
    pub model_only: usize,
    pub delays: Vec<usize>,
    /// Found by the mixture density (the family not shipped).
    pub density: usize,
    /// Events within the aim's range ([`Injected::aim_floor`]), and those found by the model
    /// and by model or rules.
    pub aimed: usize,
    pub aimed_model: usize,
    pub aimed_both: usize,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub train_lots: usize,
    pub test_lots: usize,
    pub clean_meals: usize,
    pub clean_flagged_model: usize,
    pub clean_flagged_rules: usize,
    pub clean_flagged_density: usize,
    pub threshold: f64,
    pub types: Vec<(Injected, TypeResult)>,
}

/// The split every measurement of `gaveurs model eval` makes: `test_share` of the lots held
/// out for testing, by a hash seeded apart from the training's own split (so the lots that set
/// the threshold are not the test lots), and the others.
pub fn split_for_test<'a>(
    lots: impl IntoIterator<Item = &'a TrainingLot>,
    seed: u64,
    test_share: f64,
) -> (Vec<&'a TrainingLot>, Vec<&'a TrainingLot>) {
    let test_seed = seed ^ 0x5eed_e7a1;
    lots.into_iter()
        .partition(|lot| held_out(&lot.code_lot, test_seed, test_share))
}

/// The meal model `gaveurs model train` would make of `training` with `seed`.
fn train_on(training: &[&TrainingLot], seed: u64) -> anyhow::Result<(MealModel, TrainingOptions)> {
    let training: Vec<TrainingLot> = training.iter().map(|l| (*l).clone()).collect();
    let options = TrainingOptions {
        seed,
        ..TrainingOptions::default()
    };
    Ok((train(&training, "evaluation", &options)?, options))
}

/// Trains on the lots not held out by `seed` and scores the others, clean and injected.
pub fn evaluate(lots: &[TrainingLot], seed: u64, test_share: f64) -> anyhow::Result<Report> {
    let (test, training) = split_for_test(lots, seed, test_share);
    let (model, options) = train_on(&training, seed)?;
    // The mixture is fitted and thresholded on the same lots as the residual model.
    let (validation, fitting): (Vec<&TrainingLot>, Vec<&TrainingLot>) = training
        .iter()
        .copied()
        .partition(|lot| held_out(&lot.code_lot, seed, options.validation_share));
    let mut density = DensityModel::fit(&evidence(&model, &fitting), MIXTURE_COMPONENTS)?;
    let surprises: Vec<f64> = evidence(&model, &validation)
        .iter()
        .map(|x| density.surprise(x))
        .collect();
    density.threshold = upper_quantile(&surprises, options.flag_rate);
    let mut report = Report {
        train_lots: training.len(),
        test_lots: test.len(),
        clean_meals: 0,
        clean_flagged_model: 0,
        clean_flagged_rules: 0,
        clean_flagged_density: 0,
        threshold: model.threshold,
        types: Vec::new(),
    };
    for lot in &test {
        let flags = flags(&model, &density, &lot.meals);
        report.clean_meals += flags.len();
        report.clean_flagged_model += flags.iter().filter(|f| f.0).count();
        report.clean_flagged_density += flags.iter().filter(|f| f.1).count();
        report.clean_flagged_rules += lot.meals.iter().filter(|m| rules_flag(m)).count();
    }
    for kind in Injected::ALL {
        let mut result = TypeResult::default();
        for lot in &test {
            let Some((meals, start)) = inject(lot, kind, seed) else {
                continue;
            };
            result.events += 1;
            let end = (start + kind.window()).min(meals.len() - 1);
            let flags = flags(&model, &density, &meals);
            let by_model = (start..=end).find(|&i| flags[i].0);
            if (start..=end).any(|i| flags[i].1) {
                result.density += 1;
            }
            let by_rules = (start..=end).any(|i| rules_flag(&meals[i]));
            if let Some(i) = by_model {
                result.model += 1;
                result.delays.push(i - start);
                if !by_rules {
                    result.model_only += 1;
                }
            }
            if by_rules {
                result.rules += 1;
            }
            if by_model.is_some() || by_rules {
                result.both += 1;
            }
            if kind
                .aim_floor()
                .is_none_or(|floor| magnitude(lot, kind, seed) >= floor)
            {
                result.aimed += 1;
                result.aimed_model += usize::from(by_model.is_some());
                result.aimed_both += usize::from(by_model.is_some() || by_rules);
            }
        }
        report.types.push((kind, result));
    }
    Ok(report)
}

impl Report {
    /// The report as `gaveurs model eval` prints it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let share = |n: usize, of: usize| n as f64 / of.max(1) as f64;
        let _ = writeln!(
            out,
            "trained on {} lots, tested on {} unseen lots; threshold {:.3}",
            self.train_lots, self.test_lots, self.threshold
        );
        let _ = writeln!(
            out,
            "clean meals flagged: model {:.2} % ({} of {}), rules {:.2} %",
            100.0 * share(self.clean_flagged_model, self.clean_meals),
            self.clean_flagged_model,
            self.clean_meals,
            100.0 * share(self.clean_flagged_rules, self.clean_meals)
        );
        let _ = writeln!(
            out,
            "clean meals flagged by the mixture density (not shipped): {:.2} %",
            100.0 * share(self.clean_flagged_density, self.clean_meals)
        );
        let _ = writeln!(
            out,
            "\n| anomaly | events | window | model | rules | both | model only | median delay | mixture | aim range | model there | both there |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut added = 0;
        for (kind, r) in &self.types {
            let mut delays = r.delays.clone();
            delays.sort_unstable();
            let delay = delays
                .get(delays.len() / 2)
                .map_or("–".to_string(), |d| d.to_string());
            added += r.model_only;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {} | {} | {:.3} | {} | {:.3} | {:.3} |",
                kind.name(),
                r.events,
                kind.window(),
                share(r.model, r.events),
                share(r.rules, r.events),
                share(r.both, r.events),
                r.model_only,
                delay,
                share(r.density, r.events),
                kind.aim_floor().map_or("all".to_string(), |f| format!(
                    "≥ {:.0} % ({})",
                    f * 100.0,
                    r.aimed
                )),
                share(r.aimed_model, r.aimed),
                share(r.aimed_both, r.aimed)
            );
        }
        let _ = writeln!(
            out,
            "\nthe model found {added} injected events the rules missed"
        );
        out
    }
}

/// The types the acceptance replay injects (SPEC §3's acceptance: spikes, drops, level shifts
/// and plans off the protocol).
pub const ACCEPTANCE_TYPES: [Injected; 4] = [
    Injected::Spike,
    Injected::Drop,
    Injected::LevelShift,
    Injected::OffProtocol,
];

/// A test lot of the acceptance replay: its meals as they are sent, and, for an injected lot,
/// the type and the meals (`jour`, `moment`) within whose window a row must appear.
pub struct AcceptanceLot {
    pub lot: TrainingLot,
    pub event: Option<(Injected, Vec<(i64, gaveurs_schemas::records::Moment)>)>,
}

/// The acceptance replay's input: the model trained on the lots `evaluate` trains on, and the
/// lots it tests, one in three with an event of [`ACCEPTANCE_TYPES`] in turn.
pub fn acceptance_set(
    lots: &[TrainingLot],
    seed: u64,
    test_share: f64,
) -> anyhow::Result<(MealModel, Vec<AcceptanceLot>)> {
    let (test, training) = split_for_test(lots, seed, test_share);
    let (model, _) = train_on(&training, seed)?;
    let mut set = Vec::with_capacity(test.len());
    for (i, lot) in test.into_iter().enumerate() {
        let kind = ACCEPTANCE_TYPES[(i / 3) % ACCEPTANCE_TYPES.len()];
        let injected = i
            .is_multiple_of(3)
            .then(|| inject(lot, kind, seed))
            .flatten();
        set.push(match injected {
            Some((meals, start)) => {
                let end = (start + kind.window()).min(meals.len() - 1);
                let window = meals[start..=end]
                    .iter()
                    .map(|m| (m.jour, m.moment))
                    .collect();
                AcceptanceLot {
                    lot: TrainingLot {
                        code_lot: lot.code_lot.clone(),
                        meals,
                    },
                    event: Some((kind, window)),
                }
            }
            None => AcceptanceLot {
                lot: lot.clone(),
                event: None,
            },
        });
    }
    Ok((model, set))
}
