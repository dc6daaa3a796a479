//! `gaveurs model train` and `gaveurs model eval`: the anomaly models from recorded lots.
//!
//! The meals are read the way `gaveurs replay` sends them (the same CSV reader and record
//! builder) and decoded as the pipeline decodes a record, so the model learns from exactly
//! the features a live record gives it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use gaveurs_loadgen::replay::records::{Kind, plan};
use gaveurs_operators::anomalies::evaluation;
use gaveurs_operators::anomalies::training::{self, TrainingLot, TrainingMeal, TrainingOptions};
use gaveurs_schemas::records::GavageMeal;
use gaveurs_schemas::time::SiteTimeZones;
use sha2::Digest;

/// The two files of a recorded year in `dir`: `lots*.csv[.gz]` and `meals*.csv[.gz]`.
fn data_files(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut lots = None;
    let mut meals = None;
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for path in names {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !(name.ends_with(".csv") || name.ends_with(".csv.gz")) {
            continue;
        }
        if name.starts_with("lots") && lots.is_none() {
            lots = Some(path);
        } else if name.starts_with("meals") && meals.is_none() {
            meals = Some(path);
        }
    }
    match (lots, meals) {
        (Some(lots), Some(meals)) => Ok((lots, meals)),
        _ => anyhow::bail!(
            "{} holds no lots*.csv[.gz] and meals*.csv[.gz] (the layout of ../shared/data)",
            dir.display()
        ),
    }
}

/// The recorded lots of `dir`, and the SHA-256 of the files read.
pub fn read_lots(dir: &Path) -> anyhow::Result<(Vec<TrainingLot>, String)> {
    let (lots_file, meals_file) = data_files(dir)?;
    let mut hasher = sha2::Sha256::new();
    for file in [&lots_file, &meals_file] {
        hasher.update(std::fs::read(file).with_context(|| format!("reading {}", file.display()))?);
    }
    let digest = hex::encode(hasher.finalize());
    let plan = plan(&meals_file, &lots_file)?;
    let zones = SiteTimeZones::default();
    let mut meals = Vec::with_capacity(plan.meals.len());
    for outgoing in plan.meals.iter().filter(|o| o.kind == Kind::Meal) {
        match GavageMeal::decode(&outgoing.payload, &zones) {
            Ok(meal) => meals.push((meal.code_lot.clone(), TrainingMeal::from(&meal))),
            Err(e) => tracing::warn!("{} is not a valid record, left out: {e}", outgoing.label),
        }
    }
    if !plan.skipped.is_empty() {
        eprintln!(
            "{} CSV rows skipped (first: {})",
            plan.skipped.len(),
            plan.skipped[0]
        );
    }
    Ok((training::group_by_lot(meals), digest))
}

/// `gaveurs model train`: writes the meal model trained on `data` to `out` and returns a
/// summary for the terminal.
pub fn train(data: &Path, out: &Path, seed: u64) -> anyhow::Result<String> {
    let (lots, digest) = read_lots(data)?;
    let options = TrainingOptions {
        seed,
        ..TrainingOptions::default()
    };
    let model = training::train(&lots, &digest, &options)?;
    let mut json = serde_json::to_string_pretty(&model)?;
    json.push('\n');
    std::fs::write(out, json).with_context(|| format!("writing {}", out.display()))?;
    Ok(format!(
        "{}: {} trained on {} lots ({} meals); threshold {} flags {:.2} % of {} held-out meals",
        out.display(),
        model.version,
        model.training.lots,
        model.training.meals,
        model.threshold,
        model.evaluation.flagged_share * 100.0,
        model.evaluation.validation_meals
    ))
}

/// `gaveurs model eval`: the report of [`evaluation::evaluate`].
pub fn eval(data: &Path, seed: u64) -> anyhow::Result<String> {
    let (lots, _) = read_lots(data)?;
    Ok(evaluation::evaluate(&lots, seed, 0.3)?.render())
}
