//! Downloads pinned by sha256: the body streams into a temporary file while it is hashed, in
//! constant memory; a dropped connection, a timeout, a 5xx or a rate limit is retried with
//! backoff a bounded number of times; bytes whose digest is not the pinned one are refused.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

use crate::forge::{Next, Retry, next_step};
use crate::store::Digest;
use crate::ui::Ui;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot download {url}: {reason}")]
    Failed { url: String, reason: String },
    #[error(
        "the download of {url} ({size} bytes) has sha256 {actual}, but the config pins \
         {expected}; it was not used\nhint: if the file at that URL changed on purpose, check \
         it and put its sha256 in the config"
    )]
    WrongDigest { url: String, size: u64, actual: Digest, expected: Digest },
    #[error("cannot store the download of {url} in {}: {cause}", folder.display())]
    Io { url: String, folder: std::path::PathBuf, cause: std::io::Error },
}

/// A verified download, in a temporary file that is removed when dropped.
#[derive(Debug)]
pub struct Fetched {
    pub file: NamedTempFile,
    pub size: u64,
}

/// Downloads `url` into a temporary file in `folder` and checks it against `expected`.
pub fn fetch(
    url: &str,
    expected: &Digest,
    folder: &Path,
    retry: &Retry,
    ui: &Ui,
) -> Result<Fetched, FetchError> {
    let failed = |reason: String| FetchError::Failed { url: url.to_string(), reason };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| failed(format!("cannot start the HTTP runtime: {error}")))?;
    runtime.block_on(fetch_async(url, expected, folder, retry, ui))
}

async fn fetch_async(
    url: &str,
    expected: &Digest,
    folder: &Path,
    retry: &Retry,
    ui: &Ui,
) -> Result<Fetched, FetchError> {
    let failed = |reason: String| FetchError::Failed { url: url.to_string(), reason };
    let client = reqwest::Client::builder()
        .user_agent(concat!("modelci/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|error| failed(format!("cannot build the HTTP client: {error}")))?;

    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = attempt_download(&client, url, folder).await?;
        let wait = match outcome {
            Attempt::Done(file, size, actual) => {
                if actual != *expected {
                    return Err(FetchError::WrongDigest {
                        url: url.to_string(),
                        size,
                        actual,
                        expected: *expected,
                    });
                }
                return Ok(Fetched { file, size });
            }
            Attempt::Status(status, headers) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_secs());
                match next_step(status, &headers, attempt, retry, now) {
                    Next::Wait(wait) => {
                        ui.warn(format!("{url} answered {status}; trying again in {wait:?}"));
                        wait
                    }
                    Next::GiveUp(reason) => return Err(failed(reason)),
                    Next::Accept => {
                        return Err(failed(format!(
                            "the server answered {status}\nhint: check data.*.url in the config"
                        )));
                    }
                }
            }
            Attempt::Broken(reason) => {
                if attempt >= retry.attempts {
                    return Err(failed(format!("{reason} (after {attempt} attempts)")));
                }
                let wait = retry.backoff * 2u32.saturating_pow(attempt - 1);
                ui.warn(format!("downloading {url}: {reason}; trying again in {wait:?}"));
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

enum Attempt {
    /// The whole body, its size and its digest.
    Done(NamedTempFile, u64, Digest),
    /// An answer other than 200.
    Status(u16, http::HeaderMap),
    /// The connection failed or broke off: worth another try.
    Broken(String),
}

async fn attempt_download(
    client: &reqwest::Client,
    url: &str,
    folder: &Path,
) -> Result<Attempt, FetchError> {
    let io = |cause| FetchError::Io { url: url.to_string(), folder: folder.to_path_buf(), cause };
    let mut response = match client.get(url).send().await {
        Ok(response) => response,
        Err(error) => return Ok(Attempt::Broken(describe(&error))),
    };
    let status = response.status().as_u16();
    if status != 200 {
        return Ok(Attempt::Status(status, response.headers().clone()));
    }
    let promised = response.content_length();
    let mut file =
        tempfile::Builder::new().prefix(".modelci-download-").tempfile_in(folder).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                hasher.update(&chunk);
                file.write_all(&chunk).map_err(io)?;
                size += chunk.len() as u64;
            }
            Ok(None) => break,
            Err(error) => {
                return Ok(Attempt::Broken(format!(
                    "the connection broke off after {size} bytes: {}",
                    describe(&error)
                )));
            }
        }
    }
    if let Some(promised) = promised
        && promised != size
    {
        return Ok(Attempt::Broken(format!("got {size} of the {promised} bytes announced")));
    }
    file.flush().map_err(io)?;
    Ok(Attempt::Done(file, size, Digest(hasher.finalize().into())))
}

/// A reqwest error with its causes, which hold the useful part ("connection refused").
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
