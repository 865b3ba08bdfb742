#![cfg(feature = "torch")]
//! `modelci run` as a user meets it: the exit code, what it prints, and the files it writes.
//!
//! Most tests train a small MLP on a subset of the committed MNIST example (20 training and 10
//! test images per digit), which takes about a second; one runs the committed example itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A project folder in a temporary directory: a config and a small image-folder dataset.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        Project::with_config(&small_config(""))
    }

    fn with_config(config: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let example = Path::new(REPO).join("examples/mnist/data");
        for (split, per_class) in [("train", 20), ("test", 10)] {
            for digit in 0..10 {
                let from = example.join(split).join(digit.to_string());
                let to = dir.path().join("data").join(split).join(digit.to_string());
                std::fs::create_dir_all(&to).unwrap();
                let mut names: Vec<_> =
                    std::fs::read_dir(&from).unwrap().map(|e| e.unwrap().file_name()).collect();
                names.sort();
                for name in names.into_iter().take(per_class) {
                    std::fs::copy(from.join(&name), to.join(&name)).unwrap();
                }
            }
        }
        let project = Project { dir };
        project.write("modelci.toml", config.as_bytes());
        project
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// The project with `from` replaced by `to` in its config.
    fn replacing(self, from: &str, to: &str) -> Project {
        let config = std::fs::read_to_string(self.path("modelci.toml")).unwrap();
        assert!(config.contains(from), "{from} is not in the config");
        self.write("modelci.toml", config.replace(from, to).as_bytes());
        self
    }

    fn write(&self, relative: &str, bytes: &[u8]) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn run(&self, extra: &[&str]) -> Output {
        self.run_with("--quiet", extra)
    }

    /// A run that also explains its decisions on stderr (run cache hit or miss, and why).
    fn run_verbose(&self, extra: &[&str]) -> Output {
        self.run_with("--verbose", extra)
    }

    fn run_with(&self, verbosity: &str, extra: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_modelci"));
        command.current_dir(self.dir.path()).args(["run", verbosity]).args(extra);
        command.output().unwrap()
    }

    fn json(&self, relative: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.path(relative)).unwrap()).unwrap()
    }
}

fn small_config(train_overrides: &str) -> String {
    format!(
        r#"
[data]
train = "data/train"
test = "data/test"
image_size = [28, 28]
mean = [0.1307]
std = [0.3081]

[model]
kind = "mlp"
hidden = [32]

[train]
epochs = 3
batch_size = 16
optimizer = "adam"
learning_rate = 0.005
seed = 3
threads = 1
device = "cpu"
{train_overrides}

[gate]
baseline = "baseline"

[[gate.rules]]
metric = "accuracy"
absolute_tolerance = 0.05

[output]
dir = "out"
"#
    )
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn metric_row<'a>(verdict: &'a Value, name: &str) -> &'a Value {
    verdict["metrics"].as_array().unwrap().iter().find(|row| row["name"] == name).unwrap()
}

/// `metrics.json` without the fields documented to vary between identical runs.
fn without_durations(mut metrics: Value) -> Value {
    metrics["metadata"].as_object_mut().unwrap().remove("durations");
    metrics
}

#[test]
fn no_baseline_then_update_then_pass_then_regression() {
    let project = Project::new();

    let first = project.run(&[]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(project.json("out/verdict.json")["verdict"], "no_baseline");
    assert!(stdout(&first).starts_with("verdict: no baseline\n"), "{}", stdout(&first));
    let report = std::fs::read_to_string(project.path("out/report.md")).unwrap();
    assert!(
        report.starts_with("<!-- modelci:report label=default -->\n### ⚪ modelci: no baseline")
    );
    assert!(!report.contains("no regression"), "no baseline must never read as a pass");

    let update = project.run(&["--update-baseline"]);
    assert_eq!(update.status.code(), Some(0), "{}", stderr(&update));
    assert_eq!(
        std::fs::read(project.path("baseline/metrics.json")).ok().map(|b| b.len()),
        std::fs::read(project.path("out/metrics.json")).ok().map(|b| b.len())
    );
    assert!(project.path("baseline/predictions.jsonl").exists());

    let again = project.run(&[]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let verdict = project.json("out/verdict.json");
    assert_eq!(verdict["verdict"], "pass");
    assert_eq!(metric_row(&verdict, "accuracy")["verdict"], "pass");
    let accuracy = project.json("out/metrics.json")["metrics"]["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.6, "the small MLP should learn something, got {accuracy}");

    // A learning rate too small to learn anything in three epochs.
    project.write("modelci.toml", small_config("").replace("0.005", "0.000001").as_bytes());
    let worse = project.run(&[]);
    assert_eq!(worse.status.code(), Some(1), "{}", stderr(&worse));
    let verdict = project.json("out/verdict.json");
    assert_eq!(verdict["verdict"], "fail");
    assert_eq!(metric_row(&verdict, "accuracy")["verdict"], "fail");
    let report = std::fs::read_to_string(project.path("out/report.md")).unwrap();
    assert!(report.contains("### ❌ modelci: regression in accuracy"), "{report}");
    assert!(stdout(&worse).contains("FAIL: worse by"), "{}", stdout(&worse));
}

#[test]
fn missing_baseline_folder_given_on_the_command_line_is_no_baseline() {
    let project = Project::new();
    let output = project.run(&["--baseline", "does/not/exist", "--output", "elsewhere"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(project.json("elsewhere/verdict.json")["verdict"], "no_baseline");
    assert!(!project.path("out").exists());
}

#[test]
fn same_seed_gives_identical_metrics_apart_from_durations() {
    let project = Project::new();
    assert_eq!(project.run(&["--output", "one"]).status.code(), Some(0));
    assert_eq!(project.run(&["--output", "two", "--no-run-cache"]).status.code(), Some(0));
    let one = project.json("one/metrics.json");
    let two = project.json("two/metrics.json");
    assert!(one["metadata"]["durations"]["train_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(without_durations(one), without_durations(two));
    assert_eq!(
        std::fs::read(project.path("one/predictions.jsonl")).unwrap(),
        std::fs::read(project.path("two/predictions.jsonl")).unwrap()
    );
}

#[test]
fn hidden_files_and_folders_are_ignored() {
    let project = Project::new();
    assert_eq!(project.run(&["--output", "clean"]).status.code(), Some(0));

    project.write("data/train/3/.DS_Store", b"\x00\x01 not an image");
    project.write("data/train/.ipynb_checkpoints/x.png", b"not a png either");
    let real_png = std::fs::read(project.path("data/train/3/00000.png")).unwrap();
    project.write("data/test/7/.hidden.png", &real_png);
    project.write("data/test/.cache/0/extra.png", &real_png);
    let output = project.run(&["--output", "cluttered"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    let metrics = project.json("cluttered/metrics.json");
    assert_eq!(metrics["metadata"]["datasets"]["train"], 200);
    assert_eq!(metrics["metadata"]["datasets"]["test"], 100);
    assert_eq!(metrics["classes"].as_array().unwrap().len(), 10);
    // The store keeps the datasets byte for byte, hidden files included, so their digests (and
    // the run's fingerprint) change; what was trained on and measured does not.
    let without_provenance = |mut metrics: Value| {
        let metadata = metrics["metadata"].as_object_mut().unwrap();
        metadata.remove("fingerprint");
        metadata["datasets"].as_object_mut().unwrap().remove("digests");
        without_durations(metrics)
    };
    assert_eq!(without_provenance(metrics), without_provenance(project.json("clean/metrics.json")));
}

#[test]
fn an_identical_run_comes_from_the_run_cache_and_a_changed_one_trains() {
    let project = Project::new();
    let first = project.run_verbose(&["--output", "first"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert!(stderr(&first).contains("run cache miss"), "{}", stderr(&first));
    let first_metrics = std::fs::read(project.path("first/metrics.json")).unwrap();
    let checkpoint = std::fs::read(project.path("first/model.safetensors")).unwrap();
    assert!(checkpoint.len() > 784 * 32 * 4, "the checkpoint holds the weights");

    // Other gate rules do not change what training makes: the run is reused, durations and all.
    let config = small_config("").replace("absolute_tolerance = 0.05", "absolute_tolerance = 0.1");
    assert_ne!(config, small_config(""), "the gate rule to change is in the config");
    project.write("modelci.toml", config.as_bytes());
    let second = project.run_verbose(&["--output", "second"]);
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert!(stderr(&second).contains("run cache hit"), "{}", stderr(&second));
    assert!(!stderr(&second).contains("epoch 1/"), "nothing is trained on a hit");
    assert_eq!(std::fs::read(project.path("second/metrics.json")).unwrap(), first_metrics);
    assert_eq!(std::fs::read(project.path("second/model.safetensors")).unwrap(), checkpoint);
    let report = std::fs::read_to_string(project.path("second/report.md")).unwrap();
    assert!(report.contains("reused from the run cache"), "{report}");

    // --no-run-cache, another seed, or changed data: trained again.
    assert_eq!(project.run(&["--output", "forced", "--no-run-cache"]).status.code(), Some(0));
    assert_ne!(std::fs::read(project.path("forced/metrics.json")).unwrap(), first_metrics);
    project.write("modelci.toml", small_config("").replace("seed = 3", "seed = 4").as_bytes());
    let reseeded = project.run_verbose(&["--output", "reseeded"]);
    assert!(stderr(&reseeded).contains("run cache miss"), "{}", stderr(&reseeded));
    project.write("modelci.toml", small_config("").as_bytes());
    std::fs::remove_file(project.path("data/train/3/00000.png")).unwrap();
    let fewer = project.run_verbose(&["--output", "fewer"]);
    assert!(stderr(&fewer).contains("run cache miss"), "{}", stderr(&fewer));
    assert_eq!(project.json("fewer/metrics.json")["metadata"]["datasets"]["train"], 199);
}

#[test]
fn corrupt_png_is_named_in_the_error() {
    let project = Project::new();
    project.write("data/train/4/broken.png", b"\x89PNG\r\n\x1a\n truncated");
    let output = project.run(&[]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("1 image(s) could not be decoded"), "{message}");
    assert!(message.contains(&format!("data/train/4{}broken.png", "/")), "{message}");
    assert!(!project.path("out/metrics.json").exists(), "no metrics after a data error");
}

#[test]
fn config_error_names_file_line_key_and_allowed_values() {
    let project = Project::with_config(&small_config("optimiser = \"adam\""));
    let output = project.run(&[]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.starts_with("error: invalid config modelci.toml:21:1: "), "{message}");
    assert!(message.contains("unknown field `optimiser`, expected one of"), "{message}");
    assert!(message.contains("`optimizer`"), "{message}");
    assert!(message.contains("21 | optimiser = \"adam\""), "{message}");
}

#[test]
fn missing_config_file_is_a_usage_error() {
    let project = Project::new();
    let output = project.run(&["--config", "nope.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("cannot read the config file nope.toml"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn cuda_asked_for_without_cuda_is_a_clear_error() {
    let project =
        Project::with_config(&small_config("").replace("device = \"cpu\"", "device = \"cuda\""));
    let output = project.run(&[]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("train.device = \"cuda:0\" asks for CUDA"), "{message}");
    assert!(message.contains("hint: "), "{message}");
}

#[test]
fn test_set_with_other_classes_is_an_error() {
    let project = Project::new();
    std::fs::rename(project.path("data/test/9"), project.path("data/test/nine")).unwrap();
    let output = project.run(&[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("the test set's classes differ"), "{}", stderr(&output));
}

#[test]
fn doctor_reports_libtorch_and_cuda() {
    let output = Command::new(env!("CARGO_BIN_EXE_modelci")).arg("doctor").output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("libtorch: 2.13.0 ("), "{text}");
    assert!(text.contains("lib (2.13.0)\ncuda: "), "the loaded libtorch and its version: {text}");
    assert!(text.contains("cuda: "), "{text}");
    assert!(text.contains("threads: "), "{text}");
}

/// The acceptance check of the committed example: the CNN passes its committed baseline and
/// reaches at least 95% accuracy on the 1,000 committed test images.
#[test]
fn committed_example_passes_its_committed_baseline() {
    let output_dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_modelci"))
        .current_dir(REPO)
        .args(["run", "--quiet", "--config", "examples/mnist/modelci.toml", "--output"])
        .arg(output_dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}{}", stdout(&output), stderr(&output));
    let metrics: Value =
        serde_json::from_slice(&std::fs::read(output_dir.path().join("metrics.json")).unwrap())
            .unwrap();
    let accuracy = metrics["metrics"]["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.95, "accuracy {accuracy}");
    assert_eq!(metrics["metadata"]["datasets"]["test"], 1000);
    let verdict: Value =
        serde_json::from_slice(&std::fs::read(output_dir.path().join("verdict.json")).unwrap())
            .unwrap();
    assert_eq!(verdict["verdict"], "pass");
}

/// The committed example's config, rewritten to run from `dir` with `change` applied.
fn example_config_in(dir: &Path, change: (&str, &str)) -> PathBuf {
    let example = Path::new(REPO).join("examples/mnist");
    let text = std::fs::read_to_string(example.join("modelci.toml")).unwrap();
    let absolute = |relative: &str| format!("\"{}\"", example.join(relative).display());
    let text = text
        .replace("\"data/train\"", &absolute("data/train"))
        .replace("\"data/test\"", &absolute("data/test"))
        .replace("baseline = \"baseline\"", &format!("baseline = {}", absolute("baseline")))
        .replace(change.0, change.1);
    let path = dir.join("modelci.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_example_variant(change: (&str, &str)) -> (Output, Value) {
    let dir = tempfile::tempdir().unwrap();
    let config = example_config_in(dir.path(), change);
    let output = Command::new(env!("CARGO_BIN_EXE_modelci"))
        .args(["run", "--quiet", "--config"])
        .arg(&config)
        .args(["--output"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    let verdict = std::fs::read(dir.path().join("out/verdict.json")).unwrap();
    (output, serde_json::from_slice(&verdict).unwrap())
}

/// Another seed is training noise: the gate passes or warns, never fails. A damaged model
/// (a learning rate far too small) fails, and the flips make McNemar's test significant.
#[test]
fn other_seed_is_noise_but_a_damaged_model_is_a_significant_regression() {
    let (output, verdict) = run_example_variant(("seed = 7", "seed = 8"));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let overall = verdict["verdict"].as_str().unwrap();
    assert!(overall == "pass" || overall == "warn", "{verdict:#}");
    assert!(verdict["pairing"]["paired"] == 1000, "{verdict:#}");

    let (output, verdict) =
        run_example_variant(("learning_rate = 0.002", "learning_rate = 0.00001"));
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert_eq!(verdict["verdict"], "fail");
    let accuracy = metric_row(&verdict, "accuracy");
    assert_eq!(accuracy["verdict"], "fail");
    assert_eq!(accuracy["evidence"]["test"], "mcnemar_exact");
    let p = accuracy["evidence"]["p_value"].as_f64().unwrap();
    assert!(p < 1e-6, "p = {p}");
    let newly_wrong = verdict["pairing"]["newly_wrong"].as_array().unwrap().len();
    let newly_right = verdict["pairing"]["newly_right"].as_array().unwrap().len();
    assert!(newly_wrong > 5 * newly_right.max(1), "{newly_wrong} vs {newly_right}");
}

#[test]
fn sgd_with_nesterov_cosine_warmup_clipping_and_smoothing_trains() {
    let project = Project::with_config(&small_config(
        "momentum = 0.9\nnesterov = true\nschedule = \"cosine\"\n\
         min_learning_rate = 0.001\nwarmup_epochs = 1\nclip_grad_norm = 5.0\n\
         label_smoothing = 0.1",
    ))
    .replacing("learning_rate = 0.005", "learning_rate = 0.05")
    .replacing("optimizer = \"adam\"", "optimizer = \"sgd\"");
    let output = project.run(&[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let metrics = project.json("out/metrics.json");
    assert!(metrics["metrics"]["accuracy"].as_f64().unwrap() > 0.6, "{metrics:#}");
    let training = &metrics["metadata"]["training"];
    assert_eq!(training["optimizer"]["nesterov"], true);
    assert_eq!(training["schedule"]["kind"], "cosine");
    let rates: Vec<f64> = metrics["metadata"]["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|epoch| epoch["learning_rate"].as_f64().unwrap())
        .collect();
    assert_eq!(rates.len(), 3);
    assert!((rates[0] - 0.05).abs() < 1e-12, "the warm-up epoch ends at the base rate: {rates:?}");
    assert!((rates[2] - 0.001).abs() < 1e-12, "the last step is at the floor: {rates:?}");
}

#[test]
fn early_stopping_holds_out_a_validation_set_and_keeps_the_best_epoch() {
    // Forty epochs of a large learning rate on 160 images: the validation loss bottoms out
    // early and climbs as the model overfits.
    let project = Project::with_config(&small_config(
        "validation_fraction = 0.2\nearly_stopping = { metric = \"loss\", patience = 2 }",
    ))
    .replacing("epochs = 3", "epochs = 40");
    let output = project.run(&[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let metadata = project.json("out/metrics.json")["metadata"].clone();
    assert_eq!(metadata["datasets"]["train"], 160);
    assert_eq!(metadata["datasets"]["validation"], 40);
    let epochs = metadata["epochs"].as_array().unwrap();
    assert!(epochs.len() < 40, "stopped after {} epochs", epochs.len());
    let best = metadata["best_epoch"].as_u64().unwrap() as usize;
    assert_eq!(best + 2, epochs.len(), "patience 2: two epochs past the best");
    let losses: Vec<f64> =
        epochs.iter().map(|epoch| epoch["validation_loss"].as_f64().unwrap()).collect();
    let lowest = losses.iter().cloned().fold(f64::INFINITY, f64::min);
    assert_eq!(losses[best - 1], lowest, "the kept epoch has the lowest validation loss");
}

#[test]
fn adamw_and_step_decay_train() {
    let project = Project::with_config(&small_config(
        "schedule = \"step\"\nstep_size = 1\ngamma = 0.5\nweight_decay = 0.01",
    ))
    .replacing("optimizer = \"adam\"", "optimizer = \"adamw\"");
    let output = project.run(&[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let metrics = project.json("out/metrics.json");
    assert!(metrics["metrics"]["accuracy"].as_f64().unwrap() > 0.6);
    assert_eq!(metrics["metadata"]["training"]["optimizer"]["kind"], "adamw");
    let accuracy = metrics["metrics"]["accuracy"].as_f64().unwrap();
    let top_5 = metrics["metrics"]["top_5_accuracy"].as_f64().unwrap();
    assert!(top_5 >= accuracy && top_5 <= 1.0, "{top_5} vs {accuracy}");
    let calibration = metrics["metrics"]["calibration_error"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&calibration), "{calibration}");
    let weighted = &metrics["metrics"]["weighted"];
    assert!((weighted["recall"].as_f64().unwrap() - accuracy).abs() < 1e-9, "weighted recall");
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(project.path("out/predictions.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["top"].as_array().unwrap().len(), 5);
    assert_eq!(first["top"][0], first["prediction"]);
    let last = &metrics["metadata"]["epochs"][2]["learning_rate"];
    assert!((last.as_f64().unwrap() - 0.005 * 0.25).abs() < 1e-12, "{last}");
}

/// Writes the PNGs of `split` as gzip-compressed IDX files in `to`, in sorted path order.
fn write_idx(project: &Project, split: &str, to: &str) {
    use std::io::Write;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for digit in 0..10u8 {
        let folder = project.path(&format!("data/{split}/{digit}"));
        let mut names: Vec<_> =
            std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for name in names {
            images.extend(image::open(&name).unwrap().to_luma8().into_raw());
            labels.push(digit);
        }
    }
    let header = |dimensions: &[u32]| {
        let mut bytes = vec![0, 0, 0x08, dimensions.len() as u8];
        dimensions.iter().for_each(|size| bytes.extend_from_slice(&size.to_be_bytes()));
        bytes
    };
    let count = labels.len() as u32;
    let files = [
        ("images-idx3-ubyte.gz", [header(&[count, 28, 28]), images].concat()),
        ("labels-idx1-ubyte.gz", [header(&[count]), labels].concat()),
    ];
    for (name, bytes) in files {
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&bytes).unwrap();
        project.write(&format!("{to}/{name}"), &gzip.finish().unwrap());
    }
}

#[test]
fn an_idx_dataset_trains_like_its_image_folders() {
    let project = Project::new()
        .replacing("train = \"data/train\"", "layout = \"idx\"\ntrain = \"idx/train\"")
        .replacing("test = \"data/test\"", "test = \"idx/test\"");
    write_idx(&project, "train", "idx/train");
    write_idx(&project, "test", "idx/test");
    let output = project.run(&[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let metrics = project.json("out/metrics.json");
    assert_eq!(metrics["metadata"]["datasets"]["train"], 200);
    assert_eq!(metrics["metadata"]["datasets"]["test"], 100);
    assert_eq!(metrics["classes"][9], "9");
    assert!(metrics["metrics"]["accuracy"].as_f64().unwrap() > 0.6, "{metrics:#}");
    let predictions = std::fs::read_to_string(project.path("out/predictions.jsonl")).unwrap();
    assert!(predictions.starts_with("{\"id\":\"00000\",\"label\":0,"), "{predictions}");

    // A truncated label file is named, with what is wrong.
    let labels = project.path("idx/test/labels-idx1-ubyte.gz");
    std::fs::remove_file(&labels).unwrap();
    project.write("idx/test/labels-idx1-ubyte", &[0, 0, 8, 1, 0, 0, 0, 100, 1, 2]);
    let output = project.run(&[]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("labels-idx1-ubyte is not an IDX file"), "{message}");
    assert!(message.contains("promises 100 bytes of data (100) but 2 follow"), "{message}");
}

fn modelci(dir: &Path, arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelci")).current_dir(dir).args(arguments).output().unwrap()
}

#[test]
fn train_then_evaluate_reproduces_the_run_from_the_checkpoint_alone() {
    let project = Project::new();
    assert_eq!(project.run(&["--output", "run"]).status.code(), Some(0));

    let trained = modelci(project.path("").as_path(), &["--quiet", "train", "--output", "ckpt"]);
    assert_eq!(trained.status.code(), Some(0), "{}", stderr(&trained));
    assert!(
        stdout(&trained).contains("trained for 3 epochs on 200 images"),
        "{}",
        stdout(&trained)
    );
    let description = project.json("ckpt/model.json");
    assert_eq!(description["schema"], "modelci.checkpoint/v1");
    assert_eq!(description["model"]["kind"], "mlp");
    assert_eq!(description["classes"].as_array().unwrap().len(), 10);

    // Elsewhere, with no config: the checkpoint and the data are enough.
    let elsewhere = tempfile::tempdir().unwrap();
    let checkpoint = project.path("ckpt");
    let data = project.path("data/test");
    let evaluated = modelci(
        elsewhere.path(),
        &[
            "--quiet",
            "evaluate",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--device",
            "cpu",
        ],
    );
    assert_eq!(evaluated.status.code(), Some(0), "{}", stderr(&evaluated));
    let metrics: Value = serde_json::from_slice(
        &std::fs::read(elsewhere.path().join("modelci-output/metrics.json")).unwrap(),
    )
    .unwrap();
    // Same seed, same data: the very model `run` trained, so the same predictions.
    assert_eq!(metrics["metrics"], project.json("run/metrics.json")["metrics"]);
    assert_eq!(
        std::fs::read(elsewhere.path().join("modelci-output/predictions.jsonl")).unwrap(),
        std::fs::read(project.path("run/predictions.jsonl")).unwrap()
    );
    // The run folder is a checkpoint too.
    assert!(project.path("run/model.json").is_file());

    // Another class set is refused, naming both.
    std::fs::rename(project.path("data/test/9"), project.path("data/test/nine")).unwrap();
    let refused = modelci(
        elsewhere.path(),
        &[
            "evaluate",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("classes differ"), "{}", stderr(&refused));
    let not_a_checkpoint = modelci(
        elsewhere.path(),
        &["evaluate", "--checkpoint", data.to_str().unwrap(), "--data", data.to_str().unwrap()],
    );
    assert_eq!(not_a_checkpoint.status.code(), Some(2));
    assert!(stderr(&not_a_checkpoint).contains("is not a modelci checkpoint"));
}

#[test]
fn linear_and_residual_models_train_and_evaluate_from_their_checkpoints() {
    // The residual network learns more slowly from 200 images: it gets more epochs.
    let models = [
        ("kind = \"linear\"", "epochs = 3", 0.6),
        ("kind = \"resnet\"\nchannels = [8, 16]\nblocks = 1", "epochs = 10", 0.45),
    ];
    for (model, epochs, floor) in models {
        let project = Project::new()
            .replacing("kind = \"mlp\"\nhidden = [32]", model)
            .replacing("epochs = 3", epochs);
        let output = project.run(&["--output", "run"]);
        assert_eq!(output.status.code(), Some(0), "{model}: {}", stderr(&output));
        let metrics = project.json("run/metrics.json");
        let accuracy = metrics["metrics"]["accuracy"].as_f64().unwrap();
        assert!(accuracy > floor, "{model}: accuracy {accuracy}");
        let data = project.path("data/test");
        let evaluated = modelci(
            project.path("").as_path(),
            &["--quiet", "evaluate", "--checkpoint", "run", "--data", data.to_str().unwrap()],
        );
        assert_eq!(evaluated.status.code(), Some(0), "{model}: {}", stderr(&evaluated));
        let again = project.json("modelci-output/metrics.json");
        assert_eq!(again["metrics"], metrics["metrics"], "{model}");
    }
}

/// Opt-in (`cargo test -- --ignored`): the example's CNN on all 8,000 training images of
/// `../shared/data/mnist/png` reaches at least 0.97 on its 2,000 test images.
#[test]
#[ignore = "trains on the full shared MNIST folder; run with --ignored where it exists"]
fn the_example_cnn_on_all_8000_images_reaches_97_percent() {
    let shared = Path::new(REPO).join("../shared/data/mnist/png");
    assert!(shared.is_dir(), "{} is not there", shared.display());
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(Path::new(REPO).join("examples/mnist/modelci.toml"))
        .unwrap()
        .replace("\"data/train\"", &format!("\"{}\"", shared.join("train").display()))
        .replace("\"data/test\"", &format!("\"{}\"", shared.join("test").display()));
    std::fs::write(dir.path().join("modelci.toml"), example).unwrap();
    let output = modelci(dir.path(), &["--quiet", "run", "--no-run-cache"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let metrics: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["metadata"]["datasets"]["train"], 8000);
    assert_eq!(metrics["metadata"]["datasets"]["test"], 2000);
    let accuracy = metrics["metrics"]["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.97, "accuracy {accuracy}");
    eprintln!("full MNIST: accuracy {accuracy}, {:#}", metrics["metadata"]["durations"]);
}

#[test]
fn skip_invalid_leaves_out_undecodable_images_with_a_warning_and_a_count() {
    let project = Project::new().replacing("std = [0.3081]", "std = [0.3081]\nskip_invalid = true");
    project.write("data/train/4/broken.png", b"\x89PNG\r\n\x1a\n truncated");
    let output = project.run(&[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("warning: left out 1 image(s) of ./data/train"), "{message}");
    assert!(message.contains("broken.png"), "{message}");
    let datasets = &project.json("out/metrics.json")["metadata"]["datasets"];
    assert_eq!(datasets["skipped_invalid"], 1);
    assert_eq!(datasets["train"], 200, "the broken image is not counted");
}

/// A project whose model is the TorchScript fixture `name` (see tests/fixtures/torchscript).
fn torchscript_project(name: &str) -> Project {
    let project = Project::new().replacing(
        "kind = \"mlp\"\nhidden = [32]",
        &format!("kind = \"torchscript\"\npath = \"{name}\""),
    );
    let fixture = Path::new(REPO).join("tests/fixtures/torchscript").join(name);
    project.write(name, &std::fs::read(fixture).unwrap());
    project
}

#[test]
fn a_torchscript_module_is_trained_and_its_checkpoint_evaluated() {
    let project = torchscript_project("mlp.pt");
    let output = project.run(&["--output", "run"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let metrics = project.json("run/metrics.json");
    assert_eq!(metrics["metadata"]["epochs"].as_array().unwrap().len(), 3);
    assert_eq!(metrics["metadata"]["model"]["parameters"], 784 * 32 + 32 + 32 * 10 + 10);
    let accuracy = metrics["metrics"]["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.45, "trained from random weights: {accuracy}");
    assert_eq!(project.json("run/model.json")["model"]["path"], "model.pt");

    // The checkpoint carries the module: it evaluates from anywhere, with the trained weights.
    let elsewhere = tempfile::tempdir().unwrap();
    let checkpoint = project.path("run");
    let data = project.path("data/test");
    let evaluated = modelci(
        elsewhere.path(),
        &[
            "evaluate",
            "--checkpoint",
            checkpoint.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(evaluated.status.code(), Some(0), "{}", stderr(&evaluated));
    let again: Value = serde_json::from_slice(
        &std::fs::read(elsewhere.path().join("modelci-output/metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(again["metrics"], metrics["metrics"]);
}

#[test]
fn a_frozen_torchscript_module_is_evaluated_as_it_is() {
    let project = torchscript_project("frozen.pt");
    let output = project.run_verbose(&[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).contains("no parameters that require grad"), "{}", stderr(&output));
    let metrics = project.json("out/metrics.json");
    assert!(metrics["metadata"]["epochs"].as_array().unwrap().is_empty());
    // Untrained random weights: about chance on ten classes.
    assert!(metrics["metrics"]["accuracy"].as_f64().unwrap() < 0.4);
}

#[test]
fn files_that_are_not_usable_torchscript_get_their_own_errors() {
    let cases = [
        ("state-dict.pt", "is not a TorchScript file"),
        ("unknown-op.pt", "uses an operator libtorch 2.13.0 lacks"),
    ];
    for (name, expected) in cases {
        let output = torchscript_project(name).run(&[]);
        assert_eq!(output.status.code(), Some(2), "{name}");
        assert!(stderr(&output).contains(expected), "{name}: {}", stderr(&output));
    }
    let empty = torchscript_project("mlp.pt");
    empty.write("mlp.pt", b"");
    let message = stderr(&empty.run(&[]));
    assert!(message.contains("mlp.pt is empty"), "{message}");
    let missing = torchscript_project("mlp.pt");
    std::fs::remove_file(missing.path("mlp.pt")).unwrap();
    let message = stderr(&missing.run(&[]));
    assert!(message.contains("mlp.pt does not exist"), "{message}");
}

/// Three classes of points around three centres, with a constant and a noise column; the
/// label column is in the middle. Deterministic.
fn blobs(rows: usize, offset: usize) -> String {
    let mut text = String::from("x,noise,species,y,constant\n");
    let centres = [(0.0, 0.0, "setosa"), (8.0, 0.0, "versicolor"), (0.0, 8.0, "virginica")];
    for row in 0..rows {
        let (cx, cy, name) = centres[row % 3];
        let jitter = |k: usize| (((row + offset) * 7919 + k * 104729) % 1000) as f64 / 500.0 - 1.0;
        text.push_str(&format!(
            "{},{},{name},{},5\n",
            cx + 2.0 * jitter(1),
            jitter(3) * 100.0,
            cy + 2.0 * jitter(2)
        ));
    }
    text
}

#[test]
fn a_csv_dataset_trains_a_tabular_model_with_standardisation() {
    let config = small_config("")
        .replace(
            "train = \"data/train\"\ntest = \"data/test\"\nimage_size = [28, 28]\nmean = [0.1307]\nstd = [0.3081]",
            "layout = \"csv\"\ntrain = \"train.csv\"\ntest = \"test.csv\"\nlabel = \"species\"\n\
             features = [\"x\", \"y\", \"constant\"]\nstandardize = true",
        )
        .replace("epochs = 3", "epochs = 20");
    let project = Project::with_config(&config);
    project.write("train.csv", blobs(150, 0).as_bytes());
    project.write("test.csv", blobs(60, 1000).as_bytes());
    let output = project.run(&["--output", "run"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let metrics = project.json("run/metrics.json");
    assert_eq!(metrics["classes"], serde_json::json!(["setosa", "versicolor", "virginica"]));
    assert_eq!(metrics["metadata"]["datasets"]["train"], 150);
    let accuracy = metrics["metrics"]["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.9, "well separated blobs: {accuracy}");
    let scaling = &project.json("run/model.json")["input"]["standardization"];
    assert_eq!(scaling["std"][2], 1.0, "the constant column is only centred");

    // The checkpoint carries the scaling fitted on the training rows.
    let test = project.path("test.csv");
    let evaluated = modelci(
        project.path("").as_path(),
        &["--quiet", "evaluate", "--checkpoint", "run", "--data", test.to_str().unwrap()],
    );
    assert_eq!(evaluated.status.code(), Some(0), "{}", stderr(&evaluated));
    assert_eq!(project.json("modelci-output/metrics.json")["metrics"], metrics["metrics"]);

    // A bad cell is named by line and column.
    project.write("test.csv", b"x,noise,species,y,constant\n1,2,setosa,oops,5\n");
    let output = project.run(&[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("line 2, column y: \"oops\" is not a number"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn centre_crop_and_seeded_augmentation_train_reproducibly() {
    let project = Project::new()
        .replacing("image_size = [28, 28]", "image_size = [28, 28]\ncenter_crop = [24, 24]")
        .replacing("epochs = 3", "epochs = 4\naugment = { flip = true, crop_padding = 2 }");
    let first = project.run(&["--output", "one"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(project.run(&["--output", "two", "--no-run-cache"]).status.code(), Some(0));
    let metrics = project.json("one/metrics.json");
    assert!(metrics["metrics"]["accuracy"].as_f64().unwrap() > 0.5, "{metrics:#}");
    assert_eq!(metrics["metadata"]["training"]["augment"]["crop_padding"], 2);
    // 24 × 24 inputs: the first layer has 576 × 32 weights.
    assert_eq!(metrics["metadata"]["model"]["parameters"], 576 * 32 + 32 + 32 * 10 + 10);
    assert_eq!(
        without_durations(metrics.clone()),
        without_durations(project.json("two/metrics.json")),
        "the same seed draws the same augmentation"
    );
    assert_eq!(project.json("one/model.json")["input"]["center_crop"], serde_json::json!([24, 24]));

    let too_big = Project::new()
        .replacing("image_size = [28, 28]", "image_size = [28, 28]\ncenter_crop = [32, 24]");
    let message = stderr(&too_big.run(&[]));
    assert!(
        message.contains("data.center_crop [32, 24] is larger than data.image_size"),
        "{message}"
    );
}

#[test]
fn auto_device_says_what_it_chose_and_why() {
    let project = Project::new().replacing("device = \"cpu\"", "device = \"auto\"");
    let output = Command::new(env!("CARGO_BIN_EXE_modelci"))
        .current_dir(project.path(""))
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).contains("device cpu (auto: "), "{}", stderr(&output));
}

#[test]
fn binary_cross_entropy_trains_one_logit_for_two_classes() {
    let project =
        Project::new().replacing("epochs = 3", "epochs = 3\nloss = \"binary_cross_entropy\"");
    let ten_classes = project.run(&[]);
    assert_eq!(ten_classes.status.code(), Some(2));
    assert!(
        stderr(&ten_classes).contains("needs exactly two classes; ./data/train has 10"),
        "{}",
        stderr(&ten_classes)
    );

    // Keep the digits 0 and 1.
    for split in ["train", "test"] {
        for digit in 2..10 {
            std::fs::remove_dir_all(project.path(&format!("data/{split}/{digit}"))).unwrap();
        }
    }
    let output = project.run(&["--output", "run"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let metrics = project.json("run/metrics.json");
    assert_eq!(metrics["metadata"]["model"]["parameters"], 784 * 32 + 32 + 32 + 1, "one output");
    assert!(metrics["metrics"]["accuracy"].as_f64().unwrap() >= 0.95, "{metrics:#}");
    assert_eq!(project.json("run/model.json")["outputs"], 1);
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(project.path("run/predictions.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let confidence = first["confidence"].as_f64().unwrap();
    assert!((0.5..=1.0).contains(&confidence), "{first}");

    let data = project.path("data/test");
    let evaluated = modelci(
        project.path("").as_path(),
        &["--quiet", "evaluate", "--checkpoint", "run", "--data", data.to_str().unwrap()],
    );
    assert_eq!(evaluated.status.code(), Some(0), "{}", stderr(&evaluated));
    assert_eq!(project.json("modelci-output/metrics.json")["metrics"], metrics["metrics"]);
}

/// Rows of `y = 3a - 2b + 1` plus a little deterministic noise.
fn linear_rows(rows: usize, offset: usize) -> String {
    let mut text = String::from("a,b,y\n");
    for row in 0..rows {
        let value = |k: usize| (((row + offset) * 7919 + k * 104729) % 1000) as f64 / 250.0 - 2.0;
        let (a, b, noise) = (value(1), value(2), value(3) * 0.01);
        text.push_str(&format!("{a},{b},{}\n", 3.0 * a - 2.0 * b + 1.0 + noise));
    }
    text
}

#[test]
fn a_csv_regression_trains_with_mse_reports_r2_and_is_gated_on_its_metrics() {
    let config = small_config("")
        .replace(
            "train = \"data/train\"\ntest = \"data/test\"\nimage_size = [28, 28]\nmean = [0.1307]\nstd = [0.3081]",
            "layout = \"csv\"\ntask = \"regression\"\ntrain = \"train.csv\"\ntest = \"test.csv\"\n\
             label = \"y\"\nstandardize = true",
        )
        .replace("epochs = 3", "epochs = 30\nloss = \"mse\"")
        .replace("metric = \"accuracy\"\nabsolute_tolerance = 0.05", "metric = \"mse\"\nrelative_tolerance = 0.5");
    let project = Project::with_config(&config);
    project.write("train.csv", linear_rows(300, 0).as_bytes());
    project.write("test.csv", linear_rows(100, 5000).as_bytes());

    let first = project.run(&["--update-baseline", "--output", "run"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let metrics = project.json("run/metrics.json");
    let r2 = metrics["metrics"]["r2"].as_f64().unwrap();
    assert!(r2 > 0.9, "a linear target: r2 {r2}, {metrics:#}");
    let mse = metrics["metrics"]["mse"].as_f64().unwrap();
    assert!((metrics["metrics"]["rmse"].as_f64().unwrap() - mse.sqrt()).abs() < 1e-9);
    assert!(metrics.get("confusion_matrix").is_none(), "{metrics:#}");
    let first_line = std::fs::read_to_string(project.path("run/predictions.jsonl")).unwrap();
    let first_line: Value = serde_json::from_str(first_line.lines().next().unwrap()).unwrap();
    assert!(first_line["target"].is_f64() && first_line["prediction"].is_f64(), "{first_line}");

    // Gated on mse against the baseline: the same run passes (no paired statistics).
    let again = project.run(&["--no-run-cache"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let verdict = project.json("out/verdict.json");
    assert_eq!(verdict["verdict"], "pass", "{verdict:#}");
    assert_eq!(metric_row(&verdict, "mse")["verdict"], "pass");

    // The checkpoint evaluates the regression on its own.
    let test = project.path("test.csv");
    let evaluated = modelci(
        project.path("").as_path(),
        &["--quiet", "evaluate", "--checkpoint", "run", "--data", test.to_str().unwrap()],
    );
    assert_eq!(evaluated.status.code(), Some(0), "{}", stderr(&evaluated));
    assert!(stdout(&evaluated).contains("evaluated 100 test rows: mse "), "{}", stdout(&evaluated));
    assert_eq!(project.json("modelci-output/metrics.json")["metrics"], metrics["metrics"]);

    // A target that is not a number is named.
    project.write("test.csv", b"a,b,y\n1,2,tall\n");
    let message = stderr(&project.run(&[]));
    assert!(
        message.contains("line 2, column y: \"tall\" is not a number to regress on"),
        "{message}"
    );
}
