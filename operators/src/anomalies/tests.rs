use gaveurs_schemas::records::Moment;

use super::evaluation::{Injected, inject};
use super::meal_model::{LotTrack, MealModel, run_departure};
use super::training::{self, TrainingLot, TrainingMeal, TrainingOptions};
use super::{DEFAULT_MEAL_MODEL, parse_meal_model};

/// A population of lots that follow one protocol (a ramp that flattens), each with its own
/// level and small wobbles, from a fixed sequence of pseudo-random numbers.
fn population(lots: usize) -> Vec<TrainingLot> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..lots)
        .map(|i| {
            let level = 0.9 + 0.2 * next();
            let site = ["LL", "LS", "MT"][i % 3];
            let meals = (0..22)
                .map(|step| {
                    let planned = (level * (210.0 + 20.0 * step.min(12) as f64)).round();
                    let real = (planned * (1.0 + 0.02 * (next() - 0.5))).round();
                    TrainingMeal {
                        site: site.to_string(),
                        genetique: Some("CF80* - M15 V2E SFM".into()),
                        month: 1 + (i % 12) as u32,
                        jour: step / 2 + 1,
                        moment: if step % 2 == 0 {
                            Moment::Matin
                        } else {
                            Moment::Soir
                        },
                        dose_theorique: planned,
                        dose_reelle: real,
                    }
                })
                .collect();
            TrainingLot {
                code_lot: format!("{site}{i:07}"),
                meals,
            }
        })
        .collect()
}

fn trained() -> MealModel {
    training::train(&population(400), "test", &TrainingOptions::default()).unwrap()
}

fn flags(model: &MealModel, meals: &[TrainingMeal]) -> Vec<bool> {
    let mut track = LotTrack::default();
    meals
        .iter()
        .map(|m| {
            model
                .score(&mut track, &m.facts())
                .is_some_and(|s| s.score >= model.threshold)
        })
        .collect()
}

#[test]
fn training_is_deterministic_and_the_artifact_checks() {
    let a = serde_json::to_string_pretty(&trained()).unwrap();
    let b = serde_json::to_string_pretty(&trained()).unwrap();
    assert_eq!(a, b, "the same lots and seed give the same bytes");
    let model = parse_meal_model(a.as_bytes()).unwrap();
    assert!(model.version.starts_with("gavage_meal-"));
    assert!(model.evaluation.flagged_share <= 0.011);
}

#[test]
fn a_clean_lot_scores_below_the_threshold_and_an_off_protocol_plan_above() {
    let model = trained();
    let lots = population(450);
    let clean: Vec<bool> = lots[400..]
        .iter()
        .flat_map(|lot| flags(&model, &lot.meals))
        .collect();
    let flagged = clean.iter().filter(|f| **f).count();
    assert!(
        flagged * 100 <= clean.len() * 2,
        "lots that follow the protocol seldom raise anything: {flagged} of {}",
        clean.len()
    );
    let unseen = &lots[420];
    let mut off = unseen.meals.clone();
    for meal in off.iter_mut().skip(8) {
        meal.dose_theorique *= 0.8;
        meal.dose_reelle *= 0.8;
    }
    let found = flags(&model, &off);
    assert!(
        found[8] || found[9],
        "the plan leaves the protocol at meal 8: {found:?}"
    );
    let mut track = LotTrack::default();
    let explained = off
        .iter()
        .filter_map(|m| model.score(&mut track, &m.facts()))
        .nth(8)
        .unwrap();
    let explanation = explained.explanation();
    assert_eq!(explanation[0].feature, "dose_theorique");
    assert!(explanation[0].expected > explanation[0].value);
    let total: f64 = explanation.iter().map(|c| c.contribution).sum();
    assert!(total <= explained.score + 1e-9);
}

#[test]
fn a_level_shift_shows_by_its_second_meal_where_single_short_meals_are_common() {
    // One meal in fifteen is cut by a fifth in these lots, as real lots cut single meals:
    // one short meal proves nothing, two in a row off the lot's course do.
    let mut lots = population(450);
    for (i, lot) in lots.iter_mut().enumerate() {
        for (step, meal) in lot.meals.iter_mut().enumerate() {
            if (i * 7 + step * 3) % 15 == 0 {
                meal.dose_reelle = (meal.dose_reelle * 0.8).round();
            }
        }
    }
    let model = training::train(&lots[..400], "test", &TrainingOptions::default()).unwrap();
    let unseen = &lots[430];
    assert!(flags(&model, &unseen.meals).iter().all(|f| !f));
    let mut shifted = unseen.meals.clone();
    for meal in shifted.iter_mut().skip(10).take(3) {
        meal.dose_reelle = (meal.dose_reelle * 0.85).round();
    }
    let found = flags(&model, &shifted);
    assert!(!found[10], "one short meal is like the lots' single cuts");
    assert!(found[11], "the second short meal is a run: {found:?}");
    let mut track = LotTrack::default();
    let second = shifted
        .iter()
        .filter_map(|m| model.score(&mut track, &m.facts()))
        .nth(11)
        .unwrap();
    let explanation = second.explanation();
    assert_eq!(explanation[0].feature, "tendance");
    assert!(explanation[0].value < 0.9 * explanation[0].expected);
    let mut without_runs = model.clone();
    without_runs.trend.run_units = [0.0; 2];
    assert!(
        flags(&without_runs, &shifted)[10..=12].iter().all(|f| !f),
        "without runs the shift hides among the single cuts"
    );
}

#[test]
fn a_run_departs_by_its_least_departure_from_the_median_before_it() {
    let history = [10_000, 5_000, 10_200, 9_800, 8_500];
    // Run of two: 0.85 and 0.8 against the median of [1.0, 0.5, 1.02, 0.98] (0.99).
    let (departure, course) = run_departure(&history, 0.8, 2);
    assert!((course - 0.99).abs() < 1e-6);
    assert!((departure - (1.0 - 0.85 / 0.99)).abs() < 1e-6);
    // Run of three: 0.98 is near the course (1.0), so the run is only 2 % off it.
    assert!((run_departure(&history, 0.8, 3).0 - 0.02).abs() < 1e-6);
    // A run over the course counts as one under it does.
    assert!((run_departure(&history, 1.2, 2).0 - 0.0).abs() < 1e-9);
    assert!(run_departure(&[10_000, 10_000, 10_000, 12_000], 1.3, 2).0 > 0.19);
    // Too little history to know the lot's course.
    assert_eq!(run_departure(&[10_000, 8_000], 0.8, 2), (0.0, 0.0));
}

#[test]
fn a_missed_meal_and_a_repeated_meal_are_seen_in_the_sequence() {
    let model = trained();
    let lot = &population(430)[425];
    for kind in [Injected::MissedMeal, Injected::Duplicate, Injected::Swap] {
        let (meals, start) = inject(lot, kind, 7).unwrap();
        let found = flags(&model, &meals);
        assert!(
            found[start..=start + 1].iter().any(|f| *f),
            "{kind:?} at {start}: {found:?}"
        );
    }
}

#[test]
fn a_model_edited_by_hand_or_of_another_format_is_refused() {
    let model = trained();
    let mut edited = model.clone();
    edited.threshold *= 2.0;
    let text = serde_json::to_string(&edited).unwrap();
    assert!(
        parse_meal_model(text.as_bytes())
            .unwrap_err()
            .contains("does not match its contents")
    );
    let mut future = model.clone();
    future.format = 99;
    future.version = future.digest();
    let text = serde_json::to_string(&future).unwrap();
    assert!(
        parse_meal_model(text.as_bytes())
            .unwrap_err()
            .contains("format 99")
    );
    assert!(
        parse_meal_model(b"{")
            .unwrap_err()
            .contains("not a meal model")
    );
}

#[test]
fn the_built_in_model_loads() {
    let model = parse_meal_model(DEFAULT_MEAL_MODEL.as_bytes()).unwrap();
    assert_eq!(model.training.lots, 2295, "trained on ../shared/data");
}

#[test]
fn an_artifact_read_back_from_its_file_keeps_its_version() {
    let model = trained();
    for text in [
        serde_json::to_string_pretty(&model).unwrap(),
        serde_json::to_string(&model).unwrap(),
    ] {
        let read = parse_meal_model(text.as_bytes()).unwrap();
        assert_eq!(read, model);
    }
}

#[test]
fn the_outcome_model_predicts_from_a_lots_feeding_so_far_and_checks_its_artifact() {
    use super::outcome::{LotSoFar, OutcomeModel, train};
    use super::parse_artifact;
    let lots = population(200);
    // ITM rises with the lot's level of feeding; liver weight falls with it.
    let outcomes = lots
        .iter()
        .map(|lot| {
            let level = lot.meals[0].dose_theorique / 210.0;
            (
                lot.code_lot.clone(),
                (4.0 + 2.0 * level, 700.0 - 100.0 * level),
            )
        })
        .collect();
    let all: Vec<&TrainingLot> = lots.iter().collect();
    let model = train(&all, &outcomes, "test").unwrap();
    assert_eq!(train(&all, &outcomes, "test").unwrap(), model);
    let lot = |level: f64| LotSoFar {
        site: "LL",
        month: 1,
        jours: 2,
        repas: 4,
        mais_total_g: 4.0 * 220.0 * level,
        mais_theorique_total_g: 4.0 * 220.0 * level,
        ecart_moyen_pct: Some(0.0),
    };
    let (low, high) = (
        model.predict(&lot(0.9)).unwrap(),
        model.predict(&lot(1.1)).unwrap(),
    );
    assert!(
        high.itm > low.itm && high.poids_foie_g < low.poids_foie_g,
        "{low:?} {high:?}"
    );
    assert!(
        model
            .predict(&LotSoFar {
                repas: 0,
                ..lot(1.0)
            })
            .is_none()
    );

    let read: OutcomeModel =
        parse_artifact(serde_json::to_string_pretty(&model).unwrap().as_bytes()).unwrap();
    assert_eq!(read, model);
    let mut edited = model.clone();
    edited.days[0].itm.intercept += 1.0;
    let refused =
        parse_artifact::<OutcomeModel>(serde_json::to_string(&edited).unwrap().as_bytes());
    assert!(refused.unwrap_err().contains("does not match its contents"));
    let built_in: OutcomeModel = parse_artifact(super::DEFAULT_OUTCOME_MODEL.as_bytes()).unwrap();
    assert_eq!(built_in.training.lots, 2295, "trained on ../shared/data");
}

#[test]
fn weight_mortality_and_climate_count_where_a_meal_carries_them() {
    use super::conditions::{self, Conditions};
    // Farms that gain 70–80 g a day, lose a duck now and then, in a 20–23 °C, 55–70 % barn.
    let farms: Vec<Vec<(i64, Conditions)>> = (0..40)
        .map(|lot| {
            (1..=11)
                .map(|jour| {
                    let wobble = ((lot * 7 + jour * 3) % 11) as f64 / 10.0;
                    (
                        jour,
                        Conditions {
                            poids_moyen: Some(4500.0 + (70.0 + 10.0 * wobble) * jour as f64),
                            taux_mortalite: Some(0.1 * (jour / 3) as f64),
                            temperature_stabule: Some(20.0 + 3.0 * wobble),
                            humidite_stabule: Some(55.0 + 15.0 * wobble),
                        },
                    )
                })
                .collect()
        })
        .collect();
    let options = TrainingOptions {
        conditions: conditions::train(&farms).unwrap(),
        ..TrainingOptions::default()
    };
    let model = training::train(&population(400), "test", &options).unwrap();
    assert_eq!(model.check(), Ok(()));
    let lot = &population(401)[400];
    let score_day_3 = |day_3: Conditions| {
        let mut track = LotTrack::default();
        let mut last = None;
        for (i, meal) in lot.meals.iter().take(5).enumerate() {
            let mut facts = meal.facts();
            facts.conditions = Conditions {
                poids_moyen: Some(4500.0 + 75.0 * facts.jour as f64),
                taux_mortalite: Some(0.1),
                temperature_stabule: Some(21.5),
                humidite_stabule: Some(62.0),
            };
            if i == 4 {
                facts.conditions = day_3;
            }
            last = model.score(&mut track, &facts);
        }
        last.unwrap()
    };
    let usual = Conditions {
        poids_moyen: Some(4725.0),
        taux_mortalite: Some(0.1),
        temperature_stabule: Some(21.5),
        humidite_stabule: Some(62.0),
    };
    assert!(score_day_3(usual).score < model.threshold);
    for (unusual, named) in [
        (
            Conditions {
                poids_moyen: Some(4500.0),
                ..usual
            },
            "gain_poids_g_jour",
        ),
        (
            Conditions {
                taux_mortalite: Some(2.5),
                ..usual
            },
            "hausse_mortalite_pct",
        ),
        (
            Conditions {
                temperature_stabule: Some(31.0),
                ..usual
            },
            "temperature_stabule",
        ),
    ] {
        let score = score_day_3(unusual);
        assert!(score.score >= model.threshold, "{named}: {score:?}");
        assert_eq!(score.explanation()[0].feature, named);
    }
}
