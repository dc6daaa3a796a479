//! The second model family `gaveurs model eval` compares: a Gaussian mixture density over a
//! meal's vector of standardised evidence (the residual model's parts), scored by its negative
//! log-likelihood instead of the vector's length.
//!
//! linfa's mixture exposes its weights, means and precision matrices but no log-likelihood
//! of a new point (0.8), so it is computed here with log-sum-exp over the components:
//! `log p(x) = log Σ_k exp(log w_k + ½ log det P_k − d/2 log 2π − ½ (x − μ_k)ᵀ P_k (x − μ_k))`.

use linfa::prelude::*;
use linfa_clustering::GaussianMixtureModel;
use ndarray::Array2;

use super::meal_model::{EVIDENCE, LotTrack, MealModel};
use super::training::TrainingLot;

/// Dimensions of the evidence vector.
const D: usize = EVIDENCE.len();

struct Component {
    /// `log w_k + ½ log det P_k − d/2 log 2π`.
    log_constant: f64,
    mean: [f64; D],
    precision: [[f64; D]; D],
}

pub struct DensityModel {
    components: Vec<Component>,
    pub threshold: f64,
}

/// Each scored meal's signed evidence, lot by lot.
pub fn evidence(model: &MealModel, lots: &[&TrainingLot]) -> Vec<[f64; D]> {
    let mut vectors = Vec::new();
    for lot in lots {
        let mut track = LotTrack::default();
        for meal in &lot.meals {
            if let Some(score) = model.score(&mut track, &meal.facts()) {
                vectors.push(evidence_of(&score));
            }
        }
    }
    vectors
}

/// The evidence, each part compressed as `sign(z) · ln(1 + |z|)`: its tails are heavy, and a
/// mixture fitted to the raw values spends its components on a few extreme meals.
pub fn evidence_of(score: &super::meal_model::Score) -> [f64; D] {
    let mut x = [0.0; D];
    for (i, part) in score.parts.iter().enumerate() {
        x[i] = part.2.signum() * part.2.abs().ln_1p();
    }
    x
}

/// log det of a symmetric positive definite matrix, by Cholesky; `None` if it is not one.
fn log_det(matrix: &[[f64; D]; D]) -> Option<f64> {
    let mut l = [[0.0; D]; D];
    let mut sum = 0.0;
    for i in 0..D {
        for j in 0..=i {
            let s = matrix[i][j]
                - l[i][..j]
                    .iter()
                    .zip(&l[j][..j])
                    .map(|(a, b)| a * b)
                    .sum::<f64>();
            if i == j {
                if s <= 0.0 {
                    return None;
                }
                l[i][i] = s.sqrt();
                sum += l[i][i].ln();
            } else {
                l[i][j] = s / l[j][j];
            }
        }
    }
    Some(2.0 * sum)
}

impl DensityModel {
    /// Fits `components` Gaussians (full covariances, linfa's seeded k-means start) to
    /// `vectors`.
    pub fn fit(vectors: &[[f64; D]], components: usize) -> anyhow::Result<DensityModel> {
        let records = Array2::from_shape_fn((vectors.len(), D), |(i, j)| vectors[i][j]);
        let gmm = GaussianMixtureModel::params(components)
            .max_n_iterations(200)
            .reg_covariance(1e-3)
            .fit(&DatasetBase::from(records))
            .map_err(|e| anyhow::anyhow!("Gaussian mixture: {e}"))?;
        let mut fitted = Vec::with_capacity(components);
        for k in 0..gmm.weights().len() {
            let mut mean = [0.0; D];
            let mut precision = [[0.0; D]; D];
            for (i, row) in precision.iter_mut().enumerate() {
                mean[i] = gmm.means()[[k, i]];
                for (j, cell) in row.iter_mut().enumerate() {
                    *cell = gmm.precisions()[[k, i, j]];
                }
            }
            let log_det = log_det(&precision).ok_or_else(|| {
                anyhow::anyhow!("component {k}'s precision is not positive definite")
            })?;
            fitted.push(Component {
                log_constant: gmm.weights()[k].ln() + 0.5 * log_det
                    - 0.5 * D as f64 * (2.0 * std::f64::consts::PI).ln(),
                mean,
                precision,
            });
        }
        Ok(DensityModel {
            components: fitted,
            threshold: f64::INFINITY,
        })
    }

    /// `−log p(x)`: the higher, the less likely.
    pub fn surprise(&self, x: &[f64; D]) -> f64 {
        let terms: Vec<f64> = self
            .components
            .iter()
            .map(|c| {
                let mut quadratic = 0.0;
                for i in 0..D {
                    for j in 0..D {
                        quadratic += (x[i] - c.mean[i]) * c.precision[i][j] * (x[j] - c.mean[j]);
                    }
                }
                c.log_constant - 0.5 * quadratic
            })
            .collect();
        let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        -(top + terms.iter().map(|t| (t - top).exp()).sum::<f64>().ln())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_likelihood_is_a_gaussians_for_one_component() {
        // Points on a cross around 0: the fit is close to a standard normal per axis.
        let mut vectors = Vec::new();
        for i in -50..=50 {
            for axis in 0..D {
                let mut x = [0.0; D];
                x[axis] = i as f64 / 25.0;
                vectors.push(x);
            }
        }
        let model = DensityModel::fit(&vectors, 1).unwrap();
        let near = model.surprise(&[0.0; D]);
        let mut far = [0.0; D];
        far[0] = 4.0;
        let far = model.surprise(&far);
        assert!(far > near + 4.0, "near {near}, far {far}");
        let mut twice = [[0.0; D]; D];
        for (i, row) in twice.iter_mut().enumerate() {
            row[i] = 2.0;
        }
        assert!((log_det(&twice).unwrap() - D as f64 * 2f64.ln()).abs() < 1e-12);
    }
}
