//! `modelci run`: load the datasets, train, evaluate, gate against the baseline, and write the
//! run folder.
//!
//! The run folder (`output.dir`, or `--output`) receives:
//!
//! - `metrics.json`: the metrics, the confusion matrix and how the run was made;
//! - `predictions.jsonl`: one line per test sample (see [`crate::metrics::Prediction`]);
//! - `model.safetensors`: the trained parameters;
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
use crate::checkpoint::{self, Checkpoint};
use crate::config::{Config, Layout, Loss, ModelConfig, Optimizer, TrainConfig};
use crate::data::{self, Dataset};
use crate::evaluate;
use crate::gate::input::{self, BaselineSource, RunInput};
use crate::gate::{self, METRICS_SCHEMA, Outcome, Verdict};
use crate::idx;
use crate::metrics::{self, ConfusionMatrix};
use crate::model;
use crate::report::{self, RunSummary};
use crate::schedule;
use crate::store::{Digest, Fingerprint, Store};
use crate::tabular;
use crate::torch::{self, ChosenDevice, LIBTORCH_VERSION};
use crate::train::{self, EpochStats};
use crate::ui::Ui;

pub use crate::gate::input::{METRICS_FILE, PREDICTIONS_FILE};

/// The trained parameters, in the safetensors format.
pub const CHECKPOINT_FILE: &str = checkpoint::WEIGHTS_FILE;

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
    /// Train even when the run cache holds an identical run.
    pub no_run_cache: bool,
}

/// What a finished run produced.
#[derive(Debug)]
pub struct RunResult {
    pub outcome: Outcome,
    pub output: PathBuf,
    pub report: PathBuf,
    pub baseline_updated: bool,
    /// The run's files came from the run cache: nothing was trained.
    pub cache_hit: bool,
}

/// The whole of `metrics.json`.
#[derive(Debug, Serialize)]
struct MetricsFile<'a> {
    schema: &'static str,
    /// Classification or regression metrics.
    metrics: &'a serde_json::Value,
    /// Empty for a regression.
    classes: &'a [String],
    /// Rows are true classes, columns predicted classes, both in `classes` order; absent for a
    /// regression.
    #[serde(skip_serializing_if = "Option::is_none")]
    confusion_matrix: Option<&'a ConfusionMatrix>,
    metadata: Metadata<'a>,
}

#[derive(Debug, Serialize)]
struct Metadata<'a> {
    modelci_version: &'static str,
    libtorch_version: &'static str,
    device: &'a str,
    seed: u64,
    threads: usize,
    /// The run cache's key for this run: see `fingerprint`.
    fingerprint: String,
    model: ModelDescription<'a>,
    training: TrainingDescription,
    datasets: DatasetSizes<'a>,
    epochs: &'a [EpochStats],
    /// The epoch whose weights were kept, when early stopping went back to an earlier one.
    #[serde(skip_serializing_if = "Option::is_none")]
    best_epoch: Option<usize>,
    /// The only part of the file that differs between identical runs.
    durations: Durations,
}

#[derive(Debug, Serialize)]
struct ModelDescription<'a> {
    #[serde(flatten)]
    config: &'a ModelConfig,
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
    label_smoothing: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    clip_grad_norm: Option<f64>,
    schedule: crate::config::Schedule,
    warmup_epochs: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    validation_fraction: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    early_stopping: Option<crate::config::EarlyStoppingConfig>,
    augment: crate::config::Augment,
}

#[derive(Debug, Serialize)]
struct DatasetSizes<'a> {
    /// Images trained on: the training set less the validation part.
    train: usize,
    /// Held out of the training set for early stopping; 0 without `train.validation_fraction`.
    validation: usize,
    /// Images left out because they could not be decoded (`data.skip_invalid`), both sets.
    skipped_invalid: usize,
    test: usize,
    classes: usize,
    /// The datasets' tree digests in the store.
    digests: &'a DatasetDigests,
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
    tell_device(&device, config.train.device, ui);

    // The plan: the datasets' digests (which also keeps them in the store) and the run's
    // fingerprint, before anything is decoded or trained.
    let store = Store::open(&config.store.dir, config.store.level)
        .with_context(|| format!("cannot open the store {}", config.store.dir.display()))?;
    crate::datasets::ensure_present(&config, &store, ui)?;
    let datasets = DatasetDigests {
        train: save_dataset(&store, &config.data.train, ui)?,
        test: save_dataset(&store, &config.data.test, ui)?,
    };
    warn_if_unlocked_changes(&config, &datasets, ui)?;
    let fingerprint = fingerprint(&config, &datasets, &device)?;
    ui.debug(format!("run fingerprint {fingerprint}"));

    let use_cache = config.store.run_cache && !options.no_run_cache;
    let cached = if use_cache {
        store.find_run(&fingerprint).and_then(|(_, files)| RunFiles::from_cache(files))
    } else {
        ui.debug("run cache off (--no-run-cache or store.run_cache = false): training");
        None
    };
    let cache_hit = cached.is_some();
    let (files, summary) = match cached {
        Some(files) => {
            ui.status(format!(
                "run cache hit: reusing the metrics, predictions and checkpoint of run {}, \
                 made from the same config, data, modelci, libtorch and device",
                short(&fingerprint)
            ));
            let summary = format!(
                "This run: reused from the run cache (fingerprint `{}`): the config, data, \
                 modelci {}, libtorch {LIBTORCH_VERSION} and device ({}) are those of an \
                 earlier run, so nothing was trained; `metrics.json` says how that run was made.",
                short(&fingerprint),
                env!("CARGO_PKG_VERSION"),
                device.name
            );
            (files, summary)
        }
        None => {
            if use_cache {
                ui.debug(format!("run cache miss: no run {} in the store", short(&fingerprint)));
            }
            let made = train_and_evaluate(&config, &device, &datasets, &fingerprint, ui)?;
            if use_cache && let Err(error) = store.record_run(&fingerprint, &made.0.named()) {
                ui.warn(format!("cannot keep this run in the run cache: {error}"));
            }
            made
        }
    };
    files.write(&output)?;

    let current =
        input::read_run(&output.join(METRICS_FILE), Some(&output.join(PREDICTIONS_FILE)))?;
    let baseline_pair = baseline.as_ref().map(|(run, source)| (run, source));
    let outcome = gate::compare(&current, baseline_pair, &location, &config.gate);
    let summary = RunSummary { lines: vec![summary] };
    let report = report::write_outputs(&outcome, &output, &options.label, &summary)?;

    if options.update_baseline {
        let baseline_dir = PathBuf::from(&location);
        atomic::replace_dir::<anyhow::Error>(&baseline_dir, |staging| {
            atomic::write(&staging.join(METRICS_FILE), &files.metrics)?;
            atomic::write(&staging.join(PREDICTIONS_FILE), &files.predictions)?;
            Ok(())
        })?;
        ui.status(format!("baseline updated: {}", baseline_dir.display()));
    }

    Ok(RunResult { outcome, output, report, baseline_updated: options.update_baseline, cache_hit })
}

/// Says which device a run uses: as status when `auto` chose it, so that the log shows the
/// choice and its reason; as a debug line when the config named it.
fn tell_device(device: &ChosenDevice, requested: crate::config::Device, ui: &Ui) {
    let line = format!("device {} ({})", device.name, device.reason);
    if requested == crate::config::Device::Auto { ui.status(line) } else { ui.debug(line) }
}

/// The first 12 hex digits of a digest, enough to tell runs apart in a message.
fn short(digest: &Digest) -> String {
    digest.hex()[..12].to_string()
}

/// The tree digests of the two datasets, as the store keeps them.
#[derive(Debug, Serialize)]
struct DatasetDigests {
    train: Digest,
    test: Digest,
}

fn save_dataset(store: &Store, folder: &Path, ui: &Ui) -> anyhow::Result<Digest> {
    if folder.is_file() {
        // A CSV dataset is one file: kept as a blob, and named by its content's digest.
        let (digest, size) = store.put_file(folder).with_context(|| {
            format!("cannot keep the dataset {} in the store", folder.display())
        })?;
        ui.debug(format!("dataset {}: {size} bytes, sha256 {}", folder.display(), short(&digest)));
        return Ok(digest);
    }
    if !folder.is_dir() {
        // Let the data loader give the error: it knows the layout it expected.
        data::scan(folder, true)?;
    }
    let saved = store
        .save(folder)
        .with_context(|| format!("cannot keep the dataset {} in the store", folder.display()))?;
    ui.debug(format!(
        "dataset {}: tree {} ({} files, {} hashed, the rest unchanged since the last run)",
        folder.display(),
        short(&saved.digest),
        saved.files,
        saved.hashed
    ));
    Ok(saved.digest)
}

/// A dataset that is not what `modelci.lock` pins is still used, with a warning: the lock
/// file is for `data pull` and cache keys, and the fingerprint already follows the data.
fn warn_if_unlocked_changes(
    config: &Config,
    datasets: &DatasetDigests,
    ui: &Ui,
) -> anyhow::Result<()> {
    let Some(lock) = crate::datasets::read_lock(config)? else { return Ok(()) };
    for (name, digest) in [("train", &datasets.train), ("test", &datasets.test)] {
        let locked = lock.datasets.get(name).map(|dataset| dataset.tree.as_str());
        if locked.is_some_and(|locked| locked != digest.hex()) {
            ui.warn(format!(
                "dataset {name} differs from {}; `modelci data lock` updates it",
                crate::datasets::LOCK_FILE
            ));
        }
    }
    Ok(())
}

/// Everything a run's results depend on, and nothing else: the gate's rules, the output folder
/// and the baseline are left out, so that changing them reuses the run.
fn fingerprint(
    config: &Config,
    datasets: &DatasetDigests,
    device: &ChosenDevice,
) -> anyhow::Result<Digest> {
    #[derive(Serialize)]
    struct Inputs<'a> {
        layout: Layout,
        csv: &'a Option<tabular::CsvConfig>,
        color: crate::config::Color,
        image_size: [u32; 2],
        center_crop: Option<[u32; 2]>,
        mean: &'a [f32],
        std: &'a [f32],
        model: &'a ModelConfig,
        training: TrainingDescription,
        seed: u64,
        threads: usize,
    }
    let inputs = Inputs {
        layout: config.data.layout,
        csv: &config.data.csv,
        color: config.data.color,
        image_size: config.data.image_size,
        center_crop: config.data.center_crop,
        mean: &config.data.mean,
        std: &config.data.std,
        model: &config.model,
        training: describe_training(&config.train),
        seed: config.train.seed,
        threads: config.train.threads,
    };
    let inputs = serde_json::to_vec(&inputs)?;
    let kind = if device.device.is_cuda() { "cuda" } else { "cpu" };
    // A TorchScript module is an input too: its bytes, not its path.
    let script = script_bytes(config)?.map(|bytes| Digest::of(&bytes).0.to_vec());
    Ok(Fingerprint::default()
        .field("training config", &inputs)
        .field("torchscript module", script.as_deref().unwrap_or_default())
        .field("train dataset", &datasets.train.0)
        .field("test dataset", &datasets.test.0)
        .field("modelci version", env!("CARGO_PKG_VERSION").as_bytes())
        .field("libtorch version", LIBTORCH_VERSION.as_bytes())
        .field("device kind", kind.as_bytes())
        .finish())
}

/// The files a run produces before the gate: kept in the run cache, and copied to the run
/// folder.
#[derive(Debug)]
struct RunFiles {
    metrics: Vec<u8>,
    predictions: Vec<u8>,
    checkpoint: Vec<u8>,
    /// `model.json`, which makes the run folder a checkpoint `modelci evaluate` can use.
    description: Vec<u8>,
    /// `model.pt`: the TorchScript module of a `torchscript` model.
    script: Option<Vec<u8>>,
}

impl RunFiles {
    fn named(&self) -> Vec<(&'static str, &[u8])> {
        let mut files = vec![
            (CHECKPOINT_FILE, &self.checkpoint[..]),
            (checkpoint::DESCRIPTION_FILE, &self.description[..]),
            (METRICS_FILE, &self.metrics[..]),
            (PREDICTIONS_FILE, &self.predictions[..]),
        ];
        if let Some(script) = &self.script {
            files.push((checkpoint::SCRIPT_FILE, &script[..]));
        }
        files
    }

    /// The files of a cached run; `None` when one is missing (the run is then made again).
    fn from_cache(files: Vec<crate::store::NamedFile>) -> Option<RunFiles> {
        let mut files: std::collections::BTreeMap<String, Vec<u8>> = files.into_iter().collect();
        Some(RunFiles {
            metrics: files.remove(METRICS_FILE)?,
            predictions: files.remove(PREDICTIONS_FILE)?,
            checkpoint: files.remove(CHECKPOINT_FILE)?,
            description: files.remove(checkpoint::DESCRIPTION_FILE)?,
            script: files.remove(checkpoint::SCRIPT_FILE),
        })
    }

    fn write(&self, output: &Path) -> anyhow::Result<()> {
        for (name, bytes) in self.named() {
            atomic::write(&output.join(name), bytes)?;
        }
        Ok(())
    }
}

/// A trained model and how its training went.
pub struct Fitted {
    pub vs: nn::VarStore,
    pub network: model::Network,
    pub trained: train::TrainReport,
    /// Images held out of the training set for validation.
    pub validation_size: usize,
}

/// The labels of `dataset` as a tensor: class indices, or a regression's float targets.
pub fn labels_tensor(dataset: &Dataset) -> Tensor {
    match &dataset.targets {
        Some(targets) => Tensor::from_slice(targets),
        None => Tensor::from_slice(&dataset.labels()),
    }
}

/// Predicts every test sample and computes the metrics: `(metrics, confusion matrix,
/// predictions file, status line)`, for classification or regression alike.
pub fn evaluate_set(
    network: &model::Network,
    images: &Tensor,
    dataset: &Dataset,
    classes: &[String],
) -> anyhow::Result<(serde_json::Value, Option<ConfusionMatrix>, Vec<u8>, String)> {
    if let Some(targets) = &dataset.targets {
        let predictions =
            evaluate::predict_regression(network, images, &dataset.listing.samples, targets)
                .context("libtorch failed while evaluating")?;
        let metrics = metrics::regression(&predictions);
        let status = format!(
            "evaluated {} test rows: mse {:.4}, mae {:.4}, r2 {}",
            dataset.len(),
            metrics.mse,
            metrics.mae,
            metrics.r2.map_or("undefined".to_string(), |r2| format!("{r2:.4}"))
        );
        let lines = json_lines(&predictions)?;
        return Ok((serde_json::to_value(metrics)?, None, lines, status));
    }
    let predictions = evaluate::predict(network, images, &dataset.listing.samples)
        .context("libtorch failed while evaluating")?;
    let (metrics, confusion) = metrics::compute(&predictions, classes);
    let status = format!(
        "evaluated {} test images: accuracy {:.4}, loss {:.4}",
        dataset.len(),
        metrics.accuracy,
        metrics.loss
    );
    let lines = json_lines(&predictions)?;
    Ok((serde_json::to_value(metrics)?, Some(confusion), lines, status))
}

/// The images of `dataset` as one `[n, channels, height, width]` tensor on `device`.
pub fn images_tensor(dataset: &Dataset, device: tch::Device) -> Tensor {
    let [channels, height, width] = dataset.shape.map(|size| size as i64);
    Tensor::from_slice(&dataset.pixels)
        .view([dataset.len() as i64, channels, height, width])
        .to_device(device)
}

/// Builds the configured model and trains it on `train_set` (less its validation part).
/// libtorch's threads and seed must be set before.
pub fn fit(
    config: &Config,
    device: &ChosenDevice,
    train_set: &Dataset,
    ui: &Ui,
) -> anyhow::Result<Fitted> {
    let train_images = images_tensor(train_set, device.device);
    let train_labels = labels_tensor(train_set).to_device(device.device);
    let classes = &train_set.listing.classes;

    let vs = nn::VarStore::new(device.device);
    if config.train.loss == Loss::BinaryCrossEntropy && classes.len() != 2 {
        bail!(
            "train.loss = \"binary_cross_entropy\" needs exactly two classes; {} has {} ({})\n\
             hint: use loss = \"cross_entropy\" for more classes",
            config.data.train.display(),
            classes.len(),
            classes.join(", ")
        );
    }
    let mut network = model::network(
        &vs.root(),
        &config.model,
        train_set.shape,
        outputs(config, classes),
        config_dir(config),
    )?;
    if vs.trainable_variables().is_empty() {
        // A TorchScript module whose parameters are all frozen: nothing to train.
        ui.status(format!(
            "the {} model has no parameters that require grad: evaluating it as it is",
            model_kind(&config.model)
        ));
        let trained = train::TrainReport {
            epochs: Vec::new(),
            best_epoch: None,
            seconds: 0.0,
            samples_per_second: 0.0,
        };
        network.set_training(false);
        return Ok(Fitted { vs, network, trained, validation_size: 0 });
    }
    ui.status(format!(
        "training {} ({} parameters) on {} images, {} classes, {}",
        model_kind(&config.model),
        parameter_count(&vs),
        train_set.len(),
        classes.len(),
        device.name
    ));
    // A validation set, when asked for, is held out of the training set by a seeded draw.
    let held_out = config.train.validation_fraction.map(|fraction| {
        let (kept, held) = schedule::validation_split(train_set.len(), fraction, config.train.seed);
        let select = |positions: Vec<usize>, tensor: &Tensor| {
            let positions: Vec<i64> = positions.into_iter().map(|p| p as i64).collect();
            tensor.index_select(0, &Tensor::from_slice(&positions).to_device(device.device))
        };
        let validation = (select(held.clone(), &train_images), select(held, &train_labels));
        ((select(kept.clone(), &train_images), select(kept, &train_labels)), validation)
    });
    let (fit_images, fit_labels, validation) = match &held_out {
        Some(((images, labels), (held_images, held_labels))) => {
            (images, labels, Some(train::Batches { images: held_images, labels: held_labels }))
        }
        None => (&train_images, &train_labels, None),
    };
    let validation_size = validation.as_ref().map_or(0, |held| held.images.size()[0] as usize);
    let batches = train::Batches { images: fit_images, labels: fit_labels };
    network.set_training(true);
    let trained = train::train(&vs, &network, batches, validation, &config.train, ui)?;
    network.set_training(false);
    Ok(Fitted { vs, network, trained, validation_size })
}

/// How many outputs the configured loss needs for `classes`.
fn outputs(config: &Config, classes: &[String]) -> usize {
    config.train.loss.outputs(classes.len())
}

/// The folder the config's relative paths start from.
fn config_dir(config: &Config) -> &Path {
    config.path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The TorchScript file of a `torchscript` model, to be copied into its checkpoint.
fn script_bytes(config: &Config) -> anyhow::Result<Option<Vec<u8>>> {
    match &config.model {
        ModelConfig::Torchscript { path } => {
            Ok(Some(model::read_script(&config_dir(config).join(path))?))
        }
        _ => Ok(None),
    }
}

/// Sets libtorch's thread counts and seed from the config: before anything else touches
/// libtorch, since it sizes its pools on first use.
pub fn prepare_libtorch(config: &Config) {
    tch::set_num_threads(config.train.threads as i32);
    tch::set_num_interop_threads(config.train.threads as i32);
    tch::manual_seed(config.train.seed as i64);
}

/// Loads the datasets, trains, evaluates: the run's files and the report's summary line.
fn train_and_evaluate(
    config: &Config,
    device: &ChosenDevice,
    digests: &DatasetDigests,
    fingerprint: &Digest,
    ui: &Ui,
) -> anyhow::Result<(RunFiles, String)> {
    prepare_libtorch(config);
    let started = Instant::now();
    let (train_set, test_set, scaling) = load_datasets(config, ui)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let fitted = fit(config, device, &train_set, ui)?;
    let Fitted { vs, network, trained, validation_size } = &fitted;
    let classes = train_set.listing.classes.clone();
    let checkpoint = checkpoint::weights(vs)?;
    let description = Checkpoint::new(
        &config.model,
        &config.data,
        &classes,
        outputs(config, &classes),
        scaling.as_ref(),
    )
    .to_json()?;
    let test_images = images_tensor(&test_set, device.device);

    let started = Instant::now();
    let (metrics, confusion, predictions, status) =
        evaluate_set(network, &test_images, &test_set, &classes)?;
    let evaluate_seconds = started.elapsed().as_secs_f64();
    ui.status(status);

    let metrics_file = MetricsFile {
        schema: METRICS_SCHEMA,
        metrics: &metrics,
        classes: &classes,
        confusion_matrix: confusion.as_ref(),
        metadata: Metadata {
            modelci_version: env!("CARGO_PKG_VERSION"),
            libtorch_version: LIBTORCH_VERSION,
            device: &device.name,
            seed: config.train.seed,
            threads: config.train.threads,
            fingerprint: fingerprint.hex(),
            model: describe_model(&config.model, parameter_count(vs)),
            training: describe_training(&config.train),
            datasets: DatasetSizes {
                train: train_set.len() - validation_size,
                validation: *validation_size,
                skipped_invalid: train_set.skipped_invalid + test_set.skipped_invalid,
                test: test_set.len(),
                classes: classes.len(),
                digests,
            },
            best_epoch: trained.best_epoch,
            epochs: &trained.epochs,
            durations: Durations {
                load_seconds,
                train_seconds: trained.seconds,
                evaluate_seconds,
                train_samples_per_second: trained.samples_per_second,
            },
        },
    };
    let summary = format!(
        "This run: {} trained for {} epochs on {} images ({:.0} samples/s, {:.1} s), evaluated \
         on {} images; seed {}, {} thread(s), {}, libtorch {}.",
        model_kind(&config.model),
        trained.epochs.len(),
        train_set.len() - validation_size,
        trained.samples_per_second,
        trained.seconds,
        test_set.len(),
        config.train.seed,
        config.train.threads,
        device.name,
        LIBTORCH_VERSION
    );
    let files = RunFiles {
        metrics: to_json(&metrics_file)?,
        predictions,
        checkpoint,
        description,
        script: script_bytes(config)?,
    };
    Ok((files, summary))
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

/// Both datasets, and the feature scaling fitted on the training set when a `csv` dataset asks
/// for standardisation.
fn load_datasets(
    config: &Config,
    ui: &Ui,
) -> anyhow::Result<(Dataset, Dataset, Option<tabular::Standardization>)> {
    let scaling = standardization(&config.data)?;
    let train = load_dataset(&config.data.train, &config.data, None, scaling.as_ref(), ui)?;
    let test =
        load_dataset(&config.data.test, &config.data, Some(&train.listing), scaling.as_ref(), ui)?;
    Ok((train, test, scaling))
}

/// The feature scaling of a `csv` dataset with `standardize = true`, fitted on its training
/// rows only.
pub fn standardization(
    data: &crate::config::DataConfig,
) -> anyhow::Result<Option<tabular::Standardization>> {
    match &data.csv {
        Some(csv) if csv.standardize => Ok(Some(tabular::fit_standardization(&data.train, csv)?)),
        _ => Ok(None),
    }
}

/// Loads the dataset at `path`. With `classes_of`, the dataset must have that listing's class
/// map (a test set, against the training set or a checkpoint).
pub fn load_dataset(
    path: &Path,
    data: &crate::config::DataConfig,
    classes_of: Option<&data::Listing>,
    scaling: Option<&tabular::Standardization>,
    ui: &Ui,
) -> anyhow::Result<Dataset> {
    if let Some(csv) = &data.csv {
        let classes = match classes_of {
            Some(listing) => listing.classes.clone(),
            None => tabular::classes(path, csv)?,
        };
        return Ok(tabular::load(path, csv, &classes, scaling)?);
    }
    if data.layout == Layout::Idx {
        let classes = match classes_of {
            Some(listing) => listing
                .classes
                .iter()
                .map(|name| name.parse::<u8>())
                .collect::<Result<Vec<_>, _>>()
                .context("an IDX dataset's classes are label values from 0 to 255")?,
            None => idx::classes(path)?,
        };
        return Ok(idx::load(path, &classes, data)?);
    }
    let listing = data::scan(path, data.skip_invalid)?;
    let empty: Vec<&str> = listing
        .classes
        .iter()
        .enumerate()
        .filter(|(label, _)| !listing.samples.iter().any(|sample| sample.label == *label))
        .map(|(_, class)| class.as_str())
        .collect();
    if !empty.is_empty() {
        ui.warn(format!(
            "{} has class folders with no images, kept as classes (data.skip_invalid): {}",
            path.display(),
            empty.join(", ")
        ));
    }
    if let Some(expected) = classes_of {
        data::check_same_classes(expected, &listing)?;
    }
    if let Some(first) = listing.skipped.first() {
        ui.warn(format!(
            "skipped {} file(s) in {} that are not images in class folders, e.g. {}",
            listing.skipped.len(),
            listing.root.display(),
            first.display()
        ));
    }
    let bar = ui.bar(listing.samples.len() as u64, "loading");
    let tick = || bar.inc(1);
    let decoded = data::decode(listing, data, &tick);
    bar.finish_and_clear();
    let (dataset, skipped) = decoded?;
    if let Some((first, reason)) = skipped.first() {
        ui.warn(format!(
            "left out {} image(s) of {} that could not be decoded (data.skip_invalid), e.g. \
             {}: {reason}",
            skipped.len(),
            path.display(),
            first.display()
        ));
    }
    Ok(dataset)
}

pub(crate) fn model_kind(model: &ModelConfig) -> &'static str {
    match model {
        ModelConfig::Mlp { .. } => "mlp",
        ModelConfig::Cnn { .. } => "cnn",
        ModelConfig::Linear => "linear",
        ModelConfig::Resnet { .. } => "resnet",
        ModelConfig::Torchscript { .. } => "torchscript",
    }
}

pub(crate) fn parameter_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(Tensor::numel).sum::<usize>() as i64
}

fn describe_model(model: &ModelConfig, parameters: i64) -> ModelDescription<'_> {
    ModelDescription { config: model, parameters }
}

fn describe_training(train: &TrainConfig) -> TrainingDescription {
    TrainingDescription {
        epochs: train.epochs,
        batch_size: train.batch_size,
        optimizer: train.optimizer,
        learning_rate: train.learning_rate,
        weight_decay: train.weight_decay,
        loss: train.loss,
        label_smoothing: train.label_smoothing,
        clip_grad_norm: train.clip_grad_norm,
        schedule: train.schedule,
        warmup_epochs: train.warmup_epochs,
        validation_fraction: train.validation_fraction,
        early_stopping: train.early_stopping,
        augment: train.augment,
    }
}

pub(crate) fn to_json(value: &impl Serialize) -> anyhow::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    Ok(bytes)
}

pub(crate) fn json_lines<T: Serialize>(predictions: &[T]) -> anyhow::Result<Vec<u8>> {
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

/// What `modelci train` wrote.
#[derive(Debug)]
pub struct Trained {
    /// The checkpoint folder: `model.safetensors` and `model.json`.
    pub output: PathBuf,
    pub report: train::TrainReport,
    pub images: usize,
}

/// `modelci train`: trains as `modelci run` would, on the training set alone, and writes the
/// checkpoint folder; there is no evaluation and no gate.
pub fn train_only(config_path: &Path, output: Option<&Path>, ui: &Ui) -> anyhow::Result<Trained> {
    let config = Config::load(config_path)?;
    let output = output.map_or_else(|| config.output.dir.clone(), Path::to_path_buf);
    let device = torch::choose_device(config.train.device)?;
    tell_device(&device, config.train.device, ui);
    prepare_libtorch(&config);
    let scaling = standardization(&config.data)?;
    let train_set = load_dataset(&config.data.train, &config.data, None, scaling.as_ref(), ui)?;
    let fitted = fit(&config, &device, &train_set, ui)?;
    let classes = &train_set.listing.classes;
    let description = Checkpoint::new(
        &config.model,
        &config.data,
        classes,
        outputs(&config, classes),
        scaling.as_ref(),
    );
    atomic::write(&output.join(CHECKPOINT_FILE), &checkpoint::weights(&fitted.vs)?)?;
    atomic::write(&output.join(checkpoint::DESCRIPTION_FILE), &description.to_json()?)?;
    if let Some(script) = script_bytes(&config)? {
        atomic::write(&output.join(checkpoint::SCRIPT_FILE), &script)?;
    }
    Ok(Trained { output, report: fitted.trained, images: train_set.len() - fitted.validation_size })
}
