//! What the gate reads: metrics files from modelci or any other stack, per-sample predictions,
//! and baselines from a folder, a file, or a revision in git.
//!
//! # Metrics files
//!
//! A JSON object. A file modelci wrote (`"schema": "modelci.metrics/v1"`) contributes its
//! `metrics` object; any other object is taken whole. Nested objects become dotted names
//! (`{"eval": {"f1": 0.9}}` is `eval.f1`), array items their index (`scores.0`). Python's
//! `json.dump` writes `NaN`, `Infinity` and `-Infinity` for non-finite floats; they are read as
//! such (and fail the gate), as are the strings `"NaN"`, `"Infinity"` and `"-Infinity"`. Other
//! strings, booleans and nulls are non-numeric values, kept by name for the gate's policy.
//!
//! # Predictions files (JSON lines)
//!
//! One object per test sample, per line: `{"id": "...", "label": 3, "prediction": 3}` with
//! optional `"confidence"` and `"loss"` (numbers). `id` matches samples between runs; `label`
//! and `prediction` are class indices (non-negative integers). A training script in any
//! language can write it; modelci writes `predictions.jsonl` beside `metrics.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::metrics::Prediction;

pub const METRICS_FILE: &str = "metrics.json";
pub const PREDICTIONS_FILE: &str = "predictions.jsonl";

/// A metrics file, flattened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsInput {
    /// Numeric values by dotted name, non-finite ones included.
    pub values: BTreeMap<String, f64>,
    /// Names whose value is not a number, with the value as JSON text.
    pub non_numeric: BTreeMap<String, String>,
    /// Class names by index, from the `classes` array of a modelci metrics file.
    pub classes: Option<Vec<String>>,
}

/// A run to compare: its metrics and, when they exist, its predictions.
#[derive(Debug, Clone, Default)]
pub struct RunInput {
    pub metrics: MetricsInput,
    pub predictions: Option<Vec<Prediction>>,
}

/// Where a baseline came from, as the report states it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineSource {
    /// As the user gave it: a path, or `git:REV:PATH`.
    pub location: String,
    /// The commit it was read at, for `git:` baselines.
    pub commit: Option<String>,
    /// That commit's date (ISO 8601).
    pub date: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read {}: {cause}", path.display())]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("{origin} is not valid JSON: {cause}")]
    Json { origin: String, cause: serde_json::Error },
    #[error(
        "{0} is not a JSON object of metrics\nhint: a metrics file is an object of numbers, e.g. {{\"accuracy\": 0.97}}"
    )]
    NotAnObject(String),
    #[error(
        "{origin}:{line}: not a prediction: {cause}\nhint: each line is an object like \
         {{\"id\": \"img-1\", \"label\": 3, \"prediction\": 3}}"
    )]
    Prediction { origin: String, line: usize, cause: serde_json::Error },
    #[error("{origin}: sample id {id:?} appears twice; ids must be unique")]
    DuplicateId { origin: String, id: String },
    #[error("baseline {0:?} is not of the form git:REVISION:PATH")]
    GitSyntax(String),
    #[error("cannot run git to read baseline {location}: {cause}\nhint: is git installed?")]
    GitSpawn { location: String, cause: std::io::Error },
    #[error("git cannot resolve {location}: {message}")]
    Git { location: String, message: String },
}

/// Reads metrics from a file, or from `metrics.json` in a folder.
pub fn read_metrics(path: &Path) -> Result<MetricsInput, InputError> {
    let file = if path.is_dir() { path.join(METRICS_FILE) } else { path.to_path_buf() };
    let text = read_text(&file)?;
    parse_metrics(&text, &file.display().to_string())
}

/// Parses the text of a metrics file; `origin` names it in errors.
pub fn parse_metrics(text: &str, origin: &str) -> Result<MetricsInput, InputError> {
    let text = quote_non_finite(text);
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|cause| InputError::Json { origin: origin.to_string(), cause })?;
    let metrics = match value.get("schema").and_then(|schema| schema.as_str()) {
        Some(schema) if schema.starts_with("modelci.metrics/") => value.get("metrics"),
        _ => Some(&value),
    };
    let Some(metrics @ serde_json::Value::Object(_)) = metrics else {
        return Err(InputError::NotAnObject(origin.to_string()));
    };
    let mut input = MetricsInput::default();
    flatten("", metrics, &mut input);
    if metrics != &value {
        input.classes = value.get("classes").and_then(|classes| {
            classes.as_array()?.iter().map(|name| name.as_str().map(str::to_string)).collect()
        });
    }
    Ok(input)
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut MetricsInput) {
    let join =
        |key: &str| if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
    match value {
        serde_json::Value::Number(number) => {
            if let Some(number) = number.as_f64() {
                out.values.insert(prefix.to_string(), number);
            }
        }
        serde_json::Value::String(text) if non_finite(text).is_some() => {
            out.values.insert(prefix.to_string(), non_finite(text).unwrap_or(f64::NAN));
        }
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                flatten(&join(key), value, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (index, value) in items.iter().enumerate() {
                flatten(&join(&index.to_string()), value, out);
            }
        }
        other => {
            out.non_numeric.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn non_finite(text: &str) -> Option<f64> {
    match text {
        "NaN" | "nan" => Some(f64::NAN),
        "Infinity" | "+Infinity" | "inf" => Some(f64::INFINITY),
        "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// Rewrites the bare `NaN`, `Infinity` and `-Infinity` tokens Python writes into strings that
/// JSON can carry, leaving string contents alone.
fn quote_non_finite(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("NaN") && !text.contains("Infinity") {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        let token =
            ["-Infinity", "Infinity", "NaN"].into_iter().find(|token| rest.starts_with(token));
        if let Some(token) = token {
            out.push('"');
            out.push_str(token);
            out.push('"');
            rest = &rest[token.len()..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out.into()
}

#[derive(Deserialize)]
struct PredictionLine {
    id: String,
    label: usize,
    prediction: usize,
    #[serde(default)]
    confidence: Option<f64>,
    #[serde(default)]
    loss: Option<f64>,
    #[serde(default)]
    top: Vec<usize>,
}

/// The predictions of a classification run, or `None` for a regression run's predictions
/// (lines with a `target` and no `label`): the paired statistics compare classifications,
/// and a regression is gated on its metrics alone.
fn classification_predictions(
    text: &str,
    origin: &str,
) -> Result<Option<Vec<Prediction>>, InputError> {
    let first = text.lines().find(|line| !line.trim().is_empty());
    let regression = first
        .and_then(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .is_some_and(|line| line.get("target").is_some() && line.get("label").is_none());
    if regression { Ok(None) } else { parse_predictions(text, origin).map(Some) }
}

/// Parses a predictions file; `origin` names it in errors.
pub fn parse_predictions(text: &str, origin: &str) -> Result<Vec<Prediction>, InputError> {
    let mut predictions = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: PredictionLine = serde_json::from_str(line).map_err(|cause| {
            InputError::Prediction { origin: origin.to_string(), line: index + 1, cause }
        })?;
        if !seen.insert(parsed.id.clone()) {
            return Err(InputError::DuplicateId { origin: origin.to_string(), id: parsed.id });
        }
        predictions.push(Prediction {
            id: parsed.id,
            label: parsed.label,
            prediction: parsed.prediction,
            confidence: parsed.confidence.unwrap_or(f64::NAN),
            loss: parsed.loss.unwrap_or(f64::NAN),
            top: parsed.top,
        });
    }
    Ok(predictions)
}

/// Reads a run from a metrics file or a run folder, with the predictions file beside it when
/// there is one (`predictions` overrides where to look).
pub fn read_run(path: &Path, predictions: Option<&Path>) -> Result<RunInput, InputError> {
    let metrics = read_metrics(path)?;
    let folder = if path.is_dir() { path } else { path.parent().unwrap_or(Path::new(".")) };
    let predictions_path =
        predictions.map(Path::to_path_buf).unwrap_or_else(|| folder.join(PREDICTIONS_FILE));
    let predictions = if predictions.is_some() || predictions_path.is_file() {
        let text = read_text(&predictions_path)?;
        classification_predictions(&text, &predictions_path.display().to_string())?
    } else {
        None
    };
    Ok(RunInput { metrics, predictions })
}

/// Reads the baseline named by `location`: a run folder, a metrics file, or `git:REV:PATH`
/// (a folder or metrics file in git at a revision, read with `git show`). `None` when it does
/// not exist.
pub fn read_baseline(location: &str) -> Result<Option<(RunInput, BaselineSource)>, InputError> {
    if let Some(spec) = location.strip_prefix("git:") {
        return read_git_baseline(location, spec);
    }
    let path = Path::new(location);
    let metrics_path = if path.is_dir() { path.join(METRICS_FILE) } else { path.to_path_buf() };
    if !metrics_path.is_file() {
        return Ok(None);
    }
    let (commit, date) = last_commit_of(&metrics_path).unzip();
    let source = BaselineSource { location: location.to_string(), commit, date };
    Ok(Some((read_run(path, None)?, source)))
}

/// The last commit that changed `file` and its date, when `file` is committed in git and has
/// no uncommitted changes; otherwise (not in a repository, no git, edited since) nothing.
fn last_commit_of(file: &Path) -> Option<(String, String)> {
    let folder =
        file.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = file.file_name()?;
    let git = |arguments: &[&std::ffi::OsStr]| {
        let output = Command::new("git").arg("-C").arg(folder).args(arguments).output().ok()?;
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let status = git(&["status".as_ref(), "--porcelain".as_ref(), "--".as_ref(), name])?;
    if !status.trim().is_empty() {
        return None;
    }
    let log =
        git(&["log".as_ref(), "-1".as_ref(), "--format=%H %cI".as_ref(), "--".as_ref(), name])?;
    let mut fields = log.split_whitespace();
    Some((fields.next()?.to_string(), fields.next()?.to_string()))
}

fn read_git_baseline(
    location: &str,
    spec: &str,
) -> Result<Option<(RunInput, BaselineSource)>, InputError> {
    let Some((revision, path)) = spec.split_once(':') else {
        return Err(InputError::GitSyntax(location.to_string()));
    };
    if revision.is_empty() {
        return Err(InputError::GitSyntax(location.to_string()));
    }
    let git = |arguments: &[&str]| -> Result<Option<String>, InputError> {
        let output = Command::new("git")
            .args(arguments)
            .output()
            .map_err(|cause| InputError::GitSpawn { location: location.to_string(), cause })?;
        if output.status.success() {
            Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()))
        } else {
            Ok(None)
        }
    };

    let Some(log) = git(&["log", "-1", "--format=%H %cI", revision, "--"])? else {
        return Err(InputError::Git {
            location: location.to_string(),
            message: format!("no revision {revision:?} in this repository"),
        });
    };
    let mut fields = log.split_whitespace();
    let commit = fields.next().map(str::to_string);
    let date = fields.next().map(str::to_string);
    let source = BaselineSource { location: location.to_string(), commit: commit.clone(), date };
    let at = commit.as_deref().unwrap_or(revision);

    let path = path.trim_end_matches('/');
    let (metrics_text, folder) = match git(&["show", &format!("{at}:{path}/{METRICS_FILE}")])? {
        Some(text) => (text, Some(path)),
        None => match git(&["show", &format!("{at}:{path}")])? {
            Some(text) => (text, Path::new(path).parent().and_then(Path::to_str)),
            None => return Ok(None),
        },
    };
    let metrics = parse_metrics(&metrics_text, location)?;
    let predictions = match folder {
        Some(folder) => {
            let file = if folder.is_empty() {
                PREDICTIONS_FILE.to_string()
            } else {
                format!("{folder}/{PREDICTIONS_FILE}")
            };
            match git(&["show", &format!("{at}:{file}")])? {
                Some(text) => classification_predictions(&text, &format!("git:{at}:{file}"))?,
                None => None,
            }
        }
        None => None,
    };
    Ok(Some((RunInput { metrics, predictions }, source)))
}

fn read_text(path: &Path) -> Result<String, InputError> {
    std::fs::read_to_string(path)
        .map_err(|cause| InputError::Read { path: path.to_path_buf(), cause })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(name, value)| (name.to_string(), *value)).collect()
    }

    #[test]
    fn nested_objects_and_arrays_flatten_to_dotted_names() {
        let input =
            parse_metrics(r#"{"a": {"b": 1, "c": [2, {"d": 3}]}, "name": "x", "e": 4.5}"#, "m")
                .unwrap();
        assert_eq!(
            input.values,
            values(&[("a.b", 1.0), ("a.c.0", 2.0), ("a.c.1.d", 3.0), ("e", 4.5)])
        );
        assert_eq!(input.non_numeric.get("name").map(String::as_str), Some("\"x\""));
    }

    #[test]
    fn modelci_files_contribute_their_metrics_object_only() {
        let text = r#"{"schema": "modelci.metrics/v1", "metrics": {"accuracy": 0.9},
                       "metadata": {"seed": 1}}"#;
        assert_eq!(parse_metrics(text, "m").unwrap().values, values(&[("accuracy", 0.9)]));
    }

    #[test]
    fn python_non_finite_tokens_are_read_but_strings_are_left_alone() {
        let text = r#"{"loss": NaN, "up": Infinity, "down": -Infinity, "note": "NaN Infinity",
                       "quoted": "NaN"}"#;
        let input = parse_metrics(text, "m").unwrap();
        assert!(input.values["loss"].is_nan());
        assert!(input.values["quoted"].is_nan());
        assert_eq!(input.values["up"], f64::INFINITY);
        assert_eq!(input.values["down"], f64::NEG_INFINITY);
        assert_eq!(input.non_numeric["note"], "\"NaN Infinity\"");
    }

    #[test]
    fn not_an_object_is_a_clear_error() {
        let error = parse_metrics("[1, 2]", "metrics.json").unwrap_err().to_string();
        assert!(error.starts_with("metrics.json is not a JSON object of metrics"), "{error}");
    }

    #[test]
    fn predictions_are_validated_line_by_line() {
        let good = "{\"id\": \"a\", \"label\": 1, \"prediction\": 0}\n\n{\"id\": \"b\", \"label\": 0, \"prediction\": 0, \"loss\": 0.1}\n";
        let predictions = parse_predictions(good, "p").unwrap();
        let regression = "{\"id\": \"1\", \"target\": 2.5, \"prediction\": 2.0}\n";
        assert_eq!(classification_predictions(regression, "p").unwrap(), None);
        assert!(classification_predictions(good, "p").unwrap().is_some());
        assert_eq!(predictions.len(), 2);
        assert!(!predictions[0].is_correct());
        assert_eq!(predictions[1].loss, 0.1);

        let bad = "{\"id\": \"a\", \"label\": 1, \"prediction\": 0}\n{\"id\": \"b\", \"label\": -1, \"prediction\": 0}";
        let error = parse_predictions(bad, "p.jsonl").unwrap_err().to_string();
        assert!(error.starts_with("p.jsonl:2: not a prediction"), "{error}");

        let twice = "{\"id\": \"a\", \"label\": 1, \"prediction\": 0}\n{\"id\": \"a\", \"label\": 1, \"prediction\": 1}";
        assert!(parse_predictions(twice, "p").unwrap_err().to_string().contains("appears twice"));
    }

    #[test]
    fn malformed_git_location_is_an_error() {
        assert!(matches!(read_baseline("git:nocolon"), Err(InputError::GitSyntax(_))));
        assert!(matches!(read_baseline("git::path"), Err(InputError::GitSyntax(_))));
    }
}
