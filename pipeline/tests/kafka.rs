//! Kafka in, with a real Kafka-protocol broker (tansu): records produced with tokens reach
//! Parquet exactly once across restarts, crashes and handovers; offsets are committed only
//! for published records; refused records reach the dead-letter outputs.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use std::path::Path;

use gaveurs_pipeline::producer::MqttVersion;
use support::kafka::{Tansu, produce, read_topic, read_topic_until};
use support::{Gaveurs, eventually, next_json, publish_each, read_rows, records, ws_connect};

const GAVAGE: &str = "gaveurs.gavage.v1";
const SQAL: &str = "gaveurs.sqal.v1";
const DLQ: &str = "gaveurs.dlq.v1";
const LIVE: &str = "gaveurs.live.v1";
const KPIS: &str = "gaveurs.kpis.v1";
const ALERTS: &str = "gaveurs.alerts.v1";

async fn topics(tansu: &Tansu, gavage_partitions: i32) {
    tansu.create_topic(GAVAGE, gavage_partitions).await;
    tansu.create_topic(SQAL, 1).await;
    tansu.create_topic(DLQ, 1).await;
    tansu.create_topic(LIVE, 2).await;
    tansu.create_topic(KPIS, 1).await;
    tansu.create_topic(ALERTS, 1).await;
}

/// Instances share `data`, the way replicas share a volume.
fn kafka_config(tansu: &Tansu, group: &str, data: &Path) -> String {
    format!(
        "[kafka]\nbrokers = \"{}\"\ngroup = \"{group}\"\n\n[storage]\nroll_interval_s = 1\ndata_dir = \"{}\"\n",
        tansu.brokers(),
        data.display()
    )
}

fn instance_dir(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).unwrap();
    path
}

/// `(code_lot, jour, moment)` of every stored meal; panics on a duplicate.
fn stored_meals(gaveurs_root: &std::path::Path) -> BTreeSet<(String, i64, String)> {
    let rows = read_rows(gaveurs_root, "gavage_meals");
    let mut keys = BTreeSet::new();
    for row in &rows {
        let key = (
            row["code_lot"].as_str().unwrap().to_string(),
            row["jour"].as_i64().unwrap(),
            row["moment"].as_str().unwrap().to_string(),
        );
        assert!(keys.insert(key.clone()), "{key:?} is stored twice");
    }
    keys
}

fn meal(n: usize) -> (String, Vec<u8>) {
    let lot = format!("LL26K{:04}", n / 20);
    let jour = (n % 20 / 2) as i64 + 1;
    let moment = if n.is_multiple_of(2) { "matin" } else { "soir" };
    (
        lot.clone(),
        records::meal(&lot, 1, "LL", jour, moment)
            .to_string()
            .into_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_records_are_stored_once_and_offsets_follow_publication() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = Tansu::start(dir.path());
    topics(&tansu, 3).await;
    let producer = tansu.producer();
    let data = dir.path().join("shared-data");
    let work = instance_dir(dir.path(), "a");
    let gaveurs = Gaveurs::start(&work, &kafka_config(&tansu, "g1", &data));
    let admin = gaveurs.admin.clone();
    let jean = gaveurs.token("jean.martin@gaveur.fr");

    for n in 0..200 {
        let (lot, payload) = meal(n);
        produce(&producer, GAVAGE, &lot, &payload, Some(&admin)).await;
    }
    let sample = records::sqal("ESP32_LL_01", "K-1", 0.8).to_string();
    produce(
        &producer,
        SQAL,
        "ESP32_LL_01",
        sample.as_bytes(),
        Some(&admin),
    )
    .await;
    // Refused: no token, not JSON, and a gaveur writing for another.
    let (lot, payload) = meal(1000);
    produce(&producer, GAVAGE, &lot, &payload, None).await;
    produce(&producer, GAVAGE, "LL26KX", b"{not json", Some(&admin)).await;
    let other = records::meal("LS26K0001", 2, "LS", 1, "matin").to_string();
    produce(
        &producer,
        GAVAGE,
        "LS26K0001",
        other.as_bytes(),
        Some(&jean),
    )
    .await;

    let root = data.join("parquet");
    eventually(Duration::from_secs(60), "every record in Parquet", || {
        (stored_meals(&root).len() == 200 && read_rows(&root, "dlq").len() == 3).then_some(())
    });
    assert_eq!(read_rows(&root, "sqal_samples").len(), 1);
    let mut reasons: Vec<String> = read_rows(&root, "dlq")
        .iter()
        .map(|r| r["reason_code"].as_str().unwrap().to_string())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["forbidden", "missing_token", "not_json"]);
    for row in read_rows(&root, "dlq") {
        assert_eq!(row["_transport"], "kafka");
        assert_eq!(row["_topic"], GAVAGE);
    }
    // The same refusals on the dead-letter topic: the input as it came, and why.
    let dead = read_topic(&tansu.brokers(), DLQ, 3).await;
    let mut codes: Vec<&str> = dead
        .iter()
        .map(|m| m.headers["reason_code"].as_str())
        .collect();
    codes.sort();
    assert_eq!(codes, ["forbidden", "missing_token", "not_json"]);
    let not_json = dead
        .iter()
        .find(|m| m.headers["reason_code"] == "not_json")
        .unwrap();
    assert_eq!(not_json.payload, b"{not json");
    assert_eq!(not_json.headers["stage"], "decode");
    assert_eq!(not_json.headers["topic"], GAVAGE);
    assert!(not_json.headers.contains_key("offset"));
    // KPIs on their topic, keyed by lot: the first lot's 20 meals add up.
    let (mut lot_complete, mut meal_kpi) = (false, None);
    read_topic_until(&tansu.brokers(), KPIS, |m| {
        let row: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        lot_complete |= row["kpi"] == "lot" && row["code_lot"] == "LL26K0000" && row["repas"] == 20;
        if row["kpi"] == "meal" && meal_kpi.is_none() {
            meal_kpi = Some(row);
        }
        lot_complete && meal_kpi.is_some()
    })
    .await;
    assert_eq!(meal_kpi.unwrap()["ecart_g"], -1.5);
    // A refused meal (half the dose) opens a critical alert, on its topic keyed by lot.
    let mut refused = records::meal("LL26KALERT", 1, "LL", 1, "matin");
    refused["dose_reelle"] = serde_json::json!(100.0);
    produce(
        &producer,
        GAVAGE,
        "LL26KALERT",
        refused.to_string().as_bytes(),
        Some(&admin),
    )
    .await;
    let alerts = read_topic_until(&tansu.brokers(), ALERTS, |m| {
        let change: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        change["alert"]["code_lot"] == "LL26KALERT"
    })
    .await;
    let change: serde_json::Value =
        serde_json::from_slice(&alerts.last().unwrap().payload).unwrap();
    assert_eq!(change["transition"], "opened");
    assert_eq!(change["alert"]["rule"], "refus_alimentaire");
    assert_eq!(change["alert"]["severity"], "critical");
    // Everything is published, so everything is committed.
    eventually(Duration::from_secs(30), "offsets committed", || {
        (tansu.committed_total("g1", GAVAGE, 3) == 204).then_some(())
    });
    // Everything consumed: librdkafka's statistics (every 5 s) report no lag on /metrics.
    let lag = format!("gaveurs_kafka_consumer_lag{{topic=\"{GAVAGE}\"}} ");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = support::http_get(gaveurs.http, "/metrics").await;
        if metrics.lines().any(|l| l.strip_prefix(&lag) == Some("0")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no zero lag for {GAVAGE}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    gaveurs.stop_cleanly();

    // A restart resumes after the committed offsets: new records only.
    let gaveurs = Gaveurs::start(&work, &kafka_config(&tansu, "g1", &data));
    for n in 200..250 {
        let (lot, payload) = meal(n);
        produce(&producer, GAVAGE, &lot, &payload, Some(&admin)).await;
    }
    eventually(
        Duration::from_secs(60),
        "the new records in Parquet",
        || (stored_meals(&root).len() == 251).then_some(()),
    );
    gaveurs.stop_cleanly();
    assert_eq!(stored_meals(&root).len(), 251);
    assert_eq!(read_rows(&root, "dlq").len(), 3);
    assert_eq!(tansu.committed_total("g1", GAVAGE, 3), 254);

    // Another instance on the same data, in a group that never committed anything, starts
    // after what the published files hold: the roll manifests, not the group, decide.
    let fresh = Gaveurs::start(
        &instance_dir(dir.path(), "b"),
        &kafka_config(&tansu, "never-committed", &data),
    );
    for n in 250..260 {
        let (lot, payload) = meal(n);
        produce(&producer, GAVAGE, &lot, &payload, Some(&admin)).await;
    }
    eventually(
        Duration::from_secs(60),
        "the newest records in Parquet",
        || (stored_meals(&root).len() == 261).then_some(()),
    );
    fresh.stop_cleanly();
    assert_eq!(stored_meals(&root).len(), 261);
    assert_eq!(read_rows(&root, "dlq").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_stream_neither_loses_nor_repeats_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = Tansu::start(dir.path());
    topics(&tansu, 4).await;
    let data = dir.path().join("data");
    let work = instance_dir(dir.path(), "a");
    let gaveurs = Gaveurs::start(&work, &kafka_config(&tansu, "crash", &data));
    let admin = gaveurs.admin.clone();
    let producer = tansu.producer();
    let total = 3000;
    let produced = tokio::spawn(async move {
        for n in 0..total {
            let (lot, payload) = meal(n);
            produce(&producer, GAVAGE, &lot, &payload, Some(&admin)).await;
        }
    });
    let root = data.join("parquet");
    // Kill it once some records are published and others are still on their way.
    eventually(Duration::from_secs(60), "a first roll", || {
        (!stored_meals(&root).is_empty()).then_some(())
    });
    gaveurs.kill9();
    produced.await.unwrap();

    let gaveurs = Gaveurs::start(&work, &kafka_config(&tansu, "crash", &data));
    eventually(Duration::from_secs(90), "every record in Parquet", || {
        (stored_meals(&root).len() == total).then_some(())
    });
    gaveurs.stop_cleanly();
    assert_eq!(stored_meals(&root).len(), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_takes_over_a_killed_peer_and_its_gaveurs_miss_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = Tansu::start(dir.path());
    topics(&tansu, 4).await;
    let data = dir.path().join("shared-data");
    // Jean's socket is read by a debug-build test task while thousands of records arrive at
    // once; KPI messages (tested above and in analytics.rs) would multiply its traffic and get
    // it evicted as a slow client (1013), which is not what this test is about.
    let config = format!(
        "{}\n[analytics]\nenabled = false\n",
        kafka_config(&tansu, "pair", &data)
    );
    let doomed = Gaveurs::start(&instance_dir(dir.path(), "a"), &config);
    let survivor = Gaveurs::start(&instance_dir(dir.path(), "b"), &config);
    let admin = survivor.admin.clone();
    let mut jean = ws_connect(
        survivor.http,
        "/ws/gaveur/1",
        &survivor.token("jean.martin@gaveur.fr"),
    )
    .await;
    // The live topic is read from its end: probe until a record the other instance accepted
    // reaches the survivor's channel.
    let mut probes = 0;
    'probing: loop {
        probes += 1;
        assert!(
            probes < 60,
            "the survivor never saw the other instance's records"
        );
        let lot = format!("LL26P{probes:04}");
        publish_each(
            doomed.mqtt(),
            MqttVersion::V5,
            &doomed.admin,
            &[(
                "gaveurs/LL/1/gavage".into(),
                records::meal(&lot, 1, "LL", 1, "matin")
                    .to_string()
                    .into_bytes(),
                1,
            )],
        )
        .await;
        while let Ok(frame) =
            tokio::time::timeout(Duration::from_millis(500), next_json(&mut jean)).await
        {
            if frame["data"]["code_lot"]
                .as_str()
                .unwrap_or("")
                .starts_with("LL26P")
            {
                break 'probing;
            }
        }
    }
    // An alert raised by the other instance (its MQTT listener, its log, its rules) reaches
    // Jean's channel here through gaveurs.alerts.v1.
    let mut refused = records::meal("LL26PALERT", 1, "LL", 1, "matin");
    refused["dose_reelle"] = serde_json::json!(50.0);
    publish_each(
        doomed.mqtt(),
        MqttVersion::V5,
        &doomed.admin,
        &[(
            "gaveurs/LL/1/gavage".into(),
            refused.to_string().into_bytes(),
            1,
        )],
    )
    .await;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), next_json(&mut jean))
            .await
            .expect("the other instance's alert on the survivor's channel");
        if frame["type"] == "alerte" && frame["data"]["code_lot"] == "LL26PALERT" {
            assert_eq!(frame["data"]["transition"], "opened");
            assert_eq!(frame["data"]["rule"], "refus_alimentaire");
            break;
        }
    }
    let total = 2000;
    // Jean reads while records flow, as a phone would.
    let watcher = tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        while seen.len() < total {
            let frame =
                match tokio::time::timeout(Duration::from_secs(60), next_json(&mut jean)).await {
                    Ok(frame) => frame,
                    Err(_) => break,
                };
            let data = &frame["data"];
            if frame["type"] == "gavage" && data["code_lot"].as_str().unwrap().starts_with("LL26K")
            {
                seen.insert((
                    data["code_lot"].as_str().unwrap().to_string(),
                    data["jour"].as_i64().unwrap(),
                    data["moment"].as_str().unwrap().to_string(),
                ));
            }
        }
        seen
    });

    let producer = tansu.producer();
    for n in 0..total / 2 {
        let (lot, payload) = meal(n);
        produce(&producer, GAVAGE, &lot, &payload, Some(&admin)).await;
    }
    let root = data.join("parquet");
    eventually(Duration::from_secs(60), "both instances publishing", || {
        let names: Vec<String> = support::parquet_files(&root, "gavage_meals")
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        (names
            .iter()
            .any(|n| n.starts_with(&format!("{}-", doomed.instance)))
            && names
                .iter()
                .any(|n| n.starts_with(&format!("{}-", survivor.instance))))
        .then_some(())
    });
    doomed.kill9();
    for n in total / 2..total {
        let (lot, payload) = meal(n);
        produce(&producer, GAVAGE, &lot, &payload, Some(&admin)).await;
    }
    eventually(Duration::from_secs(90), "every record in Parquet", || {
        (stored_meals(&root).len() == total + probes + 1).then_some(())
    });
    // Jean, connected to the survivor, saw every record of his lots, whichever instance
    // processed it (one the killed instance pushed but never published may come twice).
    let seen = watcher.await.unwrap();
    assert_eq!(
        seen.len(),
        total,
        "jean saw {} of {total} records",
        seen.len()
    );
    survivor.stop_cleanly();
    // The probes and the refused meal came in through the killed instance's MQTT listener.
    assert_eq!(stored_meals(&root).len(), total + probes + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_created_after_start_are_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = Tansu::start(dir.path());
    let data = dir.path().join("data");
    let work = instance_dir(dir.path(), "a");
    let gaveurs = Gaveurs::start(&work, &kafka_config(&tansu, "late", &data));
    // Up and serving although none of its topics exist.
    support::wait_ready(gaveurs.http).await;
    topics(&tansu, 2).await;
    let (lot, payload) = meal(0);
    produce(
        &tansu.producer(),
        GAVAGE,
        &lot,
        &payload,
        Some(&gaveurs.admin),
    )
    .await;
    let root = data.join("parquet");
    eventually(Duration::from_secs(60), "the record in Parquet", || {
        (stored_meals(&root).len() == 1).then_some(())
    });
    gaveurs.stop_cleanly();
}
