//! Anomaly scoring: meals/s through the built-in meal model and SQAL samples/s through the
//! built-in SQAL model (one core), and how long an artifact takes to read and check (what a
//! swap costs).
//!
//! 400 lots of 22 meals each, fed in turn, so every lot's track is warm and the lots' tracks
//! do not all sit in one cache line; each meal carries weight, mortality and climate, so the
//! conditions are scored too.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gaveurs_operators::anomalies::conditions::Conditions;
use gaveurs_operators::anomalies::meal_model::{LotTrack, MealFacts};
use gaveurs_operators::anomalies::sqal_model::{DeviceTrack, SqalModel};
use gaveurs_operators::anomalies::{
    DEFAULT_MEAL_MODEL, DEFAULT_SQAL_MODEL, parse_artifact, parse_meal_model,
};
use gaveurs_schemas::records::{Moment, SqalSample};

const LOTS: usize = 400;
const MEALS: usize = 22;

fn scoring(c: &mut Criterion) {
    let model = parse_meal_model(DEFAULT_MEAL_MODEL.as_bytes()).unwrap();
    let sites = ["LL", "LS", "MT"];
    // By step, then lot: the order they are fed in.
    let steps: Vec<Vec<MealFacts<'static>>> = (0..MEALS)
        .map(|i| {
            (0..LOTS)
                .map(|lot| {
                    let planned = 210.0 + 20.0 * i.min(13) as f64 + (lot % 7) as f64;
                    MealFacts {
                        site: sites[lot % 3],
                        genetique: Some("CF80* - M15 V2E SFM"),
                        month: 1 + (lot % 12) as u32,
                        jour: (i / 2 + 1) as i64,
                        moment: if i % 2 == 0 {
                            Moment::Matin
                        } else {
                            Moment::Soir
                        },
                        dose_theorique: planned,
                        dose_reelle: planned * (1.0 + 0.01 * ((lot + i) % 5) as f64 - 0.02),
                        // Weighed every meal, the barn and mortality steady.
                        conditions: Conditions {
                            poids_moyen: Some(4500.0 + 75.0 * (i / 2) as f64),
                            taux_mortalite: Some(0.2),
                            temperature_stabule: Some(21.5),
                            humidite_stabule: Some(62.0),
                        },
                    }
                })
                .collect()
        })
        .collect();
    let mut group = c.benchmark_group("anomalies");
    group.throughput(Throughput::Elements((LOTS * MEALS) as u64));
    group.bench_function("score_meals", |b| {
        b.iter(|| {
            let mut tracks = vec![LotTrack::default(); LOTS];
            let mut above = 0usize;
            for step in &steps {
                for (track, meal) in tracks.iter_mut().zip(step) {
                    if let Some(score) = model.score(track, meal)
                        && score.score >= model.threshold
                    {
                        above += 1;
                    }
                }
            }
            black_box(above)
        })
    });
    group.finish();
    c.bench_function("anomalies/load_artifact", |b| {
        b.iter(|| black_box(parse_meal_model(black_box(DEFAULT_MEAL_MODEL.as_bytes())).unwrap()))
    });
}

/// 64 samples of one station, each with its own wobble: the features are computed from the
/// matrices and channels on every call, as the desk does.
fn sqal_scoring(c: &mut Criterion) {
    let model: SqalModel = parse_artifact(DEFAULT_SQAL_MODEL.as_bytes()).unwrap();
    let samples: Vec<SqalSample> = (0..64)
        .map(|n| {
            let wobble = |r: usize, k: usize| ((n * 31 + r * 7 + k * 3) % 17) as f64 - 8.0;
            let matrix = |centre: f64| -> Vec<Vec<f64>> {
                (0..8)
                    .map(|r| (0..8).map(|k| centre + wobble(r, k)).collect())
                    .collect()
            };
            let body = serde_json::json!({
                "type": "sensor_data", "device_id": "ESP32_LL_01", "sample_id": n.to_string(),
                "timestamp": "2026-01-20T10:00:00Z",
                "vl53l8ch": {"distance_matrix": matrix(115.0), "reflectance_matrix": matrix(45.0),
                    "amplitude_matrix": matrix(800.0), "ambient_matrix": matrix(6.0),
                    "status_matrix": vec![vec![5; 8]; 8]},
                "as7341": {"channels": {"F1_415nm": 120.0, "F2_445nm": 340.0, "F3_480nm": 560.0,
                    "F4_515nm": 780.0, "F5_555nm": 1020.0, "F6_590nm": 1250.0, "F7_630nm": 1480.0,
                    "F8_680nm": 990.0, "Clear": 4100.0, "NIR": 640.0 + n as f64}},
                "fusion": {"final_score": 0.8, "tof_score": 0.8, "spectral_score": 0.78}
            });
            SqalSample::decode(&serde_json::to_vec(&body).unwrap()).unwrap()
        })
        .collect();
    let mut group = c.benchmark_group("anomalies");
    group.throughput(Throughput::Elements(samples.len() as u64));
    group.bench_function("score_sqal_samples", |b| {
        b.iter(|| {
            let mut track = DeviceTrack::default();
            let mut above = 0usize;
            for sample in &samples {
                above += usize::from(model.score(&mut track, sample).score >= model.threshold);
            }
            black_box(above)
        })
    });
    group.finish();
    c.bench_function("anomalies/load_sqal_artifact", |b| {
        b.iter(|| {
            black_box(
                parse_artifact::<SqalModel>(black_box(DEFAULT_SQAL_MODEL.as_bytes())).unwrap(),
            )
        })
    });
}

criterion_group!(benches, scoring, sqal_scoring);
criterion_main!(benches);
