//! Snapshots of what reviewers and CI widgets read, rendered from one constant outcome that has
//! every kind of row: pass, warn, fail, no verdict, statistics, flips and per-class values.

use super::*;
use crate::config::{Direction, GateConfig, Rule, StatisticsConfig};
use crate::gate::{self, MetricsInput, RunInput, input::BaselineSource};
use crate::metrics::Prediction;

fn predictions(right: usize) -> Vec<Prediction> {
    (0..60)
        .map(|i| Prediction {
            id: format!("img-{i:02}"),
            label: i % 3,
            prediction: if i < right { i % 3 } else { (i + 1) % 3 },
            confidence: 0.9,
            loss: if i < right { 0.1 } else { 1.5 },
            top: Vec::new(),
        })
        .collect()
}

fn run(values: &[(&str, f64)], right: usize) -> RunInput {
    let mut metrics = MetricsInput {
        values: values.iter().map(|(name, value)| (name.to_string(), *value)).collect(),
        ..Default::default()
    };
    metrics.non_numeric.insert("status".into(), "\"ok\"".into());
    metrics.classes = Some(vec!["cat".into(), "dog".into(), "b|rd".into()]);
    RunInput { metrics, predictions: Some(predictions(right)) }
}

fn rule(metric: &str, absolute: Option<f64>, required: bool) -> Rule {
    Rule { absolute_tolerance: absolute, required, ..Rule::new(metric) }
}

fn outcome() -> Outcome {
    let mut config = GateConfig::with_rules(vec![
        rule("accuracy", Some(0.01), true),
        rule("latency_ms", Some(1.0), false),
        rule("per_class.*.f1", Some(0.5), true),
        rule("new_metric", None, true),
    ]);
    config.statistics = StatisticsConfig { resamples: 200, ..Default::default() };
    let baseline = run(&[("accuracy", 0.95), ("latency_ms", 10.0), ("per_class.cat.f1", 0.9)], 57);
    let current = run(
        &[("accuracy", 0.75), ("latency_ms", 12.5), ("per_class.cat.f1", 0.8), ("new_metric", 1.0)],
        45,
    );
    let source = BaselineSource {
        location: "git:origin/main:examples/mnist/baseline".into(),
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        date: Some("2026-12-01T10:00:00+00:00".into()),
    };
    gate::compare(&current, Some((&baseline, &source)), &source.location, &config)
}

#[test]
fn markdown_report() {
    let run = RunSummary { lines: vec!["This run: mlp, seed 1.".into()] };
    insta::assert_snapshot!(markdown(&outcome(), "default", &run));
}

#[test]
fn terminal_table() {
    insta::assert_snapshot!(terminal(&outcome()));
}

#[test]
fn junit_xml_snapshot_and_parsed_back() {
    let outcome = outcome();
    let xml = junit::render(&outcome).unwrap();
    insta::assert_snapshot!(xml);

    let parsed = quick_junit::Report::deserialize_from_str(&xml).unwrap();
    let suite = &parsed.test_suites[0];
    assert_eq!(suite.test_cases.len(), outcome.metrics.len());
    let failures = outcome.metrics.iter().filter(|m| m.verdict == MetricVerdict::Fail).count();
    assert_eq!(suite.failures, failures);
    let accuracy = suite.test_cases.iter().find(|case| case.name.as_str() == "accuracy").unwrap();
    assert!(matches!(accuracy.status, quick_junit::TestCaseStatus::NonSuccess { .. }));
}

#[test]
fn openmetrics_text() {
    let text = openmetrics::render(&outcome());
    assert!(text.ends_with("# EOF\n"));
    insta::assert_snapshot!(text);
}

#[test]
fn every_direction_is_rendered_with_a_word() {
    let outcome = outcome();
    let latency = outcome.metrics.iter().find(|m| m.name == "latency_ms").unwrap();
    assert_eq!(latency.direction, Direction::Lower);
    assert!(change_cell(latency).ends_with("worse"));
}
