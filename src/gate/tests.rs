//! The gate's policies, each over constant inputs.

use super::*;

fn rule(metric: &str) -> Rule {
    Rule::new(metric)
}

fn config(rules: Vec<Rule>) -> GateConfig {
    GateConfig::with_rules(rules)
}

fn run(pairs: &[(&str, f64)]) -> RunInput {
    let values = pairs.iter().map(|(name, value)| (name.to_string(), *value)).collect();
    RunInput { metrics: MetricsInput { values, ..Default::default() }, predictions: None }
}

fn source() -> BaselineSource {
    BaselineSource { location: "baseline".into(), commit: None, date: None }
}

fn gate(current: &RunInput, baseline: &RunInput, config: &GateConfig) -> Outcome {
    compare(current, Some((baseline, &source())), "baseline", config)
}

fn verdicts(outcome: &Outcome) -> Vec<(&str, MetricVerdict)> {
    outcome.metrics.iter().map(|metric| (metric.name.as_str(), metric.verdict)).collect()
}

/// `count` samples; the baseline is right on the first `baseline_right`, the run on the first
/// `run_right` (two classes, wrong answers predict the other class).
fn predictions(count: usize, right: usize) -> Vec<Prediction> {
    (0..count)
        .map(|i| Prediction {
            id: format!("s{i}"),
            label: i % 2,
            prediction: if i < right { i % 2 } else { 1 - i % 2 },
            confidence: 0.9,
            loss: if i < right { 0.1 } else { 2.0 },
            top: Vec::new(),
        })
        .collect()
}

fn with_predictions(accuracy: f64, predictions: Vec<Prediction>) -> RunInput {
    RunInput { predictions: Some(predictions), ..run(&[("accuracy", accuracy)]) }
}

#[test]
fn first_run_without_baseline_is_no_baseline_never_pass() {
    let outcome = compare(&run(&[("accuracy", 0.9)]), None, "baseline", &config(vec![rule("*")]));
    assert_eq!(outcome.verdict, Verdict::NoBaseline);
    assert_eq!(verdicts(&outcome), [("accuracy", MetricVerdict::NoBaseline)]);
    assert!(!outcome.baseline.found);
}

#[test]
fn absolute_and_relative_tolerances() {
    let mut accuracy = rule("accuracy");
    accuracy.absolute_tolerance = Some(0.01);
    let mut loss = rule("loss");
    loss.relative_tolerance = Some(0.1);
    let config = config(vec![accuracy, loss]);
    let baseline = run(&[("accuracy", 0.95), ("loss", 0.20)]);

    let within = gate(&run(&[("accuracy", 0.945), ("loss", 0.215)]), &baseline, &config);
    assert_eq!(within.verdict, Verdict::Pass);
    let beyond = gate(&run(&[("accuracy", 0.93), ("loss", 0.23)]), &baseline, &config);
    assert_eq!(
        verdicts(&beyond),
        [("accuracy", MetricVerdict::Fail), ("loss", MetricVerdict::Fail)]
    );
    // 10% of 0.20 is 0.02; 0.23 is 0.03 worse.
    assert!((beyond.metrics[1].allowed_worsening.unwrap() - 0.02).abs() < 1e-12);
}

#[test]
fn direction_loss_lower_accuracy_higher() {
    let config = config(vec![rule("*")]);
    let baseline = run(&[("accuracy", 0.9), ("loss", 0.3)]);
    // Accuracy up and loss down: both better.
    assert_eq!(
        gate(&run(&[("accuracy", 0.95), ("loss", 0.2)]), &baseline, &config).verdict,
        Verdict::Pass
    );
    // Loss up is worse; accuracy down is worse.
    let outcome = gate(&run(&[("accuracy", 0.85), ("loss", 0.4)]), &baseline, &config);
    assert_eq!(
        verdicts(&outcome),
        [("accuracy", MetricVerdict::Fail), ("loss", MetricVerdict::Fail)]
    );
    // An explicit direction overrides the guess.
    let mut inverted = rule("loss");
    inverted.direction = Some(Direction::Higher);
    let outcome =
        gate(&run(&[("loss", 0.4)]), &run(&[("loss", 0.3)]), &super::tests::config(vec![inverted]));
    assert_eq!(outcome.verdict, Verdict::Pass);
}

#[test]
fn nan_and_infinity_fail_in_either_run() {
    let mut lenient = rule("*");
    lenient.absolute_tolerance = Some(1e9);
    let config = config(vec![lenient]);
    let nan = gate(&run(&[("accuracy", f64::NAN)]), &run(&[("accuracy", 0.9)]), &config);
    assert_eq!(nan.verdict, Verdict::Fail);
    assert_eq!(nan.metrics[0].reason.as_deref(), Some("this run's value is NaN"));
    let infinite = gate(&run(&[("loss", 0.1)]), &run(&[("loss", f64::INFINITY)]), &config);
    assert_eq!(infinite.verdict, Verdict::Fail);
    assert_eq!(infinite.metrics[0].reason.as_deref(), Some("the baseline's value is inf"));
}

#[test]
fn added_and_removed_metrics_follow_their_policies() {
    let baseline = run(&[("old", 1.0), ("kept", 1.0)]);
    let current = run(&[("new", 1.0), ("kept", 1.0)]);
    let outcome = gate(&current, &baseline, &config(vec![rule("*")]));
    assert_eq!(
        verdicts(&outcome),
        [
            ("kept", MetricVerdict::Pass),
            ("new", MetricVerdict::NoVerdict),
            ("old", MetricVerdict::Fail)
        ]
    );
    assert_eq!(outcome.verdict, Verdict::Fail);

    let mut relaxed = config(vec![rule("*")]);
    relaxed.removed = Policy::Warn;
    relaxed.added = Policy::Fail;
    let outcome = gate(&current, &baseline, &relaxed);
    assert_eq!(
        verdicts(&outcome),
        [("kept", MetricVerdict::Pass), ("new", MetricVerdict::Fail), ("old", MetricVerdict::Warn)]
    );
}

#[test]
fn non_numeric_values_follow_their_policy() {
    let mut current = run(&[]);
    current.metrics.non_numeric.insert("accuracy".into(), "\"n/a\"".into());
    let baseline = run(&[("accuracy", 0.9)]);
    let outcome = gate(&current, &baseline, &config(vec![rule("accuracy")]));
    assert_eq!(outcome.verdict, Verdict::Fail);
    assert_eq!(
        outcome.metrics[0].reason.as_deref(),
        Some("this run's value \"n/a\" is not a number")
    );

    let mut ignoring = config(vec![rule("accuracy")]);
    ignoring.non_numeric = Policy::Ignore;
    assert_eq!(gate(&current, &baseline, &ignoring).verdict, Verdict::Pass);
}

#[test]
fn bounds_and_optional_metrics() {
    let mut bounded = rule("accuracy");
    bounded.minimum = Some(0.95);
    bounded.absolute_tolerance = Some(1.0);
    let outcome =
        gate(&run(&[("accuracy", 0.94)]), &run(&[("accuracy", 0.94)]), &config(vec![bounded]));
    assert_eq!(outcome.metrics[0].reason.as_deref(), Some("below the minimum 0.95"));

    let mut optional = rule("latency_ms");
    optional.required = false;
    let outcome =
        gate(&run(&[("latency_ms", 30.0)]), &run(&[("latency_ms", 20.0)]), &config(vec![optional]));
    assert_eq!(outcome.verdict, Verdict::Warn);
    assert_eq!(verdicts(&outcome), [("latency_ms", MetricVerdict::Warn)]);
}

#[test]
fn globs_match_and_the_first_rule_wins() {
    let mut specific = rule("per_class.3.f1");
    specific.absolute_tolerance = Some(0.5);
    let config = config(vec![specific, rule("per_class.*.f1")]);
    let baseline = run(&[("per_class.3.f1", 0.9), ("per_class.4.f1", 0.9), ("other", 1.0)]);
    let current = run(&[("per_class.3.f1", 0.5), ("per_class.4.f1", 0.8), ("other", 0.0)]);
    assert_eq!(
        verdicts(&gate(&current, &baseline, &config)),
        [("per_class.3.f1", MetricVerdict::Pass), ("per_class.4.f1", MetricVerdict::Fail)]
    );
}

#[test]
fn significant_drop_beyond_tolerance_fails_with_flips_listed() {
    let mut accuracy = rule("accuracy");
    accuracy.absolute_tolerance = Some(0.01);
    let config = config(vec![accuracy]);
    // 200 samples: baseline right on 180, run on 150: 30 flipped to wrong, none to right.
    let baseline = with_predictions(0.90, predictions(200, 180));
    let current = with_predictions(0.75, predictions(200, 150));
    let outcome = gate(&current, &baseline, &config);
    assert_eq!(outcome.verdict, Verdict::Fail);
    let pairing = outcome.pairing.as_ref().unwrap();
    assert_eq!(
        (pairing.paired, pairing.newly_wrong.len(), pairing.newly_right.len()),
        (200, 30, 0)
    );
    assert_eq!(pairing.newly_wrong[0].id, "s150");
    // Two-sided exact p for 30 flips all one way: 2 / 2^30.
    assert!((pairing.mcnemar_p_value - 2.0 / 2f64.powi(30)).abs() < 1e-15);
    let evidence = outcome.metrics[0].evidence.as_ref().unwrap();
    assert!(evidence.significantly_worse);
    let interval = evidence.interval.unwrap();
    assert!(interval.low < -0.15 && -0.15 < interval.high && interval.high < 0.0, "{interval:?}");
}

#[test]
fn beyond_tolerance_but_not_significant_warns() {
    let mut accuracy = rule("accuracy");
    accuracy.absolute_tolerance = Some(0.01);
    let config = config(vec![accuracy]);
    // 2 flips to wrong out of 100 samples: 2 points worse, p = 0.5.
    let baseline = with_predictions(0.90, predictions(100, 90));
    let current = with_predictions(0.88, predictions(100, 88));
    let outcome = gate(&current, &baseline, &config);
    assert_eq!(verdicts(&outcome), [("accuracy", MetricVerdict::Warn)]);
    assert_eq!(outcome.verdict, Verdict::Warn);
    let reason = outcome.metrics[0].reason.as_deref().unwrap();
    assert!(reason.starts_with("beyond tolerance but not significant (p = 0.5000)"), "{reason}");
}

#[test]
fn significant_but_within_tolerance_warns() {
    let mut accuracy = rule("accuracy");
    accuracy.absolute_tolerance = Some(0.05);
    let config = config(vec![accuracy]);
    // 20 flips to wrong out of 1,000: 2 points worse, within 5, but p ≈ 2e-6.
    let outcome = gate(
        &with_predictions(0.88, predictions(1000, 880)),
        &with_predictions(0.90, predictions(1000, 900)),
        &config,
    );
    assert_eq!(verdicts(&outcome), [("accuracy", MetricVerdict::Warn)]);
    assert!(outcome.metrics[0].reason.as_deref().unwrap().starts_with("significantly worse"));
}

#[test]
fn no_verdict_when_test_sets_differ_or_are_too_small() {
    let config = config(vec![rule("accuracy")]);
    let mut shifted = predictions(100, 90);
    shifted[0].id = "elsewhere".into();
    let outcome = gate(
        &with_predictions(0.9, shifted),
        &with_predictions(0.9, predictions(100, 90)),
        &config,
    );
    assert_eq!(verdicts(&outcome), [("accuracy", MetricVerdict::NoVerdict)]);
    assert!(
        outcome.metrics[0].reason.as_deref().unwrap().starts_with("the test sets differ: 1 sample")
    );
    assert_eq!(outcome.verdict, Verdict::Pass, "no_verdict rows do not decide the run");

    let outcome = gate(
        &with_predictions(0.5, predictions(10, 5)),
        &with_predictions(0.9, predictions(10, 9)),
        &config,
    );
    assert_eq!(verdicts(&outcome), [("accuracy", MetricVerdict::NoVerdict)]);
    assert!(outcome.metrics[0].reason.as_deref().unwrap().starts_with("too few samples"));
}

#[test]
fn macro_f1_uses_the_bootstrap_interval() {
    let mut f1 = rule("macro.f1");
    f1.absolute_tolerance = Some(0.01);
    let config = config(vec![f1]);
    let mut baseline = with_predictions(0.9, predictions(400, 360));
    baseline.metrics.values.insert("macro.f1".into(), 0.9);
    let mut current = with_predictions(0.7, predictions(400, 280));
    current.metrics.values.insert("macro.f1".into(), 0.7);
    let outcome = gate(&current, &baseline, &config);
    let f1 = outcome.metrics.iter().find(|metric| metric.name == "macro.f1").unwrap();
    let evidence = f1.evidence.as_ref().unwrap();
    assert_eq!(evidence.test, "paired_bootstrap");
    assert!(evidence.significantly_worse);
    assert_eq!(f1.verdict, MetricVerdict::Fail);
}
