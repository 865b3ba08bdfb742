//! Publishing to the forge: the sticky comment on a GitHub pull request or GitLab merge
//! request.
//!
//! One comment per label: a later run finds its own comment by the hidden marker on its first
//! line (`<!-- modelci:report label=... -->`), written by the same account, and edits it in
//! place. Duplicates left by racing jobs are removed, keeping the oldest.
//!
//! Requests that fail transiently are retried: a rate limit (429, or 403 with
//! `x-ratelimit-remaining: 0` or `retry-after`) is waited out when the wait is within a cap,
//! and a 5xx is retried with exponential backoff a bounded number of times. Tokens come from
//! the environment only, and every message that leaves this module is passed through
//! [`redact`].

pub mod context;
pub mod github;
pub mod gitlab;

use std::time::Duration;

use http::HeaderMap;

/// How requests are retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// The wait before the second attempt after a 5xx; doubled for each further attempt.
    pub backoff: Duration,
    /// The longest rate-limit wait modelci sits through; longer ones give up.
    pub max_wait: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 4,
            backoff: Duration::from_millis(500),
            max_wait: Duration::from_secs(60),
        }
    }
}

/// What to do after a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Use the response as it is.
    Accept,
    Wait(Duration),
    /// Stop: the reason in words.
    GiveUp(String),
}

/// Decides whether a response with `status` and `headers`, on attempt `attempt` (from 1), is
/// worth retrying. `now` is the Unix time in seconds, for `x-ratelimit-reset`.
pub fn next_step(status: u16, headers: &HeaderMap, attempt: u32, retry: &Retry, now: u64) -> Next {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let retry_after = header("retry-after").and_then(|value| value.trim().parse::<u64>().ok());
    let exhausted = header("x-ratelimit-remaining").map(str::trim) == Some("0");
    let rate_limited = status == 429 || (status == 403 && (exhausted || retry_after.is_some()));

    if rate_limited {
        let reset = header("x-ratelimit-reset").and_then(|value| value.trim().parse::<u64>().ok());
        let seconds =
            retry_after.or_else(|| reset.map(|reset| reset.saturating_sub(now) + 1)).unwrap_or(60);
        let wait = Duration::from_secs(seconds);
        if attempt >= retry.attempts {
            return Next::GiveUp(format!("still rate limited after {attempt} attempts"));
        }
        if wait > retry.max_wait {
            return Next::GiveUp(format!(
                "rate limited for {seconds} s, longer than the {} s modelci waits",
                retry.max_wait.as_secs()
            ));
        }
        return Next::Wait(wait);
    }
    if (500..600).contains(&status) {
        if attempt >= retry.attempts {
            return Next::GiveUp(format!("the server answered {status} {attempt} times"));
        }
        return Next::Wait(retry.backoff * 2u32.saturating_pow(attempt - 1));
    }
    Next::Accept
}

/// Why a comment could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{what} was refused ({status}): {message}\nhint: {hint}")]
    Refused { what: String, status: u16, message: String, hint: String },
    #[error("{what} failed: {reason}")]
    GaveUp { what: String, reason: String },
    #[error("{what} failed ({status}): {message}")]
    Unexpected { what: String, status: u16, message: String },
    #[error("{what} failed: {message}")]
    Transport { what: String, message: String },
    #[error("cannot read the answer to {what}: {message}")]
    Answer { what: String, message: String },
}

impl PublishError {
    /// The error for an answer that is neither a success nor worth retrying. Both forges put
    /// the reason in a JSON `message` (GitLab sometimes in `error`); other bodies are quoted.
    pub fn from_answer(what: &str, status: u16, body: String, hint: String) -> PublishError {
        let json = serde_json::from_str::<serde_json::Value>(&body).ok();
        let reason = json.as_ref().and_then(|json| {
            json["message"].as_str().or(json["error"].as_str()).map(str::to_string)
        });
        let message = reason.unwrap_or(body);
        match status {
            401 | 403 | 404 => PublishError::Refused { what: what.into(), status, message, hint },
            _ => PublishError::Unexpected { what: what.into(), status, message },
        }
    }
}

/// The hint for a request refused with 401, 403 or 404, which on both forges mostly means a
/// token without the right to comment.
pub fn refusal_hint(forge: &str, fork: bool) -> String {
    match (forge, fork) {
        ("github", true) => "pull requests from forks get a read-only token. Evaluate in the \
            `pull_request` workflow and upload the report as an artifact, then comment from a \
            `workflow_run` workflow (or `pull_request_target` without checking out the fork's \
            code); see the README"
            .to_string(),
        ("github", false) => "give the workflow `permissions: pull-requests: write` (and \
            `issues: write`), or a token with that scope in GITHUB_TOKEN"
            .to_string(),
        _ => "GITLAB_TOKEN needs the `api` scope and at least the Reporter role on the project \
            (a project access token works)"
            .to_string(),
    }
}

/// Replaces every occurrence of each non-empty secret in `text` with `[redacted]`.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_string();
    for secret in secrets.iter().filter(|secret| secret.len() >= 4) {
        text = text.replace(secret, "[redacted]");
    }
    text
}

/// The first line of a comment, as markers are compared.
pub fn first_line(body: &str) -> &str {
    body.lines().next().unwrap_or("").trim_end()
}

/// What publishing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    Created { id: u64 },
    Updated { id: u64, duplicates_removed: usize },
    Unchanged { id: u64, duplicates_removed: usize },
}

/// A comment or note as the sticky logic needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub id: u64,
    pub author: String,
    pub body: String,
}

/// The five operations the sticky comment needs from a forge.
#[expect(async_fn_in_trait, reason = "only modelci implements it, on a current-thread runtime")]
pub trait Thread {
    /// The account the token belongs to, as [`Note::author`] names it.
    async fn me(&self) -> Result<String, PublishError>;
    /// Every comment on the thread, all pages, oldest first, system notes left out.
    async fn list(&self) -> Result<Vec<Note>, PublishError>;
    async fn create(&self, body: &str) -> Result<u64, PublishError>;
    async fn update(&self, id: u64, body: &str) -> Result<(), PublishError>;
    async fn delete(&self, id: u64) -> Result<(), PublishError>;
}

/// Creates or updates the one comment whose first line is `marker`, written by the token's
/// account, and removes any duplicates of it.
pub async fn sticky(
    thread: &impl Thread,
    marker: &str,
    body: &str,
) -> Result<Published, PublishError> {
    let me = thread.me().await?;
    let mine = |notes: Vec<Note>| -> Vec<Note> {
        let mut notes: Vec<Note> = notes
            .into_iter()
            .filter(|note| note.author == me && first_line(&note.body) == marker)
            .collect();
        notes.sort_by_key(|note| note.id);
        notes
    };

    let existing = mine(thread.list().await?);
    let Some((oldest, duplicates)) = existing.split_first() else {
        let id = thread.create(body).await?;
        // Another job may have created its comment at the same time: keep the oldest.
        let after = mine(thread.list().await?);
        if let Some((oldest, others)) = after.split_first() {
            if oldest.id != id {
                thread.update(oldest.id, body).await?;
            }
            for other in others {
                thread.delete(other.id).await?;
            }
            return Ok(Published::Created { id: oldest.id });
        }
        return Ok(Published::Created { id });
    };

    for duplicate in duplicates {
        thread.delete(duplicate.id).await?;
    }
    if oldest.body == body {
        return Ok(Published::Unchanged { id: oldest.id, duplicates_removed: duplicates.len() });
    }
    thread.update(oldest.id, body).await?;
    Ok(Published::Updated { id: oldest.id, duplicates_removed: duplicates.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn rate_limits_are_waited_out_within_the_cap() {
        let retry = Retry::default();
        assert_eq!(
            next_step(429, &headers(&[("retry-after", "3")]), 1, &retry, 0),
            Next::Wait(Duration::from_secs(3))
        );
        let reset = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1010")]);
        assert_eq!(next_step(403, &reset, 1, &retry, 1000), Next::Wait(Duration::from_secs(11)));
        let far = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "5000")]);
        assert!(matches!(next_step(403, &far, 1, &retry, 1000), Next::GiveUp(_)));
        // A plain 403 is a refusal, not a rate limit.
        assert_eq!(next_step(403, &headers(&[]), 1, &retry, 0), Next::Accept);
    }

    #[test]
    fn server_errors_back_off_then_give_up() {
        let retry = Retry { attempts: 3, backoff: Duration::from_millis(100), ..Retry::default() };
        assert_eq!(
            next_step(502, &HeaderMap::new(), 1, &retry, 0),
            Next::Wait(Duration::from_millis(100))
        );
        assert_eq!(
            next_step(500, &HeaderMap::new(), 2, &retry, 0),
            Next::Wait(Duration::from_millis(200))
        );
        assert!(matches!(next_step(500, &HeaderMap::new(), 3, &retry, 0), Next::GiveUp(_)));
        assert_eq!(next_step(201, &HeaderMap::new(), 1, &retry, 0), Next::Accept);
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact("token ghp_abc123 leaked", &["ghp_abc123", ""]),
            "token [redacted] leaked"
        );
    }
}
