//! Inference over the test set: one [`Prediction`] per sample.

use tch::nn;
use tch::{Kind, Tensor};

use crate::data::Sample;
use crate::metrics::{Prediction, TOP_K};
use crate::model::{self, Network};

/// Samples per forward pass. Evaluation keeps no gradients, so this only bounds memory.
const BATCH: i64 = 512;

/// Predicts every image of `images` (on the model's device) and pairs the results with
/// `samples`, in order.
pub fn predict(
    model: &Network,
    images: &Tensor,
    samples: &[Sample],
) -> Result<Vec<Prediction>, tch::TchError> {
    let mut predictions = Vec::with_capacity(samples.len());
    in_batches(model, images, |start, outputs| {
        let length = outputs.size()[0] as usize;
        let batch_samples = &samples[start..start + length];
        let logits = two_class_logits(outputs);
        let log_probabilities = logits.log_softmax(-1, Kind::Float).to_device(tch::Device::Cpu);
        let labels: Vec<i64> = batch_samples.iter().map(|sample| sample.label as i64).collect();
        let labels = Tensor::from_slice(&labels);

        let (best, predicted) = log_probabilities.max_dim(-1, false);
        let losses = -log_probabilities.gather(-1, &labels.unsqueeze(-1), false).squeeze_dim(-1);
        let classes = log_probabilities.size()[1];
        let ranked = TOP_K.min(classes as usize);
        let (_, top) = log_probabilities.topk(ranked as i64, -1, true, true);
        let best = Vec::<f32>::try_from(&best)?;
        let predicted = Vec::<i64>::try_from(&predicted)?;
        let losses = Vec::<f32>::try_from(&losses)?;
        let top = Vec::<i64>::try_from(&top.flatten(0, -1))?;

        for (index, sample) in batch_samples.iter().enumerate() {
            let row = &top[index * ranked..(index + 1) * ranked];
            predictions.push(Prediction {
                id: sample.id.clone(),
                label: sample.label,
                prediction: predicted[index] as usize,
                confidence: f64::from(best[index]).exp(),
                loss: f64::from(losses[index]),
                top: row.iter().map(|&class| class as usize).collect(),
            });
        }
        Ok(())
    })?;
    Ok(predictions)
}

/// Runs `model` over `images` in batches of `BATCH`, without gradients, handing each batch's
/// outputs to `each` with the position of its first sample.
fn in_batches(
    model: &Network,
    images: &Tensor,
    mut each: impl FnMut(usize, Tensor) -> Result<(), tch::TchError>,
) -> Result<(), tch::TchError> {
    let total = images.size()[0];
    tch::no_grad(|| {
        let mut start = 0;
        while start < total {
            let length = BATCH.min(total - start);
            each(start as usize, model.forward(&images.narrow(0, start, length))?)?;
            start += length;
        }
        Ok(())
    })
}

/// Predicts a regression's value for every row of `images` and pairs it with `samples` and
/// their `targets`, in order.
pub fn predict_regression(
    model: &Network,
    images: &Tensor,
    samples: &[Sample],
    targets: &[f32],
) -> Result<Vec<crate::metrics::RegressionPrediction>, tch::TchError> {
    let mut predictions = Vec::with_capacity(samples.len());
    in_batches(model, images, |start, outputs| {
        let values = Vec::<f32>::try_from(&outputs.flatten(0, -1).to_device(tch::Device::Cpu))?;
        for (offset, value) in values.iter().enumerate() {
            let index = start + offset;
            let (target, prediction) = (f64::from(targets[index]), f64::from(*value));
            predictions.push(crate::metrics::RegressionPrediction {
                id: samples[index].id.clone(),
                target,
                prediction,
                loss: (prediction - target).powi(2),
            });
        }
        Ok(())
    })?;
    Ok(predictions)
}

/// A binary model's one logit `z` as the two class logits `[0, z]`: their softmax is
/// `[1 - sigmoid(z), sigmoid(z)]`, so the per-sample cross-entropy is the binary one, and
/// everything downstream sees two classes.
fn two_class_logits(logits: Tensor) -> Tensor {
    if logits.size().last() == Some(&1) {
        Tensor::cat(&[logits.zeros_like(), logits], 1)
    } else {
        logits
    }
}

/// What `modelci evaluate` wrote.
#[derive(Debug)]
pub struct Evaluated {
    /// Classification or regression metrics, as in `metrics.json`.
    pub metrics: serde_json::Value,
    pub output: std::path::PathBuf,
    pub samples: usize,
    /// One line: what was evaluated and the headline metrics.
    pub summary: String,
}

/// `modelci evaluate`: the checkpoint in `checkpoint_dir` (a run folder or the output of
/// `modelci train`) on the dataset at `data`, which must have the checkpoint's classes; writes
/// `metrics.json` and `predictions.jsonl` to `output`.
pub fn evaluate_checkpoint(
    checkpoint_dir: &std::path::Path,
    data: &std::path::Path,
    output: &std::path::Path,
    device: crate::config::Device,
    ui: &crate::ui::Ui,
) -> anyhow::Result<Evaluated> {
    use crate::checkpoint::{self, Checkpoint};
    use crate::pipeline;

    let started = std::time::Instant::now();
    let description = Checkpoint::read(checkpoint_dir)?;
    let device = crate::torch::choose_device(device)?;
    let data_config = description.data_config(data);
    let expected = crate::data::Listing {
        root: checkpoint_dir.to_path_buf(),
        classes: description.classes.clone(),
        samples: Vec::new(),
        skipped: Vec::new(),
    };
    let scaling = description.input.standardization.as_ref();
    let dataset = pipeline::load_dataset(data, &data_config, Some(&expected), scaling, ui)?;
    let load_seconds = started.elapsed().as_secs_f64();

    let mut vs = nn::VarStore::new(device.device);
    let outputs = description.outputs.unwrap_or(description.classes.len());
    let mut network =
        model::network(&vs.root(), &description.model, dataset.shape, outputs, checkpoint_dir)?;
    network.set_training(false);
    checkpoint::load_weights(&mut vs, checkpoint_dir)?;
    let started = std::time::Instant::now();
    let images = pipeline::images_tensor(&dataset, device.device);
    let (metrics, confusion, predictions, status) =
        pipeline::evaluate_set(&network, &images, &dataset, &description.classes)?;
    let evaluate_seconds = started.elapsed().as_secs_f64();

    let file = serde_json::json!({
        "schema": crate::gate::METRICS_SCHEMA,
        "metrics": metrics,
        "classes": description.classes,
        "confusion_matrix": confusion,
        "metadata": {
            "modelci_version": env!("CARGO_PKG_VERSION"),
            "libtorch_version": crate::torch::LIBTORCH_VERSION,
            "device": device.name,
            "checkpoint": checkpoint_dir.display().to_string(),
            "model": description.model,
            "datasets": { "test": dataset.len(), "classes": description.classes.len() },
            "durations": { "load_seconds": load_seconds, "evaluate_seconds": evaluate_seconds },
        },
    });
    crate::atomic::write(&output.join(pipeline::METRICS_FILE), &pipeline::to_json(&file)?)?;
    crate::atomic::write(&output.join(pipeline::PREDICTIONS_FILE), &predictions)?;
    Ok(Evaluated { metrics, output: output.to_path_buf(), samples: dataset.len(), summary: status })
}
