//! `metrics.txt`: the gated metrics in the OpenMetrics text format, for GitLab's metrics
//! widget and anything that scrapes Prometheus-style text.
//!
//! Four gauges, each labelled with the metric's name: `modelci_metric` (this run),
//! `modelci_baseline_metric`, `modelci_metric_change`, and `modelci_metric_failed` (1 when
//! the metric failed the gate). Metrics without a value are left out of a gauge.

use std::fmt::Write as _;

use crate::gate::{Comparison, MetricVerdict, Outcome};

/// A gauge: its name, its help text, and its value for a metric.
type Gauge = (&'static str, &'static str, fn(&Comparison) -> Option<f64>);

pub fn render(outcome: &Outcome) -> String {
    let mut out = String::new();
    let gauges: [Gauge; 4] = [
        ("modelci_metric", "A gated metric's value in this run.", |m| m.current),
        ("modelci_baseline_metric", "A gated metric's value in the baseline.", |m| m.baseline),
        ("modelci_metric_change", "This run's value minus the baseline's.", |m| m.change),
        ("modelci_metric_failed", "1 when the metric failed the gate, else 0.", |m| {
            Some(f64::from(u8::from(m.verdict == MetricVerdict::Fail)))
        }),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# TYPE {name} gauge\n# HELP {name} {help}");
        for metric in &outcome.metrics {
            if let Some(value) = value(metric) {
                let _ =
                    writeln!(out, "{name}{{metric=\"{}\"}} {}", label(&metric.name), number(value));
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

/// Escapes a label value: backslash, double quote and line feed.
fn label(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        value.to_string()
    }
}
