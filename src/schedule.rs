//! The arithmetic of training that needs no libtorch: the learning rate at each step, the
//! seeded validation split, and the early-stopping bookkeeping. Pure Rust, so it is unit-tested
//! in every build.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;

/// How the learning rate moves over training, after any warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// Multiplied by `gamma` every `step_size` epochs.
    Step {
        step_size: usize,
        gamma: f64,
    },
    /// Half a cosine from the base rate down to `min_learning_rate` at the last step.
    Cosine {
        min_learning_rate: f64,
    },
}

/// The learning rate of every step of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearningRates {
    pub base: f64,
    pub schedule: Schedule,
    /// Steps of linear warm-up: step `s` (from 0) of them uses `base * (s + 1) / warmup`.
    pub warmup_steps: usize,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
}

impl LearningRates {
    /// The rate for step `step`, counted from 0 over the whole run.
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.base * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.schedule {
            Schedule::Constant => self.base,
            Schedule::Step { step_size, gamma } => {
                let epoch = step / self.steps_per_epoch.max(1);
                self.base * gamma.powi((epoch / step_size.max(1)) as i32)
            }
            Schedule::Cosine { min_learning_rate } => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(2) - 1;
                let done = (step - self.warmup_steps).min(span) as f64 / span as f64;
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * done).cos());
                min_learning_rate + (self.base - min_learning_rate) * cosine
            }
        }
    }
}

/// Splits sample positions `0..count` into training and validation parts: `fraction` of them,
/// at least one and leaving at least one, drawn by a generator seeded with `seed`. Each part
/// keeps ascending order.
pub fn validation_split(count: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..count).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let wanted = ((count as f64) * fraction).round() as usize;
    let validation_size = wanted.clamp(1, count.saturating_sub(1));
    let mut validation = order[..validation_size].to_vec();
    let mut train = order[validation_size..].to_vec();
    validation.sort_unstable();
    train.sort_unstable();
    (train, validation)
}

/// The validation metric early stopping watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Watched {
    /// The validation loss; lower is better.
    Loss,
    /// The validation accuracy; higher is better.
    Accuracy,
}

/// Follows the watched metric epoch by epoch and says when to stop.
#[derive(Debug, Clone)]
pub struct EarlyStopping {
    watched: Watched,
    patience: usize,
    best: Option<(usize, f64)>,
}

/// What to do after an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The best epoch so far: keep its weights.
    Improved,
    /// Not better, but patience is not yet spent.
    Waiting,
    /// `patience` epochs without improvement: stop, and go back to the best epoch's weights.
    Stop { best_epoch: usize },
}

impl EarlyStopping {
    pub fn new(watched: Watched, patience: usize) -> EarlyStopping {
        EarlyStopping { watched, patience, best: None }
    }

    /// Records epoch `epoch`'s validation loss and accuracy. A non-finite value never counts
    /// as an improvement.
    pub fn observe(&mut self, epoch: usize, loss: f64, accuracy: f64) -> Progress {
        let value = match self.watched {
            Watched::Loss => loss,
            Watched::Accuracy => accuracy,
        };
        let better = |best: f64| match self.watched {
            Watched::Loss => value < best,
            Watched::Accuracy => value > best,
        };
        match self.best {
            _ if !value.is_finite() => {}
            None => {
                self.best = Some((epoch, value));
                return Progress::Improved;
            }
            Some((_, best)) if better(best) => {
                self.best = Some((epoch, value));
                return Progress::Improved;
            }
            Some(_) => {}
        }
        match self.best {
            Some((best_epoch, _)) if epoch - best_epoch >= self.patience => {
                Progress::Stop { best_epoch }
            }
            None if epoch >= self.patience => Progress::Stop { best_epoch: epoch },
            _ => Progress::Waiting,
        }
    }

    /// The best epoch and its watched value, once there is one.
    pub fn best(&self) -> Option<(usize, f64)> {
        self.best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(schedule: Schedule, warmup_steps: usize) -> LearningRates {
        LearningRates { base: 0.1, schedule, warmup_steps, steps_per_epoch: 10, total_steps: 50 }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn constant_with_linear_warmup() {
        let rates = rates(Schedule::Constant, 4);
        let first: Vec<f64> = (0..6).map(|step| rates.at(step)).collect();
        for (got, want) in first.iter().zip([0.025, 0.05, 0.075, 0.1, 0.1, 0.1]) {
            assert!(close(*got, want), "{first:?}");
        }
    }

    #[test]
    fn step_decay_multiplies_every_step_size_epochs() {
        let rates = rates(Schedule::Step { step_size: 2, gamma: 0.5 }, 0);
        // Epochs 0-1 at 0.1, 2-3 at 0.05, 4 at 0.025; ten steps an epoch.
        assert!(close(rates.at(0), 0.1) && close(rates.at(19), 0.1));
        assert!(close(rates.at(20), 0.05) && close(rates.at(39), 0.05));
        assert!(close(rates.at(40), 0.025));
    }

    #[test]
    fn cosine_runs_from_the_base_rate_to_the_floor() {
        let rates = rates(Schedule::Cosine { min_learning_rate: 0.01 }, 10);
        assert!(close(rates.at(9), 0.1), "the last warm-up step reaches the base rate");
        assert!(close(rates.at(10), 0.1), "the cosine starts at the base rate");
        // Halfway through the 40 cosine steps (index 10 + 19.5): the mean of base and floor.
        let middle = 0.5 * (rates.at(29) + rates.at(30));
        assert!((middle - 0.055).abs() < 1e-3, "{middle}");
        assert!(close(rates.at(49), 0.01), "the last step is at the floor");
        assert!(close(rates.at(80), 0.01), "and it stays there");
    }

    #[test]
    fn validation_split_is_seeded_disjoint_and_whole() {
        let (train, validation) = validation_split(100, 0.2, 7);
        assert_eq!((train.len(), validation.len()), (80, 20));
        let mut all: Vec<usize> = train.iter().chain(&validation).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(validation_split(100, 0.2, 7), (train.clone(), validation.clone()));
        assert_ne!(validation_split(100, 0.2, 8).1, validation, "another seed, another split");
        // Never an empty part, however small the set or the fraction.
        assert_eq!(validation_split(3, 0.01, 0).1.len(), 1);
        assert_eq!(validation_split(3, 0.99, 0).0.len(), 1);
    }

    #[test]
    fn early_stopping_waits_patience_epochs_then_names_the_best() {
        let mut stopping = EarlyStopping::new(Watched::Loss, 2);
        assert_eq!(stopping.observe(1, 0.9, 0.5), Progress::Improved);
        assert_eq!(stopping.observe(2, 0.7, 0.6), Progress::Improved);
        assert_eq!(stopping.observe(3, 0.8, 0.7), Progress::Waiting);
        assert_eq!(stopping.observe(4, f64::NAN, 0.7), Progress::Stop { best_epoch: 2 });
        assert_eq!(stopping.best(), Some((2, 0.7)));

        let mut stopping = EarlyStopping::new(Watched::Accuracy, 1);
        assert_eq!(stopping.observe(1, 0.9, 0.5), Progress::Improved);
        assert_eq!(stopping.observe(2, 0.1, 0.5), Progress::Stop { best_epoch: 1 }, "a tie");
    }
}
