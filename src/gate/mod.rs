//! The regression gate: compares a run with a baseline, metric by metric, by the rules of the
//! config, and decides the verdict.
//!
//! A metric is gated when a rule matches its name; the first matching rule decides its
//! direction, tolerances, bounds and whether it is required. Then, in order:
//!
//! 1. A gated metric the run lacks gets the `removed` policy (default: fail); one whose value
//!    is not a number gets the `non_numeric` policy (default: fail). A value that is NaN or
//!    infinite, in the run or the baseline, fails: never a pass because a comparison happened
//!    to be false. A value outside the rule's `minimum`/`maximum` fails.
//! 2. With no baseline at all, every metric gets `no_baseline`, and so does the run. A metric
//!    the baseline lacks gets the `added` policy (default: shown, no verdict).
//! 3. The metric is *beyond tolerance* when it got worse by more than the absolute tolerance
//!    and more than the relative tolerance times the baseline's magnitude (both default to 0).
//! 4. When both runs have per-sample predictions and the metric can be computed from them
//!    (`accuracy`, `loss`, `macro.precision`, `macro.recall`, `macro.f1`), the gate also asks
//!    whether the change is *significant*: for accuracy by McNemar's exact test on the samples
//!    that flipped, for the others by whether the paired bootstrap interval of the difference
//!    lies wholly on the worse side of zero. The verdict is then:
//!
//!    | beyond tolerance | significantly worse | verdict |
//!    | :-- | :-- | :-- |
//!    | yes | yes | `fail` |
//!    | yes | no  | `warn` (could be noise) |
//!    | no  | yes | `warn` (real, but within tolerance) |
//!    | no  | no  | `pass` |
//!
//!    Without predictions, or for other metrics, beyond tolerance is `fail` and within is
//!    `pass`. When the two test sets differ, or fewer samples pair up than
//!    `statistics.min_samples`, those metrics get `no_verdict` with the reason.
//! 5. A failure of a metric whose rule says `required = false` is a `warn`.
//!
//! The run fails if any metric fails, warns if any warns, and otherwise passes. `no_verdict`
//! rows do not change the run's verdict; they are listed in the report.

pub mod input;

use std::collections::{BTreeMap, HashMap};

use globset::{Glob, GlobMatcher};
use serde::Serialize;

use crate::config::{Direction, GateConfig, Policy, Rule};
use crate::metrics::{self, Prediction};
use crate::stats::{self, Interval};
pub use input::{BaselineSource, InputError, MetricsInput, RunInput};

/// The schema tag of the metrics files modelci writes.
pub const METRICS_SCHEMA: &str = "modelci.metrics/v1";
/// The schema tag of `verdict.json`.
pub const VERDICT_SCHEMA: &str = "modelci.verdict/v1";

/// The verdict on a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    /// Something deserves a look, but nothing is a regression.
    Warn,
    Fail,
    /// There was nothing to compare with. Never a pass.
    NoBaseline,
}

/// The verdict on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricVerdict {
    Pass,
    Warn,
    Fail,
    /// The gate cannot decide; `reason` says why.
    NoVerdict,
    /// There is no baseline run.
    NoBaseline,
}

/// The statistical evidence about one metric's change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// `"mcnemar_exact"` or `"paired_bootstrap"`: what decided significance.
    pub test: &'static str,
    /// McNemar's two-sided p-value, for accuracy.
    pub p_value: Option<f64>,
    /// The bootstrap interval of `current - baseline`.
    pub interval: Option<Interval>,
    pub significantly_worse: bool,
}

/// One gated metric, compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub name: String,
    pub direction: Direction,
    pub required: bool,
    pub baseline: Option<f64>,
    pub current: Option<f64>,
    /// `current - baseline`, when both exist.
    pub change: Option<f64>,
    /// How much worse than the baseline the metric got (negative when it got better).
    pub worsening: Option<f64>,
    /// How much worse than the baseline the metric may get and still pass.
    pub allowed_worsening: Option<f64>,
    pub evidence: Option<Evidence>,
    pub verdict: MetricVerdict,
    /// Why the metric got its verdict, when it is not a plain pass.
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

/// A sample whose correctness changed between the baseline and the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flip {
    pub id: String,
    pub label: usize,
    pub baseline_prediction: usize,
    pub prediction: usize,
}

/// One cell of the confusion matrix whose count changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfusionChange {
    pub label: usize,
    pub prediction: usize,
    pub baseline: u64,
    pub current: u64,
}

/// How the two runs' predictions pair up, sample by sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pairing {
    pub paired: usize,
    pub only_in_run: usize,
    pub only_in_baseline: usize,
    /// Right in the baseline, wrong in the run.
    pub newly_wrong: Vec<Flip>,
    /// Wrong in the baseline, right in the run.
    pub newly_right: Vec<Flip>,
    pub mcnemar_p_value: f64,
    /// Largest changes first.
    pub confusion_changes: Vec<ConfusionChange>,
}

/// The gate's outcome for a run, as `verdict.json` holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub schema: &'static str,
    pub verdict: Verdict,
    pub baseline: BaselineInfo,
    pub metrics: Vec<Comparison>,
    pub pairing: Option<Pairing>,
    /// Class names by index, when the run's metrics file has them.
    pub classes: Option<Vec<String>>,
    /// Per-class metrics of both runs, for the report.
    #[serde(skip)]
    pub per_class: PerClass,
}

/// Class name → metric name (`precision`, `f1`...) → (baseline value, this run's value).
pub type PerClass = BTreeMap<String, BTreeMap<String, (Option<f64>, Option<f64>)>>;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineInfo {
    pub location: String,
    pub found: bool,
    pub commit: Option<String>,
    pub date: Option<String>,
}

impl Outcome {
    pub fn with_verdict(&self, verdict: MetricVerdict) -> impl Iterator<Item = &Comparison> {
        self.metrics.iter().filter(move |metric| metric.verdict == verdict)
    }
}

struct CompiledRule<'a> {
    rule: &'a Rule,
    matcher: GlobMatcher,
}

/// Compares `current` with `baseline` (absent when there is none at `location`).
pub fn compare(
    current: &RunInput,
    baseline: Option<(&RunInput, &BaselineSource)>,
    location: &str,
    config: &GateConfig,
) -> Outcome {
    // Config validation already rejected patterns that do not compile.
    let rules: Vec<CompiledRule> = config
        .rules
        .iter()
        .filter_map(|rule| {
            let matcher = Glob::new(&rule.metric).ok()?.compile_matcher();
            Some(CompiledRule { rule, matcher })
        })
        .collect();
    let rule_for = |name: &str| rules.iter().find(|compiled| compiled.matcher.is_match(name));

    let pairing = match (current.predictions.as_deref(), baseline) {
        (Some(run), Some((base, _))) => base.predictions.as_deref().map(|base| pair(run, base)),
        _ => None,
    };

    let mut names: Vec<&String> = current.metrics.values.keys().collect();
    names.extend(current.metrics.non_numeric.keys());
    if let Some((base, _)) = baseline {
        names.extend(base.metrics.values.keys());
        names.extend(base.metrics.non_numeric.keys());
    }
    names.sort();
    names.dedup();

    let mut metrics = Vec::new();
    for name in names {
        let Some(compiled) = rule_for(name) else { continue };
        let context = Context {
            config,
            rule: compiled.rule,
            current,
            baseline: baseline.map(|(base, _)| base),
            pairing: pairing.as_ref().map(|(pairing, pairs)| (pairing, pairs.as_slice())),
        };
        metrics.push(context.judge(name));
    }

    let verdict = if baseline.is_none() {
        Verdict::NoBaseline
    } else if metrics.iter().any(|metric| metric.verdict == MetricVerdict::Fail) {
        Verdict::Fail
    } else if metrics.iter().any(|metric| metric.verdict == MetricVerdict::Warn) {
        Verdict::Warn
    } else {
        Verdict::Pass
    };
    let source = baseline.map(|(_, source)| source);
    Outcome {
        schema: VERDICT_SCHEMA,
        verdict,
        baseline: BaselineInfo {
            location: location.to_string(),
            found: baseline.is_some(),
            commit: source.and_then(|source| source.commit.clone()),
            date: source.and_then(|source| source.date.clone()),
        },
        metrics,
        pairing: pairing.map(|(pairing, _)| pairing),
        classes: current.metrics.classes.clone(),
        per_class: per_class_table(current, baseline.map(|(base, _)| base)),
    }
}

/// The paired predictions: (baseline, run) for every sample id both have, in the run's order.
type Pairs<'a> = Vec<(&'a Prediction, &'a Prediction)>;

fn pair<'a>(run: &'a [Prediction], baseline: &'a [Prediction]) -> (Pairing, Pairs<'a>) {
    let by_id: HashMap<&str, &Prediction> =
        baseline.iter().map(|prediction| (prediction.id.as_str(), prediction)).collect();
    let pairs: Pairs<'a> = run
        .iter()
        .filter_map(|current| by_id.get(current.id.as_str()).map(|base| (*base, current)))
        .collect();

    let flip = |(base, current): &(&Prediction, &Prediction)| Flip {
        id: current.id.clone(),
        label: current.label,
        baseline_prediction: base.prediction,
        prediction: current.prediction,
    };
    let newly_wrong: Vec<Flip> = pairs
        .iter()
        .filter(|(base, current)| base.is_correct() && !current.is_correct())
        .map(flip)
        .collect();
    let newly_right: Vec<Flip> = pairs
        .iter()
        .filter(|(base, current)| !base.is_correct() && current.is_correct())
        .map(flip)
        .collect();
    let mcnemar_p_value = stats::mcnemar_exact(newly_wrong.len() as u64, newly_right.len() as u64);

    let classes = class_count(&pairs);
    let mut base_matrix = vec![vec![0u64; classes]; classes];
    let mut run_matrix = vec![vec![0u64; classes]; classes];
    for (base, current) in &pairs {
        base_matrix[base.label][base.prediction] += 1;
        run_matrix[current.label][current.prediction] += 1;
    }
    let mut confusion_changes = Vec::new();
    for label in 0..classes {
        for prediction in 0..classes {
            let (baseline, current) =
                (base_matrix[label][prediction], run_matrix[label][prediction]);
            if baseline != current {
                confusion_changes.push(ConfusionChange { label, prediction, baseline, current });
            }
        }
    }
    confusion_changes
        .sort_by_key(|change| std::cmp::Reverse(change.baseline.abs_diff(change.current)));

    let pairing = Pairing {
        paired: pairs.len(),
        only_in_run: run.len() - pairs.len(),
        only_in_baseline: baseline.len() - pairs.len(),
        newly_wrong,
        newly_right,
        mcnemar_p_value,
        confusion_changes,
    };
    (pairing, pairs)
}

fn class_count(pairs: &Pairs<'_>) -> usize {
    pairs
        .iter()
        .flat_map(|(base, current)| {
            [base.label, base.prediction, current.label, current.prediction]
        })
        .max()
        .map_or(0, |largest| largest + 1)
}

/// Metrics that can be recomputed from predictions, and so tested for significance.
#[derive(Debug, Clone, Copy)]
enum Derived {
    Accuracy,
    Loss,
    MacroPrecision,
    MacroRecall,
    MacroF1,
}

impl Derived {
    fn of(name: &str) -> Option<Derived> {
        match name {
            "accuracy" => Some(Derived::Accuracy),
            "loss" => Some(Derived::Loss),
            "macro.precision" => Some(Derived::MacroPrecision),
            "macro.recall" => Some(Derived::MacroRecall),
            "macro.f1" => Some(Derived::MacroF1),
            _ => None,
        }
    }

    /// The metric over the samples at `indices`, for one side of the pairs.
    fn on<'a>(self, predictions: impl Iterator<Item = &'a Prediction>, classes: usize) -> f64 {
        match self {
            Derived::Accuracy | Derived::Loss => {
                let (mut sum, mut count) = (0.0, 0usize);
                for prediction in predictions {
                    sum += match self {
                        Derived::Accuracy => f64::from(u8::from(prediction.is_correct())),
                        _ => prediction.loss,
                    };
                    count += 1;
                }
                sum / count.max(1) as f64
            }
            _ => {
                let mut matrix = vec![vec![0u64; classes]; classes];
                for prediction in predictions {
                    matrix[prediction.label][prediction.prediction] += 1;
                }
                let (_, average) = metrics::scores_from_confusion(&matrix);
                match self {
                    Derived::MacroPrecision => average.precision,
                    Derived::MacroRecall => average.recall,
                    _ => average.f1,
                }
            }
        }
    }
}

struct Context<'a> {
    config: &'a GateConfig,
    rule: &'a Rule,
    current: &'a RunInput,
    baseline: Option<&'a RunInput>,
    pairing: Option<(&'a Pairing, &'a [(&'a Prediction, &'a Prediction)])>,
}

impl Context<'_> {
    fn judge(&self, name: &str) -> Comparison {
        let direction = self.rule.direction.unwrap_or_else(|| Direction::guess(name));
        let current = self.current.metrics.values.get(name).copied();
        let baseline = self.baseline.and_then(|base| base.metrics.values.get(name).copied());
        let mut comparison = Comparison {
            name: name.to_string(),
            direction,
            required: self.rule.required,
            baseline,
            current,
            change: None,
            worsening: None,
            allowed_worsening: None,
            evidence: None,
            verdict: MetricVerdict::Pass,
            reason: None,
        };
        let (verdict, reason) = self.decide(name, &mut comparison);
        comparison.reason = reason;
        comparison.verdict = match verdict {
            MetricVerdict::Fail if !self.rule.required => {
                comparison.reason = Some(match comparison.reason.take() {
                    Some(reason) => format!("optional metric: {reason}"),
                    None => "optional metric".to_string(),
                });
                MetricVerdict::Warn
            }
            verdict => verdict,
        };
        comparison
    }

    fn decide(&self, name: &str, comparison: &mut Comparison) -> (MetricVerdict, Option<String>) {
        let policy = |policy: Policy, reason: String| {
            let verdict = match policy {
                Policy::Ignore => MetricVerdict::NoVerdict,
                Policy::Warn => MetricVerdict::Warn,
                Policy::Fail => MetricVerdict::Fail,
            };
            (verdict, Some(reason))
        };

        if let Some(text) = self.current.metrics.non_numeric.get(name) {
            return policy(
                self.config.non_numeric,
                format!("this run's value {text} is not a number"),
            );
        }
        let Some(current) = comparison.current else {
            return policy(self.config.removed, "missing from this run".to_string());
        };
        if !current.is_finite() {
            return (MetricVerdict::Fail, Some(format!("this run's value is {current}")));
        }
        if let Some(minimum) = self.rule.minimum.filter(|minimum| current < *minimum) {
            return (MetricVerdict::Fail, Some(format!("below the minimum {minimum}")));
        }
        if let Some(maximum) = self.rule.maximum.filter(|maximum| current > *maximum) {
            return (MetricVerdict::Fail, Some(format!("above the maximum {maximum}")));
        }
        let Some(baseline_run) = self.baseline else {
            return (MetricVerdict::NoBaseline, Some("no baseline run".to_string()));
        };
        if let Some(text) = baseline_run.metrics.non_numeric.get(name) {
            return policy(
                self.config.non_numeric,
                format!("the baseline's value {text} is not a number"),
            );
        }
        let Some(baseline) = comparison.baseline else {
            return policy(self.config.added, "not in the baseline".to_string());
        };
        if !baseline.is_finite() {
            return (MetricVerdict::Fail, Some(format!("the baseline's value is {baseline}")));
        }

        let allowed = self
            .rule
            .absolute_tolerance
            .unwrap_or(0.0)
            .max(self.rule.relative_tolerance.unwrap_or(0.0) * baseline.abs());
        let worsening = match comparison.direction {
            Direction::Higher => baseline - current,
            Direction::Lower => current - baseline,
        };
        comparison.change = Some(current - baseline);
        comparison.worsening = Some(worsening);
        comparison.allowed_worsening = Some(allowed);
        let beyond = worsening > allowed;

        let statistics = &self.config.statistics;
        let derived = Derived::of(name).filter(|_| statistics.enabled);
        let (Some(derived), Some((pairing, pairs))) = (derived, self.pairing) else {
            return if beyond { (MetricVerdict::Fail, None) } else { (MetricVerdict::Pass, None) };
        };
        if pairing.only_in_run > 0 || pairing.only_in_baseline > 0 {
            return (
                MetricVerdict::NoVerdict,
                Some(format!(
                    "the test sets differ: {} sample(s) only in this run, {} only in the baseline",
                    pairing.only_in_run, pairing.only_in_baseline
                )),
            );
        }
        if pairing.paired < statistics.min_samples {
            return (
                MetricVerdict::NoVerdict,
                Some(format!(
                    "too few samples to tell noise from change: {} paired, {} needed \
                     (gate.statistics.min_samples)",
                    pairing.paired, statistics.min_samples
                )),
            );
        }
        if matches!(derived, Derived::Loss)
            && pairs.iter().any(|(base, run)| !base.loss.is_finite() || !run.loss.is_finite())
        {
            return if beyond { (MetricVerdict::Fail, None) } else { (MetricVerdict::Pass, None) };
        }

        let classes = class_count(&pairs.to_vec());
        let difference = |indices: &[usize]| {
            derived.on(indices.iter().map(|&i| pairs[i].1), classes)
                - derived.on(indices.iter().map(|&i| pairs[i].0), classes)
        };
        let interval = stats::paired_bootstrap(
            pairs.len(),
            statistics.resamples,
            statistics.seed,
            statistics.confidence,
            difference,
        );
        let worse_side = |interval: &Interval| match comparison.direction {
            Direction::Higher => interval.high < 0.0,
            Direction::Lower => interval.low > 0.0,
        };
        let evidence = match derived {
            Derived::Accuracy => Evidence {
                test: "mcnemar_exact",
                p_value: Some(pairing.mcnemar_p_value),
                interval,
                significantly_worse: pairing.mcnemar_p_value < statistics.alpha
                    && pairing.newly_wrong.len() > pairing.newly_right.len(),
            },
            _ => Evidence {
                test: "paired_bootstrap",
                p_value: None,
                interval,
                significantly_worse: interval.as_ref().is_some_and(worse_side),
            },
        };
        let significance = match (&evidence.p_value, &evidence.interval) {
            (Some(p), _) => format!("p = {}", format_p(*p)),
            (None, Some(interval)) => format!(
                "{:.0}% interval of the change [{:+.4}, {:+.4}]",
                interval.confidence * 100.0,
                interval.low,
                interval.high
            ),
            (None, None) => "no interval".to_string(),
        };
        let significant = evidence.significantly_worse;
        comparison.evidence = Some(evidence);
        match (beyond, significant) {
            (true, true) => (MetricVerdict::Fail, Some(format!("significant ({significance})"))),
            (true, false) => (
                MetricVerdict::Warn,
                Some(format!(
                    "beyond tolerance but not significant ({significance}): may be noise"
                )),
            ),
            (false, true) => (
                MetricVerdict::Warn,
                Some(format!("significantly worse ({significance}) but within tolerance")),
            ),
            (false, false) => (MetricVerdict::Pass, None),
        }
    }
}

/// A p-value with enough digits to compare with usual levels.
pub fn format_p(p: f64) -> String {
    if p < 1e-4 { format!("{p:.1e}") } else { format!("{p:.4}") }
}

fn per_class_table(current: &RunInput, baseline: Option<&RunInput>) -> PerClass {
    let mut table = PerClass::new();
    let mut add = |metrics: &MetricsInput, is_current: bool| {
        for (name, value) in &metrics.values {
            let Some(rest) = name.strip_prefix("per_class.") else { continue };
            let Some((class, metric)) = rest.rsplit_once('.') else { continue };
            let cell =
                table.entry(class.to_string()).or_default().entry(metric.to_string()).or_default();
            if is_current {
                cell.1 = Some(*value);
            } else {
                cell.0 = Some(*value);
            }
        }
    };
    add(&current.metrics, true);
    if let Some(baseline) = baseline {
        add(&baseline.metrics, false);
    }
    table
}

#[cfg(test)]
mod tests;
