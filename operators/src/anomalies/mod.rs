//! Anomaly scoring (SPEC §3 `anomalies`, §5 `anomalie`): models trained on real lots
//! ([`training`]), scored on every record ([`meal_model`]), and measured on injected
//! anomalies ([`evaluation`]).

pub mod conditions;
pub mod density;
pub mod desk;
pub mod evaluation;
pub mod meal_model;
pub mod outcome;
pub mod sqal_evaluation;
pub mod sqal_model;
pub mod training;

#[cfg(test)]
mod sqal_tests;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use meal_model::MealModel;
use outcome::OutcomeModel;
use sqal_model::SqalModel;

/// The meal model trained on `../shared/data` (model parameters only, no data rows),
/// reproduced byte for byte by `gaveurs model train --data ../shared/data --out
/// operators/models/gavage_meal.json`.
pub const DEFAULT_MEAL_MODEL: &str = include_str!("../../models/gavage_meal.json");
/// The SQAL model trained on the simulator's stations, reproduced byte for byte by
/// `gaveurs model train --model sqal --out operators/models/sqal_sample.json`.
pub const DEFAULT_SQAL_MODEL: &str = include_str!("../../models/sqal_sample.json");
/// The early lot outcome model trained on `../shared/data`, reproduced byte for byte by
/// `gaveurs model train --model outcome --data ../shared/data --out
/// operators/models/lot_outcome.json`.
pub const DEFAULT_OUTCOME_MODEL: &str = include_str!("../../models/lot_outcome.json");

/// `[ml]`: anomaly scoring.
///
/// ```toml
/// [ml]
/// enabled = true                        # score every meal (default)
/// meal_model = "models/gavage_meal.json" # default: the model built into the binary
/// threshold = 3.5                       # default: the artifact's own
/// sqal_model = "models/sqal_sample.json" # default: the model built into the binary
/// sqal_threshold = 12.0                 # default: the artifact's own
/// outcome_model = "models/lot_outcome.json" # default: the model built into the binary
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlConfig {
    pub enabled: bool,
    /// A meal model artifact written by `gaveurs model train`; default the built-in one.
    pub meal_model: Option<PathBuf>,
    /// Overrides the meal model artifact's threshold.
    pub threshold: Option<f64>,
    /// A SQAL model artifact written by `gaveurs model train --model sqal`; default the built-in one.
    pub sqal_model: Option<PathBuf>,
    /// Overrides the SQAL model artifact's threshold.
    pub sqal_threshold: Option<f64>,
    /// A lot outcome model artifact written by `gaveurs model train --model outcome`; default
    /// the built-in one.
    pub outcome_model: Option<PathBuf>,
    /// Lots whose track is kept (default 50000); past it the least recently fed are
    /// forgotten and scored by the cold models if they come back.
    pub max_lots: usize,
    /// How often the scoring state is saved while records flow (default 1000 ms).
    pub state_save_interval_ms: u64,
}

impl Default for MlConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            meal_model: None,
            threshold: None,
            sqal_model: None,
            sqal_threshold: None,
            outcome_model: None,
            max_lots: 50_000,
            state_save_interval_ms: 1000,
        }
    }
}

impl MlConfig {
    /// The meal model this configuration names, checked, with its threshold overridden if
    /// asked; relative paths are read from `base`.
    pub fn meal_model(&self, base: &Path) -> anyhow::Result<MealModel> {
        let mut model: MealModel = artifact(self.meal_model.as_deref(), DEFAULT_MEAL_MODEL, base)?;
        if let Some(threshold) = override_threshold(self.threshold, "threshold")? {
            model.threshold = threshold;
        }
        Ok(model)
    }

    /// The SQAL model this configuration names, as [`MlConfig::meal_model`].
    pub fn sqal_model(&self, base: &Path) -> anyhow::Result<SqalModel> {
        let mut model: SqalModel = artifact(self.sqal_model.as_deref(), DEFAULT_SQAL_MODEL, base)?;
        if let Some(threshold) = override_threshold(self.sqal_threshold, "sqal_threshold")? {
            model.threshold = threshold;
        }
        Ok(model)
    }

    /// Both models, each checked: what the desk scores with.
    pub fn models(&self, base: &Path) -> anyhow::Result<Models> {
        Ok(Models {
            meal: self
                .meal_model(base)
                .map_err(|e| e.context("[ml] meal_model"))?,
            sqal: self
                .sqal_model(base)
                .map_err(|e| e.context("[ml] sqal_model"))?,
            outcome: artifact(self.outcome_model.as_deref(), DEFAULT_OUTCOME_MODEL, base)
                .map_err(|e| e.context("[ml] outcome_model"))?,
        })
    }

    /// The artifact files this configuration names (the built-in models have none).
    pub fn artifact_paths(&self, base: &Path) -> Vec<PathBuf> {
        [&self.meal_model, &self.sqal_model, &self.outcome_model]
            .into_iter()
            .flatten()
            .map(|p| base.join(p))
            .collect()
    }
}

/// The models scoring runs with, swapped together.
#[derive(Debug, Clone, PartialEq)]
pub struct Models {
    pub meal: MealModel,
    pub sqal: SqalModel,
    /// Predicts a lot's ITM and liver weight on its KPI row (the analytics operator).
    pub outcome: OutcomeModel,
}

fn override_threshold(value: Option<f64>, key: &str) -> anyhow::Result<Option<f64>> {
    match value {
        Some(t) if !(t.is_finite() && t > 0.0) => {
            anyhow::bail!("[ml] {key} = {t} is not a positive number")
        }
        other => Ok(other),
    }
}

/// The checks every artifact starts with: its model's name and the layout this binary reads.
pub(crate) fn check_header(
    model: &str,
    format: u32,
    expected: &str,
    expected_format: u32,
    kind: &str,
) -> Result<(), String> {
    if model != expected {
        return Err(format!("model {model:?} is not the {kind} {expected:?}"));
    }
    if format != expected_format {
        return Err(format!(
            "artifact format {format} is not {expected_format}, the one this binary reads"
        ));
    }
    Ok(())
}

/// The version a trained model gets: `<name>-` and 12 hex digits of the SHA-256 of its JSON
/// with an empty version, so the same training gives the same version.
pub(crate) fn version_digest(name: &str, unversioned: &impl Serialize) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(unversioned).expect("a model serialises");
    format!(
        "{name}-{}",
        &hex::encode(sha2::Sha256::digest(&bytes))[..12]
    )
}

/// An artifact a loader can check before trusting it.
pub trait Artifact: DeserializeOwned {
    /// What the artifact is, for errors: "meal model".
    const KIND: &'static str;
    fn check(&self) -> Result<(), String>;
}

impl Artifact for MealModel {
    const KIND: &'static str = "meal model";
    fn check(&self) -> Result<(), String> {
        MealModel::check(self)
    }
}

impl Artifact for OutcomeModel {
    const KIND: &'static str = "lot outcome model";
    fn check(&self) -> Result<(), String> {
        OutcomeModel::check(self)
    }
}

impl Artifact for SqalModel {
    const KIND: &'static str = "SQAL model";
    fn check(&self) -> Result<(), String> {
        SqalModel::check(self)
    }
}

/// The artifact at `path` (relative to `base`), or the built-in one.
fn artifact<T: Artifact>(path: Option<&Path>, built_in: &str, base: &Path) -> anyhow::Result<T> {
    match path {
        Some(path) => load_artifact(&base.join(path)),
        None => parse_artifact(built_in.as_bytes())
            .map_err(|e| anyhow::anyhow!("the built-in {}: {e}", T::KIND)),
    }
}

/// Reads an artifact and checks it.
pub fn parse_artifact<T: Artifact>(bytes: &[u8]) -> Result<T, String> {
    let model: T =
        serde_json::from_slice(bytes).map_err(|e| format!("not a {} artifact: {e}", T::KIND))?;
    model.check()?;
    Ok(model)
}

pub fn load_artifact<T: Artifact>(path: &Path) -> anyhow::Result<T> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    parse_artifact(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Reads a meal model artifact and checks it (`MealModel::check`).
pub fn parse_meal_model(bytes: &[u8]) -> Result<MealModel, String> {
    parse_artifact(bytes)
}
