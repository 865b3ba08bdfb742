//! Publishing against local fake GitHub and GitLab servers. Every server fails the test on any
//! request it was not told to expect, and every test checks that the token appears nowhere in
//! what modelci printed or wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use wiremock::matchers::{any, body_string_contains, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const TOKEN: &str = "ghs_s3cretT0kenThatMustNeverLeak";
const MARKER: &str = "<!-- modelci:report label=default -->";
const COMMENTS: &str = "/repos/acme/vision/issues/17/comments";

/// A server that fails the test on any request no other mock matched.
async fn strict_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(599))
        .with_priority(u8::MAX)
        .expect(0)
        .named("unexpected request")
        .mount(&server)
        .await;
    server
}

struct Job {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Job {
    /// A GitHub Actions job for pull request acme/vision#17 against `api`.
    fn github(api: &str, event: Value) -> Job {
        let dir = tempfile::tempdir().unwrap();
        let event_path = dir.path().join("event.json");
        std::fs::write(&event_path, event.to_string()).unwrap();
        std::fs::write(
            dir.path().join("report.md"),
            format!("{MARKER}\n### ✅ modelci: no regression\n"),
        )
        .unwrap();
        let env = [
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REPOSITORY", "acme/vision"),
            ("GITHUB_EVENT_NAME", "pull_request"),
            ("GITHUB_SHA", "merge0"),
            ("GITHUB_API_URL", api),
            ("GITHUB_TOKEN", TOKEN),
        ];
        let mut env: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        env.push(("GITHUB_EVENT_PATH".into(), event_path.display().to_string()));
        Job { dir, env }
    }

    fn gitlab(api: &str, token: Option<(&str, &str)>) -> Job {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("report.md"),
            format!("{MARKER}\n### ✅ modelci: no regression\n"),
        )
        .unwrap();
        let mut env: Vec<(String, String)> = [
            ("GITLAB_CI", "true"),
            ("CI_API_V4_URL", api),
            ("CI_PROJECT_ID", "42"),
            ("CI_MERGE_REQUEST_IID", "9"),
            ("CI_COMMIT_SHA", "abc"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some((name, value)) = token {
            env.push((name.into(), value.into()));
        }
        Job { dir, env }
    }

    fn set(&mut self, name: &str, value: &str) {
        self.env.retain(|(key, _)| key != name);
        self.env.push((name.into(), value.into()));
    }

    fn report(&self) -> PathBuf {
        self.dir.path().join("report.md")
    }

    /// Runs modelci with exactly this job's environment and checks that the token leaked into
    /// nothing it printed or wrote.
    async fn modelci(&self, arguments: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_modelci"));
        command.env_clear().current_dir(self.dir.path()).args(arguments);
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
        let printed = format!("{}{}", text(&output.stdout), text(&output.stderr));
        assert!(!printed.contains(TOKEN), "the token leaked into the output:\n{printed}");
        assert_no_token_in(self.dir.path());
        output
    }
}

fn assert_no_token_in(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_no_token_in(&path);
        } else if let Ok(bytes) = std::fs::read(&path) {
            assert!(!text(&bytes).contains(TOKEN), "the token leaked into {}", path.display());
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn pull_request_event() -> Value {
    json!({"pull_request": {
        "number": 17,
        "head": {"sha": "head1", "repo": {"full_name": "acme/vision"}},
        "base": {"sha": "base1", "repo": {"full_name": "acme/vision"}}
    }})
}

fn comment(id: u64, login: &str, body: &str) -> Value {
    json!({"id": id, "body": body, "user": {"login": login}})
}

async fn me(server: &MockServer, prefix: &str) {
    Mock::given(method("GET"))
        .and(path(format!("{prefix}/user")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"login": "modelci-bot"})))
        .mount(server)
        .await;
}

async fn comments(server: &MockServer, prefix: &str, list: Value, times: u64) {
    Mock::given(method("GET"))
        .and(path(format!("{prefix}{COMMENTS}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(list))
        .expect(times)
        .mount(server)
        .await;
}

async fn created(server: &MockServer, prefix: &str) {
    Mock::given(method("POST"))
        .and(path(format!("{prefix}{COMMENTS}")))
        .and(body_string_contains(MARKER))
        .respond_with(ResponseTemplate::new(201).set_body_json(comment(99, "modelci-bot", MARKER)))
        .expect(1)
        .mount(server)
        .await;
}

fn body_of(request: &Request) -> String {
    let json: Value = serde_json::from_slice(&request.body).unwrap();
    json["body"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn creates_the_comment_when_there_is_none() {
    let server = strict_server().await;
    me(&server, "").await;
    comments(&server, "", json!([comment(1, "alice", "looks good")]), 2).await;
    created(&server, "").await;

    let job = Job::github(&server.uri(), pull_request_event());
    let output = job.modelci(&["comment", "--report", "report.md"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("commented on acme/vision#17 (comment 99)"));
    let post = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.method.as_str() == "POST")
        .unwrap();
    assert!(body_of(&post).starts_with(&format!("{MARKER}\n### ✅ modelci: no regression")));
    assert!(post.headers.get("authorization").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_its_comment_in_place_after_a_previous_run() {
    let server = strict_server().await;
    me(&server, "").await;
    comments(&server, "", json!([comment(7, "modelci-bot", &format!("{MARKER}\nold report"))]), 1)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/repos/acme/vision/issues/comments/7"))
        .and(body_string_contains("no regression"))
        .respond_with(ResponseTemplate::new(200).set_body_json(comment(7, "modelci-bot", MARKER)))
        .expect(1)
        .mount(&server)
        .await;

    let job = Job::github(&server.uri(), pull_request_event());
    let output = job.modelci(&["comment", "--report", "report.md"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("updated comment 7 on acme/vision#17"));
}

#[tokio::test(flavor = "multi_thread")]
async fn finds_the_marker_on_the_second_page_of_35_comments() {
    let server = strict_server().await;
    me(&server, "").await;
    let first: Vec<Value> = (1..=30).map(|id| comment(id, "alice", "chatter")).collect();
    let mut second: Vec<Value> = (31..=35).map(|id| comment(id, "bob", "more chatter")).collect();
    second[2] = comment(33, "modelci-bot", &format!("{MARKER}\nold"));
    let next = format!("<{}{COMMENTS}?per_page=100&page=2>; rel=\"next\"", server.uri());
    Mock::given(method("GET"))
        .and(path(COMMENTS))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(second))
        .expect(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(COMMENTS))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(first).insert_header("link", next.as_str()),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/repos/acme/vision/issues/comments/33"))
        .respond_with(ResponseTemplate::new(200).set_body_json(comment(33, "modelci-bot", MARKER)))
        .expect(1)
        .mount(&server)
        .await;

    let job = Job::github(&server.uri(), pull_request_event());
    let output = job.modelci(&["comment", "--report", "report.md"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn leaves_other_users_quotes_and_other_labels_alone() {
    let server = strict_server().await;
    me(&server, "").await;
    let others = json!([
        comment(3, "alice", &format!("{MARKER}\nalice pasted our marker")),
        comment(4, "modelci-bot", &format!("> {MARKER}\nquoted")),
        comment(5, "modelci-bot", "<!-- modelci:report label=gpu -->\nthe GPU job's report"),
    ]);
    comments(&server, "", others, 2).await;
    created(&server, "").await;

    let job = Job::github(&server.uri(), pull_request_event());
    let output = job.modelci(&["comment", "--report", "report.md"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_labels_keep_two_comments() {
    let server = strict_server().await;
    me(&server, "").await;
    let existing = json!([comment(5, "modelci-bot", &format!("{MARKER}\ncpu report"))]);
    comments(&server, "", existing, 2).await;
    Mock::given(method("POST"))
        .and(path(COMMENTS))
        .and(body_string_contains("<!-- modelci:report label=gpu -->"))
        .respond_with(ResponseTemplate::new(201).set_body_json(comment(6, "modelci-bot", "x")))
        .expect(1)
        .mount(&server)
        .await;

    let job = Job::github(&server.uri(), pull_request_event());
    let output = job.modelci(&["comment", "--report", "report.md", "--label", "gpu"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_from_racing_jobs_are_removed_keeping_the_oldest() {
    let server = strict_server().await;
    me(&server, "").await;
    let twice = json!([
        comment(12, "modelci-bot", &format!("{MARKER}\nsecond")),
        comment(10, "modelci-bot", &format!("{MARKER}\nfirst")),
    ]);
    comments(&server, "", twice, 1).await;
    Mock::given(method("PATCH"))
        .and(path("/repos/acme/vision/issues/comments/10"))
        .respond_with(ResponseTemplate::new(200).set_body_json(comment(10, "modelci-bot", MARKER)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/repos/acme/vision/issues/comments/12"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;

    let job = Job::github(&server.uri(), pull_request_event());
    let output = job.modelci(&["comment", "--report", "report.md"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("removed 1 duplicate(s)"), "{}", text(&output.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_report_is_cut_to_fit_by_whole_rows() {
    let server = strict_server().await;
    me(&server, "").await;
    comments(&server, "", json!([]), 2).await;
    created(&server, "").await;

    let job = Job::github(&server.uri(), pull_request_event());
    let mut report = format!(
        "{MARKER}\n### ❌ modelci: regression in accuracy\n\n| Metric | Verdict |\n| :-- | :-- |\n"
    );
    report.push_str("| accuracy | ❌ fail: worse by 5.00 pp |\n");
    for row in 0..4_000 {
        report.push_str(&format!("| per_class.{row}.f1 | ✅ pass, ünïcödé |\n"));
    }
    std::fs::write(job.report(), &report).unwrap();
    let output = job.modelci(&["comment", "--report", "report.md"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));

    let post = server
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.method.as_str() == "POST")
        .unwrap();
    let body = body_of(&post);
    assert!(body.chars().count() <= 65_536, "{} characters", body.chars().count());
    assert!(body.contains("| accuracy | ❌ fail: worse by 5.00 pp |"));
    assert!(body.contains("table row(s) left out to fit the comment size limit"));
    assert!(
        body.lines()
            .filter(|line| line.starts_with("| per_class"))
            .all(|line| line.ends_with("ünïcödé |"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_pull_request_refused_is_a_warning_and_the_gate_decides() {
    let server = strict_server().await;
    me(&server, "").await;
    comments(&server, "", json!([]), 2).await;
    Mock::given(method("POST"))
        .and(path(COMMENTS))
        .respond_with(
            ResponseTemplate::new(403)
                .set_body_json(json!({"message": "Resource not accessible by integration"})),
        )
        .expect(2)
        .mount(&server)
        .await;
    let mut event = pull_request_event();
    event["pull_request"]["head"]["repo"]["full_name"] = json!("stranger/vision");

    let job = Job::github(&server.uri(), event);
    let output = job.modelci(&["comment", "--report", "report.md"]).await;
    assert_eq!(output.status.code(), Some(0));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("warning: commenting on pull request #17 was refused (403)"),
        "{stderr}"
    );
    assert!(stderr.contains("workflow_run"), "{stderr}");

    let output =
        job.modelci(&["comment", "--report", "report.md", "--fail-on-publish-error"]).await;
    assert_eq!(output.status.code(), Some(3));
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_is_waited_out_then_succeeds() {
    let server = strict_server().await;
    me(&server, "").await;
    Mock::given(method("GET"))
        .and(path(COMMENTS))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    comments(&server, "", json!([comment(7, "modelci-bot", &format!("{MARKER}\nold"))]), 1).await;
    Mock::given(method("PATCH"))
        .and(path("/repos/acme/vision/issues/comments/7"))
        .respond_with(ResponseTemplate::new(200).set_body_json(comment(7, "modelci-bot", MARKER)))
        .expect(1)
        .mount(&server)
        .await;

    let job = Job::github(&server.uri(), pull_request_event());
    let output = job.modelci(&["comment", "--report", "report.md"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("updated comment 7"));
}

#[tokio::test(flavor = "multi_thread")]
async fn server_error_is_retried_then_succeeds() {
    let server = strict_server().await;
    me(&server, "").await;
    comments(&server, "", json!([]), 2).await;
    Mock::given(method("POST"))
        .and(path(COMMENTS))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    created(&server, "").await;

    let job = Job::github(&server.uri(), pull_request_event());
    let output = job.modelci(&["comment", "--report", "report.md"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("comment 99"));
}

#[tokio::test(flavor = "multi_thread")]
async fn enterprise_server_base_url_with_and_without_trailing_slash() {
    for suffix in ["/api/v3", "/api/v3/"] {
        let server = strict_server().await;
        me(&server, "/api/v3").await;
        comments(&server, "/api/v3", json!([]), 2).await;
        created(&server, "/api/v3").await;
        let job = Job::github(&format!("{}{suffix}", server.uri()), pull_request_event());
        let output = job.modelci(&["comment", "--report", "report.md"]).await;
        assert_eq!(output.status.code(), Some(0), "{suffix}: {}", text(&output.stderr));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn push_without_pull_request_is_skipped_after_looking_it_up() {
    let server = strict_server().await;
    Mock::given(method("GET"))
        .and(path("/repos/acme/vision/commits/merge0/pulls"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!([{"number": 3, "state": "closed"}])),
        )
        .expect(1)
        .mount(&server)
        .await;
    let mut job = Job::github(&server.uri(), json!({"ref": "refs/heads/main"}));
    job.set("GITHUB_EVENT_NAME", "push");
    let output = job.modelci(&["comment", "--report", "report.md"]).await;
    assert_eq!(output.status.code(), Some(0));
    assert!(
        text(&output.stderr).contains("no open pull request has commit merge0 (push event)"),
        "{}",
        text(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_that_echo_the_token_are_redacted() {
    let server = strict_server().await;
    me(&server, "").await;
    Mock::given(method("GET"))
        .and(path(COMMENTS))
        .respond_with(
            ResponseTemplate::new(422)
                .set_body_json(json!({"message": format!("bad header Bearer {TOKEN}")})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let job = Job::github(&server.uri(), pull_request_event());
    let output = job.modelci(&["comment", "--report", "report.md"]).await;
    assert_eq!(output.status.code(), Some(0));
    assert!(
        text(&output.stderr).contains("bad header Bearer [redacted]"),
        "{}",
        text(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_prints_the_plan_without_a_token() {
    let server = strict_server().await;
    let mut job = Job::github(&server.uri(), pull_request_event());
    job.env.retain(|(name, _)| name != "GITHUB_TOKEN");
    let output = job.modelci(&["comment", "--report", "report.md", "--dry-run"]).await;
    assert_eq!(output.status.code(), Some(0));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("target: GitHub pull request acme/vision#17"), "{stdout}");
    assert!(stdout.contains(&format!(
        "GET /repos/acme/vision/issues/17/comments?per_page=100  (every page; find {MARKER})"
    )));
    assert!(stdout.contains("POST /repos/acme/vision/issues/17/comments"));
    assert!(stdout.contains("### ✅ modelci: no regression"));
}

async fn gitlab_server() -> MockServer {
    let server = strict_server().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/user"))
        .and(header("private-token", TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 5, "username": "bot"})))
        .mount(&server)
        .await;
    server
}

fn note(id: u64, author: u64, body: &str, system: bool) -> Value {
    json!({"id": id, "body": body, "system": system, "author": {"id": author}})
}

const NOTES: &str = "/api/v4/projects/42/merge_requests/9/notes";

#[tokio::test(flavor = "multi_thread")]
async fn gitlab_updates_its_note_found_on_the_second_page() {
    let server = gitlab_server().await;
    let first: Vec<Value> = (1..=100)
        .map(|id| note(id, 8, if id == 3 { MARKER } else { "added 1 commit" }, id % 2 == 0))
        .collect();
    Mock::given(method("GET"))
        .and(path(NOTES))
        .and(query_param("page", "1"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(first).insert_header("x-next-page", "2"),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(NOTES))
        .and(query_param("page", "2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([note(101, 5, &format!("{MARKER}\nold"), false)]))
                .insert_header("x-next-page", ""),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(format!("{NOTES}/101")))
        .and(header("private-token", TOKEN))
        .and(body_string_contains("no regression"))
        .respond_with(ResponseTemplate::new(200).set_body_json(note(101, 5, MARKER, false)))
        .expect(1)
        .mount(&server)
        .await;

    let job = Job::gitlab(&format!("{}/api/v4", server.uri()), Some(("GITLAB_TOKEN", TOKEN)));
    let output = job.modelci(&["comment", "--report", "report.md"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("updated comment 101 on 42!9"),
        "{}",
        text(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn gitlab_creates_a_note_when_there_is_none() {
    let server = gitlab_server().await;
    Mock::given(method("GET"))
        .and(path(NOTES))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([note(1, 8, "hello", false)])))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(NOTES))
        .and(body_string_contains(MARKER))
        .respond_with(ResponseTemplate::new(201).set_body_json(note(2, 5, MARKER, false)))
        .expect(1)
        .mount(&server)
        .await;
    let job = Job::gitlab(&format!("{}/api/v4", server.uri()), Some(("GITLAB_TOKEN", TOKEN)));
    let output = job.modelci(&["comment", "--report", "report.md"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("commented on 42!9 (comment 2)"));
}

#[tokio::test(flavor = "multi_thread")]
async fn gitlab_job_token_alone_gets_an_actionable_message_before_any_request() {
    let server = strict_server().await;
    let job = Job::gitlab(&format!("{}/api/v4", server.uri()), Some(("CI_JOB_TOKEN", TOKEN)));
    let output = job.modelci(&["comment", "--report", "report.md"]).await;
    assert_eq!(output.status.code(), Some(0));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("only CI_JOB_TOKEN is available"), "{stderr}");
    assert!(stderr.contains("project access token with the `api` scope"), "{stderr}");
    assert!(stderr.contains("GITLAB_TOKEN"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn gate_appends_to_the_job_summary_within_its_limit() {
    let server = strict_server().await;
    let mut job = Job::github(&server.uri(), pull_request_event());
    std::fs::write(job.dir.path().join("base.json"), r#"{"accuracy": 0.9}"#).unwrap();
    std::fs::write(job.dir.path().join("run.json"), r#"{"accuracy": 0.91}"#).unwrap();
    let summary = job.dir.path().join("summary.md");
    std::fs::write(&summary, vec![b'x'; 1024 * 1024 - 5_000]).unwrap();
    job.set("GITHUB_STEP_SUMMARY", &summary.display().to_string());
    job.set("GITHUB_OUTPUT", &job.dir.path().join("outputs").display().to_string());

    let output = job
        .modelci(&["gate", "--metrics", "run.json", "--baseline", "base.json", "--no-comment"])
        .await;
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let written = std::fs::metadata(&summary).unwrap().len();
    assert!(written > 1024 * 1024 - 5_000 && written <= 1024 * 1024, "{written}");
    let tail = std::fs::read_to_string(&summary).unwrap();
    assert!(tail.contains("### ✅ modelci: no regression"), "the report was appended");

    std::fs::write(&summary, vec![b'x'; 1024 * 1024 - 10]).unwrap();
    let output = job
        .modelci(&[
            "gate",
            "--metrics",
            "run.json",
            "--baseline",
            "base.json",
            "--no-comment",
            "--fail-on-publish-error",
        ])
        .await;
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("too close to GitHub's 1 MiB limit"));
}
