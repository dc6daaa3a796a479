use arrow::array::Array;
use chrono::{TimeZone, Utc};
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::dead_letter::{DeadLetter, RejectReason, Rejection};
use crate::envelope::{Envelope, Principal, Provenance, Transport};
use crate::records::{GavageMeal, LotOutcome, SqalSample};
use crate::time::SiteTimeZones;

fn envelope(record: &Record) -> Envelope {
    Envelope {
        event_id: Uuid::now_v7(),
        stream: record.stream(),
        key: record.partition_key().to_string(),
        event_time: record.event_time(),
        ingest_time: Utc.with_ymd_and_hms(2026, 1, 20, 8, 0, 1).unwrap(),
        provenance: Provenance {
            transport: Transport::Kafka,
            topic: Some("t".into()),
            partition: Some(3),
            offset: Some(42),
            packet_id: Some(7),
            source: Some("127.0.0.1:5000".into()),
        },
        principal: Some(Principal {
            sub: "u-1".into(),
            username: Some("jean".into()),
            roles: vec!["gaveur".into(), "gateway".into()],
            client_roles: Default::default(),
            gaveur_id: Some(1),
            site_id: Some("LL".into()),
            organization: Some("euralis".into()),
        }),
        backfill: true,
    }
}

fn event(record: Record) -> Event {
    Event {
        envelope: envelope(&record),
        record,
    }
}

fn full_meal() -> Record {
    Record::Gavage(
        GavageMeal::decode(
            json!({"code_lot": "LL2601001", "gaveur_id": 1, "gaveur_nom": "Jean", "site": "LL",
                   "genetique": "Mulard", "jour": 3, "moment": "soir", "dose_theorique": 300,
                   "dose_reelle": 290.5, "poids_moyen": 5400, "nb_canards_vivants": 998,
                   "taux_mortalite": 0.2, "temperature_stabule": 21.5, "humidite_stabule": 60,
                   "timestamp": "2026-01-20T18:00:00", "pret_abattage": true})
            .to_string()
            .as_bytes(),
            &SiteTimeZones::default(),
        )
        .unwrap(),
    )
}

fn full_sample() -> Record {
    let m = |v: i32| json!(vec![vec![v; 8]; 8]);
    Record::Sqal(Box::new(
        SqalSample::decode(
            json!({"type": "sensor_data", "device_id": "ESP32_LS_02", "sample_id": "S1",
                   "timestamp": "2026-01-20T10:00:00Z", "location": "ligne 2", "code_lot": "LS1",
                   "vl53l8ch": {"distance_matrix": m(100), "reflectance_matrix": m(20),
                       "amplitude_matrix": m(300), "ambient_matrix": m(4), "status_matrix": m(5),
                       "volume_mm3": 650000.0, "surface_uniformity": 0.9, "quality_score": 0.8,
                       "grade": "A", "avg_distance_mm": 100.0, "std_distance_mm": 2.0,
                       "defects": [{"kind": "spot"}]},
                   "as7341": {"channels": {"F1_415nm": 1.0, "F2_445nm": 2.0, "F3_480nm": 3.0,
                       "F4_515nm": 4.0, "F5_555nm": 5.0, "F6_590nm": 6.0, "F7_630nm": 7.0,
                       "F8_680nm": 8.0, "Clear": 9.0, "NIR": 10.0},
                       "freshness_index": 0.9, "fat_quality_index": 0.8, "oxidation_index": 0.1,
                       "quality_score": 0.85},
                   "fusion": {"final_score": 0.86, "final_grade": "A+", "is_compliant": true,
                       "tof_score": 0.8, "spectral_score": 0.9},
                   "meta": {"firmware": "1.2"}})
            .to_string()
            .as_bytes(),
        )
        .unwrap(),
    ))
}

fn full_outcome() -> Record {
    Record::LotOutcome(
        LotOutcome::decode(
            json!({"code_lot": "LL2601001", "gaveur_id": 1, "site": "LL",
                   "nb_canards_mis_en_gavage": 1000, "nb_canards_accroches": 990,
                   "poids_foie_moyen_g": 560.0, "date_fin": "2026-01-31"})
            .to_string()
            .as_bytes(),
            &SiteTimeZones::default(),
        )
        .unwrap(),
    )
}

fn assert_every_column_filled(batch: &RecordBatch) {
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        assert_eq!(
            column.null_count(),
            0,
            "column {} was left empty",
            field.name()
        );
    }
}

#[test]
fn every_column_is_filled() {
    for (dataset, record) in [
        (Dataset::GavageMeals, full_meal()),
        (Dataset::SqalSamples, full_sample()),
        (Dataset::LotOutcomes, full_outcome()),
    ] {
        let event = event(record);
        let batch = events_to_batch(dataset, &[&event]).unwrap();
        assert_eq!(batch.num_rows(), 1);
        assert_every_column_filled(&batch);
    }
    let dead = DeadLetter {
        principal_sub: Some("u-1".into()),
        ..DeadLetter::new(
            &Rejection::new(RejectReason::NotJson, "expected value at line 1 column 1"),
            b"not json \x00\xff",
            Some(crate::envelope::StreamKind::Gavage),
            Some("LL".into()),
            envelope(&full_meal()).provenance,
            Utc::now(),
        )
    };
    let batch = dead_letters_to_batch(&[&dead]).unwrap();
    assert_every_column_filled(&batch);
    let raw = batch
        .column_by_name("raw")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::BinaryArray>()
        .unwrap();
    assert_eq!(raw.value(0), b"not json \x00\xff");
}

#[test]
fn matrices_keep_their_shape() {
    let event = event(full_sample());
    let batch = events_to_batch(Dataset::SqalSamples, &[&event]).unwrap();
    let column = batch.column_by_name("distance_matrix").unwrap();
    let rows = column
        .as_any()
        .downcast_ref::<arrow::array::ListArray>()
        .unwrap()
        .value(0);
    assert_eq!(rows.len(), 8);
}

#[test]
fn a_record_in_the_wrong_dataset_is_an_error() {
    let event = event(full_meal());
    assert!(events_to_batch(Dataset::SqalSamples, &[&event]).is_err());
}

/// Each row of `batch` as JSON (arrow's writer; nulls left out).
fn rows_as_json(batch: &RecordBatch) -> Vec<serde_json::Value> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    writer.write(batch).unwrap();
    writer.finish().unwrap();
    serde_json::from_slice(&writer.into_inner()).unwrap()
}

#[test]
fn a_meal_fills_each_column_with_its_own_value() {
    let mut full = event(full_meal());
    full.envelope.event_id = Uuid::parse_str("0192f0c4-5d1e-7a3b-9c2d-4e5f60718293").unwrap();
    let mut sparse = event(
        GavageMeal::decode(
            json!({"code_lot": "LS2601002", "gaveur_id": 2, "site": "LS", "jour": 1,
                   "moment": "matin", "dose_theorique": 200, "dose_reelle": 180,
                   "timestamp": "2026-01-21T06:30:00.250Z"})
            .to_string()
            .as_bytes(),
            &SiteTimeZones::default(),
        )
        .map(Record::Gavage)
        .unwrap(),
    );
    sparse.envelope.event_id = Uuid::parse_str("0192f0c4-5d1e-7a3b-9c2d-000000000001").unwrap();
    sparse.envelope.principal = None;
    sparse.envelope.backfill = false;
    sparse.envelope.provenance = Provenance {
        transport: Transport::Mqtt,
        topic: None,
        partition: None,
        offset: None,
        packet_id: None,
        source: None,
    };
    let batch = events_to_batch(Dataset::GavageMeals, &[&full, &sparse]).unwrap();
    assert_eq!(batch.schema(), Dataset::GavageMeals.schema());
    let rows = rows_as_json(&batch);
    assert_eq!(
        rows[0],
        json!({"code_lot": "LL2601001", "gaveur_id": 1, "gaveur_nom": "Jean", "site": "LL",
               "genetique": "Mulard", "jour": 3, "moment": "soir", "dose_theorique": 300.0,
               "dose_reelle": 290.5, "poids_moyen": 5400.0, "nb_canards_vivants": 998,
               "taux_mortalite": 0.2, "temperature_stabule": 21.5, "humidite_stabule": 60.0,
               "timestamp": "2026-01-20T17:00:00Z", "pret_abattage": true,
               "_event_id": "0192f0c4-5d1e-7a3b-9c2d-4e5f60718293", "_stream": "gavage",
               "_key": "LL2601001", "_event_time": "2026-01-20T17:00:00Z",
               "_ingest_time": "2026-01-20T08:00:01Z", "_backfill": true,
               "_principal_sub": "u-1", "_principal_gaveur_id": 1,
               "_principal_site_id": "LL", "_principal_roles": "gaveur,gateway",
               "_transport": "kafka", "_topic": "t", "_partition": 3, "_offset": 42,
               "_packet_id": 7, "_source": "127.0.0.1:5000"})
    );
    assert_eq!(
        rows[1],
        json!({"code_lot": "LS2601002", "gaveur_id": 2, "site": "LS", "jour": 1,
               "moment": "matin", "dose_theorique": 200.0, "dose_reelle": 180.0,
               "timestamp": "2026-01-21T06:30:00.250Z", "pret_abattage": false,
               "_event_id": "0192f0c4-5d1e-7a3b-9c2d-000000000001", "_stream": "gavage",
               "_key": "LS2601002", "_event_time": "2026-01-21T06:30:00.250Z",
               "_ingest_time": "2026-01-20T08:00:01Z", "_backfill": false,
               "_transport": "mqtt"})
    );
}

#[test]
fn an_anomaly_row_fills_every_column_and_keeps_its_explanation() {
    use crate::anomaly::{Anomaly, Contribution};
    let meal = full_meal();
    let anomaly = Anomaly {
        model: "gavage_meal".into(),
        model_version: "2026-12-07.1".into(),
        code_lot: Some("LL2601001".into()),
        jour: Some(3),
        moment: Some(crate::records::Moment::Soir),
        device_id: Some("ESP32_LL_01".into()),
        sample_id: Some("S-1".into()),
        gaveur_id: Some(6),
        site: "LL".into(),
        score: 7.5,
        threshold: 4.0,
        explanation: vec![
            Contribution {
                feature: "dose_theorique".into(),
                value: 250.0,
                expected: 310.0,
                contribution: 6.0,
            },
            Contribution {
                feature: "dose_reelle".into(),
                value: 251.0,
                expected: 249.0,
                contribution: 0.5,
            },
        ],
        envelope: envelope(&meal),
    };
    let batch = anomalies::to_batch(&[&anomaly]).unwrap();
    assert_eq!(batch.num_rows(), 1);
    assert_every_column_filled(&batch);
    let row = &rows_as_json(&batch)[0];
    assert_eq!(row["explanation"][0]["feature"], "dose_theorique");
    assert_eq!(row["explanation"][0]["expected"], 310.0);
    assert_eq!(row["explanation"][1]["contribution"], 0.5);
    assert_eq!(row["moment"], "soir");
    assert_eq!(
        anomalies::partition(&anomaly).path(),
        format!("date={}/site=LL", anomaly.envelope.event_time.date_naive())
    );
}
