//! Renders the gate's outcome: `report.md`, the body of the pull-request comment, and the plain
//! text summary printed on stdout.
//!
//! The comment opens with one line a reviewer can read in two seconds, then a table with a row
//! per gated metric. Changes of rates (accuracy, precision, recall, F1 between 0 and 1) are in
//! percentage points; other changes in the metric's unit with the relative change beside them.
//! Arrows mean better (▲) or worse (▼), whatever the sign, and every arrow comes with a word.
//! Metric names are data and are escaped before they reach Markdown.

use std::cmp::Ordering;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::atomic;
use crate::gate::{Comparison, Flip, MetricVerdict, Outcome, Verdict, format_p};

pub mod junit;
pub mod openmetrics;

/// The label of the comment marker when none is given.
pub const DEFAULT_LABEL: &str = "default";

/// The files the gate writes into a run folder.
pub const VERDICT_FILE: &str = "verdict.json";
pub const REPORT_FILE: &str = "report.md";
pub const JUNIT_FILE: &str = "junit.xml";
pub const OPENMETRICS_FILE: &str = "metrics.txt";

/// How many flipped samples and confusion cells a section lists before it only counts.
const LISTED_ROWS: usize = 50;

/// What the report says about the run besides the gate: shown under the table.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// One line per fact, already phrased, e.g. "trained on 4,000 images in 12.3 s".
    pub lines: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
    #[error("cannot render junit.xml: {0}")]
    Junit(#[from] quick_junit::SerializeError),
    #[error("cannot render verdict.json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Writes `verdict.json`, `report.md`, `junit.xml` and `metrics.txt` into `folder`, and
/// returns the path of `report.md`.
pub fn write_outputs(
    outcome: &Outcome,
    folder: &Path,
    label: &str,
    run: &RunSummary,
) -> Result<PathBuf, ReportError> {
    let mut verdict = serde_json::to_vec_pretty(outcome)?;
    verdict.push(b'\n');
    atomic::write(&folder.join(VERDICT_FILE), &verdict)?;
    atomic::write(&folder.join(JUNIT_FILE), junit::render(outcome)?.as_bytes())?;
    atomic::write(&folder.join(OPENMETRICS_FILE), openmetrics::render(outcome).as_bytes())?;
    let report = folder.join(REPORT_FILE);
    atomic::write(&report, markdown(outcome, label, run).as_bytes())?;
    Ok(report)
}

/// The hidden first line that lets a later run find and update its own comment.
pub fn marker(label: &str) -> String {
    let label: String =
        label.chars().filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c)).collect();
    format!("<!-- modelci:report label={label} -->")
}

pub fn markdown(outcome: &Outcome, label: &str, run: &RunSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", marker(label));
    let _ = writeln!(out, "### {}\n", headline(outcome));

    if outcome.metrics.is_empty() {
        out.push_str("No metric matched a rule in `gate.rules`, so nothing was gated.\n");
    } else {
        let with_evidence = outcome.metrics.iter().any(|metric| metric.evidence.is_some());
        out.push_str("| Metric | Baseline | This run | Change |");
        out.push_str(if with_evidence { " Significance | Verdict |\n" } else { " Verdict |\n" });
        out.push_str("| :-- | --: | --: | :-- |");
        out.push_str(if with_evidence { " :-- | :-- |\n" } else { " :-- |\n" });
        for metric in &outcome.metrics {
            let _ = write!(
                out,
                "| {} | {} | {} | {} |",
                escape(&metric.name),
                value_cell(metric, metric.baseline),
                value_cell(metric, metric.current),
                change_cell(metric),
            );
            if with_evidence {
                let _ = write!(out, " {} |", evidence_cell(metric));
            }
            let _ = writeln!(out, " {} |", verdict_cell(metric));
        }
        out.push_str("\n▲ better, ▼ worse than the baseline; pp = percentage points.\n");
    }

    out.push('\n');
    let _ = writeln!(out, "{}", baseline_line(outcome));
    for line in &run.lines {
        let _ = writeln!(out, "{}", escape(line));
    }
    per_class_section(outcome, &mut out);
    confusion_section(outcome, &mut out);
    flips_section(outcome, &mut out);
    out
}

fn baseline_line(outcome: &Outcome) -> String {
    let location = escape(&outcome.baseline.location);
    if !outcome.baseline.found {
        return format!(
            "No baseline was found at {location}. Run `modelci run --update-baseline` on the \
             main branch to record one."
        );
    }
    match (&outcome.baseline.commit, &outcome.baseline.date) {
        (Some(commit), Some(date)) => {
            let short: String = commit.chars().take(12).collect();
            format!("Baseline: {location} at commit {short} ({}).", escape(date))
        }
        _ => format!("Baseline: {location}."),
    }
}

/// The one line that says what happened.
pub fn headline(outcome: &Outcome) -> String {
    let names = |verdict| {
        outcome.with_verdict(verdict).map(|metric| escape(&metric.name)).collect::<Vec<_>>()
    };
    let gated = outcome.metrics.len();
    match outcome.verdict {
        Verdict::Pass => format!(
            "✅ modelci: no regression ({gated} gated metric{} within tolerance)",
            plural(gated)
        ),
        Verdict::Warn => format!(
            "⚠️ modelci: no regression, but look at {}",
            names(MetricVerdict::Warn).join(", ")
        ),
        Verdict::Fail => {
            format!("❌ modelci: regression in {}", names(MetricVerdict::Fail).join(", "))
        }
        Verdict::NoBaseline => {
            "⚪ modelci: no baseline, nothing to compare with (not a pass)".to_string()
        }
    }
}

/// A plain-text version of the table for the terminal.
pub fn terminal(outcome: &Outcome) -> String {
    let verdict = match outcome.verdict {
        Verdict::Pass => "pass",
        Verdict::Warn => "warn",
        Verdict::Fail => "FAIL",
        Verdict::NoBaseline => "no baseline",
    };
    let mut rows = vec![[
        "metric".to_string(),
        "baseline".to_string(),
        "this run".to_string(),
        "change".to_string(),
        "verdict".to_string(),
    ]];
    for metric in &outcome.metrics {
        let reason = describe(metric);
        let verdict = match metric.verdict {
            MetricVerdict::Pass => "pass".to_string(),
            MetricVerdict::Warn => format!("warn: {reason}"),
            MetricVerdict::Fail => format!("FAIL: {reason}"),
            MetricVerdict::NoVerdict => format!("no verdict: {reason}"),
            MetricVerdict::NoBaseline => "no baseline".to_string(),
        };
        rows.push([
            metric.name.clone(),
            value_cell(metric, metric.baseline),
            value_cell(metric, metric.current),
            change_text(metric).unwrap_or_else(|| "-".to_string()),
            verdict,
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|column| rows.iter().map(|row| row[column].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = format!("verdict: {verdict}\n");
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if column < 4 {
                line.push_str(&" ".repeat(widths[column] - cell.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn class_name(outcome: &Outcome, index: usize) -> String {
    let name = outcome.classes.as_ref().and_then(|classes| classes.get(index));
    escape(&name.cloned().unwrap_or_else(|| index.to_string()))
}

fn per_class_section(outcome: &Outcome, out: &mut String) {
    if outcome.per_class.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n<details><summary>Per-class metrics</summary>\n");
    out.push_str(
        "| Class | Precision | Recall | F1 | Support |\n| :-- | --: | --: | --: | --: |\n",
    );
    for (class, metrics) in &outcome.per_class {
        let cell = |metric: &str| match metrics.get(metric) {
            Some((Some(base), Some(current))) if base != current && metric != "support" => {
                format!("{base:.4} → {current:.4}")
            }
            Some((_, Some(current))) if metric == "support" => format!("{current}"),
            Some((_, Some(current))) => format!("{current:.4}"),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            escape(class),
            cell("precision"),
            cell("recall"),
            cell("f1"),
            cell("support")
        );
    }
    out.push_str("\nWhere a value changed: baseline → this run.\n\n</details>\n");
}

fn confusion_section(outcome: &Outcome, out: &mut String) {
    let Some(pairing) = &outcome.pairing else { return };
    if pairing.confusion_changes.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n<details><summary>Confusion-matrix changes ({} cells)</summary>\n",
        pairing.confusion_changes.len()
    );
    out.push_str("| True class | Predicted | Baseline | This run | Change |\n");
    out.push_str("| :-- | :-- | --: | --: | --: |\n");
    for change in pairing.confusion_changes.iter().take(LISTED_ROWS) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:+} |",
            class_name(outcome, change.label),
            class_name(outcome, change.prediction),
            change.baseline,
            change.current,
            change.current as i64 - change.baseline as i64
        );
    }
    omitted(pairing.confusion_changes.len(), out);
    out.push_str("\n</details>\n");
}

fn flips_section(outcome: &Outcome, out: &mut String) {
    let Some(pairing) = &outcome.pairing else { return };
    let _ = writeln!(
        out,
        "\n<details><summary>Flipped samples: {} newly wrong, {} newly right</summary>\n",
        pairing.newly_wrong.len(),
        pairing.newly_right.len()
    );
    let _ = writeln!(
        out,
        "Paired {} test samples by id ({} only in this run, {} only in the baseline). \
         McNemar's exact test on the flips: p = {}.\n",
        pairing.paired,
        pairing.only_in_run,
        pairing.only_in_baseline,
        format_p(pairing.mcnemar_p_value)
    );
    for (title, flips) in
        [("Newly wrong", &pairing.newly_wrong), ("Newly right", &pairing.newly_right)]
    {
        if flips.is_empty() {
            continue;
        }
        let _ = writeln!(out, "**{title}**\n");
        out.push_str("| Sample | True class | Baseline predicted | This run predicted |\n");
        out.push_str("| :-- | :-- | :-- | :-- |\n");
        for Flip { id, label, baseline_prediction, prediction } in flips.iter().take(LISTED_ROWS) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                escape(id),
                class_name(outcome, *label),
                class_name(outcome, *baseline_prediction),
                class_name(outcome, *prediction)
            );
        }
        omitted(flips.len(), out);
        out.push('\n');
    }
    out.push_str("</details>\n");
}

fn omitted(total: usize, out: &mut String) {
    if total > LISTED_ROWS {
        let _ =
            writeln!(out, "\n{} more not shown; verdict.json lists them all.", total - LISTED_ROWS);
    }
}

fn evidence_cell(metric: &Comparison) -> String {
    let Some(evidence) = &metric.evidence else { return "-".to_string() };
    let mut parts = Vec::new();
    if let Some(p) = evidence.p_value {
        parts.push(format!("p = {}", format_p(p)));
    }
    if let Some(interval) = &evidence.interval {
        let scale = if is_rate(metric) { 100.0 } else { 1.0 };
        let unit = if is_rate(metric) { " pp" } else { "" };
        parts.push(format!(
            "{:.0}% CI [{}, {}]{unit}",
            interval.confidence * 100.0,
            signed(interval.low * scale, 2),
            signed(interval.high * scale, 2)
        ));
    }
    parts.join(", ")
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn value_cell(metric: &Comparison, value: Option<f64>) -> String {
    match value {
        None => "-".to_string(),
        Some(value) if !value.is_finite() => value.to_string(),
        Some(value) if is_rate(metric) => format!("{value:.4}"),
        Some(value) => significant(value, 4),
    }
}

fn change_cell(metric: &Comparison) -> String {
    let Some(text) = change_text(metric) else { return "-".to_string() };
    match metric.improvement() {
        Some(Ordering::Greater) => format!("▲ {text} better"),
        Some(Ordering::Less) => format!("▼ {text} worse"),
        _ => format!("{text} unchanged"),
    }
}

fn change_text(metric: &Comparison) -> Option<String> {
    let change = metric.change?;
    if is_rate(metric) {
        return Some(format!("{} pp", signed(change * 100.0, 2)));
    }
    let relative = match metric.baseline {
        Some(baseline) if baseline != 0.0 && change != 0.0 => {
            format!(" ({}%)", signed(change / baseline.abs() * 100.0, 1))
        }
        _ => String::new(),
    };
    Some(format!("{}{relative}", signed(change, 4)))
}

fn verdict_cell(metric: &Comparison) -> String {
    let reason = || escape(&describe(metric));
    match metric.verdict {
        MetricVerdict::Pass => "✅ pass".to_string(),
        MetricVerdict::Warn => format!("⚠️ warn: {}", reason()),
        MetricVerdict::Fail => format!("❌ fail: {}", reason()),
        MetricVerdict::NoVerdict => format!("❔ no verdict: {}", reason()),
        MetricVerdict::NoBaseline => "⚪ no baseline".to_string(),
    }
}

/// Why a metric got its verdict: how far it moved against its tolerance, then the gate's
/// reason (statistics, policies), whichever exist.
pub(crate) fn describe(metric: &Comparison) -> String {
    let parts = [plain_reason(metric), metric.reason.clone().unwrap_or_default()];
    parts.into_iter().filter(|part| !part.is_empty()).collect::<Vec<_>>().join("; ")
}

/// How far a metric moved against its tolerance, in words.
pub(crate) fn plain_reason(metric: &Comparison) -> String {
    match (metric.worsening, metric.allowed_worsening) {
        (Some(worsening), Some(allowed)) if worsening > 0.0 => {
            format!("worse by {}, allowed {}", amount(metric, worsening), amount(metric, allowed))
        }
        (Some(_), Some(_)) => "not worse than the baseline".to_string(),
        _ => String::new(),
    }
}

/// A non-negative amount of change, in the unit the table uses for the metric.
fn amount(metric: &Comparison, value: f64) -> String {
    let text =
        if is_rate(metric) { format!("{} pp", signed(value * 100.0, 2)) } else { signed(value, 4) };
    text.trim_start_matches(['+', '±']).to_string()
}

/// Whether a metric is a rate between 0 and 1, shown in percentage points.
fn is_rate(metric: &Comparison) -> bool {
    let last = metric.name.rsplit('.').next().unwrap_or(&metric.name).to_ascii_lowercase();
    let rate_name =
        ["accuracy", "precision", "recall", "f1"].iter().any(|word| last.contains(word));
    let in_unit_range =
        [metric.baseline, metric.current].iter().flatten().all(|value| (0.0..=1.0).contains(value));
    rate_name && in_unit_range
}

/// `value` with at least `digits` significant digits.
fn significant(value: f64, digits: i32) -> String {
    if value == 0.0 {
        return "0".to_string();
    }
    let magnitude = value.abs().log10().floor() as i32;
    let decimals = (digits - 1 - magnitude).clamp(0, 12) as usize;
    format!("{value:.decimals$}")
}

/// A change with its sign, with at least `min_decimals` decimals and never rounded to zero
/// when it is not zero: small changes get as many decimals as two significant digits need.
fn signed(change: f64, min_decimals: i32) -> String {
    if change == 0.0 {
        return "±0".to_string();
    }
    let magnitude = change.abs().log10().floor() as i32;
    let decimals = min_decimals.max(1 - magnitude).clamp(0, 12) as usize;
    let sign = if change > 0.0 { "+" } else { "-" };
    format!("{sign}{:.decimals$}", change.abs())
}

/// Makes arbitrary text safe inside a Markdown table cell: no HTML, no emphasis or links, no
/// broken cells, no line breaks.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\r' => out.push(' '),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '~' | '#' | '!' | '$' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Direction;
    use crate::gate::{BaselineInfo, VERDICT_SCHEMA};

    fn comparison(name: &str, baseline: f64, current: f64, verdict: MetricVerdict) -> Comparison {
        Comparison {
            name: name.to_string(),
            direction: Direction::guess(name),
            required: true,
            baseline: Some(baseline),
            current: Some(current),
            change: Some(current - baseline),
            worsening: Some(match Direction::guess(name) {
                Direction::Higher => baseline - current,
                Direction::Lower => current - baseline,
            }),
            allowed_worsening: Some(0.01),
            evidence: None,
            verdict,
            reason: None,
        }
    }

    fn outcome(verdict: Verdict, metrics: Vec<Comparison>) -> Outcome {
        Outcome {
            schema: VERDICT_SCHEMA,
            verdict,
            baseline: BaselineInfo {
                location: "baseline".into(),
                found: true,
                commit: None,
                date: None,
            },
            metrics,
            pairing: None,
            classes: None,
            per_class: Default::default(),
        }
    }

    #[test]
    fn small_changes_never_show_as_zero() {
        assert_eq!(signed(0.00004, 2), "+0.000040");
        assert_eq!(signed(-0.4, 2), "-0.40");
        assert_eq!(signed(0.0, 2), "±0");
        assert_eq!(significant(0.123456, 4), "0.1235");
        assert_eq!(significant(1234.5, 4), "1234");
    }

    #[test]
    fn rates_change_in_percentage_points_and_arrows_mean_better_or_worse() {
        let accuracy = comparison("accuracy", 0.95, 0.9612, MetricVerdict::Pass);
        assert_eq!(change_cell(&accuracy), "▲ +1.12 pp better");
        // For a loss, going up is worse.
        let loss = comparison("loss", 0.2, 0.25, MetricVerdict::Fail);
        assert_eq!(change_cell(&loss), "▼ +0.0500 (+25.0%) worse");
    }

    #[test]
    fn metric_names_are_escaped() {
        let evil = comparison("a|b<script>_x_", 0.5, 0.5, MetricVerdict::Pass);
        let text = markdown(&outcome(Verdict::Pass, vec![evil]), "default", &RunSummary::default());
        assert!(text.contains("| a\\|b&lt;script&gt;\\_x\\_ |"), "{text}");
        assert!(!text.contains("<script>"));
    }

    #[test]
    fn report_starts_with_marker_then_verdict_line() {
        let failing = comparison("accuracy", 0.95, 0.45, MetricVerdict::Fail);
        let text =
            markdown(&outcome(Verdict::Fail, vec![failing]), "nightly", &RunSummary::default());
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("<!-- modelci:report label=nightly -->"));
        assert_eq!(lines.next(), Some("### ❌ modelci: regression in accuracy"));
        assert!(
            text.contains(
                "| accuracy | 0.9500 | 0.4500 | ▼ -50.00 pp worse | ❌ fail: worse by 50.00 pp, \
                 allowed 1.00 pp |"
            ),
            "{text}"
        );
    }

    #[test]
    fn marker_label_cannot_close_the_comment() {
        assert_eq!(marker("x --> <b>"), "<!-- modelci:report label=x--b -->");
    }
}

#[cfg(test)]
mod tests_snapshots;
