//! The training loop: mini-batch gradient descent over a shuffled training set.
//!
//! Everything random (weight initialisation, the order of samples in each epoch) draws from
//! libtorch's generator, seeded once from `train.seed` before the model is built; with the same
//! seed, thread count and data, two runs compute the same numbers.

use std::time::Instant;

use serde::Serialize;
use tch::nn::{self, OptimizerConfig};
use tch::{Kind, Tensor};

use crate::config::{Augment, Loss, Optimizer, TrainConfig};
use crate::model::Network;
use crate::schedule::{EarlyStopping, LearningRates, Progress};
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
    /// The learning rate of the epoch's last step.
    pub learning_rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_accuracy: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct TrainReport {
    pub epochs: Vec<EpochStats>,
    /// Set when early stopping ended training: the epoch whose weights were kept.
    pub best_epoch: Option<usize>,
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

/// The training loss of a batch.
fn loss_of(logits: &Tensor, labels: &Tensor, config: &TrainConfig) -> Tensor {
    match config.loss {
        // Without smoothing, the same arithmetic as always, so that results stay bit-identical.
        Loss::CrossEntropy if config.label_smoothing == 0.0 => {
            logits.cross_entropy_for_logits(labels)
        }
        Loss::CrossEntropy => logits.cross_entropy_loss::<Tensor>(
            labels,
            None,
            tch::Reduction::Mean,
            -100,
            config.label_smoothing,
        ),
        Loss::BinaryCrossEntropy => binary_loss(logits, labels),
        Loss::Mse => logits.squeeze_dim(-1).mse_loss(labels, tch::Reduction::Mean),
    }
}

/// Binary cross-entropy of one logit per sample against labels 0 and 1.
fn binary_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    logits.squeeze_dim(-1).binary_cross_entropy_with_logits::<Tensor>(
        &labels.to_kind(Kind::Float),
        None,
        None,
        tch::Reduction::Mean,
    )
}

/// The predicted class of each sample: the best of the class logits, or for one binary
/// logit, class 1 when it is positive.
pub fn predicted_classes(logits: &Tensor) -> Tensor {
    if logits.size().last() == Some(&1) {
        logits.squeeze_dim(-1).gt(0.0).to_kind(Kind::Int64)
    } else {
        logits.argmax(-1, false)
    }
}

/// Trains `model`, whose parameters live in `vs`, for the configured epochs, or until early
/// stopping on `validation` says to stop (the best epoch's weights are then put back).
pub fn train(
    vs: &nn::VarStore,
    model: &Network,
    data: Batches<'_>,
    validation: Option<Batches<'_>>,
    config: &TrainConfig,
    ui: &Ui,
) -> Result<TrainReport, TrainError> {
    let wd = config.weight_decay;
    let mut optimizer = match config.optimizer {
        Optimizer::Sgd { momentum, nesterov } => {
            nn::Sgd { momentum, nesterov, wd, ..Default::default() }
                .build(vs, config.learning_rate)?
        }
        Optimizer::Adam => nn::Adam { wd, ..Default::default() }.build(vs, config.learning_rate)?,
        Optimizer::AdamW => {
            nn::AdamW { wd, ..Default::default() }.build(vs, config.learning_rate)?
        }
    };

    let samples = data.images.size()[0];
    let batch_size = config.batch_size as i64;
    let steps_per_epoch = (samples + batch_size - 1) / batch_size;
    let rates = LearningRates {
        base: config.learning_rate,
        schedule: config.schedule,
        warmup_steps: config.warmup_epochs * steps_per_epoch as usize,
        steps_per_epoch: steps_per_epoch as usize,
        total_steps: config.epochs * steps_per_epoch as usize,
    };
    let mut stopping =
        config.early_stopping.map(|rule| EarlyStopping::new(rule.metric, rule.patience));
    let mut best_weights: Option<Vec<(String, Tensor)>> = None;
    let mut best_epoch = None;
    let started = Instant::now();
    let mut epochs = Vec::with_capacity(config.epochs);
    let mut last_finite: Option<f64> = None;
    let mut step_in_run = 0;

    for epoch in 1..=config.epochs {
        let bar = ui.bar(steps_per_epoch as u64, &format!("epoch {epoch}/{}", config.epochs));
        let order = Tensor::randperm(samples, (Kind::Int64, data.images.device()));
        let mut loss_sum = 0.0;
        let mut learning_rate = config.learning_rate;
        for step in 0..steps_per_epoch {
            learning_rate = rates.at(step_in_run);
            optimizer.set_lr(learning_rate);
            step_in_run += 1;
            let start = step * batch_size;
            let indices = order.narrow(0, start, batch_size.min(samples - start));
            let images = augment(&data.images.index_select(0, &indices), config.augment)?;
            let labels = data.labels.index_select(0, &indices);
            let logits = model.forward(&images)?;
            let loss = loss_of(&logits, &labels, config);
            match config.clip_grad_norm {
                Some(max) => optimizer.backward_step_clip_norm(&loss, max),
                None => optimizer.backward_step(&loss),
            }

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
        let mut stats = EpochStats {
            epoch,
            mean_loss,
            learning_rate,
            validation_loss: None,
            validation_accuracy: None,
        };
        let mut stop = false;
        if let Some(validation) = &validation {
            let (validation_loss, validation_accuracy) = evaluate(model, validation, config)?;
            stats.validation_loss = Some(validation_loss);
            stats.validation_accuracy =
                validation_accuracy.is_finite().then_some(validation_accuracy);
            let accuracy = stats
                .validation_accuracy
                .map_or(String::new(), |accuracy| format!(", accuracy {accuracy:.4}"));
            ui.status(format!(
                "epoch {epoch}/{}: mean loss {mean_loss:.4}, validation loss \
                 {validation_loss:.4}{accuracy}",
                config.epochs
            ));
            if let Some(stopping) = stopping.as_mut() {
                match stopping.observe(epoch, validation_loss, validation_accuracy) {
                    Progress::Improved => best_weights = Some(snapshot(vs)),
                    Progress::Waiting => {}
                    Progress::Stop { best_epoch: best } => {
                        ui.status(format!(
                            "early stopping after epoch {epoch}: no better validation result \
                             since epoch {best}; keeping epoch {best}'s weights"
                        ));
                        best_epoch = Some(best);
                        stop = true;
                    }
                }
            }
        } else {
            ui.status(format!("epoch {epoch}/{}: mean loss {mean_loss:.4}", config.epochs));
        }
        epochs.push(stats);
        if stop {
            break;
        }
    }
    // Training ran to the end: the weights to keep are still the best epoch's.
    if let (Some(stopping), None) = (&stopping, best_epoch) {
        best_epoch = stopping.best().map(|(epoch, _)| epoch).filter(|&e| e != epochs.len());
    }
    if let (Some(best), Some(_)) = (&best_weights, best_epoch) {
        restore(vs, best);
    }

    let seconds = started.elapsed().as_secs_f64();
    let seen = samples as f64 * epochs.len() as f64;
    Ok(TrainReport {
        epochs,
        best_epoch,
        seconds,
        samples_per_second: seen / seconds.max(f64::EPSILON),
    })
}

/// Applies `[train.augment]` to a batch of images (`[n, channels, height, width]`), drawing
/// from libtorch's generator, which `train.seed` seeds: each image is mirrored with
/// probability one half, and shifted within a zero border of `crop_padding` pixels.
pub fn augment(images: &Tensor, augment: Augment) -> Result<Tensor, tch::TchError> {
    if !augment.is_active() {
        return Ok(images.shallow_clone());
    }
    let size = images.size();
    let (count, height, width) = (size[0], size[2], size[3]);
    let mut batch = images.shallow_clone();
    if augment.flip {
        let mirror = Tensor::rand([count], (Kind::Float, images.device())).lt(0.5);
        batch = batch.flip([3]).where_self(&mirror.view([count, 1, 1, 1]), &batch);
    }
    let padding = i64::from(augment.crop_padding);
    if padding > 0 {
        let padded = batch.constant_pad_nd([padding, padding, padding, padding]);
        let span = 2 * padding + 1;
        let offsets = Tensor::randint(span, [count, 2], (Kind::Int64, tch::Device::Cpu));
        let offsets = Vec::<i64>::try_from(offsets.flatten(0, -1))?;
        let crops: Vec<Tensor> = offsets
            .chunks_exact(2)
            .enumerate()
            .map(|(index, offset)| {
                padded.get(index as i64).narrow(1, offset[0], height).narrow(2, offset[1], width)
            })
            .collect();
        batch = Tensor::stack(&crops, 0);
    }
    Ok(batch)
}

/// Mean loss and accuracy on a held-out set, without gradients.
fn evaluate(
    model: &Network,
    data: &Batches<'_>,
    config: &TrainConfig,
) -> Result<(f64, f64), TrainError> {
    tch::no_grad(|| {
        let logits = model.forward(data.images)?;
        let loss = match config.loss {
            Loss::CrossEntropy => logits.cross_entropy_for_logits(data.labels),
            Loss::BinaryCrossEntropy => binary_loss(&logits, data.labels),
            // A regression has a loss but no accuracy.
            Loss::Mse => {
                let loss = f64::try_from(loss_of(&logits, data.labels, config))?;
                return Ok((loss, f64::NAN));
            }
        };
        let loss = f64::try_from(loss)?;
        let correct = predicted_classes(&logits).eq_tensor(data.labels).to_kind(Kind::Float);
        let accuracy = f64::try_from(correct.mean(Kind::Float))?;
        Ok((loss, accuracy))
    })
}

fn snapshot(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    tch::no_grad(|| {
        vs.variables().into_iter().map(|(name, tensor)| (name, tensor.detach().copy())).collect()
    })
}

fn restore(vs: &nn::VarStore, weights: &[(String, Tensor)]) {
    let variables = vs.variables();
    tch::no_grad(|| {
        for (name, saved) in weights {
            if let Some(variable) = variables.get(name) {
                variable.shallow_clone().copy_(saved);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Tensor {
        // Two 1×2×3 images: 0..6 and 6..12.
        Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).view([2, 1, 2, 3])
    }

    #[test]
    fn no_augmentation_leaves_the_batch_alone() {
        let images = batch();
        assert!(augment(&images, Augment::default()).unwrap().equal(&images));
    }

    #[test]
    fn flips_mirror_whole_images_and_are_seeded() {
        tch::manual_seed(11);
        let flipped = augment(&batch(), Augment { flip: true, crop_padding: 0 }).unwrap();
        let mirrored = batch().flip([3]);
        for index in 0..2 {
            let image = flipped.get(index);
            assert!(image.equal(&batch().get(index)) || image.equal(&mirrored.get(index)));
        }
        tch::manual_seed(11);
        let again = augment(&batch(), Augment { flip: true, crop_padding: 0 }).unwrap();
        assert!(again.equal(&flipped), "the same seed, the same flips");
    }

    #[test]
    fn padded_crops_keep_the_size_and_shift_the_content() {
        tch::manual_seed(3);
        let shifted = augment(&batch(), Augment { flip: false, crop_padding: 1 }).unwrap();
        assert_eq!(shifted.size(), [2, 1, 2, 3]);
        // Every value is from the image or the zero border; the sum can only drop.
        let original = f64::try_from(batch().get(1).sum(Kind::Float)).unwrap();
        let moved = f64::try_from(shifted.get(1).sum(Kind::Float)).unwrap();
        assert!(moved <= original);
        let values = Vec::<f32>::try_from(shifted.get(1).flatten(0, -1)).unwrap();
        assert!(values.iter().all(|v| *v == 0.0 || (6.0..12.0).contains(v)), "{values:?}");
    }
}
