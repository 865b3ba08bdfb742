//! Tree manifests: what a saved folder holds, entry by entry, and its canonical encoding.
//!
//! The encoding, all integers little-endian:
//!
//! ```text
//! "modelci-tree-v1\0"
//! u64 entry count
//! per entry, sorted by path bytes:
//!   u64 path length, path bytes ('/'-separated, relative; the root is the empty path)
//!   u32 mode bits (permissions, setuid, setgid, sticky)
//!   u8 kind: 0 file, 1 directory, 2 symbolic link
//!   file:    32-byte sha256 of the content, u64 size
//!   link:    u64 target length, target bytes
//! ```
//!
//! Every variable-length field carries its length, so no two different trees share an
//! encoding, and paths are exact bytes: names with spaces, tabs or bytes that are not UTF-8
//! survive the round trip.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::index::Stat;
use super::{Digest, StoreError};

const MAGIC: &[u8] = b"modelci-tree-v1\0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative, '/'-separated, as exact bytes; empty for the tree's root.
    pub path: Vec<u8>,
    pub mode: u32,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File { digest: Digest, size: u64 },
    Directory,
    Symlink { target: Vec<u8> },
}

impl Entry {
    /// The path for messages: lossy where it is not UTF-8.
    pub fn display_path(&self) -> String {
        if self.path.is_empty() {
            ".".to_string()
        } else {
            String::from_utf8_lossy(&self.path).into_owned()
        }
    }
}

/// Copies the verified content of a blob into a writer; `&str` names the entry for messages.
pub type ReadBlob<'a> = dyn Fn(&Digest, &mut dyn Write, &str) -> Result<(), StoreError> + Sync + 'a;

/// A saved folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub(super) entries: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("the tree manifest is malformed: {0}")]
    Malformed(&'static str),
    #[error("refusing the manifest entry {path:?}: {reason}; nothing was written")]
    UnsafePath { path: String, reason: &'static str },
    #[error(
        "the symbolic link {path} points outside the tree ({target}); such links are not \
         stored\nhint: make it relative to a file inside the folder, or copy the file it \
         points to"
    )]
    EscapingLink { path: String, target: String },
    #[error("{} is neither a file, a folder nor a symbolic link; it cannot be stored", .0.display())]
    SpecialFile(PathBuf),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |cause| StoreError::Io { path: path.to_path_buf(), cause }
}

/// Whether a link at `link` (a relative path) with `target` stays inside the tree.
fn link_stays_inside(link: &[u8], target: &[u8]) -> bool {
    if target.first() == Some(&b'/') || target.contains(&b'\\') {
        return false;
    }
    // Depth of the folder holding the link, then walk the target's components.
    let mut depth = link.split(|b| *b == b'/').count() as i64 - 1;
    for part in target.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

impl Tree {
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Lists the folder `root` without reading any file: symbolic links are kept as links
    /// and never followed, so a link cycle cannot trap the walk.
    pub fn scan(root: &Path) -> Result<Listing, StoreError> {
        let metadata = std::fs::symlink_metadata(root).map_err(io_error(root))?;
        if !metadata.is_dir() {
            return Err(StoreError::Unsupported {
                path: root.to_path_buf(),
                reason: "is not a folder; the store saves folders".into(),
            });
        }
        let mut listing = Listing {
            entries: vec![Entry {
                path: Vec::new(),
                mode: metadata.permissions().mode() & 0o7777,
                kind: EntryKind::Directory,
            }],
            files: Vec::new(),
        };
        scan_folder(root, &[], &mut listing)?;
        Ok(listing)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for entry in &self.entries {
            out.extend_from_slice(&(entry.path.len() as u64).to_le_bytes());
            out.extend_from_slice(&entry.path);
            out.extend_from_slice(&entry.mode.to_le_bytes());
            match &entry.kind {
                EntryKind::File { digest, size } => {
                    out.push(0);
                    out.extend_from_slice(&digest.0);
                    out.extend_from_slice(&size.to_le_bytes());
                }
                EntryKind::Directory => out.push(1),
                EntryKind::Symlink { target } => {
                    out.push(2);
                    out.extend_from_slice(&(target.len() as u64).to_le_bytes());
                    out.extend_from_slice(target);
                }
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Tree, TreeError> {
        let mut reader = Reader { bytes, at: 0 };
        if reader.take(MAGIC.len())? != MAGIC {
            return Err(TreeError::Malformed("it does not start with modelci-tree-v1"));
        }
        let count = reader.u64()?;
        let mut entries = Vec::new();
        for _ in 0..count {
            let length = reader.u64()? as usize;
            let path = reader.take(length)?.to_vec();
            let mode = u32::from_le_bytes(reader.take(4)?.try_into().unwrap_or_default());
            let kind = match reader.take(1)?[0] {
                0 => {
                    let digest = Digest(reader.take(32)?.try_into().unwrap_or([0; 32]));
                    EntryKind::File { digest, size: reader.u64()? }
                }
                1 => EntryKind::Directory,
                2 => {
                    let length = reader.u64()? as usize;
                    EntryKind::Symlink { target: reader.take(length)?.to_vec() }
                }
                _ => return Err(TreeError::Malformed("an entry has an unknown kind")),
            };
            entries.push(Entry { path, mode, kind });
        }
        if reader.at != bytes.len() {
            return Err(TreeError::Malformed("bytes follow the last entry"));
        }
        if entries.windows(2).any(|pair| pair[0].path >= pair[1].path) {
            return Err(TreeError::Malformed("entries are not sorted or repeat a path"));
        }
        Ok(Tree { entries })
    }

    /// Refuses any entry that could land outside the target: absolute paths, `..`, empty or
    /// `.` components, backslashes, drive letters, NUL bytes, paths below a symbolic link, and
    /// links that point outside the tree.
    pub fn check_paths(&self) -> Result<(), TreeError> {
        let refuse =
            |entry: &Entry, reason| TreeError::UnsafePath { path: entry.display_path(), reason };
        let links: Vec<&[u8]> = self
            .entries
            .iter()
            .filter(|entry| matches!(entry.kind, EntryKind::Symlink { .. }))
            .map(|entry| entry.path.as_slice())
            .collect();
        for entry in &self.entries {
            if entry.path.is_empty() {
                if entry.kind != EntryKind::Directory {
                    return Err(refuse(entry, "the root must be a folder"));
                }
                continue;
            }
            let path = &entry.path;
            if path[0] == b'/' {
                return Err(refuse(entry, "absolute path"));
            }
            if path.contains(&b'\\') || path.contains(&0) {
                return Err(refuse(entry, "backslash or NUL in the path"));
            }
            for (index, part) in path.split(|b| *b == b'/').enumerate() {
                if part.is_empty() || part == b"." || part == b".." {
                    return Err(refuse(entry, "empty, . or .. path component"));
                }
                if index == 0 && part.len() >= 2 && part[1] == b':' && part[0].is_ascii_alphabetic()
                {
                    return Err(refuse(entry, "drive letter"));
                }
            }
            let below_link = links.iter().any(|link| {
                path.len() > link.len() && path.starts_with(link) && path[link.len()] == b'/'
            });
            if below_link {
                return Err(refuse(entry, "it lies below a symbolic link"));
            }
            if let EntryKind::Symlink { target } = &entry.kind
                && !link_stays_inside(path, target)
            {
                return Err(TreeError::EscapingLink {
                    path: entry.display_path(),
                    target: String::from_utf8_lossy(target).into_owned(),
                });
            }
        }
        Ok(())
    }

    /// Writes every entry below `folder` (an empty folder): folders first, then files in
    /// parallel, then links. File contents come from `read`, which verifies them. Folders stay
    /// writable until [`Tree::finish_directory_modes`]. Nothing is flushed to disk here; the
    /// caller syncs once for the whole tree.
    pub fn materialise(&self, folder: &Path, read: &ReadBlob<'_>) -> Result<(), StoreError> {
        use rayon::prelude::*;

        let target = |entry: &Entry| folder.join(OsStr::from_bytes(&entry.path));
        for entry in self.entries.iter().filter(|e| e.kind == EntryKind::Directory) {
            let path = target(entry);
            std::fs::create_dir_all(&path).map_err(io_error(&path))?;
        }
        self.entries.par_iter().try_for_each(|entry| {
            let EntryKind::File { digest, .. } = &entry.kind else {
                return Ok(());
            };
            let path = target(entry);
            let mut file = File::options()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(io_error(&path))?;
            read(digest, &mut file, &entry.display_path())?;
            // chmod, not the creation mode, so the umask cannot change it.
            file.set_permissions(std::fs::Permissions::from_mode(entry.mode))
                .map_err(io_error(&path))
        })?;
        for entry in &self.entries {
            if let EntryKind::Symlink { target: link } = &entry.kind {
                let path = target(entry);
                std::os::unix::fs::symlink(OsStr::from_bytes(link), &path)
                    .map_err(io_error(&path))?;
            }
        }
        Ok(())
    }

    /// Gives every folder below `folder` its recorded mode, deepest first.
    pub fn finish_directory_modes(&self, folder: &Path) -> Result<(), StoreError> {
        for entry in self.entries.iter().rev() {
            if entry.kind == EntryKind::Directory {
                let path = folder.join(OsStr::from_bytes(&entry.path));
                let permissions = std::fs::Permissions::from_mode(entry.mode);
                std::fs::set_permissions(&path, permissions).map_err(io_error(&path))?;
            }
        }
        Ok(())
    }
}

fn scan_folder(folder: &Path, prefix: &[u8], listing: &mut Listing) -> Result<(), StoreError> {
    let mut children: Vec<_> = std::fs::read_dir(folder)
        .map_err(io_error(folder))?
        .collect::<Result<_, _>>()
        .map_err(io_error(folder))?;
    children.sort_by_key(|child| child.file_name());
    // `lstat` is most of a scan's time: run it on every core, then walk in order.
    let stats: Vec<_> = {
        use rayon::prelude::*;
        children
            .par_iter()
            .map(|child| {
                let path = child.path();
                std::fs::symlink_metadata(&path).map(|metadata| (path, metadata))
            })
            .collect()
    };
    for (child, stat) in children.iter().zip(stats) {
        let (path, metadata) = stat.map_err(io_error(&child.path()))?;
        let mut relative = prefix.to_vec();
        if !relative.is_empty() {
            relative.push(b'/');
        }
        relative.extend_from_slice(child.file_name().as_bytes());
        let mode = metadata.permissions().mode() & 0o7777;
        let file_type = metadata.file_type();
        let kind = if file_type.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io_error(&path))?;
            let target = target.as_os_str().as_bytes().to_vec();
            if !link_stays_inside(&relative, &target) {
                return Err(TreeError::EscapingLink {
                    path: path.display().to_string(),
                    target: String::from_utf8_lossy(&target).into_owned(),
                }
                .into());
            }
            EntryKind::Symlink { target }
        } else if file_type.is_dir() {
            scan_folder(&path, &relative, listing)?;
            EntryKind::Directory
        } else if file_type.is_file() {
            listing.files.push(PendingFile {
                entry: listing.entries.len(),
                path,
                stat: Stat::of(&metadata),
            });
            // The digest is filled in by `Listing::finish`.
            EntryKind::File { digest: Digest([0; 32]), size: metadata.len() }
        } else {
            return Err(TreeError::SpecialFile(path).into());
        };
        listing.entries.push(Entry { path: relative, mode, kind });
    }
    Ok(())
}

/// A folder listed but not yet hashed: its entries, and the files still to be stored.
#[derive(Debug)]
pub struct Listing {
    entries: Vec<Entry>,
    pub files: Vec<PendingFile>,
}

/// A regular file found by [`Tree::scan`].
#[derive(Debug)]
pub struct PendingFile {
    /// Its position in the listing's entries.
    entry: usize,
    pub path: PathBuf,
    pub stat: Stat,
}

impl PendingFile {
    /// The path relative to the scanned folder, as stored in the manifest.
    pub fn relative<'a>(&self, listing: &'a Listing) -> &'a [u8] {
        &listing.entries[self.entry].path
    }
}

impl Listing {
    /// The tree, given each pending file's digest and size, in the order of `files`.
    pub fn finish(mut self, stored: &[(Digest, u64)]) -> Tree {
        debug_assert_eq!(stored.len(), self.files.len());
        for (file, (digest, size)) in self.files.iter().zip(stored) {
            self.entries[file.entry].kind = EntryKind::File { digest: *digest, size: *size };
        }
        self.entries.sort_by(|a, b| a.path.cmp(&b.path));
        Tree { entries: self.entries }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], TreeError> {
        let end = self.at.checked_add(length).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or(TreeError::Malformed("it ends in the middle of an entry"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u64(&mut self) -> Result<u64, TreeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
}
