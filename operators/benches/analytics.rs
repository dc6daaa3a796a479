//! The analytics operator: records/s through a micro-batch step with every shipped KPI, and
//! how long one step takes (the latency a micro-batch adds beyond its batch interval).
//!
//! The state is warm: 400 lots (4 sites × 100 gaveurs) already hold ten days of meals, and
//! each step brings the next meal of every lot plus SQAL samples, the way a busy cooperative's
//! traffic looks, in batches of 400, 2000 and 8192 records.

use std::hint::black_box;

use chrono::{Duration, TimeZone, Utc};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gaveurs_operators::analytics::{AnalyticsSettings, Engine};
use gaveurs_schemas::records::Record;

const LOTS: usize = 400;

fn meal(lot: usize, n: usize) -> Record {
    let sites = ["LL", "LS", "MT"];
    let start = Utc.with_ymd_and_hms(2026, 1, 5, 6, 0, 0).unwrap();
    let time = start + Duration::hours(12 * n as i64) + Duration::seconds(lot as i64);
    serde_json::from_value(serde_json::json!({
        "record_type": "gavage",
        "code_lot": format!("{}26{:05}", sites[lot % 3], lot),
        "gaveur_id": (lot % 100) as i64,
        "site": sites[lot % 3],
        "jour": (n / 2 + 1) as i64,
        "moment": if n.is_multiple_of(2) { "matin" } else { "soir" },
        "dose_theorique": 200.0 + n as f64 * 10.0,
        "dose_reelle": 195.0 + n as f64 * 10.0,
        "poids_moyen": 4500.0 + n as f64 * 50.0,
        "taux_mortalite": 0.1 * n as f64,
        "temperature_stabule": 21.0,
        "humidite_stabule": 65.0,
        "timestamp": time,
    }))
    .unwrap()
}

fn sample(n: usize) -> Record {
    let zeros = vec![vec![0; 8]; 8];
    serde_json::from_value(serde_json::json!({
        "record_type": "sqal",
        "device_id": format!("ESP32_LL_{:02}", n % 4),
        "sample_id": format!("S{n}"),
        "timestamp": Utc.with_ymd_and_hms(2026, 1, 10, 9, 0, 0).unwrap() + Duration::seconds(n as i64),
        "site_code": "LL",
        "final_score": (n % 100) as f64 / 100.0,
        "grade": "B",
        "is_compliant": true,
        "poids_foie_estime_g": 550.0,
        "distance_matrix": zeros, "reflectance_matrix": zeros, "amplitude_matrix": zeros,
        "ambient_matrix": zeros, "status_matrix": zeros,
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("analytics_step");
    group.sample_size(20);
    let history: Vec<Record> = (0..20)
        .flat_map(|n| (0..LOTS).map(move |lot| meal(lot, n)))
        .collect();
    for batch in [400usize, 2000, 8192] {
        // The next meal times of every lot, then SQAL samples up to the batch size.
        let meal_times = (batch / LOTS).max(1);
        let mut records: Vec<Record> = (20..20 + meal_times)
            .flat_map(|n| (0..LOTS).map(move |lot| meal(lot, n)))
            .take(batch)
            .collect();
        let mut n = 0;
        while records.len() < batch {
            records.push(sample(n));
            n += 1;
        }
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(batch),
            &records,
            |b, records| {
                b.iter_batched(
                    || {
                        let mut engine = Engine::new(AnalyticsSettings::default());
                        engine.restore(history.iter());
                        engine
                    },
                    |mut engine| {
                        let refs: Vec<&Record> = records.iter().collect();
                        black_box(runtime.block_on(engine.step(&refs)).unwrap());
                    },
                    criterion::BatchSize::LargeInput,
                );
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
