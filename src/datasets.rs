//! Datasets through the store: the lock file that pins each dataset's tree digest, and the
//! `data pull`, `data status`, `data lock` and `cache-key` commands.
//!
//! A dataset is a folder. Its config entry is a local path, or an archive at a URL pinned by
//! sha256 that is unpacked into the store and materialised at the entry's `path`. Pulling
//! writes copies, never hard links, so that editing a file in the working folder can never
//! change a blob in the store; a folder whose content differs from what is expected is never
//! replaced without `--force`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, DatasetSource, RemoteSource};
use crate::fetch;
use crate::store::{ArchiveKind, Digest, Fingerprint, Store, StoreError, source_key};
use crate::ui::Ui;

/// The lock file's name; it sits beside the config.
pub const LOCK_FILE: &str = "modelci.lock";
const LOCK_SCHEMA: &str = "modelci.lock/v1";

/// `modelci.lock`: the tree digest of each dataset when it was locked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub schema: String,
    /// By dataset name (`train`, `test`).
    pub datasets: BTreeMap<String, LockedDataset>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedDataset {
    /// The folder, as the config writes it.
    pub path: String,
    /// The folder's tree digest in the store.
    pub tree: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    #[error("cannot read the lock file {}: {message}\nhint: {hint}", path.display())]
    BadLock { path: PathBuf, message: String, hint: &'static str },
    #[error(
        "dataset {name}: {} differs from {expected}\nhint: run `modelci data lock` to accept \
         the folder as it is, or `modelci data pull --force` to replace it with the expected \
         tree",
        path.display()
    )]
    Changed { name: &'static str, path: PathBuf, expected: String },
    #[error("dataset {name}: {} does not exist, and {reason}\nhint: {hint}", path.display())]
    Missing { name: &'static str, path: PathBuf, reason: String, hint: String },
    #[error(
        "dataset {name}: the archive at {url} unpacks to tree {actual}, but {LOCK_FILE} pins \
         tree {locked}\nhint: if the config's url, sha256 or subdir changed on purpose, run \
         `modelci data lock`"
    )]
    LockMismatch { name: &'static str, url: String, actual: Digest, locked: Digest },
    #[error(
        "dataset {name}: cannot tell the archive format of {url}\nhint: modelci unpacks \
         archives whose name ends in {}",
        ArchiveKind::ENDINGS
    )]
    UnknownArchive { name: &'static str, url: String },
    #[error("cannot write {}: {cause}", path.display())]
    Write { path: PathBuf, cause: String },
}

/// The lock file of `config`.
pub fn lock_path(config: &Config) -> PathBuf {
    let folder = config.path.parent().filter(|p| !p.as_os_str().is_empty());
    folder.unwrap_or(Path::new(".")).join(LOCK_FILE)
}

/// The lock file, or `None` when there is none.
pub fn read_lock(config: &Config) -> Result<Option<LockFile>, DatasetError> {
    let path = lock_path(config);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(DatasetError::BadLock {
                path,
                message: error.to_string(),
                hint: "check the file's permissions",
            });
        }
    };
    let bad = |message: String| DatasetError::BadLock {
        path: path.clone(),
        message,
        hint: "regenerate it with `modelci data lock`",
    };
    let lock: LockFile = serde_json::from_str(&text).map_err(|error| bad(error.to_string()))?;
    if lock.schema != LOCK_SCHEMA {
        return Err(bad(format!("schema {:?}, expected {LOCK_SCHEMA:?}", lock.schema)));
    }
    for (name, dataset) in &lock.datasets {
        if Digest::parse(&dataset.tree).is_none() {
            return Err(bad(format!("datasets.{name}.tree is not a 64-digit hex digest")));
        }
    }
    Ok(Some(lock))
}

/// The tree `lock` pins for `source`.
fn locked_tree(lock: Option<&LockFile>, source: &DatasetSource) -> Option<Digest> {
    lock?.datasets.get(source.name).and_then(|dataset| Digest::parse(&dataset.tree))
}

fn remote_key(remote: &RemoteSource) -> Digest {
    let sha256 = Digest::parse(&remote.sha256).unwrap_or(Digest([0; 32]));
    source_key(&sha256, remote.subdir.as_deref())
}

/// What a dataset's folder is, against what is expected of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// The folder is the expected tree.
    UpToDate,
    /// The folder is there but is not the expected tree.
    Changed { current: Digest, expected: Digest },
    /// The folder is there and nothing says what it should be.
    NotLocked { current: Digest },
    /// No folder; `pull` can restore it from the store, or download it, or neither.
    Missing { in_store: bool, fetchable: bool },
}

/// One dataset's line of `data status`.
#[derive(Debug, Clone)]
pub struct Status {
    pub name: &'static str,
    pub path: PathBuf,
    /// The tree the lock file (or, for a URL, the last download) expects.
    pub expected: Option<Digest>,
    /// Whether the expected tree is in the store.
    pub cached: bool,
    pub state: State,
}

/// What each dataset's folder is, against the lock file and the store. Writes nothing.
pub fn status(config: &Config, store: &Store) -> Result<Vec<Status>, DatasetError> {
    let lock = read_lock(config)?;
    let mut lines = Vec::new();
    for source in &config.data.sources {
        let expected = locked_tree(lock.as_ref(), source)
            .or_else(|| source.remote.as_ref().and_then(|r| store.find_source(&remote_key(r))));
        let cached = expected.is_some_and(|tree| store.has_tree(&tree));
        let state = if source.path.exists() {
            let current = store.digest_of(&source.path)?;
            match expected {
                Some(expected) if expected == current => State::UpToDate,
                Some(expected) => State::Changed { current, expected },
                None => State::NotLocked { current },
            }
        } else {
            State::Missing { in_store: cached, fetchable: source.remote.is_some() }
        };
        lines.push(Status {
            name: source.name,
            path: source.path.clone(),
            expected,
            cached,
            state,
        });
    }
    Ok(lines)
}

/// What `pull` did for one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// The folder already was the expected tree.
    UpToDate(Digest),
    /// The folder had no expected tree; it is now kept in the store.
    Cached(Digest),
    /// Written from the store.
    Restored(Digest),
    /// Downloaded, unpacked into the store, and written from there.
    Fetched(Digest),
}

impl Pulled {
    pub fn tree(&self) -> Digest {
        match self {
            Pulled::UpToDate(tree)
            | Pulled::Cached(tree)
            | Pulled::Restored(tree)
            | Pulled::Fetched(tree) => *tree,
        }
    }
}

/// Materialises every dataset of `config`, fetching only what the store lacks.
pub fn pull(
    config: &Config,
    store: &Store,
    force: bool,
    ui: &Ui,
) -> Result<Vec<(&'static str, Pulled)>, DatasetError> {
    let lock = read_lock(config)?;
    config
        .data
        .sources
        .iter()
        .map(|source| {
            let pulled = pull_one(source, locked_tree(lock.as_ref(), source), store, force, ui)?;
            Ok((source.name, pulled))
        })
        .collect()
}

/// Materialises the datasets that are missing, for `modelci run`.
pub fn ensure_present(config: &Config, store: &Store, ui: &Ui) -> Result<(), DatasetError> {
    let missing: Vec<_> = config.data.sources.iter().filter(|s| !s.path.exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let lock = read_lock(config)?;
    for source in missing {
        let locked = locked_tree(lock.as_ref(), source);
        // A local dataset with nothing to restore it from is the data loader's error to give.
        if source.remote.is_none() && !locked.is_some_and(|tree| store.has_tree(&tree)) {
            continue;
        }
        pull_one(source, locked, store, false, ui)?;
    }
    Ok(())
}

fn pull_one(
    source: &DatasetSource,
    locked: Option<Digest>,
    store: &Store,
    force: bool,
    ui: &Ui,
) -> Result<Pulled, DatasetError> {
    let present = source.path.exists();
    let current = if present { Some(store.digest_of(&source.path)?) } else { None };
    let changed = |expected: Digest| DatasetError::Changed {
        name: source.name,
        path: source.path.clone(),
        expected: format!("tree {} that {LOCK_FILE} pins", short(&expected)),
    };
    if let (Some(current), Some(locked)) = (current, locked)
        && current == locked
    {
        if !store.has_tree(&locked) {
            store.save(&source.path)?;
        }
        return Ok(Pulled::UpToDate(locked));
    }

    let Some(remote) = &source.remote else {
        return match locked {
            None if present => Ok(Pulled::Cached(store.save(&source.path)?.digest)),
            None => Err(DatasetError::Missing {
                name: source.name,
                path: source.path.clone(),
                reason: format!("{LOCK_FILE} does not pin it"),
                hint: "create the folder, or give the dataset a url and sha256 in the config"
                    .into(),
            }),
            Some(locked) if present && !force => Err(changed(locked)),
            Some(locked) if store.has_tree(&locked) => {
                restore(store, &locked, source, ui)?;
                Ok(Pulled::Restored(locked))
            }
            Some(locked) => Err(DatasetError::Missing {
                name: source.name,
                path: source.path.clone(),
                reason: format!("the store has no tree {} for it", short(&locked)),
                hint: "restore the store from your CI cache, or give the dataset a url and \
                       sha256 in the config"
                    .into(),
            }),
        };
    };

    let (tree, fetched) = match locked.filter(|tree| store.has_tree(tree)) {
        Some(tree) => (tree, false),
        None => match store.find_source(&remote_key(remote)) {
            Some(tree) => (tree, false),
            None => (fetch_into_store(source.name, remote, store, ui)?, true),
        },
    };
    if let Some(locked) = locked
        && locked != tree
    {
        return Err(DatasetError::LockMismatch {
            name: source.name,
            url: remote.url.clone(),
            actual: tree,
            locked,
        });
    }
    if current == Some(tree) {
        return Ok(Pulled::UpToDate(tree));
    }
    if present && !force {
        return Err(DatasetError::Changed {
            name: source.name,
            path: source.path.clone(),
            expected: format!("tree {} unpacked from {}", short(&tree), remote.url),
        });
    }
    restore(store, &tree, source, ui)?;
    Ok(if fetched { Pulled::Fetched(tree) } else { Pulled::Restored(tree) })
}

fn restore(
    store: &Store,
    tree: &Digest,
    source: &DatasetSource,
    ui: &Ui,
) -> Result<(), StoreError> {
    ui.debug(format!(
        "dataset {}: writing tree {} to {}",
        source.name,
        short(tree),
        source.path.display()
    ));
    store.restore(tree, &source.path)
}

fn fetch_into_store(
    name: &'static str,
    remote: &RemoteSource,
    store: &Store,
    ui: &Ui,
) -> Result<Digest, DatasetError> {
    let kind = ArchiveKind::from_name(&remote.url)
        .ok_or_else(|| DatasetError::UnknownArchive { name, url: remote.url.clone() })?;
    let expected = Digest::parse(&remote.sha256).unwrap_or(Digest([0; 32]));
    ui.status(format!("dataset {name}: downloading {}", remote.url));
    let fetched =
        fetch::fetch(&remote.url, &expected, &store.scratch_dir(), &Default::default(), ui)?;
    ui.debug(format!("dataset {name}: {} bytes, sha256 verified; unpacking", fetched.size));
    let key = remote_key(remote);
    Ok(store.import_archive(fetched.file.path(), kind, remote.subdir.as_deref(), &key)?)
}

/// Keeps every dataset in the store and writes the lock file pinning their trees. Datasets
/// that are missing are pulled first.
pub fn lock(config: &Config, store: &Store, ui: &Ui) -> Result<(PathBuf, LockFile), DatasetError> {
    let mut datasets = BTreeMap::new();
    for source in &config.data.sources {
        if !source.path.exists() {
            pull_one(source, None, store, false, ui)?;
        }
        let tree = store.save(&source.path)?.digest;
        datasets.insert(
            source.name.to_string(),
            LockedDataset {
                path: source.written.display().to_string(),
                tree: tree.hex(),
                url: source.remote.as_ref().map(|remote| remote.url.clone()),
                sha256: source.remote.as_ref().map(|remote| remote.sha256.clone()),
            },
        );
    }
    let lock = LockFile { schema: LOCK_SCHEMA.to_string(), datasets };
    let path = lock_path(config);
    let mut text = serde_json::to_string_pretty(&lock)
        .map_err(|error| DatasetError::Write { path: path.clone(), cause: error.to_string() })?;
    text.push('\n');
    crate::atomic::write(&path, text.as_bytes())
        .map_err(|error| DatasetError::Write { path: path.clone(), cause: error.to_string() })?;
    Ok((path, lock))
}

/// A cache key for actions/cache or GitLab's `cache:key`: it changes exactly when a dataset
/// does. It is taken over the lock file when there is one, so that it is known before any data
/// is there; otherwise over each dataset's current tree, or its archive's sha256.
pub fn cache_key(config: &Config, store: &Store) -> Result<String, DatasetError> {
    let path = lock_path(config);
    let mut fingerprint = Fingerprint::default();
    if read_lock(config)?.is_some() {
        let bytes = std::fs::read(&path).map_err(|error| DatasetError::BadLock {
            path: path.clone(),
            message: error.to_string(),
            hint: "check the file's permissions",
        })?;
        fingerprint = fingerprint.field("lock file", &bytes);
    } else {
        for source in &config.data.sources {
            let value = match (&source.remote, source.path.exists()) {
                (Some(remote), _) => format!("url {} {:?}", remote.sha256, remote.subdir),
                (None, true) => format!("tree {}", store.digest_of(&source.path)?),
                (None, false) => {
                    return Err(DatasetError::Missing {
                        name: source.name,
                        path: source.path.clone(),
                        reason: format!("there is no {LOCK_FILE} to take the key from"),
                        hint: "run `modelci data lock` where the data is, and commit the lock \
                               file"
                            .into(),
                    });
                }
            };
            fingerprint = fingerprint.field(source.name, value.as_bytes());
        }
    }
    Ok(format!("modelci-data-{}", &fingerprint.finish().hex()[..32]))
}

/// The trees `config` needs kept: each dataset as locked and as its folder is now, the
/// archive trees of its URL datasets, and the baseline's run and datasets (read from the
/// baseline's `metrics.json` metadata, when it is a folder).
pub fn referenced_trees(config: &Config, store: &Store) -> Result<Vec<Digest>, DatasetError> {
    let lock = read_lock(config)?;
    let mut trees = Vec::new();
    for source in &config.data.sources {
        trees.extend(locked_tree(lock.as_ref(), source));
        trees.extend(source.remote.as_ref().and_then(|r| store.find_source(&remote_key(r))));
        if source.path.is_dir() {
            trees.push(store.digest_of(&source.path)?);
        }
    }
    let metrics = config.gate.baseline.join(crate::gate::input::METRICS_FILE);
    if let Some(metadata) = std::fs::read(&metrics)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .map(|metrics| metrics["metadata"].clone())
    {
        let digest = |value: &serde_json::Value| value.as_str().and_then(Digest::parse);
        trees.extend(digest(&metadata["fingerprint"]).and_then(|print| store.run_tree(&print)));
        for split in ["train", "test"] {
            trees.extend(digest(&metadata["datasets"]["digests"][split]));
        }
    }
    trees.sort();
    trees.dedup();
    Ok(trees)
}

/// The first 12 hex digits of a digest, enough to tell trees apart in a message.
pub fn short(digest: &Digest) -> String {
    digest.hex()[..12].to_string()
}
