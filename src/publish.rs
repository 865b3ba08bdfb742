//! Getting the report to the reviewer: the sticky comment on the pull or merge request and the
//! GitHub job summary. Nothing here decides the exit code: a publishing problem is a warning
//! (unless `--fail-on-publish-error`), because only the gate should fail a build.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use serde_json::Value;

use crate::forge::context::{self, Ci, GitHubJob, GitLabJob};
use crate::forge::{self, Published, Retry, github, gitlab, redact};
use crate::report;

/// The most a GitHub job summary may hold, in bytes, all appends of a step together.
pub const SUMMARY_LIMIT: u64 = 1024 * 1024;

/// A size limit, counted as the forge counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Characters(usize),
    Bytes(usize),
}

impl Limit {
    fn size(self, text: &str) -> usize {
        match self {
            Limit::Characters(_) => text.chars().count(),
            Limit::Bytes(_) => text.len(),
        }
    }

    fn max(self) -> usize {
        match self {
            Limit::Characters(max) | Limit::Bytes(max) => max,
        }
    }
}

/// Makes `body` fit `limit` by dropping whole table rows, least important first: rows of the
/// collapsible sections from the bottom up, then passing rows, then warnings, regressions
/// last. A note says how many rows were dropped and where the full report is (`full_report`).
/// Never cuts through a character, a row, or the marker on the first line.
pub fn fit(body: &str, limit: Limit, full_report: &str) -> String {
    if limit.size(body) <= limit.max() {
        return body.to_string();
    }
    let lines: Vec<&str> = body.split_inclusive('\n').collect();
    let note = |dropped: usize| {
        format!(
            "\n_{dropped} table row(s) left out to fit the comment size limit; the full report \
             is {full_report}._\n"
        )
    };

    // Rows that may go, with how much they matter.
    let mut in_details = false;
    let mut rows = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if line.starts_with("<details>") {
            in_details = true;
        } else if line.starts_with("</details>") {
            in_details = false;
        }
        if !is_table_row(&lines, index) {
            continue;
        }
        let importance = if in_details {
            0
        } else if line.contains("❌") {
            3
        } else if line.contains("⚠️") {
            2
        } else {
            1
        };
        rows.push((importance, index));
    }
    rows.sort_by_key(|(importance, index)| (*importance, std::cmp::Reverse(*index)));

    let mut kept = vec![true; lines.len()];
    let mut size = limit.size(body);
    let mut dropped = 0;
    for (_, index) in rows {
        if size + limit.size(&note(dropped)) <= limit.max() {
            break;
        }
        kept[index] = false;
        size -= limit.size(lines[index]);
        dropped += 1;
    }
    // Still too big: whole lines from the end, never the marker.
    for index in (1..lines.len()).rev() {
        if size + limit.size(&note(dropped.max(1))) <= limit.max() {
            break;
        }
        if kept[index] {
            kept[index] = false;
            size -= limit.size(lines[index]);
            dropped += usize::from(is_table_row(&lines, index));
        }
    }
    let mut out: String =
        lines.iter().zip(&kept).filter(|(_, keep)| **keep).map(|(line, _)| *line).collect();
    out.push_str(&note(dropped));
    // A first line longer than the limit is all that could remain: cut it at a character.
    if limit.size(&out) > limit.max() {
        out = cut(&out, limit);
    }
    out
}

fn cut(text: &str, limit: Limit) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if limit.size(&out) + limit.size(c.encode_utf8(&mut [0; 4])) > limit.max() {
            break;
        }
        out.push(c);
    }
    out
}

/// Whether line `index` is a data row of a Markdown table (not its header or separator).
fn is_table_row(lines: &[&str], index: usize) -> bool {
    let is_separator =
        |line: &str| line.starts_with('|') && line.trim_end().chars().all(|c| "|:- ".contains(c));
    let line = lines[index];
    line.starts_with('|')
        && !is_separator(line)
        && !lines.get(index + 1).is_some_and(|next| is_separator(next))
}

/// The report as a comment: its first line is the marker for `label`.
pub fn comment_body(report: &str, label: &str) -> String {
    let marker = report::marker(label);
    match report.split_once('\n') {
        Some((first, rest)) if first.starts_with("<!-- modelci:report") => {
            format!("{marker}\n{rest}")
        }
        _ => format!("{marker}\n{report}"),
    }
}

/// Appends `report` to the job summary file, within what is left of its size limit.
pub fn append_summary(file: &Path, report: &str, full_report: &str) -> std::io::Result<()> {
    let used = std::fs::metadata(file).map(|metadata| metadata.len()).unwrap_or(0);
    let left = SUMMARY_LIMIT.saturating_sub(used).saturating_sub(2);
    if left < 1024 {
        return Err(std::io::Error::other(format!(
            "the job summary already holds {used} bytes, too close to GitHub's 1 MiB limit"
        )));
    }
    let body = fit(report, Limit::Bytes(left as usize), full_report);
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(file)?;
    file.write_all(format!("\n{body}").as_bytes())
}

/// The environment publishing reads: variables and the GitHub event payload.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub vars: HashMap<String, String>,
    pub event: Option<Value>,
}

impl Environment {
    /// This process's environment.
    pub fn current() -> Environment {
        let vars: HashMap<String, String> = std::env::vars().collect();
        let event = vars
            .get("GITHUB_EVENT_PATH")
            .and_then(|path| std::fs::read_to_string(path).ok())
            .and_then(|text| serde_json::from_str(&text).ok());
        Environment { vars, event }
    }

    pub fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).filter(|value| !value.is_empty()).cloned()
    }

    /// Every token in the environment, for redaction.
    fn secrets(&self) -> Vec<String> {
        ["GITHUB_TOKEN", "GH_TOKEN", "GITLAB_TOKEN", "CI_JOB_TOKEN"]
            .iter()
            .filter_map(|name| self.var(name))
            .collect()
    }

    /// Where the full report can be found, in words, for notes about left-out rows.
    pub fn full_report_location(&self, report: &Path) -> String {
        let github_run = (
            self.var("GITHUB_SERVER_URL"),
            self.var("GITHUB_REPOSITORY"),
            self.var("GITHUB_RUN_ID"),
        );
        if let (Some(server), Some(repository), Some(run)) = github_run {
            return format!("in the job summary of {server}/{repository}/actions/runs/{run}");
        }
        if let Some(job) = self.var("CI_JOB_URL") {
            return format!("in the job's artifacts, {job}/artifacts/browse");
        }
        format!("in {}", report.display())
    }
}

/// What became of a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publication {
    /// Posted or updated; the message says where.
    Posted(String),
    /// Deliberately not posted; the message says why.
    Skipped(String),
    /// Posting failed; the message says why and how to fix it.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct CommentOptions {
    pub label: String,
    pub dry_run: bool,
    pub retry: Retry,
}

/// Posts `report` as the sticky comment for `options.label`, or with `dry_run` prints what would
/// be sent to `stdout`.
pub fn comment(
    report: &str,
    report_path: &Path,
    options: &CommentOptions,
    environment: &Environment,
    stdout: &mut dyn Write,
) -> Publication {
    let secrets = environment.secrets();
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let vars = |name: &str| environment.var(name);
    let publication = match context::detect(&vars, environment.event.as_ref()) {
        Err(error) => Publication::Failed(format!("cannot tell which CI job this is: {error}")),
        Ok(None) => Publication::Skipped(
            "not running in GitHub Actions or GitLab CI: no pull request to comment on".into(),
        ),
        Ok(Some(ci)) => {
            let body = comment_body(report, &options.label);
            let full = environment.full_report_location(report_path);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match (ci, runtime) {
                (_, Err(error)) => {
                    Publication::Failed(format!("cannot start the HTTP runtime: {error}"))
                }
                (Ci::GitHub(job), Ok(runtime)) => {
                    let body = fit(&body, Limit::Characters(github::COMMENT_LIMIT), &full);
                    runtime.block_on(comment_github(&job, &body, options, environment, stdout))
                }
                (Ci::GitLab(job), Ok(runtime)) => {
                    let body = fit(&body, Limit::Characters(gitlab::NOTE_LIMIT), &full);
                    runtime.block_on(comment_gitlab(&job, &body, options, environment, stdout))
                }
            }
        }
    };
    match publication {
        Publication::Posted(text) => Publication::Posted(redact(&text, &secrets)),
        Publication::Skipped(text) => Publication::Skipped(redact(&text, &secrets)),
        Publication::Failed(text) => Publication::Failed(redact(&text, &secrets)),
    }
}

fn print_plan(stdout: &mut dyn Write, target: &str, steps: &[String], body: &str) -> Publication {
    let mut text = format!("dry run: nothing is sent.\ntarget: {target}\n");
    for step in steps {
        text.push_str(&format!("{step}\n"));
    }
    text.push_str(&format!("body ({} characters):\n{body}", body.chars().count()));
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let _ = stdout.write_all(text.as_bytes());
    Publication::Skipped("dry run".into())
}

async fn comment_github(
    job: &GitHubJob,
    body: &str,
    options: &CommentOptions,
    environment: &Environment,
    stdout: &mut dyn Write,
) -> Publication {
    let repository = format!("{}/{}", job.owner, job.repository);
    let marker = forge::first_line(body).to_string();
    if options.dry_run {
        let number = job.pull_request.map_or("<number>".to_string(), |number| number.to_string());
        let mut steps = Vec::new();
        if job.pull_request.is_none() {
            let sha = job.head_sha.as_deref().unwrap_or("<sha>");
            steps.push(format!(
                "GET /repos/{repository}/commits/{sha}/pulls  (find the pull request)"
            ));
        }
        steps.push("GET /user  (whose comments are ours)".to_string());
        steps.push(format!(
            "GET /repos/{repository}/issues/{number}/comments?per_page=100  (every page; find {marker})"
        ));
        steps.push(format!(
            "PATCH /repos/{repository}/issues/comments/<id>  if found, else POST \
             /repos/{repository}/issues/{number}/comments"
        ));
        let target = format!("GitHub pull request {repository}#{number} at {}", job.api_url);
        return print_plan(stdout, &target, &steps, body);
    }

    let Some(token) = environment.var("GITHUB_TOKEN").or_else(|| environment.var("GH_TOKEN"))
    else {
        return Publication::Skipped(
            "GITHUB_TOKEN is not set, so no comment was posted\nhint: add `env: GITHUB_TOKEN: \
             ${{ github.token }}` and `permissions: pull-requests: write` to the job"
                .into(),
        );
    };
    let client = match github::client(job, &token) {
        Ok(client) => client,
        Err(error) => return Publication::Failed(error.to_string()),
    };
    let number = match job.pull_request {
        Some(number) => number,
        None => {
            let Some(sha) = &job.head_sha else {
                return Publication::Skipped(format!(
                    "no pull request in this {} event",
                    job.event
                ));
            };
            match github::pull_request_for_commit(&client, job, sha, &options.retry).await {
                Ok(Some(number)) => number,
                Ok(None) => {
                    return Publication::Skipped(format!(
                        "no open pull request has commit {sha} ({} event): nothing to comment on",
                        job.event
                    ));
                }
                Err(error) => return Publication::Failed(error.to_string()),
            }
        }
    };
    let thread = github::PullRequest::new(client, job, number, options.retry);
    match forge::sticky(&thread, &marker, body).await {
        Ok(published) => {
            Publication::Posted(describe(&published, &format!("{repository}#{number}")))
        }
        Err(error) => Publication::Failed(error.to_string()),
    }
}

async fn comment_gitlab(
    job: &GitLabJob,
    body: &str,
    options: &CommentOptions,
    environment: &Environment,
    stdout: &mut dyn Write,
) -> Publication {
    let marker = forge::first_line(body).to_string();
    let project = &job.project;
    if options.dry_run {
        let number = job.merge_request.map_or("<iid>".to_string(), |number| number.to_string());
        let mut steps = Vec::new();
        if job.merge_request.is_none() {
            let sha = job.head_sha.as_deref().unwrap_or("<sha>");
            steps.push(format!(
                "GET /projects/{project}/repository/commits/{sha}/merge_requests  (find the merge request)"
            ));
        }
        steps.push("GET /user  (whose notes are ours)".to_string());
        steps.push(format!(
            "GET /projects/{project}/merge_requests/{number}/notes?per_page=100  (every page; find {marker})"
        ));
        steps.push(format!(
            "PUT /projects/{project}/merge_requests/{number}/notes/<id>  if found, else POST \
             /projects/{project}/merge_requests/{number}/notes"
        ));
        let target = format!("GitLab merge request {project}!{number} at {}", job.api_url);
        return print_plan(stdout, &target, &steps, body);
    }

    let Some(token) = environment.var("GITLAB_TOKEN") else {
        let why = if environment.var("CI_JOB_TOKEN").is_some() {
            "only CI_JOB_TOKEN is available, and GitLab does not let job tokens write merge \
             request notes"
        } else {
            "GITLAB_TOKEN is not set"
        };
        return Publication::Failed(format!(
            "{why}, so no note was posted\nhint: create a project access token with the `api` \
             scope and the Reporter role, and store it as a masked CI/CD variable named \
             GITLAB_TOKEN"
        ));
    };
    let client = match gitlab::client() {
        Ok(client) => client,
        Err(error) => return Publication::Failed(error.to_string()),
    };
    let number = match job.merge_request {
        Some(number) => number,
        None => {
            let Some(sha) = &job.head_sha else {
                return Publication::Skipped("no merge request in this pipeline".into());
            };
            match gitlab::merge_request_for_commit(&client, job, &token, sha, &options.retry).await
            {
                Ok(Some(number)) => number,
                Ok(None) => {
                    return Publication::Skipped(format!(
                        "no open merge request has commit {sha}: nothing to comment on"
                    ));
                }
                Err(error) => return Publication::Failed(error.to_string()),
            }
        }
    };
    let thread = gitlab::MergeRequest::new(client, job, &token, number, options.retry);
    match forge::sticky(&thread, &marker, body).await {
        Ok(published) => Publication::Posted(describe(&published, &format!("{project}!{number}"))),
        Err(error) => Publication::Failed(error.to_string()),
    }
}

fn describe(published: &Published, thread: &str) -> String {
    let removed = |count: usize| {
        if count == 0 { String::new() } else { format!(", removed {count} duplicate(s)") }
    };
    match published {
        Published::Created { id } => format!("commented on {thread} (comment {id})"),
        Published::Updated { id, duplicates_removed } => {
            format!("updated comment {id} on {thread}{}", removed(*duplicates_removed))
        }
        Published::Unchanged { id, duplicates_removed } => {
            format!(
                "comment {id} on {thread} is already up to date{}",
                removed(*duplicates_removed)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rows: usize) -> String {
        let mut text = String::from("<!-- modelci:report label=default -->\n### ❌ regression\n\n");
        text.push_str("| Metric | Verdict |\n| :-- | :-- |\n");
        text.push_str("| accuracy | ❌ fail |\n");
        for row in 0..rows {
            text.push_str(&format!("| per_class.{row}.f1 | ✅ pass — ünïcödé |\n"));
        }
        text.push_str(
            "\n<details><summary>Flipped</summary>\n\n| Sample | Class |\n| :-- | :-- |\n",
        );
        for row in 0..rows {
            text.push_str(&format!("| img-{row} | 7 |\n"));
        }
        text.push_str("\n</details>\n");
        text
    }

    #[test]
    fn small_bodies_are_left_alone() {
        assert_eq!(fit(&report(3), Limit::Characters(10_000), "x"), report(3));
    }

    #[test]
    fn big_bodies_lose_detail_rows_first_and_keep_regressions() {
        let body = report(2_000);
        let fitted = fit(&body, Limit::Characters(40_000), "in the job summary");
        assert!(fitted.chars().count() <= 40_000);
        assert!(fitted.starts_with("<!-- modelci:report label=default -->\n"));
        assert!(fitted.contains("| accuracy | ❌ fail |\n"));
        assert!(fitted.contains("| per_class.0.f1 |"), "passing rows outlive detail rows");
        assert!(!fitted.contains("| img-1999 |"));
        assert!(fitted.contains("table row(s) left out to fit the comment size limit; the full report is in the job summary._"));
        // Every line is whole: each row of the original survives entirely or not at all.
        for line in fitted.lines().filter(|line| line.starts_with('|')) {
            assert!(body.lines().any(|original| original == line), "{line}");
        }
    }

    #[test]
    fn byte_limits_never_split_a_character() {
        let body = report(500);
        for limit in [3_000, 3_001, 3_002, 3_003] {
            let fitted = fit(&body, Limit::Bytes(limit), "elsewhere");
            assert!(fitted.len() <= limit, "{} > {limit}", fitted.len());
            assert!(fitted.contains("| accuracy | ❌ fail |"));
        }
    }

    #[test]
    fn comment_body_carries_the_label_marker() {
        assert_eq!(
            comment_body("<!-- modelci:report label=default -->\nbody", "gpu"),
            "<!-- modelci:report label=gpu -->\nbody"
        );
        assert_eq!(comment_body("plain", "x"), "<!-- modelci:report label=x -->\nplain");
    }

    #[test]
    fn summary_respects_the_size_left() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("summary.md");
        std::fs::write(&file, vec![b'x'; (SUMMARY_LIMIT - 5_000) as usize]).unwrap();
        append_summary(&file, &report(2_000), "elsewhere").unwrap();
        assert!(std::fs::metadata(&file).unwrap().len() <= SUMMARY_LIMIT);
        std::fs::write(&file, vec![b'x'; (SUMMARY_LIMIT - 10) as usize]).unwrap();
        assert!(append_summary(&file, &report(1), "elsewhere").is_err());
    }
}
