//! Runs a parsed command line and decides the exit status.

use std::io::Write;

use crate::cli::{Cli, Command};
use crate::ui::Ui;

/// What the exit status of `modelci` means. Each code means one thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The gate passed, or there was no baseline to compare with, or the command succeeded.
    Success = 0,
    /// The gate found a regression.
    Regression = 1,
    /// No verdict: bad usage, an invalid config, unreadable data, or a failure while training.
    Error = 2,
    /// The gate passed, but the comment or job summary could not be written, and
    /// `--fail-on-publish-error` asked for that to fail the build.
    PublishError = 3,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

/// Runs the command and writes its results to `stdout`.
pub fn execute(cli: Cli, ui: &Ui, stdout: &mut dyn Write) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Run(args) => run(args, ui, stdout),
        Command::Train(args) => train(args, ui, stdout),
        Command::Evaluate(args) => evaluate(args, ui, stdout),
        Command::Gate(args) => gate(args, ui, stdout),
        Command::Comment(args) => comment(args, ui, stdout),
        Command::Doctor => doctor(stdout),
        Command::Store(args) => store(args, ui, stdout),
        Command::Data(args) => data(args, ui, stdout),
        Command::CacheKey { config } => cache_key(&config, stdout),
    }
}

#[cfg(unix)]
fn open_config_store(
    path: &std::path::Path,
) -> anyhow::Result<(crate::config::Config, crate::store::Store)> {
    let config = crate::config::Config::load(path)?;
    let store =
        crate::store::Store::open(&config.store.dir, config.store.level).map_err(|error| {
            anyhow::anyhow!("cannot open the store {}: {error}", config.store.dir.display())
        })?;
    Ok((config, store))
}

#[cfg(unix)]
fn data(args: crate::cli::DataArgs, ui: &Ui, stdout: &mut dyn Write) -> anyhow::Result<Exit> {
    use crate::cli::DataAction;
    use crate::datasets::{self, Pulled, State, short};

    let (config, store) = open_config_store(&args.config)?;
    let mut text = String::new();
    match args.action {
        DataAction::Pull { force } => {
            for (name, pulled) in datasets::pull(&config, &store, force, ui)? {
                let what = match pulled {
                    Pulled::UpToDate(_) => "up to date",
                    Pulled::Cached(_) => "kept in the store (not locked)",
                    Pulled::Restored(_) => "written from the store",
                    Pulled::Fetched(_) => "downloaded, verified and written",
                };
                text.push_str(&format!("{name}: {what} (tree {})\n", short(&pulled.tree())));
            }
        }
        DataAction::Status => {
            for line in datasets::status(&config, &store)? {
                let cached = if line.cached { "in the store" } else { "not in the store" };
                let state = match line.state {
                    State::UpToDate => format!("up to date, {cached}"),
                    State::Changed { current, expected } => format!(
                        "changed: tree {} but {} is expected; `modelci data lock` accepts it",
                        short(&current),
                        short(&expected)
                    ),
                    State::NotLocked { current } => {
                        format!("not locked: tree {}; `modelci data lock` pins it", short(&current))
                    }
                    State::Missing { in_store: true, .. } => {
                        "missing; `modelci data pull` writes it from the store".to_string()
                    }
                    State::Missing { fetchable: true, .. } => {
                        "missing; `modelci data pull` downloads it".to_string()
                    }
                    State::Missing { .. } => {
                        "missing, and neither the store nor a URL has it".to_string()
                    }
                };
                text.push_str(&format!("{}: {} ({state})\n", line.name, line.path.display()));
            }
        }
        DataAction::Lock => {
            let (path, lock) = datasets::lock(&config, &store, ui)?;
            for (name, dataset) in &lock.datasets {
                text.push_str(&format!(
                    "{name}: {} (tree {})\n",
                    dataset.path,
                    &dataset.tree[..12]
                ));
            }
            text.push_str(&format!("wrote {}\n", path.display()));
        }
    }
    write_out(stdout, &text)?;
    Ok(Exit::Success)
}

#[cfg(unix)]
fn cache_key(config: &std::path::Path, stdout: &mut dyn Write) -> anyhow::Result<Exit> {
    let (config, store) = open_config_store(config)?;
    write_out(stdout, &format!("{}\n", crate::datasets::cache_key(&config, &store)?))?;
    Ok(Exit::Success)
}

#[cfg(not(unix))]
fn data(_: crate::cli::DataArgs, _: &Ui, _: &mut dyn Write) -> anyhow::Result<Exit> {
    anyhow::bail!("the store needs a Unix file system (Linux or macOS) in this version")
}

#[cfg(not(unix))]
fn cache_key(_: &std::path::Path, _: &mut dyn Write) -> anyhow::Result<Exit> {
    anyhow::bail!("the store needs a Unix file system (Linux or macOS) in this version")
}

#[cfg(unix)]
fn store(args: crate::cli::StoreArgs, ui: &Ui, stdout: &mut dyn Write) -> anyhow::Result<Exit> {
    use crate::cli::StoreAction;
    use crate::store::{Digest, Store};

    let open = |level| {
        Store::open(&args.store, level).map_err(|error| {
            anyhow::anyhow!("cannot open the store {}: {error}", args.store.display())
        })
    };
    match &args.action {
        StoreAction::Save { path, level } => {
            let saved = open(*level)?.save(path)?;
            ui.status(format!(
                "saved {}: {} files, {} read, {} unchanged since the last save",
                path.display(),
                saved.files,
                saved.hashed,
                saved.files - saved.hashed
            ));
            write_out(stdout, &format!("{}\n", saved.digest))?;
        }
        StoreAction::Restore { digest, target } => {
            let Some(parsed) = Digest::parse(digest) else {
                anyhow::bail!(
                    "`{digest}` is not a tree digest: expected 64 hexadecimal digits, as printed \
                     by `modelci store save`"
                );
            };
            open(crate::store::DEFAULT_LEVEL)?.restore(&parsed, target)?;
            write_out(stdout, &format!("restored {digest} to {}\n", target.display()))?;
        }
        StoreAction::Gc { max_size, keep, config } => {
            let mut keep = keep
                .iter()
                .map(|text| {
                    Digest::parse(text).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--keep `{text}` is not a tree digest (64 hexadecimal digits)"
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let store = open(crate::store::DEFAULT_LEVEL)?;
            if let Some(config) = config {
                let config = crate::config::Config::load(config)?;
                let referenced = crate::datasets::referenced_trees(&config, &store)?;
                ui.debug(format!("{} tree(s) referenced by the config kept", referenced.len()));
                keep.extend(referenced);
            }
            let collected = store.gc(*max_size, &keep)?;
            let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
            write_out(
                stdout,
                &format!(
                    "removed {} trees and {} blobs: {:.1} MiB -> {:.1} MiB\n",
                    collected.removed_trees,
                    collected.removed_blobs,
                    mib(collected.before),
                    mib(collected.after)
                ),
            )?;
            if collected.after > *max_size {
                ui.warn(format!(
                    "the kept trees alone need {:.1} MiB, more than --max-size",
                    mib(collected.after)
                ));
            }
        }
        StoreAction::Hash { files } => {
            for file in files {
                let (digest, _) = crate::store::hash_file(file)?;
                write_out(stdout, &format!("{digest}  {}\n", file.display()))?;
            }
        }
        StoreAction::Verify => {
            let report = open(crate::store::DEFAULT_LEVEL)?.verify()?;
            let mut text = format!(
                "{}: {} blobs, {} trees checked\n",
                args.store.display(),
                report.blobs,
                report.trees
            );
            for problem in &report.problems {
                text.push_str(&format!("problem: {problem}\n"));
            }
            write_out(stdout, &text)?;
            if !report.problems.is_empty() {
                anyhow::bail!("the store has {} problem(s), listed above", report.problems.len());
            }
        }
    }
    Ok(Exit::Success)
}

#[cfg(not(unix))]
fn store(_: crate::cli::StoreArgs, _: &Ui, _: &mut dyn Write) -> anyhow::Result<Exit> {
    anyhow::bail!("the store needs a Unix file system (Linux or macOS) in this version")
}

#[cfg(feature = "torch")]
fn run(args: crate::cli::RunArgs, ui: &Ui, stdout: &mut dyn Write) -> anyhow::Result<Exit> {
    use crate::pipeline::{self, RunOptions};

    let args_publish = args.publish.clone();
    let options = RunOptions {
        config: args.config,
        baseline: args.baseline,
        output: args.output,
        update_baseline: args.update_baseline,
        label: args.label,
        no_run_cache: args.no_run_cache,
    };
    let result = pipeline::run(&options, ui)?;
    write_out(stdout, &crate::report::terminal(&result.outcome))?;
    write_out(stdout, &format!("report: {}\n", result.report.display()))?;
    let metrics = result.output.join(pipeline::METRICS_FILE);
    tell_github_actions(&result.outcome, &result.report, &metrics, ui, stdout)?;
    if result.baseline_updated && result.outcome.verdict == crate::gate::Verdict::Fail {
        ui.warn("this run regressed against the old baseline, and is now the baseline");
    }
    let exit = if pipeline::verdict_is_failure(&result) { Exit::Regression } else { Exit::Success };
    Ok(publish_stage(exit, &result.report, &options.label, &args_publish, ui, stdout))
}

#[cfg(feature = "torch")]
fn train(args: crate::cli::TrainArgs, ui: &Ui, stdout: &mut dyn Write) -> anyhow::Result<Exit> {
    let trained = crate::pipeline::train_only(&args.config, args.output.as_deref(), ui)?;
    let mut text = format!(
        "trained for {} epochs on {} images ({:.0} samples/s, {:.1} s)\n",
        trained.report.epochs.len(),
        trained.images,
        trained.report.samples_per_second,
        trained.report.seconds
    );
    if let Some(best) = trained.report.best_epoch {
        text.push_str(&format!("early stopping kept epoch {best}'s weights\n"));
    }
    text.push_str(&format!("checkpoint: {}\n", trained.output.display()));
    write_out(stdout, &text)?;
    Ok(Exit::Success)
}

#[cfg(feature = "torch")]
fn evaluate(
    args: crate::cli::EvaluateArgs,
    ui: &Ui,
    stdout: &mut dyn Write,
) -> anyhow::Result<Exit> {
    let evaluated = crate::evaluate::evaluate_checkpoint(
        &args.checkpoint,
        &args.data,
        &args.output,
        args.device,
        ui,
    )?;
    write_out(
        stdout,
        &format!(
            "{}\nmetrics: {}\n",
            evaluated.summary,
            evaluated.output.join(crate::pipeline::METRICS_FILE).display()
        ),
    )?;
    Ok(Exit::Success)
}

#[cfg(not(feature = "torch"))]
fn train(_: crate::cli::TrainArgs, _: &Ui, _: &mut dyn Write) -> anyhow::Result<Exit> {
    anyhow::bail!(
        "this modelci was built without the `torch` feature, so it cannot train\nhint: use a \
         build with libtorch"
    )
}

#[cfg(not(feature = "torch"))]
fn evaluate(_: crate::cli::EvaluateArgs, _: &Ui, _: &mut dyn Write) -> anyhow::Result<Exit> {
    anyhow::bail!(
        "this modelci was built without the `torch` feature, so it cannot evaluate a model\n\
         hint: use a build with libtorch"
    )
}

#[cfg(not(feature = "torch"))]
fn run(_: crate::cli::RunArgs, _: &Ui, _: &mut dyn Write) -> anyhow::Result<Exit> {
    anyhow::bail!(
        "this modelci was built without the `torch` feature, so it cannot train\nhint: use a \
         build with libtorch, or gate metrics produced elsewhere"
    )
}

fn gate(args: crate::cli::GateArgs, ui: &Ui, stdout: &mut dyn Write) -> anyhow::Result<Exit> {
    use std::path::{Path, PathBuf};

    use crate::config::{Config, DEFAULT_FILE, GateConfig, Rule};
    use crate::gate::{self, Verdict, input};

    let config_path = args
        .config
        .clone()
        .or_else(|| Path::new(DEFAULT_FILE).is_file().then(|| PathBuf::from(DEFAULT_FILE)));
    let (gate_config, output) = match &config_path {
        Some(path) => {
            let config = Config::load(path)?;
            (config.gate, config.output.dir)
        }
        None => {
            ui.debug("no config: gating every numeric metric with no tolerance");
            let config = GateConfig::with_rules(vec![Rule::new("*")]);
            (config, PathBuf::from("modelci-output"))
        }
    };
    let output = args.output.unwrap_or(output);
    let location = args.baseline.unwrap_or_else(|| gate_config.baseline.display().to_string());

    let current = input::read_run(&args.metrics, args.predictions.as_deref())?;
    let baseline = input::read_baseline(&location)?;
    if baseline.is_none() && gate_config.require_baseline {
        anyhow::bail!(
            "no baseline at {location}, and gate.require_baseline is set\nhint: produce one with \
             `modelci run --update-baseline` on the main branch"
        );
    }
    let pair = baseline.as_ref().map(|(run, source)| (run, source));
    let outcome = gate::compare(&current, pair, &location, &gate_config);
    let report = crate::report::write_outputs(
        &outcome,
        &output,
        &args.label,
        &crate::report::RunSummary::default(),
    )?;
    write_out(stdout, &crate::report::terminal(&outcome))?;
    write_out(stdout, &format!("report: {}\n", report.display()))?;
    tell_github_actions(&outcome, &report, &args.metrics, ui, stdout)?;
    let exit = if outcome.verdict == Verdict::Fail { Exit::Regression } else { Exit::Success };
    Ok(publish_stage(exit, &report, &args.label, &args.publish, ui, stdout))
}

#[cfg(feature = "torch")]
fn doctor(stdout: &mut dyn Write) -> anyhow::Result<Exit> {
    use crate::torch::{LIBTORCH_HAS_CUDA, LIBTORCH_LIB, LIBTORCH_VERSION};

    let devices = tch::Cuda::device_count();
    let loaded = match crate::torch::loaded_lib_dir() {
        Some(lib) => {
            let version = lib.parent().and_then(crate::torch::declared_version);
            format!("{} ({})", lib.display(), version.as_deref().unwrap_or("version unknown"))
        }
        None => "unknown on this system".to_string(),
    };
    let cuda = if !LIBTORCH_HAS_CUDA {
        "not usable: this libtorch has no CUDA libraries".to_string()
    } else if devices == 0 {
        "not usable: no CUDA device is visible".to_string()
    } else {
        format!("usable, {devices} device(s), cuDNN {}", tch::Cuda::cudnn_is_available())
    };
    let yes_no = |flag: bool| if flag { "yes" } else { "no" };
    let text = format!(
        "modelci {}\nlibtorch: {LIBTORCH_VERSION} ({LIBTORCH_LIB})\nloaded: {loaded}\ncuda: \
         {cuda}\nthreads: {} \
         (set per run by train.threads)\nopenmp: {}, mkl: {}, mkldnn: {}\n",
        env!("CARGO_PKG_VERSION"),
        tch::get_num_threads(),
        yes_no(tch::utils::has_openmp()),
        yes_no(tch::utils::has_mkl()),
        yes_no(tch::utils::has_mkldnn()),
    );
    write_out(stdout, &text)?;
    Ok(Exit::Success)
}

#[cfg(not(feature = "torch"))]
fn doctor(stdout: &mut dyn Write) -> anyhow::Result<Exit> {
    write_out(
        stdout,
        &format!(
            "modelci {}\nlibtorch: none (built without the `torch` feature; run cannot train)\n",
            env!("CARGO_PKG_VERSION")
        ),
    )?;
    Ok(Exit::Success)
}

fn comment(args: crate::cli::CommentArgs, ui: &Ui, stdout: &mut dyn Write) -> anyhow::Result<Exit> {
    use crate::publish::{self, CommentOptions, Environment, Publication};

    let report = std::fs::read_to_string(&args.report).map_err(|cause| {
        anyhow::anyhow!("cannot read the report {}: {cause}", args.report.display())
    })?;
    let options = CommentOptions {
        label: args.label,
        dry_run: args.dry_run,
        retry: crate::forge::Retry::default(),
    };
    let environment = Environment::current();
    match publish::comment(&report, &args.report, &options, &environment, stdout) {
        Publication::Posted(message) => ui.status(message),
        Publication::Skipped(message) if args.dry_run => ui.debug(message),
        Publication::Skipped(message) => ui.warn(message),
        Publication::Failed(message) if args.fail_on_publish_error => {
            ui.warn(message);
            return Ok(Exit::PublishError);
        }
        Publication::Failed(message) => ui.warn(message),
    }
    Ok(Exit::Success)
}

/// After the gate: appends the report to the GitHub job summary and posts the sticky comment
/// when running in CI. Returns the exit status: the gate's, unless publishing failed and the
/// user asked for that to fail the build.
fn publish_stage(
    gate_exit: Exit,
    report_path: &std::path::Path,
    label: &str,
    args: &crate::cli::PublishArgs,
    ui: &Ui,
    stdout: &mut dyn Write,
) -> Exit {
    use crate::publish::{self, CommentOptions, Environment, Publication};

    let environment = Environment::current();
    let Ok(report) = std::fs::read_to_string(report_path) else {
        ui.warn(format!("cannot read {} back to publish it", report_path.display()));
        return gate_exit;
    };
    let mut failed = false;
    if let Some(summary) = environment.var("GITHUB_STEP_SUMMARY") {
        let full = format!("in {}", report_path.display());
        if let Err(error) = publish::append_summary(std::path::Path::new(&summary), &report, &full)
        {
            ui.warn(format!("cannot write the job summary: {error}"));
            failed = true;
        }
    }
    let in_ci = environment.var("GITHUB_ACTIONS").as_deref() == Some("true")
        || environment.var("GITLAB_CI").as_deref() == Some("true");
    if in_ci && !args.no_comment {
        let options = CommentOptions {
            label: label.to_string(),
            dry_run: false,
            retry: crate::forge::Retry::default(),
        };
        match publish::comment(&report, report_path, &options, &environment, stdout) {
            Publication::Posted(message) | Publication::Skipped(message) => ui.status(message),
            Publication::Failed(message) => {
                ui.warn(message);
                failed = true;
            }
        }
    }
    if failed && args.fail_on_publish_error && gate_exit == Exit::Success {
        Exit::PublishError
    } else {
        gate_exit
    }
}

/// Under GitHub Actions, annotates the run and sets the step outputs.
fn tell_github_actions(
    outcome: &crate::gate::Outcome,
    report: &std::path::Path,
    metrics: &std::path::Path,
    ui: &Ui,
    stdout: &mut dyn Write,
) -> std::io::Result<()> {
    if std::env::var("GITHUB_ACTIONS").as_deref() != Ok("true") {
        return Ok(());
    }
    write_out(stdout, &crate::actions::annotations(outcome))?;
    if let Some(file) = std::env::var_os("GITHUB_OUTPUT") {
        let outputs = crate::actions::outputs(outcome, report, metrics);
        if let Err(error) = crate::actions::write_outputs(std::path::Path::new(&file), &outputs) {
            ui.warn(format!("cannot write step outputs to $GITHUB_OUTPUT: {error}"));
        }
    }
    Ok(())
}

/// Writes results; a reader that closed the pipe early (`| head`) is not an error.
fn write_out(stdout: &mut dyn Write, text: &str) -> std::io::Result<()> {
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// The error as the user sees it: the message, then each underlying cause that adds to it.
pub fn describe_error(error: &anyhow::Error) -> String {
    let mut text = format!("error: {error}");
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(&format!("\n  caused by: {cause}"));
        }
    }
    text
}
