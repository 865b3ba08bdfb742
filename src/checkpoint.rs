//! Checkpoints: the trained parameters as safetensors (`model.safetensors`) with what is needed
//! to use them beside it (`model.json`): the architecture, the input transforms and the class
//! map. `modelci evaluate --checkpoint DIR` works from these two files alone.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tch::nn;

use crate::config::{Color, DataConfig, Layout, ModelConfig};

/// The trained parameters, in the safetensors format.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// What the parameters mean: [`Checkpoint`] as JSON.
pub const DESCRIPTION_FILE: &str = "model.json";
/// A `torchscript` model's module, copied in so that the checkpoint stands alone.
pub const SCRIPT_FILE: &str = "model.pt";
const SCHEMA: &str = "modelci.checkpoint/v1";

/// `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub schema: String,
    pub model: ModelConfig,
    pub input: Input,
    /// Class names; a label is an index into this.
    pub classes: Vec<String>,
    /// The model's outputs: one per class, or 1 for a binary model (the second class's logit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<usize>,
    pub modelci_version: String,
    pub libtorch_version: String,
}

/// How images are read and normalised before the model sees them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub layout: Layout,
    pub color: Color,
    pub image_size: [u32; 2],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub center_crop: Option<[u32; 2]>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// The columns of a `csv` dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<crate::tabular::CsvConfig>,
    /// The feature scaling fitted on the training rows, applied to every set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standardization: Option<crate::tabular::Standardization>,
}

impl Checkpoint {
    pub fn new(
        model: &ModelConfig,
        data: &DataConfig,
        classes: &[String],
        outputs: usize,
        standardization: Option<&crate::tabular::Standardization>,
    ) -> Checkpoint {
        // A TorchScript module travels with the checkpoint, under a name of its own.
        let model = match model {
            ModelConfig::Torchscript { .. } => {
                ModelConfig::Torchscript { path: SCRIPT_FILE.into() }
            }
            other => other.clone(),
        };
        Checkpoint {
            schema: SCHEMA.to_string(),
            model,
            input: Input {
                layout: data.layout,
                color: data.color,
                image_size: data.image_size,
                center_crop: data.center_crop,
                mean: data.mean.clone(),
                std: data.std.clone(),
                csv: data.csv.clone(),
                standardization: standardization.cloned(),
            },
            classes: classes.to_vec(),
            outputs: (outputs != classes.len()).then_some(outputs),
            modelci_version: env!("CARGO_PKG_VERSION").to_string(),
            libtorch_version: crate::torch::LIBTORCH_VERSION.to_string(),
        }
    }

    /// The description as written to `model.json`.
    pub fn to_json(&self) -> anyhow::Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Reads `model.json` from the checkpoint folder `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<Checkpoint> {
        let path = dir.join(DESCRIPTION_FILE);
        let text = fs_err::read_to_string(&path).with_context(|| {
            format!(
                "{} is not a modelci checkpoint\nhint: give the run folder of `modelci run` or \
                 the output of `modelci train`, which hold {WEIGHTS_FILE} and {DESCRIPTION_FILE}",
                dir.display()
            )
        })?;
        let checkpoint: Checkpoint = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid checkpoint description", path.display()))?;
        if checkpoint.schema != SCHEMA {
            anyhow::bail!(
                "{} has schema {:?}; this modelci reads {SCHEMA:?}",
                path.display(),
                checkpoint.schema
            );
        }
        Ok(checkpoint)
    }

    /// The data settings to read a dataset at `path` the way the model was trained.
    pub fn data_config(&self, path: &Path) -> DataConfig {
        DataConfig {
            train: PathBuf::new(),
            test: path.to_path_buf(),
            sources: Vec::new(),
            layout: self.input.layout,
            skip_invalid: false,
            color: self.input.color,
            image_size: self.input.image_size,
            center_crop: self.input.center_crop,
            mean: self.input.mean.clone(),
            std: self.input.std.clone(),
            csv: self.input.csv.clone(),
        }
    }
}

/// The parameters of `vs` in the safetensors format.
pub fn weights(vs: &nn::VarStore) -> anyhow::Result<Vec<u8>> {
    // tch writes safetensors only to a path whose name ends in `.safetensors`.
    let scratch = tempfile::Builder::new()
        .prefix("modelci-checkpoint-")
        .suffix(".safetensors")
        .tempfile()
        .context("cannot create a temporary file for the checkpoint")?;
    vs.save(scratch.path()).context("libtorch failed to save the checkpoint")?;
    Ok(fs_err::read(scratch.path())?)
}

/// Loads the parameters in `dir`'s `model.safetensors` into `vs`, whose variables must match
/// them by name and shape.
pub fn load_weights(vs: &mut nn::VarStore, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(WEIGHTS_FILE);
    if !path.is_file() {
        anyhow::bail!("{} is missing from the checkpoint {}", WEIGHTS_FILE, dir.display());
    }
    vs.load(&path).with_context(|| {
        format!(
            "cannot load {}: its parameters do not fit the model {DESCRIPTION_FILE} describes",
            path.display()
        )
    })
}
