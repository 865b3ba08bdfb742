//! The command line, as clap reads it. Nothing here touches a file: `app` turns these into
//! validated settings first.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_FILE;
use crate::report::DEFAULT_LABEL;

/// Did the model get worse? Train, evaluate and gate an ML model in CI, and report the diff on
/// the pull request.
#[derive(Debug, Parser)]
#[command(name = "modelci", version, about, long_about = None)]
pub struct Cli {
    /// Print only results and warnings: no progress, no status lines.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// Also explain decisions (device chosen, baseline found or not).
    #[arg(long, short, global = true, conflicts_with = "quiet")]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train, evaluate, gate against the baseline, and write the run folder and the report.
    Run(RunArgs),
    /// Train the configured model on the training set and write a checkpoint folder
    /// (model.safetensors and model.json); no test set, no gate.
    Train(TrainArgs),
    /// Evaluate a checkpoint (a run folder, or the output of `train`) on a dataset with the
    /// checkpoint's classes, and write metrics.json and predictions.jsonl.
    Evaluate(EvaluateArgs),
    /// Compare metrics produced anywhere with a baseline, and write the verdict and reports.
    Gate(GateArgs),
    /// Post a report as the sticky comment on the pull request or merge request.
    Comment(CommentArgs),
    /// Show the libtorch in use, whether CUDA is usable, and the thread count.
    Doctor,
    /// Save, restore and check file trees in the content-addressed store.
    Store(StoreArgs),
    /// Materialise, check and lock the config's datasets through the store.
    Data(DataArgs),
    /// Print a cache key for actions/cache or GitLab's cache:key that changes exactly when a
    /// dataset does (taken over modelci.lock when there is one).
    CacheKey {
        /// The config whose datasets the key covers.
        #[arg(long, short, default_value = DEFAULT_FILE, value_name = "PATH")]
        config: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The config file; paths inside it are relative to its folder.
    #[arg(long, short, default_value = DEFAULT_FILE, value_name = "PATH")]
    pub config: PathBuf,

    /// Where to write the checkpoint [default: output.dir from the config].
    #[arg(long, short, value_name = "DIR")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// The checkpoint folder, holding model.safetensors and model.json.
    #[arg(long, value_name = "DIR")]
    pub checkpoint: PathBuf,

    /// The dataset to evaluate on, in the layout the checkpoint was trained with.
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,

    /// Where to write metrics.json and predictions.jsonl.
    #[arg(long, short, default_value = "modelci-output", value_name = "DIR")]
    pub output: PathBuf,

    /// "auto", "cpu", "cuda" or "cuda:N".
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: crate::config::Device,
}

#[derive(Debug, Args)]
pub struct DataArgs {
    /// The config whose `[data]` section lists the datasets; the store is its `store.dir`
    /// (or MODELCI_STORE).
    #[arg(long, short, global = true, default_value = DEFAULT_FILE, value_name = "PATH")]
    pub config: PathBuf,

    #[command(subcommand)]
    pub action: DataAction,
}

#[derive(Debug, Subcommand)]
pub enum DataAction {
    /// Write every dataset's folder from the store (as copies), downloading only archives the
    /// store lacks; folders already right are left alone.
    Pull {
        /// Replace folders whose content differs from what modelci.lock pins.
        #[arg(long)]
        force: bool,
    },
    /// Say for each dataset whether its folder is up to date, changed, or missing, and whether
    /// the store holds the expected tree. Writes nothing.
    Status,
    /// Keep every dataset in the store and write modelci.lock beside the config, pinning each
    /// dataset's tree digest.
    Lock,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The store folder.
    #[arg(long, env = "MODELCI_STORE", default_value = ".modelci/store", value_name = "DIR")]
    pub store: PathBuf,

    #[command(subcommand)]
    pub action: StoreAction,
}

#[derive(Debug, Subcommand)]
pub enum StoreAction {
    /// Store the tree at PATH and print its digest.
    Save {
        path: PathBuf,
        /// zstd level for new blobs (1-22; higher is smaller and slower).
        #[arg(long, default_value_t = crate::store::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
        level: i32,
    },
    /// Build the tree DIGEST at TARGET, replacing what is there.
    Restore { digest: String, target: PathBuf },
    /// Check every blob and manifest; corrupt blobs are removed.
    Verify,
    /// Print the sha256 of each FILE, as `sha256sum` does (the store is not touched).
    Hash {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Remove the least recently used trees until the store fits in SIZE, then every blob no
    /// remaining tree needs.
    Gc {
        /// The size to shrink to: bytes, or with a K, M, G or T suffix (powers of 1024).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: u64,
        /// A tree to keep whatever its age (repeatable).
        #[arg(long, value_name = "DIGEST")]
        keep: Vec<String>,
        /// Also keep what this config references: its datasets (as locked and as they are
        /// now) and the baseline's run and datasets.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

/// Reads `500M`, `2G`, `1.5T` or a plain byte count; the units are powers of 1024, and a
/// trailing `B` or `iB` is accepted.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let without_b = trimmed.strip_suffix("iB").or_else(|| trimmed.strip_suffix('B'));
    let number = without_b.unwrap_or(trimmed);
    let (digits, power) = match number.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&number[..number.len() - 1], 1),
        Some('M') => (&number[..number.len() - 1], 2),
        Some('G') => (&number[..number.len() - 1], 3),
        Some('T') => (&number[..number.len() - 1], 4),
        _ => (number, 0),
    };
    let value: f64 =
        digits.trim().parse().ok().filter(|v: &f64| v.is_finite() && *v >= 0.0).ok_or_else(
            || {
                format!(
                    "`{text}` is not a size: write bytes, or a number with K, M, G or T (e.g. 500M)"
                )
            },
        )?;
    Ok((value * 1024f64.powi(power)).round() as u64)
}

/// How the run and gate commands publish, and whether a publishing problem fails the build.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Do not comment on the pull request or merge request, even in CI with a token.
    #[arg(long)]
    pub no_comment: bool,

    /// Exit with status 3 when the comment or job summary cannot be written (by default
    /// that is a warning and only the gate decides the exit status).
    #[arg(long)]
    pub fail_on_publish_error: bool,
}

#[derive(Debug, Args)]
pub struct CommentArgs {
    /// The report to post: report.md from a run or gate.
    #[arg(long, value_name = "PATH")]
    pub report: PathBuf,

    /// One comment per label: jobs with different labels keep separate comments.
    #[arg(long, default_value = DEFAULT_LABEL, value_name = "NAME")]
    pub label: String,

    /// Print the requests that would be sent (method, path, body) and send nothing; needs
    /// no token.
    #[arg(long)]
    pub dry_run: bool,

    /// Exit with status 3 when the comment cannot be posted.
    #[arg(long)]
    pub fail_on_publish_error: bool,
}

#[derive(Debug, Args)]
pub struct GateArgs {
    /// This run: a metrics JSON file, or a run folder holding metrics.json.
    #[arg(long, value_name = "PATH")]
    pub metrics: PathBuf,

    /// This run's per-sample predictions (JSON lines) [default: predictions.jsonl beside the
    /// metrics, when present].
    #[arg(long, value_name = "PATH")]
    pub predictions: Option<PathBuf>,

    /// The baseline: a run folder, a metrics file, or git:REVISION:PATH
    /// [default: gate.baseline from the config].
    #[arg(long, value_name = "LOCATION")]
    pub baseline: Option<String>,

    /// The config whose [gate] section holds the rules [default: modelci.toml when it exists;
    /// otherwise every numeric metric is gated with no tolerance].
    #[arg(long, short, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Where to write verdict.json, report.md, junit.xml and metrics.txt
    /// [default: output.dir from the config, else modelci-output].
    #[arg(long, short, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// The label of the report's comment marker.
    #[arg(long, default_value = DEFAULT_LABEL, value_name = "NAME")]
    pub label: String,

    #[command(flatten)]
    pub publish: PublishArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file; paths inside it are relative to its folder.
    #[arg(long, short, default_value = DEFAULT_FILE, value_name = "PATH")]
    pub config: PathBuf,

    /// The baseline to compare with: a run folder, a metrics file, or git:REVISION:PATH
    /// [default: gate.baseline from the config].
    #[arg(long, value_name = "LOCATION")]
    pub baseline: Option<String>,

    /// Where to write this run's files [default: output.dir from the config].
    #[arg(long, short, value_name = "DIR")]
    pub output: Option<PathBuf>,

    /// After gating, make this run the new baseline (exits 0 even on a regression).
    #[arg(long)]
    pub update_baseline: bool,

    /// Train even when the store holds a run with the same fingerprint (same config, data,
    /// modelci, libtorch and device).
    #[arg(long)]
    pub no_run_cache: bool,

    /// The label of the report's comment marker: one comment per label on a pull request.
    #[arg(long, default_value = DEFAULT_LABEL, value_name = "NAME")]
    pub label: String,

    #[command(flatten)]
    pub publish: PublishArgs,
}
