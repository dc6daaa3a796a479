//! Anomaly scoring end to end (SPEC §3 `anomalies`, `anomalie`): lots replayed from CSV
//! into the real binary with its built-in model, anomalies read back from Parquet and seen on
//! the owner's channel and the dashboards; the model file swapped under load, and a corrupt
//! one refused.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use gaveurs_loadgen::producer::MqttVersion;
use gaveurs_operators::anomalies::{DEFAULT_MEAL_MODEL, parse_meal_model};
use serde_json::{Value, json};
use support::*;

/// The planned dose of each meal of a lot that follows the usual protocol: a ramp of 20 g a
/// meal that flattens at 470 g.
const PROTOCOL: [f64; 22] = [
    210.0, 230.0, 250.0, 270.0, 290.0, 310.0, 330.0, 350.0, 370.0, 390.0, 410.0, 425.0, 440.0,
    450.0, 460.0, 465.0, 470.0, 470.0, 470.0, 470.0, 470.0, 470.0,
];
/// Grams the real dose differs from the plan, meal by meal, as a feeder's do.
const WOBBLE: [f64; 22] = [
    2.0, 1.0, 0.0, 2.0, -1.0, 1.0, 2.0, 0.0, 1.0, -2.0, 2.0, 1.0, 0.0, 1.0, -1.0, 2.0, 0.0, 1.0,
    -1.0, 0.0, 2.0, 1.0,
];
/// Where the off-protocol lot's plan leaves the protocol, and how far: −25 %, the far end of
/// what `gaveurs model eval` injects (smaller cuts are within what real plans do at a 1 %
/// false-alarm rate: see its report).
const LEAVES_AT: usize = 8;
const OFF_PROTOCOL: f64 = 0.75;

const LOTS_HEADER: &str = "code_lot,site,gaveur_id,date_debut,date_fin,duree_gavage,souche,nb_canards_mis_en_gavage,nb_canards_accroches,poids_foie_moyen_g\n";

fn lot_row(code_lot: &str, gaveur_id: i64) -> String {
    format!("{code_lot},LL,{gaveur_id},2023-02-23,2023-03-05,11,CF80* - M15 V2E SFM,1000,960,\n")
}

/// A lot's meals as CSV rows; from meal `off_from` on, the plan (and the real dose that
/// follows it) is `factor` of the protocol.
fn meal_rows(code_lot: &str, off_from: usize, factor: f64) -> String {
    let mut rows = String::new();
    for (i, planned) in PROTOCOL.iter().enumerate() {
        let planned = if i >= off_from {
            (planned * factor).round()
        } else {
            *planned
        };
        let moment = if i % 2 == 0 { "matin" } else { "soir" };
        rows.push_str(&format!(
            "{code_lot},{},{},{moment},{planned},{}\n",
            i + 1,
            i / 2 + 1,
            planned + WOBBLE[i]
        ));
    }
    rows
}

fn replay_csv(gaveurs: &Gaveurs, dir: &Path, lots: &str, meals: &str) {
    let lots = gzip(dir, "lots.csv.gz", &format!("{LOTS_HEADER}{lots}"));
    let meals = gzip(
        dir,
        "meals.csv.gz",
        &format!("code_lot,repas,jour,moment,dose_theorique_g,dose_reelle_g\n{meals}"),
    );
    let mqtt = gaveurs.mqtt().to_string();
    let config = dir.join("gaveurs.toml");
    let output = replay(
        dir,
        &[
            "--meals",
            meals.to_str().unwrap(),
            "--lots",
            lots.to_str().unwrap(),
            "--mqtt",
            &mqtt,
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        output.status.success(),
        "replay failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Messages of `kind` on a socket until `enough` of them came.
async fn messages_of(ws: &mut Ws, kind: &str, enough: usize) -> Vec<Value> {
    let mut found = Vec::new();
    while found.len() < enough {
        let message = tokio::time::timeout(Duration::from_secs(30), next_json(ws))
            .await
            .unwrap_or_else(|_| panic!("{kind} messages so far: {found:#?}"));
        if message["type"] == kind {
            found.push(message);
        }
    }
    found
}

fn key(row: &serde_json::Map<String, Value>) -> (String, i64, String) {
    (
        row["code_lot"].as_str().unwrap().to_string(),
        row["jour"].as_i64().unwrap(),
        row["moment"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_lot_raises_nothing_and_an_off_protocol_plan_is_an_anomaly_for_its_gaveur_only() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "[storage]\nroll_interval_s = 1\n");
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let mut jeans_channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;
    let mut dashboard = ws_connect(gaveurs.http, "/ws/realtime/", &gaveurs.admin).await;

    // Sophie's lot follows the protocol; Jean's leaves it at meal 8 (−25 %, the real dose
    // with it, so no rule sees anything). Sophie's meals are logged first.
    replay_csv(
        &gaveurs,
        dir.path(),
        &format!("{}{}", lot_row("LLCLEAN001", 2), lot_row("LLOFFPR002", 1)),
        &format!(
            "{}{}",
            meal_rows("LLCLEAN001", usize::MAX, 1.0),
            meal_rows("LLOFFPR002", LEAVES_AT, OFF_PROTOCOL)
        ),
    );

    let first = &messages_of(&mut jeans_channel, "anomalie", 1).await[0];
    assert_eq!(first["data"]["code_lot"], "LLOFFPR002");
    assert_eq!(first["data"]["model"], "gavage_meal");
    assert_eq!(first["data"]["explanation"][0]["feature"], "dose_theorique");
    let alert = loop {
        let message = messages_of(&mut dashboard, "alert", 1).await.remove(0);
        if message["data"]["alert_type"] == "anomalie" {
            break message;
        }
    };
    assert_eq!(alert["data"]["code_lot"], "LLOFFPR002");
    assert_eq!(alert["data"]["severity"], "warning");
    let (_, metrics) = http_get(gaveurs.http, "/metrics").await;
    let count = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{model=\"gavage_meal\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics:\n{metrics}"))
    };
    assert!(count("gaveurs_anomalies_total") >= 1.0);
    assert!(count("gaveurs_ml_scored_total") > PROTOCOL.len() as f64);

    // Everything Sophie's channel ever carried: her meals, and no anomaly.
    let sophie = gaveurs.token("sophie.dubois@gaveur.fr");
    let mut sophies_channel = ws_connect(gaveurs.http, "/ws/gaveur/2?since=0", &sophie).await;
    let sophies_meals = messages_of(&mut sophies_channel, "gavage", PROTOCOL.len()).await;
    assert_eq!(sophies_meals.len(), PROTOCOL.len());

    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();
    let rows = read_rows(&root, "anomalies");
    assert!(
        !rows.is_empty(),
        "the off-protocol lot is in the anomalies dataset"
    );
    for row in &rows {
        assert_eq!(
            row["code_lot"], "LLOFFPR002",
            "the clean lot raises nothing: {row:?}"
        );
        assert_eq!(row["gaveur_id"], 1);
        assert_eq!(row["site"], "LL");
        assert_eq!(row["_backfill"], true, "a replay is backfill");
        assert!(row["score"].as_f64().unwrap() >= row["threshold"].as_f64().unwrap());
        assert!(
            row["model_version"]
                .as_str()
                .unwrap()
                .starts_with("gavage_meal-")
        );
    }
    let keys: Vec<_> = rows.iter().map(key).collect();
    let unique: BTreeSet<_> = keys.iter().cloned().collect();
    assert_eq!(keys.len(), unique.len(), "each meal at most once: {keys:?}");
    let first_meal = keys
        .iter()
        .map(|(_, jour, moment)| (2 * (jour - 1) + i64::from(moment == "soir")) as usize)
        .min()
        .unwrap();
    assert!(
        (LEAVES_AT..=LEAVES_AT + 2).contains(&first_meal),
        "found where the plan leaves the protocol, or within two meals: {keys:?}"
    );
    let explanation = rows[0]["explanation"].as_array().unwrap();
    assert!(!explanation.is_empty() && explanation.len() <= 3);
    for part in explanation {
        assert!(
            part["feature"].is_string() && part["expected"].is_number(),
            "{part}"
        );
    }
}

/// Meals of lots whose plans leave the protocol as the off-protocol lot's does, as MQTT
/// messages of gaveur 1.
fn off_protocol_meals(first: usize, count: usize) -> Vec<(String, Vec<u8>, u8)> {
    let mut messages = Vec::new();
    for lot in first..first + count {
        for (i, planned) in PROTOCOL.iter().enumerate() {
            let planned = if i >= LEAVES_AT {
                (planned * OFF_PROTOCOL).round()
            } else {
                *planned
            };
            let record = json!({
                "code_lot": format!("LLSWAP{lot:04}"), "gaveur_id": 1, "site": "LL",
                "jour": i / 2 + 1, "moment": if i % 2 == 0 { "matin" } else { "soir" },
                "dose_theorique": planned, "dose_reelle": planned + WOBBLE[i],
                "timestamp": format!("2026-01-{:02}T{}:00:00", 5 + i / 2, if i % 2 == 0 { "07" } else { "18" }),
            });
            messages.push((
                "gaveurs/LL/1/gavage".to_string(),
                record.to_string().into_bytes(),
                1,
            ));
        }
    }
    messages
}

async fn publish_off_protocol_lots(gaveurs: &Gaveurs, first: usize, count: usize) {
    let messages = off_protocol_meals(first, count);
    let codes = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, &messages).await;
    assert!(codes.iter().all(|c| *c == 0), "refused: {codes:?}");
}

fn ml_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("logs/ml.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swapped_model_scores_the_later_records_and_a_corrupt_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let built_in = parse_meal_model(DEFAULT_MEAL_MODEL.as_bytes()).unwrap();
    std::fs::write(dir.path().join("model.json"), DEFAULT_MEAL_MODEL).unwrap();
    let gaveurs = Gaveurs::start(
        dir.path(),
        "[storage]\nroll_interval_s = 1\n[ml]\nmeal_model = \"model.json\"\n",
    );
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;

    publish_off_protocol_lots(&gaveurs, 0, 3).await;
    let before = messages_of(&mut channel, "anomalie", 3).await;
    assert!(
        before
            .iter()
            .all(|m| m["data"]["model_version"] == built_in.version.as_str())
    );

    // Half a file, as an editor saving over it would leave: refused, the running model stays.
    std::fs::write(dir.path().join("model.json"), &DEFAULT_MEAL_MODEL[..200]).unwrap();
    eventually(
        Duration::from_secs(20),
        "the corrupt artifact refused in ml.log",
        || {
            ml_log(&gaveurs.dir)
                .contains("model refused; the running models stay")
                .then_some(())
        },
    );
    // A model that flags more (a lower threshold), with its own version, while lots flow.
    let mut stricter = built_in.clone();
    stricter.threshold = (built_in.threshold / 2.0 * 1000.0).round() / 1000.0;
    stricter.version = stricter.digest();
    let publishing = {
        let gaveurs_mqtt = gaveurs.mqtt();
        let admin = gaveurs.admin.clone();
        tokio::spawn(async move {
            let messages = off_protocol_meals(3, 6);
            publish_each(gaveurs_mqtt, MqttVersion::V5, &admin, &messages).await
        })
    };
    std::fs::write(
        dir.path().join("model.json"),
        serde_json::to_string_pretty(&stricter).unwrap(),
    )
    .unwrap();
    let codes = publishing.await.unwrap();
    assert!(codes.iter().all(|c| *c == 0), "refused: {codes:?}");
    eventually(Duration::from_secs(20), "the swap in ml.log", || {
        ml_log(&gaveurs.dir)
            .contains("models swapped")
            .then_some(())
    });
    // The lots after the swap are scored by the stricter model.
    publish_off_protocol_lots(&gaveurs, 9, 1).await;
    loop {
        let message = messages_of(&mut channel, "anomalie", 1).await.remove(0);
        if message["data"]["code_lot"] == "LLSWAP0009" {
            assert_eq!(message["data"]["model_version"], stricter.version.as_str());
            break;
        }
    }

    let root = gaveurs.parquet_root();
    let dir_path = gaveurs.dir.clone();
    gaveurs.stop_cleanly();
    let rows = read_rows(&root, "anomalies");
    let keys: Vec<_> = rows.iter().map(key).collect();
    let unique: BTreeSet<_> = keys.iter().cloned().collect();
    assert_eq!(keys.len(), unique.len(), "no meal scored twice");
    let versions: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["model_version"].as_str().unwrap())
        .collect();
    assert_eq!(
        versions,
        BTreeSet::from([built_in.version.as_str(), stricter.version.as_str()])
    );
    for lot in 0..10 {
        assert!(
            keys.iter()
                .any(|(code, _, _)| *code == format!("LLSWAP{lot:04}")),
            "every lot found, before, during and after the swap: {keys:?}"
        );
    }
    let log = ml_log(&dir_path);
    let scored = log
        .lines()
        .rev()
        .find(|l| l.contains("anomaly scoring stopped"))
        .unwrap_or_else(|| panic!("no stop line in ml.log:\n{log}"));
    assert!(
        scored.contains(&format!("scored={}", 10 * PROTOCOL.len())),
        "every meal scored once: {scored}"
    );
}

/// The `anomalie` rule (warning) texts like any rule texted from its severity — never for a
/// replay. A replayed off-protocol lot opens its alert without a text; the same kind of lot
/// published live afterwards is texted, and is the only text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anomaly_alert_is_texted_for_live_records_and_never_for_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let twilio = support::twilio::FakeTwilio::start().await;
    std::fs::write(
        dir.path().join("phones.csv"),
        "gaveur_id,phone\n1,+33612345678\n",
    )
    .unwrap();
    let extra = format!(
        "[storage]\nroll_interval_s = 1\n[sms]\nmin_severity = \"warning\"\ntwilio_base_url = \"{}\"\ndirectory = \"{}\"\n",
        twilio.base_url,
        dir.path().join("phones.csv").display()
    );
    let gaveurs = Gaveurs::start_with_env(
        dir.path(),
        &extra,
        &[
            (
                "TWILIO_ACCOUNT_SID",
                Some("AC00000000000000000000000000000001"),
            ),
            ("TWILIO_AUTH_TOKEN", Some("secret-token")),
            ("TWILIO_PHONE_NUMBER", Some("+33700000000")),
        ],
    );
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let mut channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;

    replay_csv(
        &gaveurs,
        dir.path(),
        &lot_row("LLBACKF001", 1),
        &meal_rows("LLBACKF001", LEAVES_AT, OFF_PROTOCOL),
    );
    let replayed = loop {
        let message = messages_of(&mut channel, "alerte", 1).await.remove(0);
        if message["data"]["rule"] == "anomalie" {
            break message;
        }
    };
    assert_eq!(replayed["data"]["code_lot"], "LLBACKF001");
    assert_eq!(replayed["data"]["severity"], "warning");
    assert_eq!(replayed["data"]["backfill"], true);

    publish_off_protocol_lots(&gaveurs, 0, 1).await;
    let sms = twilio.wait_for_requests(1, Duration::from_secs(30)).await;
    assert_eq!(sms.len(), 1, "{sms:#?}");
    assert!(
        sms[0].body.contains("LLSWAP0000"),
        "the live lot's text: {}",
        sms[0].body
    );
    assert!(
        sms[0].body.starts_with("gaveurs ALERTE: Anomalie"),
        "{}",
        sms[0].body
    );
    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();
    let texts = twilio.requests();
    assert_eq!(texts.len(), 1, "no text for the replayed lot: {texts:#?}");
    let alerts = read_rows(&root, "alerts");
    assert!(
        alerts.iter().any(|a| a["rule"] == "anomalie"
            && a["code_lot"] == "LLBACKF001"
            && a["backfill"] == true),
        "the replayed lot's anomaly alert is in the alerts dataset"
    );
}

/// The anomaly rows of `root`: (lot, jour, moment, score), each once, or the test fails.
fn anomaly_rows(root: &Path) -> BTreeSet<(String, i64, String, String)> {
    let rows = read_rows(root, "anomalies");
    let keys: BTreeSet<_> = rows
        .iter()
        .map(|r| {
            let (lot, jour, moment) = key(r);
            (lot, jour, moment, r["score"].to_string())
        })
        .collect();
    assert_eq!(
        keys.len(),
        rows.len(),
        "an anomaly written twice: {rows:#?}"
    );
    keys
}

/// The same records give the same anomaly rows, crash or not: lots published to a pipeline
/// killed (SIGKILL) while it scores, with scored records not yet in its saved state, then
/// restarted, against a pipeline that never crashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_neither_loses_nor_repeats_an_anomaly() {
    // Saved only around publications: the kill lands with scored records unsaved.
    let config = "[storage]\nroll_interval_s = 1\n[ml]\nstate_save_interval_ms = 60000\n";
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = Gaveurs::start(reference_dir.path(), config);
    publish_off_protocol_lots(&reference, 0, 8).await;
    let reference_root = reference.parquet_root();
    reference.stop_cleanly();
    let expected = anomaly_rows(&reference_root);
    assert!(
        expected.len() >= 8,
        "every lot has its anomaly: {expected:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let first = Gaveurs::start(dir.path(), config);
    let root = first.parquet_root();
    publish_off_protocol_lots(&first, 0, 4).await;
    eventually(Duration::from_secs(20), "a first anomalies file", || {
        Some(()).filter(|_| !parquet_files(&root, "anomalies").is_empty())
    });
    publish_off_protocol_lots(&first, 4, 2).await;
    first.kill9();
    let second = Gaveurs::start(dir.path(), config);
    publish_off_protocol_lots(&second, 6, 2).await;
    second.stop_cleanly();
    assert_eq!(anomaly_rows(&root), expected);
}

/// Every SQAL sample is scored against its station's track: thirty of the simulator's
/// stations' measurements, one of them with two dead ToF zones, give one anomaly — a row
/// naming the station and sample, an `anomalie` on the channel of the gaveur whose lot the
/// sample names, and an `alert` on the dashboards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_with_dead_tof_zones_is_an_anomaly_and_clean_samples_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "[storage]\nroll_interval_s = 1\n");
    let jean = gaveurs.token("jean.martin@gaveur.fr");
    let mut jeans_channel = ws_connect(gaveurs.http, "/ws/gaveur/1", &jean).await;
    let mut dashboard = ws_connect(gaveurs.http, "/ws/realtime/", &gaveurs.admin).await;

    // Jean feeds the lot the samples come from, so they are his.
    let meal = json!({
        "code_lot": "LLSQAL0001", "gaveur_id": 1, "site": "LL", "jour": 1, "moment": "matin",
        "dose_theorique": 210.0, "dose_reelle": 211.0, "timestamp": "2026-01-05T07:00:00",
    });
    let mut messages = vec![(
        "gaveurs/LL/1/gavage".to_string(),
        meal.to_string().into_bytes(),
        1,
    )];
    let today = chrono::Utc::now().date_naive();
    let mut farm = gaveurs_loadgen::simulate::Farm::new(7, 1, 1, 3, today);
    let defective = 19;
    let mut expected = None;
    for n in 0..30 {
        let mut outgoing = farm.next_sample(chrono::Utc::now()).unwrap();
        let body = &mut outgoing.body;
        body["code_lot"] = json!("LLSQAL0001");
        if n == defective {
            for col in [3, 4] {
                body["vl53l8ch"]["distance_matrix"][5][col] = json!(0);
                body["vl53l8ch"]["amplitude_matrix"][5][col] = json!(0);
            }
            expected = Some((body["device_id"].clone(), body["sample_id"].clone()));
        }
        messages.push((outgoing.topic, body.to_string().into_bytes(), 1));
    }
    let (device_id, sample_id) = expected.unwrap();
    let codes = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, &messages).await;
    assert!(codes.iter().all(|c| *c == 0), "refused: {codes:?}");

    let pushed = &messages_of(&mut jeans_channel, "anomalie", 1).await[0]["data"];
    assert_eq!(pushed["model"], "sqal_sample");
    assert_eq!(pushed["device_id"], device_id);
    assert_eq!(pushed["sample_id"], sample_id);
    assert_eq!(pushed["explanation"][0]["feature"], "tof_dead_zones");
    assert_eq!(pushed["explanation"][0]["value"], 2.0);
    let alert = loop {
        let message = messages_of(&mut dashboard, "alert", 1).await.remove(0);
        if message["data"]["alert_type"] == "anomalie" {
            break message;
        }
    };
    assert_eq!(alert["data"]["device_id"], device_id);
    let (_, metrics) = http_get(gaveurs.http, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "gaveurs_ml_scored_total{model=\"sqal_sample\"} 30"),
        "every sample scored:\n{metrics}"
    );

    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();
    let rows = read_rows(&root, "anomalies");
    assert_eq!(rows.len(), 1, "the clean samples raise nothing: {rows:#?}");
    let row = &rows[0];
    assert_eq!(row["model"], "sqal_sample");
    assert_eq!(row["device_id"], device_id);
    assert_eq!(row["sample_id"], sample_id);
    assert_eq!(row["code_lot"], "LLSQAL0001");
    assert_eq!(row["gaveur_id"], 1);
    assert!(row.get("jour").is_none_or(Value::is_null), "{row:?}");
    // The same score opened the `anomalie` rule's alert on the station.
    let alerts = read_rows(&root, "alerts");
    assert!(
        alerts.iter().any(|a| a["rule"] == "anomalie"
            && a["device_id"] == device_id
            && a["severity"] == "warning"),
        "{alerts:#?}"
    );
    assert!(
        row["model_version"]
            .as_str()
            .unwrap()
            .starts_with("sqal_sample-")
    );
}

/// Weight, mortality and barn climate count where a record carries them: a lot that follows
/// the protocol, weighed every morning, raises nothing until one meal is fed in a 31 °C barn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_barn_is_an_anomaly_named_by_its_temperature() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "[storage]\nroll_interval_s = 1\n");
    const HOT: usize = 9;
    let messages: Vec<(String, Vec<u8>, u8)> = PROTOCOL
        .iter()
        .enumerate()
        .map(|(i, planned)| {
            let jour = i / 2 + 1;
            let record = json!({
                "code_lot": "LLCLIMAT01", "gaveur_id": 1, "site": "LL",
                "jour": jour, "moment": if i % 2 == 0 { "matin" } else { "soir" },
                "dose_theorique": planned, "dose_reelle": planned + WOBBLE[i],
                "poids_moyen": 4500.0 + 75.0 * jour as f64, "taux_mortalite": 0.2,
                "temperature_stabule": if i == HOT { 31.0 } else { 21.5 },
                "humidite_stabule": 62.0,
                "timestamp": format!("2026-01-{:02}T{}:00:00", 5 + i / 2, if i % 2 == 0 { "07" } else { "18" }),
            });
            ("gaveurs/LL/1/gavage".to_string(), record.to_string().into_bytes(), 1)
        })
        .collect();
    let codes = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, &messages).await;
    assert!(codes.iter().all(|c| *c == 0), "refused: {codes:?}");
    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();
    let rows = read_rows(&root, "anomalies");
    assert_eq!(rows.len(), 1, "only the hot meal: {rows:#?}");
    assert_eq!(
        key(&rows[0]),
        ("LLCLIMAT01".to_string(), 5, "soir".to_string())
    );
    let lead = &rows[0]["explanation"][0];
    assert_eq!(lead["feature"], "temperature_stabule", "{lead}");
    assert_eq!(lead["value"], 31.0);
}
