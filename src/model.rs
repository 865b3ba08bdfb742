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
        ModelConfig::Linear | ModelConfig::Torchscript { .. } => &Vec::new(),
        ModelConfig::Resnet { channels: stages, blocks } => {
            return residual_network(vs, channels, stages, *blocks, classes);
        }
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

/// The most groups, up to 8, that divide `channels` evenly: group normalisation works at any
/// batch size and needs no train/eval switch, unlike batch normalisation.
fn groups(channels: i64) -> i64 {
    (1..=8).rev().find(|groups| channels % groups == 0).unwrap_or(1)
}

fn norm(vs: nn::Path, channels: i64) -> nn::GroupNorm {
    nn::group_norm(vs, groups(channels), channels, Default::default())
}

/// Two 3×3 convolutions with a skip connection; a 1×1 convolution matches the skip's shape
/// when the block changes the width or the stride.
#[derive(Debug)]
struct Residual {
    first: nn::Conv2D,
    first_norm: nn::GroupNorm,
    second: nn::Conv2D,
    second_norm: nn::GroupNorm,
    shortcut: Option<(nn::Conv2D, nn::GroupNorm)>,
}

impl Residual {
    fn new(vs: &nn::Path, input: i64, output: i64, stride: i64) -> Residual {
        let conv =
            |stride| nn::ConvConfig { padding: 1, stride, bias: false, ..Default::default() };
        let shortcut = (stride != 1 || input != output).then(|| {
            let config = nn::ConvConfig { stride, bias: false, ..Default::default() };
            (
                nn::conv2d(vs / "shortcut", input, output, 1, config),
                norm(vs / "shortcut_norm", output),
            )
        });
        Residual {
            first: nn::conv2d(vs / "conv1", input, output, 3, conv(stride)),
            first_norm: norm(vs / "norm1", output),
            second: nn::conv2d(vs / "conv2", output, output, 3, conv(1)),
            second_norm: norm(vs / "norm2", output),
            shortcut,
        }
    }
}

impl Module for Residual {
    fn forward(&self, xs: &tch::Tensor) -> tch::Tensor {
        let main = xs
            .apply(&self.first)
            .apply(&self.first_norm)
            .relu()
            .apply(&self.second)
            .apply(&self.second_norm);
        let skip = match &self.shortcut {
            Some((conv, norm)) => xs.apply(conv).apply(norm),
            None => xs.shallow_clone(),
        };
        (main + skip).relu()
    }
}

fn residual_network(
    vs: &nn::Path,
    input_channels: i64,
    stages: &[usize],
    blocks: usize,
    classes: usize,
) -> nn::Sequential {
    let stem_width = stages[0] as i64;
    let stem = nn::ConvConfig { padding: 1, bias: false, ..Default::default() };
    let mut model = nn::seq()
        .add(nn::conv2d(vs / "stem", input_channels, stem_width, 3, stem))
        .add(norm(vs / "stem_norm", stem_width))
        .add_fn(|x| x.relu())
        // As ResNet's stem does, halve the map before the stages (when it is big enough), so
        // that their receptive field covers the image before the global pooling.
        .add_fn(|x| {
            if x.size()[2] >= 2 && x.size()[3] >= 2 {
                x.max_pool2d_default(2)
            } else {
                x.shallow_clone()
            }
        });
    let mut depth = stem_width;
    for (stage, &width) in stages.iter().enumerate() {
        for block in 0..blocks {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let path = vs / format!("stage{stage}") / format!("block{block}");
            model = model.add(Residual::new(&path, depth, width as i64, stride));
            depth = width as i64;
        }
    }
    model.add_fn(|x| x.adaptive_avg_pool2d([1, 1]).flatten(1, -1)).add(nn::linear(
        vs / "classifier",
        depth,
        classes as i64,
        Default::default(),
    ))
}

/// A model ready to run: one of the built-in architectures, or a TorchScript module whose
/// parameters live in the same variable store.
#[derive(Debug)]
pub enum Network {
    Builtin(nn::Sequential),
    Script(tch::TrainableCModule),
}

impl Network {
    /// Runs the model on a batch. `train` switches dropout and batch normalisation of a
    /// TorchScript module to their training behaviour.
    pub fn forward(&self, batch: &tch::Tensor) -> Result<tch::Tensor, tch::TchError> {
        match self {
            Network::Builtin(layers) => Ok(layers.forward(batch)),
            Network::Script(module) => module.forward_ts(&[batch]),
        }
    }

    /// Puts a TorchScript module in training or evaluation mode; built-in models have no
    /// layers that behave differently.
    pub fn set_training(&mut self, training: bool) {
        if let Network::Script(module) = self {
            if training { module.set_train() } else { module.set_eval() }
        }
    }
}

/// Builds the configured model in `vs`; `input` is one image's `[channels, height, width]`.
/// `base` is the folder TorchScript paths are relative to.
pub fn network(
    vs: &nn::Path,
    config: &ModelConfig,
    input: [usize; 3],
    classes: usize,
    base: &std::path::Path,
) -> Result<Network, ScriptError> {
    match config {
        ModelConfig::Torchscript { path } => {
            Ok(Network::Script(load_script(vs, &base.join(path))?))
        }
        _ => Ok(Network::Builtin(build(vs, config, input, classes))),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error(
        "the TorchScript model {} does not exist\nhint: model.path is relative to the config's \
         folder",
        .0.display()
    )]
    Missing(std::path::PathBuf),
    #[error(
        "the TorchScript model {} is empty\nhint: save it with \
         torch.jit.save(torch.jit.script(model), path)",
        .0.display()
    )]
    Empty(std::path::PathBuf),
    #[error(
        "{} is not a TorchScript file ({reason})\nhint: export the model with \
         torch.jit.save(torch.jit.script(model), path) or torch.jit.trace; a state_dict saved \
         with torch.save is not enough",
        path.display()
    )]
    NotTorchScript { path: std::path::PathBuf, reason: String },
    #[error(
        "the TorchScript model {} uses an operator libtorch {} lacks ({reason})\nhint: export it \
         with a PyTorch no newer than {}",
        path.display(), crate::torch::LIBTORCH_VERSION, crate::torch::LIBTORCH_VERSION
    )]
    UnknownOperator { path: std::path::PathBuf, reason: String },
}

/// The bytes of a TorchScript file, with the errors of a missing or empty one.
pub fn read_script(path: &std::path::Path) -> Result<Vec<u8>, ScriptError> {
    match std::fs::read(path) {
        Err(_) => Err(ScriptError::Missing(path.to_path_buf())),
        Ok(bytes) if bytes.is_empty() => Err(ScriptError::Empty(path.to_path_buf())),
        Ok(bytes) => Ok(bytes),
    }
}

/// Loads a TorchScript module, registering its parameters in `vs` (trainable where they
/// require grad).
pub fn load_script(
    vs: &nn::Path,
    path: &std::path::Path,
) -> Result<tch::TrainableCModule, ScriptError> {
    match std::fs::metadata(path) {
        Err(_) => return Err(ScriptError::Missing(path.to_path_buf())),
        Ok(metadata) if metadata.len() == 0 => return Err(ScriptError::Empty(path.to_path_buf())),
        Ok(_) => {}
    }
    tch::TrainableCModule::load(path, vs.clone()).map_err(|error| {
        let text = error.to_string();
        let reason = text.lines().next().unwrap_or_default().trim().to_string();
        let unknown = ["Unknown builtin op", "Unknown type name", "Unknown function"];
        if unknown.iter().any(|marker| text.contains(marker)) {
            ScriptError::UnknownOperator { path: path.to_path_buf(), reason }
        } else {
            ScriptError::NotTorchScript { path: path.to_path_buf(), reason }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_shape(config: ModelConfig, input: [usize; 3]) -> Vec<i64> {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let model = build(&vs.root(), &config, input, 7);
        let [c, h, w] = input.map(|size| size as i64);
        model.forward(&tch::Tensor::zeros([3, c, h, w], tch::kind::FLOAT_CPU)).size()
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
        assert_eq!(output_shape(ModelConfig::Linear, [3, 5, 5]), [3, 7]);
        let resnet = ModelConfig::Resnet { channels: vec![8, 16], blocks: 2 };
        assert_eq!(output_shape(resnet.clone(), [1, 28, 28]), [3, 7]);
        assert_eq!(output_shape(resnet, [3, 7, 9]), [3, 7], "odd sizes pool too");
    }
}
