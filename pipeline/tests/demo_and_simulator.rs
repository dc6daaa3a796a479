//! `gaveurs run --demo` makes data flow on its own; `gaveurs simulate` feeds a running
//! pipeline over MQTT or the WebSocket ingest.

mod support;

use std::process::Command;

use support::{Gaveurs, base_config, next_json, read_rows, ws_connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_feeds_parquet_and_the_live_channels() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gaveurs.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[mqtt]\nlisten = \"127.0.0.1:0\"\n",
            base_config(dir.path())
        ),
    )
    .unwrap();
    let gaveurs = Gaveurs::start_with(
        dir.path(),
        &["run", "--demo", "--config", config.to_str().unwrap()],
    );
    // Gaveur 1 (jean.martin, LL) owns some of the demo lots.
    let mut jean = ws_connect(gaveurs.http, "/ws/gaveur/1", &gaveurs.admin).await;
    // Meals, and the KPIs the analytics operator computes from them.
    let (mut meal, mut kpi) = (None, None);
    while meal.is_none() || kpi.is_none() {
        let message = next_json(&mut jean).await;
        match message["type"].as_str() {
            Some("gavage") => meal = Some(message),
            Some("kpi") => kpi = Some(message),
            _ => {}
        }
    }
    let meal = meal.unwrap();
    assert_eq!(meal["data"]["gaveur_id"], 1);
    assert_eq!(meal["data"]["site"], "LL");
    assert_eq!(kpi.unwrap()["data"]["gaveur_id"], 1);
    let mut dashboard = ws_connect(gaveurs.http, "/ws/realtime/", &gaveurs.admin).await;
    loop {
        if next_json(&mut dashboard).await["type"] == "sensor_update" {
            break;
        }
    }
    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();
    assert!(!read_rows(&root, "gavage_meals").is_empty());
    assert!(!read_rows(&root, "sqal_samples").is_empty());
    assert!(
        read_rows(&root, "dlq").is_empty(),
        "the simulator's records are all valid"
    );
}

fn simulate(dir: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new(support::BIN)
        .current_dir(dir)
        .arg("simulate")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_simulator_publishes_valid_lots_over_mqtt_and_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let mqtt = gaveurs.mqtt().to_string();
    let summary = simulate(
        dir.path(),
        &[
            "--token",
            &gaveurs.admin,
            "--mqtt",
            &mqtt,
            "--lots",
            "2",
            "--gaveurs",
            "2",
            "--devices",
            "2",
            "--rate",
            "200",
            "--sqal-rate",
            "10",
            "--duration",
            "3",
            "--seed",
            "1",
        ],
    );
    let http = gaveurs.http.to_string();
    let over_ws = simulate(
        dir.path(),
        &[
            "--token",
            &gaveurs.admin,
            "--ws",
            &http,
            "--lots",
            "2",
            "--rate",
            "50",
            "--sqal-rate",
            "5",
            "--duration",
            "2",
            "--seed",
            "2",
        ],
    );
    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();
    let count = |summary: &str, what: &str| -> u64 {
        summary
            .trim()
            .split(", ")
            .find_map(|part| {
                part.strip_suffix(&format!(" {what}"))
                    .map(|n| n.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("{what} in {summary:?}"))
    };
    assert_eq!(count(&summary, "refused"), 0, "{summary}");
    assert_eq!(count(&over_ws, "refused"), 0, "{over_ws}");
    let accepted = count(&summary, "accepted") + count(&over_ws, "accepted");
    assert!(count(&summary, "sent") >= 500, "{summary}");
    let meals = read_rows(&root, "gavage_meals");
    let stored = meals.len()
        + read_rows(&root, "sqal_samples").len()
        + read_rows(&root, "lot_outcomes").len();
    // Every acknowledged record is stored; a record whose ack was still in flight when the
    // simulator closed its socket is stored without being counted as accepted.
    let sent = count(&summary, "sent") + count(&over_ws, "sent");
    assert!(
        (accepted..=sent).contains(&(stored as u64)),
        "{stored} stored, {accepted} acknowledged, {sent} sent"
    );
    // Two meals a day, doses on their curves.
    for meal in &meals {
        let ratio =
            meal["dose_reelle"].as_f64().unwrap() / meal["dose_theorique"].as_f64().unwrap();
        assert!((0.95..=1.05).contains(&ratio));
    }
    let outcomes = read_rows(&root, "lot_outcomes");
    assert!(!outcomes.is_empty(), "lots run to slaughter within the run");
    let sample_sources: std::collections::HashSet<String> = read_rows(&root, "sqal_samples")
        .iter()
        .map(|r| r["_transport"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        sample_sources.len(),
        2,
        "samples came over MQTT and WebSocket"
    );
}

#[test]
fn the_simulator_says_why_the_pipeline_refused_it() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let http = gaveurs.http.to_string();
    let output = Command::new(support::BIN)
        .current_dir(dir.path())
        .args([
            "simulate",
            "--token",
            "not-a-jwt",
            "--ws",
            &http,
            "--rate",
            "50",
            "--duration",
            "5",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("closed the WebSocket (4401"),
        "the refusal is named: {stderr}"
    );
    gaveurs.stop_cleanly();
}
