//! Analytics end to end: records published to the real binary become KPI messages on the
//! gaveur's channel and the dashboards, `GET /api/v1/lots/{code_lot}`, and `lot_kpis` / `late`
//! Parquet rows read back with the arrow-rs reader; a restart continues a lot's totals.

mod support;

use std::collections::BTreeMap;

use gaveurs_loadgen::producer::MqttVersion;
use serde_json::{Map, Value, json};
use support::records::{meal, outcome};
use support::*;

const FAST: &str = "[storage]\nroll_interval_s = 1\n[analytics]\nbatch_interval_ms = 50\n";

fn gavage(code_lot: &str, record: &Value) -> (String, Vec<u8>, u8) {
    let _ = code_lot;
    let site = record["site"].as_str().unwrap();
    let gaveur = record["gaveur_id"].as_i64().unwrap();
    (
        format!("gaveurs/{site}/{gaveur}/gavage"),
        record.to_string().into_bytes(),
        1,
    )
}

fn lot_outcome(record: &Value) -> (String, Vec<u8>, u8) {
    let site = record["site"].as_str().unwrap();
    let gaveur = record["gaveur_id"].as_i64().unwrap();
    (
        format!("gaveurs/{site}/{gaveur}/outcome"),
        record.to_string().into_bytes(),
        1,
    )
}

/// Reads the channel until a message satisfies `wanted`.
async fn until(ws: &mut Ws, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        assert!(std::time::Instant::now() < deadline, "no {what}");
        let message = next_json(ws).await;
        if wanted(&message) {
            return message;
        }
    }
}

/// `lot_kpis` as a reader sees it: the row with the latest `_computed_at` of each lot.
fn latest_lot_kpis(dir: &std::path::Path) -> BTreeMap<String, Map<String, Value>> {
    let mut latest: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for row in read_rows(&dir.join("data/parquet"), "lot_kpis") {
        let code = row["code_lot"].as_str().unwrap().to_string();
        let newer = latest
            .get(&code)
            .is_none_or(|seen| seen["_computed_at"].as_str() <= row["_computed_at"].as_str());
        if newer {
            latest.insert(code, row);
        }
    }
    latest
}

fn sum_of_doses(meals: &[Value]) -> f64 {
    meals
        .iter()
        .map(|m| m["dose_reelle"].as_f64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lot_outcome_gives_its_itm_live_over_http_and_in_lot_kpis() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), FAST);
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;
    let meals = vec![
        meal("LL2607001", 1, "LL", 1, "matin"),
        meal("LL2607001", 1, "LL", 1, "soir"),
        meal("LL2607001", 1, "LL", 2, "matin"),
        meal("LL2607001", 1, "LL", 2, "soir"),
    ];
    let mut messages: Vec<_> = meals.iter().map(|m| gavage("LL2607001", m)).collect();
    messages.push(lot_outcome(&outcome("LL2607001", 1, "LL")));
    let codes = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, &messages).await;
    assert!(codes.iter().all(|c| *c == 0), "{codes:?}");

    let expected_itm = sum_of_doses(&meals) / 562.5;
    // Micro-batches decide how messages group; read until both have come, in any order.
    let (mut meal_kpi, mut lot) = (None, None);
    while meal_kpi.is_none() || lot.is_none() {
        let message = until(&mut channel, "KPIs", |m| m["type"] == "kpi").await;
        if message["data"]["kpi"] == "meal" && meal_kpi.is_none() {
            meal_kpi = Some(message);
        } else if message["data"]["kpi"] == "lot" && message["data"]["termine"] == true {
            lot = Some(message);
        }
    }
    let (meal_kpi, lot) = (meal_kpi.unwrap(), lot.unwrap());
    // The first meal: 218.5 given for 220 planned.
    assert_eq!(meal_kpi["data"]["jour"], 1);
    assert_eq!(meal_kpi["data"]["ecart_g"], -1.5);
    let itm = lot["data"]["itm"].as_f64().unwrap();
    assert!((itm - expected_itm).abs() < 1e-9, "{itm} vs {expected_itm}");
    // 15 of 1000 ducks lost.
    assert_eq!(lot["data"]["pertes"], 0.015);

    let (status, body) = http_get_as(gaveurs.http, "/api/v1/lots/LL2607001", &jean).await;
    assert_eq!(status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    assert!((view["kpis"]["lot"]["itm"].as_f64().unwrap() - expected_itm).abs() < 1e-9);
    assert_eq!(view["kpis"]["lot_day"]["jour"], 2);
    let sophie = gaveurs.token("sophie.dubois@gaveur.fr");
    let (status, _) = http_get_as(gaveurs.http, "/api/v1/lots/LL2607001", &sophie).await;
    assert_eq!(status, 403, "another gaveur's lot");
    let (status, _) = http_get_as(gaveurs.http, "/api/v1/lots/LL0000000", &jean).await;
    assert_eq!(status, 404);

    gaveurs.stop_cleanly();
    let lots = latest_lot_kpis(dir.path());
    let row = &lots["LL2607001"];
    assert!(
        (row["itm"].as_f64().unwrap() - expected_itm).abs() < 1e-9,
        "{row:?}"
    );
    assert_eq!(row["repas"], 4);
    assert_eq!(row["site"], "LL");
}

/// What the built-in lot outcome model predicts from `meals` (all of one LL lot, January).
fn predicted_outcome(meals: &[Value]) -> (f64, f64) {
    use gaveurs_operators::anomalies::outcome::{LotSoFar, OutcomeModel};
    use gaveurs_operators::anomalies::{DEFAULT_OUTCOME_MODEL, parse_artifact};
    let model: OutcomeModel = parse_artifact(DEFAULT_OUTCOME_MODEL.as_bytes()).unwrap();
    let dose = |m: &Value, f: &str| m[f].as_f64().unwrap();
    let days: std::collections::BTreeSet<i64> =
        meals.iter().map(|m| m["jour"].as_i64().unwrap()).collect();
    let gaps: Vec<f64> = meals
        .iter()
        .map(|m| {
            (dose(m, "dose_reelle") - dose(m, "dose_theorique")) / dose(m, "dose_theorique") * 100.0
        })
        .collect();
    let predicted = model
        .predict(&LotSoFar {
            site: "LL",
            month: 1,
            jours: days.len() as i64,
            repas: meals.len() as i64,
            mais_total_g: meals.iter().map(|m| dose(m, "dose_reelle")).sum(),
            mais_theorique_total_g: meals.iter().map(|m| dose(m, "dose_theorique")).sum(),
            ecart_moyen_pct: Some(gaps.iter().sum::<f64>() / gaps.len() as f64),
        })
        .unwrap();
    (predicted.itm, predicted.poids_foie_g)
}

/// A lot's KPI row carries its predicted outcome (`itm_pred`, `poids_foie_pred`) from its
/// first meals, recomputed as more arrive, on the channel, over HTTP and in `lot_kpis`.
#[tokio::test(flavor = "multi_thread")]
async fn a_lots_kpi_row_predicts_its_outcome_and_follows_its_meals() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), FAST);
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;
    let meals: Vec<Value> = (1..=4)
        .flat_map(|jour| ["matin", "soir"].map(|moment| meal("LL2607009", 1, "LL", jour, moment)))
        .collect();
    let publish = |meals: &[Value]| {
        let messages: Vec<_> = meals.iter().map(|m| gavage("LL2607009", m)).collect();
        let (mqtt, admin) = (gaveurs.mqtt(), gaveurs.admin.clone());
        async move {
            let codes = publish_each(mqtt, MqttVersion::V5, &admin, &messages).await;
            assert!(codes.iter().all(|c| *c == 0), "{codes:?}");
        }
    };
    let lot_row = |repas: i64| {
        move |m: &Value| {
            m["type"] == "kpi" && m["data"]["kpi"] == "lot" && m["data"]["repas"] == repas
        }
    };

    publish(&meals[..2]).await;
    let first = until(&mut channel, "the day-1 lot row", lot_row(2)).await;
    let (itm, foie) = predicted_outcome(&meals[..2]);
    assert_eq!(first["data"]["itm_pred"].as_f64(), Some(itm), "{first}");
    assert_eq!(
        first["data"]["poids_foie_pred"].as_f64(),
        Some(foie),
        "{first}"
    );
    assert_eq!(first["data"]["itm"], Value::Null, "no outcome yet");

    publish(&meals[2..]).await;
    let fourth = until(&mut channel, "the day-4 lot row", lot_row(8)).await;
    let (itm, foie) = predicted_outcome(&meals);
    assert_eq!(fourth["data"]["itm_pred"].as_f64(), Some(itm), "{fourth}");
    assert_eq!(fourth["data"]["poids_foie_pred"].as_f64(), Some(foie));
    assert_ne!(first["data"]["itm_pred"], fourth["data"]["itm_pred"]);

    let (status, body) = http_get_as(gaveurs.http, "/api/v1/lots/LL2607009", &jean).await;
    assert_eq!(status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        view["kpis"]["lot"]["itm_pred"].as_f64(),
        Some(itm),
        "{view}"
    );
    assert_eq!(view["kpis"]["lot"]["poids_foie_pred"].as_f64(), Some(foie));

    gaveurs.stop_cleanly();
    let row = &latest_lot_kpis(dir.path())["LL2607009"];
    assert_eq!(row["itm_pred"].as_f64(), Some(itm), "{row:?}");
    assert_eq!(row["poids_foie_pred"].as_f64(), Some(foie), "{row:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_meal_is_stored_in_late_corrects_its_lot_and_a_restart_continues_the_totals() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), FAST);
    let first = vec![
        meal("LS2607002", 2, "LS", 1, "matin"),
        meal("LS2607002", 2, "LS", 3, "matin"),
    ];
    let late = meal("LS2607002", 2, "LS", 1, "soir");
    let messages: Vec<_> = first.iter().map(|m| gavage("LS2607002", m)).collect();
    let codes = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, &messages).await;
    assert!(codes.iter().all(|c| *c == 0), "{codes:?}");
    // Published alone, so it lands in a later micro-batch than the day-3 meal.
    let sophie = gaveurs.token("sophie.dubois@gaveur.fr");
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/2?since=0", &sophie).await;
    until(&mut channel, "the day-3 meal's KPIs", |m| {
        m["type"] == "kpi" && m["data"]["kpi"] == "lot" && m["data"]["repas"] == 2
    })
    .await;
    let codes = publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &[gavage("LS2607002", &late)],
    )
    .await;
    assert_eq!(codes, vec![0], "a late meal is accepted like any other");
    until(&mut channel, "the corrected lot", |m| {
        m["type"] == "kpi" && m["data"]["kpi"] == "lot" && m["data"]["repas"] == 3
    })
    .await;
    gaveurs.stop_cleanly();

    let root = dir.path().join("data/parquet");
    let late_rows = read_rows(&root, "late");
    assert_eq!(late_rows.len(), 1, "{late_rows:?}");
    assert_eq!(late_rows[0]["jour"], 1);
    assert_eq!(late_rows[0]["moment"], "soir");
    // Day 3 07:00 against day 1 18:00, less the hour of allowed lateness: 36 h.
    assert_eq!(late_rows[0]["_lateness_s"], 36.0 * 3600.0);
    assert_eq!(latest_lot_kpis(dir.path())["LS2607002"]["repas"], 3);

    // A restart reads the lot's published meals back: the next meal adds to them.
    let gaveurs = Gaveurs::start(dir.path(), FAST);
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/2", &sophie).await;
    let last = meal("LS2607002", 2, "LS", 3, "soir");
    let codes = publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &[gavage("LS2607002", &last)],
    )
    .await;
    assert_eq!(codes, vec![0]);
    let lot = until(&mut channel, "the lot after the restart", |m| {
        m["type"] == "kpi" && m["data"]["kpi"] == "lot"
    })
    .await;
    assert_eq!(lot["data"]["repas"], 4);
    let all = [first.clone(), vec![late, last]].concat();
    assert_eq!(lot["data"]["mais_total_g"], json!(sum_of_doses(&all)));
    gaveurs.stop_cleanly();
    assert_eq!(latest_lot_kpis(dir.path())["LS2607002"]["repas"], 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn site_windows_reach_the_dashboards() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), FAST);
    let superviseur = gaveurs.token("superviseur@euralis.fr");
    let mut dashboard = ws_connect(gaveurs.http, "/ws/realtime/", &superviseur).await;
    // Day 2's meal passes the lot's watermark past the end of day 1: day 1's windows close.
    let messages = vec![
        gavage("MT2607003", &meal("MT2607003", 3, "MT", 1, "matin")),
        gavage("MT2607003", &meal("MT2607003", 3, "MT", 2, "matin")),
    ];
    let codes = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, &messages).await;
    assert!(codes.iter().all(|c| *c == 0), "{codes:?}");
    let window = until(&mut dashboard, "a site window", |m| {
        m["type"] == "kpi" && m["data"]["scope"] == "site" && m["data"]["window_days"] == 1
    })
    .await;
    assert_eq!(window["site_code"], "MT");
    assert_eq!(window["data"]["site"], "MT");
    assert_eq!(window["data"]["window_start"], "2026-01-11");
    assert_eq!(window["data"]["lots_actifs"], 1);
    gaveurs.stop_cleanly();
}
