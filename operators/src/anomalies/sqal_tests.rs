use gaveurs_schemas::records::SqalSample;
use serde_json::json;

use super::sqal_evaluation::{SqalInjected, inject};
use super::sqal_model::{DeviceTrack, FEATURES, SqalModel, Stations, features, train};
use super::{DEFAULT_SQAL_MODEL, parse_artifact};

/// Pseudo-random numbers in [0, 1) from a fixed seed.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    fn around(&mut self, centre: f64, spread: f64) -> f64 {
        centre + spread * (2.0 * self.next() - 1.0)
    }
}

/// A station's measurement shaped as the simulator's: noisy matrices around a liver's
/// distance, ten channels within ±10 % of their levels.
fn sample(noise: &mut Noise, device_id: &str, n: usize) -> SqalSample {
    let quality = noise.around(0.75, 0.2);
    let distance = noise.around(115.0, 25.0);
    let mut matrix = |centre: f64, spread: f64| -> Vec<Vec<f64>> {
        (0..8)
            .map(|_| {
                (0..8)
                    .map(|_| noise.around(centre, spread).round())
                    .collect()
            })
            .collect()
    };
    let (d, r, a, amb) = (
        matrix(distance, 8.0),
        matrix(45.0, 10.0),
        matrix(800.0, 120.0),
        matrix(6.0, 3.0),
    );
    let mut channel = |level: f64| level * noise.around(1.0, 0.1);
    let body = json!({
        "type": "sensor_data", "device_id": device_id, "sample_id": format!("{n}"),
        "timestamp": "2026-01-20T10:00:00Z",
        "vl53l8ch": {"distance_matrix": d, "reflectance_matrix": r, "amplitude_matrix": a,
                     "ambient_matrix": amb, "status_matrix": vec![vec![5; 8]; 8]},
        "as7341": {"channels": {
            "F1_415nm": channel(120.0), "F2_445nm": channel(340.0), "F3_480nm": channel(560.0),
            "F4_515nm": channel(780.0), "F5_555nm": channel(1020.0), "F6_590nm": channel(1250.0),
            "F7_630nm": channel(1480.0), "F8_680nm": channel(990.0), "Clear": channel(4100.0),
            "NIR": channel(640.0)}},
        "fusion": {"final_score": quality, "tof_score": quality, "spectral_score": quality}
    });
    SqalSample::decode(&serde_json::to_vec(&body).unwrap()).unwrap()
}

fn stations(seed: u64, per_station: usize) -> Stations {
    let mut noise = Noise(seed);
    (0..4)
        .map(|s| {
            (0..per_station)
                .map(|n| sample(&mut noise, &format!("ESP32_LL_{s:02}"), n))
                .collect()
        })
        .collect()
}

fn trained() -> SqalModel {
    train(
        &stations(0x9e37_79b9, 500),
        &stations(0x7f4a_7c15, 300),
        "test",
        1,
    )
    .unwrap()
}

fn flagged(model: &SqalModel, samples: &[SqalSample]) -> Vec<bool> {
    let mut track = DeviceTrack::default();
    samples
        .iter()
        .map(|s| model.score(&mut track, s).score >= model.threshold)
        .collect()
}

#[test]
fn zone_features_see_a_plane_a_dead_zone_and_a_saturated_one() {
    let mut s = sample(&mut Noise(3), "ESP32_LL_01", 1);
    for row in 0..8 {
        for col in 0..8 {
            s.distance_matrix[row][col] = 100 + 2 * col as i32 + 3 * row as i32;
        }
    }
    s.status_matrix[0][0] = 255;
    s.reflectance_matrix[7][7] = 255;
    let x = features(&s);
    let at = |name: &str| x[FEATURES.iter().position(|f| *f == name).unwrap()].unwrap();
    assert!(at("tof_plane_residual_mm") < 1e-9, "a plane fits a plane");
    assert!(at("tof_distance_std_mm") > 5.0);
    assert_eq!(at("tof_dead_zones"), 1.0);
    assert_eq!(at("tof_saturated_zones"), 1.0);
    let mut no_spectrum = s.clone();
    no_spectrum.channels.Clear = None;
    assert_eq!(
        features(&no_spectrum)[8],
        None,
        "no gain without every channel"
    );
}

#[test]
fn a_dead_zone_and_a_gain_drift_are_found_and_clean_samples_seldom_flagged() {
    let model = trained();
    let test = stations(0x1234_5678, 300);
    let clean: usize = test
        .iter()
        .map(|s| flagged(&model, s).iter().filter(|f| **f).count())
        .sum();
    assert!(
        clean * 100 <= 3 * 1200,
        "{clean} of 1200 clean samples flagged"
    );

    let mut found = [0, 0];
    for (k, kind) in [SqalInjected::DeadZone, SqalInjected::GainDrift]
        .into_iter()
        .enumerate()
    {
        for (seed, run) in test.iter().flat_map(|s| s.chunks(20)).enumerate() {
            let (samples, start) = inject(run, kind, seed as u64).unwrap();
            let flags = flagged(&model, &samples);
            found[k] += usize::from((start..=start + kind.window()).any(|i| flags[i]));
        }
    }
    assert!(
        found[0] >= 57,
        "dead zones found in {} of 60 runs",
        found[0]
    );
    assert!(
        found[1] >= 54,
        "gain drifts found in {} of 60 runs",
        found[1]
    );

    let mut dead = test[0][5].clone();
    dead.distance_matrix[3][4] = 0;
    dead.amplitude_matrix[3][4] = 0;
    let score = model.score(&mut DeviceTrack::default(), &dead);
    assert!(score.score >= model.threshold);
    assert_eq!(score.explanation[0].feature, "tof_dead_zones");
    assert_eq!(score.explanation[0].value, 1.0);
    let total: f64 = score.explanation.iter().map(|c| c.contribution).sum();
    assert!(total <= score.score + 1e-9 && total > 0.5 * score.score);
}

#[test]
fn the_sqal_model_trains_the_same_twice_and_an_edited_one_is_refused() {
    let model = trained();
    assert_eq!(trained(), model);
    let read: SqalModel =
        parse_artifact(serde_json::to_string_pretty(&model).unwrap().as_bytes()).unwrap();
    assert_eq!(read, model, "read back from its file, it keeps its version");
    let mut edited = model.clone();
    edited.threshold *= 2.0;
    let refused = parse_artifact::<SqalModel>(serde_json::to_string(&edited).unwrap().as_bytes());
    assert!(refused.unwrap_err().contains("does not match its contents"));
    let mut broken = model;
    broken.mixture.components[0].precision[0][0] = -1.0;
    broken.version = broken.digest();
    let refused = parse_artifact::<SqalModel>(serde_json::to_string(&broken).unwrap().as_bytes());
    assert!(refused.unwrap_err().contains("not positive definite"));
}

#[test]
fn the_built_in_sqal_model_loads() {
    let model: SqalModel = parse_artifact(DEFAULT_SQAL_MODEL.as_bytes()).unwrap();
    assert_eq!(model.training.source, "simulator");
}
