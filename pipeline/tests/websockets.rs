//! Live WebSockets with real clients: V3 ingest, gaveur channels, dashboards.

mod support;

use std::time::Duration;

use futures::StreamExt;
use gaveurs_loadgen::producer::{MqttVersion, ServerPacket, connect};
use serde_json::{Value, json};
use support::{Gaveurs, Ws, next_json, publish_each, read_rows, records, send_json, ws_connect};
use tokio_tungstenite::tungstenite::Message;

fn msg(topic: &str, value: &Value) -> (String, Vec<u8>, u8) {
    (topic.to_string(), value.to_string().into_bytes(), 1)
}

/// These tests count and number the record messages of a channel; KPI messages (tested in
/// analytics.rs) and anomalies (anomalies.rs) would interleave with them.
const RECORDS_ONLY: &str = "[analytics]\nenabled = false\n[ml]\nenabled = false\n";

/// The next dashboard message about a record, skipping the alerts its samples raise (their
/// timing relative to later records' pushes is not fixed: alerts leave after the log).
async fn next_record_push(ws: &mut Ws) -> Value {
    loop {
        let message = next_json(ws).await;
        if message["type"] != "alert" {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_record_reaches_its_gaveur_only_and_ws_ingest_answers_like_v3() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), RECORDS_ONLY);
    let mut jean = ws_connect(gaveurs.http, "/ws/gaveur/1", &gaveurs.admin).await;
    let mut sophie = ws_connect(gaveurs.http, "/ws/gaveur/2", &gaveurs.admin).await;

    let meal = records::meal("LL2601001", 1, "LL", 4, "matin");
    publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &[msg("gaveurs/LL/1/gavage", &meal)],
    )
    .await;
    let pushed = next_json(&mut jean).await;
    assert_eq!(pushed["type"], "gavage");
    assert_eq!(pushed["data"]["code_lot"], "LL2601001");
    assert_eq!(pushed["data"]["jour"], 4);
    assert_eq!(pushed["data"]["dose_reelle"], meal["dose_reelle"]);
    let first_seq = pushed["seq"].as_u64().unwrap();

    // Sophie's first message is her own record: she never saw Jean's.
    let hers = records::meal("LS2601002", 2, "LS", 1, "soir");
    publish_each(
        gaveurs.mqtt(),
        MqttVersion::V311,
        &gaveurs.admin,
        &[msg("gaveurs/LS/2/gavage", &hers)],
    )
    .await;
    let pushed = next_json(&mut sophie).await;
    assert_eq!(pushed["data"]["code_lot"], "LS2601002");

    // The same kind of record over the V3 ingest path.
    let mut station = ws_connect(gaveurs.http, "/ws/gavage", &gaveurs.admin).await;
    assert_eq!(
        next_json(&mut station).await["type"],
        "connection_established"
    );
    let next = records::meal("LL2601001", 1, "LL", 4, "soir");
    send_json(&mut station, &next).await;
    let ack = next_json(&mut station).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["status"], "saved");
    assert_eq!(
        (&ack["code_lot"], &ack["jour"], &ack["moment"]),
        (&json!("LL2601001"), &json!(4), &json!("soir"))
    );
    let pushed = next_json(&mut jean).await;
    assert_eq!(pushed["data"]["moment"], "soir");
    assert_eq!(pushed["seq"].as_u64().unwrap(), first_seq + 1);
    // A bad record: the reason only, never the payload.
    let mut bad = next.clone();
    bad["dose_reelle"] = json!(-5);
    bad["secret_blob"] = json!("x".repeat(500));
    send_json(&mut station, &bad).await;
    let error = next_json(&mut station).await;
    assert_eq!(error["type"], "error");
    assert!(error["message"].as_str().unwrap().contains("dose_reelle"));
    assert!(!error.to_string().contains("xxxx"));

    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();
    let meals = read_rows(&root, "gavage_meals");
    let via_ws = meals
        .iter()
        .find(|r| r["moment"] == "soir" && r["code_lot"] == "LL2601001")
        .unwrap();
    assert_eq!(via_ws["_transport"], "websocket");
    assert_eq!(via_ws["_topic"], "/ws/gavage");
    assert_eq!(read_rows(&root, "dlq").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensors_socket_speaks_the_station_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let mut station = ws_connect(gaveurs.http, "/ws/sensors/", &gaveurs.admin).await;
    assert_eq!(
        next_json(&mut station).await["type"],
        "connection_established"
    );
    send_json(
        &mut station,
        &json!({"type": "esp32_hello", "device_id": "ESP32_LL_01", "firmware": "3.2"}),
    )
    .await;
    let hello = next_json(&mut station).await;
    assert_eq!(
        (hello["type"].as_str(), hello["device_id"].as_str()),
        (Some("hello_ack"), Some("ESP32_LL_01"))
    );
    send_json(&mut station, &json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut station).await["type"], "pong");
    // A heartbeat gets no reply (and is never an error): the next reply is the sample's.
    send_json(
        &mut station,
        &json!({"type": "heartbeat", "device_id": "ESP32_LL_01", "uptime_s": 3600}),
    )
    .await;
    let sample = records::sqal("ESP32_LL_01", "S-77", 0.81);
    assert!(sample.to_string().len() > 50_000, "a large V3 message");
    send_json(&mut station, &sample).await;
    let ack = next_json(&mut station).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["status"], "saved");
    assert_eq!(ack["sample_id"], "S-77");
    assert_eq!(ack["fusion_score"], 0.81);
    assert_eq!(ack["fusion_grade"], "A");
    let mut broken = sample.clone();
    broken["vl53l8ch"]["distance_matrix"] = json!([[1, 2]]);
    send_json(&mut station, &broken).await;
    let error = next_json(&mut station).await;
    assert_eq!(error["type"], "error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("vl53l8ch.distance_matrix"),
        "{error}"
    );
    let (status, devices) =
        support::http_get_as(gaveurs.http, "/api/v1/devices", &gaveurs.admin).await;
    assert_eq!(status, 200);
    let devices: Value = serde_json::from_str(&devices).unwrap();
    assert_eq!(devices[0]["device_id"], "ESP32_LL_01");
    assert_eq!(devices[0]["status"]["uptime_s"], 3600);

    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();
    assert_eq!(read_rows(&root, "sqal_samples").len(), 1);
    let dlq = read_rows(&root, "dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["reason_code"], "schema_invalid");
    assert_eq!(dlq[0]["stream"], "sqal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_that_never_read_or_reconnect_per_message_do_not_hurt() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "[storage]\nroll_interval_s = 1\n");
    // Sends 3000 records and never reads a reply.
    let mut deaf = ws_connect(gaveurs.http, "/ws/gavage", &gaveurs.admin).await;
    for n in 0..3000 {
        send_json(
            &mut deaf,
            &records::meal(&format!("LLD{n:05}"), 1, "LL", 1, "matin"),
        )
        .await;
    }
    // One connection per message, closed without reading.
    for n in 0..50 {
        let mut once = ws_connect(gaveurs.http, "/ws/gavage", &gaveurs.admin).await;
        send_json(
            &mut once,
            &records::meal(&format!("LLO{n:05}"), 1, "LL", 1, "soir"),
        )
        .await;
        drop(once);
    }
    // A well-behaved station still gets its answer.
    let mut polite = ws_connect(gaveurs.http, "/ws/gavage", &gaveurs.admin).await;
    next_json(&mut polite).await;
    send_json(&mut polite, &records::meal("LLP00001", 1, "LL", 2, "matin")).await;
    assert_eq!(next_json(&mut polite).await["status"], "saved");
    // The deaf producer's socket is still open for more, and everything it sent is taken
    // (it never reads an acknowledgement, so its records are watched arriving in Parquet).
    send_json(&mut deaf, &records::meal("LLD99999", 1, "LL", 1, "matin")).await;
    let root = gaveurs.parquet_root();
    let count = |prefix: &str| {
        read_rows(&root, "gavage_meals")
            .iter()
            .filter(|r| r["code_lot"].as_str().unwrap().starts_with(prefix))
            .count()
    };
    support::eventually(
        Duration::from_secs(60),
        "every record of the deaf and one-shot producers",
        || Some(()).filter(|_| count("LLD") == 3001 && count("LLO") == 50),
    );
    drop(deaf);
    gaveurs.stop_cleanly();
    assert_eq!(count("LLD"), 3001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_channel_client_is_closed_with_1013_and_others_keep_receiving() {
    let dir = tempfile::tempdir().unwrap();
    // Records only: a KPI message per meal would double the fast reader's traffic, and a
    // debug-build test task reading 16,000 frames on a loaded machine can fall behind too.
    let gaveurs = Gaveurs::start(
        dir.path(),
        &format!("{RECORDS_ONLY}[websocket]\nclient_queue = 1024\n"),
    );
    let mut slow = ws_connect(gaveurs.http, "/ws/gaveur/1", &gaveurs.admin).await;
    let fast = ws_connect(gaveurs.http, "/ws/gaveur/1", &gaveurs.admin).await;
    const N: usize = 8000;
    let reader = tokio::spawn(async move {
        let mut fast = fast;
        let mut seqs = Vec::with_capacity(N);
        while seqs.len() < N {
            let frame = next_json(&mut fast).await;
            seqs.push(frame["seq"].as_u64().unwrap());
        }
        seqs
    });
    // Big frames (a long name), so the slow client's socket buffers fill up quickly.
    let name = "Jean Martin ".repeat(200);
    let (mut writer, mut acks) = connect(
        gaveurs.mqtt(),
        MqttVersion::V5,
        "burst",
        Some(&gaveurs.admin),
    )
    .await
    .unwrap();
    let mut inflight = 0;
    for n in 0..N {
        let mut meal = records::meal(&format!("LLF{n:05}"), 1, "LL", 1, "matin");
        meal["gaveur_nom"] = json!(name);
        writer
            .publish(
                "gaveurs/LL/1/gavage",
                meal.to_string().into(),
                1,
                (n % 60_000) as u16 + 1,
                None,
            )
            .unwrap();
        inflight += 1;
        if inflight == 64 {
            writer.flush().await.unwrap();
            while inflight > 32 {
                assert!(matches!(
                    acks.next().await.unwrap(),
                    ServerPacket::Ack { reason: 0, .. }
                ));
                inflight -= 1;
            }
        }
    }
    writer.flush().await.unwrap();
    let seqs = reader.await.unwrap();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "the fast client got every frame in order"
    );
    // Now the slow client reads: what was already on its socket, then the 1013 close.
    let mut close = None;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(20), slow.next())
        .await
        .unwrap()
    {
        match message {
            Ok(Message::Close(frame)) => {
                close = frame;
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1013);
    gaveurs.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_with_since_delivers_exactly_the_missed_messages() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), RECORDS_ONLY);
    let lot = |jour: i64| {
        msg(
            "gaveurs/MT/3/gavage",
            &records::meal("MT2603003", 3, "MT", jour, "matin"),
        )
    };
    let mut client = ws_connect(gaveurs.http, "/ws/gaveur/3", &gaveurs.admin).await;
    publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &(1..=5).map(lot).collect::<Vec<_>>(),
    )
    .await;
    let mut last = 0;
    for jour in 1..=5 {
        let frame = next_json(&mut client).await;
        assert_eq!(frame["data"]["jour"], jour);
        last = frame["seq"].as_u64().unwrap();
    }
    drop(client);
    publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &(6..=9).map(lot).collect::<Vec<_>>(),
    )
    .await;
    let mut client = ws_connect(
        gaveurs.http,
        &format!("/ws/gaveur/3?since={last}"),
        &gaveurs.admin,
    )
    .await;
    for jour in 6..=9 {
        let frame = next_json(&mut client).await;
        assert_eq!(frame["data"]["jour"], jour);
        assert_eq!(frame["seq"].as_u64().unwrap(), last + (jour as u64 - 5));
    }
    // Then live, with no repeat in between.
    publish_each(gaveurs.mqtt(), MqttVersion::V5, &gaveurs.admin, &[lot(10)]).await;
    let frame = next_json(&mut client).await;
    assert_eq!(frame["data"]["jour"], 10);
    assert_eq!(frame["seq"].as_u64().unwrap(), last + 5);
    gaveurs.stop_cleanly();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_filter_what_they_receive() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), RECORDS_ONLY);
    let mut filtered = ws_connect(gaveurs.http, "/ws/realtime/", &gaveurs.admin).await;
    let mut everything = ws_connect(gaveurs.http, "/ws/realtime/", &gaveurs.admin).await;
    assert_eq!(
        next_json(&mut filtered).await["type"],
        "connection_established"
    );
    assert_eq!(
        next_json(&mut everything).await["type"],
        "connection_established"
    );
    send_json(&mut filtered, &json!({"type": "subscribe", "filters": {"site_code": "LL", "min_grade": "B", "data_type": "sqal_only"}})).await;
    let ack = next_json(&mut filtered).await;
    assert_eq!(ack["type"], "subscribe_ack");
    assert_eq!(ack["filters"]["min_grade"], "B");
    send_json(&mut filtered, &json!({"type": "heartbeat"})).await;
    assert_eq!(next_json(&mut filtered).await["type"], "heartbeat_ack");

    publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &[
            msg(
                "gaveurs/LL/1/gavage",
                &records::meal("LL1", 1, "LL", 1, "matin"),
            ),
            msg(
                "sqal/LS/ESP32_LS_01/measurements",
                &records::sqal("ESP32_LS_01", "a", 0.9),
            ),
            msg(
                "sqal/LL/ESP32_LL_01/measurements",
                &records::sqal("ESP32_LL_01", "b", 0.5),
            ),
            msg(
                "sqal/LL/ESP32_LL_01/measurements",
                &records::sqal("ESP32_LL_01", "c", 0.8),
            ),
        ],
    )
    .await;
    let first = next_record_push(&mut filtered).await;
    assert_eq!(first["type"], "sensor_update");
    assert_eq!(
        first["data"]["sample_id"], "c",
        "only the LL sample graded B or better passes"
    );
    assert_eq!(first["grade"], "A");
    let kinds: Vec<String> = {
        let mut kinds = Vec::new();
        for _ in 0..4 {
            kinds.push(
                next_record_push(&mut everything).await["type"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        kinds
    };
    assert_eq!(
        kinds,
        [
            "gavage_realtime",
            "sensor_update",
            "sensor_update",
            "sensor_update"
        ]
    );
    // Device filter, set again on the same socket.
    send_json(
        &mut filtered,
        &json!({"type": "subscribe", "filters": {"device_id": "ESP32_LS_01"}}),
    )
    .await;
    assert_eq!(
        next_record_push(&mut filtered).await["type"],
        "subscribe_ack"
    );
    publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &[
            msg(
                "sqal/LL/ESP32_LL_01/measurements",
                &records::sqal("ESP32_LL_01", "d", 0.9),
            ),
            msg(
                "sqal/LS/ESP32_LS_01/measurements",
                &records::sqal("ESP32_LS_01", "e", 0.3),
            ),
        ],
    )
    .await;
    assert_eq!(
        next_record_push(&mut filtered).await["data"]["sample_id"],
        "e"
    );
    gaveurs.stop_cleanly();
}
