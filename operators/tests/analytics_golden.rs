//! Golden tests of the default KPI queries: `golden/<case>/input.ndjson` (records, one per
//! line; `{"flush": true}` ends a micro-batch) → `golden/<case>/expected.ndjson` (every KPI
//! row and late meal the operator emits, in order). `UPDATE_GOLDEN=1 cargo test` rewrites the
//! expected files; review the diff before committing it.

use std::path::PathBuf;

use gaveurs_operators::analytics::{AnalyticsSettings, Engine, json_rows};
use gaveurs_schemas::records::Record;
use serde_json::{Map, Value, json};

struct Run {
    lines: Vec<Value>,
}

impl Run {
    fn kpi(&self, name: &str) -> Vec<&Map<String, Value>> {
        self.lines
            .iter()
            .filter(|l| l["kpi"] == name)
            .map(|l| l.as_object().unwrap())
            .collect()
    }

    fn late(&self) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|l| l.get("late").is_some())
            .collect()
    }

    fn last_lot(&self, code_lot: &str) -> Map<String, Value> {
        self.kpi("lot")
            .into_iter()
            .rev()
            .find(|r| r["code_lot"] == code_lot)
            .unwrap_or_else(|| panic!("no lot row for {code_lot}"))
            .clone()
    }

    fn last_window(&self, scope: &str, key: &Value, days: i64, start: &str) -> Map<String, Value> {
        let key_column = if scope == "gaveur" {
            "gaveur_id"
        } else {
            "site"
        };
        self.kpi("windows")
            .into_iter()
            .rev()
            .find(|r| {
                r["scope"] == scope
                    && &r[key_column] == key
                    && r["window_days"] == days
                    && r["window_start"] == start
            })
            .unwrap_or_else(|| panic!("no {days}-day {scope} window {key} from {start}"))
            .clone()
    }
}

fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case)
}

/// SQAL lines may leave out the five matrices; they do not enter any KPI.
fn with_matrices(mut line: Value) -> Value {
    if line["record_type"] == "sqal" {
        let zeros = json!(vec![vec![0; 8]; 8]);
        let object = line.as_object_mut().unwrap();
        for name in [
            "distance_matrix",
            "reflectance_matrix",
            "amplitude_matrix",
            "ambient_matrix",
            "status_matrix",
        ] {
            object.entry(name).or_insert_with(|| zeros.clone());
        }
    }
    line
}

fn read_batches(case: &str, file: &str) -> Vec<Vec<Record>> {
    let text = std::fs::read_to_string(case_dir(case).join(file)).unwrap();
    let mut batches = vec![Vec::new()];
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with("//") {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
        if value.get("flush").is_some() {
            batches.push(Vec::new());
            continue;
        }
        let record: Record = serde_json::from_value(with_matrices(value))
            .unwrap_or_else(|e| panic!("{case} line {}: {e}", n + 1));
        batches.last_mut().unwrap().push(record);
    }
    batches.retain(|b| !b.is_empty());
    batches
}

async fn run_input(case: &str, file: &str) -> Run {
    let mut engine = Engine::new(AnalyticsSettings::default());
    let mut lines = Vec::new();
    for batch in read_batches(case, file) {
        let records: Vec<&Record> = batch.iter().collect();
        let output = engine.step(&records).await.unwrap();
        for kpi in &output.kpis {
            for row in json_rows(&kpi.batches).unwrap() {
                let mut line = Map::new();
                line.insert("kpi".into(), json!(kpi.kpi.name));
                line.extend(row);
                lines.push(Value::Object(line));
            }
        }
        for late in &output.late {
            lines.push(json!({"late": {
                "code_lot": late.code_lot,
                "index": late.index,
                "lateness_s": late.lateness.num_seconds(),
            }}));
        }
    }
    Run { lines }
}

fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| close(v, w))
        }
        _ => a == b,
    }
}

/// Runs a case and compares every emitted line with the checked-in expectation.
async fn golden(case: &str) -> Run {
    let run = run_input(case, "input.ndjson").await;
    let expected_path = case_dir(case).join("expected.ndjson");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let text: String = run
            .lines
            .iter()
            .map(|l| serde_json::to_string(l).unwrap() + "\n")
            .collect();
        std::fs::write(&expected_path, text).unwrap();
    }
    let expected: Vec<Value> = std::fs::read_to_string(&expected_path)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (UPDATE_GOLDEN=1 writes it)",
                expected_path.display()
            )
        })
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (n, (got, want)) in run.lines.iter().zip(&expected).enumerate() {
        assert!(
            close(got, want),
            "{case}: line {} differs\n got: {got}\nwant: {want}",
            n + 1
        );
    }
    assert_eq!(
        run.lines.len(),
        expected.len(),
        "{case}: {} lines emitted, {} expected",
        run.lines.len(),
        expected.len()
    );
    run
}

fn f(row: &Map<String, Value>, column: &str) -> f64 {
    row[column]
        .as_f64()
        .unwrap_or_else(|| panic!("{column} is {:?}", row[column]))
}

#[tokio::test]
async fn meal_ecart_per_meal() {
    let run = golden("meal_ecart").await;
    let meals = run.kpi("meal");
    assert_eq!(meals.len(), 3);
    // 190 given for 200 planned: −10 g, −5 %.
    assert_eq!(f(meals[0], "ecart_g"), -10.0);
    assert_eq!(f(meals[0], "ecart_pct"), -5.0);
    // A planned dose of 0 has no percentage.
    assert!(meals[2]["ecart_pct"].is_null());
}

#[tokio::test]
async fn lot_day_curve_weight_mortality_and_climate() {
    let run = golden("lot_day").await;
    let days = run.kpi("lot_day");
    let day2 = days.iter().rev().find(|r| r["jour"] == 2).unwrap();
    assert_eq!(f(day2, "dose_journaliere_g"), 240.0 + 260.0);
    assert_eq!(f(day2, "mais_cumule_g"), 190.0 + 225.0 + 240.0 + 260.0);
    // Mean weight 4650 on day 2 against 4525 on day 1.
    assert_eq!(f(day2, "gain_poids_g"), 125.0);
    assert_eq!(f(day2, "taux_mortalite"), 0.5);
    assert_eq!(f(day2, "temperature_min"), 21.0);
    assert_eq!(f(day2, "temperature_max"), 26.0);
    assert_eq!(f(day2, "humidite_moyenne"), 70.0);
}

#[tokio::test]
async fn lot_itm_losses_and_a_meal_after_the_outcome() {
    let run = golden("lot_itm").await;
    let lots = run.kpi("lot");
    let at_outcome = lots
        .iter()
        .find(|r| r["termine"] == true)
        .expect("the outcome closes the lot");
    // 1000 g of maize per duck for a 500 g liver; 50 of 1000 ducks lost.
    assert_eq!(f(at_outcome, "itm"), 2.0);
    assert_eq!(f(at_outcome, "pertes"), 0.05);
    // A meal after the outcome is late, counts, and recomputes the ITM.
    assert_eq!(run.late().len(), 1);
    let last = run.last_lot("LL2601001");
    assert_eq!(f(&last, "mais_total_g"), 1100.0);
    assert_eq!(f(&last, "itm"), 2.2);
}

#[tokio::test]
async fn liver_weight_from_sqal_samples_when_the_outcome_has_none() {
    let run = golden("itm_from_samples").await;
    let last = run.last_lot("LS2601002");
    // 600 g of maize; samples estimate 300 and 200 g livers.
    assert_eq!(f(&last, "poids_foie_moyen_g"), 250.0);
    assert_eq!(f(&last, "itm"), 2.4);
}

#[tokio::test]
async fn gaveur_and_site_windows() {
    let run = golden("windows").await;
    // Gaveur 1 fed two lots on 2026-01-05; both days closed by the next morning's meals.
    let day = run.last_window("gaveur", &json!(1), 1, "2026-01-05");
    assert_eq!(day["lots_actifs"], 2);
    // |−10 %|, |+10 %|, 0, |−20 %| → mean 10 %.
    assert_eq!(f(&day, "ecart_abs_moyen_pct"), 10.0);
    let site = run.last_window("site", &json!("LL"), 1, "2026-01-05");
    assert_eq!(site["lots_actifs"], 3);
    // The 7-day window from 2026-01-01 holds 2026-01-05 and 2026-01-06.
    let week = run.last_window("gaveur", &json!(1), 7, "2026-01-01");
    assert_eq!(week["lots_actifs"], 2);
    // LL2601001 finished on 2026-01-06 with ITM 2.0.
    let finished = run.last_window("site", &json!("LL"), 1, "2026-01-06");
    assert_eq!(finished["lots_termines"], 1);
    assert_eq!(f(&finished, "itm_moyen"), 2.0);
}

#[tokio::test]
async fn sqal_per_device_site_and_lot() {
    let run = golden("sqal").await;
    let rows = run.kpi("sqal");
    let device = rows
        .iter()
        .rev()
        .find(|r| r["scope"] == "device" && r["device_id"] == "ESP32_LL_01")
        .unwrap();
    assert_eq!(device["echantillons"], 3);
    assert_eq!(device["grade_a_plus"], 1);
    assert_eq!(device["grade_reject"], 1);
    assert_eq!(f(device, "taux_conformite"), 2.0 / 3.0);
    let site = rows
        .iter()
        .rev()
        .find(|r| r["scope"] == "site" && r["site"] == "LL")
        .unwrap();
    assert_eq!(site["echantillons"], 4);
    let lot = rows
        .iter()
        .rev()
        .find(|r| r["scope"] == "lot" && r["code_lot"] == "LL2601001")
        .unwrap();
    assert_eq!(lot["echantillons"], 2);
    assert_eq!(f(lot, "poids_foie_estime_moyen_g"), 550.0);
}

#[tokio::test]
async fn out_of_order_input_gives_the_same_lot_kpis() {
    let in_order = golden("lot_itm").await;
    let shuffled = run_input("lot_itm", "shuffled.ndjson").await;
    assert!(shuffled.late().is_empty(), "{:?}", shuffled.late());
    let a = in_order.kpi("lot");
    let at_outcome = a.iter().find(|r| r["termine"] == true).unwrap();
    let b = shuffled.last_lot("LL2601001");
    for column in [
        "repas",
        "jours",
        "mais_total_g",
        "itm",
        "pertes",
        "premier_repas",
    ] {
        assert!(
            close(&at_outcome[column], &b[column]),
            "{column}: {} vs {}",
            at_outcome[column],
            b[column]
        );
    }
}

#[tokio::test]
async fn a_gateway_offline_for_six_hours_is_not_late() {
    let run = golden("offline_gateway").await;
    assert!(run.late().is_empty(), "{:?}", run.late());
    // Its backlog still reaches the site window of its day once its own days close.
    let site = run.last_window("site", &json!("LL"), 1, "2026-01-05");
    assert_eq!(site["lots_actifs"], 2);
}

#[tokio::test]
async fn a_meal_beyond_the_lateness_is_late_and_corrects_the_window() {
    let run = golden("late_correction").await;
    let late = run.late();
    assert_eq!(late.len(), 1);
    // Day 1 soir (16:00) arrives after day 3 matin (06:00 two days later): 38 h behind the
    // newest meal, 37 h behind the watermark.
    assert_eq!(late[0]["late"]["lateness_s"], 37 * 3600);
    let windows = run.kpi("windows");
    let day1: Vec<_> = windows
        .iter()
        .filter(|r| {
            r["scope"] == "gaveur" && r["window_days"] == 1 && r["window_start"] == "2026-01-05"
        })
        .collect();
    assert!(day1.len() >= 2, "the late meal re-emits its window");
    // Before: only the matin meal (−10 %); after: matin and soir (−10 %, +30 %) → 20 %.
    assert_eq!(f(day1[0], "ecart_abs_moyen_pct"), 10.0);
    assert_eq!(f(day1.last().unwrap(), "ecart_abs_moyen_pct"), 20.0);
    let lot = run.last_lot("LL2601001");
    assert_eq!(lot["repas"], 4);
}
