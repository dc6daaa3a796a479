//! MQTT into the embedded listener → durable log → Parquet, read back by other readers.

mod support;

use gaveurs_loadgen::producer::MqttVersion;
use serde_json::{Value, json};
use support::{Gaveurs, duckdb, publish_each, read_rows, records};

fn msg(topic: &str, value: &Value, qos: u8) -> (String, Vec<u8>, u8) {
    (topic.to_string(), value.to_string().into_bytes(), qos)
}

#[tokio::test]
async fn v5_and_v311_records_reach_parquet_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let mqtt = gaveurs.mqtt();
    let full = records::full_meal();
    let v5 = publish_each(
        mqtt,
        MqttVersion::V5,
        &gaveurs.admin,
        &[
            msg("gaveurs/LL/1/gavage", &full, 1),
            msg(
                "sqal/LS/ESP32_LS_02/measurements",
                &records::sqal("ESP32_LS_02", "S-1", 0.86),
                1,
            ),
            msg(
                "gaveurs/LL/1/outcome",
                &records::outcome("LL2601001", 1, "LL"),
                2,
            ),
        ],
    )
    .await;
    assert_eq!(v5, vec![0, 0, 0]);
    let v311 = publish_each(
        mqtt,
        MqttVersion::V311,
        &gaveurs.admin,
        &[msg(
            "gaveurs/MT/7/gavage",
            &records::meal("MT2601007", 7, "MT", 1, "matin"),
            1,
        )],
    )
    .await;
    assert_eq!(v311, vec![0]);
    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();

    // DuckDB, a reader that shares no code with the writer.
    let meal = duckdb(
        &root,
        "SELECT code_lot, gaveur_id, gaveur_nom, site, genetique, jour, moment, dose_theorique, \
         dose_reelle, poids_moyen, nb_canards_vivants, taux_mortalite, temperature_stabule, \
         humidite_stabule, epoch_us(timestamp) AS ts, pret_abattage, _transport, _topic, _stream, _key \
         FROM read_parquet('{root}/gavage_meals/**/*.parquet', hive_partitioning = false) \
         WHERE code_lot = 'LL2601001'",
    );
    assert_eq!(meal.len(), 1);
    let row = &meal[0];
    for field in [
        "code_lot",
        "gaveur_id",
        "gaveur_nom",
        "site",
        "genetique",
        "jour",
        "moment",
        "dose_theorique",
        "dose_reelle",
        "poids_moyen",
        "nb_canards_vivants",
        "taux_mortalite",
        "temperature_stabule",
        "humidite_stabule",
        "pret_abattage",
    ] {
        assert_eq!(row[field], full[field], "field {field}");
    }
    // 18:05 Paris in January is 17:05 UTC.
    assert_eq!(row["ts"], json!(1_768_928_700_000_000i64));
    assert_eq!(row["_transport"], "mqtt");
    assert_eq!(row["_topic"], "gaveurs/LL/1/gavage");
    assert_eq!(row["_stream"], "gavage");
    assert_eq!(row["_key"], "LL2601001");
    let partitions = duckdb(
        &root,
        "SELECT DISTINCT filename FROM read_parquet('{root}/gavage_meals/**/*.parquet', filename = true)",
    );
    let names: Vec<String> = partitions
        .iter()
        .map(|r| r["filename"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.contains("gavage_meals/date=2026-01-20/site=LL/")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.contains("site=MT/")), "{names:?}");

    let sqal = duckdb(
        &root,
        "SELECT device_id, sample_id, site_code, final_score, grade, reported_grade, is_compliant, \
         poids_foie_estime_g, f1_415nm, nir, reflectance_matrix[1][1] AS reflectance, \
         len(distance_matrix) AS rows, distance_matrix[8][8] AS distance \
         FROM read_parquet('{root}/sqal_samples/**/*.parquet', hive_partitioning = false)",
    );
    assert_eq!(sqal.len(), 1);
    let mut sample = sqal[0].clone();
    let weight = sample["poids_foie_estime_g"].take().as_f64().unwrap();
    assert!((weight - 640.0 * 0.947).abs() < 1e-9, "{weight}");
    assert_eq!(
        sample,
        json!({"device_id": "ESP32_LS_02", "sample_id": "S-1", "site_code": "LS",
            "final_score": 0.86, "grade": "A+", "reported_grade": "B", "is_compliant": true,
            "poids_foie_estime_g": null, "f1_415nm": 101.0, "nir": 40.0,
            "reflectance": 255, "rows": 8, "distance": 120})
    );

    // And the arrow-rs reader agrees on the rest.
    let outcomes = read_rows(&root, "lot_outcomes");
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0]["nb_canards_accroches"], 985);
    assert_eq!(outcomes[0]["date_fin"], "2026-01-31");
    let meals = read_rows(&root, "gavage_meals");
    assert_eq!(meals.len(), 2);
    let v311_row = meals.iter().find(|r| r["code_lot"] == "MT2601007").unwrap();
    assert_eq!(v311_row["moment"], "matin");
    assert!(
        v311_row.get("poids_moyen").is_none(),
        "absent optional fields are null"
    );
}

#[tokio::test]
async fn every_bad_input_is_dead_lettered_with_its_reason_and_the_connection_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let mqtt = gaveurs.mqtt();
    let mut oversize = records::meal("LL1", 1, "LL", 1, "matin");
    oversize["padding"] = json!("x".repeat(1_100_000));
    let mismatched = records::meal("LL1", 2, "LL", 1, "matin");
    let valid = records::meal("LL1", 1, "LL", 1, "matin");
    let mut empty_lot = valid.clone();
    empty_lot["code_lot"] = json!("");
    let v5 = publish_each(
        mqtt,
        MqttVersion::V5,
        &gaveurs.admin,
        &[
            ("gaveurs/LL/1/gavage".into(), b"{not json".to_vec(), 1),
            msg("gaveurs/LL/1/gavage", &empty_lot, 1),
            msg("gaveurs/LL/1/gavage", &oversize, 1),
            msg("elsewhere/LL/1/gavage", &valid, 1),
            msg("gaveurs/LL/1/gavage", &mismatched, 1),
            // The same connection still takes good records.
            msg("gaveurs/LL/1/gavage", &valid, 1),
        ],
    )
    .await;
    assert_eq!(v5, vec![0x99, 0x99, 0x97, 0x90, 0x99, 0x00]);
    // MQTT 3.1.1 cannot say "refused": a plain PUBACK, the refusal is in the DLQ.
    let v311 = publish_each(
        mqtt,
        MqttVersion::V311,
        &gaveurs.admin,
        &[("gaveurs/LL/1/gavage".into(), b"[1,2".to_vec(), 1)],
    )
    .await;
    assert_eq!(v311, vec![0]);
    // The listener is still up for new connections.
    let again = publish_each(
        mqtt,
        MqttVersion::V5,
        &gaveurs.admin,
        &[msg(
            "gaveurs/LL/1/gavage",
            &records::meal("LL1", 1, "LL", 2, "matin"),
            1,
        )],
    )
    .await;
    assert_eq!(again, vec![0]);
    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();

    let mut dlq = read_rows(&root, "dlq");
    dlq.sort_by_key(|r| r["received_at"].as_str().unwrap().to_string());
    let reasons: Vec<(&str, &str)> = dlq
        .iter()
        .map(|r| {
            (
                r["reason_code"].as_str().unwrap(),
                r["stage"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("not_json", "decode"),
            ("schema_invalid", "validate"),
            ("oversize", "intake"),
            ("unknown_topic", "route"),
            ("topic_mismatch", "route"),
            ("not_json", "decode"),
        ]
    );
    let schema_invalid = &dlq[1];
    assert!(
        schema_invalid["reason"]
            .as_str()
            .unwrap()
            .starts_with("code_lot: must not be empty"),
        "{schema_invalid:?}"
    );
    let oversize_row = &dlq[2];
    assert_eq!(
        oversize_row["raw_len"].as_i64().unwrap() as usize,
        oversize.to_string().len()
    );
    assert_eq!(oversize_row["raw_truncated"], true);
    let raw_hex = oversize_row["raw"].as_str().unwrap();
    assert_eq!(
        raw_hex.len(),
        2 * 64 * 1024,
        "raw bytes are kept up to 64 KiB"
    );
    assert_eq!(oversize_row["_transport"], "mqtt");
    assert_eq!(oversize_row["_topic"], "gaveurs/LL/1/gavage");
    assert!(oversize_row["_packet_id"].as_i64().is_some());
    assert_eq!(read_rows(&root, "gavage_meals").len(), 2);
}

#[tokio::test]
async fn event_times_in_the_future_or_before_2000_are_refused_and_old_ones_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let dated = |code_lot: &str, timestamp: &str| {
        let mut meal = records::meal(code_lot, 1, "LL", 3, "matin");
        meal["timestamp"] = json!(timestamp);
        meal
    };
    let codes = publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &[
            msg(
                "gaveurs/LL/1/gavage",
                &dated("LL9999001", "9999-01-01T00:00:00Z"),
                1,
            ),
            msg(
                "gaveurs/LL/1/gavage",
                &dated("LL1999001", "1999-12-31T23:59:59Z"),
                1,
            ),
            // A replay of 2023: any age in the past is accepted.
            msg(
                "gaveurs/LL/1/gavage",
                &dated("LL2301001", "2023-03-14T07:00:00"),
                1,
            ),
        ],
    )
    .await;
    assert!(codes[0] >= 0x80 && codes[1] >= 0x80, "{codes:?}");
    assert_eq!(codes, vec![0x99, 0x99, 0x00]);
    // The V3 WebSocket ingest goes through the same validation.
    let mut station = support::ws_connect(gaveurs.http, "/ws/gavage", &gaveurs.admin).await;
    assert_eq!(
        support::next_json(&mut station).await["type"],
        "connection_established"
    );
    support::send_json(&mut station, &dated("LL9999002", "9999-01-01T00:00:00Z")).await;
    let error = support::next_json(&mut station).await;
    assert_eq!(error["type"], "error", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("timestamp 9999-01-01T00:00:00Z is more than 300 s after"),
        "{error}"
    );
    drop(station);

    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();
    let mut dlq = read_rows(&root, "dlq");
    dlq.sort_by_key(|r| r["received_at"].as_str().unwrap().to_string());
    let refused: Vec<(&str, &str, &str)> = dlq
        .iter()
        .map(|r| {
            (
                r["reason_code"].as_str().unwrap(),
                r["stage"].as_str().unwrap(),
                r["_transport"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        vec![
            ("timestamp_in_future", "validate", "mqtt"),
            ("timestamp_out_of_range", "validate", "mqtt"),
            ("timestamp_in_future", "validate", "websocket"),
        ]
    );
    let reason = dlq[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("9999-01-01T00:00:00Z") && reason.contains("300 s"),
        "{reason}"
    );
    let stored: Vec<Value> = read_rows(&root, "gavage_meals")
        .into_iter()
        .map(|r| r["code_lot"].clone())
        .collect();
    assert_eq!(stored, [json!("LL2301001")]);
}

#[tokio::test]
async fn a_duplicate_is_stored_once_even_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let meal = records::meal("LL9", 1, "LL", 3, "soir");
    let mut corrected = meal.clone();
    corrected["dose_reelle"] = json!(1.0);
    let gaveurs = Gaveurs::start(dir.path(), "");
    let codes = publish_each(
        gaveurs.mqtt(),
        MqttVersion::V5,
        &gaveurs.admin,
        &[
            msg("gaveurs/LL/1/gavage", &meal, 1),
            msg("gaveurs/LL/1/gavage", &corrected, 1),
        ],
    )
    .await;
    assert_eq!(
        codes,
        vec![0, 0],
        "a duplicate is acknowledged: it is stored"
    );
    gaveurs.stop_cleanly();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let codes = publish_each(
        gaveurs.mqtt(),
        MqttVersion::V311,
        &gaveurs.admin,
        &[msg("gaveurs/LL/1/gavage", &meal, 1)],
    )
    .await;
    assert_eq!(codes, vec![0]);
    let root = gaveurs.parquet_root();
    gaveurs.stop_cleanly();
    let rows = read_rows(&root, "gavage_meals");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0]["dose_reelle"], meal["dose_reelle"],
        "the first copy wins"
    );
}

#[tokio::test]
async fn subscriptions_are_refused_and_pings_answered() {
    use gaveurs_loadgen::producer::{ServerPacket, connect};
    let dir = tempfile::tempdir().unwrap();
    let gaveurs = Gaveurs::start(dir.path(), "");
    let (mut writer, mut reader) = connect(
        gaveurs.mqtt(),
        MqttVersion::V311,
        "sub",
        Some(&gaveurs.admin),
    )
    .await
    .unwrap();
    // SUBSCRIBE pkid 9 to "a/b" at QoS 1, then PINGREQ.
    let mut raw = vec![0x82, 8, 0, 9, 0, 3, b'a', b'/', b'b', 1];
    raw.extend_from_slice(&[0xC0, 0]);
    writer_raw(&mut writer, &raw).await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(reader.next().await.unwrap());
    }
    // SUBACK for pkid 9 with the 3.1.1 failure code, then PINGRESP.
    assert_eq!(
        seen,
        vec![
            ServerPacket::Other {
                kind: 9,
                body: vec![0, 9, 0x80]
            },
            ServerPacket::Other {
                kind: 13,
                body: vec![]
            },
        ]
    );
    gaveurs.stop_cleanly();
}

async fn writer_raw(writer: &mut gaveurs_loadgen::producer::ProducerWriter, bytes: &[u8]) {
    writer.raw(bytes);
    writer.flush().await.unwrap();
}
