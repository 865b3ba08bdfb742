//! `modelci gate` on metrics produced by any stack; works without the `torch` feature.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

fn gate(dir: &Path, arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelci"))
        .current_dir(dir)
        .env_remove("GITHUB_ACTIONS")
        .args(["gate", "--quiet"])
        .args(arguments)
        .output()
        .unwrap()
}

fn verdict(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("modelci-output/verdict.json")).unwrap())
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const CONFIG: &str = r#"
[data]
train = "unused"
test = "unused"
image_size = [1, 1]

[model]
kind = "mlp"

[gate]
baseline = "main"

[[gate.rules]]
metric = "eval.accuracy"
absolute_tolerance = 0.01
"#;

#[test]
fn python_metrics_pass_and_fail_by_the_config_rules() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "modelci.toml", CONFIG);
    write(dir.path(), "main/metrics.json", r#"{"eval": {"accuracy": 0.90, "loss": 0.3}}"#);
    write(dir.path(), "pr/metrics.json", r#"{"eval": {"accuracy": 0.895, "loss": NaN}}"#);

    let output = gate(dir.path(), &["--metrics", "pr/metrics.json"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(verdict(dir.path())["verdict"], "pass");
    for file in ["report.md", "junit.xml", "metrics.txt"] {
        assert!(dir.path().join("modelci-output").join(file).is_file(), "{file}");
    }

    write(dir.path(), "pr/metrics.json", r#"{"eval": {"accuracy": 0.85}}"#);
    let output = gate(dir.path(), &["--metrics", "pr"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("eval.accuracy"), "{}", text(&output));
}

#[test]
fn without_a_config_every_metric_is_gated_and_nan_fails() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "base.json", r#"{"accuracy": 0.9, "loss": 0.3}"#);
    write(dir.path(), "run.json", r#"{"accuracy": 0.9, "loss": NaN}"#);
    let output = gate(dir.path(), &["--metrics", "run.json", "--baseline", "base.json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let verdict = verdict(dir.path());
    let loss = verdict["metrics"].as_array().unwrap().iter().find(|m| m["name"] == "loss").unwrap();
    assert_eq!(loss["verdict"], "fail");
    assert_eq!(loss["reason"], "this run's value is NaN");
}

#[test]
fn missing_baseline_is_no_baseline_and_exit_zero() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "run.json", r#"{"accuracy": 0.9}"#);
    let output = gate(dir.path(), &["--metrics", "run.json", "--baseline", "nowhere"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(verdict(dir.path())["verdict"], "no_baseline");
}

#[test]
fn invalid_metrics_file_is_exit_two_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "run.json", "[1, 2");
    let output = gate(dir.path(), &["--metrics", "run.json", "--baseline", "nowhere"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("run.json is not valid JSON"), "{}", text(&output));
}

#[test]
fn baseline_from_git_names_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let git = |arguments: &[&str]| {
        let status = Command::new("git")
            .current_dir(dir.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(arguments)
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", text(&status));
        String::from_utf8_lossy(&status.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    write(dir.path(), "runs/base/metrics.json", r#"{"accuracy": 0.9}"#);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "baseline"]);
    let commit = git(&["rev-parse", "HEAD"]);
    // The working tree moves on; the gate must read the committed file.
    write(dir.path(), "runs/base/metrics.json", r#"{"accuracy": 0.1}"#);
    write(dir.path(), "run.json", r#"{"accuracy": 0.9}"#);

    let output = gate(dir.path(), &["--metrics", "run.json", "--baseline", "git:HEAD:runs/base"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let first = verdict(dir.path());
    assert_eq!(first["verdict"], "pass");
    assert_eq!(first["baseline"]["commit"], commit.as_str());
    let report = std::fs::read_to_string(dir.path().join("modelci-output/report.md")).unwrap();
    assert!(report.contains(&format!("at commit {}", &commit[..12])), "{report}");

    // A baseline folder in the working tree names its last commit, unless edited since.
    let output = gate(dir.path(), &["--metrics", "run.json", "--baseline", "runs/base"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(verdict(dir.path())["metrics"][0]["baseline"], 0.1);
    assert_eq!(verdict(dir.path())["baseline"]["commit"], Value::Null);
    git(&["checkout", "--", "runs/base"]);
    let output = gate(dir.path(), &["--metrics", "run.json", "--baseline", "runs/base"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(verdict(dir.path())["baseline"]["commit"], commit.as_str());

    let output = gate(dir.path(), &["--metrics", "run.json", "--baseline", "git:nope:runs/base"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output).contains("no revision \"nope\""), "{}", text(&output));
}

#[test]
fn github_actions_gets_annotations_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "base.json", r#"{"accuracy": 0.9}"#);
    write(dir.path(), "run.json", r#"{"accuracy": 0.5}"#);
    let outputs = dir.path().join("github_output");
    let output = Command::new(env!("CARGO_BIN_EXE_modelci"))
        .current_dir(dir.path())
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_OUTPUT", &outputs)
        .args(["gate", "-q", "--metrics", "run.json", "--baseline", "base.json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output).contains("::error title=modelci::accuracy: worse by 40.00 pp"));
    let written = std::fs::read_to_string(outputs).unwrap();
    assert!(
        written.starts_with("verdict=fail\nreport-path=modelci-output/report.md\n"),
        "{written}"
    );
}
