//! Slow and hostile clients beside well-behaved ones. Two gaveur channels read a paced
//! stream of meals, once alone and once while others misbehave: a channel client that never
//! reads, 1,000 idle connections (MQTT without a CONNECT, authenticated WebSockets that say
//! nothing), clients that send 100 MB (an MQTT packet, a channel message, an ingest
//! message), MQTT clients that connect and drop in a loop, and a flood of CONNECTs with bad
//! passwords. The well-behaved channels get every meal in order, the pipeline stays ready,
//! its peak RSS stays within 256 MB and it stops cleanly. The push p99 of both phases is
//! printed (a figure, not a pass mark: timings are benchmarks' business, and
//! `scripts/bench-hostile-clients.sh` measures it with the hostile clients in a process of
//! their own).
//!
//! The connection limits are tested apart, small: past `[mqtt] max_connections` a new
//! connection is closed on arrival, past `[websocket] max_connections` a WebSocket is
//! answered 503.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gaveurs_loadgen::hostile;
use gaveurs_loadgen::producer::{MqttVersion, ServerPacket, connect};
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const PEAK_RSS_LIMIT_MB: f64 = 256.0;
const MEALS_PER_PHASE: usize = 1000;

/// Publishes `MEALS_PER_PHASE` meals of gaveur 1 at about 250 a second, each after the
/// previous one's PUBACK or its turn, whichever is later; returns when each was sent.
async fn paced_meals(mqtt: SocketAddr, token: &str, phase: &str) -> HashMap<String, Instant> {
    let (mut writer, mut reader) = connect(
        mqtt,
        MqttVersion::V5,
        &format!("paced-{phase}"),
        Some(token),
    )
    .await
    .unwrap();
    let mut sent = HashMap::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(4));
    for n in 0..MEALS_PER_PHASE {
        ticks.tick().await;
        let lot = format!("{phase}{n:05}");
        let meal = records::meal(&lot, 1, "LL", 1, "matin").to_string();
        writer
            .publish(
                "gaveurs/LL/1/gavage",
                meal.into(),
                1,
                (n % 60_000) as u16 + 1,
                None,
            )
            .unwrap();
        writer.flush().await.unwrap();
        sent.insert(lot, Instant::now());
        match reader.next().await.unwrap() {
            ServerPacket::Ack { reason: 0, .. } => {}
            other => panic!("meal {n} not accepted: {other:?}"),
        }
    }
    sent
}

/// Reads a channel until `count` meals of `phase` arrived; returns when each arrived, in
/// arrival order.
async fn receive_meals(ws: &mut Ws, phase: &str, count: usize) -> Vec<(String, Instant)> {
    let mut arrived = Vec::with_capacity(count);
    while arrived.len() < count {
        let message = next_json(ws).await;
        if message["type"] != "gavage" {
            continue;
        }
        let lot = message["data"]["code_lot"].as_str().unwrap().to_string();
        if lot.starts_with(phase) {
            arrived.push((lot, Instant::now()));
        }
    }
    arrived
}

/// One phase: the paced meals, and both channels' arrivals; returns the push latencies.
async fn phase(gaveurs: &Gaveurs, channels: &mut [Ws; 2], name: &'static str) -> Vec<Duration> {
    let [first, second] = channels;
    let (sent, first_arrivals, second_arrivals) = tokio::join!(
        paced_meals(gaveurs.mqtt(), &gaveurs.admin, name),
        receive_meals(first, name, MEALS_PER_PHASE),
        receive_meals(second, name, MEALS_PER_PHASE),
    );
    let expected: Vec<String> = (0..MEALS_PER_PHASE)
        .map(|n| format!("{name}{n:05}"))
        .collect();
    for arrivals in [&first_arrivals, &second_arrivals] {
        let order: Vec<&String> = arrivals.iter().map(|(lot, _)| lot).collect();
        assert!(
            order.iter().zip(&expected).all(|(got, want)| *got == want),
            "{name}: a channel missed or reordered meals"
        );
    }
    let mut latencies: Vec<Duration> = first_arrivals
        .iter()
        .chain(&second_arrivals)
        .map(|(lot, at)| at.saturating_duration_since(sent[lot]))
        .collect();
    latencies.sort();
    latencies
}

fn p99(latencies: &[Duration]) -> Duration {
    latencies[latencies.len() * 99 / 100]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_do_not_starve_the_well_behaved_ones() {
    let dir = tempfile::tempdir().unwrap();
    // Records only: KPI messages would multiply what the channels carry without changing
    // what this test is about.
    let gaveurs = Gaveurs::start(
        dir.path(),
        "[storage]\nroll_interval_s = 1\n[analytics]\nenabled = false\n",
    );
    let http = gaveurs.http;
    let mqtt = gaveurs.mqtt();
    let token = gaveurs.admin.clone();
    let mut channels = [
        ws_connect(http, "/ws/gaveur/1", &token).await,
        ws_connect(http, "/ws/gaveur/1", &token).await,
    ];
    let alone = phase(&gaveurs, &mut channels, "ALONE").await;

    // The hostile clients, all at once (`gaveurs-hostile` runs the same in a loop, in a
    // process of its own, for the benchmark).
    let deaf = ws_connect(http, "/ws/gaveur/1", &token).await;
    let idle_mqtt = hostile::idle_mqtt(mqtt, 500).await.unwrap();
    let idle_ws = hostile::idle_channels(http, &token, 500).await.unwrap();
    let huge_mqtt = tokio::spawn({
        let token = token.clone();
        async move { hostile::huge_mqtt_publish(mqtt, "huge", &token).await }
    });
    let huge_channel = tokio::spawn({
        let token = token.clone();
        async move { hostile::huge_socket_message(http, "/ws/gaveur/1", &token).await }
    });
    let huge_ingest = tokio::spawn({
        let token = token.clone();
        async move { hostile::huge_socket_message(http, "/ws/gavage", &token).await }
    });
    let churn = tokio::spawn({
        let token = token.clone();
        async move { hostile::churn(mqtt, &token, "test", 500).await }
    });
    let flood = tokio::spawn(hostile::connect_flood(mqtt, "test", 300));

    let hostile = phase(&gaveurs, &mut channels, "HOSTILE").await;

    let refused: Vec<Option<u8>> = flood.await.unwrap();
    assert!(
        refused.iter().all(|code| matches!(code, Some(4 | 5))),
        "every flooded CONNECT is refused (bad credentials / not authorized): {refused:?}"
    );
    churn.await.unwrap();
    let took = huge_mqtt.await.unwrap();
    assert!(
        took < hostile::HUGE_BYTES,
        "the 100 MB MQTT packet was cut off ({took} bytes taken)"
    );
    // The ingest socket says why (1009); a channel socket, which only ever takes small
    // control messages, is simply cut off.
    let end = huge_ingest.await.unwrap();
    assert_eq!(
        end, "1009",
        "a 100 MB ingest message closes the socket as too big"
    );
    let end = huge_channel.await.unwrap();
    assert!(
        end == "1009" || end.starts_with("error"),
        "a 100 MB channel message ends the socket: {end}"
    );
    let (status, body) = http_get(http, "/health/ready").await;
    assert_eq!(status, 200, "{body}");
    let peak_mb = gaveurs_loadgen::memory::peak_rss_mb(gaveurs.pid().as_raw() as u32).unwrap();
    drop((deaf, idle_mqtt, idle_ws));
    gaveurs.stop_cleanly();
    assert!(
        !std::fs::read_to_string(dir.path().join("stderr.log"))
            .unwrap()
            .contains("panicked"),
        "nothing panics"
    );
    eprintln!(
        "push p99: {:?} alone, {:?} beside the hostile clients ({:.2}×); peak RSS {peak_mb:.0} MB",
        p99(&alone),
        p99(&hostile),
        p99(&hostile).as_secs_f64() / p99(&alone).as_secs_f64()
    );
    assert!(
        peak_mb <= PEAK_RSS_LIMIT_MB,
        "peak RSS {peak_mb:.0} MB exceeds {PEAK_RSS_LIMIT_MB} MB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_limits_new_connections_are_turned_away() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(
        dir.path(),
        "[mqtt]\nlisten = \"127.0.0.1:0\"\nmax_connections = 2\n[websocket]\nmax_connections = 2\n",
    );
    let (mqtt, http) = (gaveurs.mqtt(), gaveurs.http);
    let held = [
        TcpStream::connect(mqtt).await.unwrap(),
        TcpStream::connect(mqtt).await.unwrap(),
    ];
    // Held connections are counted once their session task runs: a third connection is
    // closed on arrival (read gives EOF at once) as soon as both are.
    let closed_on_arrival = async {
        loop {
            let mut third = TcpStream::connect(mqtt).await.unwrap();
            let mut byte = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), closed_on_arrival)
        .await
        .expect("a third MQTT connection is closed on arrival");
    drop(held);
    // Room again once their sessions ended: a producer connects and publishes.
    let (mut writer, mut reader) = loop {
        if let Ok(Ok(connected)) = tokio::time::timeout(
            Duration::from_secs(5),
            connect(
                mqtt,
                MqttVersion::V5,
                "after-the-limit",
                Some(&gaveurs.admin),
            ),
        )
        .await
        {
            break connected;
        }
    };
    let meal = records::meal("LL2612001", 1, "LL", 1, "matin").to_string();
    writer
        .publish("gaveurs/LL/1/gavage", meal.into(), 1, 1, None)
        .unwrap();
    writer.flush().await.unwrap();
    assert!(matches!(
        reader.next().await.unwrap(),
        ServerPacket::Ack { reason: 0, .. }
    ));

    let _first = ws_connect(http, "/ws/gaveur/1", &gaveurs.admin).await;
    let _second = ws_connect(http, "/ws/gaveur/1", &gaveurs.admin).await;
    let refused = tokio_tungstenite::connect_async(format!(
        "ws://{http}/ws/gaveur/1?token={}",
        gaveurs.admin
    ))
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!(
            "a third WebSocket is refused with 503, got {:?}",
            other.map(|_| ())
        ),
    }
    gaveurs.stop_cleanly();
}
