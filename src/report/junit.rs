//! `junit.xml`: one test case per gated metric, so that GitLab's test widget (and any CI that
//! reads JUnit) lists the gate's checks. Failures carry the reason; warnings pass with the
//! reason in their output; metrics without a verdict are skipped with the reason.

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use crate::gate::{MetricVerdict, Outcome};

pub fn render(outcome: &Outcome) -> Result<String, quick_junit::SerializeError> {
    let mut suite = TestSuite::new("modelci gate");
    for metric in &outcome.metrics {
        let reason = super::describe(metric);
        let status = match metric.verdict {
            MetricVerdict::Pass | MetricVerdict::Warn => TestCaseStatus::success(),
            MetricVerdict::Fail => {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                status.set_message(reason.clone()).set_type("regression");
                status
            }
            MetricVerdict::NoVerdict | MetricVerdict::NoBaseline => {
                let mut status = TestCaseStatus::skipped();
                status.set_message(reason.clone());
                status
            }
        };
        let mut case = TestCase::new(metric.name.clone(), status);
        case.set_classname("modelci.gate");
        let values = format!(
            "baseline: {}, this run: {}",
            metric.baseline.map_or("none".to_string(), |value| value.to_string()),
            metric.current.map_or("none".to_string(), |value| value.to_string()),
        );
        if metric.verdict == MetricVerdict::Warn {
            case.set_system_out(format!("warning: {reason}\n{values}"));
        } else {
            case.set_system_out(values);
        }
        suite.add_test_case(case);
    }
    let mut report = Report::new("modelci");
    report.add_test_suite(suite);
    report.to_string()
}
