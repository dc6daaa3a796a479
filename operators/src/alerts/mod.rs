//! The alert operator (SPEC §5): rules evaluated on every accepted record, and the lifecycle
//! of the alerts they raise.
//!
//! An alert's key is its rule plus its lot (gavage rules) or station (SQAL rules). A key has
//! at most one active alert: the first evaluation that finds the condition opens it, later
//! ones update it (count, last value, and its severity only ever rises), its gaveur or a
//! superviseur may acknowledge it, and it clears after `hysteresis` consecutive evaluations
//! without the condition. A cleared key opens again only once `cooldown` of event time has
//! passed since it cleared, so a flapping sensor gives one alert, not a storm. A lot's
//! outcome (slaughter) clears its active alerts.
//!
//! The book is plain data: one thread evaluates records in log order, so two connections (or
//! Kafka partitions) delivering records of one lot at once still meet one book and one
//! active alert. Log order is event order for each station and gateway (each sends its
//! records in the order it took them); a record older than ones already evaluated is still
//! evaluated, whatever its age, and never moves an alert's times backwards. Log order, not a
//! sort by event time, because it is the one order a replay after a crash reproduces
//! exactly. Its state serialises (serde), so the pipeline can keep it across restarts.
//! An alert's id is derived from its key and opening event time, so evaluating the same
//! records again after a crash reopens the same alert under the same id.

pub mod desk;
pub mod rules;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use gaveurs_schemas::alert::{Alert, AlertChange, AlertState, Severity, Transition};
use gaveurs_schemas::event::Event;
use gaveurs_schemas::records::{GavageMeal, LotOutcome, Record, SqalSample};
use serde::{Deserialize, Serialize};

use crate::anomalies::Models;
use crate::anomalies::meal_model::LotTrack;
use crate::anomalies::sqal_model::DeviceTrack;
use rules::{
    ANOMALIE, Metric, QUALITY_CRITICAL, QUALITY_LOW, REFUS_ALIMENTAIRE, Rule, RuleSet, Subject,
};

/// One transition, and whether it calls for a text message.
#[derive(Debug, Clone, PartialEq)]
pub struct Raised {
    pub change: AlertChange,
    /// The alert's opening (or its rise to a texted severity) came from a live record and
    /// no SMS was asked for this opening yet.
    pub text: bool,
}

/// When and how a record is judged: its event time, whether it is backfill, the least
/// severity texted, and the time that stamps the changes.
#[derive(Debug, Clone, Copy)]
struct Judged {
    at: DateTime<Utc>,
    backfill: bool,
    text_from: Severity,
    now: DateTime<Utc>,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertCounters {
    pub evaluated: u64,
    pub opened: u64,
    pub updated: u64,
    pub cleared: u64,
    pub acknowledged: u64,
    /// Conditions seen on a key still in its cooldown.
    pub suppressed: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KeyState {
    active: Option<Alert>,
    /// Evaluations in a row without the condition, while active.
    clear_streak: u32,
    /// The last cleared alert of the key: its event time starts the cooldown.
    last_cleared: Option<Alert>,
    /// An SMS was asked for the active alert.
    texted: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct LotContext {
    gaveur_id: i64,
    site: String,
    /// The newest meal's event time: a lot quiet for `AlertsConfig::lot_idle_days` is
    /// forgotten.
    #[serde(default)]
    last_seen: Option<DateTime<Utc>>,
    /// The newest meal's mean weight, for `poids_perte`.
    last_weight: Option<(DateTime<Utc>, f64)>,
    /// What the meal model remembers of the lot, for `anomalie`.
    #[serde(default)]
    track: LotTrack,
}

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("no alert {0}")]
    Unknown(String),
    #[error("alert {0} is cleared")]
    Cleared(String),
}

/// Every alert key's state and what the rules need to remember per lot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AlertBook {
    keys: HashMap<String, KeyState>,
    lots: HashMap<String, LotContext>,
    /// Each station's SQAL model track, for the `anomalie` rule on samples.
    #[serde(default)]
    stations: HashMap<String, DeviceTrack>,
    /// The book's clock: the newest event time evaluated, never ahead of the wall clock (a
    /// record dated in the future must not make everything look quiet).
    #[serde(default)]
    clock: Option<DateTime<Utc>>,
    #[serde(skip)]
    by_id: HashMap<String, String>,
    #[serde(skip)]
    counters: AlertCounters,
}

/// How many evaluations pass between two looks for what can be forgotten.
const FORGET_EVERY: u64 = 4096;
/// Stations whose SQAL track is kept; past it every track starts again from zero (a gain
/// CUSUM restarted misses at most a drift's first samples).
const MAX_STATIONS: usize = 10_000;

fn key_of(rule: &str, subject: Subject, name: &str) -> String {
    let kind = match subject {
        Subject::Lot => "lot",
        Subject::Device => "device",
    };
    format!("{rule}\u{1f}{kind}\u{1f}{name}")
}

/// A deterministic id: the same key opening at the same event time gets the same id.
fn alert_id(key: &str, opened_at: DateTime<Utc>) -> String {
    let digest = xxhash_rust::xxh3::xxh3_64(
        format!("{key}\u{1f}{}", opened_at.timestamp_micros()).as_bytes(),
    );
    format!("{digest:016x}")
}

/// One evaluation of one rule on one record.
struct Observation<'a> {
    rule: &'a Rule,
    /// What the alert is about: the rule's subject, but a sample's for `anomalie`.
    subject: Subject,
    subject_name: &'a str,
    /// `Some` when the condition holds: severity and the threshold crossed.
    level: Option<(Severity, f64)>,
    value: f64,
}

/// What the record says about who owns the key.
struct Owner<'a> {
    code_lot: Option<&'a str>,
    device_id: Option<&'a str>,
    gaveur_id: Option<i64>,
    site: &'a str,
}

impl AlertBook {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the indexes a deserialised book does not carry.
    pub fn reindex(&mut self) {
        self.by_id = self
            .keys
            .iter()
            .filter_map(|(key, state)| {
                state
                    .active
                    .as_ref()
                    .map(|a| (a.alert_id.clone(), key.clone()))
            })
            .collect();
    }

    pub fn counters(&self) -> AlertCounters {
        self.counters
    }

    /// Evaluates every rule on one accepted record and moves the alerts it concerns.
    /// `text_from` is the least severity that is texted (SMS); `now` stamps the changes.
    pub fn evaluate(
        &mut self,
        rules: &RuleSet,
        event: &Event,
        text_from: Severity,
        now: DateTime<Utc>,
    ) -> Vec<Raised> {
        self.evaluate_scored(rules, None, event, text_from, now)
    }

    /// [`AlertBook::evaluate`] with the anomaly models for the `anomalie` rule (`None` when
    /// scoring is off: the rule is then not evaluated).
    pub fn evaluate_scored(
        &mut self,
        rules: &RuleSet,
        models: Option<&Models>,
        event: &Event,
        text_from: Severity,
        now: DateTime<Utc>,
    ) -> Vec<Raised> {
        self.counters.evaluated += 1;
        let at = event.envelope.event_time;
        self.clock = self.clock.max(Some(at.min(Utc::now())));
        // Every so many evaluations (a count, so a replay forgets at the same points).
        if self.counters.evaluated.is_multiple_of(FORGET_EVERY) {
            self.forget_quiet(rules);
        }
        let backfill = event.envelope.backfill;
        let mut raised = Vec::new();
        match &event.record {
            Record::Gavage(meal) => {
                let judged = Judged {
                    at,
                    backfill,
                    text_from,
                    now,
                };
                self.evaluate_meal(rules, models, meal, judged, &mut raised)
            }
            Record::Sqal(sample) => {
                let judged = Judged {
                    at,
                    backfill,
                    text_from,
                    now,
                };
                self.evaluate_sample(rules, models, sample, judged, &mut raised)
            }
            Record::LotOutcome(outcome) => self.finish_lot(outcome, now, &mut raised),
        }
        raised
    }

    fn evaluate_meal(
        &mut self,
        rules: &RuleSet,
        models: Option<&Models>,
        meal: &GavageMeal,
        judged: Judged,
        raised: &mut Vec<Raised>,
    ) {
        let Judged {
            at,
            backfill,
            text_from,
            now,
        } = judged;
        let lot = self.lots.entry(meal.code_lot.clone()).or_default();
        // The same model on the same records in the same order as the anomaly desk, so the
        // rule opens on the meals the `anomalies` dataset holds.
        let anomaly = models
            .map(|m| &m.meal)
            .filter(|_| rules.get(ANOMALIE).is_some())
            .and_then(|model| {
                let facts = crate::anomalies::meal_model::MealFacts::from(meal);
                model
                    .score(&mut lot.track, &facts)
                    .map(|score| score.score / model.threshold)
            });
        lot.gaveur_id = meal.gaveur_id;
        lot.site = meal.site.as_str().to_string();
        lot.last_seen = lot.last_seen.max(Some(at));
        let weight_drop = match (lot.last_weight, meal.poids_moyen) {
            (Some((previous_at, previous)), Some(weight)) if previous_at < at => {
                Some(previous - weight)
            }
            _ => None,
        };
        if let Some(weight) = meal.poids_moyen
            && lot
                .last_weight
                .is_none_or(|(previous_at, _)| previous_at < at)
        {
            lot.last_weight = Some((at, weight));
        }
        let owner = Owner {
            code_lot: Some(&meal.code_lot),
            device_id: None,
            gaveur_id: Some(meal.gaveur_id),
            site: meal.site.as_str(),
        };
        // refus_alimentaire first: while it is active, dose_ecart says the same thing again.
        for rule in rules.rules.iter().filter(|r| r.subject == Subject::Lot) {
            let value = match rule.metric {
                Metric::DoseRatioPct => (meal.dose_theorique > 0.0)
                    .then(|| meal.dose_reelle / meal.dose_theorique * 100.0),
                Metric::EcartPctAbs => {
                    // An underfed meal is a refusal, not also an écart — even while the
                    // refusal's alert cools down.
                    let refused = rules.get(REFUS_ALIMENTAIRE).is_some_and(|refus| {
                        meal.dose_theorique > 0.0
                            && refus
                                .level(meal.dose_reelle / meal.dose_theorique * 100.0)
                                .is_some()
                    });
                    if refused || self.is_active(REFUS_ALIMENTAIRE, Subject::Lot, &meal.code_lot) {
                        None
                    } else {
                        (meal.dose_theorique > 0.0).then(|| {
                            ((meal.dose_reelle - meal.dose_theorique) / meal.dose_theorique * 100.0)
                                .abs()
                        })
                    }
                }
                Metric::Temperature => meal.temperature_stabule,
                Metric::Humidity => meal.humidite_stabule,
                Metric::Mortality => meal.taux_mortalite,
                Metric::WeightDrop => weight_drop,
                Metric::AnomalyScore => anomaly,
                _ => None,
            };
            let Some(value) = value.filter(|v| v.is_finite()) else {
                continue;
            };
            let observation = Observation {
                rule,
                subject: Subject::Lot,
                subject_name: &meal.code_lot,
                level: rule.level(value),
                value,
            };
            self.observe(observation, &owner, at, backfill, text_from, now, raised);
        }
    }

    fn evaluate_sample(
        &mut self,
        rules: &RuleSet,
        models: Option<&Models>,
        sample: &SqalSample,
        judged: Judged,
        raised: &mut Vec<Raised>,
    ) {
        let Judged {
            at,
            backfill,
            text_from,
            now,
        } = judged;
        // The SQAL model on the same samples in the same order as the anomaly desk.
        let anomaly = models
            .map(|m| &m.sqal)
            .zip(rules.get(ANOMALIE))
            .map(|(model, rule)| {
                if self.stations.len() >= MAX_STATIONS
                    && !self.stations.contains_key(&sample.device_id)
                {
                    self.stations.clear();
                }
                let track = self.stations.entry(sample.device_id.clone()).or_default();
                (model.score(track, sample).score / model.threshold, rule)
            });
        let gaveur_id = sample
            .code_lot
            .as_deref()
            .and_then(|lot| self.lots.get(lot))
            .map(|lot| lot.gaveur_id);
        let owner = Owner {
            code_lot: sample.code_lot.as_deref(),
            device_id: Some(&sample.device_id),
            gaveur_id,
            site: sample.site_code.as_str(),
        };
        let critical_floor = rules
            .get(QUALITY_CRITICAL)
            .and_then(|r| r.levels.first())
            .and_then(|(_, t)| match t {
                rules::Threshold::Value(v) => Some(*v),
                rules::Threshold::Band(_) => None,
            });
        for rule in rules.rules.iter().filter(|r| r.subject == Subject::Device) {
            let value = match rule.metric {
                Metric::FinalScore => Some(sample.final_score),
                Metric::OxidationIndex => sample.oxidation_index,
                Metric::FreshnessIndex => sample.freshness_index,
                _ => None,
            };
            let Some(value) = value.filter(|v| v.is_finite()) else {
                continue;
            };
            let mut level = rule.level(value);
            // quality_low is the band above quality_critical: a score below both is critical only.
            if rule.name == QUALITY_LOW && critical_floor.is_some_and(|floor| value < floor) {
                level = None;
            }
            let observation = Observation {
                rule,
                subject: Subject::Device,
                subject_name: &sample.device_id,
                level,
                value,
            };
            self.observe(observation, &owner, at, backfill, text_from, now, raised);
        }
        if let Some((value, rule)) = anomaly.filter(|(v, _)| v.is_finite()) {
            let observation = Observation {
                rule,
                subject: Subject::Device,
                subject_name: &sample.device_id,
                level: rule.level(value),
                value,
            };
            self.observe(observation, &owner, at, backfill, text_from, now, raised);
        }
    }

    /// The lot is slaughtered: its active alerts clear, and the book forgets it (so it does
    /// not grow with every lot ever fed).
    fn finish_lot(&mut self, outcome: &LotOutcome, now: DateTime<Utc>, raised: &mut Vec<Raised>) {
        let suffix = format!("\u{1f}lot\u{1f}{}", outcome.code_lot);
        let keys: Vec<String> = self
            .keys
            .keys()
            .filter(|k| k.ends_with(&suffix))
            .cloned()
            .collect();
        for key in keys {
            if let Some(mut state) = self.keys.remove(&key)
                && state.active.is_some()
            {
                let change = clear(&mut state, outcome.event_time, now);
                self.by_id.remove(&change.alert.alert_id);
                self.counters.cleared += 1;
                raised.push(Raised {
                    change,
                    text: false,
                });
            }
        }
        self.lots.remove(&outcome.code_lot);
    }

    /// Forgets what no rule needs any more, so the book stays bounded whatever the history:
    /// cleared keys whose cooldown has passed, and lots without a meal for
    /// `rules.lot_idle` (in event time, behind the newest record evaluated).
    pub fn forget_quiet(&mut self, rules: &RuleSet) {
        let Some(clock) = self.clock else {
            return;
        };
        self.keys.retain(|key, state| {
            if state.active.is_some() {
                return true;
            }
            let rule = key.split('\u{1f}').next().unwrap_or_default();
            let cooldown = rules
                .get(rule)
                .map_or(chrono::Duration::zero(), |r| r.cooldown);
            state
                .last_cleared
                .as_ref()
                .and_then(|a| a.cleared_at)
                .and_then(|cleared| cleared.checked_add_signed(cooldown))
                .is_some_and(|reopens| reopens > clock)
        });
        let horizon = clock - rules.lot_idle;
        let active_lots: std::collections::HashSet<&str> = self
            .keys
            .values()
            .filter_map(|s| s.active.as_ref()?.code_lot.as_deref())
            .collect();
        self.lots.retain(|code, lot| {
            active_lots.contains(code.as_str()) || lot.last_seen.is_none_or(|t| t >= horizon)
        });
    }

    /// Keys and lots the book holds (for logs and tests).
    pub fn size(&self) -> (usize, usize) {
        (self.keys.len(), self.lots.len())
    }

    /// Clears the active alerts of rules `rules` no longer has (disabled by a reload): nothing
    /// would ever evaluate them again.
    pub fn retire_rules(&mut self, rules: &RuleSet, now: DateTime<Utc>) -> Vec<AlertChange> {
        let mut changes = Vec::new();
        for state in self.keys.values_mut() {
            let retired = state
                .active
                .as_ref()
                .is_some_and(|a| rules.get(&a.rule).is_none());
            if retired {
                let at = state.active.as_ref().map_or(now, |a| a.updated_at);
                let change = clear(state, at, now);
                self.by_id.remove(&change.alert.alert_id);
                self.counters.cleared += 1;
                changes.push(change);
            }
        }
        changes
    }

    fn is_active(&self, rule: &str, subject: Subject, name: &str) -> bool {
        self.keys
            .get(&key_of(rule, subject, name))
            .is_some_and(|s| s.active.is_some())
    }

    #[allow(clippy::too_many_arguments)]
    fn observe(
        &mut self,
        observation: Observation<'_>,
        owner: &Owner<'_>,
        at: DateTime<Utc>,
        backfill: bool,
        text_from: Severity,
        now: DateTime<Utc>,
        raised: &mut Vec<Raised>,
    ) {
        let rule = observation.rule;
        let key = key_of(rule.name, observation.subject, observation.subject_name);
        let state = match observation.level {
            Some(_) => self.keys.entry(key.clone()).or_default(),
            None => match self.keys.get_mut(&key) {
                Some(state) => state,
                None => return,
            },
        };
        match (observation.level, state.active.as_mut()) {
            (Some((severity, threshold)), Some(alert)) => {
                state.clear_streak = 0;
                alert.count += 1;
                alert.value = observation.value;
                let rose = severity > alert.severity;
                if rose {
                    alert.severity = severity;
                    alert.threshold = threshold;
                    alert.message = message(rule, owner, observation.value, threshold);
                }
                if at > alert.updated_at {
                    alert.updated_at = at;
                }
                let text = rose && !backfill && !state.texted && alert.severity >= text_from;
                state.texted |= text;
                self.counters.updated += 1;
                raised.push(Raised {
                    change: AlertChange {
                        transition: Transition::Updated,
                        alert: alert.clone(),
                        recorded_at: now,
                    },
                    text,
                });
            }
            (Some((severity, threshold)), None) => {
                if let Some(cleared_at) = state.last_cleared.as_ref().and_then(|a| a.cleared_at)
                    && cleared_at
                        .checked_add_signed(rule.cooldown)
                        .is_none_or(|reopens| at < reopens)
                {
                    self.counters.suppressed += 1;
                    return;
                }
                let alert = Alert {
                    alert_id: alert_id(&key, at),
                    rule: rule.name.to_string(),
                    severity,
                    state: AlertState::Open,
                    code_lot: owner.code_lot.map(str::to_string),
                    device_id: owner.device_id.map(str::to_string),
                    gaveur_id: owner.gaveur_id,
                    site: Some(owner.site.to_string()),
                    value: observation.value,
                    threshold,
                    opened_at: at,
                    updated_at: at,
                    cleared_at: None,
                    count: 1,
                    acknowledged_by: None,
                    acknowledged_at: None,
                    message: message(rule, owner, observation.value, threshold),
                    backfill,
                };
                let text = !backfill && severity >= text_from;
                state.texted = text;
                state.clear_streak = 0;
                state.active = Some(alert.clone());
                self.by_id.insert(alert.alert_id.clone(), key);
                self.counters.opened += 1;
                raised.push(Raised {
                    change: AlertChange {
                        transition: Transition::Opened,
                        alert,
                        recorded_at: now,
                    },
                    text,
                });
            }
            (None, Some(alert)) => {
                state.clear_streak += 1;
                if at > alert.updated_at {
                    alert.updated_at = at;
                }
                if state.clear_streak >= rule.hysteresis {
                    let change = clear(state, at, now);
                    self.by_id.remove(&change.alert.alert_id);
                    self.counters.cleared += 1;
                    raised.push(Raised {
                        change,
                        text: false,
                    });
                }
            }
            (None, None) => {}
        }
    }

    /// Marks an active alert as seen by `by`. Acknowledging twice changes nothing (`None`).
    pub fn acknowledge(
        &mut self,
        alert_id: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<AlertChange>, AckError> {
        let Some(key) = self.by_id.get(alert_id) else {
            let cleared = self.keys.values().any(|s| {
                s.last_cleared
                    .as_ref()
                    .is_some_and(|a| a.alert_id == alert_id)
            });
            return Err(if cleared {
                AckError::Cleared(alert_id.to_string())
            } else {
                AckError::Unknown(alert_id.to_string())
            });
        };
        let alert = self
            .keys
            .get_mut(key)
            .and_then(|s| s.active.as_mut())
            .ok_or_else(|| AckError::Unknown(alert_id.to_string()))?;
        if alert.state == AlertState::Acknowledged {
            return Ok(None);
        }
        alert.state = AlertState::Acknowledged;
        alert.acknowledged_by = Some(by.to_string());
        alert.acknowledged_at = Some(now);
        self.counters.acknowledged += 1;
        Ok(Some(AlertChange {
            transition: Transition::Acknowledged,
            alert: alert.clone(),
            recorded_at: now,
        }))
    }

    /// The alert with this id: active, or the last cleared one of its key.
    pub fn find(&self, alert_id: &str) -> Option<&Alert> {
        if let Some(key) = self.by_id.get(alert_id) {
            return self.keys.get(key).and_then(|s| s.active.as_ref());
        }
        self.keys
            .values()
            .filter_map(|s| s.last_cleared.as_ref())
            .find(|a| a.alert_id == alert_id)
    }

    /// Active alerts (open or acknowledged) and the last cleared alert of each key.
    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.keys
            .values()
            .flat_map(|s| s.active.iter().chain(s.last_cleared.iter()))
    }
}

fn clear(state: &mut KeyState, at: DateTime<Utc>, now: DateTime<Utc>) -> AlertChange {
    let mut alert = state.active.take().expect("only active alerts clear");
    alert.state = AlertState::Cleared;
    alert.cleared_at = Some(at.max(alert.updated_at));
    alert.updated_at = alert.updated_at.max(at);
    state.clear_streak = 0;
    state.texted = false;
    state.last_cleared = Some(alert.clone());
    AlertChange {
        transition: Transition::Cleared,
        alert,
        recorded_at: now,
    }
}

/// A sentence for the farm (French, short enough for one SMS with its prefix).
fn message(rule: &Rule, owner: &Owner<'_>, value: f64, threshold: f64) -> String {
    let lot = owner.code_lot.unwrap_or("?");
    let device = owner.device_id.unwrap_or("?");
    match rule.name {
        "quality_critical" => {
            format!("Qualité critique station {device}: score {value:.2} (seuil {threshold})")
        }
        "quality_low" => {
            format!("Qualité faible station {device}: score {value:.2} (seuil {threshold})")
        }
        "grade_reject" => format!("Foie classé REJECT station {device}: score {value:.2}"),
        "oxidation_high" => {
            format!("Oxydation élevée station {device}: indice {value:.2} (seuil {threshold})")
        }
        "freshness_low" => {
            format!("Fraîcheur faible station {device}: indice {value:.2} (seuil {threshold})")
        }
        "refus_alimentaire" => format!(
            "Refus alimentaire lot {lot}: {value:.0} % de la dose prévue (seuil {threshold} %)"
        ),
        "dose_ecart" => format!("Écart de dose lot {lot}: {value:.0} % (seuil {threshold} %)"),
        "temperature" => {
            format!("Température stabule lot {lot}: {value:.1} °C (seuil {threshold} °C)")
        }
        "humidite" => format!("Humidité stabule lot {lot}: {value:.0} % (seuil {threshold} %)"),
        "mortalite_lot" => format!("Mortalité lot {lot}: {value:.1} % (seuil {threshold} %)"),
        "poids_perte" => format!(
            "Perte de poids lot {lot}: {value:.0} g depuis le repas précédent (seuil {threshold} g)"
        ),
        "anomalie" if owner.device_id.is_some() => format!(
            "Anomalie station {device}: mesure {value:.1} fois le seuil du modèle (anomalies pour le détail)"
        ),
        "anomalie" => format!(
            "Anomalie lot {lot}: repas {value:.1} fois le seuil du modèle (anomalies pour le détail)"
        ),
        other => format!("{other} lot {lot}: {value} (seuil {threshold})"),
    }
}

#[cfg(test)]
mod tests;
