use chrono::{Duration, TimeZone};
use gaveurs_schemas::envelope::{Envelope, Provenance, Transport};
use serde_json::{Value, json};

use super::rules::{AlertsConfig, RuleOverride, Threshold};
use super::*;

fn at(minute: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 20, 6, 0, 0).unwrap() + Duration::minutes(minute)
}

fn event(record: Value, minute: i64, backfill: bool) -> Event {
    let mut record = record;
    record["timestamp"] = json!(at(minute));
    let record: Record = serde_json::from_value(record).unwrap();
    Event {
        envelope: Envelope {
            event_id: uuid::Uuid::nil(),
            stream: record.stream(),
            key: record.partition_key().to_string(),
            event_time: record.event_time(),
            ingest_time: at(minute),
            provenance: Provenance::new(Transport::Mqtt),
            principal: None,
            backfill,
        },
        record,
    }
}

/// A meal whose only notable field is `dose_reelle` (theory 200 g).
fn meal(lot: &str, minute: i64, dose_reelle: f64) -> Event {
    event(
        json!({"record_type": "gavage", "code_lot": lot, "gaveur_id": 7, "site": "LL",
               "jour": minute, "moment": "matin", "dose_theorique": 200.0,
               "dose_reelle": dose_reelle}),
        minute,
        false,
    )
}

fn with(mut event: Event, change: impl FnOnce(&mut GavageMeal)) -> Event {
    if let Record::Gavage(m) = &mut event.record {
        change(m);
    }
    event
}

fn sample(device: &str, minute: i64, score: f64) -> Event {
    let zeros = json!(vec![vec![0; 8]; 8]);
    event(
        json!({"record_type": "sqal", "device_id": device, "sample_id": format!("s{minute}"),
               "site_code": "LL", "final_score": score, "grade": "B", "is_compliant": true,
               "distance_matrix": zeros, "reflectance_matrix": zeros, "amplitude_matrix": zeros,
               "ambient_matrix": zeros, "status_matrix": zeros, "channels": {}}),
        minute,
        false,
    )
}

struct Run {
    book: AlertBook,
    rules: RuleSet,
    raised: Vec<Raised>,
}

impl Run {
    fn new() -> Self {
        Self::with_rules(RuleSet::default())
    }

    fn with_rules(rules: RuleSet) -> Self {
        Run {
            book: AlertBook::new(),
            rules,
            raised: Vec::new(),
        }
    }

    fn feed(&mut self, event: Event) -> Vec<Raised> {
        let raised = self
            .book
            .evaluate(&self.rules, &event, Severity::Critical, at(0));
        self.raised.extend(raised.clone());
        raised
    }

    fn transitions(&self, rule: &str) -> Vec<Transition> {
        self.raised
            .iter()
            .filter(|r| r.change.alert.rule == rule)
            .map(|r| r.change.transition)
            .collect()
    }

    fn texts(&self) -> usize {
        self.raised.iter().filter(|r| r.text).count()
    }
}

#[test]
fn a_condition_held_over_twelve_records_is_one_alert_and_one_text() {
    let mut run = Run::new();
    for minute in 0..12 {
        run.feed(meal("LL1", minute, 100.0));
    }
    let refus = run.transitions("refus_alimentaire");
    assert_eq!(refus[0], Transition::Opened);
    assert_eq!(refus.len(), 12);
    assert!(refus[1..].iter().all(|t| *t == Transition::Updated));
    assert_eq!(run.texts(), 1);
    let last = &run.raised.last().unwrap().change.alert;
    assert_eq!(last.count, 12);
    assert_eq!(last.value, 50.0);
    assert_eq!(last.threshold, 70.0);
    assert_eq!(last.severity, Severity::Critical);
    assert_eq!(last.gaveur_id, Some(7));
    assert!(
        run.transitions("dose_ecart").is_empty(),
        "dose_ecart stays quiet while refus_alimentaire is active"
    );
}

#[test]
fn an_alert_clears_after_n_evaluations_without_its_condition_and_cools_down() {
    let mut run = Run::new();
    run.feed(meal("LL1", 0, 100.0));
    run.feed(meal("LL1", 1, 200.0));
    run.feed(meal("LL1", 2, 200.0));
    assert_eq!(
        run.transitions("refus_alimentaire").len(),
        1,
        "not yet cleared"
    );
    run.feed(meal("LL1", 3, 200.0));
    let refus = run.transitions("refus_alimentaire");
    assert_eq!(refus, [Transition::Opened, Transition::Cleared]);
    let cleared = run.raised.last().unwrap().change.alert.clone();
    assert_eq!(cleared.state, AlertState::Cleared);
    assert_eq!(cleared.cleared_at, Some(at(3)));
    // Within 30 minutes of event time: no new alert.
    run.feed(meal("LL1", 20, 100.0));
    assert_eq!(run.transitions("refus_alimentaire").len(), 2);
    assert_eq!(run.book.counters().suppressed, 1);
    // After the cooldown: a new alert with a new id, texted again.
    run.feed(meal("LL1", 40, 100.0));
    let reopened = run.raised.last().unwrap().clone();
    assert_eq!(reopened.change.transition, Transition::Opened);
    assert_ne!(reopened.change.alert.alert_id, cleared.alert_id);
    let refus_texts = run
        .raised
        .iter()
        .filter(|r| r.text && r.change.alert.rule == "refus_alimentaire")
        .count();
    assert_eq!(refus_texts, 2);
}

#[test]
fn a_flapping_condition_is_one_alert_and_one_text() {
    let mut run = Run::new();
    for minute in 0..40 {
        let dose = if minute % 2 == 0 { 100.0 } else { 200.0 };
        run.feed(meal("LL1", minute, dose));
    }
    let refus = run.transitions("refus_alimentaire");
    assert_eq!(
        refus.iter().filter(|t| **t == Transition::Opened).count(),
        1
    );
    assert!(!refus.contains(&Transition::Cleared));
    assert_eq!(run.texts(), 1);
}

#[test]
fn backfill_opens_alerts_but_never_texts() {
    let mut run = Run::new();
    let mut replayed = meal("LL1", 0, 100.0);
    replayed.envelope.backfill = true;
    run.feed(replayed);
    let opened = &run.raised[0];
    assert_eq!(opened.change.transition, Transition::Opened);
    assert!(opened.change.alert.backfill);
    assert_eq!(run.texts(), 0);
    run.feed(meal("LL1", 1, 100.0));
    assert_eq!(
        run.texts(),
        0,
        "one text per opening, and this opening was a replay"
    );
}

#[test]
fn severity_rises_within_one_alert_and_texts_when_it_becomes_critical() {
    let mut run = Run::new();
    run.feed(meal("LL1", 0, 220.0)); // +10 %: warning
    run.feed(meal("LL1", 1, 260.0)); // +30 %: critical
    let ecart: Vec<&Raised> = run
        .raised
        .iter()
        .filter(|r| r.change.alert.rule == "dose_ecart")
        .collect();
    assert_eq!(ecart.len(), 2);
    assert_eq!(ecart[0].change.alert.severity, Severity::Warning);
    assert!(!ecart[0].text);
    assert_eq!(ecart[1].change.transition, Transition::Updated);
    assert_eq!(ecart[1].change.alert.severity, Severity::Critical);
    assert_eq!(
        ecart[1].change.alert.alert_id,
        ecart[0].change.alert.alert_id
    );
    assert!(ecart[1].text);
}

#[test]
fn barn_weight_and_mortality_rules() {
    let mut run = Run::new();
    run.feed(with(meal("LL1", 0, 200.0), |m| {
        m.temperature_stabule = Some(21.0);
        m.poids_moyen = Some(5000.0);
    }));
    run.feed(with(meal("LL1", 1, 200.0), |m| {
        m.temperature_stabule = Some(29.0);
        m.humidite_stabule = Some(80.0);
        m.taux_mortalite = Some(6.0);
        m.poids_moyen = Some(4900.0);
    }));
    let opened = |rule: &str| {
        run.raised
            .iter()
            .find(|r| r.change.alert.rule == rule)
            .map(|r| {
                (
                    r.change.alert.severity,
                    r.change.alert.value,
                    r.change.alert.threshold,
                )
            })
    };
    assert_eq!(
        opened("temperature"),
        Some((Severity::Critical, 29.0, 28.0))
    );
    assert_eq!(opened("humidite"), Some((Severity::Warning, 80.0, 75.0)));
    assert_eq!(
        opened("mortalite_lot"),
        Some((Severity::Critical, 6.0, 5.0))
    );
    assert_eq!(
        opened("poids_perte"),
        Some((Severity::Warning, 100.0, 80.0))
    );
}

#[test]
fn sqal_rules_split_the_score_bands() {
    let mut run = Run::new();
    run.feed(sample("ESP32_LL_01", 0, 0.30));
    run.feed(sample("ESP32_LL_02", 0, 0.50));
    let rules_of = |device: &str| {
        let mut rules: Vec<String> = run
            .raised
            .iter()
            .filter(|r| r.change.alert.device_id.as_deref() == Some(device))
            .map(|r| r.change.alert.rule.clone())
            .collect();
        rules.sort();
        rules
    };
    assert_eq!(
        rules_of("ESP32_LL_01"),
        ["grade_reject", "quality_critical"]
    );
    assert_eq!(rules_of("ESP32_LL_02"), ["quality_low"]);
}

#[test]
fn acknowledge_then_clear() {
    let mut run = Run::new();
    run.feed(meal("LL1", 0, 100.0));
    let id = run.raised[0].change.alert.alert_id.clone();
    let change = run
        .book
        .acknowledge(&id, "gaveur7", at(1))
        .unwrap()
        .unwrap();
    assert_eq!(change.alert.state, AlertState::Acknowledged);
    assert_eq!(run.book.acknowledge(&id, "gaveur7", at(2)).unwrap(), None);
    run.feed(meal("LL1", 1, 100.0));
    assert_eq!(
        run.raised.last().unwrap().change.alert.state,
        AlertState::Acknowledged,
        "an acknowledged alert stays acknowledged while it holds"
    );
    for minute in 2..5 {
        run.feed(meal("LL1", minute, 200.0));
    }
    assert_eq!(
        run.raised.last().unwrap().change.transition,
        Transition::Cleared
    );
    assert_eq!(
        run.book.acknowledge(&id, "gaveur7", at(6)),
        Err(AckError::Cleared(id.clone()))
    );
    assert_eq!(
        run.book.acknowledge("nope", "gaveur7", at(6)),
        Err(AckError::Unknown("nope".into()))
    );
}

#[test]
fn the_outcome_clears_the_lots_alerts() {
    let mut run = Run::new();
    run.feed(meal("LL1", 0, 100.0));
    let outcome = event(
        json!({"record_type": "lot_outcome", "code_lot": "LL1", "gaveur_id": 7, "site": "LL",
               "nb_canards_mis_en_gavage": 100, "nb_canards_accroches": 98,
               "date_fin": "2026-01-20", "event_time": at(5)}),
        5,
        false,
    );
    run.feed(outcome);
    assert_eq!(
        run.transitions("refus_alimentaire"),
        [Transition::Opened, Transition::Cleared]
    );
}

#[test]
fn the_book_survives_serialisation_with_the_same_ids() {
    let mut run = Run::new();
    run.feed(meal("LL1", 0, 100.0));
    let id = run.raised[0].change.alert.alert_id.clone();
    let mut restored: AlertBook =
        serde_json::from_str(&serde_json::to_string(&run.book).unwrap()).unwrap();
    restored.reindex();
    assert_eq!(restored.find(&id).unwrap().state, AlertState::Open);
    let raised = restored.evaluate(
        &run.rules,
        &meal("LL1", 1, 100.0),
        Severity::Critical,
        at(1),
    );
    assert_eq!(raised[0].change.transition, Transition::Updated);
    assert!(!raised[0].text, "the opening was texted before the restart");
}

#[test]
fn configuration_changes_thresholds_and_names_mistakes() {
    let mut config = AlertsConfig::default();
    config.rules.insert(
        "refus_alimentaire".into(),
        RuleOverride {
            critical: Some(Threshold::Value(40.0)),
            ..RuleOverride::default()
        },
    );
    let mut run = Run::with_rules(RuleSet::from_config(&config).unwrap());
    run.feed(meal("LL1", 0, 100.0)); // 50 %: no longer a refus, but a 50 % ecart
    assert!(run.transitions("refus_alimentaire").is_empty());
    assert_eq!(run.transitions("dose_ecart"), [Transition::Opened]);

    config.rules.insert(
        "temperature".into(),
        RuleOverride {
            warning: Some(Threshold::Value(20.0)),
            ..RuleOverride::default()
        },
    );
    let error = RuleSet::from_config(&config).unwrap_err();
    assert!(
        error.contains("temperature") && error.contains("band"),
        "{error}"
    );
    config.rules.clear();
    config
        .rules
        .insert("temperatur".into(), RuleOverride::default());
    let error = RuleSet::from_config(&config).unwrap_err();
    assert!(error.contains("no such rule"), "{error}");
}

#[test]
fn an_underfed_meal_is_not_also_an_ecart_even_while_the_refusal_cools_down() {
    let mut run = Run::new();
    run.feed(meal("LL1", 0, 100.0));
    for minute in 1..4 {
        run.feed(meal("LL1", minute, 200.0));
    }
    assert_eq!(
        run.transitions("refus_alimentaire"),
        [Transition::Opened, Transition::Cleared]
    );
    // In the cooldown: the refusal does not reopen, and no écart opens in its place.
    run.feed(meal("LL1", 10, 100.0));
    assert!(run.transitions("dose_ecart").is_empty());
    assert_eq!(run.texts(), 1);
}

#[test]
fn a_station_alert_keeps_the_owner_it_opened_with() {
    let mut run = Run::new();
    run.feed(meal("LL1", 0, 200.0));
    let mut other = meal("LL2", 0, 200.0);
    if let Record::Gavage(m) = &mut other.record {
        m.gaveur_id = 8;
    }
    run.feed(other);
    let with_lot = |lot: &str, minute: i64| {
        let mut sample = sample("ESP32_LL_01", minute, 0.30);
        if let Record::Sqal(s) = &mut sample.record {
            s.code_lot = Some(lot.to_string());
        }
        sample
    };
    run.feed(with_lot("LL1", 1));
    run.feed(with_lot("LL2", 2));
    let owners: Vec<Option<i64>> = run
        .raised
        .iter()
        .filter(|r| r.change.alert.rule == "quality_critical")
        .map(|r| r.change.alert.gaveur_id)
        .collect();
    assert_eq!(owners, [Some(7), Some(7)]);
}

#[test]
fn disabling_a_rule_clears_its_alerts_and_an_outcome_forgets_the_lot() {
    let mut run = Run::new();
    run.feed(with(meal("LL1", 0, 200.0), |m| {
        m.humidite_stabule = Some(90.0)
    }));
    let mut config = AlertsConfig::default();
    config.rules.insert(
        "humidite".into(),
        RuleOverride {
            enabled: Some(false),
            ..RuleOverride::default()
        },
    );
    let rules = RuleSet::from_config(&config).unwrap();
    let retired = run.book.retire_rules(&rules, at(1));
    assert_eq!(retired.len(), 1);
    assert_eq!(retired[0].transition, Transition::Cleared);
    assert!(run.book.alerts().all(|a| !a.state.is_active()));

    run.feed(meal("LL1", 2, 100.0));
    run.feed(event(
        json!({"record_type": "lot_outcome", "code_lot": "LL1", "gaveur_id": 7, "site": "LL",
               "nb_canards_mis_en_gavage": 100, "nb_canards_accroches": 98,
               "date_fin": "2026-01-20", "event_time": at(5)}),
        5,
        false,
    ));
    assert_eq!(
        run.book.alerts().count(),
        0,
        "a finished lot leaves nothing behind"
    );
}

#[test]
fn impossible_bands_and_cooldowns_are_refused() {
    let mut config = AlertsConfig::default();
    config.rules.insert(
        "temperature".into(),
        RuleOverride {
            warning: Some(Threshold::Band(super::rules::Band {
                low: 25.0,
                high: 18.0,
            })),
            ..RuleOverride::default()
        },
    );
    let error = RuleSet::from_config(&config).unwrap_err();
    assert!(error.contains("low") && error.contains("below"), "{error}");
    let config = AlertsConfig {
        cooldown_min: 1e12,
        ..AlertsConfig::default()
    };
    assert!(
        RuleSet::from_config(&config)
            .unwrap_err()
            .contains("cooldown_min")
    );
}

#[test]
fn the_book_forgets_quiet_lots_and_cleared_keys_past_their_cooldown() {
    let mut run = Run::new();
    // 20,000 lots, each with one refusal that opens and clears an alert, spread over 300
    // days of event time: the book keeps only what a rule may still need.
    for lot in 0..20_000i64 {
        let minute = lot * 20;
        let code = format!("LL{lot:06}");
        run.feed(meal(&code, minute, 50.0));
        for n in 1..=3 {
            run.feed(meal(&code, minute + n, 200.0));
        }
    }
    let (keys, lots) = run.book.size();
    // 30 days at one lot per 20 minutes is 2,160 lots, plus up to 1,024 lots (4,096
    // evaluations) between two looks; of 20,000.
    assert!(lots < 3_300, "{lots} lots remembered");
    // Cleared keys wait out their 30-minute cooldown: at most the lots since the last look.
    assert!(keys < 1_100, "{keys} keys remembered");
    // What is still needed is still there: a refusal right after the last clear is in its
    // cooldown, so it opens nothing.
    let last = format!("LL{:06}", 19_999);
    let raised = run.feed(meal(&last, 19_999 * 20 + 4, 50.0));
    assert!(raised.is_empty(), "{raised:?}");
}
