//! The alert rules of SPEC §5 and their configuration (`[alerts]`).
//!
//! Every rule measures one quantity of a record and compares it with a threshold per
//! severity; the most severe threshold crossed wins. What a rule measures and in which
//! direction it compares is fixed; its thresholds, hysteresis and cooldown are configuration:
//!
//! ```toml
//! [alerts]
//! hysteresis = 3        # evaluations without the condition that clear an alert
//! cooldown_min = 30     # minutes of event time before a cleared key may open again
//!
//! [alerts.rules.temperature]
//! warning = { low = 18, high = 25 }   # ≤ low or ≥ high
//! critical = { low = 15, high = 28 }
//!
//! [alerts.rules.dose_ecart]
//! critical = 30         # |ecart_pct| ≥ 30
//! hysteresis = 5
//!
//! [alerts.rules.humidite]
//! enabled = false
//! ```
//!
//! | rule | measures | alert when | defaults |
//! |---|---|---|---|
//! | `quality_critical` | SQAL `final_score` | < threshold | critical 0.40 |
//! | `quality_low` | SQAL `final_score` | < threshold, and not below `quality_critical`'s | warning 0.60 |
//! | `grade_reject` | SQAL `final_score` | < threshold (grade `REJECT` is a score below 0.45) | critical 0.45 |
//! | `oxidation_high` | `as7341.oxidation_index` | > threshold | warning 0.7 |
//! | `freshness_low` | `as7341.freshness_index` | < threshold | warning 0.5 |
//! | `refus_alimentaire` | `dose_reelle / dose_theorique × 100` | ≤ threshold | critical 70 |
//! | `dose_ecart` | `abs(ecart_pct)` | ≥ threshold, not while `refus_alimentaire` is active for the lot | warning 10, critical 25 |
//! | `temperature` | `temperature_stabule` °C | ≤ low or ≥ high | warning 18/25, critical 15/28 |
//! | `humidite` | `humidite_stabule` % | ≤ low or ≥ high | warning 50/75 |
//! | `mortalite_lot` | `taux_mortalite` % | ≥ threshold | critical 5 |
//! | `poids_perte` | drop of `poids_moyen` since the lot's previous meal, g | ≥ threshold | warning 80, critical 150 |
//! | `anomalie` | a meal's (per lot) or a SQAL sample's (per station) anomaly score ÷ its model's threshold (`[ml]`) | ≥ threshold | warning 1 |
//!
//! A rule whose field is absent from a record is not evaluated for it (neither true nor
//! false); `anomalie` is not evaluated when scoring is off (`[ml] enabled = false`).

use std::collections::BTreeMap;

use chrono::Duration;
use gaveurs_schemas::alert::Severity;
use serde::{Deserialize, Serialize};

/// `[alerts]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Consecutive evaluations without the condition that clear an alert.
    pub hysteresis: u32,
    /// Minutes of event time a cleared alert's key waits before it may open again.
    pub cooldown_min: f64,
    /// Changes to the built-in rules, by rule name (see the table above).
    pub rules: BTreeMap<String, RuleOverride>,
    /// How often the alert state is saved while records flow (default 1000 ms): after a
    /// crash, records since the last save are evaluated again (harmlessly, see
    /// ARCHITECTURE.md), so this trades disk writes for replay work.
    pub state_save_interval_ms: u64,
    /// How often transitions are written to the `alerts` dataset, seconds (default: the
    /// Parquet roll interval, `[storage] roll_interval_s`).
    pub publish_interval_s: Option<u64>,
    /// A lot without a meal for this many days of event time is forgotten by the rules (its
    /// last weight, owner); its active alerts stay. Default 30.
    pub lot_idle_days: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            hysteresis: 3,
            cooldown_min: 30.0,
            rules: BTreeMap::new(),
            state_save_interval_ms: 1000,
            publish_interval_s: None,
            lot_idle_days: 30,
        }
    }
}

/// `[alerts.rules.<name>]`: what to change in one rule; anything left out keeps its default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleOverride {
    pub enabled: Option<bool>,
    pub info: Option<Threshold>,
    pub warning: Option<Threshold>,
    pub critical: Option<Threshold>,
    pub hysteresis: Option<u32>,
    pub cooldown_min: Option<f64>,
}

/// A number, or `{ low, high }` for the rules that alert outside a band.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Threshold {
    Value(f64),
    Band(Band),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Band {
    pub low: f64,
    pub high: f64,
}

/// Whether a rule is about a lot (gavage records) or a SQAL station.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Lot,
    Device,
}

/// What a rule measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    FinalScore,
    OxidationIndex,
    FreshnessIndex,
    DoseRatioPct,
    EcartPctAbs,
    Temperature,
    Humidity,
    Mortality,
    WeightDrop,
    /// The meal model's score over its threshold.
    AnomalyScore,
}

/// How a measure is compared with a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    Below,
    AtMost,
    Above,
    AtLeast,
    /// `≤ low or ≥ high`.
    Outside,
}

impl Compare {
    /// The threshold crossed, if `value` crosses `threshold`.
    fn crossed(self, value: f64, threshold: Threshold) -> Option<f64> {
        match (self, threshold) {
            (Compare::Below, Threshold::Value(t)) => (value < t).then_some(t),
            (Compare::AtMost, Threshold::Value(t)) => (value <= t).then_some(t),
            (Compare::Above, Threshold::Value(t)) => (value > t).then_some(t),
            (Compare::AtLeast, Threshold::Value(t)) => (value >= t).then_some(t),
            (Compare::Outside, Threshold::Band(b)) => {
                if value <= b.low {
                    Some(b.low)
                } else if value >= b.high {
                    Some(b.high)
                } else {
                    None
                }
            }
            _ => None,
        }
    }
}

/// A rule ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: &'static str,
    pub subject: Subject,
    pub metric: Metric,
    pub compare: Compare,
    /// Most severe first.
    pub levels: Vec<(Severity, Threshold)>,
    pub hysteresis: u32,
    pub cooldown: Duration,
}

impl Rule {
    /// The most severe level `value` reaches, with the threshold it crossed.
    pub fn level(&self, value: f64) -> Option<(Severity, f64)> {
        self.levels.iter().find_map(|(severity, threshold)| {
            self.compare
                .crossed(value, *threshold)
                .map(|t| (*severity, t))
        })
    }
}

struct Builtin {
    name: &'static str,
    subject: Subject,
    metric: Metric,
    compare: Compare,
    levels: &'static [(Severity, Threshold)],
}

const fn band(low: f64, high: f64) -> Threshold {
    Threshold::Band(Band { low, high })
}

use Severity::{Critical, Warning};
use Threshold::Value;

const BUILTIN: &[Builtin] = &[
    Builtin {
        name: "quality_critical",
        subject: Subject::Device,
        metric: Metric::FinalScore,
        compare: Compare::Below,
        levels: &[(Critical, Value(0.40))],
    },
    Builtin {
        name: "quality_low",
        subject: Subject::Device,
        metric: Metric::FinalScore,
        compare: Compare::Below,
        levels: &[(Warning, Value(0.60))],
    },
    Builtin {
        name: "grade_reject",
        subject: Subject::Device,
        metric: Metric::FinalScore,
        compare: Compare::Below,
        levels: &[(Critical, Value(0.45))],
    },
    Builtin {
        name: "oxidation_high",
        subject: Subject::Device,
        metric: Metric::OxidationIndex,
        compare: Compare::Above,
        levels: &[(Warning, Value(0.7))],
    },
    Builtin {
        name: "freshness_low",
        subject: Subject::Device,
        metric: Metric::FreshnessIndex,
        compare: Compare::Below,
        levels: &[(Warning, Value(0.5))],
    },
    Builtin {
        name: REFUS_ALIMENTAIRE,
        subject: Subject::Lot,
        metric: Metric::DoseRatioPct,
        compare: Compare::AtMost,
        levels: &[(Critical, Value(70.0))],
    },
    Builtin {
        name: DOSE_ECART,
        subject: Subject::Lot,
        metric: Metric::EcartPctAbs,
        compare: Compare::AtLeast,
        levels: &[(Critical, Value(25.0)), (Warning, Value(10.0))],
    },
    Builtin {
        name: "temperature",
        subject: Subject::Lot,
        metric: Metric::Temperature,
        compare: Compare::Outside,
        levels: &[(Critical, band(15.0, 28.0)), (Warning, band(18.0, 25.0))],
    },
    Builtin {
        name: "humidite",
        subject: Subject::Lot,
        metric: Metric::Humidity,
        compare: Compare::Outside,
        levels: &[(Warning, band(50.0, 75.0))],
    },
    Builtin {
        name: "mortalite_lot",
        subject: Subject::Lot,
        metric: Metric::Mortality,
        compare: Compare::AtLeast,
        levels: &[(Critical, Value(5.0))],
    },
    Builtin {
        name: "poids_perte",
        subject: Subject::Lot,
        metric: Metric::WeightDrop,
        compare: Compare::AtLeast,
        levels: &[(Critical, Value(150.0)), (Warning, Value(80.0))],
    },
    Builtin {
        name: ANOMALIE,
        subject: Subject::Lot,
        metric: Metric::AnomalyScore,
        compare: Compare::AtLeast,
        levels: &[(Warning, Value(1.0))],
    },
];

/// A longer cooldown is surely a typo; it would also overflow event-time arithmetic.
const MAX_COOLDOWN_MIN: f64 = 525_600.0;

pub const REFUS_ALIMENTAIRE: &str = "refus_alimentaire";
pub const ANOMALIE: &str = "anomalie";
pub const DOSE_ECART: &str = "dose_ecart";
pub const QUALITY_CRITICAL: &str = "quality_critical";
pub const QUALITY_LOW: &str = "quality_low";

/// The names of every built-in rule.
pub fn rule_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|b| b.name)
}

/// Every enabled rule, compiled from the built-in table and `[alerts]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    /// See [`AlertsConfig::lot_idle_days`].
    pub lot_idle: Duration,
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet::from_config(&AlertsConfig::default()).expect("the built-in rules are valid")
    }
}

impl RuleSet {
    /// Applies `[alerts]` to the built-in rules; an error names the rule and what is wrong.
    pub fn from_config(config: &AlertsConfig) -> Result<RuleSet, String> {
        if let Some(unknown) = config
            .rules
            .keys()
            .find(|name| !BUILTIN.iter().any(|b| b.name == name.as_str()))
        {
            return Err(format!(
                "[alerts.rules.{unknown}]: no such rule (rules: {})",
                rule_names().collect::<Vec<_>>().join(", ")
            ));
        }
        let mut rules = Vec::new();
        for builtin in BUILTIN {
            let changes = config.rules.get(builtin.name).cloned().unwrap_or_default();
            if changes.enabled == Some(false) {
                continue;
            }
            let hysteresis = changes.hysteresis.unwrap_or(config.hysteresis);
            let cooldown_min = changes.cooldown_min.unwrap_or(config.cooldown_min);
            let context = |what: &str| format!("[alerts.rules.{}]: {what}", builtin.name);
            if hysteresis == 0 {
                return Err(context("hysteresis must be at least 1"));
            }
            if !(cooldown_min.is_finite() && (0.0..=MAX_COOLDOWN_MIN).contains(&cooldown_min)) {
                return Err(context(&format!(
                    "cooldown_min must be a number of minutes from 0 to {MAX_COOLDOWN_MIN} (a year)"
                )));
            }
            let mut levels: Vec<(Severity, Threshold)> = builtin.levels.to_vec();
            for (severity, threshold) in [
                (Severity::Critical, changes.critical),
                (Severity::Warning, changes.warning),
                (Severity::Info, changes.info),
            ] {
                let Some(threshold) = threshold else { continue };
                if let Threshold::Band(band) = threshold
                    && band.low.partial_cmp(&band.high) != Some(std::cmp::Ordering::Less)
                {
                    return Err(context(&format!(
                        "{}: low ({}) must be below high ({})",
                        severity.as_str(),
                        band.low,
                        band.high
                    )));
                }
                let banded = matches!(threshold, Threshold::Band(_));
                if banded != (builtin.compare == Compare::Outside) {
                    return Err(context(&format!(
                        "{} must be {}",
                        severity.as_str(),
                        if builtin.compare == Compare::Outside {
                            "a band, e.g. { low = 18, high = 25 }"
                        } else {
                            "a number"
                        }
                    )));
                }
                levels.retain(|(s, _)| *s != severity);
                levels.push((severity, threshold));
            }
            levels.sort_by_key(|(severity, _)| std::cmp::Reverse(*severity));
            rules.push(Rule {
                name: builtin.name,
                subject: builtin.subject,
                metric: builtin.metric,
                compare: builtin.compare,
                levels,
                hysteresis,
                cooldown: Duration::milliseconds((cooldown_min * 60_000.0).round() as i64),
            });
        }
        Ok(RuleSet {
            rules,
            lot_idle: Duration::days(config.lot_idle_days.min(36_500) as i64),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }
}
