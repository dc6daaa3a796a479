//! Which ledger events a shard's records make, in log order: the same records in the same
//! order always make the same events with the same bytes.
//!
//! A lot's first meal chains `lot_started`; its feeding day closes (`day_closed`, the day's
//! KPIs) when a later day begins or the lot finishes; its outcome chains `lot_finished` (ITM,
//! losses, liver weight); each SQAL control of a lot chains `sqal_control` with the lot's
//! grade counts so far. Critical alerts come from the alert rules evaluated again here, on
//! the same records (the alert desk's own book keeps its own cursor): an alert chains
//! `alert_opened` when it opens critical or rises to critical, and `alert_cleared` when it
//! clears — times are event times, so a replay gives the same entries.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use gaveurs_schemas::alert::{AlertChange, Severity, Transition};
use gaveurs_schemas::event::Event as LoggedEvent;
use gaveurs_schemas::records::{GavageMeal, LotOutcome, Record, SqalSample};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::entry::{EntryKind, Event};
use crate::alerts::AlertBook;
use crate::alerts::rules::RuleSet;
use crate::anomalies::Models;

/// What a shard's ledger remembers of its records to derive the next events.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Tallies {
    lots: HashMap<String, LotTally>,
    /// The alert rules' state over the same records (bounded as the alert desk's is).
    #[serde(default)]
    alerts: AlertBook,
    /// Critical alerts whose opening is chained and whose clearing is not yet.
    #[serde(default)]
    critical_open: BTreeSet<String>,
}

impl Tallies {
    /// Appends to `out` the events one record makes.
    pub(super) fn derive(
        &mut self,
        rules: &RuleSet,
        models: Option<&Models>,
        logged: &LoggedEvent,
        out: &mut Vec<Event>,
    ) {
        match &logged.record {
            Record::Gavage(meal) => on_meal(&mut self.lots, meal, out),
            Record::LotOutcome(outcome) => on_outcome(&mut self.lots, outcome, out),
            Record::Sqal(sample) => on_sample(&mut self.lots, sample, out),
        }
        // Stamped with the event time: nothing of the wall clock reaches an entry.
        let at = logged.envelope.event_time;
        for raised in self
            .alerts
            .evaluate_scored(rules, models, logged, Severity::Critical, at)
        {
            on_alert(&mut self.critical_open, &raised.change, out);
        }
    }

    /// New alert rules (SIGHUP): the alerts of a rule that was disabled clear now.
    pub(super) fn retire_rules(&mut self, rules: &RuleSet, out: &mut Vec<Event>) {
        for change in self.alerts.retire_rules(rules, Utc::now()) {
            on_alert(&mut self.critical_open, &change, out);
        }
    }

    pub(super) fn reindex(&mut self) {
        self.alerts.reindex();
    }

    /// Past `max` lots, forgets the least recently heard of down to 90 % of it.
    pub(super) fn forget_beyond(&mut self, max: usize) -> u64 {
        forget_beyond(&mut self.lots, max)
    }
}

/// A lot as the ledger follows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct LotTally {
    /// Its first meal is chained (a lot's SQAL samples may come first).
    started: bool,
    /// Its site, as its meals, outcome or samples say.
    site: Option<String>,
    /// The feeding day not yet closed.
    day: Option<DayTally>,
    /// Maize eaten per duck over the lot's meals so far (g).
    total_reel_g: f64,
    sqal_samples: u64,
    sqal_compliant: u64,
    sqal_grades: BTreeMap<String, u64>,
    last_heard: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DayTally {
    jour: i64,
    meals: u64,
    theorique_g: f64,
    reelle_g: f64,
    poids_moyen_g: Option<f64>,
    taux_mortalite: Option<f64>,
    last_time: DateTime<Utc>,
}

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Rounded so an entry reads well; the same sums always round the same.
fn round(value: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (value * p).round() / p
}

fn close_day(code_lot: &str, site: Option<&str>, day: DayTally, events: &mut Vec<Event>) {
    let ecart_pct = (day.theorique_g > 0.0).then(|| {
        round(
            (day.reelle_g - day.theorique_g) / day.theorique_g * 100.0,
            2,
        )
    });
    events.push(Event {
        time: time(&day.last_time),
        kind: EntryKind::DayClosed,
        code_lot: Some(code_lot.to_string()),
        device_id: None,
        payload: json!({
            "site": site,
            "jour": day.jour,
            "repas": day.meals,
            "dose_theorique_g": round(day.theorique_g, 3),
            "dose_reelle_g": round(day.reelle_g, 3),
            "ecart_pct": ecart_pct,
            "poids_moyen_g": day.poids_moyen_g,
            "taux_mortalite": day.taux_mortalite,
        }),
    });
}

fn on_meal(lots: &mut HashMap<String, LotTally>, meal: &GavageMeal, events: &mut Vec<Event>) {
    let lot = lots.entry(meal.code_lot.clone()).or_default();
    lot.last_heard = Some(meal.timestamp);
    lot.site = Some(meal.site.as_str().to_string());
    if !lot.started {
        lot.started = true;
        events.push(Event {
            time: time(&meal.timestamp),
            kind: EntryKind::LotStarted,
            code_lot: Some(meal.code_lot.clone()),
            device_id: None,
            payload: json!({
                "gaveur_id": meal.gaveur_id,
                "site": meal.site.as_str(),
                "genetique": meal.genetique,
                "jour": meal.jour,
                "moment": meal.moment.as_str(),
            }),
        });
    }
    // A meal of a day already closed stays out of the ledger's days (its record is in the
    // log and the datasets); it still counts in the lot's maize.
    lot.total_reel_g += meal.dose_reelle;
    match &mut lot.day {
        Some(day) if day.jour > meal.jour => return,
        Some(day) if day.jour == meal.jour => {
            day.meals += 1;
            day.theorique_g += meal.dose_theorique;
            day.reelle_g += meal.dose_reelle;
            day.poids_moyen_g = meal.poids_moyen.or(day.poids_moyen_g);
            day.taux_mortalite = meal.taux_mortalite.or(day.taux_mortalite);
            day.last_time = day.last_time.max(meal.timestamp);
            return;
        }
        _ => {}
    }
    if let Some(previous) = lot.day.take() {
        close_day(&meal.code_lot, lot.site.as_deref(), previous, events);
    }
    lot.day = Some(DayTally {
        jour: meal.jour,
        meals: 1,
        theorique_g: meal.dose_theorique,
        reelle_g: meal.dose_reelle,
        poids_moyen_g: meal.poids_moyen,
        taux_mortalite: meal.taux_mortalite,
        last_time: meal.timestamp,
    });
}

fn on_outcome(lots: &mut HashMap<String, LotTally>, outcome: &LotOutcome, events: &mut Vec<Event>) {
    let lot = lots.entry(outcome.code_lot.clone()).or_default();
    lot.last_heard = Some(outcome.event_time);
    lot.site = Some(outcome.site.as_str().to_string());
    if let Some(day) = lot.day.take() {
        close_day(&outcome.code_lot, lot.site.as_deref(), day, events);
    }
    let pertes_pct = (outcome.nb_canards_mis_en_gavage > 0).then(|| {
        round(
            (outcome.nb_canards_mis_en_gavage - outcome.nb_canards_accroches) as f64
                / outcome.nb_canards_mis_en_gavage as f64
                * 100.0,
            2,
        )
    });
    let total = (lot.total_reel_g > 0.0).then_some(round(lot.total_reel_g, 3));
    let itm = match (total, outcome.poids_foie_moyen_g) {
        (Some(total), Some(liver)) if liver > 0.0 => Some(round(total / liver, 2)),
        _ => None,
    };
    events.push(Event {
        time: time(&outcome.event_time),
        kind: EntryKind::LotFinished,
        code_lot: Some(outcome.code_lot.clone()),
        device_id: None,
        payload: json!({
            "gaveur_id": outcome.gaveur_id,
            "site": outcome.site.as_str(),
            "date_fin": outcome.date_fin.to_string(),
            "nb_canards_mis_en_gavage": outcome.nb_canards_mis_en_gavage,
            "nb_canards_accroches": outcome.nb_canards_accroches,
            "pertes_pct": pertes_pct,
            "poids_foie_moyen_g": outcome.poids_foie_moyen_g,
            "total_mais_reel_g": total,
            "itm": itm,
        }),
    });
}

fn on_sample(lots: &mut HashMap<String, LotTally>, sample: &SqalSample, events: &mut Vec<Event>) {
    // A sample that names no lot is a station's control, not a lot's: it is not chained.
    let Some(code_lot) = &sample.code_lot else {
        return;
    };
    let lot = lots.entry(code_lot.clone()).or_default();
    lot.last_heard = Some(
        lot.last_heard
            .map_or(sample.timestamp, |t| t.max(sample.timestamp)),
    );
    lot.sqal_samples += 1;
    lot.sqal_compliant += u64::from(sample.is_compliant);
    *lot.sqal_grades
        .entry(sample.grade.as_str().to_string())
        .or_default() += 1;
    events.push(Event {
        time: time(&sample.timestamp),
        kind: EntryKind::SqalControl,
        code_lot: Some(code_lot.clone()),
        device_id: Some(sample.device_id.clone()),
        payload: json!({
            "site": sample.site_code.as_str(),
            "sample_id": sample.sample_id,
            "grade": sample.grade.as_str(),
            "is_compliant": sample.is_compliant,
            "final_score": sample.final_score,
            "lot_samples": lot.sqal_samples,
            "lot_compliant": lot.sqal_compliant,
            "lot_grades": lot.sqal_grades,
        }),
    });
}

fn on_alert(critical_open: &mut BTreeSet<String>, change: &AlertChange, events: &mut Vec<Event>) {
    let alert = &change.alert;
    let (kind, time) = match change.transition {
        Transition::Opened | Transition::Updated
            if alert.severity == Severity::Critical
                && critical_open.insert(alert.alert_id.clone()) =>
        {
            (EntryKind::AlertOpened, alert.updated_at)
        }
        Transition::Cleared if critical_open.remove(&alert.alert_id) => (
            EntryKind::AlertCleared,
            alert.cleared_at.unwrap_or(alert.updated_at),
        ),
        _ => return,
    };
    let mut payload = json!({
        "alert_id": alert.alert_id,
        "rule": alert.rule,
        "severity": alert.severity.as_str(),
        "site": alert.site,
        "gaveur_id": alert.gaveur_id,
        "opened_at": self::time(&alert.opened_at),
        "value": alert.value,
        "threshold": alert.threshold,
        "message": alert.message,
    });
    if kind == EntryKind::AlertCleared {
        payload["cleared_at"] = json!(self::time(&time));
        payload["count"] = json!(alert.count);
    }
    events.push(Event {
        time: self::time(&time),
        kind,
        code_lot: alert.code_lot.clone(),
        device_id: alert.device_id.clone(),
        payload,
    });
}

/// Past `max`, forgets the least recently heard of lots down to 90 % of it.
fn forget_beyond(lots: &mut HashMap<String, LotTally>, max: usize) -> u64 {
    if lots.len() <= max {
        return 0;
    }
    let keep = max - max / 10;
    let mut heard: Vec<(Option<DateTime<Utc>>, String)> = lots
        .iter()
        .map(|(code, lot)| (lot.last_heard, code.clone()))
        .collect();
    let cut = heard.len() - keep;
    heard.select_nth_unstable(cut - 1);
    for (_, code) in &heard[..cut] {
        lots.remove(code);
    }
    cut as u64
}
