//! Kafka in, with a real Kafka-protocol broker (tansu): records produced with tokens reach
//! Parquet exactly once across restarts, crashes and handovers; offsets are committed only
//! for published records; refused records reach the dead-letter outputs.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use std::path::Path;

use gaveurs_loadgen::producer::MqttVersion;
use support::kafka::{Tansu, produce, read_topic, read_topic_until};
use support::{
    Gaveurs, eventually, next_json, next_json_or_close, publish_each, read_rows, records,
    ws_connect,
};

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
        if metrics
            .lines()
            .any(|l| l.strip_prefix(&lag).and_then(|v| v.parse::<f64>().ok()) == Some(0.0))
        {
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
    let dlq = read_rows(&root, "dlq");
    assert_eq!(dlq.len(), 3, "{dlq:#?}");
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
async fn sigterm_while_kafka_still_has_records_exits_in_time_and_commits_only_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = Tansu::start(dir.path());
    topics(&tansu, 4).await;
    let data = dir.path().join("data");
    let work = instance_dir(dir.path(), "a");
    let config = kafka_config(&tansu, "busy", &data);
    let gaveurs = Gaveurs::start(&work, &config);
    let admin = gaveurs.admin.clone();
    // A backlog far larger than a few seconds of consumption.
    let total = 20_000;
    let producer = tansu.producer();
    let sends = (0..total).map(|n| {
        let (lot, payload) = meal(n);
        let (producer, admin) = (&producer, &admin);
        async move { produce(producer, GAVAGE, &lot, &payload, Some(admin)).await }
    });
    futures::future::join_all(sends).await;
    let root = data.join("parquet");
    eventually(Duration::from_secs(60), "a first roll", || {
        (!stored_meals(&root).is_empty()).then_some(())
    });
    // Exit 0 within 5 s although the partitions are far from drained.
    gaveurs.stop_cleanly();
    let stored = stored_meals(&root).len();
    assert!(stored < total, "the backlog was drained before the stop");
    let committed = tansu.committed_total("busy", GAVAGE, 4);
    assert!(
        committed <= stored as i64,
        "{committed} offsets committed for {stored} stored records"
    );

    let gaveurs = Gaveurs::start(&work, &config);
    eventually(Duration::from_secs(180), "every record in Parquet", || {
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
    let mut last_seq = loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), next_json(&mut jean))
            .await
            .expect("the other instance's alert on the survivor's channel");
        if frame["type"] == "alerte" && frame["data"]["code_lot"] == "LL26PALERT" {
            assert_eq!(frame["data"]["transition"], "opened");
            assert_eq!(frame["data"]["rule"], "refus_alimentaire");
            break frame["seq"].as_u64().expect("a seq");
        }
    };
    let total = 2000;
    // Jean reads while records flow, as a phone would: one that falls behind is closed
    // (1013) and comes back with `?since=` the last frame it read.
    let (http, jean_token) = (survivor.http, survivor.token("jean.martin@gaveur.fr"));
    let watcher = tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        while seen.len() < total {
            let frame =
                match tokio::time::timeout(Duration::from_secs(60), next_json_or_close(&mut jean))
                    .await
                {
                    Ok(Ok(frame)) => frame,
                    Ok(Err(1013)) => {
                        let path = format!("/ws/gaveur/1?since={last_seq}");
                        jean = ws_connect(http, &path, &jean_token).await;
                        continue;
                    }
                    Ok(Err(code)) => panic!("jean's channel closed with {code}"),
                    Err(_) => break,
                };
            last_seq = frame["seq"].as_u64().unwrap_or(last_seq);
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

/// A lot's meal as Kafka would carry it, with a chosen dose (theory 200 g).
/// Meals of `lot` on each of `jours`, 200 g planned and `dose_reelle` given, produced as admin.
async fn feed(
    producer: &rdkafka::producer::FutureProducer,
    admin: &str,
    lot: &str,
    jours: std::ops::RangeInclusive<i64>,
    dose_reelle: f64,
) {
    for jour in jours {
        let mut meal = records::meal(lot, 1, "LL", jour, "matin");
        meal["dose_theorique"] = serde_json::json!(200.0);
        meal["dose_reelle"] = serde_json::json!(dose_reelle);
        produce(
            producer,
            GAVAGE,
            lot,
            meal.to_string().as_bytes(),
            Some(admin),
        )
        .await;
    }
}

/// The alerts of `lot` as instance `gaveurs` answers (any instance answers for all).
async fn lot_alerts(gaveurs: &Gaveurs, lot: &str, state: &str) -> Vec<serde_json::Value> {
    let (status, body) = support::http_get_as(
        gaveurs.http,
        &format!("/api/v1/alerts?state={state}&code_lot={lot}"),
        &gaveurs.admin,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    answer["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| answer.as_array().cloned().unwrap_or_default())
}

/// Polls `probe` until it answers, at most `limit`.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_that_takes_a_partition_over_continues_its_alert_and_texts_once() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = Tansu::start(dir.path());
    topics(&tansu, 2).await;
    let twilio = support::twilio::FakeTwilio::start().await;
    let data = dir.path().join("shared-data");
    let phones = dir.path().join("phones.csv");
    std::fs::write(&phones, "gaveur_id,phone\n1,+33612345678\n").unwrap();
    // The alert state is saved when a text is asked for, then not again for a minute (nor
    // are its rows published): the instance that takes over finds the opening saved but not
    // the updates after it, and reads those again from Kafka (they are in Parquet already)
    // for its alert state alone. The lot's meals are refusals, anomalies too: the
    // `anomalie` rule is off so the lot has one alert to follow. The ledger's state is
    // saved as seldom: the partition's chain is continued from where its state began.
    let config = format!(
        "{}\n[analytics]\nenabled = false\n\n[ledger]\nstate_save_interval_ms = 60000\n\n[alerts]\nstate_save_interval_ms = 60000\npublish_interval_s = 3600\n[alerts.rules.anomalie]\nenabled = false\n\n[sms]\ntwilio_base_url = \"{}\"\ndirectory = \"{}\"\nretry_initial_ms = 50\nretry_max_s = 1\n",
        kafka_config(&tansu, "alerts-pair", &data),
        twilio.base_url,
        phones.display()
    );
    let env = [
        (
            "TWILIO_ACCOUNT_SID",
            Some("AC0123456789abcdef0123456789abcdef"),
        ),
        ("TWILIO_AUTH_TOKEN", Some("secret-token")),
        ("TWILIO_PHONE_NUMBER", Some("+33700000000")),
    ];
    let a = Gaveurs::start_with_env(&instance_dir(dir.path(), "a"), &config, &env);
    let b = Gaveurs::start_with_env(&instance_dir(dir.path(), "b"), &config, &env);
    let admin = a.admin.clone();
    let producer = tansu.producer();
    let lot = "LL26TAKE01";
    // Five refusals: one critical alert, count 5, texted once.
    feed(&producer, &admin, lot, 1..=5, 50.0).await;
    let sms = twilio.wait_for_requests(1, Duration::from_secs(60)).await;
    assert!(sms[0].body.contains(lot), "{}", sms[0].body);
    // The owner counts 5 (in memory); the other instance answers from the saved state.
    let opened = until(Duration::from_secs(30), "the alert counted 5", || async {
        for gaveurs in [&a, &b] {
            if let Some(alert) = lot_alerts(gaveurs, lot, "active")
                .await
                .into_iter()
                .find(|a| a["rule"] == "refus_alimentaire" && a["count"] == 5)
            {
                return Some(alert);
            }
        }
        None
    })
    .await;
    let alert_id = opened["alert_id"].as_str().unwrap().to_string();
    // Two more refusals after the text: the owner counts them, the saved state does not.
    feed(&producer, &admin, lot, 6..=7, 50.0).await;
    until(Duration::from_secs(30), "the alert counted 7", || async {
        for gaveurs in [&a, &b] {
            if lot_alerts(gaveurs, lot, "active")
                .await
                .iter()
                .any(|a| a["alert_id"] == alert_id.as_str() && a["count"] == 7)
            {
                return Some(());
            }
        }
        None
    })
    .await;
    for gaveurs in [&a, &b] {
        let seen = lot_alerts(gaveurs, lot, "active").await;
        assert!(seen.iter().any(|x| x["alert_id"] == alert_id.as_str()));
    }
    let root = data.join("parquet");
    eventually(Duration::from_secs(30), "the seven meals published", || {
        (stored_meals(&root).len() == 7).then_some(())
    });

    // The owner is the instance that took the partition's alert state.
    let took = |gaveurs: &Gaveurs| {
        std::fs::read_to_string(gaveurs.dir.join("logs/alerts.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("partition's alert state taken"))
            .count()
    };
    let partition_of_lot = {
        let state: Vec<_> = std::fs::read_dir(data.join("shards"))
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("alerts/state.json"))
                    .unwrap_or_default()
                    .contains(&alert_id)
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(state.len(), 1, "one partition holds the alert: {state:?}");
        state[0].rsplit('-').next().unwrap().to_string()
    };
    let owns = |gaveurs: &Gaveurs| {
        std::fs::read_to_string(gaveurs.dir.join("logs/alerts.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .find(|l| {
                l.contains(&format!("partition={partition_of_lot}"))
                    && (l.contains("taken") || l.contains("handed over"))
            })
            .is_some_and(|l| l.contains("taken"))
    };
    assert!(took(&a) + took(&b) >= 2);
    let (owner, survivor) = if owns(&a) { (a, b) } else { (b, a) };
    assert!(!owns(&survivor), "one owner");
    owner.kill9();

    // Three more refusals reach the survivor once the group has moved the partition: the
    // same alert goes on (no second opening, no second text)…
    feed(&producer, &admin, lot, 8..=10, 50.0).await;
    let updated = until(
        Duration::from_secs(90),
        "the survivor counts on",
        || async {
            lot_alerts(&survivor, lot, "active")
                .await
                .into_iter()
                .find(|a| a["count"] == 10)
        },
    )
    .await;
    assert_eq!(updated["alert_id"], alert_id.as_str());
    // …and three normal meals clear it.
    feed(&producer, &admin, lot, 11..=13, 200.0).await;
    let cleared = until(Duration::from_secs(60), "the alert cleared", || async {
        lot_alerts(&survivor, lot, "cleared")
            .await
            .into_iter()
            .find(|a| a["alert_id"] == alert_id.as_str())
    })
    .await;
    assert_eq!(cleared["count"], 10);
    let active = lot_alerts(&survivor, lot, "active").await;
    assert!(active.is_empty(), "no twin: {active:?}");
    // The survivor really read the published updates again for the alert state.
    let connectors = std::fs::read_to_string(survivor.dir.join("logs/connectors.log")).unwrap();
    let field = |line: &str, name: &str| -> Option<i64> {
        let rest = line.split(&format!("{name}=Some(")).nth(1)?;
        rest.split(')').next()?.parse().ok()
    };
    assert!(
        connectors.lines().any(|l| {
            l.contains("resuming the partition")
                && matches!(
                    (field(l, "state_needs"), field(l, "published_next")),
                    (Some(needs), Some(published)) if needs < published
                )
        }),
        "{connectors}"
    );
    survivor.stop_cleanly();
    assert_eq!(
        twilio.requests().len(),
        1,
        "exactly one text for one opening"
    );
    // The alerts dataset holds one opening of that alert.
    let openings = read_rows(&root, "alerts")
        .into_iter()
        .filter(|r| r["alert_id"] == alert_id.as_str() && r["transition"] == "opened")
        .count();
    assert_eq!(openings, 1);

    // The partition's ledger chain, begun by the owner and continued by the survivor, holds
    // each of the lot's events once; every chain of the shared data dir verifies.
    let output = std::process::Command::new(support::BIN)
        .args(["ledger", "verify", "--data", data.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let chain = format!("kafka_gaveurs_gavage_v1_p{partition_of_lot}");
    assert!(said.contains(&format!("chain {chain}: ")), "{said}");
    let entries: Vec<serde_json::Value> = std::fs::read_dir(data.join("ledger").join(&chain))
        .unwrap()
        .flat_map(|f| {
            // One file: a segment holds 100,000 entries.
            std::fs::read_to_string(f.unwrap().path())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect();
    let events: Vec<(String, String)> = entries
        .iter()
        .filter(|e| e["code_lot"] == lot)
        .map(|e| {
            let kind = e["type"].as_str().unwrap().to_string();
            let detail = match kind.as_str() {
                "day_closed" => e["payload"]["jour"].to_string(),
                _ => e["payload"]["alert_id"].as_str().unwrap_or("").to_string(),
            };
            (kind, detail)
        })
        .collect();
    // One meal a day: the first refusal opens the critical alert, each meal closes the day
    // before, and the third normal meal (day 13) clears the alert.
    let mut expected = vec![
        ("lot_started".to_string(), String::new()),
        ("alert_opened".to_string(), alert_id.clone()),
    ];
    expected.extend((1..=12).map(|jour| ("day_closed".to_string(), jour.to_string())));
    expected.push(("alert_cleared".into(), alert_id.clone()));
    assert_eq!(events, expected);
    let genesis = entries.iter().filter(|e| e["type"] == "genesis").count();
    assert_eq!(genesis, 1);
}
