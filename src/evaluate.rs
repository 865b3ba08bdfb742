//! Inference over the test set: one [`Prediction`] per sample.

use tch::nn;
use tch::{Kind, Tensor};

use crate::data::Sample;
use crate::metrics::{Prediction, TOP_K};
use crate::model;

/// Samples per forward pass. Evaluation keeps no gradients, so this only bounds memory.
const BATCH: i64 = 512;

/// Predicts every image of `images` (on the model's device) and pairs the results with
/// `samples`, in order.
pub fn predict(
    model: &nn::Sequential,
    images: &Tensor,
    samples: &[Sample],
) -> Result<Vec<Prediction>, tch::TchError> {
    let total = images.size()[0];
    let mut predictions = Vec::with_capacity(samples.len());
    tch::no_grad(|| {
        let mut start = 0;
        while start < total {
            let length = BATCH.min(total - start);
            let batch_samples = &samples[start as usize..(start + length) as usize];
            let logits = model::forward(model, &images.narrow(0, start, length));
            let log_probabilities = logits.log_softmax(-1, Kind::Float).to_device(tch::Device::Cpu);
            let labels: Vec<i64> = batch_samples.iter().map(|sample| sample.label as i64).collect();
            let labels = Tensor::from_slice(&labels);

            let (best, predicted) = log_probabilities.max_dim(-1, false);
            let losses =
                -log_probabilities.gather(-1, &labels.unsqueeze(-1), false).squeeze_dim(-1);
            let classes = log_probabilities.size()[1];
            let ranked = TOP_K.min(classes as usize) as i64;
            let (_, top) = log_probabilities.topk(ranked, -1, true, true);
            let best = Vec::<f32>::try_from(&best)?;
            let predicted = Vec::<i64>::try_from(&predicted)?;
            let losses = Vec::<f32>::try_from(&losses)?;
            let top = Vec::<i64>::try_from(&top.flatten(0, -1))?;

            for (index, sample) in batch_samples.iter().enumerate() {
                let row = &top[index * ranked as usize..(index + 1) * ranked as usize];
                predictions.push(Prediction {
                    id: sample.id.clone(),
                    label: sample.label,
                    prediction: predicted[index] as usize,
                    confidence: f64::from(best[index]).exp(),
                    loss: f64::from(losses[index]),
                    top: row.iter().map(|&class| class as usize).collect(),
                });
            }
            start += length;
        }
        Ok(predictions)
    })
}
