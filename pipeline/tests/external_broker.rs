//! The pipeline subscribed to a real Mosquitto: persistent session, manual acknowledgements.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use gaveurs_loadgen::producer::MqttVersion;
use support::{Gaveurs, Mosquitto, publish_each, read_rows, records, wait_ready};

fn broker_config(mosquitto: &Mosquitto) -> String {
    format!(
        "[mqtt]\nbroker = \"mqtt://127.0.0.1:{}\"\nclient_id = \"gaveurs-test\"\n\n[storage]\nroll_interval_s = 1\n",
        mosquitto.port
    )
}

fn meals(from: usize, to: usize) -> Vec<(String, Vec<u8>, u8)> {
    (from..to)
        .map(|n| {
            let lot = format!("LS{n:06}");
            (
                "gaveurs/LS/2/gavage".to_string(),
                records::meal(&lot, 2, "LS", 1, "soir")
                    .to_string()
                    .into_bytes(),
                1,
            )
        })
        .collect()
}

fn lot_counts(root: &std::path::Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for row in read_rows(root, "gavage_meals") {
        *counts
            .entry(row["code_lot"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    counts
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
