//! The statistics that tell a real regression from training noise, in pure Rust.
//!
//! Both tests are paired: they compare two runs' predictions on the same test samples, which
//! is far more sensitive than comparing two accuracies as independent numbers.
//!
//! - [`mcnemar_exact`]: did more samples flip from right to wrong than from wrong to right
//!   than chance would explain? Under the null hypothesis each flipped sample is equally likely
//!   to flip either way, so the count of one kind is binomial with p = 1/2, and the two-sided
//!   p-value is twice the smaller tail, capped at 1.
//! - [`paired_bootstrap`]: a percentile confidence interval for the difference of any metric
//!   computed from predictions, by resampling test samples with replacement (the same samples
//!   for both runs in each resample), from a seeded generator.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The two-sided exact McNemar p-value for `newly_wrong` samples that the baseline got right
/// and this run gets wrong, against `newly_right` the other way round.
///
/// With no flipped samples at all there is no evidence of any difference, and the p-value is 1.
pub fn mcnemar_exact(newly_wrong: u64, newly_right: u64) -> f64 {
    let flipped = newly_wrong + newly_right;
    let smaller = newly_wrong.min(newly_right);
    (2.0 * binomial_half_cdf(smaller, flipped)).min(1.0)
}

/// P(X ≤ k) for X ~ Binomial(n, 1/2), summed in log space so that it stays exact to
/// floating-point precision for any n.
pub fn binomial_half_cdf(k: u64, n: u64) -> f64 {
    if k >= n {
        return 1.0;
    }
    let ln_half_power = -(n as f64) * std::f64::consts::LN_2;
    // ln C(n, i), built up term by term: C(n, i + 1) = C(n, i) (n - i) / (i + 1).
    let mut ln_choose = 0.0f64;
    let mut terms = Vec::with_capacity(k as usize + 1);
    for i in 0..=k {
        terms.push(ln_choose + ln_half_power);
        ln_choose += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    let largest = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = terms.iter().map(|term| (term - largest).exp()).sum();
    (largest + sum.ln()).exp().min(1.0)
}

/// A confidence interval around an estimate.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Interval {
    /// The statistic on the actual samples.
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
    /// The confidence level, e.g. 0.95.
    pub confidence: f64,
}

impl Interval {
    /// Whether the whole interval lies on one side of zero.
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// A paired percentile bootstrap interval for `statistic` over `samples` samples.
///
/// `statistic` receives the indices of one resample (with repetitions) and returns the
/// difference it measures on them, e.g. this run's accuracy minus the baseline's. Returns
/// `None` when there are no samples or no resamples.
pub fn paired_bootstrap(
    samples: usize,
    resamples: usize,
    seed: u64,
    confidence: f64,
    statistic: impl Fn(&[usize]) -> f64,
) -> Option<Interval> {
    if samples == 0 || resamples == 0 {
        return None;
    }
    let all: Vec<usize> = (0..samples).collect();
    let estimate = statistic(&all);

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut indices = vec![0usize; samples];
    let mut values = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        for index in indices.iter_mut() {
            *index = rng.random_range(0..samples);
        }
        values.push(statistic(&indices));
    }
    values.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    Some(Interval {
        estimate,
        low: percentile(&values, tail),
        high: percentile(&values, 1.0 - tail),
        confidence,
    })
}

/// The `fraction` quantile of sorted `values`, interpolating linearly between neighbours.
fn percentile(values: &[f64], fraction: f64) -> f64 {
    let position = fraction.clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    let weight = position - below as f64;
    values[below] * (1.0 - weight) + values[above] * weight
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values are exact binomial tails, 2 · Σ_{i ≤ min} C(n, i) / 2^n, computed with
    // integer arithmetic (Python's fractions and math.comb).
    #[test]
    fn mcnemar_matches_exact_binomial_tails() {
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(1, 1), 1.0);
        assert!((mcnemar_exact(3, 0) - 0.25).abs() < 1e-15);
        assert!((mcnemar_exact(10, 0) - 0.001953125).abs() < 1e-15);
        assert!((mcnemar_exact(7, 2) - 0.1796875).abs() < 1e-14);
        assert!((mcnemar_exact(2, 7) - 0.1796875).abs() < 1e-14);
        assert!((mcnemar_exact(12, 3) - 0.03515625).abs() < 1e-14);
        assert!((mcnemar_exact(60, 40) - 0.05688793364098079).abs() < 1e-12);
        let large = mcnemar_exact(600, 400);
        assert!((large / 2.7284641560660184e-10 - 1.0).abs() < 1e-9, "{large}");
    }

    #[test]
    fn binomial_cdf_edges() {
        assert_eq!(binomial_half_cdf(0, 0), 1.0);
        assert_eq!(binomial_half_cdf(5, 5), 1.0);
        assert!((binomial_half_cdf(0, 1) - 0.5).abs() < 1e-15);
        assert!((binomial_half_cdf(2, 4) - 11.0 / 16.0).abs() < 1e-15);
    }

    #[test]
    fn bootstrap_interval_contains_the_true_difference() {
        // 1,000 paired samples: the baseline is right on 900, this run on 850 (50 flipped to
        // wrong, none to right). The true difference of accuracy is -0.05.
        let baseline: Vec<bool> = (0..1000).map(|i| i < 900).collect();
        let current: Vec<bool> = (0..1000).map(|i| i < 850).collect();
        let difference = |indices: &[usize]| {
            let count = |run: &[bool]| indices.iter().filter(|&&i| run[i]).count() as f64;
            (count(&current) - count(&baseline)) / indices.len() as f64
        };
        let interval = paired_bootstrap(1000, 2000, 7, 0.95, difference).unwrap();
        assert!((interval.estimate + 0.05).abs() < 1e-12);
        assert!(interval.low < -0.05 && -0.05 < interval.high, "{interval:?}");
        assert!(interval.high < 0.0 && interval.excludes_zero(), "{interval:?}");
        // Seeded: the same seed gives the same interval.
        assert_eq!(Some(interval), paired_bootstrap(1000, 2000, 7, 0.95, difference));
    }

    #[test]
    fn bootstrap_of_identical_runs_is_zero_width_at_zero() {
        let interval = paired_bootstrap(50, 100, 1, 0.9, |_| 0.0).unwrap();
        assert_eq!((interval.low, interval.high), (0.0, 0.0));
        assert!(!interval.excludes_zero());
        assert_eq!(paired_bootstrap(0, 100, 1, 0.9, |_| 0.0), None);
    }
}
