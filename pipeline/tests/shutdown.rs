//! SIGTERM while producers publish: intake stops, every acknowledged record is published,
//! the acknowledgements owed are sent, exit 0 within 5 s.

mod support;

use std::collections::HashSet;

use std::time::Duration;

use gaveurs_loadgen::producer::{MqttVersion, ServerPacket, connect};
use support::{Gaveurs, read_rows, records};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_publishes_everything_acknowledged_and_says_goodbye() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let (mut writer, mut reader) = connect(
        gaveurs.mqtt(),
        MqttVersion::V5,
        "steady",
        Some(&gaveurs.admin),
    )
    .await
    .unwrap();
    let (acked_tx, mut acked_rx) = tokio::sync::watch::channel(0usize);
    let consumer = tokio::spawn(async move {
        let mut acked = HashSet::new();
        loop {
            match reader.next().await {
                Ok(ServerPacket::Ack { pkid, reason: 0 }) => {
                    acked.insert(pkid);
                    acked_tx.send_replace(acked.len());
                }
                Ok(ServerPacket::Disconnect { reason }) => return (acked, Some(reason)),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => return (acked, None),
            }
        }
    });
    // 5000 records in one burst (pkids 1..=5000), then SIGTERM while most are in flight.
    for n in 1..=5000u16 {
        let payload = records::meal(&format!("LLS{n:05}"), 1, "LL", 1, "matin").to_string();
        writer
            .publish("gaveurs/LL/1/gavage", payload.into(), 1, n, None)
            .unwrap();
    }
    writer.flush().await.unwrap();
    acked_rx.wait_for(|n| *n >= 100).await.unwrap();
    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();
    let (acked, goodbye) = consumer.await.unwrap();
    assert_eq!(
        goodbye,
        Some(0x8B),
        "MQTT 5 clients are told the server is shutting down"
    );
    let stored: HashSet<u16> = read_rows(&root, "gavage_meals")
        .iter()
        .map(|r| r["code_lot"].as_str().unwrap()[3..].parse().unwrap())
        .collect();
    let missing: Vec<_> = acked.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not published: {missing:?}"
    );
    // Whatever was read before the stop was acknowledged: nothing read is left unanswered.
    assert_eq!(
        acked, stored,
        "every stored record was acknowledged before the goodbye"
    );
}

/// Meals for lots `LS900000`… numbered `from..to`, as (topic, payload).
fn broker_meals(from: usize, to: usize) -> Vec<(String, Vec<u8>)> {
    (from..to)
        .map(|n| {
            let payload = records::meal(&format!("LS9{n:05}"), 2, "LS", 1, "soir");
            (
                "gaveurs/LS/2/gavage".to_string(),
                payload.to_string().into_bytes(),
            )
        })
        .collect()
}

fn stored_lots(root: &std::path::Path) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for row in read_rows(root, "gavage_meals") {
        *counts
            .entry(row["code_lot"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_broker_subscription_that_still_has_deliveries_waiting() {
    const MEALS: usize = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let mosquitto = support::Mosquitto::start(dir.path());
    let config = format!(
        "[mqtt]\nbroker = \"mqtt://127.0.0.1:{}\"\nclient_id = \"gaveurs-busy\"\n\n[storage]\nroll_interval_s = 1\n",
        mosquitto.port
    );
    let gaveurs = Gaveurs::start(dir.path(), &config);
    support::wait_ready(gaveurs.http).await;
    let token = gaveurs.admin.clone();
    // Mosquitto takes the whole burst at once and queues it for the pipeline's session.
    let reasons =
        support::publish_pipelined(mosquitto.addr(), &token, &broker_meals(0, MEALS), 1000).await;
    assert_eq!(reasons, vec![0; MEALS]);
    let root = gaveurs.parquet_root();
    support::eventually(Duration::from_secs(30), "some meals stored", || {
        Some(()).filter(|_| !stored_lots(&root).is_empty())
    });
    // Deliveries are still coming when the stop arrives.
    assert!(stored_lots(&root).len() < MEALS);
    gaveurs.stop_cleanly();

    // What the stopped pipeline had not acknowledged waits in its session for the next run.
    let gaveurs = Gaveurs::start(dir.path(), &config);
    support::eventually(Duration::from_secs(120), "every meal stored", || {
        Some(()).filter(|_| stored_lots(&root).len() == MEALS)
    });
    gaveurs.stop_cleanly();
    let twice: Vec<_> = stored_lots(&root)
        .into_iter()
        .filter(|(_, count)| *count > 1)
        .collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
}
