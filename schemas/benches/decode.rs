//! Decode + validate cost of one record: a gavage meal, and a large SQAL message with the
//! raw histogram block stations send (which the pipeline skips).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gaveurs_schemas::records::{GavageMeal, SqalSample};
use gaveurs_schemas::time::SiteTimeZones;
use serde_json::json;

fn gavage_meal() -> Vec<u8> {
    json!({"code_lot": "LL2601001", "gaveur_id": 1, "gaveur_nom": "Jean Martin", "site": "LL",
           "genetique": "Mulard", "jour": 7, "moment": "soir", "dose_theorique": 380.0,
           "dose_reelle": 371.5, "poids_moyen": 5820.0, "nb_canards_vivants": 996,
           "taux_mortalite": 0.4, "temperature_stabule": 21.3, "humidite_stabule": 63.0,
           "timestamp": "2026-01-20T18:05:00", "pret_abattage": false})
    .to_string()
    .into_bytes()
}

fn large_sqal() -> Vec<u8> {
    let m = |v: f64| json!(vec![vec![v; 8]; 8]);
    json!({"type": "sensor_data", "device_id": "ESP32_LL_01", "sample_id": "S-000123",
           "timestamp": "2026-01-20T10:00:00Z",
           "vl53l8ch": {"distance_matrix": m(123.4), "reflectance_matrix": m(41.2),
               "amplitude_matrix": m(812.0), "ambient_matrix": m(7.0), "status_matrix": m(5.0),
               "volume_mm3": 640000.0, "quality_score": 0.81},
           "vl53l8ch_raw": {"bins_matrix": vec![vec![vec![1234; 128]; 8]; 8]},
           "as7341": {"channels": {"F1_415nm": 101.0, "NIR": 40.0}, "freshness_index": 0.8},
           "fusion": {"final_score": 0.82}})
    .to_string()
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let zones = SiteTimeZones::default();
    let meal = gavage_meal();
    let mut group = c.benchmark_group("decode_validate");
    group.throughput(Throughput::Elements(1));
    group.bench_function("gavage_meal", |b| {
        b.iter(|| GavageMeal::decode(std::hint::black_box(&meal), &zones).unwrap())
    });
    let sqal = large_sqal();
    group.throughput(Throughput::Bytes(sqal.len() as u64));
    group.bench_function(format!("sqal_{}kB", sqal.len() / 1024), |b| {
        b.iter(|| SqalSample::decode(std::hint::black_box(&sqal)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
