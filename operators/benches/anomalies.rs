//! Anomaly scoring: meals/s through the built-in meal model (one core), and how long an
//! artifact takes to read and check (what a swap costs).
//!
//! 400 lots of 22 meals each, fed in turn, so every lot's track is warm and the lots' tracks
//! do not all sit in one cache line.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gaveurs_operators::anomalies::meal_model::{LotTrack, MealFacts};
use gaveurs_operators::anomalies::{DEFAULT_MEAL_MODEL, parse_meal_model};
use gaveurs_schemas::records::Moment;

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

criterion_group!(benches, scoring);
criterion_main!(benches);
