//! Writes that a killed job cannot leave half done: a file is written beside its destination
//! under a temporary name, flushed to disk, then renamed over it; a folder is filled in a
//! temporary sibling, then swapped in.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {cause}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    cause: std::io::Error,
}

fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Replaces `path` with `bytes`, creating its folder when missing.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let error = |cause| WriteError { path: path.to_path_buf(), cause };
    let parent = parent_of(path);
    std::fs::create_dir_all(parent).map_err(error)?;
    let mut file = tempfile::Builder::new()
        .prefix(".modelci-")
        .suffix(".tmp")
        .tempfile_in(parent)
        .map_err(error)?;
    file.write_all(bytes).map_err(error)?;
    file.as_file().sync_all().map_err(error)?;
    file.persist(path).map_err(|persist| error(persist.error))?;
    Ok(())
}

/// Replaces the folder `target` with one that `fill` writes into the folder it is given.
///
/// Until the swap, `target` keeps its old content; if `fill` fails, the old content stays.
pub fn replace_dir<E: From<WriteError>>(
    target: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let error = |cause| WriteError { path: target.to_path_buf(), cause };
    let parent = parent_of(target);
    std::fs::create_dir_all(parent).map_err(error)?;
    let staging =
        tempfile::Builder::new().prefix(".modelci-new-").tempdir_in(parent).map_err(error)?;
    fill(staging.path())?;

    let old = tempfile::Builder::new().prefix(".modelci-old-").tempdir_in(parent).map_err(error)?;
    let had_old = target.exists();
    if had_old {
        // The old folder moves into a temporary folder that is deleted when dropped.
        std::fs::rename(target, old.path().join("content")).map_err(error)?;
    }
    let staged = staging.keep();
    if let Err(cause) = std::fs::rename(&staged, target) {
        if had_old {
            let _ = std::fs::rename(old.path().join("content"), target);
        }
        let _ = std::fs::remove_dir_all(&staged);
        return Err(error(cause).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_content_and_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/file.json");
        write(&path, b"one").unwrap();
        write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path().join("sub")).unwrap().count(), 1);
    }

    #[test]
    fn replace_dir_swaps_content_and_keeps_old_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("baseline");
        replace_dir::<WriteError>(&target, |staging| write(&staging.join("a"), b"1")).unwrap();
        replace_dir::<WriteError>(&target, |staging| write(&staging.join("b"), b"2")).unwrap();
        assert!(!target.join("a").exists());
        assert_eq!(std::fs::read(target.join("b")).unwrap(), b"2");

        let failed = replace_dir(&target, |_| {
            Err(WriteError { path: target.clone(), cause: std::io::Error::other("boom") })
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(target.join("b")).unwrap(), b"2");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "only the baseline folder remains");
    }
}
