//! Early lot outcome: a lot's final ITM and mean liver weight predicted from its first days
//! (`itm_pred`, `poids_foie_pred` on its `lot_kpis` row and `GET /api/v1/lots/{code_lot}`),
//! updated with each micro-batch of its meals.
//!
//! One linear model per feeding day `d` (linfa least squares), from what the lot's KPI row
//! says once `d` days are fed ([`LotSoFar`]): its site, the season of its first meal, its mean
//! real and planned dose per meal, and its mean gap between them. The features are the KPI
//! row's, so the pipeline predicts from exactly what the model learnt from. `gaveurs model
//! eval` reports the holdout error against the mean of the lot's site.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use linfa::prelude::*;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::evaluation::split_for_test;
use super::training::{TrainingLot, significant};

/// The model's name in artifacts.
pub const MODEL_NAME: &str = "lot_outcome";
/// How the artifact is laid out; a loader refuses another.
pub const FORMAT: u32 = 1;
/// Days with their own model; later days use the last.
pub const DAYS: usize = 14;
/// The features, in the order of the coefficients.
pub const FEATURES: [&str; 8] = [
    "site_LS",
    "site_MT",
    "saison_printemps",
    "saison_ete",
    "saison_automne",
    "dose_reelle_moyenne_g",
    "dose_theorique_moyenne_g",
    "ecart_moyen_pct",
];
/// Days reported by `gaveurs model eval`.
const REPORTED: [i64; 5] = [2, 3, 4, 5, 6];

/// What a lot's KPI row says of its feeding so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LotSoFar<'a> {
    pub site: &'a str,
    /// Month (1–12) of its first meal.
    pub month: u32,
    /// Distinct days fed.
    pub jours: i64,
    pub repas: i64,
    pub mais_total_g: f64,
    pub mais_theorique_total_g: f64,
    pub ecart_moyen_pct: Option<f64>,
}

impl LotSoFar<'_> {
    fn features(&self) -> Option<[f64; FEATURES.len()]> {
        if self.repas <= 0 || self.jours <= 0 {
            return None;
        }
        let season = super::meal_model::season(self.month);
        let n = self.repas as f64;
        Some([
            f64::from(u8::from(self.site == "LS")),
            f64::from(u8::from(self.site == "MT")),
            f64::from(u8::from(season == 1)),
            f64::from(u8::from(season == 2)),
            f64::from(u8::from(season == 3)),
            self.mais_total_g / n,
            self.mais_theorique_total_g / n,
            self.ecart_moyen_pct.unwrap_or(0.0),
        ])
    }
}

/// A lot's meals through `day`, summed as the `lot` KPI query sums them.
fn so_far(lot: &TrainingLot, day: i64) -> Option<LotSoFar<'_>> {
    let fed: Vec<_> = lot.meals.iter().filter(|m| m.jour <= day).collect();
    let first = fed.first()?;
    let gaps: Vec<f64> = fed
        .iter()
        .filter(|m| m.dose_theorique > 0.0)
        .map(|m| (m.dose_reelle - m.dose_theorique) / m.dose_theorique * 100.0)
        .collect();
    Some(LotSoFar {
        site: &first.site,
        month: first.month,
        jours: fed.iter().map(|m| m.jour).collect::<BTreeSet<_>>().len() as i64,
        repas: fed.len() as i64,
        mais_total_g: fed.iter().map(|m| m.dose_reelle).sum(),
        mais_theorique_total_g: fed.iter().map(|m| m.dose_theorique).sum(),
        ecart_moyen_pct: (!gaps.is_empty()).then(|| gaps.iter().sum::<f64>() / gaps.len() as f64),
    })
}

/// A linear prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    pub intercept: f64,
    pub coefficients: Vec<f64>,
}

impl Linear {
    fn predict(&self, x: &[f64]) -> f64 {
        super::meal_model::affine(self.intercept, &self.coefficients, x)
    }
}

/// The models of one feeding day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayModels {
    pub itm: Linear,
    pub poids_foie_g: Linear,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// SHA-256 of the training files' bytes.
    pub data_sha256: String,
    /// Lots with an outcome (ITM and liver weight).
    pub lots: usize,
}

/// The early outcome model's artifact, as written by `gaveurs model train --model outcome`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeModel {
    pub model: String,
    pub format: u32,
    /// A digest of everything below.
    pub version: String,
    pub features: Vec<String>,
    /// Day 1, 2, … [`DAYS`].
    pub days: Vec<DayModels>,
    pub training: Provenance,
}

/// A lot's predicted outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Predicted {
    pub itm: f64,
    pub poids_foie_g: f64,
}

impl OutcomeModel {
    /// The outcome a lot's feeding so far predicts; `None` before its first meal.
    pub fn predict(&self, lot: &LotSoFar<'_>) -> Option<Predicted> {
        let x = lot.features()?;
        let day = &self.days[(lot.jours as usize).clamp(1, self.days.len()) - 1];
        let round = |v: f64, digits: i32| (v * 10f64.powi(digits)).round() / 10f64.powi(digits);
        Some(Predicted {
            itm: round(day.itm.predict(&x), 3),
            poids_foie_g: round(day.poids_foie_g.predict(&x), 1),
        })
    }

    pub fn check(&self) -> Result<(), String> {
        super::check_header(
            &self.model,
            self.format,
            MODEL_NAME,
            FORMAT,
            "lot outcome model",
        )?;
        if self.features != FEATURES {
            return Err(format!("features {:?} are not {FEATURES:?}", self.features));
        }
        if self.days.is_empty() {
            return Err("no day model".into());
        }
        for (i, day) in self.days.iter().enumerate() {
            for linear in [&day.itm, &day.poids_foie_g] {
                if linear.coefficients.len() != FEATURES.len()
                    || !linear.intercept.is_finite()
                    || !linear.coefficients.iter().all(|c| c.is_finite())
                {
                    return Err(format!(
                        "day {}: each prediction needs {} finite coefficients",
                        i + 1,
                        FEATURES.len()
                    ));
                }
            }
        }
        if self.version != self.digest() {
            return Err("its version does not match its contents (edited by hand?)".into());
        }
        Ok(())
    }

    pub fn digest(&self) -> String {
        let mut unversioned = self.clone();
        unversioned.version = String::new();
        super::version_digest(MODEL_NAME, &unversioned)
    }
}

fn fit(x: &[[f64; FEATURES.len()]], y: &[f64]) -> anyhow::Result<Linear> {
    let records = Array2::from_shape_fn((x.len(), FEATURES.len()), |(i, j)| x[i][j]);
    let fitted = LinearRegression::new()
        .fit(&Dataset::new(records, Array1::from(y.to_vec())))
        .map_err(|e| anyhow::anyhow!("least squares: {e}"))?;
    Ok(Linear {
        intercept: significant(fitted.intercept()),
        coefficients: fitted.params().iter().map(|c| significant(*c)).collect(),
    })
}

/// Lots with a usable outcome: (ITM, mean liver weight g), both finite, the weight positive.
fn with_outcome<'a>(
    lots: impl IntoIterator<Item = &'a TrainingLot>,
    outcomes: &HashMap<String, (f64, f64)>,
) -> Vec<&'a TrainingLot> {
    lots.into_iter()
        .filter(|l| {
            outcomes
                .get(&l.code_lot)
                .is_some_and(|(i, f)| i.is_finite() && f.is_finite() && *f > 0.0)
        })
        .collect()
}

/// Fits one model per day on `lots` (each with an outcome in `outcomes`).
pub fn train(
    lots: &[&TrainingLot],
    outcomes: &HashMap<String, (f64, f64)>,
    data_sha256: &str,
) -> anyhow::Result<OutcomeModel> {
    let lots = with_outcome(lots.iter().copied(), outcomes);
    if lots.len() < 20 {
        anyhow::bail!("{} lots with an outcome are too few", lots.len());
    }
    let mut days = Vec::with_capacity(DAYS);
    for day in 1..=DAYS as i64 {
        let mut x = Vec::new();
        let (mut itm, mut foie) = (Vec::new(), Vec::new());
        for lot in &lots {
            if let Some(features) = so_far(lot, day).and_then(|s| s.features()) {
                let (i, f) = outcomes[&lot.code_lot];
                x.push(features);
                itm.push(i);
                foie.push(f);
            }
        }
        days.push(DayModels {
            itm: fit(&x, &itm)?,
            poids_foie_g: fit(&x, &foie)?,
        });
    }
    let mut model = OutcomeModel {
        model: MODEL_NAME.to_string(),
        format: FORMAT,
        version: String::new(),
        features: FEATURES.iter().map(|f| f.to_string()).collect(),
        days,
        training: Provenance {
            data_sha256: data_sha256.to_string(),
            lots: lots.len(),
        },
    };
    model.version = model.digest();
    Ok(model)
}

fn mae(pairs: &[(f64, f64)]) -> f64 {
    pairs.iter().map(|(a, b)| (a - b).abs()).sum::<f64>() / pairs.len().max(1) as f64
}

/// The report's table: per day, the holdout MAE of the model (trained as `gaveurs model
/// train --model outcome` trains it, on the other lots) and of the per-site mean, for ITM and
/// liver weight. `outcomes` maps a lot to (ITM, mean liver weight g).
pub fn evaluate(
    lots: &[TrainingLot],
    outcomes: &HashMap<String, (f64, f64)>,
    seed: u64,
    test_share: f64,
) -> anyhow::Result<String> {
    let known = with_outcome(lots, outcomes);
    let (test, training) = split_for_test(known, seed, test_share);
    let model = train(&training, outcomes, "evaluation")?;
    let site = |lot: &TrainingLot| {
        lot.meals
            .first()
            .map(|m| m.site.clone())
            .unwrap_or_default()
    };
    let mut site_means: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
    for lot in &training {
        let (itm, foie) = outcomes[&lot.code_lot];
        let entry = site_means.entry(site(lot)).or_default();
        entry.0 += itm;
        entry.1 += foie;
        entry.2 += 1;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nEarly lot outcome ({} training lots, {} test lots with an outcome): holdout MAE",
        training.len(),
        test.len()
    );
    let _ = writeln!(
        out,
        "\n| from days | ITM model | ITM site mean | ratio | liver g model | liver g site mean | ratio |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for day in REPORTED {
        let (mut itm_model, mut itm_base, mut foie_model, mut foie_base) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for lot in &test {
            let Some(predicted) = so_far(lot, day).and_then(|s| model.predict(&s)) else {
                continue;
            };
            let (itm, foie) = outcomes[&lot.code_lot];
            let (sum_itm, sum_foie, n) = site_means.get(&site(lot)).copied().unwrap_or_default();
            if n == 0 {
                continue;
            }
            itm_model.push((predicted.itm, itm));
            itm_base.push((sum_itm / n as f64, itm));
            foie_model.push((predicted.poids_foie_g, foie));
            foie_base.push((sum_foie / n as f64, foie));
        }
        let (im, ib, fm, fb) = (
            mae(&itm_model),
            mae(&itm_base),
            mae(&foie_model),
            mae(&foie_base),
        );
        let _ = writeln!(
            out,
            "| {day} | {im:.3} | {ib:.3} | {:.2} | {fm:.1} | {fb:.1} | {:.2} |",
            im / ib,
            fm / fb
        );
    }
    let _ = writeln!(out, "\n(aim: model ≤ 0.85 × the site mean's MAE at day 4)");
    Ok(out)
}
