//! Gaussian mixture densities: the SQAL model's density ([`super::sqal_model`]), and the
//! second model family `gaveurs model eval` compares for meals ([`DensityModel`]: a mixture
//! over a meal's vector of standardised evidence, scored by its negative log-likelihood
//! instead of the vector's length).
//!
//! linfa's mixture exposes its weights, means and precision matrices but no log-likelihood
//! of a new point (0.8), so it is computed here with log-sum-exp over the components:
//! `log p(x) = log Σ_k exp(log w_k + ½ log det P_k − d/2 log 2π − ½ (x − μ_k)ᵀ P_k (x − μ_k))`.

use linfa::prelude::*;
use linfa_clustering::GaussianMixtureModel;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::meal_model::{EVIDENCE, LotTrack, MealModel};
use super::training::TrainingLot;

/// One component of a mixture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gaussian {
    /// `log w_k + ½ log det P_k − d/2 log 2π`.
    pub log_constant: f64,
    pub mean: Vec<f64>,
    pub precision: Vec<Vec<f64>>,
}

impl Gaussian {
    /// `log w_k + log N(x; μ_k, P_k⁻¹)`.
    fn log_term(&self, x: &[f64]) -> f64 {
        self.log_constant - 0.5 * self.quadratic_parts(x).iter().sum::<f64>()
    }

    /// `(x − μ)ᵀ P (x − μ)` split by dimension: part `i` is `(x_i − μ_i) · (P (x − μ))_i`,
    /// so the parts add up to the quadratic form (a part can be negative when dimensions
    /// are correlated).
    pub fn quadratic_parts(&self, x: &[f64]) -> Vec<f64> {
        let d: Vec<f64> = x.iter().zip(&self.mean).map(|(x, m)| x - m).collect();
        self.precision
            .iter()
            .zip(&d)
            .map(|(row, di)| di * row.iter().zip(&d).map(|(p, dj)| p * dj).sum::<f64>())
            .collect()
    }
}

/// A Gaussian mixture density.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mixture {
    pub components: Vec<Gaussian>,
}

/// log det of a symmetric positive definite matrix, by Cholesky; `None` if it is not one.
fn log_det(matrix: &[Vec<f64>]) -> Option<f64> {
    let n = matrix.len();
    let mut l = vec![vec![0.0; n]; n];
    let mut sum = 0.0;
    for i in 0..n {
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

impl Mixture {
    /// Fits `components` Gaussians (full covariances, linfa's seeded k-means start, so the
    /// same rows give the same mixture) to `rows`, each covariance's diagonal raised by
    /// `regularisation`.
    pub fn fit(rows: &[Vec<f64>], components: usize, regularisation: f64) -> anyhow::Result<Self> {
        let d = rows.first().map_or(0, Vec::len);
        if d == 0 || rows.iter().any(|r| r.len() != d) {
            anyhow::bail!("a mixture needs rows of one positive length");
        }
        let records = Array2::from_shape_fn((rows.len(), d), |(i, j)| rows[i][j]);
        let gmm = GaussianMixtureModel::params(components)
            .max_n_iterations(200)
            .reg_covariance(regularisation)
            .fit(&DatasetBase::from(records))
            .map_err(|e| anyhow::anyhow!("Gaussian mixture: {e}"))?;
        let mut fitted = Vec::with_capacity(components);
        for k in 0..gmm.weights().len() {
            let mean: Vec<f64> = (0..d).map(|i| gmm.means()[[k, i]]).collect();
            let precision: Vec<Vec<f64>> = (0..d)
                .map(|i| (0..d).map(|j| gmm.precisions()[[k, i, j]]).collect())
                .collect();
            let log_det = log_det(&precision).ok_or_else(|| {
                anyhow::anyhow!("component {k}'s precision is not positive definite")
            })?;
            fitted.push(Gaussian {
                log_constant: gmm.weights()[k].ln() + 0.5 * log_det
                    - 0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln(),
                mean,
                precision,
            });
        }
        Ok(Mixture { components: fitted })
    }

    pub fn dimensions(&self) -> usize {
        self.components.first().map_or(0, |c| c.mean.len())
    }

    /// `−log p(x)`: the higher, the less likely.
    pub fn surprise(&self, x: &[f64]) -> f64 {
        self.assess(x).0
    }

    /// `−log p(x)`, and the component that explains `x` best.
    pub fn assess(&self, x: &[f64]) -> (f64, &Gaussian) {
        let terms: Vec<f64> = self.components.iter().map(|c| c.log_term(x)).collect();
        let (best, top) =
            terms
                .iter()
                .copied()
                .enumerate()
                .fold(
                    (0, f64::NEG_INFINITY),
                    |a, (k, t)| if t > a.1 { (k, t) } else { a },
                );
        let surprise = -(top + terms.iter().map(|t| (t - top).exp()).sum::<f64>().ln());
        (surprise, &self.components[best])
    }

    /// The least surprise any point can have, near enough: at the mean of the heaviest
    /// component. Surprise above it is what a point's distance costs.
    pub fn least_surprise(&self) -> f64 {
        self.components
            .iter()
            .map(|c| self.surprise(&c.mean))
            .fold(f64::INFINITY, f64::min)
    }

    /// What a loader checks: `d`-dimensional components, every number finite, each
    /// precision positive definite.
    pub fn check(&self, d: usize) -> Result<(), String> {
        if self.components.is_empty() {
            return Err("the mixture has no component".into());
        }
        for (k, c) in self.components.iter().enumerate() {
            let shaped = c.mean.len() == d
                && c.precision.len() == d
                && c.precision.iter().all(|row| row.len() == d);
            let finite = c.log_constant.is_finite()
                && c.mean
                    .iter()
                    .chain(c.precision.iter().flatten())
                    .all(|v| v.is_finite());
            if !(shaped && finite) {
                return Err(format!(
                    "mixture component {k} needs a finite {d}-mean and {d}×{d} precision"
                ));
            }
            if log_det(&c.precision).is_none() {
                return Err(format!(
                    "mixture component {k}'s precision is not positive definite"
                ));
            }
        }
        Ok(())
    }

    /// Every number passed through `round` (for an artifact that reads back the same).
    pub fn map_numbers(&mut self, round: impl Fn(f64) -> f64) {
        for c in &mut self.components {
            c.log_constant = round(c.log_constant);
            for v in c.mean.iter_mut().chain(c.precision.iter_mut().flatten()) {
                *v = round(*v);
            }
        }
    }
}

/// Dimensions of a meal's evidence vector.
const D: usize = EVIDENCE.len();

/// The meal comparison in `gaveurs model eval`: a mixture over evidence vectors and the
/// surprise at which a meal is flagged.
pub struct DensityModel {
    mixture: Mixture,
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

impl DensityModel {
    pub fn fit(vectors: &[[f64; D]], components: usize) -> anyhow::Result<DensityModel> {
        let rows: Vec<Vec<f64>> = vectors.iter().map(|v| v.to_vec()).collect();
        Ok(DensityModel {
            mixture: Mixture::fit(&rows, components, 1e-3)?,
            threshold: f64::INFINITY,
        })
    }

    pub fn surprise(&self, x: &[f64; D]) -> f64 {
        self.mixture.surprise(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_likelihood_is_a_gaussians_for_one_component() {
        // Points on a cross around 0: the fit is close to a standard normal per axis.
        let mut rows = Vec::new();
        for i in -50..=50 {
            for axis in 0..D {
                let mut x = vec![0.0; D];
                x[axis] = i as f64 / 25.0;
                rows.push(x);
            }
        }
        let mixture = Mixture::fit(&rows, 1, 1e-3).unwrap();
        let near = mixture.surprise(&[0.0; D]);
        let mut far = [0.0; D];
        far[0] = 4.0;
        let far = mixture.surprise(&far);
        assert!(far > near + 4.0, "near {near}, far {far}");
        assert!((mixture.least_surprise() - near).abs() < 1e-6);
        let parts = mixture
            .assess(&[1.0, 2.0, 0.0, 0.0, 0.0])
            .1
            .quadratic_parts(&[1.0, 2.0, 0.0, 0.0, 0.0]);
        assert!(parts[1] > parts[0] && parts[0] > 0.0, "{parts:?}");
        let twice: Vec<Vec<f64>> = (0..D)
            .map(|i| (0..D).map(|j| if i == j { 2.0 } else { 0.0 }).collect())
            .collect();
        assert!((log_det(&twice).unwrap() - D as f64 * 2f64.ln()).abs() < 1e-12);
        assert_eq!(mixture.check(D), Ok(()));
        assert!(mixture.check(D + 1).is_err());
    }
}
