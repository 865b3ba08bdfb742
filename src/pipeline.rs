//! `modelci run`: load the datasets, train, evaluate, gate against the baseline, and write the
//! run folder.
//!
//! The run folder (`output.dir`, or `--output`) receives:
//!
//! - `metrics.json`: the metrics, the confusion matrix and how the run was made;
//! - `predictions.jsonl`: one line per test sample (see [`crate::metrics::Prediction`]);
//! - `verdict.json`: the gate's outcome, schema `modelci.verdict/v1`;
//! - `report.md`: the pull-request comment;
//! - `junit.xml` and `metrics.txt` (OpenMetrics): the gate for CI widgets.
//!
//! With the same seed, thread count and data, `metrics.json` is byte-identical between runs
//! except for the `metadata.durations` object.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;
use tch::Tensor;
use tch::nn;

use crate::atomic;
use crate::config::{Config, ModelConfig, Optimizer, TrainConfig};
use crate::data::{self, Dataset};
use crate::evaluate;
use crate::gate::input::{self, BaselineSource, RunInput};
use crate::gate::{self, METRICS_SCHEMA, Outcome, Verdict};
use crate::metrics::{self, ConfusionMatrix, Metrics, Prediction};
use crate::model;
use crate::report::{self, RunSummary};
use crate::torch::{self, LIBTORCH_VERSION};
use crate::train::{self, EpochStats};
use crate::ui::Ui;

pub use crate::gate::input::{METRICS_FILE, PREDICTIONS_FILE};

/// What `modelci run` was asked to do, beyond the config.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Overrides `gate.baseline`: a run folder, a metrics file, or `git:REV:PATH`.
    pub baseline: Option<String>,
    /// Overrides `output.dir`.
    pub output: Option<PathBuf>,
    /// After gating, make this run the baseline.
    pub update_baseline: bool,
    /// The comment marker's label.
    pub label: String,
}

/// What a finished run produced.
#[derive(Debug)]
pub struct RunResult {
    pub outcome: Outcome,
    pub output: PathBuf,
    pub report: PathBuf,
    pub baseline_updated: bool,
}

/// The whole of `metrics.json`.
#[derive(Debug, Serialize)]
struct MetricsFile<'a> {
    schema: &'static str,
    metrics: &'a Metrics,
    classes: &'a [String],
    /// Rows are true classes, columns predicted classes, both in `classes` order.
    confusion_matrix: &'a ConfusionMatrix,
    metadata: Metadata<'a>,
}

#[derive(Debug, Serialize)]
struct Metadata<'a> {
    modelci_version: &'static str,
    libtorch_version: &'static str,
    device: &'a str,
    seed: u64,
    threads: usize,
    model: ModelDescription<'a>,
    training: TrainingDescription,
    datasets: DatasetSizes,
    epochs: &'a [EpochStats],
    /// The only part of the file that differs between identical runs.
    durations: Durations,
}

#[derive(Debug, Serialize)]
struct ModelDescription<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channels: Option<&'a [usize]>,
    hidden: &'a [usize],
    parameters: i64,
}

#[derive(Debug, Serialize)]
struct TrainingDescription {
    epochs: usize,
    batch_size: usize,
    optimizer: Optimizer,
    learning_rate: f64,
    weight_decay: f64,
    loss: crate::config::Loss,
}

#[derive(Debug, Serialize)]
struct DatasetSizes {
    train: usize,
    test: usize,
    classes: usize,
}

#[derive(Debug, Serialize)]
struct Durations {
    load_seconds: f64,
    train_seconds: f64,
    evaluate_seconds: f64,
    train_samples_per_second: f64,
}

pub fn run(options: &RunOptions, ui: &Ui) -> anyhow::Result<RunResult> {
    let config = Config::load(&options.config)?;
    let location =
        options.baseline.clone().unwrap_or_else(|| config.gate.baseline.display().to_string());
    if options.update_baseline && location.starts_with("git:") {
        bail!(
            "--update-baseline needs a baseline folder, not {location}\nhint: give --baseline DIR, \
             or set gate.baseline to a folder"
        );
    }
    let output = options.output.clone().unwrap_or_else(|| config.output.dir.clone());
    let baseline = read_baseline(&location, &config, ui)?;
    let device = torch::choose_device(config.train.device)?;
    ui.debug(format!("device {} ({})", device.name, device.reason));

    // Threads first: libtorch sizes its pools on first use.
    tch::set_num_threads(config.train.threads as i32);
    tch::set_num_interop_threads(config.train.threads as i32);
    tch::manual_seed(config.train.seed as i64);

    let started = Instant::now();
    let (train_set, test_set) = load_datasets(&config, ui)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let shape = train_set.shape;
    let to_tensor = |dataset: &Dataset| {
        let [channels, height, width] = dataset.shape.map(|size| size as i64);
        Tensor::from_slice(&dataset.pixels)
            .view([dataset.len() as i64, channels, height, width])
            .to_device(device.device)
    };
    let train_images = to_tensor(&train_set);
    let train_labels = Tensor::from_slice(&train_set.labels()).to_device(device.device);
    let test_images = to_tensor(&test_set);
    let classes = train_set.listing.classes.clone();

    let vs = nn::VarStore::new(device.device);
    let network = model::build(&vs.root(), &config.model, shape, classes.len());
    ui.status(format!(
        "training {} ({} parameters) on {} images, {} classes, {}",
        model_kind(&config.model),
        parameter_count(&vs),
        train_set.len(),
        classes.len(),
        device.name
    ));
    let batches = train::Batches { images: &train_images, labels: &train_labels };
    let trained = train::train(&vs, &network, batches, &config.train, ui)?;

    let started = Instant::now();
    let predictions = evaluate::predict(&network, &test_images, &test_set.listing.samples)
        .context("libtorch failed while evaluating")?;
    let (metrics, confusion) = metrics::compute(&predictions, &classes);
    let evaluate_seconds = started.elapsed().as_secs_f64();
    ui.status(format!(
        "evaluated {} test images: accuracy {:.4}, loss {:.4}",
        test_set.len(),
        metrics.accuracy,
        metrics.loss
    ));

    let metrics_file = MetricsFile {
        schema: METRICS_SCHEMA,
        metrics: &metrics,
        classes: &classes,
        confusion_matrix: &confusion,
        metadata: Metadata {
            modelci_version: env!("CARGO_PKG_VERSION"),
            libtorch_version: LIBTORCH_VERSION,
            device: &device.name,
            seed: config.train.seed,
            threads: config.train.threads,
            model: describe_model(&config.model, parameter_count(&vs)),
            training: describe_training(&config.train),
            datasets: DatasetSizes {
                train: train_set.len(),
                test: test_set.len(),
                classes: classes.len(),
            },
            epochs: &trained.epochs,
            durations: Durations {
                load_seconds,
                train_seconds: trained.seconds,
                evaluate_seconds,
                train_samples_per_second: trained.samples_per_second,
            },
        },
    };
    let metrics_json = to_json(&metrics_file)?;
    let predictions_jsonl = predictions_lines(&predictions)?;
    atomic::write(&output.join(METRICS_FILE), &metrics_json)?;
    atomic::write(&output.join(PREDICTIONS_FILE), &predictions_jsonl)?;

    let current = RunInput {
        metrics: input::read_metrics(&output.join(METRICS_FILE))?,
        predictions: Some(predictions),
    };
    let baseline_pair = baseline.as_ref().map(|(run, source)| (run, source));
    let outcome = gate::compare(&current, baseline_pair, &location, &config.gate);
    let summary = RunSummary {
        lines: vec![format!(
            "This run: {} trained for {} epochs on {} images ({:.0} samples/s, {:.1} s), \
             evaluated on {} images; seed {}, {} thread(s), {}, libtorch {}.",
            model_kind(&config.model),
            config.train.epochs,
            train_set.len(),
            trained.samples_per_second,
            trained.seconds,
            test_set.len(),
            config.train.seed,
            config.train.threads,
            device.name,
            LIBTORCH_VERSION
        )],
    };
    let report = report::write_outputs(&outcome, &output, &options.label, &summary)?;

    if options.update_baseline {
        let baseline_dir = PathBuf::from(&location);
        atomic::replace_dir::<anyhow::Error>(&baseline_dir, |staging| {
            atomic::write(&staging.join(METRICS_FILE), &metrics_json)?;
            atomic::write(&staging.join(PREDICTIONS_FILE), &predictions_jsonl)?;
            Ok(())
        })?;
        ui.status(format!("baseline updated: {}", baseline_dir.display()));
    }

    Ok(RunResult { outcome, output, report, baseline_updated: options.update_baseline })
}

/// The baseline, or `None` when there is none and that is allowed.
fn read_baseline(
    location: &str,
    config: &Config,
    ui: &Ui,
) -> anyhow::Result<Option<(RunInput, BaselineSource)>> {
    let baseline = input::read_baseline(location)?;
    if baseline.is_none() {
        if config.gate.require_baseline {
            bail!(
                "no baseline at {location}, and gate.require_baseline is set\nhint: produce one \
                 with `modelci run --update-baseline` on the main branch"
            );
        }
        if Path::new(location).is_dir() {
            ui.warn(format!("baseline folder {location} has no {METRICS_FILE}"));
        }
        ui.debug(format!("no baseline at {location}"));
    }
    Ok(baseline)
}

fn load_datasets(config: &Config, ui: &Ui) -> anyhow::Result<(Dataset, Dataset)> {
    let train = data::scan(&config.data.train)?;
    let test = data::scan(&config.data.test)?;
    data::check_same_classes(&train, &test)?;
    for listing in [&train, &test] {
        if let Some(first) = listing.skipped.first() {
            ui.warn(format!(
                "skipped {} file(s) in {} that are not images in class folders, e.g. {}",
                listing.skipped.len(),
                listing.root.display(),
                first.display()
            ));
        }
    }

    let total = (train.samples.len() + test.samples.len()) as u64;
    let bar = ui.bar(total, "loading");
    let tick = || bar.inc(1);
    let decoded = data::decode(train, &config.data, &tick)
        .and_then(|train| Ok((train, data::decode(test, &config.data, &tick)?)));
    bar.finish_and_clear();
    Ok(decoded?)
}

fn model_kind(model: &ModelConfig) -> &'static str {
    match model {
        ModelConfig::Mlp { .. } => "mlp",
        ModelConfig::Cnn { .. } => "cnn",
    }
}

fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(Tensor::numel).sum::<usize>() as i64
}

fn describe_model(model: &ModelConfig, parameters: i64) -> ModelDescription<'_> {
    match model {
        ModelConfig::Mlp { hidden } => {
            ModelDescription { kind: "mlp", channels: None, hidden, parameters }
        }
        ModelConfig::Cnn { channels, hidden } => {
            ModelDescription { kind: "cnn", channels: Some(channels), hidden, parameters }
        }
    }
}

fn describe_training(train: &TrainConfig) -> TrainingDescription {
    TrainingDescription {
        epochs: train.epochs,
        batch_size: train.batch_size,
        optimizer: train.optimizer,
        learning_rate: train.learning_rate,
        weight_decay: train.weight_decay,
        loss: train.loss,
    }
}

fn to_json(value: &impl Serialize) -> anyhow::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn predictions_lines(predictions: &[Prediction]) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for prediction in predictions {
        serde_json::to_writer(&mut bytes, prediction)?;
        bytes.push(b'\n');
    }
    Ok(bytes)
}

/// The exit status `modelci run` ends with for a verdict.
pub fn verdict_is_failure(result: &RunResult) -> bool {
    result.outcome.verdict == Verdict::Fail && !result.baseline_updated
}
