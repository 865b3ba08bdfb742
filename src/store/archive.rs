//! Archives into the store: a `.tar`, `.tar.gz`, `.tar.zst` or `.zip` becomes a tree, entry by
//! entry, without ever being unpacked into a folder. Every path then meets the same checks as
//! a manifest being restored (no absolute paths, `..`, backslashes, drive letters, paths below
//! a link, links out of the tree), so an archive can only ever land through
//! [`Store::restore`].
//!
//! Modes keep their permission bits only (setuid, setgid and sticky are dropped); folders the
//! archive implies but does not list get `0o755`; a later entry for the same path replaces an
//! earlier one, as `tar -x` would. Hard links take the content of the entry they name.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use super::pack::PackWriter;
use super::{Digest, Entry, EntryKind, Fingerprint, Store, StoreError, Tree, io_error};

/// Entries bigger than this stream through a temporary file instead of memory.
const IN_MEMORY: u64 = 8 << 20;

/// The archive formats modelci unpacks, told apart by the file name's ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Tar,
    TarGz,
    TarZst,
    Zip,
}

impl ArchiveKind {
    /// The endings that name each kind, for messages.
    pub const ENDINGS: &str = ".tar, .tar.gz, .tgz, .tar.zst, .tzst, .zip";

    /// The kind a file or URL path names by its ending, ignoring a query or fragment.
    pub fn from_name(name: &str) -> Option<ArchiveKind> {
        let name = name.split(['?', '#']).next().unwrap_or(name).to_ascii_lowercase();
        let kinds = [
            (".tar.gz", ArchiveKind::TarGz),
            (".tgz", ArchiveKind::TarGz),
            (".tar.zst", ArchiveKind::TarZst),
            (".tzst", ArchiveKind::TarZst),
            (".tar", ArchiveKind::Tar),
            (".zip", ArchiveKind::Zip),
        ];
        kinds.into_iter().find(|(ending, _)| name.ends_with(ending)).map(|(_, kind)| kind)
    }
}

/// The key a fetched archive's tree is recorded under: its bytes' digest and the folder taken
/// from it.
pub fn source_key(archive_sha256: &Digest, subdir: Option<&str>) -> Digest {
    Fingerprint::default()
        .field("archive sha256", &archive_sha256.0)
        .field("subdir", subdir.unwrap_or("").as_bytes())
        .finish()
}

/// The entries being gathered, by path.
type Gathered = BTreeMap<Vec<u8>, (u32, EntryKind)>;

impl Store {
    /// The tree recorded for an archive (see [`source_key`]), if it is still in the store.
    pub fn find_source(&self, key: &Digest) -> Option<Digest> {
        self.read_record("sources", key)
    }

    /// Stores every entry of `archive` (or of its folder `subdir`) as blobs and a tree,
    /// records the tree under `key`, and returns its digest. Nothing outside the store is
    /// written.
    pub fn import_archive(
        &self,
        archive: &Path,
        kind: ArchiveKind,
        subdir: Option<&str>,
        key: &Digest,
    ) -> Result<Digest, StoreError> {
        let _lock = self.lock(super::Lock::Shared)?;
        let mut gathered = Gathered::new();
        let pack = PackWriter::default();
        match kind {
            ArchiveKind::Zip => self.gather_zip(archive, &mut gathered, &pack)?,
            _ => self.gather_tar(archive, kind, &mut gathered, &pack)?,
        }
        self.finish_pack(pack)?;
        let tree = select(gathered, subdir)
            .map_err(|reason| StoreError::Unsupported { path: archive.to_path_buf(), reason })?;
        let digest = self.put_tree(&tree)?;
        self.write_record("sources", key, &digest)?;
        Ok(digest)
    }

    /// Stores the next `size` bytes of `content` as a blob.
    fn put_entry(
        &self,
        content: &mut dyn Read,
        size: u64,
        archive: &Path,
        pack: &PackWriter,
    ) -> Result<EntryKind, StoreError> {
        if size <= IN_MEMORY {
            let mut bytes = Vec::with_capacity(size as usize);
            content.read_to_end(&mut bytes).map_err(io_error(archive))?;
            let size = bytes.len() as u64;
            return Ok(EntryKind::File { digest: self.put_packed(&bytes, pack)?, size });
        }
        let mut temporary = self.temporary()?;
        io::copy(content, &mut temporary).map_err(io_error(archive))?;
        temporary.flush().map_err(io_error(archive))?;
        let (digest, size) = self.put_file(temporary.path())?;
        Ok(EntryKind::File { digest, size })
    }

    fn gather_tar(
        &self,
        archive: &Path,
        kind: ArchiveKind,
        gathered: &mut Gathered,
        pack: &PackWriter,
    ) -> Result<(), StoreError> {
        let file =
            BufReader::with_capacity(1 << 20, File::open(archive).map_err(io_error(archive))?);
        let reader: Box<dyn Read> = match kind {
            ArchiveKind::TarGz => Box::new(flate2::read::MultiGzDecoder::new(file)),
            ArchiveKind::TarZst => {
                Box::new(zstd::Decoder::with_buffer(file).map_err(io_error(archive))?)
            }
            _ => Box::new(file),
        };
        let mut tar = tar::Archive::new(reader);
        for entry in tar.entries().map_err(io_error(archive))? {
            let mut entry = entry.map_err(io_error(archive))?;
            let path = normalise(&entry.path_bytes());
            let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
            let kind = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.size();
                    self.put_entry(&mut entry, size, archive, pack)?
                }
                tar::EntryType::Directory => EntryKind::Directory,
                tar::EntryType::Symlink => EntryKind::Symlink {
                    target: entry
                        .link_name_bytes()
                        .map(|name| name.into_owned())
                        .unwrap_or_default(),
                },
                tar::EntryType::Link => {
                    let target = normalise(
                        &entry.link_name_bytes().map(|n| n.into_owned()).unwrap_or_default(),
                    );
                    match gathered.get(&target) {
                        Some((_, kind @ EntryKind::File { .. })) => kind.clone(),
                        _ => {
                            return Err(unsupported(
                                archive,
                                &path,
                                "is a hard link to a file the archive does not hold before it",
                            ));
                        }
                    }
                }
                // Extended headers are read by the tar crate itself.
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
                _ => {
                    return Err(unsupported(
                        archive,
                        &path,
                        "is a device, FIFO or other special file; only files, folders and links \
                         are unpacked",
                    ));
                }
            };
            gathered.insert(path, (mode, kind));
        }
        Ok(())
    }

    fn gather_zip(
        &self,
        archive: &Path,
        gathered: &mut Gathered,
        pack: &PackWriter,
    ) -> Result<(), StoreError> {
        let file = File::open(archive).map_err(io_error(archive))?;
        let zip_error = |error: zip::result::ZipError| StoreError::Unsupported {
            path: archive.to_path_buf(),
            reason: format!("is not a readable zip archive: {error}"),
        };
        let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(zip_error)?;
        for index in 0..zip.len() {
            let mut entry = zip.by_index(index).map_err(zip_error)?;
            let path = normalise(entry.name_raw());
            let mode = entry.unix_mode().map_or(0o644, |mode| mode & 0o777);
            let kind = if entry.is_dir() {
                EntryKind::Directory
            } else if entry.is_symlink() {
                let mut target = Vec::new();
                entry.read_to_end(&mut target).map_err(io_error(archive))?;
                EntryKind::Symlink { target }
            } else {
                let size = entry.size();
                self.put_entry(&mut entry, size, archive, pack)?
            };
            let mode = if kind == EntryKind::Directory && mode == 0o644 { 0o755 } else { mode };
            gathered.insert(path, (mode, kind));
        }
        Ok(())
    }
}

fn unsupported(archive: &Path, entry: &[u8], reason: &str) -> StoreError {
    StoreError::Unsupported {
        path: archive.to_path_buf(),
        reason: format!("its entry {:?} {reason}", String::from_utf8_lossy(entry)),
    }
}

/// An archive path without its leading `./` and trailing `/`; `.` and `./` become the root.
fn normalise(path: &[u8]) -> Vec<u8> {
    let mut path = path;
    while let Some(rest) = path.strip_prefix(b"./") {
        path = rest;
    }
    while let Some(rest) = path.strip_suffix(b"/") {
        path = rest;
    }
    if path == b"." { Vec::new() } else { path.to_vec() }
}

/// The tree of the gathered entries below `subdir` (all of them when `None`), with the folders
/// they imply. Paths are checked later, by [`Tree::check_paths`].
fn select(gathered: Gathered, subdir: Option<&str>) -> Result<Tree, String> {
    let mut entries: BTreeMap<Vec<u8>, (u32, EntryKind)> = BTreeMap::new();
    let mut found_subdir = subdir.is_none();
    for (path, (mode, kind)) in gathered {
        let path = match subdir {
            None => path,
            Some(dir) if path == dir.as_bytes() => {
                found_subdir = true;
                entries.insert(Vec::new(), (mode, kind));
                continue;
            }
            Some(dir) => match path.strip_prefix(dir.as_bytes()) {
                Some(rest) if rest.first() == Some(&b'/') => {
                    found_subdir = true;
                    rest[1..].to_vec()
                }
                _ => continue,
            },
        };
        // The folders above the entry, when the archive does not list them itself.
        for (at, _) in path.iter().enumerate().filter(|(_, byte)| **byte == b'/') {
            entries.entry(path[..at].to_vec()).or_insert((0o755, EntryKind::Directory));
        }
        entries.insert(path, (mode, kind));
    }
    if !found_subdir {
        return Err(format!(
            "has no folder {:?} (data.*.subdir); list it with `tar -tf` or `unzip -l`",
            subdir.unwrap_or_default()
        ));
    }
    let root = entries.remove(&Vec::new()).filter(|(_, kind)| *kind == EntryKind::Directory);
    let mut tree = vec![Entry {
        path: Vec::new(),
        mode: root.map_or(0o755, |(mode, _)| mode),
        kind: EntryKind::Directory,
    }];
    tree.extend(entries.into_iter().map(|(path, (mode, kind))| Entry { path, mode, kind }));
    Ok(Tree { entries: tree })
}
