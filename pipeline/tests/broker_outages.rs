//! The brokers the pipeline reads from go away mid-stream and come back: Mosquitto stopped
//! and restarted with its sessions saved, Mosquitto killed and restarted empty (the
//! pipeline's session is gone and it must subscribe again), and the Kafka broker killed and
//! restarted empty. `/health/ready` names the missing source while it is down and is ready
//! after; every record the brokers acknowledged is stored once.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::kafka::{Tansu, produce};
use support::records::one_meal_per_lot;
use support::{Gaveurs, Mosquitto, free_port, http_get, lot_counts, publish_pipelined, wait_ready};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const GAVAGE: &str = "gaveurs.gavage.v1";
const SQAL: &str = "gaveurs.sqal.v1";

fn broker_config(mosquitto: &Mosquitto) -> String {
    format!(
        "[mqtt]\nbroker = \"mqtt://127.0.0.1:{}\"\nclient_id = \"gaveurs-outage\"\n\n[storage]\nroll_interval_s = 1\n",
        mosquitto.port
    )
}

/// Waits until every lot in `0..expected` is stored, then checks none is stored twice.
fn all_stored_once(root: &Path, expected: usize) {
    support::eventually(
        Duration::from_secs(60),
        &format!("{expected} meals in Parquet"),
        || Some(()).filter(|_| lot_counts(root).len() >= expected),
    );
    let counts = lot_counts(root);
    assert_eq!(counts.len(), expected);
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
}

/// Polls `/health/ready` until it answers `status`; returns the body.
async fn readiness_becomes(http: SocketAddr, status: u16) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (got, body) = http_get(http, "/health/ready").await;
        if got == status {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/health/ready never answered {status}; last {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn publish_to_mosquitto(mosquitto: &Mosquitto, token: &str, messages: &[(String, Vec<u8>)]) {
    let codes = publish_pipelined(mosquitto.addr(), token, messages, 256).await;
    assert_eq!(codes.len(), messages.len());
    assert!(
        codes.iter().all(|c| *c == 0),
        "Mosquitto acknowledged every meal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_stopped_mid_stream_and_restarted_with_its_sessions_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut mosquitto = Mosquitto::start_persistent(dir.path());
    let gaveurs = Gaveurs::start(dir.path(), &broker_config(&mosquitto));
    wait_ready(gaveurs.http).await;
    let root = gaveurs.parquet_root();

    // Mosquitto holds meals the pipeline has not taken yet when it stops; it saves them with
    // the pipeline's session, and delivers them after its restart.
    publish_to_mosquitto(&mosquitto, &gaveurs.admin, &one_meal_per_lot(0, 3000)).await;
    mosquitto.stop(Signal::SIGTERM);
    let down = readiness_becomes(gaveurs.http, 503).await;
    assert!(
        down.contains("MQTT broker"),
        "readiness names the broker: {down}"
    );
    let taken_before_restart = lot_counts(&root).len();

    mosquitto.restart();
    readiness_becomes(gaveurs.http, 200).await;
    publish_to_mosquitto(&mosquitto, &gaveurs.admin, &one_meal_per_lot(3000, 3500)).await;
    all_stored_once(&root, 3500);
    gaveurs.stop_cleanly();
    eprintln!("stored before the restart: {taken_before_restart} of 3000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_restarted_without_the_pipelines_session_gets_a_new_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let mut mosquitto = Mosquitto::start(dir.path());
    let gaveurs = Gaveurs::start(dir.path(), &broker_config(&mosquitto));
    wait_ready(gaveurs.http).await;
    let root = gaveurs.parquet_root();
    publish_to_mosquitto(&mosquitto, &gaveurs.admin, &one_meal_per_lot(0, 300)).await;
    all_stored_once(&root, 300);

    mosquitto.stop(Signal::SIGKILL);
    let down = readiness_becomes(gaveurs.http, 503).await;
    assert!(
        down.contains("MQTT broker"),
        "readiness names the broker: {down}"
    );
    // An empty broker: without a new subscription nothing more would ever arrive.
    mosquitto.restart();
    readiness_becomes(gaveurs.http, 200).await;
    publish_to_mosquitto(&mosquitto, &gaveurs.admin, &one_meal_per_lot(300, 600)).await;
    all_stored_once(&root, 600);
    gaveurs.stop_cleanly();
}

async fn kafka_topics(tansu: &Tansu) {
    tansu.create_topic(GAVAGE, 2).await;
    tansu.create_topic(SQAL, 1).await;
}

/// Produces meals of lots `from..to`, many at once, each acknowledged by the broker.
async fn produce_meals(tansu: &Tansu, token: &str, from: usize, to: usize) {
    let producer = tansu.producer();
    let sends = (from..to)
        .zip(one_meal_per_lot(from, to))
        .map(|(n, (_, payload))| {
            let producer = producer.clone();
            async move {
                let lot = format!("LS{n:06}");
                produce(&producer, GAVAGE, &lot, &payload, Some(token)).await
            }
        });
    futures::future::join_all(sends).await;
}

/// A TCP proxy in front of the Kafka broker, which the broker advertises as its address:
/// cutting it drops every client connection and refuses new ones, which is what a broker
/// outage looks like from its clients, while the broker keeps its records and offsets.
struct Proxy {
    up: watch::Sender<bool>,
}

impl Proxy {
    /// Listens on a port of its own choosing (given back), forwarding to `target`.
    async fn start(target: u16) -> (Proxy, u16) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, up_rx) = watch::channel(true);
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let mut up = up_rx.clone();
                if !*up.borrow() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = up.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        (Proxy { up }, port)
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

fn kafka_config(tansu: &Tansu) -> String {
    format!(
        "[kafka]\nbrokers = \"{}\"\ngroup = \"outage\"\n\n[storage]\nroll_interval_s = 1\n",
        tansu.brokers()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_broker_out_of_reach_mid_stream_is_waited_for_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    // The proxy binds first: a port picked free and bound later may be taken meanwhile by
    // another test.
    let broker_port = free_port();
    let (proxy, proxy_port) = Proxy::start(broker_port).await;
    let tansu = Tansu::start_advertising(dir.path(), broker_port, proxy_port);
    kafka_topics(&tansu).await;
    let gaveurs = Gaveurs::start(dir.path(), &kafka_config(&tansu));
    readiness_becomes(gaveurs.http, 200).await;
    let root = gaveurs.parquet_root();

    // The outage starts while the pipeline is still consuming what the broker acknowledged.
    produce_meals(&tansu, &gaveurs.admin, 0, 2000).await;
    proxy.cut();
    let down = readiness_becomes(gaveurs.http, 503).await;
    assert!(down.contains("Kafka"), "readiness names Kafka: {down}");
    let stored_during_outage = lot_counts(&root).len();
    // The outage lasts through a few of the client's reconnection attempts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();
    readiness_becomes(gaveurs.http, 200).await;
    produce_meals(&tansu, &gaveurs.admin, 2000, 2500).await;
    all_stored_once(&root, 2500);
    gaveurs.stop_cleanly();
    eprintln!("stored when the outage began: {stored_during_outage} of 2000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_broker_that_lost_its_data_is_read_again_from_its_first_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut tansu = Tansu::start(dir.path());
    kafka_topics(&tansu).await;
    let gaveurs = Gaveurs::start(dir.path(), &kafka_config(&tansu));
    readiness_becomes(gaveurs.http, 200).await;
    let root = gaveurs.parquet_root();
    produce_meals(&tansu, &gaveurs.admin, 0, 500).await;
    all_stored_once(&root, 500);
    gaveurs.stop_cleanly();

    // The broker comes back empty: its offsets start at 0 again, below those the pipeline
    // has published, and must not be taken for records it has seen.
    tansu.kill();
    tansu.start_again_empty();
    kafka_topics(&tansu).await;
    let admin = {
        let gaveurs = Gaveurs::start(dir.path(), &kafka_config(&tansu));
        readiness_becomes(gaveurs.http, 200).await;
        produce_meals(&tansu, &gaveurs.admin, 500, 800).await;
        all_stored_once(&root, 800);
        let admin = gaveurs.admin.clone();
        gaveurs.stop_cleanly();
        admin
    };
    // A later start resumes after them, neither skipping nor repeating.
    let gaveurs = Gaveurs::start(dir.path(), &kafka_config(&tansu));
    readiness_becomes(gaveurs.http, 200).await;
    produce_meals(&tansu, &admin, 800, 900).await;
    all_stored_once(&root, 900);
    gaveurs.stop_cleanly();
}
