//! The meal model's fifth piece of evidence: the lot's conditions, where a record carries
//! them — its ducks' weight gain per day since the lot was last weighed, the rise of its
//! mortality since its previous meal, the barn's temperature and humidity.
//!
//! `../shared/data` holds none of these fields, so their expected values and tails are learnt
//! from the simulator's farms (`gaveurs simulate`'s, seeded), which send them as the stations'
//! gateways do; each residual counts in units of the tail on its side (its 99.5th percentile
//! over those farms), as the dose residuals do.

use serde::{Deserialize, Serialize};

use super::meal_model::Linear;
use super::training::{median, significant, upper_quantile};

/// The optional fields of a meal the conditions read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Conditions {
    pub poids_moyen: Option<f64>,
    pub taux_mortalite: Option<f64>,
    pub temperature_stabule: Option<f64>,
    pub humidite_stabule: Option<f64>,
}

/// Each condition's centre, scale and tails (a [`Linear`] without inputs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionModel {
    /// g a day between two weighings.
    pub gain_poids_g_jour: Linear,
    /// Percentage points of mortality since the lot's previous meal.
    pub hausse_mortalite_pct: Linear,
    pub temperature_stabule: Linear,
    pub humidite_stabule: Linear,
}

/// The names of the conditions, as explanations give them.
pub const NAMES: [&str; 4] = [
    "gain_poids_g_jour",
    "hausse_mortalite_pct",
    "temperature_stabule",
    "humidite_stabule",
];

impl Default for ConditionModel {
    /// Neutral: no condition ever counts (for evaluations on data without conditions).
    fn default() -> Self {
        let neutral = Linear {
            intercept: 0.0,
            coefficients: Vec::new(),
            scale: 1.0,
            tail_low: 1e12,
            tail_high: 1e12,
        };
        Self {
            gain_poids_g_jour: neutral.clone(),
            hausse_mortalite_pct: neutral.clone(),
            temperature_stabule: neutral.clone(),
            humidite_stabule: neutral,
        }
    }
}

/// What the model keeps of a lot's conditions between its meals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ConditionTrack {
    /// (jour, poids_moyen) of the lot's last weighing.
    pub weighed: Option<(i64, f64)>,
    pub mortality: Option<f64>,
}

/// One meal's condition residuals per [`NAMES`]: (value, expected value, evidence), where the
/// meal lets one judge it.
pub type Observed = [Option<(f64, f64, f64)>; 4];

impl ConditionModel {
    fn models(&self) -> [&Linear; 4] {
        [
            &self.gain_poids_g_jour,
            &self.hausse_mortalite_pct,
            &self.temperature_stabule,
            &self.humidite_stabule,
        ]
    }

    /// The meal's conditions as raw values per [`NAMES`] (those it lets one compute), and
    /// the track moved on.
    fn values(track: &mut ConditionTrack, jour: i64, c: &Conditions) -> [Option<f64>; 4] {
        let gain = match (c.poids_moyen, track.weighed) {
            (Some(w), Some((j0, w0))) if jour > j0 => Some((w - w0) / (jour - j0) as f64),
            _ => None,
        };
        if let Some(w) = c.poids_moyen
            && track.weighed.is_none_or(|(j0, _)| jour > j0)
        {
            track.weighed = Some((jour, w));
        }
        let rise = match (c.taux_mortalite, track.mortality) {
            (Some(t), Some(t0)) => Some(t - t0),
            _ => None,
        };
        if c.taux_mortalite.is_some() {
            track.mortality = c.taux_mortalite;
        }
        [gain, rise, c.temperature_stabule, c.humidite_stabule]
    }

    /// Evidence of each condition the meal lets one judge.
    pub fn observe(&self, track: &mut ConditionTrack, jour: i64, c: &Conditions) -> Observed {
        let values = Self::values(track, jour, c);
        let models = self.models();
        std::array::from_fn(|i| {
            let value = values[i].filter(|v| v.is_finite())?;
            let model = models[i];
            Some((
                value,
                model.intercept,
                model.evidence(value - model.intercept),
            ))
        })
    }

    pub fn check(&self) -> Result<(), String> {
        for (name, model) in NAMES.iter().zip(self.models()) {
            let positive = |v: f64| v.is_finite() && v > 0.0;
            if !(model.coefficients.is_empty()
                && model.intercept.is_finite()
                && positive(model.scale)
                && positive(model.tail_low)
                && positive(model.tail_high))
            {
                return Err(format!(
                    "condition {name} needs a finite centre and positive scale and tails"
                ));
            }
        }
        Ok(())
    }
}

/// Learns each condition's centre (median), robust scale and tails from lots' meals in
/// feeding order (`(jour, conditions)`), as the simulator's farms send them.
pub fn train(lots: &[Vec<(i64, Conditions)>]) -> anyhow::Result<ConditionModel> {
    let mut values: [Vec<f64>; 4] = Default::default();
    for lot in lots {
        let mut track = ConditionTrack::default();
        for (jour, conditions) in lot {
            for (i, v) in ConditionModel::values(&mut track, *jour, conditions)
                .into_iter()
                .enumerate()
            {
                values[i].extend(v.filter(|v| v.is_finite()));
            }
        }
    }
    let mut fitted = Vec::with_capacity(4);
    for (name, mut observed) in NAMES.into_iter().zip(values) {
        if observed.len() < 50 {
            anyhow::bail!("{} values of {name} are too few", observed.len());
        }
        let centre = median(&mut observed);
        let mut deviations: Vec<f64> = observed.iter().map(|v| (v - centre).abs()).collect();
        // Counts that rarely move (mortality) have no spread at the median: one unit of the
        // values' own resolution at least.
        let scale = (1.4826 * median(&mut deviations)).max(0.01);
        let above: Vec<f64> = observed.iter().map(|v| (v - centre) / scale).collect();
        let below: Vec<f64> = above.iter().map(|z| -z).collect();
        fitted.push(Linear {
            intercept: significant(centre),
            coefficients: Vec::new(),
            scale: significant(scale),
            tail_low: significant(upper_quantile(&below, 0.005).max(1.0)),
            tail_high: significant(upper_quantile(&above, 0.005).max(1.0)),
        });
    }
    let [gain, mortality, temperature, humidity]: [Linear; 4] =
        fitted.try_into().expect("four conditions");
    Ok(ConditionModel {
        gain_poids_g_jour: gain,
        hausse_mortalite_pct: mortality,
        temperature_stabule: temperature,
        humidite_stabule: humidity,
    })
}
