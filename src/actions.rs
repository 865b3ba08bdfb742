//! What the gate tells GitHub Actions when it runs there (`GITHUB_ACTIONS=true`): an
//! `::error::` annotation per failed metric and a `::warning::` per warning, on stdout, and
//! the step outputs `verdict`, `report-path` and `metrics-path`, appended to `$GITHUB_OUTPUT`.

use std::io::Write as _;
use std::path::Path;

use crate::gate::{MetricVerdict, Outcome, Verdict};

/// The workflow commands that annotate the run, one per line.
pub fn annotations(outcome: &Outcome) -> String {
    let mut out = String::new();
    for metric in &outcome.metrics {
        let level = match metric.verdict {
            MetricVerdict::Fail => "error",
            MetricVerdict::Warn => "warning",
            _ => continue,
        };
        let message = format!("{}: {}", metric.name, crate::report::describe(metric));
        out.push_str(&format!("::{level} title=modelci::{}\n", escape_data(&message)));
    }
    out
}

/// The step outputs as `$GITHUB_OUTPUT` lines.
pub fn outputs(outcome: &Outcome, report: &Path, metrics: &Path) -> String {
    let verdict = match outcome.verdict {
        Verdict::Pass => "pass",
        Verdict::Warn => "warn",
        Verdict::Fail => "fail",
        Verdict::NoBaseline => "no_baseline",
    };
    let line = |name: &str, value: &str| {
        // A value with a line break would end the entry early: leave it out rather than
        // write a corrupt file.
        if value.contains(['\n', '\r']) { String::new() } else { format!("{name}={value}\n") }
    };
    [
        line("verdict", verdict),
        line("report-path", &report.display().to_string()),
        line("metrics-path", &metrics.display().to_string()),
    ]
    .concat()
}

/// Appends the outputs to the file `$GITHUB_OUTPUT` names.
pub fn write_outputs(file: &Path, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(file)?;
    file.write_all(text.as_bytes())
}

/// Escapes a workflow command's message so that it stays one command.
fn escape_data(text: &str) -> String {
    text.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GateConfig, Rule};
    use crate::gate::{self, MetricsInput, RunInput, input::BaselineSource};

    fn run(accuracy: f64, loss: f64) -> RunInput {
        let values = [("accuracy".to_string(), accuracy), ("loss\n::error::x".to_string(), loss)];
        RunInput {
            metrics: MetricsInput { values: values.into_iter().collect(), ..Default::default() },
            predictions: None,
        }
    }

    fn outcome() -> Outcome {
        let optional = Rule { required: false, ..Rule::new("loss*") };
        let config = GateConfig::with_rules(vec![optional, Rule::new("*")]);
        let source = BaselineSource { location: "b".into(), commit: None, date: None };
        gate::compare(&run(0.5, 0.9), Some((&run(0.6, 0.8), &source)), "b", &config)
    }

    #[test]
    fn failures_and_warnings_become_annotations_that_cannot_break_out() {
        let text = annotations(&outcome());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("::error title=modelci::accuracy: worse by 10.00 pp"),
            "{text}"
        );
        assert!(lines[1].starts_with("::warning title=modelci::loss%0A::error::x: "), "{text}");
    }

    #[test]
    fn outputs_name_the_verdict_and_files() {
        let text = outputs(&outcome(), Path::new("out/report.md"), Path::new("out/metrics.json"));
        assert_eq!(
            text,
            "verdict=fail\nreport-path=out/report.md\nmetrics-path=out/metrics.json\n"
        );
        let bad = outputs(&outcome(), Path::new("a\nb"), Path::new("m"));
        assert_eq!(bad, "verdict=fail\nmetrics-path=m\n");
    }
}
