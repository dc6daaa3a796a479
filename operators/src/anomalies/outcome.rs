//! Early lot outcome, measured only (`gaveurs model eval`): how well a lot's first days
//! predict its final ITM and mean liver weight, against the mean of its site's lots.
//!
//! One linear model per day `d` (linfa least squares) from what the lot's meals through day
//! `d` carry: its context (site, strain, season), its mean real dose per meal so far, its last
//! plan and its mean real/plan ratio. Not yet in the pipeline (`itm_pred` on the KPI row).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use linfa::prelude::*;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2};

use super::evaluation::split_for_test;
use super::training::TrainingLot;

/// Days reported.
const DAYS: [i64; 5] = [2, 3, 4, 5, 6];

/// A lot's features through day `day`, if it has a meal by then.
fn features(lot: &TrainingLot, day: i64) -> Option<Vec<f64>> {
    let fed: Vec<_> = lot.meals.iter().filter(|m| m.jour <= day).collect();
    let last = fed.last()?;
    let real: f64 = fed.iter().map(|m| m.dose_reelle).sum();
    let ratios: Vec<f64> = fed
        .iter()
        .filter(|m| m.dose_theorique > 0.0)
        .map(|m| m.dose_reelle / m.dose_theorique)
        .collect();
    let mut x = last.facts().context().to_vec();
    x.push(real / fed.len() as f64);
    x.push(last.dose_theorique);
    x.push(ratios.iter().sum::<f64>() / ratios.len().max(1) as f64);
    Some(x)
}

fn fit(x: &[Vec<f64>], y: &[f64]) -> anyhow::Result<(Vec<f64>, f64)> {
    let width = x[0].len();
    let records = Array2::from_shape_fn((x.len(), width), |(i, j)| x[i][j]);
    let fitted = LinearRegression::new()
        .fit(&Dataset::new(records, Array1::from(y.to_vec())))
        .map_err(|e| anyhow::anyhow!("least squares: {e}"))?;
    Ok((fitted.params().to_vec(), fitted.intercept()))
}

fn mae(pairs: &[(f64, f64)]) -> f64 {
    pairs.iter().map(|(a, b)| (a - b).abs()).sum::<f64>() / pairs.len().max(1) as f64
}

/// The report's table: per day, the holdout MAE of the model and of the per-site mean, for
/// ITM and liver weight. `outcomes` maps a lot to (ITM, mean liver weight g).
pub fn evaluate(
    lots: &[TrainingLot],
    outcomes: &HashMap<String, (f64, f64)>,
    seed: u64,
    test_share: f64,
) -> anyhow::Result<String> {
    let known = lots.iter().filter(|l| {
        outcomes
            .get(&l.code_lot)
            .is_some_and(|(i, f)| i.is_finite() && f.is_finite() && *f > 0.0)
    });
    let (test, training) = split_for_test(known, seed, test_share);
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
    for day in DAYS {
        let rows: Vec<(Vec<f64>, f64, f64)> = training
            .iter()
            .filter_map(|l| {
                let (itm, foie) = outcomes[&l.code_lot];
                features(l, day).map(|x| (x, itm, foie))
            })
            .collect();
        if rows.len() < 20 {
            continue;
        }
        let x: Vec<Vec<f64>> = rows.iter().map(|r| r.0.clone()).collect();
        let itm: Vec<f64> = rows.iter().map(|r| r.1).collect();
        let foie: Vec<f64> = rows.iter().map(|r| r.2).collect();
        let (itm_w, itm_b) = fit(&x, &itm)?;
        let (foie_w, foie_b) = fit(&x, &foie)?;
        let predict =
            |w: &[f64], b: f64, x: &[f64]| b + w.iter().zip(x).map(|(a, v)| a * v).sum::<f64>();
        let (mut itm_model, mut itm_base, mut foie_model, mut foie_base) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for lot in &test {
            let Some(x) = features(lot, day) else {
                continue;
            };
            let (itm, foie) = outcomes[&lot.code_lot];
            let (sum_itm, sum_foie, n) = site_means.get(&site(lot)).copied().unwrap_or_default();
            if n == 0 {
                continue;
            }
            itm_model.push((predict(&itm_w, itm_b, &x), itm));
            itm_base.push((sum_itm / n as f64, itm));
            foie_model.push((predict(&foie_w, foie_b, &x), foie));
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
