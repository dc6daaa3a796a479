//! Anomaly scoring (SPEC §3 `anomalies`, §5 `anomalie`): models trained on real lots
//! ([`training`]), scored on every record ([`meal_model`]), and measured on injected
//! anomalies ([`evaluation`]).

pub mod density;
pub mod desk;
pub mod evaluation;
pub mod meal_model;
pub mod outcome;
pub mod training;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use meal_model::MealModel;

/// The meal model trained on `../shared/data` (model parameters only, no data rows),
/// reproduced byte for byte by `gaveurs model train --data ../shared/data --out
/// operators/models/gavage_meal.json`.
pub const DEFAULT_MEAL_MODEL: &str = include_str!("../../models/gavage_meal.json");

/// `[ml]`: anomaly scoring.
///
/// ```toml
/// [ml]
/// enabled = true                        # score every meal (default)
/// meal_model = "models/gavage_meal.json" # default: the model built into the binary
/// threshold = 3.5                       # default: the artifact's own
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlConfig {
    pub enabled: bool,
    /// A meal model artifact written by `gaveurs model train`; default the built-in one.
    pub meal_model: Option<PathBuf>,
    /// Overrides the artifact's threshold.
    pub threshold: Option<f64>,
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
            max_lots: 50_000,
            state_save_interval_ms: 1000,
        }
    }
}

impl MlConfig {
    /// The meal model this configuration names, checked, with its threshold overridden if
    /// asked; relative paths are read from `base`.
    pub fn meal_model(&self, base: &Path) -> anyhow::Result<MealModel> {
        let mut model = match &self.meal_model {
            Some(path) => load_meal_model(&base.join(path))?,
            None => parse_meal_model(DEFAULT_MEAL_MODEL.as_bytes())
                .map_err(|e| anyhow::anyhow!("the built-in meal model: {e}"))?,
        };
        if let Some(threshold) = self.threshold {
            if !(threshold.is_finite() && threshold > 0.0) {
                anyhow::bail!("[ml] threshold = {threshold} is not a positive number");
            }
            model.threshold = threshold;
        }
        Ok(model)
    }
}

/// Reads an artifact and checks it (`MealModel::check`).
pub fn parse_meal_model(bytes: &[u8]) -> Result<MealModel, String> {
    let model: MealModel =
        serde_json::from_slice(bytes).map_err(|e| format!("not a meal model artifact: {e}"))?;
    model.check()?;
    Ok(model)
}

pub fn load_meal_model(path: &Path) -> anyhow::Result<MealModel> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    parse_meal_model(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
