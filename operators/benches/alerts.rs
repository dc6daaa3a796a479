//! Rule evaluation: records/s through the alert book with every default rule.
//!
//! 400 lots each get their next meal (every optional field set, so every gavage rule runs;
//! one lot in ten is in a critical condition, so alerts open and update), and 4 stations
//! send SQAL samples whose scores sweep 0–1 (every SQAL rule runs, some open). The book is
//! warm: it already evaluated ten meals of every lot.

use std::hint::black_box;

use chrono::{Duration, TimeZone, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gaveurs_operators::alerts::AlertBook;
use gaveurs_operators::alerts::rules::RuleSet;
use gaveurs_schemas::alert::Severity;
use gaveurs_schemas::envelope::{Envelope, Provenance, Transport};
use gaveurs_schemas::event::Event;
use gaveurs_schemas::records::Record;

const LOTS: usize = 400;

fn event(record: Record) -> Event {
    Event {
        envelope: Envelope {
            event_id: uuid::Uuid::nil(),
            stream: record.stream(),
            key: record.partition_key().to_string(),
            event_time: record.event_time(),
            ingest_time: record.event_time(),
            provenance: Provenance::new(Transport::Mqtt),
            principal: None,
            backfill: false,
        },
        record,
    }
}

fn meal(lot: usize, n: usize) -> Event {
    let sites = ["LL", "LS", "MT"];
    let start = Utc.with_ymd_and_hms(2026, 1, 5, 6, 0, 0).unwrap();
    let time = start + Duration::hours(12 * n as i64) + Duration::seconds(lot as i64);
    let refusing = lot.is_multiple_of(10);
    event(
        serde_json::from_value(serde_json::json!({
            "record_type": "gavage",
            "code_lot": format!("{}26{:05}", sites[lot % 3], lot),
            "gaveur_id": (lot % 100) as i64,
            "site": sites[lot % 3],
            "jour": (n / 2 + 1) as i64,
            "moment": if n.is_multiple_of(2) { "matin" } else { "soir" },
            "dose_theorique": 200.0 + n as f64 * 10.0,
            "dose_reelle": if refusing { 100.0 } else { 195.0 + n as f64 * 10.0 },
            "poids_moyen": 4500.0 + n as f64 * 50.0,
            "taux_mortalite": 0.1 * n as f64,
            "temperature_stabule": 21.0 + (lot % 7) as f64,
            "humidite_stabule": 65.0,
            "timestamp": time,
        }))
        .unwrap(),
    )
}

fn sample(n: usize) -> Event {
    let zeros = vec![vec![0; 8]; 8];
    event(
        serde_json::from_value(serde_json::json!({
            "record_type": "sqal",
            "device_id": format!("ESP32_LL_{:02}", n % 4),
            "sample_id": format!("S{n}"),
            "timestamp": Utc.with_ymd_and_hms(2026, 1, 10, 9, 0, 0).unwrap() + Duration::seconds(n as i64),
            "site_code": "LL",
            "final_score": (n % 100) as f64 / 100.0,
            "grade": "B",
            "is_compliant": true,
            "oxidation_index": (n % 10) as f64 / 10.0,
            "freshness_index": (n % 7) as f64 / 7.0,
            "distance_matrix": zeros, "reflectance_matrix": zeros, "amplitude_matrix": zeros,
            "ambient_matrix": zeros, "status_matrix": zeros, "channels": {},
        }))
        .unwrap(),
    )
}

fn bench(c: &mut Criterion) {
    let rules = RuleSet::default();
    let now = Utc::now();
    let mut warm = AlertBook::new();
    for n in 0..10 {
        for lot in 0..LOTS {
            warm.evaluate(&rules, &meal(lot, n), Severity::Critical, now);
        }
    }
    let mut records: Vec<Event> = (10..20)
        .flat_map(|n| (0..LOTS).map(move |lot| meal(lot, n)))
        .collect();
    records.extend((0..1000).map(sample));
    let mut group = c.benchmark_group("alert_rules");
    group.sample_size(20);
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("evaluate_5000_records", |b| {
        b.iter_batched(
            || warm.clone(),
            |mut book| {
                let mut transitions = 0;
                for record in &records {
                    transitions += book.evaluate(&rules, record, Severity::Critical, now).len();
                }
                black_box(transitions)
            },
            criterion::BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
