//! The training loop: mini-batch gradient descent over a shuffled training set.
//!
//! Everything random (weight initialisation, the order of samples in each epoch) draws from
//! libtorch's generator, seeded once from `train.seed` before the model is built; with the same
//! seed, thread count and data, two runs compute the same numbers.

use std::time::Instant;

use serde::Serialize;
use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Tensor};

use crate::config::{Loss, Optimizer, TrainConfig};
use crate::model;
use crate::ui::Ui;

/// A dataset as two tensors on the training device.
pub struct Batches<'a> {
    pub images: &'a Tensor,
    pub labels: &'a Tensor,
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochStats {
    pub epoch: usize,
    /// The mean of the batch losses over the epoch.
    pub mean_loss: f64,
}

#[derive(Debug, Clone)]
pub struct TrainReport {
    pub epochs: Vec<EpochStats>,
    pub seconds: f64,
    pub samples_per_second: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "training diverged: the loss became {loss} at epoch {epoch}, step {step} (last finite \
         loss: {last_finite})\nhint: lower train.learning_rate, or check the data's \
         normalisation (data.mean, data.std)"
    )]
    Diverged { epoch: usize, step: usize, loss: f64, last_finite: String },
    #[error("libtorch failed while training: {0}")]
    Torch(#[from] tch::TchError),
}

/// Trains `model`, whose parameters live in `vs`, for the configured epochs.
pub fn train(
    vs: &nn::VarStore,
    model: &nn::Sequential,
    data: Batches<'_>,
    config: &TrainConfig,
    ui: &Ui,
) -> Result<TrainReport, TrainError> {
    let mut optimizer = match config.optimizer {
        Optimizer::Sgd { momentum } => {
            nn::Sgd { momentum, wd: config.weight_decay, ..Default::default() }
                .build(vs, config.learning_rate)?
        }
        Optimizer::Adam => nn::Adam { wd: config.weight_decay, ..Default::default() }
            .build(vs, config.learning_rate)?,
    };

    let samples = data.images.size()[0];
    let batch_size = config.batch_size as i64;
    let steps_per_epoch = (samples + batch_size - 1) / batch_size;
    let started = Instant::now();
    let mut epochs = Vec::with_capacity(config.epochs);
    let mut last_finite: Option<f64> = None;

    for epoch in 1..=config.epochs {
        let bar = ui.bar(steps_per_epoch as u64, &format!("epoch {epoch}/{}", config.epochs));
        let order = Tensor::randperm(samples, (Kind::Int64, data.images.device()));
        let mut loss_sum = 0.0;
        for step in 0..steps_per_epoch {
            let start = step * batch_size;
            let indices = order.narrow(0, start, batch_size.min(samples - start));
            let images = data.images.index_select(0, &indices);
            let labels = data.labels.index_select(0, &indices);
            let logits = model::forward(model, &images);
            let loss = match config.loss {
                Loss::CrossEntropy => logits.cross_entropy_for_logits(&labels),
            };
            optimizer.backward_step(&loss);

            let value = f64::try_from(&loss)?;
            if !value.is_finite() {
                bar.finish_and_clear();
                return Err(TrainError::Diverged {
                    epoch,
                    step: step as usize + 1,
                    loss: value,
                    last_finite: last_finite
                        .map_or("none".to_string(), |loss| format!("{loss:.4}")),
                });
            }
            last_finite = Some(value);
            loss_sum += value;
            bar.inc(1);
            bar.set_message(format!("loss {:.4}", loss_sum / (step + 1) as f64));
        }
        bar.finish_and_clear();
        let mean_loss = loss_sum / steps_per_epoch as f64;
        ui.status(format!("epoch {epoch}/{}: mean loss {mean_loss:.4}", config.epochs));
        epochs.push(EpochStats { epoch, mean_loss });
    }

    let seconds = started.elapsed().as_secs_f64();
    let seen = samples as f64 * config.epochs as f64;
    Ok(TrainReport { epochs, seconds, samples_per_second: seen / seconds.max(f64::EPSILON) })
}
