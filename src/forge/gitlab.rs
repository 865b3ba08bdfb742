//! Merge-request notes on GitLab and self-managed GitLab, through reqwest.
//!
//! Authenticates with `PRIVATE-TOKEN` (a personal, project or group access token with the
//! `api` scope). Pages are followed by the `X-Next-Page` header; system notes ("added 1
//! commit") are left out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Client, Method};
use serde::Deserialize;
use serde_json::{Value, json};

use super::context::GitLabJob;
use super::{Next, Note, PublishError, Retry, Thread, next_step, refusal_hint};

/// The longest note GitLab accepts, in characters.
pub const NOTE_LIMIT: usize = 1_000_000;

/// A merge request's notes.
pub struct MergeRequest {
    client: Client,
    api: String,
    token: String,
    project: String,
    number: u64,
    retry: Retry,
}

#[derive(Deserialize)]
struct GitLabNote {
    id: u64,
    #[serde(default)]
    body: String,
    #[serde(default)]
    system: bool,
    author: Author,
}

#[derive(Deserialize)]
struct Author {
    id: u64,
}

#[derive(Deserialize)]
struct MergeRequestSummary {
    iid: u64,
    #[serde(default)]
    state: String,
}

/// A path segment for a project: its numeric id as it is, a `group/name` path encoded.
fn project_segment(project: &str) -> String {
    project.replace('%', "%25").replace('/', "%2F")
}

pub fn client() -> Result<Client, PublishError> {
    Client::builder()
        .user_agent(concat!("modelci/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|cause| PublishError::Transport {
            what: "GitLab client".into(),
            message: cause.to_string(),
        })
}

impl MergeRequest {
    pub fn new(
        client: Client,
        job: &GitLabJob,
        token: &str,
        number: u64,
        retry: Retry,
    ) -> MergeRequest {
        MergeRequest {
            client,
            api: job.api_url.clone(),
            token: token.to_string(),
            project: project_segment(&job.project),
            number,
            retry,
        }
    }

    fn notes_url(&self) -> String {
        format!("{}/projects/{}/merge_requests/{}/notes", self.api, self.project, self.number)
    }
}

/// The open merge request whose head is `sha`, if the API knows one.
pub async fn merge_request_for_commit(
    client: &Client,
    job: &GitLabJob,
    token: &str,
    sha: &str,
    retry: &Retry,
) -> Result<Option<u64>, PublishError> {
    let what = format!("looking up the merge request of commit {sha}");
    let url = format!(
        "{}/projects/{}/repository/commits/{sha}/merge_requests",
        job.api_url,
        project_segment(&job.project)
    );
    let (text, _) = send(client, token, &what, Method::GET, &url, None, retry).await?;
    let requests: Vec<MergeRequestSummary> = parse(&what, &text)?;
    Ok(requests.into_iter().find(|request| request.state == "opened").map(|request| request.iid))
}

impl Thread for MergeRequest {
    async fn me(&self) -> Result<String, PublishError> {
        let what = "asking GitLab who the token belongs to";
        let url = format!("{}/user", self.api);
        let (text, _) =
            send(&self.client, &self.token, what, Method::GET, &url, None, &self.retry).await?;
        Ok(parse::<Author>(what, &text)?.id.to_string())
    }

    async fn list(&self) -> Result<Vec<Note>, PublishError> {
        let what = format!("listing the notes of merge request !{}", self.number);
        let mut notes = Vec::new();
        let mut page = Some("1".to_string());
        while let Some(number) = page {
            let url = format!(
                "{}?per_page=100&sort=asc&order_by=created_at&page={number}",
                self.notes_url()
            );
            let (text, next) =
                send(&self.client, &self.token, &what, Method::GET, &url, None, &self.retry)
                    .await?;
            let batch: Vec<GitLabNote> = parse(&what, &text)?;
            notes.extend(batch.into_iter().filter(|note| !note.system).map(|note| Note {
                id: note.id,
                author: note.author.id.to_string(),
                body: note.body,
            }));
            page = next;
        }
        Ok(notes)
    }

    async fn create(&self, body: &str) -> Result<u64, PublishError> {
        let what = format!("adding a note to merge request !{}", self.number);
        let payload = json!({ "body": body });
        let (text, _) = send(
            &self.client,
            &self.token,
            &what,
            Method::POST,
            &self.notes_url(),
            Some(&payload),
            &self.retry,
        )
        .await?;
        Ok(parse::<GitLabNote>(&what, &text)?.id)
    }

    async fn update(&self, id: u64, body: &str) -> Result<(), PublishError> {
        let what = format!("updating note {id}");
        let url = format!("{}/{id}", self.notes_url());
        let payload = json!({ "body": body });
        send(&self.client, &self.token, &what, Method::PUT, &url, Some(&payload), &self.retry)
            .await?;
        Ok(())
    }

    async fn delete(&self, id: u64) -> Result<(), PublishError> {
        let what = format!("removing duplicate note {id}");
        let url = format!("{}/{id}", self.notes_url());
        send(&self.client, &self.token, &what, Method::DELETE, &url, None, &self.retry).await?;
        Ok(())
    }
}

/// Sends one request with retries; returns the body and the next page number, if any.
async fn send(
    client: &Client,
    token: &str,
    what: &str,
    method: Method,
    url: &str,
    body: Option<&Value>,
    retry: &Retry,
) -> Result<(String, Option<String>), PublishError> {
    let mut attempt = 1;
    loop {
        let mut request = client.request(method.clone(), url).header("PRIVATE-TOKEN", token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(_) if attempt < retry.attempts => {
                tokio::time::sleep(retry.backoff * 2u32.pow(attempt - 1)).await;
                attempt += 1;
                continue;
            }
            Err(cause) => {
                // reqwest's message names the URL, which holds no secret; the token is a header.
                return Err(PublishError::Transport {
                    what: what.into(),
                    message: cause.without_url().to_string(),
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
            Next::Accept => {
                let next = response
                    .headers()
                    .get("x-next-page")
                    .and_then(|value| value.to_str().ok())
                    .map(|value| value.trim().to_string())
                    .filter(|value| !value.is_empty());
                let success = response.status().is_success();
                let text = response.text().await.unwrap_or_default();
                if success {
                    return Ok((text, next));
                }
                let hint = refusal_hint("gitlab", false);
                return Err(PublishError::from_answer(what, status, text, hint));
            }
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, PublishError> {
    serde_json::from_str(text)
        .map_err(|cause| PublishError::Answer { what: what.into(), message: cause.to_string() })
}
