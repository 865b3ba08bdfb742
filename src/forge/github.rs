//! Pull-request comments on GitHub and GitHub Enterprise Server, through octocrab.
//!
//! Requests go through octocrab's raw methods so that the gate can see status and rate-limit
//! headers before deciding to retry; pages are followed by the `Link` header as octocrab's
//! `Page` reads it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use octocrab::{FromResponse, Octocrab, Page};
use serde::Deserialize;
use serde_json::{Value, json};

use super::context::GitHubJob;
use super::{Next, Note, PublishError, Retry, Thread, next_step, refusal_hint};

/// The account that `GITHUB_TOKEN` in Actions writes as. `GET /user` is refused to that token,
/// so this is the identity assumed when it is.
pub const ACTIONS_BOT: &str = "github-actions[bot]";

/// The longest comment GitHub accepts, in characters.
pub const COMMENT_LIMIT: usize = 65_536;

type Response = http::Response<http_body_util::combinators::BoxBody<bytes::Bytes, octocrab::Error>>;

/// A pull request's comment thread.
pub struct PullRequest {
    client: Octocrab,
    owner: String,
    repository: String,
    number: u64,
    fork: bool,
    retry: Retry,
}

#[derive(Deserialize)]
struct Comment {
    id: u64,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    user: Option<User>,
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct PullSummary {
    number: u64,
    #[serde(default)]
    state: String,
}

/// The client for `job`'s API, authenticated with `token`.
pub fn client(job: &GitHubJob, token: &str) -> Result<Octocrab, PublishError> {
    let error = |message: String| PublishError::Transport { what: "GitHub client".into(), message };
    // A base path such as /api/v3 must end in a slash to be kept when joined.
    let base = format!("{}/", job.api_url.trim_end_matches('/'));
    Octocrab::builder()
        .base_uri(base.as_str())
        .map_err(|cause| error(format!("bad GITHUB_API_URL {:?}: {cause}", job.api_url)))?
        .personal_token(token.to_string())
        .build()
        .map_err(|cause| error(cause.to_string()))
}

impl PullRequest {
    pub fn new(client: Octocrab, job: &GitHubJob, number: u64, retry: Retry) -> PullRequest {
        PullRequest {
            client,
            owner: job.owner.clone(),
            repository: job.repository.clone(),
            number,
            fork: job.fork,
            retry,
        }
    }

    fn comments_path(&self) -> String {
        format!("/repos/{}/{}/issues/{}/comments", self.owner, self.repository, self.number)
    }

    fn comment_path(&self, id: u64) -> String {
        format!("/repos/{}/{}/issues/comments/{id}", self.owner, self.repository)
    }
}

/// The open pull request whose head is `sha`, if the API knows one.
pub async fn pull_request_for_commit(
    client: &Octocrab,
    job: &GitHubJob,
    sha: &str,
    retry: &Retry,
) -> Result<Option<u64>, PublishError> {
    let what = format!("looking up the pull request of commit {sha}");
    let path = format!("/repos/{}/{}/commits/{sha}/pulls", job.owner, job.repository);
    let response = send(client, &what, Method::GET, &path, None, retry, job.fork).await?;
    let pulls: Vec<PullSummary> = parse(client, &what, response).await?;
    Ok(pulls.into_iter().find(|pull| pull.state == "open").map(|pull| pull.number))
}

impl Thread for PullRequest {
    async fn me(&self) -> Result<String, PublishError> {
        let what = "asking GitHub who the token belongs to";
        match send(&self.client, what, Method::GET, "/user", None, &self.retry, self.fork).await {
            Ok(response) => Ok(parse::<User>(&self.client, what, response).await?.login),
            Err(PublishError::Refused { status: 401 | 403, .. }) => Ok(ACTIONS_BOT.to_string()),
            Err(error) => Err(error),
        }
    }

    async fn list(&self) -> Result<Vec<Note>, PublishError> {
        let what = format!("listing the comments of pull request #{}", self.number);
        let mut notes = Vec::new();
        let mut next = Some(format!("{}?per_page=100", self.comments_path()));
        while let Some(uri) = next {
            let response =
                send(&self.client, &what, Method::GET, &uri, None, &self.retry, self.fork).await?;
            let page = Page::<Comment>::from_response(response).await.map_err(|cause| {
                PublishError::Answer { what: what.clone(), message: cause.to_string() }
            })?;
            notes.extend(page.items.into_iter().map(|comment| Note {
                id: comment.id,
                author: comment.user.map(|user| user.login).unwrap_or_default(),
                body: comment.body.unwrap_or_default(),
            }));
            next = page.next.map(|uri| uri.to_string());
        }
        Ok(notes)
    }

    async fn create(&self, body: &str) -> Result<u64, PublishError> {
        let what = format!("commenting on pull request #{}", self.number);
        let path = self.comments_path();
        let payload = json!({ "body": body });
        let response =
            send(&self.client, &what, Method::POST, &path, Some(&payload), &self.retry, self.fork)
                .await?;
        Ok(parse::<Comment>(&self.client, &what, response).await?.id)
    }

    async fn update(&self, id: u64, body: &str) -> Result<(), PublishError> {
        let what = format!("updating comment {id}");
        let payload = json!({ "body": body });
        let path = self.comment_path(id);
        send(&self.client, &what, Method::PATCH, &path, Some(&payload), &self.retry, self.fork)
            .await?;
        Ok(())
    }

    async fn delete(&self, id: u64) -> Result<(), PublishError> {
        let what = format!("removing duplicate comment {id}");
        let path = self.comment_path(id);
        send(&self.client, &what, Method::DELETE, &path, None, &self.retry, self.fork).await?;
        Ok(())
    }
}

/// Sends one request with retries, and turns refusals and other failures into errors.
async fn send(
    client: &Octocrab,
    what: &str,
    method: Method,
    uri: &str,
    body: Option<&Value>,
    retry: &Retry,
    fork: bool,
) -> Result<Response, PublishError> {
    let mut attempt = 1;
    loop {
        let result = match method {
            Method::GET => client._get(uri).await,
            Method::POST => client._post(uri, body).await,
            Method::PATCH => client._patch(uri, body).await,
            _ => client._delete(uri, body).await,
        };
        let response = match result {
            Ok(response) => response,
            Err(cause) if attempt < retry.attempts => {
                tokio::time::sleep(retry.backoff * 2u32.pow(attempt - 1)).await;
                attempt += 1;
                let _ = cause;
                continue;
            }
            Err(cause) => {
                return Err(PublishError::Transport {
                    what: what.into(),
                    message: cause.to_string(),
                });
            }
        };
        let status = response.status().as_u16();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
        match next_step(status, response.headers(), attempt, retry, now) {
            Next::Wait(wait) => {
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Next::GiveUp(reason) => return Err(PublishError::GaveUp { what: what.into(), reason }),
            Next::Accept if response.status().is_success() => return Ok(response),
            Next::Accept => {
                let body = client.body_to_string(response).await.unwrap_or_default();
                let hint = refusal_hint("github", fork);
                return Err(PublishError::from_answer(what, status, body, hint));
            }
        }
    }
}

async fn parse<T: serde::de::DeserializeOwned>(
    client: &Octocrab,
    what: &str,
    response: Response,
) -> Result<T, PublishError> {
    let text = client
        .body_to_string(response)
        .await
        .map_err(|cause| PublishError::Answer { what: what.into(), message: cause.to_string() })?;
    serde_json::from_str(&text)
        .map_err(|cause| PublishError::Answer { what: what.into(), message: cause.to_string() })
}
