//! Ten thousand bad inputs (truncated, deeply nested, invalid UTF-8, NaN, huge numbers,
//! duplicate keys, wrong types, impossible timestamps, topic mismatches, oversize…) across the
//! embedded MQTT listener, the WebSocket ingest and Kafka: each one is refused the way its
//! transport can say it, each one is a dead-letter row with a reason, nothing is stored, the
//! pipeline stays up and small. `GAVEURS_BAD_INPUTS=100000` runs a longer version.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::SinkExt;
use support::hostile::{BadInput, Transport, bad_input};
use support::kafka::{Tansu, produce};
use support::{Gaveurs, duckdb, next_json, ws_connect};
use tokio_tungstenite::tungstenite::Message;

const GAVAGE: &str = "gaveurs.gavage.v1";
const SQAL: &str = "gaveurs.sqal.v1";

/// The whole run, the pipeline included, stays under this resident size (issue 19).
const PEAK_RSS_LIMIT_MB: f64 = 256.0;

fn inputs(transport: Transport, from: usize, count: usize) -> Vec<BadInput> {
    (from..from + count)
        .map(|n| bad_input(n, transport))
        .collect()
}

async fn over_mqtt(gaveurs: &Gaveurs, bad: &[BadInput]) -> Vec<u8> {
    let messages: Vec<(String, Vec<u8>)> = bad
        .iter()
        .map(|b| (b.topic.clone(), b.payload.clone()))
        .collect();
    support::publish_pipelined(gaveurs.mqtt(), &gaveurs.admin, &messages, 64).await
}

/// Each input on its stream's socket, one at a time: the reply of each.
async fn over_websocket(gaveurs: &Gaveurs, bad: &[BadInput]) -> Vec<serde_json::Value> {
    let mut gavage = ws_connect(gaveurs.http, "/ws/gavage", &gaveurs.admin).await;
    let mut sensors = ws_connect(gaveurs.http, "/ws/sensors/", &gaveurs.admin).await;
    for ws in [&mut gavage, &mut sensors] {
        assert_eq!(next_json(ws).await["type"], "connection_established");
    }
    let mut replies = Vec::with_capacity(bad.len());
    for input in bad {
        let ws = if input.is_sqal() {
            &mut sensors
        } else {
            &mut gavage
        };
        let message = match std::str::from_utf8(&input.payload) {
            Ok(text) => Message::Text(text.to_string().into()),
            Err(_) => Message::Binary(input.payload.clone().into()),
        };
        ws.send(message).await.unwrap();
        replies.push(next_json(ws).await);
    }
    replies
}

async fn over_kafka(tansu: &Tansu, token: &str, bad: &[BadInput]) {
    let producer = tansu.producer();
    let sends = bad.iter().enumerate().map(|(n, input)| {
        let topic = if input.is_sqal() { SQAL } else { GAVAGE };
        let producer = &producer;
        async move {
            produce(
                producer,
                topic,
                &format!("bad-{n}"),
                &input.payload,
                Some(token),
            )
            .await
        }
    });
    futures::future::join_all(sends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_refused_with_a_reason_and_dead_lettered() {
    let total: usize = std::env::var("GAVEURS_BAD_INPUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let (mqtt_count, ws_count) = (total / 2, total / 4);
    let kafka_count = total - mqtt_count - ws_count;

    let dir = tempfile::tempdir().unwrap();
    let tansu = Tansu::start(dir.path());
    for topic in [GAVAGE, SQAL, "gaveurs.dlq.v1"] {
        tansu.create_topic(topic, 1).await;
    }
    let gaveurs = Gaveurs::start(
        dir.path(),
        &format!(
            "[kafka]\nbrokers = \"{}\"\ngroup = \"hostile\"\n\n[storage]\nroll_interval_s = 1\n",
            tansu.brokers()
        ),
    );
    support::wait_ready(gaveurs.http).await;

    let by_mqtt = inputs(Transport::Mqtt, 0, mqtt_count);
    let by_ws = inputs(Transport::WebSocket, mqtt_count, ws_count);
    let by_kafka = inputs(Transport::Kafka, mqtt_count + ws_count, kafka_count);
    let (reasons, replies, ()) = tokio::join!(
        over_mqtt(&gaveurs, &by_mqtt),
        over_websocket(&gaveurs, &by_ws),
        over_kafka(&tansu, &gaveurs.admin, &by_kafka),
    );

    // MQTT 5: every PUBACK carries a failure reason code.
    assert_eq!(reasons.len(), mqtt_count);
    let accepted: Vec<_> = reasons.iter().filter(|r| **r < 0x80).collect();
    assert!(
        accepted.is_empty(),
        "{} bad inputs acknowledged as accepted over MQTT",
        accepted.len()
    );
    // WebSocket: an `error` reply each, with a reason and without the payload.
    for (reply, input) in replies.iter().zip(&by_ws) {
        assert_eq!(reply["type"], "error", "{} answered {reply}", input.kind);
        let message = reply["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{reply}");
        assert!(message.len() < 1000, "the reply echoes the input: {reply}");
    }

    let root = gaveurs.parquet_root();
    let dead_letters = || -> BTreeMap<String, u64> {
        duckdb(
            &root,
            "select _transport as transport, count(*) as n \
             from read_parquet('{root}/dlq/**/*.parquet') group by 1",
        )
        .into_iter()
        .map(|row| {
            let n = row["n"].as_u64().unwrap_or(0);
            (row["transport"].as_str().unwrap().to_string(), n)
        })
        .collect()
    };
    let counted = support::eventually(Duration::from_secs(120), "every dead letter", || {
        if !support::parquet_files(&root, "dlq").is_empty() {
            let counts = dead_letters();
            Some(counts).filter(|c| c.values().sum::<u64>() >= total as u64)
        } else {
            None
        }
    });
    let peak_mb = gaveurs_loadgen::memory::peak_rss_mb(gaveurs.pid().as_raw() as u32)
        .expect("the pipeline's peak RSS");
    let health = support::http_get(gaveurs.http, "/health/ready").await.0;
    gaveurs.stop_cleanly();

    assert_eq!(health, 200, "the pipeline is still up and ready");
    let expected: BTreeMap<String, u64> = [
        ("mqtt", mqtt_count),
        ("websocket", ws_count),
        ("kafka", kafka_count),
    ]
    .into_iter()
    .map(|(t, n)| (t.to_string(), n as u64))
    .collect();
    assert_eq!(counted, expected, "one dead letter per bad input");
    let no_reason = duckdb(
        &root,
        "select count(*) as n from read_parquet('{root}/dlq/**/*.parquet') \
         where reason_code = '' or reason = ''",
    );
    assert_eq!(no_reason[0]["n"], 0);
    for dataset in ["gavage_meals", "sqal_samples", "lot_outcomes"] {
        assert!(
            !root.join(dataset).exists() || support::read_rows(&root, dataset).is_empty(),
            "a bad input was stored in {dataset}"
        );
    }
    let reasons = duckdb(
        &root,
        "select reason_code, count(*) as n from read_parquet('{root}/dlq/**/*.parquet') \
         group by 1 order by 2 desc",
    );
    eprintln!("{total} bad inputs; dead letters by reason: {reasons:?}; peak RSS {peak_mb:.0} MB");
    assert!(
        peak_mb <= PEAK_RSS_LIMIT_MB,
        "peak RSS {peak_mb:.0} MB exceeds {PEAK_RSS_LIMIT_MB} MB"
    );
}
