//! The SQAL model: how far a liver sample's measurement is from what the stations measure,
//! as a density over summary features of its matrices and spectrum.
//!
//! A sample's features (see [`FEATURES`]) are read from its record alone: of the VL53L8CH's
//! 8×8 matrices, the mean and spread of the live zones' distances, the RMS residual of a
//! plane fitted through them, the zones that are dead (no valid target, no amplitude or no
//! distance) or saturated, and the mean reflectance, amplitude and ambient light; of the
//! AS7341's channels, the overall gain (the mean log of the channels) and each channel's log
//! ratio to `Clear`; the fused `final_score` and its gap to the two sensors' scores. Each is
//! standardised by a robust scale (1.4826 × MAD; at least 1 for zone counts, which are 0 on
//! a healthy station) and the vector is scored by a Gaussian mixture fitted on simulator
//! output: the density part of the score is `√(2 (−log p(x) − least surprise))`, a
//! Mahalanobis distance for one component.
//!
//! A station's spectral gain that drifts a little at each sample is caught by a two-sided
//! CUSUM of the standardised gain per station (`tendance_gain`), added to the score as
//! another part, so a slow drift adds up until it shows.

use serde::{Deserialize, Serialize};

use gaveurs_schemas::anomaly::Contribution;
use gaveurs_schemas::records::{Matrix8x8, SqalSample};

use super::density::Mixture;
use super::training::{median, significant, upper_quantile};

/// The model's name in artifacts and in the `anomalies` dataset.
pub const MODEL_NAME: &str = "sqal_sample";
/// How the artifact is laid out; a loader refuses another.
pub const FORMAT: u32 = 1;

/// The features, in the order of the vector the mixture scores.
pub const FEATURES: [&str; 20] = [
    "tof_distance_mean_mm",
    "tof_distance_std_mm",
    "tof_plane_residual_mm",
    "tof_dead_zones",
    "tof_saturated_zones",
    "tof_reflectance_mean",
    "tof_amplitude_mean",
    "tof_ambient_mean",
    "as7341_gain",
    "as7341_F1_415nm/Clear",
    "as7341_F2_445nm/Clear",
    "as7341_F3_480nm/Clear",
    "as7341_F4_515nm/Clear",
    "as7341_F5_555nm/Clear",
    "as7341_F6_590nm/Clear",
    "as7341_F7_630nm/Clear",
    "as7341_F8_680nm/Clear",
    "as7341_NIR/Clear",
    "final_score",
    "final_score_gap",
];
const D: usize = FEATURES.len();
/// Zone counts: their scale is at least one zone.
const COUNTS: [usize; 2] = [3, 4];
/// Where the spectral gain is in [`FEATURES`].
const GAIN: usize = 8;
/// The name of the gain CUSUM in explanations.
pub const TREND: &str = "tendance_gain";

/// VL53L8CH target statuses that mean a valid range (5: valid, 9: valid with a wide pulse).
const VALID_STATUS: [i32; 2] = [5, 9];

/// A sample's features; `None` where the record does not carry what one needs (no AS7341
/// channels, no sensor scores).
pub fn features(sample: &SqalSample) -> [Option<f64>; D] {
    let mut x = [None; D];
    let zones = Zones::of(sample);
    x[0] = zones.distance_mean();
    x[1] = zones.distance_std();
    x[2] = zones.plane_residual();
    x[3] = Some(zones.dead as f64);
    x[4] = Some(zones.saturated as f64);
    x[5] = Some(mean(&sample.reflectance_matrix));
    x[6] = Some(mean(&sample.amplitude_matrix));
    x[7] = Some(mean(&sample.ambient_matrix));
    let c = &sample.channels;
    let channels = [
        c.F1_415nm, c.F2_445nm, c.F3_480nm, c.F4_515nm, c.F5_555nm, c.F6_590nm, c.F7_630nm,
        c.F8_680nm, c.NIR,
    ];
    let logs: Vec<f64> = channels
        .iter()
        .chain([&c.Clear])
        .filter_map(|v| v.filter(|v| *v > 0.0).map(f64::ln))
        .collect();
    if logs.len() == channels.len() + 1 {
        x[GAIN] = Some(logs.iter().sum::<f64>() / logs.len() as f64);
        let clear = logs[channels.len()];
        for (i, log) in logs[..channels.len()].iter().enumerate() {
            x[GAIN + 1 + i] = Some(log - clear);
        }
    }
    x[18] = Some(sample.final_score);
    if let (Some(tof), Some(spectral)) = (sample.tof_score, sample.spectral_score) {
        x[19] = Some(sample.final_score - (tof + spectral) / 2.0);
    }
    x
}

fn mean(matrix: &Matrix8x8) -> f64 {
    matrix.iter().flatten().map(|v| f64::from(*v)).sum::<f64>() / 64.0
}

/// The ToF zones, sorted into live, dead and saturated.
struct Zones {
    /// (column, row, distance mm) of each live zone.
    live: Vec<(f64, f64, f64)>,
    dead: usize,
    saturated: usize,
}

impl Zones {
    fn of(s: &SqalSample) -> Zones {
        let mut zones = Zones {
            live: Vec::with_capacity(64),
            dead: 0,
            saturated: 0,
        };
        for row in 0..8 {
            for col in 0..8 {
                let distance = s.distance_matrix[row][col];
                let amplitude = s.amplitude_matrix[row][col];
                if distance >= 4000 || amplitude >= 4095 || s.reflectance_matrix[row][col] >= 255 {
                    zones.saturated += 1;
                } else if distance <= 0
                    || amplitude <= 0
                    || !VALID_STATUS.contains(&s.status_matrix[row][col])
                {
                    zones.dead += 1;
                } else {
                    zones
                        .live
                        .push((col as f64, row as f64, f64::from(distance)));
                }
            }
        }
        zones
    }

    fn distance_mean(&self) -> Option<f64> {
        (!self.live.is_empty())
            .then(|| self.live.iter().map(|z| z.2).sum::<f64>() / self.live.len() as f64)
    }

    fn distance_std(&self) -> Option<f64> {
        let mean = self.distance_mean()?;
        let n = self.live.len() as f64;
        Some((self.live.iter().map(|z| (z.2 - mean).powi(2)).sum::<f64>() / n).sqrt())
    }

    /// RMS residual of the least-squares plane `distance = a + b·col + c·row` through the
    /// live zones: a liver is a smooth surface, a zone that reads wrong is not on it.
    fn plane_residual(&self) -> Option<f64> {
        if self.live.len() < 4 {
            return None;
        }
        let n = self.live.len() as f64;
        let (mx, my, mz) = self.live.iter().fold((0.0, 0.0, 0.0), |(a, b, c), z| {
            (a + z.0 / n, b + z.1 / n, c + z.2 / n)
        });
        let (mut sxx, mut sxy, mut syy, mut sxz, mut syz) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (x, y, z) in &self.live {
            let (dx, dy, dz) = (x - mx, y - my, z - mz);
            sxx += dx * dx;
            sxy += dx * dy;
            syy += dy * dy;
            sxz += dx * dz;
            syz += dy * dz;
        }
        let det = sxx * syy - sxy * sxy;
        let (b, c) = if det.abs() > 1e-9 {
            ((sxz * syy - syz * sxy) / det, (syz * sxx - sxz * sxy) / det)
        } else {
            (0.0, 0.0)
        };
        let sse: f64 = self
            .live
            .iter()
            .map(|(x, y, z)| (z - mz - b * (x - mx) - c * (y - my)).powi(2))
            .sum();
        Some((sse / n).sqrt())
    }
}

/// A feature's robust standardisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    pub median: f64,
    pub scale: f64,
}

/// How the model was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// `simulator` (`gaveurs simulate`'s stations) or the folder's name.
    pub source: String,
    /// SHA-256 of the training samples' feature vectors, in the order read.
    pub data_sha256: String,
    pub samples: usize,
    pub validation_samples: usize,
    pub seed: u64,
}

/// What the threshold gives on the clean validation samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub validation_samples: usize,
    pub flagged_share: f64,
}

/// The SQAL model's artifact, as written by `gaveurs model train --model sqal` (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqalModel {
    pub model: String,
    pub format: u32,
    /// A digest of everything below: the same training gives the same version.
    pub version: String,
    pub features: Vec<String>,
    pub scaler: Vec<Scale>,
    pub mixture: Mixture,
    /// `−log p` at the mixture's most likely point.
    pub least_surprise: f64,
    /// The gain CUSUM's allowance, in standard units per sample.
    pub trend_allowance: f64,
    /// A sample whose score reaches this is an anomaly.
    pub threshold: f64,
    pub training: Provenance,
    pub evaluation: Evaluation,
}

/// What the model keeps of a station between its samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceTrack {
    /// The CUSUMs of the standardised gain above and below the population's.
    pub gain_up: f64,
    pub gain_down: f64,
}

/// A sample's score and its explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleScore {
    pub score: f64,
    /// The three largest contributions, adding up to the score with the others.
    pub explanation: Vec<Contribution>,
}

impl SqalModel {
    /// The standardised vector of a sample; a missing feature sits at its median.
    fn standardise(&self, raw: &[Option<f64>; D]) -> Vec<f64> {
        raw.iter()
            .zip(&self.scaler)
            .map(|(v, s)| v.map_or(0.0, |v| (v - s.median) / s.scale))
            .collect()
    }

    /// Scores a sample from `device`'s track, and moves the track on.
    pub fn score(&self, track: &mut DeviceTrack, sample: &SqalSample) -> SampleScore {
        let raw = features(sample);
        let z = self.standardise(&raw);
        if raw[GAIN].is_some() {
            track.gain_up = (track.gain_up + z[GAIN] - self.trend_allowance).max(0.0);
            track.gain_down = (track.gain_down - z[GAIN] - self.trend_allowance).max(0.0);
        }
        let trend = track.gain_up.max(track.gain_down);
        let (surprise, component) = self.mixture.assess(&z);
        let density = (2.0 * (surprise - self.least_surprise)).max(0.0);
        let score = (density + trend * trend).sqrt();
        // Shares of the closest component's distance, feature by feature, and the trend's.
        let mut parts: Vec<(usize, f64)> = component
            .quadratic_parts(&z)
            .into_iter()
            .enumerate()
            .filter(|(i, q)| *q > 0.0 && raw[*i].is_some())
            .collect();
        if trend > 0.0 {
            parts.push((D, trend * trend));
        }
        let total: f64 = parts.iter().map(|p| p.1).sum();
        parts.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let explanation = parts
            .into_iter()
            .take(3)
            .map(|(i, part)| {
                let (feature, value, expected) = if i == D {
                    (TREND, trend, 0.0)
                } else {
                    let s = &self.scaler[i];
                    (
                        FEATURES[i],
                        raw[i].unwrap_or(s.median),
                        s.median + s.scale * component.mean[i],
                    )
                };
                Contribution {
                    feature: feature.to_string(),
                    value,
                    expected,
                    contribution: if total > 0.0 {
                        score * part / total
                    } else {
                        0.0
                    },
                }
            })
            .collect();
        SampleScore { score, explanation }
    }

    /// Checks what a loader must not trust blindly: the layout and that every number is one.
    pub fn check(&self) -> Result<(), String> {
        super::check_header(&self.model, self.format, MODEL_NAME, FORMAT, "SQAL model")?;
        if self.features != FEATURES {
            return Err(format!("features {:?} are not {FEATURES:?}", self.features));
        }
        if self.scaler.len() != D
            || !self
                .scaler
                .iter()
                .all(|s| s.median.is_finite() && s.scale.is_finite() && s.scale > 0.0)
        {
            return Err(format!(
                "the scaler needs {D} finite medians and positive scales"
            ));
        }
        self.mixture.check(D)?;
        for (name, value) in [
            ("least_surprise", self.least_surprise),
            ("trend_allowance", self.trend_allowance),
        ] {
            if !value.is_finite() {
                return Err(format!("{name} {value} is not a number"));
            }
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err(format!(
                "threshold {} is not a positive number",
                self.threshold
            ));
        }
        if self.version != self.digest() {
            return Err("its version does not match its contents (edited by hand?)".into());
        }
        Ok(())
    }

    /// The version a trained model gets: a digest of its parameters, threshold and training.
    pub fn digest(&self) -> String {
        let mut unversioned = self.clone();
        unversioned.version = String::new();
        super::version_digest(MODEL_NAME, &unversioned)
    }
}

/// Mixture components: the stations' good livers and their poor ones.
const COMPONENTS: usize = 2;
/// Flag at most this share of clean validation samples.
pub const FLAG_RATE: f64 = 0.01;

/// Samples station by station, in the order each station sent them.
pub type Stations = Vec<Vec<SqalSample>>;

/// Trains the SQAL model: scaler and mixture on `fitting`, threshold on `validation` (whose
/// stations are scored in order, so the gain CUSUM's clean wanderings count).
pub fn train(
    fitting: &Stations,
    validation: &Stations,
    source: &str,
    seed: u64,
) -> anyhow::Result<SqalModel> {
    let raw: Vec<[Option<f64>; D]> = fitting.iter().flatten().map(features).collect();
    if raw.len() < 100 {
        anyhow::bail!("{} samples are too few to fit the SQAL model", raw.len());
    }
    let scaler: Vec<Scale> = (0..D)
        .map(|i| {
            let mut values: Vec<f64> = raw.iter().filter_map(|x| x[i]).collect();
            let centre = median(&mut values);
            let mut deviations: Vec<f64> = values.iter().map(|v| (v - centre).abs()).collect();
            let floor = if COUNTS.contains(&i) {
                1.0
            } else {
                1e-6 * centre.abs().max(1.0)
            };
            Scale {
                median: significant(centre),
                scale: significant((1.4826 * median(&mut deviations)).max(floor)),
            }
        })
        .collect();
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    for x in &raw {
        for v in x {
            sha2::Digest::update(&mut hasher, v.unwrap_or(f64::NAN).to_le_bytes());
        }
    }
    let mut model = SqalModel {
        model: MODEL_NAME.to_string(),
        format: FORMAT,
        version: String::new(),
        features: FEATURES.iter().map(|f| f.to_string()).collect(),
        scaler,
        mixture: Mixture {
            components: Vec::new(),
        },
        least_surprise: 0.0,
        trend_allowance: 0.5,
        threshold: f64::INFINITY,
        training: Provenance {
            source: source.to_string(),
            data_sha256: hex::encode(sha2::Digest::finalize(hasher)),
            samples: raw.len(),
            validation_samples: validation.iter().map(Vec::len).sum(),
            seed,
        },
        evaluation: Evaluation {
            validation_samples: 0,
            flagged_share: 0.0,
        },
    };
    let rows: Vec<Vec<f64>> = raw.iter().map(|x| model.standardise(x)).collect();
    // Zone counts never vary on a healthy station: the regularisation is their variance, so
    // one dead zone is as unlikely as it should be.
    model.mixture = Mixture::fit(&rows, COMPONENTS, 1e-2)?;
    model.mixture.map_numbers(significant);
    model.least_surprise = significant(model.mixture.least_surprise());
    let scores = scores(&model, validation);
    model.threshold = (upper_quantile(&scores, FLAG_RATE) * 1000.0).ceil() / 1000.0;
    let flagged = scores.iter().filter(|s| **s >= model.threshold).count();
    model.evaluation = Evaluation {
        validation_samples: scores.len(),
        flagged_share: (flagged as f64 / scores.len().max(1) as f64 * 1e5).round() / 1e5,
    };
    model.version = model.digest();
    Ok(model)
}

/// Every sample's score, station by station in order.
pub fn scores(model: &SqalModel, stations: &Stations) -> Vec<f64> {
    stations
        .iter()
        .flat_map(|samples| {
            let mut track = DeviceTrack::default();
            samples
                .iter()
                .map(move |s| model.score(&mut track, s).score)
                .collect::<Vec<_>>()
        })
        .collect()
}
