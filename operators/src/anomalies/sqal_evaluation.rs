//! `gaveurs model eval`'s SQAL part: the SQAL model trained on one run of simulated stations,
//! its threshold set on a second, and a third scored clean and with labelled defects
//! injected, against the SPEC §5 SQAL rules alone.
//!
//! Each test station's samples are cut into runs of [`RUN`]; one event is injected per run
//! and type, and the run is scored from the station's track as the clean stream left it
//! there, so the gain CUSUM starts where it would have.

use std::fmt::Write as _;

use gaveurs_schemas::records::{Grade, SqalSample};

use super::evaluation::{TypeResult, uniform};
use super::sqal_model::{DeviceTrack, SqalModel, Stations, train};

/// Samples per injected run.
const RUN: usize = 20;

/// The defects injected into SQAL samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqalInjected {
    /// 1–4 neighbouring ToF zones read nothing (distance, amplitude and reflectance 0; half
    /// of them still report a valid status).
    DeadZone,
    /// Every AS7341 channel × (1 ± n × 2–5 %) at the n-th sample from the start on.
    GainDrift,
}

impl SqalInjected {
    pub const ALL: [SqalInjected; 2] = [SqalInjected::DeadZone, SqalInjected::GainDrift];

    pub fn name(self) -> &'static str {
        match self {
            SqalInjected::DeadZone => "dead ToF zone (1–4 zones)",
            SqalInjected::GainDrift => "spectral gain drift ±2–5 %/sample",
        }
    }

    /// Samples after the start within which a detection counts.
    pub fn window(self) -> usize {
        match self {
            SqalInjected::DeadZone => 0,
            SqalInjected::GainDrift => 4,
        }
    }
}

/// `run` with one event of `kind` injected; the position at which it starts.
pub fn inject(
    run: &[SqalSample],
    kind: SqalInjected,
    seed: u64,
) -> Option<(Vec<SqalSample>, usize)> {
    let n = run.len();
    if n < 8 {
        return None;
    }
    let first = &run[0];
    let key = format!("{}/{}", first.device_id, first.sample_id);
    let draw = |what: &str| uniform(seed, &key, &format!("{kind:?} {what}"));
    let start = 2 + (draw("start") * (n - 2 - kind.window()) as f64) as usize;
    let mut samples = run.to_vec();
    match kind {
        SqalInjected::DeadZone => {
            let zones = 1 + (draw("zones") * 4.0) as usize;
            let row = (draw("row") * 8.0) as usize;
            let col = (draw("col") * (9 - zones) as f64) as usize;
            let flagged_by_station = draw("status") < 0.5;
            let s = &mut samples[start];
            for c in col..col + zones {
                s.distance_matrix[row][c] = 0;
                s.amplitude_matrix[row][c] = 0;
                s.reflectance_matrix[row][c] = 0;
                if flagged_by_station {
                    s.status_matrix[row][c] = 255;
                }
            }
        }
        SqalInjected::GainDrift => {
            let rate = 0.02 + 0.03 * draw("rate");
            let sign = if draw("sign") < 0.5 { -1.0 } else { 1.0 };
            for (i, s) in samples.iter_mut().skip(start).enumerate() {
                let factor = (1.0 + sign * rate * (i + 1) as f64).max(0.05);
                let c = &mut s.channels;
                for channel in [
                    &mut c.F1_415nm,
                    &mut c.F2_445nm,
                    &mut c.F3_480nm,
                    &mut c.F4_515nm,
                    &mut c.F5_555nm,
                    &mut c.F6_590nm,
                    &mut c.F7_630nm,
                    &mut c.F8_680nm,
                    &mut c.Clear,
                    &mut c.NIR,
                ] {
                    *channel = channel.map(|v| v * factor);
                }
            }
        }
    }
    Some((samples, start))
}

/// The SPEC §5 rules that look at a SQAL sample: `quality_low`/`quality_critical`
/// (`final_score` < 0.60), `grade_reject`, `oxidation_high` (> 0.7), `freshness_low` (< 0.5).
pub fn rules_flag(sample: &SqalSample) -> bool {
    sample.final_score < 0.60
        || sample.grade == Grade::Reject
        || sample.oxidation_index.is_some_and(|v| v > 0.7)
        || sample.freshness_index.is_some_and(|v| v < 0.5)
}

#[derive(Debug, Clone)]
pub struct SqalReport {
    pub model: SqalModel,
    pub test_samples: usize,
    pub clean_flagged_model: usize,
    pub clean_flagged_rules: usize,
    pub types: Vec<(SqalInjected, TypeResult)>,
}

/// Trains on `fitting` and `validation` (threshold) and scores `test`, clean and injected.
pub fn evaluate(
    fitting: &Stations,
    validation: &Stations,
    test: &Stations,
    seed: u64,
) -> anyhow::Result<SqalReport> {
    let model = train(fitting, validation, "simulator", seed)?;
    let mut report = SqalReport {
        test_samples: 0,
        clean_flagged_model: 0,
        clean_flagged_rules: 0,
        types: SqalInjected::ALL
            .iter()
            .map(|k| (*k, TypeResult::default()))
            .collect(),
        model,
    };
    let model = &report.model;
    for station in test {
        let mut track = DeviceTrack::default();
        for run in station.chunks(RUN) {
            let before = track.clone();
            for sample in run {
                report.test_samples += 1;
                report.clean_flagged_model +=
                    usize::from(model.score(&mut track, sample).score >= model.threshold);
                report.clean_flagged_rules += usize::from(rules_flag(sample));
            }
            for (kind, result) in &mut report.types {
                let Some((samples, start)) = inject(run, *kind, seed) else {
                    continue;
                };
                result.events += 1;
                let mut injected_track = before.clone();
                let flagged: Vec<bool> = samples
                    .iter()
                    .map(|s| model.score(&mut injected_track, s).score >= model.threshold)
                    .collect();
                let end = (start + kind.window()).min(samples.len() - 1);
                let by_model = (start..=end).find(|&i| flagged[i]);
                let by_rules = (start..=end).any(|i| rules_flag(&samples[i]));
                if let Some(i) = by_model {
                    result.model += 1;
                    result.delays.push(i - start);
                    result.model_only += usize::from(!by_rules);
                }
                result.rules += usize::from(by_rules);
                result.both += usize::from(by_model.is_some() || by_rules);
            }
        }
    }
    Ok(report)
}

impl SqalReport {
    /// The SQAL section of `gaveurs model eval`'s report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let share = |n: usize, of: usize| n as f64 / of.max(1) as f64;
        let m = &self.model;
        let _ = writeln!(
            out,
            "\nSQAL model: trained on {} simulated samples, threshold {:.3} set on {} more; tested on {} unseen samples",
            m.training.samples, m.threshold, m.training.validation_samples, self.test_samples
        );
        let _ = writeln!(
            out,
            "clean samples flagged: model {:.2} % ({} of {}), rules {:.2} %",
            100.0 * share(self.clean_flagged_model, self.test_samples),
            self.clean_flagged_model,
            self.test_samples,
            100.0 * share(self.clean_flagged_rules, self.test_samples)
        );
        let _ = writeln!(
            out,
            "\n| defect | events | window | model | rules | both | model only | median delay |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        for (kind, r) in &self.types {
            let mut delays = r.delays.clone();
            delays.sort_unstable();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {} | {} |",
                kind.name(),
                r.events,
                kind.window(),
                share(r.model, r.events),
                share(r.rules, r.events),
                share(r.both, r.events),
                r.model_only,
                delays
                    .get(delays.len() / 2)
                    .map_or("–".to_string(), |d| d.to_string())
            );
        }
        out
    }
}
