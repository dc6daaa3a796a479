//! `gaveurs model train` and `gaveurs model eval`: the anomaly models from recorded lots.
//!
//! The meals are read the way `gaveurs replay` sends them (the same CSV reader and record
//! builder) and decoded as the pipeline decodes a record, so the model learns from exactly
//! the features a live record gives it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use gaveurs_loadgen::replay::records::{Kind, plan};
use gaveurs_operators::anomalies::sqal_model::{self, Stations};
use gaveurs_operators::anomalies::training::{self, TrainingLot, TrainingMeal, TrainingOptions};
use gaveurs_operators::anomalies::{conditions, evaluation, outcome, sqal_evaluation};
use gaveurs_schemas::records::{GavageMeal, SqalSample};
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

/// Where a pipeline keeps its Parquet datasets under `dir` (a data dir, its `parquet`
/// folder, or the folder that holds `gavage_meals`), if it is one.
fn parquet_root(dir: &Path) -> Option<PathBuf> {
    [
        dir.join("parquet"),
        dir.join("data/parquet"),
        dir.to_path_buf(),
    ]
    .into_iter()
    .find(|root| root.join("gavage_meals").is_dir())
}

/// Training data: lots with their meals in feeding order, each lot's outcome (ITM, mean
/// liver weight g) where known, and a SHA-256 of what was read.
pub struct Recorded {
    pub lots: Vec<TrainingLot>,
    pub outcomes: std::collections::HashMap<String, (f64, f64)>,
    pub digest: String,
}

/// The recorded lots of `dir`: the CSV files of `../shared/data`, or a pipeline's Parquet
/// datasets (`gavage_meals`, `lot_outcomes`).
pub fn read_recorded(dir: &Path) -> anyhow::Result<Recorded> {
    if let Some(root) = parquet_root(dir) {
        return read_parquet(&root);
    }
    let (lots, digest) = read_lots(dir)?;
    let (lots_file, _) = data_files(dir)?;
    Ok(Recorded {
        lots,
        outcomes: read_outcomes(&lots_file)?,
        digest,
    })
}

/// Lots from the `gavage_meals` and `lot_outcomes` datasets under `root`; the digest is of
/// the rows read, in their order (so it does not depend on how rows fell into files). A lot's
/// ITM is its meals' `dose_reelle` sum over its outcome's mean liver weight (SPEC §4).
fn read_parquet(root: &Path) -> anyhow::Result<Recorded> {
    use gaveurs_query::arrow::array::{Array, AsArray};
    use gaveurs_query::arrow::datatypes::{Float64Type, Int64Type};
    let (meals, outcomes) = gaveurs_query::runtime().block_on(async {
        let catalog = gaveurs_query::Catalog::open(root).await?;
        let meals = catalog
            .sql(
                "SELECT code_lot, site, genetique, CAST(date_part('month', \"timestamp\") AS BIGINT) AS month, \
                 jour, moment, dose_theorique, dose_reelle FROM gavage_meals \
                 ORDER BY code_lot, jour, moment, \"timestamp\"",
            )
            .await?
            .collect()
            .await?;
        let outcomes = catalog
            .sql(
                "SELECT o.code_lot, m.total / o.poids_foie_moyen_g AS itm, o.poids_foie_moyen_g \
                 FROM lot_outcomes o JOIN (SELECT code_lot, sum(dose_reelle) AS total \
                 FROM gavage_meals GROUP BY code_lot) m ON m.code_lot = o.code_lot \
                 WHERE o.poids_foie_moyen_g > 0 ORDER BY o.code_lot",
            )
            .await
            .map(|df| df.collect());
        let outcomes = match outcomes {
            Ok(collecting) => collecting.await?,
            // No outcome published yet: no table to read.
            Err(_) => Vec::new(),
        };
        anyhow::Ok((meals, outcomes))
    })?;
    let mut hasher = sha2::Sha256::new();
    let mut rows = Vec::new();
    for batch in &meals {
        let text = |name: &str| batch.column_by_name(name).map(|c| c.as_string::<i32>());
        let int = |name: &str| {
            batch
                .column_by_name(name)
                .map(|c| c.as_primitive::<Int64Type>())
        };
        let float = |name: &str| {
            batch
                .column_by_name(name)
                .map(|c| c.as_primitive::<Float64Type>())
        };
        let (
            Some(code),
            Some(site),
            Some(strain),
            Some(month),
            Some(jour),
            Some(moment),
            Some(planned),
            Some(real),
        ) = (
            text("code_lot"),
            text("site"),
            text("genetique"),
            int("month"),
            int("jour"),
            text("moment"),
            float("dose_theorique"),
            float("dose_reelle"),
        )
        else {
            anyhow::bail!(
                "{}: gavage_meals lacks a column training reads",
                root.display()
            );
        };
        for i in 0..batch.num_rows() {
            let meal = TrainingMeal {
                site: site.value(i).to_string(),
                genetique: (!strain.is_null(i)).then(|| strain.value(i).to_string()),
                month: month.value(i) as u32,
                jour: jour.value(i),
                moment: if moment.value(i) == "soir" {
                    gaveurs_schemas::records::Moment::Soir
                } else {
                    gaveurs_schemas::records::Moment::Matin
                },
                dose_theorique: planned.value(i),
                dose_reelle: real.value(i),
            };
            hasher.update(
                format!(
                    "{}\u{1f}{}\u{1f}{:?}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}\n",
                    code.value(i),
                    meal.site,
                    meal.genetique,
                    meal.month,
                    meal.jour,
                    meal.moment,
                    meal.dose_theorique,
                    meal.dose_reelle
                )
                .as_bytes(),
            );
            rows.push((code.value(i).to_string(), meal));
        }
    }
    let mut known = std::collections::HashMap::new();
    for batch in &outcomes {
        let code = batch.column(0).as_string::<i32>();
        let (itm, foie) = (
            batch.column(1).as_primitive::<Float64Type>(),
            batch.column(2).as_primitive::<Float64Type>(),
        );
        for i in 0..batch.num_rows() {
            hasher.update(
                format!(
                    "{}\u{1f}{}\u{1f}{}\n",
                    code.value(i),
                    itm.value(i),
                    foie.value(i)
                )
                .as_bytes(),
            );
            known.insert(code.value(i).to_string(), (itm.value(i), foie.value(i)));
        }
    }
    if rows.is_empty() {
        anyhow::bail!("{} holds no gavage meal", root.display());
    }
    Ok(Recorded {
        lots: training::group_by_lot(rows),
        outcomes: known,
        digest: hex::encode(hasher.finalize()),
    })
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

/// `gaveurs model train --model outcome`: writes the early lot outcome model trained on every
/// lot of `data` with an outcome.
pub fn train_outcome(data: &Path, out: &Path) -> anyhow::Result<String> {
    let recorded = read_recorded(data)?;
    let all: Vec<&TrainingLot> = recorded.lots.iter().collect();
    let model = outcome::train(&all, &recorded.outcomes, &recorded.digest)?;
    write_artifact(out, &model)?;
    Ok(format!(
        "{}: {} trained on {} lots with an outcome ({} day models)",
        out.display(),
        model.version,
        model.training.lots,
        model.days.len()
    ))
}

fn write_artifact(out: &Path, model: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut json = serde_json::to_string_pretty(model)?;
    json.push('\n');
    std::fs::write(out, json).with_context(|| format!("writing {}", out.display()))
}

/// `gaveurs model train`: writes the meal model trained on `data` to `out` and returns a
/// summary for the terminal.
pub fn train(data: &Path, out: &Path, seed: u64) -> anyhow::Result<String> {
    let Recorded { lots, digest, .. } = read_recorded(data)?;
    let options = TrainingOptions {
        seed,
        conditions: simulated_conditions(seed)?,
        ..TrainingOptions::default()
    };
    let model = training::train(&lots, &digest, &options)?;
    write_artifact(out, &model)?;
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

/// Stations the SQAL model learns from: the simulator's (`gaveurs simulate`), `samples`
/// measurements in turn from six stations (two per site), grouped by station in the order
/// they measured. The same seed gives the same samples.
pub fn simulated_stations(seed: u64, samples: usize) -> anyhow::Result<Stations> {
    const STATIONS: usize = 6;
    let day = chrono::NaiveDate::from_ymd_opt(2026, 1, 5).expect("a date");
    let mut farm = gaveurs_loadgen::simulate::Farm::new(seed, 1, 1, STATIONS, day);
    let start = day.and_hms_opt(6, 0, 0).expect("a time").and_utc();
    let mut stations: std::collections::BTreeMap<String, Vec<SqalSample>> = Default::default();
    for i in 0..samples {
        let at = start + chrono::Duration::seconds(30 * i as i64);
        let outgoing = farm
            .next_sample_without_extras(at)
            .context("the simulator has no station")?;
        let sample = SqalSample::decode(&serde_json::to_vec(&outgoing.body)?)
            .map_err(|e| anyhow::anyhow!("a simulated sample does not validate: {e}"))?;
        stations
            .entry(sample.device_id.clone())
            .or_default()
            .push(sample);
    }
    Ok(stations.into_values().collect())
}

/// Meals of the simulator's farms the conditions learn from.
const CONDITION_MEALS: usize = 20_000;

/// The meal model's conditions (weight gain, mortality rise, barn climate), learnt from the
/// simulator's farms (`gaveurs simulate`'s, seeded): `../shared/data` has none of these fields.
pub fn simulated_conditions(seed: u64) -> anyhow::Result<conditions::ConditionModel> {
    let day = chrono::NaiveDate::from_ymd_opt(2026, 1, 5).expect("a date");
    let mut farm = gaveurs_loadgen::simulate::Farm::new(seed, 60, 20, 0, day);
    let zones = SiteTimeZones::default();
    let mut by_lot: std::collections::BTreeMap<String, Vec<(i64, conditions::Conditions)>> =
        Default::default();
    let mut meals = 0;
    while meals < CONDITION_MEALS {
        for outgoing in farm.next_meal() {
            if !outgoing.topic.ends_with("/gavage") {
                continue;
            }
            let meal = GavageMeal::decode(&serde_json::to_vec(&outgoing.body)?, &zones)
                .map_err(|e| anyhow::anyhow!("a simulated meal does not validate: {e}"))?;
            meals += 1;
            by_lot.entry(meal.code_lot.clone()).or_default().push((
                meal.jour,
                conditions::Conditions {
                    poids_moyen: meal.poids_moyen,
                    taux_mortalite: meal.taux_mortalite,
                    temperature_stabule: meal.temperature_stabule,
                    humidite_stabule: meal.humidite_stabule,
                },
            ));
        }
    }
    conditions::train(&by_lot.into_values().collect::<Vec<_>>())
}

/// Simulated samples the SQAL model fits on; half as many more set its threshold.
pub const SQAL_TRAINING_SAMPLES: usize = 12_000;

/// `gaveurs model train --model sqal`: writes the SQAL model trained on the simulator's stations.
pub fn train_sqal(out: &Path, seed: u64) -> anyhow::Result<String> {
    let fitting = simulated_stations(seed, SQAL_TRAINING_SAMPLES)?;
    let validation = simulated_stations(seed + 1, SQAL_TRAINING_SAMPLES / 2)?;
    let model = sqal_model::train(&fitting, &validation, "simulator", seed)?;
    write_artifact(out, &model)?;
    Ok(format!(
        "{}: {} trained on {} simulated samples; threshold {} flags {:.2} % of {} more",
        out.display(),
        model.version,
        model.training.samples,
        model.threshold,
        model.evaluation.flagged_share * 100.0,
        model.evaluation.validation_samples
    ))
}

/// `gaveurs model eval`: the report of [`evaluation::evaluate`], then the early lot outcome's
/// ([`outcome::evaluate`]), then the SQAL model's ([`sqal_evaluation::evaluate`]).
pub fn eval(data: &Path, seed: u64) -> anyhow::Result<String> {
    let recorded = read_recorded(data)?;
    let mut report = evaluation::evaluate(&recorded.lots, seed, 0.3)?.render();
    report.push_str(&outcome::evaluate(
        &recorded.lots,
        &recorded.outcomes,
        seed,
        0.3,
    )?);
    report.push_str(&eval_sqal(seed)?);
    Ok(report)
}

/// The SQAL part of `gaveurs model eval`: trained and thresholded as `gaveurs model train
/// --sqal` does, tested on a third run of the simulator.
pub fn eval_sqal(seed: u64) -> anyhow::Result<String> {
    let fitting = simulated_stations(seed, SQAL_TRAINING_SAMPLES)?;
    let validation = simulated_stations(seed + 1, SQAL_TRAINING_SAMPLES / 2)?;
    let test = simulated_stations(seed + 2, SQAL_TRAINING_SAMPLES / 2)?;
    Ok(sqal_evaluation::evaluate(&fitting, &validation, &test, seed)?.render())
}

/// Each lot's (ITM, mean liver weight g) from the lots file; lots without them are left out.
fn read_outcomes(
    lots_file: &Path,
) -> anyhow::Result<std::collections::HashMap<String, (f64, f64)>> {
    let mut reader = csv::Reader::from_reader(flate2::read::MultiGzDecoder::new(
        std::fs::File::open(lots_file)
            .with_context(|| format!("reading {}", lots_file.display()))?,
    ));
    let headers = reader.headers()?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{} has no {name} column", lots_file.display()))
    };
    let (code, itm, foie) = (
        column("code_lot")?,
        column("itm")?,
        column("poids_foie_moyen_g")?,
    );
    let mut outcomes = std::collections::HashMap::new();
    for row in reader.records() {
        let row = row?;
        let number = |i: usize| row.get(i).and_then(|v| v.trim().parse::<f64>().ok());
        if let (Some(lot), Some(itm), Some(foie)) = (row.get(code), number(itm), number(foie)) {
            outcomes.insert(lot.to_string(), (itm, foie));
        }
    }
    Ok(outcomes)
}

/// `gaveurs model eval --acceptance <out>`: writes what the acceptance replay
/// (`scripts/check-anomaly-acceptance.sh`) sends through `gaveurs replay` into a plain
/// `gaveurs run`: `model.json` (trained without the test lots), `lots.csv.gz` (the test lots'
/// rows of the lots file), `meals.csv.gz` (their meals, one lot in three with an injected
/// event) and `labels.csv` (`code_lot,kind,jour,moment`: the meals within whose window an
/// `anomalies` row must appear).
pub fn acceptance(data: &Path, out: &Path, seed: u64) -> anyhow::Result<String> {
    use std::collections::HashSet;
    use std::io::Write;

    let (lots, _) = read_lots(data)?;
    let (lots_file, _) = data_files(data)?;
    let (model, set) = evaluation::acceptance_set(&lots, seed, 0.3)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut json = serde_json::to_string_pretty(&model)?;
    json.push('\n');
    std::fs::write(out.join("model.json"), json)?;

    let gz = |name: &str| -> anyhow::Result<csv::Writer<flate2::write::GzEncoder<std::fs::File>>> {
        let file = std::fs::File::create(out.join(name))?;
        Ok(csv::Writer::from_writer(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        )))
    };
    let tested: HashSet<&str> = set.iter().map(|a| a.lot.code_lot.as_str()).collect();
    let mut reader = csv::Reader::from_reader(flate2::read::MultiGzDecoder::new(
        std::fs::File::open(&lots_file)?,
    ));
    let headers = reader.headers()?.clone();
    let code = headers
        .iter()
        .position(|h| h == "code_lot")
        .context("the lots file has no code_lot column")?;
    let mut lots_out = gz("lots.csv.gz")?;
    lots_out.write_record(&headers)?;
    for row in reader.records() {
        let row = row?;
        if tested.contains(row.get(code).unwrap_or_default()) {
            lots_out.write_record(&row)?;
        }
    }
    lots_out
        .into_inner()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .finish()?;

    let mut meals_out = gz("meals.csv.gz")?;
    meals_out.write_record([
        "code_lot",
        "repas",
        "jour",
        "moment",
        "dose_theorique_g",
        "dose_reelle_g",
    ])?;
    let mut labels = std::fs::File::create(out.join("labels.csv"))?;
    writeln!(labels, "code_lot,kind,jour,moment")?;
    let mut injected = 0;
    for lot in &set {
        for (i, meal) in lot.lot.meals.iter().enumerate() {
            meals_out.write_record([
                lot.lot.code_lot.clone(),
                (i + 1).to_string(),
                meal.jour.to_string(),
                meal.moment.as_str().to_string(),
                format!("{:.2}", meal.dose_theorique),
                format!("{:.2}", meal.dose_reelle),
            ])?;
        }
        if let Some((kind, window)) = &lot.event {
            injected += 1;
            for (jour, moment) in window {
                writeln!(labels, "{},{kind:?},{jour},{moment}", lot.lot.code_lot)?;
            }
        }
    }
    meals_out
        .into_inner()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .finish()?;
    Ok(format!(
        "{}: {} test lots ({injected} with an injected event), model {} (threshold {})",
        out.display(),
        set.len(),
        model.version,
        model.threshold
    ))
}
