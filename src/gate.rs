//! The regression gate: compares a run's metrics with a baseline's, metric by metric, by the
//! rules of the config, and decides the verdict.
//!
//! A metric is gated when a rule matches its name; the first matching rule decides its
//! direction and tolerances. A gated metric fails when it is worse than the baseline by more
//! than it is allowed to be: more than the absolute tolerance *and* more than the relative
//! tolerance times the baseline's magnitude (both default to 0, so by default any worsening
//! fails). A value that is NaN or infinite always fails, and a gated metric the baseline has
//! but the run lacks fails. With no baseline at all the verdict is `no_baseline`, which is
//! never a pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};
use serde::Serialize;

use crate::config::{Direction, Rule};

/// The schema tag of the metrics files modelci writes.
pub const METRICS_SCHEMA: &str = "modelci.metrics/v1";
/// The schema tag of `verdict.json`.
pub const VERDICT_SCHEMA: &str = "modelci.verdict/v1";

/// Metric names and their numeric values, names as dotted paths into the JSON object.
pub type FlatMetrics = BTreeMap<String, f64>;

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("cannot read metrics file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is not valid JSON: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{} holds no metrics object\nhint: a metrics file is a JSON object of numbers", .0.display())]
    NotAnObject(PathBuf),
    #[error(
        "no baseline at {}, and gate.require_baseline is set\nhint: produce one with \
         `modelci run --update-baseline` on the main branch",
        .0.display()
    )]
    BaselineRequired(PathBuf),
}

/// Reads a metrics file, or the `metrics.json` in a run folder, as flat metrics.
///
/// A file modelci wrote (`"schema": "modelci.metrics/v1"`) contributes its `metrics` object;
/// any other JSON object is taken whole, so metrics from other tools can be gated too. Nested
/// objects become dotted names, array items their index; values that are not numbers are
/// left out.
pub fn read_metrics(path: &Path) -> Result<FlatMetrics, GateError> {
    let file = if path.is_dir() { path.join("metrics.json") } else { path.to_path_buf() };
    let text = fs_err::read_to_string(&file)
        .map_err(|source| GateError::Read { path: file.clone(), source })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|source| GateError::Json { path: file.clone(), source })?;
    let metrics = match value.get("schema").and_then(|schema| schema.as_str()) {
        Some(schema) if schema.starts_with("modelci.metrics/") => value.get("metrics"),
        _ => Some(&value),
    };
    match metrics {
        Some(metrics @ serde_json::Value::Object(_)) => {
            let mut flat = FlatMetrics::new();
            flatten("", metrics, &mut flat);
            Ok(flat)
        }
        _ => Err(GateError::NotAnObject(file)),
    }
}

fn flatten(prefix: &str, value: &serde_json::Value, out: &mut FlatMetrics) {
    let join =
        |key: &str| if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
    match value {
        serde_json::Value::Number(number) => {
            if let Some(number) = number.as_f64() {
                out.insert(prefix.to_string(), number);
            }
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
        _ => {}
    }
}

/// The verdict on a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// There was nothing to compare with. Never a pass.
    NoBaseline,
}

/// The verdict on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricVerdict {
    Pass,
    Fail,
    /// No baseline value to compare with: the baseline is missing or lacks this metric.
    NoBaseline,
}

/// One gated metric, compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub name: String,
    pub direction: Direction,
    pub baseline: Option<f64>,
    pub current: Option<f64>,
    /// `current - baseline`, when both exist.
    pub change: Option<f64>,
    /// How much worse than the baseline the metric got (negative when it got better).
    pub worsening: Option<f64>,
    /// How much worse than the baseline the metric may get and still pass.
    pub allowed_worsening: Option<f64>,
    pub verdict: MetricVerdict,
    /// Why a metric failed or got no verdict when it is not a plain comparison: a missing or
    /// non-finite value.
    pub reason: Option<String>,
}

impl Comparison {
    /// Whether the change made the metric better, worse, or left it equal.
    pub fn improvement(&self) -> Option<std::cmp::Ordering> {
        let change = self.change.filter(|change| change.is_finite())?;
        let signed = match self.direction {
            Direction::Higher => change,
            Direction::Lower => -change,
        };
        signed.partial_cmp(&0.0)
    }
}

/// The gate's outcome for a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub schema: &'static str,
    pub verdict: Verdict,
    pub baseline: BaselineInfo,
    pub metrics: Vec<Comparison>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineInfo {
    pub path: PathBuf,
    pub found: bool,
}

impl Outcome {
    pub fn failures(&self) -> impl Iterator<Item = &Comparison> {
        self.metrics.iter().filter(|metric| metric.verdict == MetricVerdict::Fail)
    }
}

struct CompiledRule<'a> {
    rule: &'a Rule,
    matcher: GlobMatcher,
}

/// Compares `current` with `baseline` (absent when there is no baseline) by `rules`.
pub fn compare(
    current: &FlatMetrics,
    baseline: Option<&FlatMetrics>,
    baseline_path: &Path,
    rules: &[Rule],
) -> Outcome {
    // Config validation already rejected patterns that do not compile.
    let rules: Vec<CompiledRule> = rules
        .iter()
        .filter_map(|rule| {
            let matcher = Glob::new(&rule.metric).ok()?.compile_matcher();
            Some(CompiledRule { rule, matcher })
        })
        .collect();
    let rule_for = |name: &str| rules.iter().find(|compiled| compiled.matcher.is_match(name));

    let mut names: Vec<&String> = current.keys().collect();
    if let Some(baseline) = baseline {
        names.extend(baseline.keys().filter(|name| !current.contains_key(*name)));
    }
    names.sort();

    let mut metrics = Vec::new();
    for name in names {
        let Some(compiled) = rule_for(name) else { continue };
        let rule = compiled.rule;
        let direction = rule.direction.unwrap_or_else(|| Direction::guess(name));
        let current_value = current.get(name).copied();
        let baseline_value = baseline.and_then(|baseline| baseline.get(name).copied());
        metrics.push(judge(
            baseline.is_some(),
            name,
            direction,
            rule,
            baseline_value,
            current_value,
        ));
    }

    let verdict = if baseline.is_none() {
        Verdict::NoBaseline
    } else if metrics.iter().any(|metric| metric.verdict == MetricVerdict::Fail) {
        Verdict::Fail
    } else {
        Verdict::Pass
    };
    Outcome {
        schema: VERDICT_SCHEMA,
        verdict,
        baseline: BaselineInfo { path: baseline_path.to_path_buf(), found: baseline.is_some() },
        metrics,
    }
}

fn judge(
    has_baseline: bool,
    name: &str,
    direction: Direction,
    rule: &Rule,
    baseline: Option<f64>,
    current: Option<f64>,
) -> Comparison {
    let mut comparison = Comparison {
        name: name.to_string(),
        direction,
        baseline,
        current,
        change: None,
        worsening: None,
        allowed_worsening: None,
        verdict: MetricVerdict::Fail,
        reason: None,
    };
    let (baseline, current) = match (baseline, current) {
        (_, None) => {
            comparison.reason = Some("missing from this run".to_string());
            return comparison;
        }
        (_, Some(current)) if !current.is_finite() => {
            comparison.reason = Some(format!("this run's value is {current}"));
            return comparison;
        }
        (None, Some(_)) => {
            comparison.verdict = MetricVerdict::NoBaseline;
            let reason = if has_baseline { "not in the baseline" } else { "no baseline run" };
            comparison.reason = Some(reason.to_string());
            return comparison;
        }
        (Some(baseline), Some(_)) if !baseline.is_finite() => {
            comparison.reason = Some(format!("the baseline's value is {baseline}"));
            return comparison;
        }
        (Some(baseline), Some(current)) => (baseline, current),
    };

    let allowed = rule
        .absolute_tolerance
        .unwrap_or(0.0)
        .max(rule.relative_tolerance.unwrap_or(0.0) * baseline.abs());
    let worsening = match direction {
        Direction::Higher => baseline - current,
        Direction::Lower => current - baseline,
    };
    comparison.change = Some(current - baseline);
    comparison.worsening = Some(worsening);
    comparison.allowed_worsening = Some(allowed);
    if worsening <= allowed {
        comparison.verdict = MetricVerdict::Pass;
    }
    comparison
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(metric: &str, absolute: Option<f64>, relative: Option<f64>) -> Rule {
        Rule {
            metric: metric.to_string(),
            direction: None,
            absolute_tolerance: absolute,
            relative_tolerance: relative,
        }
    }

    fn flat(pairs: &[(&str, f64)]) -> FlatMetrics {
        pairs.iter().map(|(name, value)| (name.to_string(), *value)).collect()
    }

    fn verdicts(outcome: &Outcome) -> Vec<(&str, MetricVerdict)> {
        outcome.metrics.iter().map(|metric| (metric.name.as_str(), metric.verdict)).collect()
    }

    #[test]
    fn drop_within_tolerance_passes_and_beyond_fails() {
        let rules = [rule("accuracy", Some(0.01), None)];
        let baseline = flat(&[("accuracy", 0.95)]);
        let pass = compare(&flat(&[("accuracy", 0.945)]), Some(&baseline), Path::new("b"), &rules);
        assert_eq!(pass.verdict, Verdict::Pass);
        let fail = compare(&flat(&[("accuracy", 0.93)]), Some(&baseline), Path::new("b"), &rules);
        assert_eq!(fail.verdict, Verdict::Fail);
        assert_eq!(fail.metrics[0].improvement(), Some(std::cmp::Ordering::Less));
    }

    #[test]
    fn lower_is_better_is_guessed_for_loss() {
        let rules = [rule("loss", None, Some(0.1))];
        let baseline = flat(&[("loss", 0.20)]);
        // 10% of 0.20 is 0.02: 0.215 is within it, 0.23 is not, and any drop is fine.
        let judge =
            |value| compare(&flat(&[("loss", value)]), Some(&baseline), Path::new("b"), &rules);
        assert_eq!(judge(0.215).verdict, Verdict::Pass);
        assert_eq!(judge(0.23).verdict, Verdict::Fail);
        assert_eq!(judge(0.01).verdict, Verdict::Pass);
    }

    #[test]
    fn nan_fails_even_though_every_comparison_with_it_is_false() {
        let rules = [rule("accuracy", Some(1.0), None)];
        let baseline = flat(&[("accuracy", 0.9)]);
        let outcome =
            compare(&flat(&[("accuracy", f64::NAN)]), Some(&baseline), Path::new("b"), &rules);
        assert_eq!(outcome.verdict, Verdict::Fail);
        assert_eq!(outcome.metrics[0].reason.as_deref(), Some("this run's value is NaN"));
    }

    #[test]
    fn no_baseline_is_its_own_verdict() {
        let rules = [rule("accuracy", None, None)];
        let outcome = compare(&flat(&[("accuracy", 0.9)]), None, Path::new("b"), &rules);
        assert_eq!(outcome.verdict, Verdict::NoBaseline);
        assert_eq!(verdicts(&outcome), [("accuracy", MetricVerdict::NoBaseline)]);
    }

    #[test]
    fn globs_match_and_first_rule_wins_and_missing_metrics_fail() {
        let rules = [rule("per_class.3.f1", Some(0.5), None), rule("per_class.*.f1", None, None)];
        let baseline = flat(&[("per_class.3.f1", 0.9), ("per_class.4.f1", 0.9), ("other", 1.0)]);
        let current = flat(&[("per_class.3.f1", 0.5), ("other", 0.0)]);
        let outcome = compare(&current, Some(&baseline), Path::new("b"), &rules);
        assert_eq!(
            verdicts(&outcome),
            [("per_class.3.f1", MetricVerdict::Pass), ("per_class.4.f1", MetricVerdict::Fail)]
        );
        assert_eq!(outcome.metrics[1].reason.as_deref(), Some("missing from this run"));
    }

    #[test]
    fn flattening_nested_objects_and_arrays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(&path, r#"{"a": {"b": 1, "c": [2, {"d": 3}]}, "name": "x", "e": 4.5}"#)
            .unwrap();
        let metrics = read_metrics(&path).unwrap();
        assert_eq!(metrics, flat(&[("a.b", 1.0), ("a.c.0", 2.0), ("a.c.1.d", 3.0), ("e", 4.5)]));
    }
}
