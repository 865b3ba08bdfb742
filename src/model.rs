//! The built-in architectures, assembled from the `[model]` section.

use tch::nn::{self, Module};

use crate::config::ModelConfig;

/// Builds the model's layers in `vs`. `input` is one image's `[channels, height, width]`.
pub fn build(
    vs: &nn::Path,
    config: &ModelConfig,
    input: [usize; 3],
    classes: usize,
) -> nn::Sequential {
    let [channels, height, width] = input.map(|size| size as i64);
    let mut model = nn::seq();
    let mut features = channels * height * width;
    let hidden = match config {
        ModelConfig::Mlp { hidden } => hidden,
        ModelConfig::Cnn { channels: blocks, hidden } => {
            let (mut depth, mut height, mut width) = (channels, height, width);
            let conv = nn::ConvConfig { padding: 1, ..Default::default() };
            for (index, &out) in blocks.iter().enumerate() {
                let out = out as i64;
                model = model
                    .add(nn::conv2d(vs / format!("conv{index}"), depth, out, 3, conv))
                    .add_fn(|x| x.relu());
                // Halve the feature map while it is big enough to halve.
                if height >= 2 && width >= 2 {
                    model = model.add_fn(|x| x.max_pool2d_default(2));
                    (height, width) = (height / 2, width / 2);
                }
                depth = out;
            }
            features = depth * height * width;
            hidden
        }
    };

    model = model.add_fn(|x| x.flatten(1, -1));
    for (index, &size) in hidden.iter().enumerate() {
        let size = size as i64;
        model = model
            .add(nn::linear(vs / format!("fc{index}"), features, size, Default::default()))
            .add_fn(|x| x.relu());
        features = size;
    }
    model.add(nn::linear(vs / "classifier", features, classes as i64, Default::default()))
}

/// Runs `model` on a batch.
pub fn forward(model: &nn::Sequential, batch: &tch::Tensor) -> tch::Tensor {
    model.forward(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_shape(config: ModelConfig, input: [usize; 3]) -> Vec<i64> {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = build(&vs.root(), &config, input, 7);
        let [c, h, w] = input.map(|size| size as i64);
        forward(&model, &tch::Tensor::zeros([3, c, h, w], tch::kind::FLOAT_CPU)).size()
    }

    #[test]
    fn every_architecture_ends_in_one_logit_per_class() {
        assert_eq!(output_shape(ModelConfig::Mlp { hidden: vec![] }, [1, 4, 4]), [3, 7]);
        assert_eq!(output_shape(ModelConfig::Mlp { hidden: vec![8, 4] }, [3, 5, 5]), [3, 7]);
        let cnn = ModelConfig::Cnn { channels: vec![4, 8, 8], hidden: vec![16] };
        // 28 → 14 → 7 → 3 after three pools.
        assert_eq!(output_shape(cnn.clone(), [1, 28, 28]), [3, 7]);
        // A 1×1 image cannot be pooled; the blocks keep its size.
        assert_eq!(output_shape(cnn, [1, 1, 1]), [3, 7]);
    }
}
