//! Random SIGKILLs under load. Producers publish over the embedded listener, through a real
//! Mosquitto and into a real Kafka broker (tansu) while the pipeline is killed at random
//! moments — during and between Parquet rolls, alert saves, ledger appends and Kafka commits —
//! and restarted. After each restart, every record acknowledged before the kill (a PUBACK
//! from the pipeline or from Mosquitto, a delivery report from Kafka) is in Parquet exactly
//! once; at the end, every acknowledged record is, every alert lot has one alert (no twin)
//! and one text, and the ledger verifies.
//!
//! CI kills each setup a few times; `GAVEURS_CHAOS_KILLS=20` (scripts/chaos.sh) runs the long
//! version.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gaveurs_loadgen::producer::{MqttVersion, ServerPacket, connect};
use parking_lot::Mutex;
use serde_json::json;
use support::kafka::{Tansu, produce};
use support::twilio::FakeTwilio;
use support::{Gaveurs, Mosquitto, eventually, http_get, publish_pipelined, read_rows, records};
use tokio_util::sync::CancellationToken;

const GAVAGE: &str = "gaveurs.gavage.v1";
const SQAL: &str = "gaveurs.sqal.v1";
const PHONE: &str = "+33612345678";

/// Alert lots per continuous producer, each fed a refused meal (dose at half the theory) on
/// every round of its producer until its 36th meal: one `refus_alimentaire` alert and one
/// text each, however often the pipeline dies.
const ALERT_LOTS: usize = 3;

/// The two setups take turns: each times its kills against its own load, and each
/// shutdown is held to the 5 s limit.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const ALERT_MEALS: usize = 36;

fn kills(default: usize) -> usize {
    std::env::var("GAVEURS_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn twilio_env() -> Vec<(&'static str, Option<&'static str>)> {
    vec![
        (
            "TWILIO_ACCOUNT_SID",
            Some("AC00000000000000000000000000000001"),
        ),
        ("TWILIO_AUTH_TOKEN", Some("secret-token")),
        ("TWILIO_PHONE_NUMBER", Some("+33700000000")),
    ]
}

/// Rolls every second, alerts on the fixed rules only (the anomaly model would alert on
/// these synthetic records too), texts through the fake Twilio.
fn common_config(dir: &Path, twilio: &FakeTwilio) -> String {
    let phones = dir.join("phones.csv");
    std::fs::write(&phones, format!("gaveur_id,phone\n1,{PHONE}\n")).unwrap();
    format!(
        "[storage]\nroll_interval_s = 1\n\n[analytics]\nbatch_interval_ms = 200\n\n\
         [alerts.rules.anomalie]\nenabled = false\n\n\
         [sms]\ntwilio_base_url = \"{}\"\ndirectory = \"{}\"\nretry_initial_ms = 50\nretry_max_s = 1\nbudget_per_hour = 100\n",
        twilio.base_url,
        phones.display()
    )
}

/// Records acknowledged to their producers, by lot, and the batches each continuous
/// producer has had acknowledged.
#[derive(Clone, Default)]
struct Acknowledged {
    lots: Arc<Mutex<HashSet<String>>>,
    batches: Arc<Mutex<HashMap<&'static str, usize>>>,
}

impl Acknowledged {
    fn add(&self, lots: impl IntoIterator<Item = String>) {
        self.lots.lock().extend(lots);
    }

    fn batch_done(&self, producer: &'static str) {
        *self.batches.lock().entry(producer).or_default() += 1;
    }

    /// Whether each of `producers` has had every alert lot's meals acknowledged.
    fn alert_meals_done(&self, producers: &[&'static str]) -> bool {
        let batches = self.batches.lock();
        producers
            .iter()
            .all(|p| batches.get(p).copied().unwrap_or(0) >= ALERT_MEALS)
    }

    fn lots(&self) -> HashSet<String> {
        self.lots.lock().clone()
    }
}

fn normal_meal(lot: &str) -> Vec<u8> {
    records::meal(lot, 1, "LL", 1, "matin")
        .to_string()
        .into_bytes()
}

/// The `n`th meal of an alert lot: half its theoretical dose.
fn refused_meal(lot: &str, n: usize) -> Vec<u8> {
    let moment = if n.is_multiple_of(2) { "matin" } else { "soir" };
    let mut meal = records::meal(lot, 1, "LL", (n / 2) as i64 + 1, moment);
    meal["dose_reelle"] = json!(meal["dose_theorique"].as_f64().unwrap() * 0.5);
    meal.to_string().into_bytes()
}

/// Publishes meals to the embedded listener, `BURST` every 100 ms and each burst's
/// acknowledgements awaited, until the connection breaks (the kill); every lot the pipeline
/// acknowledged goes to `acked`. Paced, so that twenty restarts measure recovery rather
/// than a backlog a debug build cannot drain.
async fn embedded_producer(addr: SocketAddr, name: String, token: String, acked: Acknowledged) {
    const BURST: u64 = 25;
    let Ok((mut writer, mut reader)) = connect(addr, MqttVersion::V5, &name, Some(&token)).await
    else {
        return;
    };
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inflight: HashMap<u16, String> = HashMap::new();
    let mut n: u64 = 0;
    loop {
        pace.tick().await;
        for _ in 0..BURST {
            n += 1;
            let lot = format!("{name}K{n:07}");
            let pkid = (n % 65_000) as u16 + 1;
            if writer
                .publish(
                    "gaveurs/LL/1/gavage",
                    normal_meal(&lot).into(),
                    1,
                    pkid,
                    None,
                )
                .is_err()
            {
                return;
            }
            inflight.insert(pkid, lot);
        }
        if writer.flush().await.is_err() {
            return;
        }
        while !inflight.is_empty() {
            match reader.next().await {
                Ok(ServerPacket::Ack { pkid, reason }) => {
                    assert_eq!(reason, 0, "the pipeline refused a meal");
                    let lot = inflight.remove(&pkid).expect("ack for a message in flight");
                    acked.add([lot]);
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(_) => return,
            }
        }
    }
}

/// New lots in each batch of a continuous producer (five batches a second).
const BATCH_LOTS: usize = 40;

/// A batch of meals for a continuous producer: `BATCH_LOTS` new lots, then the next meal of
/// each of its alert lots.
fn batch(prefix: &'static str, round: usize) -> Vec<(String, Vec<u8>)> {
    let mut meals: Vec<(String, Vec<u8>)> = (0..BATCH_LOTS)
        .map(|i| {
            let lot = format!("{prefix}{round:05}x{i:03}");
            let meal = normal_meal(&lot);
            (lot, meal)
        })
        .collect();
    if round < ALERT_MEALS {
        for a in 0..ALERT_LOTS {
            let lot = format!("{prefix}ALERT{a}");
            meals.push((lot.clone(), refused_meal(&lot, round)));
        }
    }
    meals
}

/// Publishes a batch to Mosquitto every 200 ms until `stop`; Mosquitto's PUBACKs are the
/// acknowledgements (it queues for the pipeline's session while the pipeline is down).
async fn mosquitto_producer(
    mosquitto: SocketAddr,
    token: String,
    acked: Acknowledged,
    stop: CancellationToken,
) {
    let mut round = 0;
    while !stop.is_cancelled() {
        let meals = batch("MQ", round);
        let messages: Vec<(String, Vec<u8>)> = meals
            .iter()
            .map(|(_, meal)| ("gaveurs/LL/1/gavage".to_string(), meal.clone()))
            .collect();
        let codes = publish_pipelined(mosquitto, &token, &messages, 64).await;
        assert!(codes.iter().all(|c| *c == 0), "Mosquitto refused a meal");
        acked.add(meals.into_iter().map(|(lot, _)| lot));
        acked.batch_done("MQ");
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Produces a batch to Kafka every 200 ms until `stop`; the delivery reports are the
/// acknowledgements.
async fn kafka_producer(
    tansu_brokers: String,
    token: String,
    acked: Acknowledged,
    stop: CancellationToken,
) {
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &tansu_brokers)
        .set("enable.idempotence", "false")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut round = 0;
    while !stop.is_cancelled() {
        let meals = batch("KF", round);
        let sends = meals.iter().map(|(lot, meal)| {
            let producer = producer.clone();
            let token = token.clone();
            async move { produce(&producer, GAVAGE, lot, meal, Some(&token)).await }
        });
        futures::future::join_all(sends).await;
        acked.add(meals.into_iter().map(|(lot, _)| lot));
        acked.batch_done("KF");
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stored meals per `(code_lot, jour, moment)`.
fn stored(root: &Path) -> HashMap<(String, i64, String), usize> {
    let mut counts = HashMap::new();
    for row in read_rows(root, "gavage_meals") {
        let key = (
            row["code_lot"].as_str().unwrap().to_string(),
            row["jour"].as_i64().unwrap(),
            row["moment"].as_str().unwrap().to_string(),
        );
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// What a run must hold at its end, whatever was killed when.
fn check_outcome(root: &Path, acked: &HashSet<String>, alert_lots: &[String], twilio: &FakeTwilio) {
    let counts = stored(root);
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let lots: HashSet<&str> = counts.keys().map(|(lot, _, _)| lot.as_str()).collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|lot| !lots.contains(lot.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged lots lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );

    // One alert per alert lot: its openings all carry one alert id.
    let rows = read_rows(root, "alerts");
    for lot in alert_lots {
        let ids: HashSet<&str> = rows
            .iter()
            .filter(|r| r["code_lot"] == lot.as_str() && r["rule"] == "refus_alimentaire")
            .map(|r| r["alert_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "{lot}: alert ids {ids:?} (a twin)");
        let texts = twilio
            .requests()
            .iter()
            .filter(|r| r.status / 100 == 2 && r.body.contains(lot.as_str()))
            .count();
        assert_eq!(texts, 1, "{lot}: {texts} texts");
    }
}

fn ledger_verifies(dir: &Path, data: &Path) {
    let output = std::process::Command::new(support::BIN)
        .current_dir(dir)
        .args(["ledger", "verify", "--data", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ledger verify: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// After a restart: everything acknowledged before the kill reaches Parquet, none of it
/// twice.
fn recovered(root: &Path, acked: &HashSet<String>) {
    eventually(
        Duration::from_secs(90),
        "what was acknowledged before the kill, in Parquet",
        || {
            let counts = stored(root);
            let lots: HashSet<&str> = counts.keys().map(|(lot, _, _)| lot.as_str()).collect();
            acked
                .iter()
                .all(|lot| lots.contains(lot.as_str()))
                .then_some(())
        },
    );
    let twice: Vec<_> = stored(root)
        .into_iter()
        .filter(|(_, c)| *c > 1)
        .take(5)
        .collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
}

/// Waits until every acknowledged lot is stored and every alert lot texted.
fn wait_for_everything(
    root: &Path,
    acked: &HashSet<String>,
    alert_lots: &[String],
    twilio: &FakeTwilio,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let counts = stored(root);
        let lots: HashSet<&str> = counts.keys().map(|(lot, _, _)| lot.as_str()).collect();
        let missing: Vec<&String> = acked
            .iter()
            .filter(|lot| !lots.contains(lot.as_str()))
            .collect();
        if missing.is_empty() {
            break;
        }
        let mut examples: Vec<&&String> = missing.iter().take(5).collect();
        examples.sort();
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} acknowledged lots not in Parquet after 180 s, e.g. {examples:?}",
            missing.len(),
            acked.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let requests = twilio.requests();
        let untexted: Vec<&String> = alert_lots
            .iter()
            .filter(|lot| !requests.iter().any(|r| r.body.contains(lot.as_str())))
            .collect();
        if untexted.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no text for {untexted:?}; texts: {:?}",
            requests.iter().map(|r| &r.body).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Times `dir`'s pipelines have taken Kafka partitions, by their log.
fn kafka_assignments(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("stderr.log"))
        .unwrap_or_default()
        .matches("Kafka partitions assigned")
        .count()
}

/// Waits until the pipeline just started in `dir` consumes Kafka (`before`: the count of
/// assignments before it started), so that a kill can land amid its commits.
fn wait_for_kafka_partitions(dir: &Path, before: usize) {
    eventually(Duration::from_secs(60), "Kafka partitions assigned", || {
        (kafka_assignments(dir) > before).then_some(())
    });
}

async fn wait_ready(http: SocketAddr) {
    eventually_async(
        || async move { (http_get(http, "/health/ready").await.0 == 200).then_some(()) },
    )
    .await;
}

async fn eventually_async<F: std::future::Future<Output = Option<()>>>(
    mut probe: impl FnMut() -> F,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while probe().await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "not ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A random moment to kill at: somewhere in the next few rolls, saves and commits.
fn random_moment() -> Duration {
    Duration::from_millis(rand::random_range(300..3000))
}

fn alert_lots(prefixes: &[&str]) -> Vec<String> {
    prefixes
        .iter()
        .flat_map(|p| (0..ALERT_LOTS).map(move |a| format!("{p}ALERT{a}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_under_load_over_three_transports_lose_and_repeat_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let kills = kills(4);
    let dir = tempfile::tempdir().unwrap();
    let twilio = FakeTwilio::start().await;
    let mosquitto = Mosquitto::start(dir.path());
    let tansu = Tansu::start(dir.path());
    tansu.create_topic(GAVAGE, 2).await;
    tansu.create_topic(SQAL, 1).await;
    let config = format!(
        "[mqtt]\nlisten = \"127.0.0.1:0\"\nbroker = \"mqtt://127.0.0.1:{}\"\nclient_id = \"gaveurs-chaos\"\n\n\
         [kafka]\nbrokers = \"{}\"\ngroup = \"chaos\"\n\n{}",
        mosquitto.port,
        tansu.brokers(),
        common_config(dir.path(), &twilio)
    );
    let acked = Acknowledged::default();
    let stop = CancellationToken::new();
    let mut continuous = Vec::new();
    let mut embedded_count = 0;
    let mut acked_at_kill = HashSet::new();
    for kill in 0..kills {
        let assigned = kafka_assignments(dir.path());
        let gaveurs = Gaveurs::start_with_env(dir.path(), &config, &twilio_env());
        wait_ready(gaveurs.http).await;
        wait_for_kafka_partitions(dir.path(), assigned);
        recovered(&gaveurs.parquet_root(), &acked_at_kill);
        if kill == 0 {
            continuous.push(tokio::spawn(mosquitto_producer(
                mosquitto.addr(),
                gaveurs.admin.clone(),
                acked.clone(),
                stop.clone(),
            )));
            continuous.push(tokio::spawn(kafka_producer(
                tansu.brokers(),
                gaveurs.admin.clone(),
                acked.clone(),
                stop.clone(),
            )));
        }
        let embedded: Vec<_> = (0..2)
            .map(|p| {
                tokio::spawn(embedded_producer(
                    gaveurs.mqtt(),
                    format!("EM{kill:02}P{p}"),
                    gaveurs.admin.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(random_moment()).await;
        gaveurs.kill9();
        for producer in embedded {
            producer.await.unwrap();
        }
        embedded_count += 1;
        acked_at_kill = acked.lots();
    }

    let gaveurs = Gaveurs::start_with_env(dir.path(), &config, &twilio_env());
    // Let the continuous producers finish their alert lots' meals, then stop them.
    eventually(
        Duration::from_secs(120),
        "every alert meal acknowledged",
        || acked.alert_meals_done(&["MQ", "KF"]).then_some(()),
    );
    stop.cancel();
    for producer in continuous {
        producer.await.unwrap();
    }
    let acked = acked.lots();
    let alert_lots = alert_lots(&["MQ", "KF"]);
    let root = gaveurs.parquet_root();
    wait_for_everything(&root, &acked, &alert_lots, &twilio);
    gaveurs.stop_cleanly();
    check_outcome(&root, &acked, &alert_lots, &twilio);
    ledger_verifies(dir.path(), &dir.path().join("data"));
    eprintln!(
        "chaos: {kills} kills survived ({embedded_count} rounds of embedded producers), {} lots acknowledged and found once, {} alert lots with one alert and one text each",
        acked.len(),
        alert_lots.len()
    );
}

fn instance_dir(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_in_one_kafka_group_killed_in_turn_lose_and_repeat_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let kills = kills(4);
    let dir = tempfile::tempdir().unwrap();
    let twilio = FakeTwilio::start().await;
    let tansu = Tansu::start(dir.path());
    tansu.create_topic(GAVAGE, 4).await;
    tansu.create_topic(SQAL, 1).await;
    let data = dir.path().join("shared-data");
    let config = format!(
        "[kafka]\nbrokers = \"{}\"\ngroup = \"pair\"\n\n{}",
        tansu.brokers(),
        common_config(dir.path(), &twilio).replace(
            "[storage]\n",
            &format!("[storage]\ndata_dir = \"{}\"\n", data.display())
        )
    );
    let dirs = [instance_dir(dir.path(), "a"), instance_dir(dir.path(), "b")];
    let mut instances: Vec<Gaveurs> = dirs
        .iter()
        .map(|d| Gaveurs::start_with_env(d, &config, &twilio_env()))
        .collect();
    for instance in &instances {
        wait_ready(instance.http).await;
    }
    let acked = Acknowledged::default();
    let stop = CancellationToken::new();
    let producer = tokio::spawn(kafka_producer(
        tansu.brokers(),
        instances[0].admin.clone(),
        acked.clone(),
        stop.clone(),
    ));
    for kill in 0..kills {
        tokio::time::sleep(random_moment()).await;
        let which = kill % 2;
        instances.remove(which).kill9();
        let assigned = kafka_assignments(&dirs[which]);
        let restarted = Gaveurs::start_with_env(&dirs[which], &config, &twilio_env());
        wait_ready(restarted.http).await;
        wait_for_kafka_partitions(&dirs[which], assigned);
        instances.insert(which, restarted);
    }
    eventually(
        Duration::from_secs(120),
        "every alert meal acknowledged",
        || acked.alert_meals_done(&["KF"]).then_some(()),
    );
    stop.cancel();
    producer.await.unwrap();
    let acked = acked.lots();
    let alert_lots = alert_lots(&["KF"]);
    let root = data.join("parquet");
    wait_for_everything(&root, &acked, &alert_lots, &twilio);
    for instance in instances {
        instance.stop_cleanly();
    }
    check_outcome(&root, &acked, &alert_lots, &twilio);
    ledger_verifies(dir.path(), &data);
    eprintln!(
        "chaos, two instances: {kills} kills survived, {} lots acknowledged and found once, {} alert lots with one alert and one text each",
        acked.len(),
        alert_lots.len()
    );
}
