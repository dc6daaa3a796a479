//! The pipeline subscribed to a real Mosquitto: persistent session, manual acknowledgements.

mod support;

use std::time::Duration;

use gaveurs_loadgen::producer::MqttVersion;
use support::{Gaveurs, Mosquitto, lot_counts, publish_each, read_rows, records, wait_ready};

fn broker_config(mosquitto: &Mosquitto) -> String {
    format!(
        "[mqtt]\nbroker = \"mqtt://127.0.0.1:{}\"\nclient_id = \"gaveurs-test\"\n\n[storage]\nroll_interval_s = 1\n",
        mosquitto.port
    )
}

/// One meal per lot, at QoS 1.
fn meals(from: usize, to: usize) -> Vec<(String, Vec<u8>, u8)> {
    records::one_meal_per_lot(from, to)
        .into_iter()
        .map(|(topic, payload)| (topic, payload, 1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_through_mosquitto_reach_parquet_and_bad_ones_the_dlq() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path());
    let gaveurs = Gaveurs::start(dir.path(), &broker_config(&mosquitto));
    assert!(
        gaveurs.mqtt.is_none(),
        "no embedded listener when a broker is configured"
    );
    wait_ready(gaveurs.http).await;
    let mut messages = meals(0, 50);
    messages.push((
        "sqal/LL/ESP32_LL_01/measurements".into(),
        records::sqal("ESP32_LL_01", "S-9", 0.5)
            .to_string()
            .into_bytes(),
        1,
    ));
    messages.push(("gaveurs/LS/2/gavage".into(), b"not json".to_vec(), 1));
    // Mosquitto acknowledges on receipt; the pipeline's own acknowledgement goes to Mosquitto.
    let codes = publish_each(mosquitto.addr(), MqttVersion::V5, &gaveurs.admin, &messages).await;
    assert!(codes.iter().all(|c| *c == 0));
    let root = gaveurs.parquet_root();
    support::eventually(Duration::from_secs(30), "50 meals in parquet", || {
        Some(()).filter(|_| lot_counts(&root).len() == 50)
    });
    gaveurs.stop_cleanly();
    let rows = read_rows(&root, "gavage_meals");
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[0]["_transport"], "mqtt_broker");
    assert_eq!(rows[0]["_topic"], "gaveurs/LS/2/gavage");
    assert_eq!(read_rows(&root, "sqal_samples").len(), 1);
    let dlq = read_rows(&root, "dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["reason_code"], "not_json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_redelivers_what_a_killed_pipeline_never_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path());
    let config = broker_config(&mosquitto);
    let gaveurs = Gaveurs::start(dir.path(), &config);
    wait_ready(gaveurs.http).await;
    // A producer publishing while the pipeline is killed in the middle of the stream.
    let producer = {
        let addr = mosquitto.addr();
        let token = gaveurs.admin.clone();
        tokio::spawn(
            async move { publish_each(addr, MqttVersion::V5, &token, &meals(0, 600)).await },
        )
    };
    let token = gaveurs.admin.clone();
    let root = gaveurs.parquet_root();
    support::eventually(Duration::from_secs(30), "some meals published", || {
        Some(()).filter(|_| !lot_counts(&root).is_empty())
    });
    gaveurs.kill9();
    producer.await.unwrap();
    // While it is down, more arrive; the persistent session queues them.
    publish_each(mosquitto.addr(), MqttVersion::V5, &token, &meals(600, 700)).await;

    let gaveurs = Gaveurs::start(dir.path(), &config);
    support::eventually(Duration::from_secs(60), "all 700 meals", || {
        Some(()).filter(|_| lot_counts(&root).len() == 700)
    });
    gaveurs.stop_cleanly();
    let counts = lot_counts(&root);
    assert_eq!(counts.len(), 700);
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "redeliveries stored twice: {twice:?}");
}

/// A meal of `lot` that happened at `at`.
fn meal_at(lot: &str, at: chrono::DateTime<chrono::Utc>) -> (String, Vec<u8>, u8) {
    let mut meal = records::meal(lot, 2, "LS", 1, "soir");
    meal["timestamp"] = at.to_rfc3339().into();
    (
        "gaveurs/LS/2/gavage".to_string(),
        meal.to_string().into_bytes(),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expired_while_its_record_waited_in_the_broker_is_judged_at_the_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = Mosquitto::start(dir.path());
    let config = |grace_s: u64| {
        format!(
            "{}\n[auth]\nleeway_s = 0\nbroker_token_grace_s = {grace_s}\n",
            broker_config(&mosquitto)
        )
    };
    // The pipeline's session exists; then it goes away (an outage) while records arrive.
    let gaveurs = Gaveurs::start(dir.path(), &config(3600));
    wait_ready(gaveurs.http).await;
    let minted = chrono::Utc::now();
    let short_lived = gaveurs.token_with_ttl("admin@euralis.fr", 4);
    gaveurs.stop_cleanly();
    let valid_then = minted + chrono::TimeDelta::seconds(1);
    let after_expiry = minted + chrono::TimeDelta::seconds(60);
    let sent = [
        meal_at("LSWAIT001", valid_then),
        meal_at("LSWAIT002", after_expiry),
    ];
    publish_each(mosquitto.addr(), MqttVersion::V5, &short_lived, &sent).await;
    // Back after the token expired: what happened while it was valid is accepted.
    let expired = minted + chrono::TimeDelta::seconds(6);
    tokio::time::sleep((expired - chrono::Utc::now()).to_std().unwrap_or_default()).await;
    let gaveurs = Gaveurs::start(dir.path(), &config(3600));
    let root = gaveurs.parquet_root();
    support::eventually(Duration::from_secs(30), "a meal and a dead letter", || {
        Some(()).filter(|_| lot_counts(&root).len() == 1 && read_rows(&root, "dlq").len() == 1)
    });
    gaveurs.stop_cleanly();
    assert_eq!(lot_counts(&root).keys().collect::<Vec<_>>(), ["LSWAIT001"]);
    let refused = &read_rows(&root, "dlq")[0];
    assert_eq!(refused["reason_code"], "expired_token", "{refused:?}");

    // Longer ago than the grace: refused, and the reason says so.
    publish_each(
        mosquitto.addr(),
        MqttVersion::V5,
        &short_lived,
        &[meal_at("LSWAIT003", valid_then)],
    )
    .await;
    let gaveurs = Gaveurs::start(dir.path(), &config(1));
    support::eventually(Duration::from_secs(30), "a second dead letter", || {
        Some(()).filter(|_| read_rows(&root, "dlq").len() == 2)
    });
    gaveurs.stop_cleanly();
    assert_eq!(lot_counts(&root).len(), 1);
    let reasons: Vec<String> = read_rows(&root, "dlq")
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("more than the 1 s a record may wait in the broker")),
        "{reasons:?}"
    );
}
