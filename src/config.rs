//! `modelci.toml`: its schema, and the validation that turns it into settings the pipeline can
//! trust.
//!
//! Every key is checked while the file is parsed, so that an error can point at the file, line
//! and column of the offending key or value, and name the values that would have been allowed.
//! Paths in the file are relative to the folder that holds it.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, de};
use toml::Spanned;

pub use crate::schedule::{Schedule, Watched};

/// The file name `modelci run` looks for when no `--config` is given.
pub const DEFAULT_FILE: &str = "modelci.toml";

/// A config that parsed and validated, with its paths made absolute.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub data: DataConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub gate: GateConfig,
    pub output: OutputConfig,
    pub store: StoreConfig,
}

/// The content-addressed store `modelci run` caches datasets and runs in.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// `store.dir`, relative to the config's folder; `MODELCI_STORE` overrides it.
    pub dir: PathBuf,
    /// zstd level for new blobs.
    pub level: i32,
    /// Reuse the metrics and predictions of an identical earlier run instead of training.
    pub run_cache: bool,
}

#[derive(Debug, Clone)]
pub struct DataConfig {
    /// The folder the training images are read from.
    pub train: PathBuf,
    /// The folder the test images are read from.
    pub test: PathBuf,
    /// Where each dataset comes from: `train` first, then `test`.
    pub sources: Vec<DatasetSource>,
    pub layout: Layout,
    /// Leave out images that fail to decode, and keep empty class folders, with a warning,
    /// instead of stopping.
    pub skip_invalid: bool,
    /// The columns of a `csv` dataset; `None` for image layouts.
    pub csv: Option<crate::tabular::CsvConfig>,
    pub color: Color,
    /// Height and width every image is resized to, in pixels.
    pub image_size: [u32; 2],
    /// Taken from the centre of each resized image, `[height, width]`; the model sees this
    /// size.
    pub center_crop: Option<[u32; 2]>,
    /// Per channel, applied after scaling pixel values to `[0, 1]`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// One dataset of the config, and where its folder comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSource {
    /// `train` or `test`: the key in `[data]`.
    pub name: &'static str,
    /// The path as written in the config (for messages and the lock file).
    pub written: PathBuf,
    /// The folder, made absolute against the config's folder.
    pub path: PathBuf,
    /// Set when the folder is unpacked from an archive at a URL.
    pub remote: Option<RemoteSource>,
}

/// An archive at a URL, pinned by the sha256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSource {
    pub url: String,
    /// Lower-case hex, 64 digits.
    pub sha256: String,
    /// The folder inside the archive that holds the dataset; the whole archive when absent.
    pub subdir: Option<String>,
}

/// Where a remote dataset is unpacked when its table has no `path`.
pub const DEFAULT_REMOTE_DIR: &str = ".modelci/datasets";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Color {
    Grayscale,
    Rgb,
}

impl Color {
    pub fn channels(self) -> usize {
        match self {
            Color::Grayscale => 1,
            Color::Rgb => 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelConfig {
    /// Fully connected layers of the given widths, then the classifier.
    Mlp { hidden: Vec<usize> },
    /// 3×3 convolution blocks (conv, ReLU, 2×2 max-pool) of the given output channels, then
    /// fully connected layers of the given widths, then the classifier.
    Cnn { channels: Vec<usize>, hidden: Vec<usize> },
    /// One fully connected layer from the pixels to the classes: logistic regression.
    Linear,
    /// A small residual network: a 3×3 stem and a 2×2 max-pool, then one stage per entry of
    /// `channels`, each of
    /// `blocks` residual blocks (two 3×3 convolutions with group normalisation and a skip
    /// connection; every stage after the first halves the feature map), global average
    /// pooling, then the classifier.
    Resnet { channels: Vec<usize>, blocks: usize },
    /// A module exported from PyTorch with `torch.jit.save`; `path` is relative to the config
    /// (or, in a checkpoint, to its folder). Trained when its parameters require grad.
    Torchscript { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: Optimizer,
    pub learning_rate: f64,
    /// L2 penalty for `sgd` and `adam`; decoupled weight decay for `adamw`.
    pub weight_decay: f64,
    pub loss: Loss,
    /// Cross-entropy against targets mixed with the uniform distribution by this much.
    pub label_smoothing: f64,
    /// Gradients are rescaled so that their global L2 norm is at most this.
    pub clip_grad_norm: Option<f64>,
    pub schedule: Schedule,
    /// Epochs of linear warm-up before the schedule starts.
    pub warmup_epochs: usize,
    /// Held out of the training set, seeded by `seed`, to watch for early stopping.
    pub validation_fraction: Option<f64>,
    pub early_stopping: Option<EarlyStoppingConfig>,
    /// Random changes to each training batch, drawn from libtorch's seeded generator.
    pub augment: Augment,
    pub seed: u64,
    pub threads: usize,
    pub device: Device,
}

/// `[train.augment]`: training-time augmentation of image batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Mirror each image left to right with probability one half.
    pub flip: bool,
    /// Pad each image by this many pixels on every side (with zeros, the normalised mean
    /// where `mean` is the data's), then crop it back to its size at a random offset.
    pub crop_padding: u32,
}

impl Augment {
    pub fn is_active(&self) -> bool {
        self.flip || self.crop_padding > 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStoppingConfig {
    /// The validation metric watched.
    #[serde(default = "default_watched")]
    pub metric: Watched,
    /// Epochs without improvement before training stops.
    #[serde(default = "default_patience", deserialize_with = "at_least_one")]
    pub patience: usize,
}

fn default_watched() -> Watched {
    Watched::Loss
}

fn default_patience() -> usize {
    3
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Optimizer {
    Sgd {
        momentum: f64,
        nesterov: bool,
    },
    Adam,
    /// Adam with decoupled weight decay.
    #[serde(rename = "adamw")]
    AdamW,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    CrossEntropy,
    /// For two classes: one output, the logit of the second class (in sorted order), trained
    /// with binary cross-entropy.
    BinaryCrossEntropy,
    /// Mean squared error, for regression (`data.task = "regression"`).
    Mse,
}

impl Loss {
    /// How many outputs the model needs for `classes` classes.
    pub fn outputs(self, classes: usize) -> usize {
        match self {
            Loss::CrossEntropy => classes,
            Loss::BinaryCrossEntropy | Loss::Mse => 1,
        }
    }
}

/// Where training and evaluation run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// CUDA device 0 when one is usable, otherwise the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    /// The folder holding the baseline run, when none is given on the command line.
    pub baseline: PathBuf,
    /// Whether a missing baseline is an error rather than the `no_baseline` verdict.
    pub require_baseline: bool,
    pub rules: Vec<Rule>,
    /// What a gated metric in the run but not in the baseline gets.
    pub added: Policy,
    /// What a gated metric in the baseline but not in the run gets.
    pub removed: Policy,
    /// What a gated metric whose value is not a number (a string, a boolean) gets.
    pub non_numeric: Policy,
    pub statistics: StatisticsConfig,
}

/// How the gate treats a metric that cannot be compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Shown with no verdict; does not affect the run's verdict.
    Ignore,
    /// A warning: the run's verdict is at best `warn`.
    Warn,
    /// A failure, as a regression would be.
    Fail,
}

/// The paired statistics, used when both runs have per-sample predictions.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatisticsConfig {
    pub enabled: bool,
    /// The significance level: a p-value below it is significant.
    #[serde(deserialize_with = "fraction")]
    pub alpha: f64,
    /// The level of the bootstrap confidence intervals.
    #[serde(deserialize_with = "fraction")]
    pub confidence: f64,
    /// Bootstrap resamples.
    #[serde(deserialize_with = "at_least_one")]
    pub resamples: usize,
    /// Seeds the bootstrap's generator.
    pub seed: u64,
    /// Fewer paired samples than this give no verdict rather than a guess.
    pub min_samples: usize,
}

impl Default for StatisticsConfig {
    fn default() -> Self {
        StatisticsConfig {
            enabled: true,
            alpha: 0.05,
            confidence: 0.95,
            resamples: 1000,
            seed: 0,
            min_samples: 30,
        }
    }
}

/// How one metric, or every metric a glob matches, is judged. The first matching rule wins.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// An exact metric name (`accuracy`, `macro.f1`) or a glob (`per_class.*.f1`).
    pub metric: String,
    /// Guessed from the name when absent: see [`Direction::guess`].
    pub direction: Option<Direction>,
    /// How much worse than the baseline, in the metric's own unit, still passes.
    #[serde(default, deserialize_with = "non_negative_option")]
    pub absolute_tolerance: Option<f64>,
    /// How much worse than the baseline, as a fraction of the baseline, still passes.
    #[serde(default, deserialize_with = "non_negative_option")]
    pub relative_tolerance: Option<f64>,
    /// A value below this fails whatever the baseline says.
    pub minimum: Option<f64>,
    /// A value above this fails whatever the baseline says.
    pub maximum: Option<f64>,
    /// A failure of an optional metric is only a warning.
    #[serde(default = "yes")]
    pub required: bool,
}

fn yes() -> bool {
    true
}

impl Rule {
    /// A rule for the metrics `pattern` matches, with every option at its default.
    pub fn new(pattern: &str) -> Rule {
        Rule {
            metric: pattern.to_string(),
            direction: None,
            absolute_tolerance: None,
            relative_tolerance: None,
            minimum: None,
            maximum: None,
            required: true,
        }
    }
}

impl GateConfig {
    /// The gate as `modelci.toml` configures it when `[gate]` only lists `rules`.
    pub fn with_rules(rules: Vec<Rule>) -> GateConfig {
        let defaults = RawGate::default();
        GateConfig {
            baseline: PathBuf::from(DEFAULT_BASELINE),
            require_baseline: defaults.require_baseline,
            rules,
            added: defaults.added,
            removed: defaults.removed,
            non_numeric: defaults.non_numeric,
            statistics: defaults.statistics,
        }
    }
}

/// The baseline folder, relative to the config, when `gate.baseline` is not set.
pub const DEFAULT_BASELINE: &str = "baseline";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Bigger is better (accuracy, F1).
    Higher,
    /// Smaller is better (loss, error rates, latency).
    Lower,
}

impl Direction {
    /// The direction a metric most likely has, from words in its name: loss, error, latency and
    /// time mean lower is better; everything else higher.
    pub fn guess(metric: &str) -> Direction {
        let name = metric.to_ascii_lowercase();
        let lower_words = ["loss", "error", "latency", "time", "mse", "mae", "rmse"];
        if lower_words.iter().any(|word| name.contains(word)) {
            Direction::Lower
        } else {
            Direction::Higher
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutputConfig {
    /// The folder `metrics.json`, `predictions.jsonl`, `report.md` and `verdict.json` go to.
    pub dir: PathBuf,
}

/// A config that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config {}:{}:{}: {message}\n{snippet}", path.display(), line, column)]
    Invalid { path: PathBuf, line: usize, column: usize, message: String, snippet: String },
    #[error("invalid config {}: {message}", path.display())]
    InvalidFile { path: PathBuf, message: String },
}

impl Config {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs_err::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::parse(&text, path)
    }

    /// Validates `text` as if it had been read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|error| {
            let message = error.message().trim_end().to_string();
            match error.span() {
                Some(span) => invalid_at(path, text, span, message),
                None => ConfigError::InvalidFile { path: path.to_path_buf(), message },
            }
        })?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        raw.validate(text, path, base)
    }
}

fn invalid_at(path: &Path, text: &str, span: Range<usize>, message: String) -> ConfigError {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;
    let source_line = &text[line_start..line_end];
    let width = text[start..span.end.min(line_end).max(start)].chars().count().max(1);
    let gutter = " ".repeat(line.to_string().len());
    let snippet = format!(
        "{gutter} |\n{line} | {source_line}\n{gutter} | {}{}",
        " ".repeat(column - 1),
        "^".repeat(width)
    );
    ConfigError::Invalid { path: path.to_path_buf(), line, column, message, snippet }
}

// The file as written. Each section denies unknown keys; values that serde alone cannot check
// keep their span so that `validate` can point at them.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data: RawData,
    model: RawModel,
    #[serde(default)]
    train: RawTrain,
    #[serde(default)]
    gate: RawGate,
    #[serde(default)]
    output: RawOutput,
    #[serde(default)]
    store: RawStore,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawData {
    #[serde(default)]
    layout: Layout,
    #[serde(default)]
    skip_invalid: bool,
    train: Spanned<RawSource>,
    test: Spanned<RawSource>,
    #[serde(default = "default_color")]
    color: Color,
    #[serde(default, deserialize_with = "image_size")]
    image_size: Option<Spanned<[u32; 2]>>,
    #[serde(default, deserialize_with = "image_size")]
    center_crop: Option<Spanned<[u32; 2]>>,
    mean: Option<Spanned<Vec<f32>>>,
    std: Option<Spanned<Vec<f32>>>,
    label: Option<Spanned<String>>,
    features: Option<Spanned<Vec<String>>>,
    standardize: Option<Spanned<bool>>,
    task: Option<Spanned<crate::tabular::Task>>,
}

/// `train = "data/train"`, or `train = { url = "...", sha256 = "...", path = "...",
/// subdir = "..." }`.
enum RawSource {
    Path(PathBuf),
    Remote(RawRemote),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    url: String,
    sha256: String,
    path: Option<PathBuf>,
    subdir: Option<String>,
}

impl<'de> Deserialize<'de> for RawSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = RawSource;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str(
                    "a folder path, or a table { url = \"https://...\", sha256 = \"<64 hex \
                     digits>\" } with optional path and subdir",
                )
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<RawSource, E> {
                Ok(RawSource::Path(PathBuf::from(value)))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawSource, A::Error> {
                RawRemote::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawSource::Remote)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// How a dataset folder holds its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// One sub-folder per class, as torchvision's `ImageFolder`.
    #[default]
    ImageFolder,
    /// `images-idx3-ubyte` and `labels-idx1-ubyte`, raw or gzip, as MNIST is distributed.
    Idx,
    /// A CSV file of numeric feature columns and a label column, for tabular models.
    Csv,
}

fn default_color() -> Color {
    Color::Grayscale
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    kind: ModelKind,
    path: Option<Spanned<PathBuf>>,
    channels: Option<Spanned<Vec<usize>>>,
    blocks: Option<Spanned<usize>>,
    #[serde(default)]
    hidden: Vec<usize>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "snake_case")]
enum ModelKind {
    Mlp,
    Cnn,
    Linear,
    Resnet,
    Torchscript,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrain {
    #[serde(default = "default_epochs", deserialize_with = "at_least_one")]
    epochs: usize,
    #[serde(default = "default_batch_size", deserialize_with = "at_least_one")]
    batch_size: usize,
    #[serde(default = "default_optimizer")]
    optimizer: OptimizerKind,
    #[serde(default = "default_learning_rate", deserialize_with = "positive")]
    learning_rate: f64,
    momentum: Option<Spanned<f64>>,
    #[serde(default, deserialize_with = "non_negative")]
    weight_decay: f64,
    #[serde(default = "default_loss")]
    loss: Loss,
    #[serde(default, deserialize_with = "below_one")]
    label_smoothing: f64,
    #[serde(default, deserialize_with = "positive_option")]
    clip_grad_norm: Option<f64>,
    nesterov: Option<Spanned<bool>>,
    #[serde(default)]
    schedule: ScheduleKind,
    step_size: Option<Spanned<usize>>,
    gamma: Option<Spanned<f64>>,
    min_learning_rate: Option<Spanned<f64>>,
    #[serde(default)]
    warmup_epochs: usize,
    validation_fraction: Option<Spanned<f64>>,
    early_stopping: Option<Spanned<EarlyStoppingConfig>>,
    #[serde(default)]
    augment: Augment,
    #[serde(default)]
    seed: u64,
    #[serde(default = "default_threads", deserialize_with = "at_least_one")]
    threads: usize,
    #[serde(default = "default_device", deserialize_with = "device")]
    device: Device,
}

impl Default for RawTrain {
    fn default() -> Self {
        RawTrain {
            epochs: default_epochs(),
            batch_size: default_batch_size(),
            optimizer: default_optimizer(),
            learning_rate: default_learning_rate(),
            momentum: None,
            weight_decay: 0.0,
            loss: default_loss(),
            label_smoothing: 0.0,
            clip_grad_norm: None,
            nesterov: None,
            schedule: ScheduleKind::Constant,
            step_size: None,
            gamma: None,
            min_learning_rate: None,
            warmup_epochs: 0,
            validation_fraction: None,
            early_stopping: None,
            augment: Augment::default(),
            seed: 0,
            threads: default_threads(),
            device: default_device(),
        }
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "snake_case")]
enum OptimizerKind {
    Sgd,
    Adam,
    #[serde(rename = "adamw")]
    AdamW,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
enum ScheduleKind {
    #[default]
    Constant,
    Step,
    Cosine,
}

fn default_epochs() -> usize {
    5
}
fn default_batch_size() -> usize {
    64
}
fn default_optimizer() -> OptimizerKind {
    OptimizerKind::Adam
}
fn default_learning_rate() -> f64 {
    1e-3
}
fn default_loss() -> Loss {
    Loss::CrossEntropy
}
fn default_threads() -> usize {
    1
}
fn default_device() -> Device {
    Device::Auto
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGate {
    baseline: Option<PathBuf>,
    #[serde(default)]
    require_baseline: bool,
    #[serde(default)]
    rules: Vec<Spanned<Rule>>,
    #[serde(default = "ignore")]
    added: Policy,
    #[serde(default = "fail")]
    removed: Policy,
    #[serde(default = "fail")]
    non_numeric: Policy,
    #[serde(default)]
    statistics: StatisticsConfig,
}

fn ignore() -> Policy {
    Policy::Ignore
}
fn fail() -> Policy {
    Policy::Fail
}

impl Default for RawGate {
    fn default() -> Self {
        RawGate {
            baseline: None,
            require_baseline: false,
            rules: Vec::new(),
            added: Policy::Ignore,
            removed: Policy::Fail,
            non_numeric: Policy::Fail,
            statistics: StatisticsConfig::default(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default = "default_store_dir")]
    dir: PathBuf,
    #[serde(default = "default_level", deserialize_with = "zstd_level")]
    level: i32,
    #[serde(default = "yes")]
    run_cache: bool,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore { dir: default_store_dir(), level: default_level(), run_cache: true }
    }
}

fn default_store_dir() -> PathBuf {
    ".modelci/store".into()
}

fn default_level() -> i32 {
    3
}

impl RawConfig {
    fn validate(self, text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let invalid = |span: Range<usize>, message: String| invalid_at(path, text, span, message);
        let color = self.data.color;
        let channels = color.channels();

        let per_channel = |values: Option<Spanned<Vec<f32>>>, key: &str, default: f32| {
            let Some(values) = values else { return Ok(vec![default; channels]) };
            let span = values.span();
            let values = values.into_inner();
            if values.len() != channels {
                return Err(invalid(
                    span,
                    format!(
                        "data.{key} has {} value(s) but data.color = {:?} has {channels} \
                         channel(s); give one value per channel",
                        values.len(),
                        color
                    ),
                ));
            }
            if let Some(bad) =
                values.iter().find(|v| !v.is_finite() || (key == "std" && **v <= 0.0))
            {
                let rule = if key == "std" { "positive" } else { "finite" };
                return Err(invalid(span, format!("data.{key} values must be {rule}, got {bad}")));
            }
            Ok(values)
        };
        let data = self.data;
        let layout = data.layout;
        let tabular_only = [
            data.label.as_ref().map(|v| ("label", v.span())),
            data.features.as_ref().map(|v| ("features", v.span())),
            data.standardize.as_ref().map(|v| ("standardize", v.span())),
            data.task.as_ref().map(|v| ("task", v.span())),
        ];
        let image_only = [
            data.image_size.as_ref().map(|v| ("image_size", v.span())),
            data.center_crop.as_ref().map(|v| ("center_crop", v.span())),
            data.mean.as_ref().map(|v| ("mean", v.span())),
            data.std.as_ref().map(|v| ("std", v.span())),
        ];
        let misplaced: Vec<_> =
            if layout == Layout::Csv { image_only.to_vec() } else { tabular_only.to_vec() };
        if let Some((key, span)) = misplaced.into_iter().flatten().next() {
            let applies = if layout == Layout::Csv { "image layouts" } else { "layout = \"csv\"" };
            return Err(invalid(span, format!("data.{key} applies only to {applies}")));
        }
        let (image_size, csv) = if layout == Layout::Csv {
            let Some(label) = data.label else {
                return Err(ConfigError::InvalidFile {
                    path: path.to_path_buf(),
                    message: "data.layout = \"csv\" needs data.label, the header of the label \
                              column"
                        .to_string(),
                });
            };
            let csv = crate::tabular::CsvConfig {
                label: label.into_inner(),
                features: data.features.map(Spanned::into_inner),
                standardize: data.standardize.is_some_and(|value| value.into_inner()),
                task: data.task.map(Spanned::into_inner).unwrap_or_default(),
            };
            // Rows are `[features, 1, 1]`; the image size is not used.
            ([1, 1], Some(csv))
        } else {
            let Some(size) = data.image_size else {
                return Err(ConfigError::InvalidFile {
                    path: path.to_path_buf(),
                    message: "data.image_size is required for image datasets: [height, width] \
                              in pixels, e.g. image_size = [28, 28]"
                        .to_string(),
                });
            };
            (size.into_inner(), None)
        };
        let center_crop = match data.center_crop {
            Some(crop) => {
                let [height, width] = *crop.get_ref();
                if height > image_size[0] || width > image_size[1] {
                    return Err(invalid(
                        crop.span(),
                        format!(
                            "data.center_crop [{height}, {width}] is larger than data.image_size \
                             [{}, {}]; crop no more than the resized image",
                            image_size[0], image_size[1]
                        ),
                    ));
                }
                Some(crop.into_inner())
            }
            None => None,
        };
        let mean = per_channel(data.mean, "mean", 0.0)?;
        let std = per_channel(data.std, "std", 1.0)?;
        let sources = [("train", data.train), ("test", data.test)]
            .into_iter()
            .map(|(name, raw)| source(name, raw, base, &invalid))
            .collect::<Result<Vec<_>, _>>()?;

        let kind_name = match self.model.kind {
            ModelKind::Mlp => "mlp",
            ModelKind::Cnn => "cnn",
            ModelKind::Linear => "linear",
            ModelKind::Resnet => "resnet",
            ModelKind::Torchscript => "torchscript",
        };
        if let Some(path) = &self.model.path
            && self.model.kind != ModelKind::Torchscript
        {
            return Err(invalid(
                path.span(),
                format!("model.path applies only to kind = \"torchscript\", not \"{kind_name}\""),
            ));
        }
        if let Some(blocks) = &self.model.blocks
            && self.model.kind != ModelKind::Resnet
        {
            return Err(invalid(
                blocks.span(),
                format!("model.blocks applies only to kind = \"resnet\", not \"{kind_name}\""),
            ));
        }
        let needs_channels = |kind: &str, example: &str| ConfigError::InvalidFile {
            path: path.to_path_buf(),
            message: format!("model.kind = \"{kind}\" needs model.channels, {example}"),
        };
        let model = match self.model.kind {
            ModelKind::Torchscript => {
                let Some(module_path) = self.model.path else {
                    return Err(ConfigError::InvalidFile {
                        path: path.to_path_buf(),
                        message: "model.kind = \"torchscript\" needs model.path, the file saved \
                                  with torch.jit.save, e.g. path = \"model.pt\""
                            .to_string(),
                    });
                };
                if self.model.channels.is_some() || !self.model.hidden.is_empty() {
                    return Err(ConfigError::InvalidFile {
                        path: path.to_path_buf(),
                        message: "model.channels and model.hidden do not apply to kind = \
                                  \"torchscript\": the module defines its own layers"
                            .to_string(),
                    });
                }
                ModelConfig::Torchscript { path: module_path.into_inner() }
            }
            ModelKind::Linear => {
                if let Some(channels) = &self.model.channels {
                    return Err(invalid(
                        channels.span(),
                        "model.channels does not apply to kind = \"linear\"".to_string(),
                    ));
                }
                if !self.model.hidden.is_empty() {
                    return Err(ConfigError::InvalidFile {
                        path: path.to_path_buf(),
                        message: "model.hidden does not apply to kind = \"linear\"; use kind = \
                                  \"mlp\" for hidden layers"
                            .to_string(),
                    });
                }
                ModelConfig::Linear
            }
            ModelKind::Resnet => {
                let channels = self.model.channels.map(Spanned::into_inner).unwrap_or_default();
                if channels.is_empty() {
                    return Err(needs_channels(
                        "resnet",
                        "the width of each stage, e.g. channels = [16, 32]",
                    ));
                }
                if !self.model.hidden.is_empty() {
                    return Err(ConfigError::InvalidFile {
                        path: path.to_path_buf(),
                        message: "model.hidden does not apply to kind = \"resnet\": it pools \
                                  straight into the classifier"
                            .to_string(),
                    });
                }
                let blocks = match self.model.blocks {
                    Some(blocks) if *blocks.get_ref() == 0 => {
                        return Err(invalid(
                            blocks.span(),
                            "model.blocks must be at least 1".into(),
                        ));
                    }
                    Some(blocks) => blocks.into_inner(),
                    None => 1,
                };
                ModelConfig::Resnet { channels, blocks }
            }
            ModelKind::Mlp => {
                if let Some(channels) = self.model.channels {
                    return Err(invalid(
                        channels.span(),
                        "model.channels applies only to kind = \"cnn\"; remove it or change \
                         model.kind"
                            .to_string(),
                    ));
                }
                ModelConfig::Mlp { hidden: self.model.hidden }
            }
            ModelKind::Cnn => {
                let channels = self.model.channels.map(Spanned::into_inner).unwrap_or_default();
                if channels.is_empty() {
                    return Err(needs_channels(
                        "cnn",
                        "the output channels of each convolution block, e.g. channels = [16, 32]",
                    ));
                }
                ModelConfig::Cnn { channels, hidden: self.model.hidden }
            }
        };
        let layer_sizes = match &model {
            ModelConfig::Mlp { hidden } => hidden.clone(),
            ModelConfig::Cnn { channels, hidden } => [channels.as_slice(), hidden].concat(),
            ModelConfig::Linear | ModelConfig::Torchscript { .. } => Vec::new(),
            ModelConfig::Resnet { channels, .. } => channels.clone(),
        };
        if layer_sizes.contains(&0) {
            return Err(ConfigError::InvalidFile {
                path: path.to_path_buf(),
                message: "model.channels and model.hidden sizes must be at least 1".to_string(),
            });
        }

        if let (Some(_), ModelConfig::Cnn { .. } | ModelConfig::Resnet { .. }) = (&csv, &model) {
            return Err(ConfigError::InvalidFile {
                path: path.to_path_buf(),
                message: "model.kind = \"cnn\" and \"resnet\" need images; a csv dataset \
                          works with \"linear\", \"mlp\" or \"torchscript\""
                    .to_string(),
            });
        }

        let train = self.train;
        let only_for = |span: Range<usize>, key: &str, applies: &str| {
            invalid(span, format!("train.{key} applies only to {applies}; remove it or change it"))
        };
        let optimizer = match train.optimizer {
            OptimizerKind::Adam | OptimizerKind::AdamW => {
                if let Some(momentum) = &train.momentum {
                    return Err(only_for(momentum.span(), "momentum", "optimizer = \"sgd\""));
                }
                if let Some(nesterov) = &train.nesterov {
                    return Err(only_for(nesterov.span(), "nesterov", "optimizer = \"sgd\""));
                }
                if train.optimizer == OptimizerKind::Adam {
                    Optimizer::Adam
                } else {
                    Optimizer::AdamW
                }
            }
            OptimizerKind::Sgd => {
                let span = train.momentum.as_ref().map(Spanned::span);
                let momentum = train.momentum.map_or(0.0, Spanned::into_inner);
                if !(0.0..1.0).contains(&momentum) {
                    return Err(invalid(
                        span.unwrap_or_default(),
                        format!("train.momentum must be at least 0 and below 1, got {momentum}"),
                    ));
                }
                let nesterov = match train.nesterov {
                    Some(nesterov) if *nesterov.get_ref() && momentum == 0.0 => {
                        return Err(invalid(
                            nesterov.span(),
                            "train.nesterov needs train.momentum above 0".to_string(),
                        ));
                    }
                    Some(nesterov) => nesterov.into_inner(),
                    None => false,
                };
                Optimizer::Sgd { momentum, nesterov }
            }
        };

        let schedule = match train.schedule {
            ScheduleKind::Step => {
                let Some(step_size) = train.step_size else {
                    return Err(ConfigError::InvalidFile {
                        path: path.to_path_buf(),
                        message: "train.schedule = \"step\" needs train.step_size, the epochs \
                                  between decays, e.g. step_size = 2"
                            .to_string(),
                    });
                };
                if *step_size.get_ref() == 0 {
                    return Err(invalid(
                        step_size.span(),
                        "train.step_size must be at least 1".into(),
                    ));
                }
                let gamma = train.gamma.map_or(Ok(0.1), |gamma| {
                    let value = *gamma.get_ref();
                    if value > 0.0 && value <= 1.0 {
                        Ok(value)
                    } else {
                        Err(invalid(
                            gamma.span(),
                            format!("train.gamma must be in (0, 1], got {value}"),
                        ))
                    }
                })?;
                Schedule::Step { step_size: step_size.into_inner(), gamma }
            }
            ScheduleKind::Constant | ScheduleKind::Cosine => {
                let step_only = train.step_size.as_ref().map(Spanned::span);
                if let Some(span) = step_only.or(train.gamma.as_ref().map(Spanned::span)) {
                    return Err(only_for(span, "step_size/gamma", "schedule = \"step\""));
                }
                if train.schedule == ScheduleKind::Constant {
                    if let Some(floor) = &train.min_learning_rate {
                        return Err(only_for(
                            floor.span(),
                            "min_learning_rate",
                            "schedule = \"cosine\"",
                        ));
                    }
                    Schedule::Constant
                } else {
                    let floor = train.min_learning_rate.map_or(Ok(0.0), |floor| {
                        let value = *floor.get_ref();
                        if (0.0..train.learning_rate).contains(&value) {
                            Ok(value)
                        } else {
                            Err(invalid(
                                floor.span(),
                                format!(
                                    "train.min_learning_rate must be at least 0 and below \
                                     train.learning_rate ({}), got {value}",
                                    train.learning_rate
                                ),
                            ))
                        }
                    })?;
                    Schedule::Cosine { min_learning_rate: floor }
                }
            }
        };

        let regression =
            csv.as_ref().is_some_and(|csv| csv.task == crate::tabular::Task::Regression);
        if regression != (train.loss == Loss::Mse) {
            return Err(ConfigError::InvalidFile {
                path: path.to_path_buf(),
                message: if regression {
                    "data.task = \"regression\" trains with train.loss = \"mse\"; set it"
                } else {
                    "train.loss = \"mse\" is for regression: set data.layout = \"csv\" and \
                     data.task = \"regression\", or use a classification loss"
                }
                .to_string(),
            });
        }
        if regression
            && train
                .early_stopping
                .as_ref()
                .is_some_and(|rule| rule.get_ref().metric == Watched::Accuracy)
        {
            return Err(ConfigError::InvalidFile {
                path: path.to_path_buf(),
                message: "a regression has no accuracy: watch metric = \"loss\" in \
                          train.early_stopping"
                    .to_string(),
            });
        }
        if train.loss == Loss::BinaryCrossEntropy && train.label_smoothing > 0.0 {
            return Err(ConfigError::InvalidFile {
                path: path.to_path_buf(),
                message: "train.label_smoothing applies only to loss = \"cross_entropy\""
                    .to_string(),
            });
        }
        let validation_fraction = match train.validation_fraction {
            Some(fraction) => {
                let value = *fraction.get_ref();
                if !(value > 0.0 && value < 1.0) {
                    return Err(invalid(
                        fraction.span(),
                        format!(
                            "train.validation_fraction must be between 0 and 1, exclusive, got {value}"
                        ),
                    ));
                }
                Some(value)
            }
            None => None,
        };
        let early_stopping = match train.early_stopping {
            Some(stopping) if validation_fraction.is_none() => {
                return Err(invalid(
                    stopping.span(),
                    "train.early_stopping watches a validation set: set train.validation_fraction \
                     too, e.g. 0.1"
                        .to_string(),
                ));
            }
            other => other.map(Spanned::into_inner),
        };
        if train.warmup_epochs > train.epochs {
            return Err(ConfigError::InvalidFile {
                path: path.to_path_buf(),
                message: format!(
                    "train.warmup_epochs ({}) is more than train.epochs ({})",
                    train.warmup_epochs, train.epochs
                ),
            });
        }

        let mut rules = Vec::with_capacity(self.gate.rules.len());
        for rule in self.gate.rules {
            let span = rule.span();
            let rule = rule.into_inner();
            if let Err(error) = globset::Glob::new(&rule.metric) {
                return Err(invalid(span, format!("gate.rules metric {:?}: {error}", rule.metric)));
            }
            rules.push(rule);
        }

        Ok(Config {
            path: path.to_path_buf(),
            data: DataConfig {
                train: sources[0].path.clone(),
                test: sources[1].path.clone(),
                sources,
                layout,
                skip_invalid: data.skip_invalid,
                color: data.color,
                image_size,
                center_crop,
                mean,
                std,
                csv,
            },
            model,
            train: TrainConfig {
                epochs: train.epochs,
                batch_size: train.batch_size,
                optimizer,
                learning_rate: train.learning_rate,
                weight_decay: train.weight_decay,
                loss: train.loss,
                label_smoothing: train.label_smoothing,
                clip_grad_norm: train.clip_grad_norm,
                schedule,
                warmup_epochs: train.warmup_epochs,
                validation_fraction,
                early_stopping,
                augment: train.augment,
                seed: train.seed,
                threads: train.threads,
                device: train.device,
            },
            gate: GateConfig {
                baseline: base.join(self.gate.baseline.unwrap_or_else(|| DEFAULT_BASELINE.into())),
                require_baseline: self.gate.require_baseline,
                rules,
                added: self.gate.added,
                removed: self.gate.removed,
                non_numeric: self.gate.non_numeric,
                statistics: self.gate.statistics,
            },
            output: OutputConfig {
                dir: base.join(self.output.dir.unwrap_or_else(|| "modelci-output".into())),
            },
            store: StoreConfig {
                dir: std::env::var_os("MODELCI_STORE")
                    .filter(|dir| !dir.is_empty())
                    .map(PathBuf::from)
                    .unwrap_or_else(|| base.join(self.store.dir)),
                level: self.store.level,
                run_cache: self.store.run_cache,
            },
        })
    }
}

/// Checks one `data.train` / `data.test` value.
fn source(
    name: &'static str,
    raw: Spanned<RawSource>,
    base: &Path,
    invalid: &dyn Fn(Range<usize>, String) -> ConfigError,
) -> Result<DatasetSource, ConfigError> {
    let span = raw.span();
    match raw.into_inner() {
        RawSource::Path(written) => {
            Ok(DatasetSource { name, path: base.join(&written), written, remote: None })
        }
        RawSource::Remote(remote) => {
            if !(remote.url.starts_with("https://") || remote.url.starts_with("http://")) {
                return Err(invalid(
                    span,
                    format!(
                        "data.{name}.url must be an http:// or https:// URL, got {:?}",
                        remote.url
                    ),
                ));
            }
            let sha256 = remote.sha256.to_ascii_lowercase();
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    span,
                    format!(
                        "data.{name}.sha256 must be the archive's sha256 as 64 hexadecimal \
                         digits (as `sha256sum` prints it), got {:?}",
                        remote.sha256
                    ),
                ));
            }
            let subdir = remote.subdir.map(|dir| dir.trim_matches('/').to_string());
            if let Some(dir) = &subdir
                && (dir.is_empty() || dir.split('/').any(|part| part == ".." || part == "."))
            {
                return Err(invalid(
                    span,
                    format!(
                        "data.{name}.subdir must be a relative folder inside the archive, got {dir:?}"
                    ),
                ));
            }
            let written = remote.path.unwrap_or_else(|| Path::new(DEFAULT_REMOTE_DIR).join(name));
            Ok(DatasetSource {
                name,
                path: base.join(&written),
                written,
                remote: Some(RemoteSource { url: remote.url, sha256, subdir }),
            })
        }
    }
}

// Value checks run inside the parser, so that toml attaches the value's position to them.

fn zstd_level<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i32, D::Error> {
    let value = i64::deserialize(deserializer)?;
    if !(1..=22).contains(&value) {
        return Err(de::Error::custom(format!(
            "must be a zstd level from 1 (fastest) to 22 (smallest), got {value}"
        )));
    }
    Ok(value as i32)
}

fn at_least_one<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let value = i64::deserialize(deserializer)?;
    if value < 1 {
        return Err(de::Error::custom(format!(
            "must be a whole number of at least 1, got {value}"
        )));
    }
    usize::try_from(value).map_err(|_| de::Error::custom(format!("{value} is too large")))
}

fn positive<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if !(value.is_finite() && value > 0.0) {
        return Err(de::Error::custom(format!("must be a number greater than 0, got {value}")));
    }
    Ok(value)
}

fn non_negative<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(de::Error::custom(format!("must be a number of at least 0, got {value}")));
    }
    Ok(value)
}

fn non_negative_option<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<f64>, D::Error> {
    non_negative(deserializer).map(Some)
}

fn fraction<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if !(value > 0.0 && value < 1.0) {
        return Err(de::Error::custom(format!("must be between 0 and 1, exclusive, got {value}")));
    }
    Ok(value)
}

fn below_one<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(deserializer)?;
    if !(0.0..1.0).contains(&value) {
        return Err(de::Error::custom(format!("must be at least 0 and below 1, got {value}")));
    }
    Ok(value)
}

fn positive_option<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    positive(deserializer).map(Some)
}

fn image_size<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Spanned<[u32; 2]>>, D::Error> {
    let values = Spanned::<Vec<i64>>::deserialize(deserializer)?;
    let span = values.span();
    let values = values.into_inner();
    match values.as_slice() {
        [height, width] if (1..=8192).contains(height) && (1..=8192).contains(width) => {
            Ok(Some(Spanned::new(span, [*height as u32, *width as u32])))
        }
        _ => Err(de::Error::custom(format!(
            "must be [height, width] in pixels, each from 1 to 8192, got {values:?}"
        ))),
    }
}

fn device<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Device, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(de::Error::custom)
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(text: &str) -> Result<Device, String> {
        let index = |digits: &str| digits.parse::<usize>().ok();
        match text {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match text.strip_prefix("cuda:").and_then(index) {
                Some(index) => Ok(Device::Cuda(index)),
                None => Err(format!(
                    "unknown device {text:?}, expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[data]
train = "data/train"
test = "data/test"
image_size = [28, 28]

[model]
kind = "mlp"
hidden = [32]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("project/modelci.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).expect_err("config should be rejected").to_string()
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.data.train, Path::new("project/data/train"));
        assert_eq!(config.data.mean, vec![0.0]);
        assert_eq!(config.data.std, vec![1.0]);
        assert_eq!(config.train.optimizer, Optimizer::Adam);
        assert_eq!(config.train.epochs, 5);
        assert_eq!(config.train.device, Device::Auto);
        assert_eq!(config.gate.baseline, Path::new("project/baseline"));
        assert_eq!(config.output.dir, Path::new("project/modelci-output"));
    }

    #[test]
    fn unknown_key_names_key_line_and_allowed_keys() {
        let text = MINIMAL.replace("hidden = [32]", "hidden = [32]\n\n[train]\nepoch = 3");
        let message = error(&text);
        assert!(message.starts_with("invalid config project/modelci.toml:12:1: "), "{message}");
        assert!(message.contains("unknown field `epoch`"), "{message}");
        assert!(message.contains("`epochs`"), "{message}");
    }

    #[test]
    fn unknown_optimizer_lists_the_allowed_ones() {
        let text = format!("{MINIMAL}\n[train]\noptimizer = \"adamax\"\n");
        let message = error(&text);
        assert!(message.contains(":12:13: "), "{message}");
        assert!(
            message.contains("unknown variant `adamax`, expected one of `sgd`, `adam`, `adamw`"),
            "{message}"
        );
    }

    #[test]
    fn non_positive_learning_rate_is_rejected_at_its_value() {
        let text = format!("{MINIMAL}\n[train]\nlearning_rate = -0.5\n");
        let message = error(&text);
        assert!(message.contains(":12:17: must be a number greater than 0, got -0.5"), "{message}");
    }

    #[test]
    fn mean_must_match_the_channel_count() {
        let text = MINIMAL.replace("image_size", "color = \"rgb\"\nmean = [0.5]\nimage_size");
        let message = error(&text);
        assert!(message.contains(":6:8: data.mean has 1 value(s)"), "{message}");
    }

    #[test]
    fn momentum_with_adam_is_an_error() {
        let text = format!("{MINIMAL}\n[train]\noptimizer = \"adam\"\nmomentum = 0.9\n");
        assert!(error(&text).contains("train.momentum applies only to optimizer = \"sgd\""));
    }

    #[test]
    fn training_options_parse_and_their_misuse_names_the_key() {
        let train = |body: &str| format!("{MINIMAL}\n[train]\n{body}\n");
        let config = parse(&train(
            "optimizer = \"sgd\"\nmomentum = 0.9\nnesterov = true\nschedule = \"cosine\"\n\
             min_learning_rate = 0.0001\nwarmup_epochs = 1\nlabel_smoothing = 0.1\n\
             clip_grad_norm = 1.0\nvalidation_fraction = 0.2\n\
             early_stopping = { metric = \"accuracy\", patience = 2 }",
        ))
        .unwrap();
        let train_config = &config.train;
        assert_eq!(train_config.optimizer, Optimizer::Sgd { momentum: 0.9, nesterov: true });
        assert_eq!(train_config.schedule, Schedule::Cosine { min_learning_rate: 0.0001 });
        assert_eq!((train_config.warmup_epochs, train_config.label_smoothing), (1, 0.1));
        assert_eq!(train_config.clip_grad_norm, Some(1.0));
        assert_eq!(train_config.validation_fraction, Some(0.2));
        assert_eq!(
            train_config.early_stopping,
            Some(EarlyStoppingConfig { metric: Watched::Accuracy, patience: 2 })
        );
        let step = parse(&train("schedule = \"step\"\nstep_size = 2")).unwrap();
        assert_eq!(step.train.schedule, Schedule::Step { step_size: 2, gamma: 0.1 });
        assert_eq!(
            parse(&train("optimizer = \"adamw\"")).unwrap().train.optimizer,
            Optimizer::AdamW
        );

        let cases = [
            ("optimizer = \"sgd\"\nnesterov = true", "train.nesterov needs train.momentum above 0"),
            ("optimizer = \"adam\"\nnesterov = true", "train.nesterov applies only to optimizer"),
            ("schedule = \"step\"", "needs train.step_size"),
            ("gamma = 0.5", "train.step_size/gamma applies only to schedule = \"step\""),
            ("min_learning_rate = 0.1", "applies only to schedule = \"cosine\""),
            ("schedule = \"cosine\"\nmin_learning_rate = 1.0", "below train.learning_rate"),
            ("early_stopping = { patience = 2 }", "set train.validation_fraction too"),
            ("validation_fraction = 1.5\n", "between 0 and 1, exclusive"),
            ("label_smoothing = 1.0", "must be at least 0 and below 1"),
            ("clip_grad_norm = 0", "must be a number greater than 0, got 0"),
            ("warmup_epochs = 9", "train.warmup_epochs (9) is more than train.epochs (5)"),
            ("schedule = \"linear\"", "unknown variant `linear`, expected one of"),
            (
                "loss = \"binary_cross_entropy\"\nlabel_smoothing = 0.1",
                "label_smoothing applies only to loss = \"cross_entropy\"",
            ),
        ];
        for (body, expected) in cases {
            let message = error(&train(body));
            assert!(message.contains(expected), "{body}: {message}");
        }
    }

    #[test]
    fn linear_and_resnet_models_check_their_keys() {
        let model = |body: &str| MINIMAL.replace("kind = \"mlp\"\nhidden = [32]", body);
        assert_eq!(parse(&model("kind = \"linear\"")).unwrap().model, ModelConfig::Linear);
        assert_eq!(
            parse(&model("kind = \"resnet\"\nchannels = [8, 16]\nblocks = 2")).unwrap().model,
            ModelConfig::Resnet { channels: vec![8, 16], blocks: 2 }
        );
        let cases = [
            ("kind = \"linear\"\nhidden = [4]", "model.hidden does not apply to kind = \"linear\""),
            ("kind = \"resnet\"", "needs model.channels, the width of each stage"),
            ("kind = \"resnet\"\nchannels = [8]\nblocks = 0", "model.blocks must be at least 1"),
            ("kind = \"cnn\"\nchannels = [8]\nblocks = 2", "applies only to kind = \"resnet\""),
        ];
        for (body, expected) in cases {
            let message = error(&model(body));
            assert!(message.contains(expected), "{body}: {message}");
        }
    }

    #[test]
    fn csv_layout_keys_are_checked_against_the_layout() {
        let csv = "[data]\nlayout = \"csv\"\ntrain = \"a.csv\"\ntest = \"b.csv\"\n";
        let model = "\n[model]\nkind = \"mlp\"\n";
        let config = parse(&format!("{csv}label = \"y\"\nstandardize = true\n{model}")).unwrap();
        let columns = config.data.csv.unwrap();
        assert_eq!((columns.label.as_str(), columns.standardize), ("y", true));
        let cases = [
            (format!("{csv}{model}"), "needs data.label"),
            (
                format!("{csv}label = \"y\"\nimage_size = [2, 2]\n{model}"),
                "data.image_size applies only to image layouts",
            ),
            (
                format!("{csv}label = \"y\"\n\n[model]\nkind = \"cnn\"\nchannels = [4]\n"),
                "need images",
            ),
            (
                MINIMAL.replace("image_size = [28, 28]", "label = \"y\""),
                "data.label applies only to layout = \"csv\"",
            ),
            (MINIMAL.replace("image_size = [28, 28]\n", ""), "data.image_size is required"),
        ];
        for (text, expected) in cases {
            let message = error(&text);
            assert!(message.contains(expected), "{text}: {message}");
        }
        let regression = format!("{csv}label = \"y\"\ntask = \"regression\"\n{model}");
        assert!(error(&regression).contains("trains with train.loss = \"mse\""));
        let with_mse = format!("{regression}\n[train]\nloss = \"mse\"\n");
        assert_eq!(parse(&with_mse).unwrap().train.loss, Loss::Mse);
        let mse_alone = format!("{MINIMAL}\n[train]\nloss = \"mse\"\n");
        assert!(error(&mse_alone).contains("train.loss = \"mse\" is for regression"));
        let watched = format!(
            "{with_mse}validation_fraction = 0.2\nearly_stopping = {{ metric = \"accuracy\" }}\n"
        );
        assert!(error(&watched).contains("a regression has no accuracy"));
    }

    #[test]
    fn cnn_needs_channels() {
        let text = MINIMAL.replace("kind = \"mlp\"", "kind = \"cnn\"");
        assert!(error(&text).contains("needs model.channels"));
    }

    #[test]
    fn device_strings() {
        assert_eq!("cuda:1".parse::<Device>(), Ok(Device::Cuda(1)));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert!("gpu".parse::<Device>().unwrap_err().contains("\"cuda:N\""));
    }

    #[test]
    fn direction_is_guessed_from_the_name() {
        assert_eq!(Direction::guess("loss"), Direction::Lower);
        assert_eq!(Direction::guess("eval.latency_ms"), Direction::Lower);
        assert_eq!(Direction::guess("macro.f1"), Direction::Higher);
    }
}
