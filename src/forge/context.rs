//! Where the job runs: GitHub Actions or GitLab CI, which repository, which pull request or
//! merge request, and whether it comes from a fork. Pure functions of the environment
//! variables and the event payload, so that they are tested on real-shaped inputs.

use serde_json::Value;

/// A CI job that modelci can publish from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ci {
    GitHub(GitHubJob),
    GitLab(GitLabJob),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitHubJob {
    /// `GITHUB_API_URL`: `https://api.github.com`, or `https://HOST/api/v3` on GitHub
    /// Enterprise Server. No trailing slash.
    pub api_url: String,
    pub owner: String,
    pub repository: String,
    pub event: String,
    /// The pull request, when the event names one.
    pub pull_request: Option<u64>,
    /// The commit under test: the pull request's head, or `GITHUB_SHA`.
    pub head_sha: Option<String>,
    pub base_sha: Option<String>,
    /// Whether the pull request comes from another repository, whose workflows get a
    /// read-only token.
    pub fork: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitLabJob {
    /// `CI_API_V4_URL`, e.g. `https://gitlab.example.com/api/v4`. No trailing slash.
    pub api_url: String,
    /// `CI_PROJECT_ID`.
    pub project: String,
    /// `CI_MERGE_REQUEST_IID`, set in merge-request pipelines only.
    pub merge_request: Option<u64>,
    pub head_sha: Option<String>,
    pub base_sha: Option<String>,
    pub fork: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContextError {
    #[error("{name} is {value:?}, expected {expected}")]
    BadVariable { name: &'static str, value: String, expected: &'static str },
    #[error("{name} is not set, but GitHub Actions always sets it")]
    MissingVariable { name: &'static str },
}

/// Detects the CI job from environment variables (`vars`) and, on GitHub, the event payload
/// that `GITHUB_EVENT_PATH` holds (`event`, already parsed; `None` when unreadable).
pub fn detect(
    vars: &dyn Fn(&str) -> Option<String>,
    event: Option<&Value>,
) -> Result<Option<Ci>, ContextError> {
    let set = |name: &str| vars(name).filter(|value| !value.is_empty());
    if set("GITHUB_ACTIONS").as_deref() == Some("true") {
        return github(&set, event).map(|job| Some(Ci::GitHub(job)));
    }
    if set("GITLAB_CI").as_deref() == Some("true") {
        return gitlab(&set).map(|job| Some(Ci::GitLab(job)));
    }
    Ok(None)
}

fn github(
    set: &dyn Fn(&str) -> Option<String>,
    event: Option<&Value>,
) -> Result<GitHubJob, ContextError> {
    let repository = set("GITHUB_REPOSITORY")
        .ok_or(ContextError::MissingVariable { name: "GITHUB_REPOSITORY" })?;
    let Some((owner, name)) =
        repository.split_once('/').filter(|(o, n)| !o.is_empty() && !n.is_empty())
    else {
        return Err(ContextError::BadVariable {
            name: "GITHUB_REPOSITORY",
            value: repository,
            expected: "OWNER/REPOSITORY",
        });
    };
    let api_url = set("GITHUB_API_URL").unwrap_or_else(|| "https://api.github.com".to_string());
    let event_name = set("GITHUB_EVENT_NAME").unwrap_or_default();
    let empty = Value::Null;
    let event = event.unwrap_or(&empty);
    let text = |value: &Value| value.as_str().map(str::to_string);

    let mut job = GitHubJob {
        api_url: api_url.trim_end_matches('/').to_string(),
        owner: owner.to_string(),
        repository: name.to_string(),
        event: event_name.clone(),
        pull_request: None,
        head_sha: set("GITHUB_SHA"),
        base_sha: None,
        fork: false,
    };
    match event_name.as_str() {
        "pull_request" | "pull_request_target" | "pull_request_review" => {
            let pull = &event["pull_request"];
            job.pull_request = pull["number"].as_u64();
            job.head_sha = text(&pull["head"]["sha"]).or(job.head_sha);
            job.base_sha = text(&pull["base"]["sha"]);
            let head_repo = &pull["head"]["repo"]["full_name"];
            job.fork = head_repo.is_null() || head_repo.as_str() != Some(repository.as_str());
        }
        "workflow_run" => {
            // The pattern for fork pull requests: a trusted workflow that comments on the
            // results of an untrusted one. GitHub leaves `pull_requests` empty for forks, so
            // the pull request may still need looking up by the head commit.
            let run = &event["workflow_run"];
            job.pull_request = run["pull_requests"][0]["number"].as_u64();
            job.head_sha = text(&run["head_sha"]).or(job.head_sha);
            job.fork = run["head_repository"]["full_name"].as_str() != Some(repository.as_str());
        }
        "issue_comment" if !event["issue"]["pull_request"].is_null() => {
            job.pull_request = event["issue"]["number"].as_u64();
        }
        _ => {}
    }
    // A pull request number of 0 is no pull request: never build a URL from it.
    job.pull_request = job.pull_request.filter(|number| *number > 0);
    Ok(job)
}

fn gitlab(set: &dyn Fn(&str) -> Option<String>) -> Result<GitLabJob, ContextError> {
    let api_url = set("CI_API_V4_URL").unwrap_or_else(|| "https://gitlab.com/api/v4".to_string());
    let project =
        set("CI_PROJECT_ID").ok_or(ContextError::MissingVariable { name: "CI_PROJECT_ID" })?;
    let merge_request = match set("CI_MERGE_REQUEST_IID") {
        None => None,
        Some(text) => match text.parse::<u64>() {
            Ok(number) if number > 0 => Some(number),
            _ => {
                return Err(ContextError::BadVariable {
                    name: "CI_MERGE_REQUEST_IID",
                    value: text,
                    expected: "a positive merge request number",
                });
            }
        },
    };
    let source = set("CI_MERGE_REQUEST_SOURCE_PROJECT_ID");
    let target = set("CI_MERGE_REQUEST_PROJECT_ID");
    Ok(GitLabJob {
        api_url: api_url.trim_end_matches('/').to_string(),
        project,
        merge_request,
        head_sha: set("CI_COMMIT_SHA"),
        base_sha: set("CI_MERGE_REQUEST_DIFF_BASE_SHA"),
        fork: matches!((source, target), (Some(source), Some(target)) if source != target),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    fn github_job(env: &[(&str, &str)], event: Value) -> GitHubJob {
        match detect(&vars(env), Some(&event)).unwrap() {
            Some(Ci::GitHub(job)) => job,
            other => panic!("expected GitHub, got {other:?}"),
        }
    }

    const ACTIONS: [(&str, &str); 3] = [
        ("GITHUB_ACTIONS", "true"),
        ("GITHUB_REPOSITORY", "acme/vision"),
        ("GITHUB_SHA", "merge1"),
    ];

    #[test]
    fn pull_request_from_the_same_repository() {
        let env = [ACTIONS.as_slice(), &[("GITHUB_EVENT_NAME", "pull_request")]].concat();
        let event = json!({"number": 17, "pull_request": {
            "number": 17,
            "head": {"sha": "head1", "repo": {"full_name": "acme/vision"}},
            "base": {"sha": "base1", "repo": {"full_name": "acme/vision"}}
        }});
        let job = github_job(&env, event);
        assert_eq!(job.api_url, "https://api.github.com");
        assert_eq!((job.owner.as_str(), job.repository.as_str()), ("acme", "vision"));
        assert_eq!(job.pull_request, Some(17));
        assert_eq!(job.head_sha.as_deref(), Some("head1"));
        assert_eq!(job.base_sha.as_deref(), Some("base1"));
        assert!(!job.fork);
    }

    #[test]
    fn pull_request_from_a_fork_on_enterprise_server() {
        let env = [
            ACTIONS.as_slice(),
            &[
                ("GITHUB_EVENT_NAME", "pull_request"),
                ("GITHUB_API_URL", "https://ghe.acme.io/api/v3/"),
            ],
        ]
        .concat();
        let event = json!({"pull_request": {
            "number": 4,
            "head": {"sha": "h", "repo": {"full_name": "someone/vision"}},
            "base": {"sha": "b", "repo": {"full_name": "acme/vision"}}
        }});
        let job = github_job(&env, event);
        assert_eq!(job.api_url, "https://ghe.acme.io/api/v3");
        assert!(job.fork);
    }

    #[test]
    fn push_has_no_pull_request() {
        let env = [ACTIONS.as_slice(), &[("GITHUB_EVENT_NAME", "push")]].concat();
        let job = github_job(&env, json!({"ref": "refs/heads/main", "after": "merge1"}));
        assert_eq!(job.pull_request, None);
        assert_eq!(job.head_sha.as_deref(), Some("merge1"));
    }

    #[test]
    fn workflow_run_from_a_fork_has_no_number_but_a_head_sha() {
        let env = [ACTIONS.as_slice(), &[("GITHUB_EVENT_NAME", "workflow_run")]].concat();
        let event = json!({"workflow_run": {
            "head_sha": "forkhead", "pull_requests": [],
            "head_repository": {"full_name": "someone/vision"}
        }});
        let job = github_job(&env, event);
        assert_eq!(job.pull_request, None);
        assert_eq!(job.head_sha.as_deref(), Some("forkhead"));
        assert!(job.fork);
    }

    #[test]
    fn malformed_repository_is_an_error() {
        let env = vars(&[("GITHUB_ACTIONS", "true"), ("GITHUB_REPOSITORY", "nope")]);
        assert!(matches!(detect(&env, None), Err(ContextError::BadVariable { .. })));
    }

    #[test]
    fn gitlab_merge_request_pipeline_from_a_fork() {
        let env = vars(&[
            ("GITLAB_CI", "true"),
            ("CI_API_V4_URL", "https://gitlab.acme.io/api/v4"),
            ("CI_PROJECT_ID", "42"),
            ("CI_MERGE_REQUEST_IID", "9"),
            ("CI_COMMIT_SHA", "abc"),
            ("CI_MERGE_REQUEST_DIFF_BASE_SHA", "def"),
            ("CI_MERGE_REQUEST_SOURCE_PROJECT_ID", "77"),
            ("CI_MERGE_REQUEST_PROJECT_ID", "42"),
        ]);
        let Some(Ci::GitLab(job)) = detect(&env, None).unwrap() else { panic!("not GitLab") };
        assert_eq!(job.api_url, "https://gitlab.acme.io/api/v4");
        assert_eq!((job.project.as_str(), job.merge_request), ("42", Some(9)));
        assert_eq!(job.base_sha.as_deref(), Some("def"));
        assert!(job.fork);
    }

    #[test]
    fn gitlab_branch_pipeline_has_no_merge_request() {
        let env = vars(&[("GITLAB_CI", "true"), ("CI_PROJECT_ID", "42"), ("CI_COMMIT_SHA", "abc")]);
        let Some(Ci::GitLab(job)) = detect(&env, None).unwrap() else { panic!("not GitLab") };
        assert_eq!(job.merge_request, None);
        assert_eq!(job.api_url, "https://gitlab.com/api/v4");
        assert!(!job.fork);
    }

    #[test]
    fn outside_ci_there_is_nothing_to_publish_to() {
        assert_eq!(detect(&vars(&[]), None), Ok(None));
    }
}
