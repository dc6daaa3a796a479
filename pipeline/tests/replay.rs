//! `gaveurs replay` feeds past lots (gzip CSV) to a running pipeline as backfill records, and
//! the `backfill` user property reaches the envelope through the embedded listener and an
//! external broker.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gaveurs_loadgen::producer::MqttVersion;
use serde_json::Value;
use support::{Gaveurs, Mosquitto, gzip, publish_each, read_rows, records, replay};

/// The `key=value` pairs of the stdout summary line.
fn summary(output: &Output) -> BTreeMap<String, String> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("replayed "))
        .unwrap_or_else(|| {
            panic!(
                "no summary line on stdout: {stdout:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    line.split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn assert_counts(output: &Output, expected: &[(&str, u64)]) {
    let summary = summary(output);
    for (key, value) in expected {
        assert_eq!(
            summary.get(*key).map(String::as_str),
            Some(value.to_string().as_str()),
            "{key} in {summary:?}; stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn utc(value: &Value) -> DateTime<Utc> {
    let text = value.as_str().unwrap_or_else(|| panic!("a time: {value}"));
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc())
        })
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// Columns in another order than the real export, with extra ones, a quoted comma and an
/// empty strain: the replay finds columns by name.
const LOTS: &str = "\
site,code_lot,gaveur_id,souche,date_debut,date_fin,duree_gavage,geo,nb_canards_mis_en_gavage,nb_canards_accroches,poids_foie_moyen_g,itm,remarque
LL,LLT000001,1,Mulard,2023-03-25,2023-03-27,3,\"BRETAGNE, NORD\",1000,960,512.5,15.2,x
LS,LST000002,2,,2023-07-10,2023-07-11,2,PAYS DE LOIRE,800,790,480,14.1,
MT,MTT000003,3,Barbarie,2023-11-02,2023-11-03,2,GERS,500,-10,450.25,16.0,a negative count
";

/// LLT000001 (3 days, its jour 2 soir has a negative dose), LST000002 and MTT000003 (2 days
/// each), a meal of a lot the lots file lacks, and a dose that is not a number.
const MEALS: &str = "\
code_lot,repas,jour,moment,dose_theorique_g,dose_reelle_g
LLT000001,1,1,matin,210,212
LLT000001,2,1,soir,230,231.5
LLT000001,3,2,matin,250,250
LLT000001,4,2,soir,270,-5
LLT000001,5,3,matin,290,288
LLT000001,6,3,soir,310,309
LST000002,1,1,matin,200,199
LST000002,2,1,soir,220,221
ZZT000009,1,1,matin,200,200
LST000002,3,2,matin,abc,240
LST000002,4,2,soir,260,259
MTT000003,1,1,matin,205,205
MTT000003,2,1,soir,225,224
MTT000003,3,2,matin,245,246
MTT000003,4,2,soir,265,265
LST000002,5,3,matin,280,281
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_publishes_meals_then_outcomes_as_backfill_and_reports_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let lots = gzip(dir.path(), "lots.csv.gz", LOTS);
    let meals = gzip(dir.path(), "meals.csv.gz", MEALS);
    // A live record beside the replay, to show the flag comes from the replay.
    let live = records::meal("LLLIVE0001", 1, "LL", 1, "matin");
    let codes = publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &[(
            "gaveurs/LL/1/gavage".into(),
            live.to_string().into_bytes(),
            1,
        )],
    )
    .await;
    assert_eq!(codes, [0]);

    // No --token: a dev-mode token for admin@euralis.fr, minted with the pipeline's config.
    let mqtt = gaveurs.mqtt().to_string();
    let config = dir.path().join("gaveurs.toml");
    let output = replay(
        dir.path(),
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
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "replay failed:\n{stderr}");
    assert_counts(
        &output,
        &[
            ("meals", 14),
            ("meals_accepted", 13),
            ("meals_refused", 1),
            ("outcomes", 3),
            ("outcomes_accepted", 2),
            ("outcomes_refused", 1),
            ("skipped", 2),
        ],
    );
    assert!(
        stderr.contains("0x99 meal LLT000001 jour 2 soir (meals line 5): dose_reelle"),
        "the refused meal, its reason code and why: {stderr}"
    );
    assert!(
        stderr.contains("0x99 outcome MTT000003 (lots line 4): nb_canards_accroches"),
        "{stderr}"
    );
    assert!(
        stderr.contains("meals line 10: lot ZZT000009 is not in the lots file"),
        "{stderr}"
    );
    assert!(
        stderr.contains("meals line 11: dose_theorique_g \"abc\" is not a number"),
        "{stderr}"
    );

    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();
    let rows = read_rows(&root, "gavage_meals");
    let replayed: Vec<_> = rows
        .iter()
        .filter(|r| r["code_lot"] != "LLLIVE0001")
        .collect();
    let keys: BTreeSet<(String, i64, String)> = replayed
        .iter()
        .map(|r| {
            (
                r["code_lot"].as_str().unwrap().to_string(),
                r["jour"].as_i64().unwrap(),
                r["moment"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(replayed.len(), 13, "every accepted meal once");
    assert_eq!(keys.len(), 13);
    assert!(!keys.contains(&("LLT000001".into(), 2, "soir".into())));
    assert!(keys.contains(&("LST000002".into(), 3, "matin".into())));
    for row in &replayed {
        assert_eq!(row["_backfill"], true, "{row:?}");
        assert_eq!(row["_transport"], "mqtt");
    }
    let live = rows.iter().find(|r| r["code_lot"] == "LLLIVE0001").unwrap();
    assert_eq!(live["_backfill"], false);

    let meal = |lot: &str, jour: i64, moment: &str| {
        *replayed
            .iter()
            .find(|r| r["code_lot"] == lot && r["jour"] == jour && r["moment"] == moment)
            .unwrap_or_else(|| panic!("{lot} {jour} {moment}"))
    };
    // Site, gaveur and strain come from the lot; 07:00 / 17:00 Europe/Paris on
    // date_debut + jour − 1, across the switch to summer time on 2023-03-26.
    let first = meal("LLT000001", 1, "matin");
    assert_eq!(
        (&first["site"], &first["gaveur_id"], &first["genetique"]),
        (&Value::from("LL"), &Value::from(1), &Value::from("Mulard"))
    );
    assert_eq!(first["dose_theorique"], 210.0);
    assert_eq!(first["dose_reelle"], 212.0);
    assert!(first.get("poids_moyen").is_none_or(Value::is_null));
    let at = |text: &str| text.parse::<DateTime<Utc>>().unwrap();
    assert_eq!(utc(&first["_event_time"]), at("2023-03-25T06:00:00Z"));
    assert_eq!(
        utc(&meal("LLT000001", 2, "matin")["_event_time"]),
        at("2023-03-26T05:00:00Z")
    );
    let last = meal("LLT000001", 3, "soir");
    assert_eq!(utc(&last["_event_time"]), at("2023-03-27T15:00:00Z"));
    assert_eq!(utc(&last["timestamp"]), at("2023-03-27T15:00:00Z"));
    assert!(
        meal("LST000002", 1, "soir")
            .get("genetique")
            .is_none_or(Value::is_null),
        "no souche, no genetique"
    );
    // pret_abattage on each lot's last meal only (LST000002's comes last in the file).
    let ready: BTreeSet<(String, i64, String)> = replayed
        .iter()
        .filter(|r| r["pret_abattage"] == true)
        .map(|r| {
            (
                r["code_lot"].as_str().unwrap().to_string(),
                r["jour"].as_i64().unwrap(),
                r["moment"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        ready,
        BTreeSet::from([
            ("LLT000001".into(), 3, "soir".into()),
            ("LST000002".into(), 3, "matin".into()),
            ("MTT000003".into(), 2, "soir".into()),
        ])
    );

    let outcomes = read_rows(&root, "lot_outcomes");
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    let outcome = outcomes
        .iter()
        .find(|o| o["code_lot"] == "LLT000001")
        .unwrap();
    assert_eq!(outcome["gaveur_id"], 1);
    assert_eq!(outcome["site"], "LL");
    assert_eq!(outcome["nb_canards_mis_en_gavage"], 1000);
    assert_eq!(outcome["nb_canards_accroches"], 960);
    assert_eq!(outcome["poids_foie_moyen_g"], 512.5);
    assert_eq!(outcome["date_fin"], "2023-03-27");
    assert_eq!(outcome["_backfill"], true);
    assert!(outcomes.iter().any(|o| o["code_lot"] == "LST000002"));
    // Meals were durable before the outcomes were sent.
    let latest_meal = replayed.iter().map(|r| utc(&r["_ingest_time"])).max();
    let earliest_outcome = outcomes.iter().map(|o| utc(&o["_ingest_time"])).min();
    assert!(latest_meal <= earliest_outcome);

    let dlq = read_rows(&root, "dlq");
    assert_eq!(dlq.len(), 2, "the negative dose and the impossible outcome");
}

#[test]
fn a_paced_replay_delivers_everything_and_a_second_run_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let lots = gzip(
        dir.path(),
        "lots.csv.gz",
        "code_lot,site,gaveur_id,date_debut,date_fin,nb_canards_mis_en_gavage,nb_canards_accroches\n\
         LSR000001,LS,2,2023-05-02,2023-05-05,300,296\n",
    );
    let mut meals = String::from("code_lot,jour,moment,dose_theorique_g,dose_reelle_g\n");
    for jour in 1..=4 {
        for moment in ["matin", "soir"] {
            meals += &format!(
                "LSR000001,{jour},{moment},{},{}\n",
                200 + jour * 20,
                201 + jour * 20
            );
        }
    }
    let meals = gzip(dir.path(), "meals.csv.gz", &meals);
    let mqtt = gaveurs.mqtt().to_string();
    let args = [
        "--meals",
        meals.to_str().unwrap(),
        "--lots",
        lots.to_str().unwrap(),
        "--mqtt",
        &mqtt,
    ];
    let token = [("GAVEURS_TOKEN", gaveurs.admin.as_str())];
    let paced: Vec<&str> = args.iter().copied().chain(["--rate", "40"]).collect();
    let expected = [
        ("meals", 8),
        ("meals_accepted", 8),
        ("meals_refused", 0),
        ("outcomes", 1),
        ("outcomes_accepted", 1),
        ("outcomes_refused", 0),
        ("skipped", 0),
    ];
    let first = replay(dir.path(), &paced, &token);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_counts(&first, &expected);
    // Again, unpaced: every record is a duplicate, acknowledged and not stored again.
    let again = replay(dir.path(), &args, &token);
    assert!(again.status.success());
    assert_counts(&again, &expected);
    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();
    let rows = read_rows(&root, "gavage_meals");
    assert_eq!(rows.len(), 8);
    assert!(rows.iter().all(|r| r["_backfill"] == true));
    assert_eq!(read_rows(&root, "lot_outcomes").len(), 1);
}

#[test]
fn a_replay_without_a_pipeline_or_with_a_bad_file_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let lots = gzip(
        dir.path(),
        "lots.csv.gz",
        "code_lot,site,gaveur_id,date_debut,date_fin,nb_canards_mis_en_gavage,nb_canards_accroches\n\
         LLX000001,LL,1,2023-05-02,2023-05-05,300,296\n",
    );
    let meals = gzip(
        dir.path(),
        "meals.csv.gz",
        "code_lot,jour,moment,dose_theorique_g,dose_reelle_g\nLLX000001,1,matin,200,200\n",
    );
    let nobody = format!("127.0.0.1:{}", support::free_port());
    let output = replay(
        dir.path(),
        &[
            "--meals",
            meals.to_str().unwrap(),
            "--lots",
            lots.to_str().unwrap(),
            "--mqtt",
            &nobody,
            "--token",
            "any",
        ],
        &[],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot reach the pipeline's MQTT listener at {nobody}"
        )),
        "{stderr}"
    );

    let no_column = gzip(
        dir.path(),
        "bad.csv.gz",
        "code_lot,jour,moment\nLLX000001,1,matin\n",
    );
    let output = replay(
        dir.path(),
        &[
            "--meals",
            no_column.to_str().unwrap(),
            "--lots",
            lots.to_str().unwrap(),
            "--mqtt",
            &nobody,
            "--token",
            "any",
        ],
        &[],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("has no column dose_theorique_g, dose_reelle_g"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backfill_flag_survives_an_external_broker() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path());
    let gaveurs = Gaveurs::start(
        dir.path(),
        &format!(
            "[mqtt]\nbroker = \"mqtt://127.0.0.1:{}\"\nclient_id = \"gaveurs-replay-test\"\n\n[storage]\nroll_interval_s = 1\n",
            mosquitto.port
        ),
    );
    support::wait_ready(gaveurs.http).await;
    // The replay itself, through Mosquitto (which acknowledges on receipt).
    let lots = gzip(
        dir.path(),
        "lots.csv.gz",
        "code_lot,site,gaveur_id,date_debut,date_fin,nb_canards_mis_en_gavage,nb_canards_accroches\n\
         LSB000001,LS,2,2023-05-02,2023-05-02,300,296\n",
    );
    let meals = gzip(
        dir.path(),
        "meals.csv.gz",
        "code_lot,jour,moment,dose_theorique_g,dose_reelle_g\nLSB000001,1,matin,200,200\nLSB000001,1,soir,220,219\n",
    );
    let broker = mosquitto.addr().to_string();
    let output = replay(
        dir.path(),
        &[
            "--meals",
            meals.to_str().unwrap(),
            "--lots",
            lots.to_str().unwrap(),
            "--mqtt",
            &broker,
            "--token",
            &gaveurs.admin,
        ],
        &[],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_counts(&output, &[("meals", 2), ("outcomes", 1)]);
    // And a live record, without the property.
    let live = records::meal("LSLIVE0001", 2, "LS", 1, "matin");
    publish_each(
        mosquitto.addr(),
        MqttVersion::V5,
        &gaveurs.admin,
        &[(
            "gaveurs/LS/2/gavage".into(),
            live.to_string().into_bytes(),
            1,
        )],
    )
    .await;
    let root = gaveurs.parquet_root();
    support::eventually(Duration::from_secs(30), "3 meals and an outcome", || {
        Some(()).filter(|_| {
            read_rows(&root, "gavage_meals").len() == 3
                && read_rows(&root, "lot_outcomes").len() == 1
        })
    });
    gaveurs.stop_cleanly();
    for row in read_rows(&root, "gavage_meals") {
        assert_eq!(row["_transport"], "mqtt_broker");
        assert_eq!(row["_backfill"], row["code_lot"] == "LSB000001", "{row:?}");
    }
    assert_eq!(read_rows(&root, "lot_outcomes")[0]["_backfill"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admin_and_the_sites_gateway_may_send_backfill() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "[storage]\nroll_interval_s = 1\n");
    let meal = |lot: &str| {
        vec![(
            "gaveurs/LL/1/gavage".to_string(),
            records::meal(lot, 1, "LL", 1, "matin")
                .to_string()
                .into_bytes(),
            1,
        )]
    };
    let backfill = [("backfill", "true")];
    let as_backfill = |token: String, lot: &'static str| {
        let addr = gaveurs.mqtt();
        async move {
            support::publish_each_with(addr, MqttVersion::V5, &token, &meal(lot), &backfill).await
        }
    };
    // The gaveur may write their own meals, but not silence their texts with a replay.
    let gaveur = gaveurs.token("jean.martin@gaveur.fr");
    assert_eq!(as_backfill(gaveur.clone(), "LLBF00001").await, vec![0x87]);
    let live = publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveur, &meal("LLBF00002")).await;
    assert_eq!(live, vec![0]);
    let gateway = gaveurs.token("gateway-ll@sensors");
    assert_eq!(as_backfill(gateway, "LLBF00003").await, vec![0]);
    assert_eq!(
        as_backfill(gaveurs.admin.clone(), "LLBF00004").await,
        vec![0]
    );

    let root = gaveurs.parquet_root();
    support::eventually(Duration::from_secs(30), "3 meals and a dead letter", || {
        Some(()).filter(|_| {
            read_rows(&root, "gavage_meals").len() == 3 && read_rows(&root, "dlq").len() == 1
        })
    });
    gaveurs.stop_cleanly();
    let stored: BTreeMap<String, bool> = read_rows(&root, "gavage_meals")
        .iter()
        .map(|r| {
            let backfill = r["_backfill"].as_bool().unwrap();
            (r["code_lot"].as_str().unwrap().to_string(), backfill)
        })
        .collect();
    let expected = [
        ("LLBF00002", false),
        ("LLBF00003", true),
        ("LLBF00004", true),
    ];
    assert_eq!(stored, expected.map(|(lot, b)| (lot.to_string(), b)).into());
    let dlq = &read_rows(&root, "dlq")[0];
    assert_eq!(dlq["reason_code"], "forbidden");
    assert!(
        dlq["reason"].as_str().unwrap().contains("may not replay"),
        "{dlq:?}"
    );
    let audit = std::fs::read_to_string(dir.path().join("logs/audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("jean.martin") && l.contains("may not replay")),
        "{audit}"
    );
}
