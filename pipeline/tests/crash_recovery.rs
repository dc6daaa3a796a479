//! SIGKILL while a QoS 1 producer is publishing: every record it got a PUBACK for is in
//! Parquet exactly once after a restart.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use gaveurs_loadgen::producer::{MqttVersion, ServerPacket, connect};
use support::{Gaveurs, read_rows, records};
use tokio::sync::watch;

/// Publishes lots `<name>K{n}` with up to `window` unacknowledged; reports acknowledged counts on
/// `progress`; returns (sent, acknowledged) once the connection breaks.
async fn publish_until_broken(
    addr: SocketAddr,
    window: usize,
    progress: watch::Sender<usize>,
    name: String,
    token: String,
) -> (HashSet<String>, HashSet<String>) {
    let (mut writer, mut reader) = connect(addr, MqttVersion::V5, &name, Some(&token))
        .await
        .unwrap();
    let mut sent = HashSet::new();
    let mut acked = HashSet::new();
    let mut inflight: HashMap<u16, String> = HashMap::new();
    let mut n: u64 = 0;
    loop {
        while inflight.len() < window {
            n += 1;
            let lot = format!("{name}K{n:07}");
            let pkid = (n % 65_000) as u16 + 1;
            let payload = records::meal(&lot, 1, "LL", 1, "matin").to_string();
            writer
                .publish("gaveurs/LL/1/gavage", payload.into(), 1, pkid, None)
                .unwrap();
            inflight.insert(pkid, lot.clone());
            sent.insert(lot);
        }
        if writer.flush().await.is_err() {
            break;
        }
        match reader.next().await {
            Ok(ServerPacket::Ack { pkid, reason }) => {
                assert_eq!(reason, 0);
                let lot = inflight.remove(&pkid).expect("ack for a message in flight");
                acked.insert(lot);
                progress.send_modify(|total| *total += 1);
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    (sent, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_record_survives_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut sent = HashSet::new();
    let mut acked = HashSet::new();
    // Three kills, each while four producers keep 256 records in flight; the first lands
    // after a Parquet roll, so recovery joins published files and the log's tail.
    for round in 0..3u64 {
        let gaveurs = Gaveurs::start(dir.path(), "[storage]\nroll_interval_s = 1\n");
        let (progress_tx, progress) = watch::channel(0);
        let producers: Vec<_> = (0..4)
            .map(|p| {
                tokio::spawn(publish_until_broken(
                    gaveurs.mqtt(),
                    256,
                    progress_tx.clone(),
                    format!("R{round}P{p}"),
                    gaveurs.admin.clone(),
                ))
            })
            .collect();
        drop(progress_tx);
        let mut progress = progress;
        progress.wait_for(|n| *n >= 2000).await.unwrap();
        if round == 0 {
            let root = gaveurs.parquet_root();
            support::eventually(
                std::time::Duration::from_secs(20),
                "a first parquet roll",
                || Some(()).filter(|_| !support::parquet_files(&root, "gavage_meals").is_empty()),
            );
        }
        gaveurs.kill9();
        for producer in producers {
            let (s, a) = producer.await.unwrap();
            sent.extend(s);
            acked.extend(a);
        }
    }

    let gaveurs = Gaveurs::start(dir.path(), "");
    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();

    let rows = read_rows(&root, "gavage_meals");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for row in &rows {
        *counts
            .entry(row["code_lot"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let lost: Vec<_> = acked
        .iter()
        .filter(|lot| !counts.contains_key(*lot))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged records lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );
    assert!(counts.keys().all(|lot| sent.contains(lot)));
}
