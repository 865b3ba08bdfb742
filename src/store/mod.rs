//! The content-addressed store: file trees saved by content hash and restored exactly.
//!
//! ```text
//! <store>/                    .modelci/store, or MODELCI_STORE
//!   v1/                       the layout version: a new layout gets a new folder
//!     blobs/<aa>/<sha256>.zst   a file's bytes, zstd-compressed
//!     blobs/<aa>/<sha256>.raw   ... or stored as they are, when zstd would not shrink them
//!     packs/<sha256>.pack       the small blobs (up to 1 MiB) of one save, back to back, each
//!     packs/<sha256>.idx        compressed or raw as above, and where each one lies (`pack`)
//!     trees/<aa>/<sha256>       a tree manifest, in its canonical encoding; its mtime is
//!                               when it was last saved or restored, for eviction
//!     stat/<sha256>             a stat index per saved folder (see `index`), a cache only
//!     runs/<aa>/<fingerprint>   the digest of the tree holding a finished run's files
//!     sources/<aa>/<key>        the digest of the tree unpacked from a fetched archive; the
//!                               key is over the archive's sha256 and the folder taken from it
//!     tmp/                      temporary files, renamed into place when complete
//!     lock                      shared by saves and restores, held alone by `gc`
//! ```
//!
//! A blob is named by the sha256 of its uncompressed bytes, so identical content is stored once
//! whatever its name. A tree manifest lists every entry — file, directory (empty ones
//! included) or symbolic link — with its path as exact bytes, its mode bits, and its blob
//! digest, size or link target; its canonical encoding (see [`Tree::encode`]) is length-
//! prefixed, so two different trees can never encode alike, and the tree's digest is the
//! sha256 of that encoding. The manifest file holds exactly those bytes, so a manifest, like a
//! blob, can be checked against its own name.
//!
//! Writes go to `tmp/` and are renamed into place; an existing blob or manifest is never
//! rewritten. Blobs are not flushed one by one: a save flushes the whole file system once
//! (`syncfs`) after its last blob and before its manifest, which is itself flushed before its
//! rename, so a manifest never names a blob that a power cut could lose. A killed writer
//! leaves at worst stray files in `tmp/` and blobs no manifest names, both removed by `gc`.
//!
//! Every read is verified: a blob whose bytes do not match its name is reported and removed,
//! never written into a user's tree. Symbolic links are stored as links and never followed,
//! so a link cycle is stored as it is; a link that leads out of the tree is refused.

mod archive;
mod index;
mod pack;
mod runs;
mod tree;

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

use index::StatIndex;
use pack::{PackIndex, PackWriter, Packed};

pub use archive::{ArchiveKind, source_key};
pub use index::Stat;
pub use runs::{Fingerprint, NamedFile};
pub use tree::{Entry, EntryKind, Listing, ReadBlob, Tree, TreeError};

/// The zstd level used when none is given: fast, and most of the gain.
pub const DEFAULT_LEVEL: i32 = 3;

/// Files up to this size are read whole; larger ones stream.
const SMALL_FILE: u64 = 1 << 20;

/// The folder layout version, part of every path in the store.
pub const LAYOUT: &str = "v1";

/// A sha256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    pub fn parse(text: &str) -> Option<Digest> {
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
        }
        Some(Digest(bytes))
    }
}

/// A digest serialises as its hex string, as it is printed.
impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.hex())
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("the store has no tree {0}\nhint: `modelci store save` prints the digests it stores")]
    NoTree(Digest),
    #[error("blob {digest} is missing from the store (needed for {path})")]
    MissingBlob { digest: Digest, path: String },
    #[error(
        "blob {digest} is corrupt: its content hashes to {actual}; it was removed from the store"
    )]
    CorruptBlob { digest: Digest, actual: Digest },
    #[error("blob {digest} is corrupt: {cause}; it was removed from the store")]
    UnreadableBlob { digest: Digest, cause: io::Error },
    #[error("tree manifest {digest} is corrupt: its content hashes to {actual}")]
    CorruptTree { digest: Digest, actual: Digest },
    #[error("{}: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },
}

/// A large read buffer: `io::copy` reads straight into it, so big files move in 1 MiB steps.
fn buffered(file: File) -> BufReader<File> {
    BufReader::with_capacity(1 << 20, file)
}

/// The sha256 and size of the file at `path`, streaming in constant memory; the sha2 crate
/// uses the CPU's SHA instructions where there are any.
pub fn hash_file(path: &Path) -> Result<(Digest, u64), StoreError> {
    let mut source = buffered(File::open(path).map_err(io_error(path))?);
    let mut hashing = HashingWriter::new(io::sink());
    let size = io::copy(&mut source, &mut hashing).map_err(io_error(path))?;
    Ok((hashing.finish().1, size))
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |cause| StoreError::Io { path: path.to_path_buf(), cause }
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new() }
    }

    fn finish(self) -> (W, Digest) {
        (self.inner, Digest(self.hasher.finalize().into()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Compresses `bytes` with this thread's zstd context; `None` for empty input.
fn compress(bytes: &[u8], level: i32) -> io::Result<Option<Vec<u8>>> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    COMPRESSOR.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(cached, _)| *cached != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, compressor) = slot.as_mut().expect("set just above");
        compressor.compress(bytes).map(Some)
    })
}

#[derive(Debug, Clone, Copy)]
enum Lock {
    Shared,
    Exclusive,
}

/// What [`Store::save`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    pub digest: Digest,
    /// Regular files in the tree.
    pub files: usize,
    /// Files read and hashed; the rest were known unchanged from the stat index.
    pub hashed: usize,
}

/// What [`Store::gc`] did. Sizes are bytes on disk, blobs and manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub before: u64,
    pub after: u64,
    pub removed_trees: usize,
    pub removed_blobs: usize,
}

#[derive(Debug)]
struct StoredFile {
    digest: Digest,
    path: PathBuf,
    size: u64,
    used: std::time::SystemTime,
}

/// A store on disk.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// zstd level for new blobs.
    level: i32,
    /// The packed blobs, read from the pack indexes on first use.
    packs: std::sync::Arc<std::sync::Mutex<Option<PackIndex>>>,
}

/// Where a blob's bytes are.
#[derive(Debug, Clone)]
enum Location {
    /// A file of its own, and whether it is compressed.
    Loose(PathBuf, bool),
    Packed(Packed),
}

/// What [`Store::verify`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verification {
    pub blobs: usize,
    pub trees: usize,
    /// Problems, one line each; empty when the store is sound.
    pub problems: Vec<String>,
}

impl Store {
    /// Opens (creating when needed) the store at `root`.
    pub fn open(root: &Path, level: i32) -> Result<Store, StoreError> {
        let store = Store { root: root.to_path_buf(), level, packs: Default::default() };
        let folders = ["blobs", "packs", "trees", "stat", "tmp"];
        for folder in folders.into_iter().chain(runs::RECORD_FOLDERS) {
            let path = store.layout().join(folder);
            std::fs::create_dir_all(&path).map_err(io_error(&path))?;
        }
        Ok(store)
    }

    fn layout(&self) -> PathBuf {
        self.root.join(LAYOUT)
    }

    fn blob_path(&self, digest: &Digest, suffix: &str) -> PathBuf {
        let hex = digest.hex();
        self.layout().join("blobs").join(&hex[..2]).join(format!("{hex}.{suffix}"))
    }

    /// Where downloads wait before they are imported: the store's own temporary folder, on the
    /// same file system as the blobs.
    pub fn scratch_dir(&self) -> PathBuf {
        self.layout().join("tmp")
    }

    /// Whether the manifest of tree `digest` is in the store (its blobs are checked on
    /// restore).
    pub fn has_tree(&self, digest: &Digest) -> bool {
        self.tree_path(digest).is_file()
    }

    fn tree_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.layout().join("trees").join(&hex[..2]).join(hex)
    }

    /// Where the blob `digest` is stored: packs first (a lookup in memory), then loose files.
    fn find_blob(&self, digest: &Digest) -> Option<Location> {
        if let Some(packed) = self.find_packed(digest) {
            return Some(Location::Packed(packed));
        }
        let compressed = self.blob_path(digest, "zst");
        if compressed.is_file() {
            return Some(Location::Loose(compressed, true));
        }
        let raw = self.blob_path(digest, "raw");
        raw.is_file().then_some(Location::Loose(raw, false))
    }

    /// Moves a finished temporary file to `destination`, unless something is already there:
    /// an existing blob or manifest is never rewritten. Not flushed: see [`Store::sync`].
    fn publish(&self, temporary: NamedTempFile, destination: &Path) -> Result<(), StoreError> {
        // The shard folder is made only when the first rename into it finds it missing: one
        // `mkdir` per shard rather than one per blob.
        let temporary = match temporary.persist_noclobber(destination) {
            Ok(_) => return Ok(()),
            Err(error) if error.error.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(error) if error.error.kind() == io::ErrorKind::NotFound => error.file,
            Err(error) => {
                return Err(StoreError::Io { path: destination.to_path_buf(), cause: error.error });
            }
        };
        let parent = destination.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        match temporary.persist_noclobber(destination) {
            Ok(_) => Ok(()),
            Err(error) if error.error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(error) => {
                Err(StoreError::Io { path: destination.to_path_buf(), cause: error.error })
            }
        }
    }

    /// [`Store::publish`], flushing the file first.
    fn publish_durably(
        &self,
        temporary: NamedTempFile,
        destination: &Path,
    ) -> Result<(), StoreError> {
        temporary.as_file().sync_all().map_err(io_error(destination))?;
        self.publish(temporary, destination)
    }

    /// Moves a temporary file over `destination`, for files that are caches, not content.
    fn publish_replacing(
        &self,
        temporary: NamedTempFile,
        destination: &Path,
    ) -> Result<(), StoreError> {
        let parent = destination.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        temporary
            .persist(destination)
            .map(|_| ())
            .map_err(|error| StoreError::Io { path: destination.to_path_buf(), cause: error.error })
    }

    /// Flushes everything written to the store's file system.
    fn sync(&self) -> Result<(), StoreError> {
        let layout = self.layout();
        let folder = File::open(&layout).map_err(io_error(&layout))?;
        rustix::fs::syncfs(&folder).map_err(|errno| StoreError::Io {
            path: layout.clone(),
            cause: io::Error::from_raw_os_error(errno.raw_os_error()),
        })
    }

    /// Takes the store's lock: saves and restores share it, garbage collection holds it alone.
    /// Released when the returned file is dropped.
    fn lock(&self, kind: Lock) -> Result<File, StoreError> {
        let path = self.layout().join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        match kind {
            Lock::Shared => file.lock_shared(),
            Lock::Exclusive => file.lock(),
        }
        .map_err(io_error(&path))?;
        Ok(file)
    }

    /// The time as the file system's clock gives it, which may lag the system clock by a tick:
    /// the modification time of a file created now.
    fn file_system_now(&self) -> Result<i64, StoreError> {
        let probe = self.temporary()?;
        let metadata = probe.as_file().metadata().map_err(io_error(probe.path()))?;
        Ok(Stat::of(&metadata).mtime_ns)
    }

    fn stat_index_path(&self, absolute_root: &Path) -> PathBuf {
        let name = Digest::of(absolute_root.as_os_str().as_encoded_bytes());
        self.layout().join("stat").join(name.hex())
    }

    /// Marks a tree as just used, for least-recently-used eviction.
    fn touch_tree(&self, digest: &Digest) {
        let path = self.tree_path(digest);
        if let Ok(file) = File::options().write(true).open(&path) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
    }

    fn temporary(&self) -> Result<NamedTempFile, StoreError> {
        let folder = self.layout().join("tmp");
        NamedTempFile::new_in(&folder).map_err(io_error(&folder))
    }

    /// Stores the file at `path` unless its content is already there; returns its digest and
    /// size.
    pub fn put_file(&self, path: &Path) -> Result<(Digest, u64), StoreError> {
        let size = std::fs::metadata(path).map_err(io_error(path))?.len();
        self.put(path, size, None)
    }

    /// [`Store::put_file`] for a file `lstat` said has `size` bytes; returns the size read.
    /// Small files go into `pack` when there is one, as loose blobs otherwise.
    fn put(
        &self,
        path: &Path,
        size: u64,
        pack: Option<&PackWriter>,
    ) -> Result<(Digest, u64), StoreError> {
        if size <= SMALL_FILE { self.put_small(path, pack) } else { self.put_streaming(path) }
    }

    /// Small files are read whole and compressed with a per-thread zstd context: no
    /// per-file encoder set-up, and no second read when they turn out incompressible.
    fn put_small(
        &self,
        path: &Path,
        pack: Option<&PackWriter>,
    ) -> Result<(Digest, u64), StoreError> {
        let bytes = std::fs::read(path).map_err(io_error(path))?;
        let digest = match pack {
            Some(pack) => self.put_packed(&bytes, pack)?,
            None => self.put_bytes(&bytes)?,
        };
        Ok((digest, bytes.len() as u64))
    }

    /// Stores `bytes` as a blob unless they are already there; returns their digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        if self.find_blob(&digest).is_none() {
            let compressed = compress(bytes, self.level).map_err(io_error(&self.root))?;
            let (content, suffix) = match &compressed {
                Some(compressed) if compressed.len() < bytes.len() => (&compressed[..], "zst"),
                _ => (bytes, "raw"),
            };
            let mut temporary = self.temporary()?;
            temporary.write_all(content).map_err(io_error(temporary.path()))?;
            self.publish(temporary, &self.blob_path(&digest, suffix))?;
        }
        Ok(digest)
    }

    /// Large files stream through the hasher and the encoder in constant memory.
    fn put_streaming(&self, path: &Path) -> Result<(Digest, u64), StoreError> {
        let mut source = buffered(File::open(path).map_err(io_error(path))?);
        let temporary = self.temporary()?;
        let encoder = zstd::Encoder::new(temporary, self.level).map_err(io_error(path))?;
        let mut hashing = HashingWriter::new(encoder);
        let size = io::copy(&mut source, &mut hashing).map_err(io_error(path))?;
        let (encoder, digest) = hashing.finish();
        let temporary = encoder.finish().map_err(io_error(path))?;
        if self.find_blob(&digest).is_some() {
            return Ok((digest, size));
        }
        let compressed = temporary.as_file().metadata().map_err(io_error(path))?.len();
        if compressed < size {
            self.publish(temporary, &self.blob_path(&digest, "zst"))?;
            return Ok((digest, size));
        }
        // Incompressible: keep the bytes as they are, hashing them again on the way in so
        // that a file changed since the first read is not stored under a stale name.
        let mut raw = self.temporary()?;
        let mut source = buffered(File::open(path).map_err(io_error(path))?);
        let mut hashing = HashingWriter::new(raw.as_file_mut());
        io::copy(&mut source, &mut hashing).map_err(io_error(path))?;
        if hashing.finish().1 != digest {
            return Err(StoreError::Unsupported {
                path: path.to_path_buf(),
                reason: "the file changed while it was being saved; save again".into(),
            });
        }
        self.publish(raw, &self.blob_path(&digest, "raw"))?;
        Ok((digest, size))
    }

    /// Copies the blob `digest` into `out`, verifying it; a corrupt blob is removed.
    pub fn read_blob(
        &self,
        digest: &Digest,
        out: &mut dyn Write,
        entry: &str,
    ) -> Result<u64, StoreError> {
        use std::io::{Seek, SeekFrom};

        let Some(location) = self.find_blob(digest) else {
            return Err(StoreError::MissingBlob { digest: *digest, path: entry.to_string() });
        };
        let (path, stored, compressed): (PathBuf, Box<dyn Read>, bool) = match &location {
            Location::Loose(path, compressed) => {
                let file = File::open(path).map_err(io_error(path))?;
                (path.clone(), Box::new(file), *compressed)
            }
            Location::Packed(packed) => {
                let mut file = match File::open(&packed.pack) {
                    Ok(file) => file,
                    // An index whose pack is gone lists nothing the store has.
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {
                        self.remove_blob(&location);
                        let path = entry.to_string();
                        return Err(StoreError::MissingBlob { digest: *digest, path });
                    }
                    Err(cause) => return Err(StoreError::Io { path: packed.pack.clone(), cause }),
                };
                file.seek(SeekFrom::Start(packed.offset)).map_err(io_error(&packed.pack))?;
                (packed.pack.clone(), Box::new(file.take(packed.stored)), packed.compressed)
            }
        };
        let mut reader: Box<dyn Read> = if compressed {
            Box::new(zstd::Decoder::new(stored).map_err(io_error(&path))?)
        } else {
            Box::new(BufReader::new(stored))
        };
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let read = match reader.read(&mut buffer) {
                Ok(read) => read,
                // A truncated or garbled zstd stream: as corrupt as a wrong hash.
                Err(cause) => {
                    self.remove_blob(&location);
                    return Err(StoreError::UnreadableBlob { digest: *digest, cause });
                }
            };
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            out.write_all(&buffer[..read]).map_err(io_error(&path))?;
            size += read as u64;
        }
        let actual = Digest(hasher.finalize().into());
        if actual != *digest {
            self.remove_blob(&location);
            return Err(StoreError::CorruptBlob { digest: *digest, actual });
        }
        Ok(size)
    }

    /// Removes a corrupt blob (a packed one takes its whole pack with it), and with it every
    /// stat index: a save trusts an index's digests to name blobs that are in the store, so
    /// whatever removes a blob must forget the indexes (they are a cache; the next save of
    /// each folder hashes it once).
    fn remove_blob(&self, location: &Location) {
        match location {
            Location::Loose(path, _) => {
                let _ = std::fs::remove_file(path);
            }
            Location::Packed(packed) => self.remove_pack(&packed.pack),
        }
        self.forget_stat_indexes();
    }

    fn forget_stat_indexes(&self) {
        let folder = self.layout().join("stat");
        for index in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(index.path());
        }
    }

    /// Saves the tree at `root` and returns its digest. Files are hashed and stored in
    /// parallel; a file whose metadata matches the folder's stat index is not read at all.
    pub fn save(&self, root: &Path) -> Result<Saved, StoreError> {
        let _lock = self.lock(Lock::Shared)?;
        let (encoding, index, saved) = self.hash_tree(root, true)?;
        if saved.hashed == 0 && self.has_tree(&saved.digest) {
            // Nothing changed since the last save: the manifest and the index stand.
            self.touch_tree(&saved.digest);
            return Ok(saved);
        }
        let index_path = self.stat_index_path(&std::path::absolute(root).map_err(io_error(root))?);

        // Blobs were renamed into place without a flush each; one sync of the file system
        // makes them all durable before the manifest that names them exists.
        self.sync()?;
        let mut temporary = self.temporary()?;
        temporary.write_all(&encoding).map_err(io_error(root))?;
        self.publish_durably(temporary, &self.tree_path(&saved.digest))?;
        self.touch_tree(&saved.digest);

        // The index is only a shortcut: failing to write it costs time next save, not data.
        let mut temporary = self.temporary()?;
        if temporary.write_all(&index.encode()).is_ok() {
            let _ = self.publish_replacing(temporary, &index_path);
        }
        Ok(saved)
    }

    /// The digest `save` would give the tree at `root`, with nothing written to the store
    /// (files the stat index knows are not read).
    pub fn digest_of(&self, root: &Path) -> Result<Digest, StoreError> {
        Ok(self.hash_tree(root, false)?.2.digest)
    }

    /// Scans and hashes the tree at `root`, in parallel over files, storing each file's blob
    /// when `store_blobs` is set. Returns the manifest's encoding and the new stat index.
    fn hash_tree(
        &self,
        root: &Path,
        store_blobs: bool,
    ) -> Result<(Vec<u8>, StatIndex, Saved), StoreError> {
        use rayon::prelude::*;

        let absolute = std::path::absolute(root).map_err(io_error(root))?;
        let index_path = self.stat_index_path(&absolute);
        let previous = StatIndex::decode(&std::fs::read(&index_path).unwrap_or_default());
        let started = self.file_system_now()?;

        let listing = Tree::scan(root)?;
        let pack = PackWriter::default();
        let stored: Vec<(Digest, u64, bool)> = listing
            .files
            .par_iter()
            .map(|file| {
                // An index's digests name blobs in the store: whatever removes a blob also
                // forgets the indexes (see `remove_blob_file`), so they need no check here.
                match previous.lookup(file.relative(&listing), &file.stat) {
                    Some(digest) => Ok((digest, file.stat.size, false)),
                    None if store_blobs => {
                        let (digest, size) = self.put(&file.path, file.stat.size, Some(&pack))?;
                        Ok((digest, size, true))
                    }
                    None => {
                        let (digest, size) = hash_file(&file.path)?;
                        Ok((digest, size, true))
                    }
                }
            })
            .collect::<Result<_, StoreError>>()?;
        self.finish_pack(pack)?;

        let mut index = StatIndex::new(started);
        for (file, (digest, _, _)) in listing.files.iter().zip(&stored) {
            index.insert(file.relative(&listing).to_vec(), file.stat, *digest);
        }
        let hashed = stored.iter().filter(|(_, _, hashed)| *hashed).count();
        let files = stored.len();
        let pairs: Vec<(Digest, u64)> = stored.iter().map(|(d, s, _)| (*d, *s)).collect();
        let encoding = listing.finish(&pairs).encode();
        let digest = Digest::of(&encoding);
        Ok((encoding, index, Saved { digest, files, hashed }))
    }

    /// Reads and checks the manifest of tree `digest`.
    pub fn tree(&self, digest: &Digest) -> Result<Tree, StoreError> {
        let path = self.tree_path(digest);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NoTree(*digest));
            }
            Err(cause) => return Err(StoreError::Io { path, cause }),
        };
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(StoreError::CorruptTree { digest: *digest, actual });
        }
        Ok(Tree::decode(&bytes)?)
    }

    /// Materialises tree `digest` at `target`, replacing what is there. The tree is built in a
    /// temporary sibling and swapped in only when complete and verified; every entry's path is
    /// checked before anything is written.
    pub fn restore(&self, digest: &Digest, target: &Path) -> Result<(), StoreError> {
        let _lock = self.lock(Lock::Shared)?;
        let tree = self.tree(digest)?;
        tree.check_paths()?;
        let parent =
            target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        let staging = tempfile::Builder::new()
            .prefix(".modelci-restore-")
            .tempdir_in(parent)
            .map_err(io_error(parent))?;
        tree.materialise(staging.path(), &|digest, out, entry| {
            self.read_blob(digest, out, entry).map(|_| ())
        })?;
        // Directory modes were kept writable while building; set them now, deepest first.
        tree.finish_directory_modes(staging.path())?;
        let staged = File::open(staging.path()).map_err(io_error(staging.path()))?;
        rustix::fs::syncfs(&staged).map_err(|errno| StoreError::Io {
            path: staging.path().to_path_buf(),
            cause: io::Error::from_raw_os_error(errno.raw_os_error()),
        })?;

        // Swap: the old tree moves aside, the new one takes its name, the old one is removed.
        let trash = tempfile::Builder::new()
            .prefix(".modelci-old-")
            .tempdir_in(parent)
            .map_err(io_error(parent))?;
        let had_target = std::fs::symlink_metadata(target).is_ok();
        if had_target {
            std::fs::rename(target, trash.path().join("old")).map_err(io_error(target))?;
        }
        if let Err(cause) = std::fs::rename(staging.path(), target) {
            if had_target {
                let _ = std::fs::rename(trash.path().join("old"), target);
            }
            return Err(StoreError::Io { path: target.to_path_buf(), cause });
        }
        // The staging folder now lives on as `target`; only forget it.
        let _ = staging.keep();
        make_removable(&trash.path().join("old"));
        self.touch_tree(digest);
        Ok(())
    }

    /// Every stored file below `folder` (`blobs` or `trees`), with its digest, size on disk
    /// and modification time.
    fn stored_files(&self, folder: &str) -> Result<Vec<StoredFile>, StoreError> {
        let base = self.layout().join(folder);
        let mut files = Vec::new();
        for shard in std::fs::read_dir(&base).map_err(io_error(&base))? {
            let shard = shard.map_err(io_error(&base))?.path();
            for file in std::fs::read_dir(&shard).map_err(io_error(&shard))? {
                let path = file.map_err(io_error(&shard))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let Some(digest) = Digest::parse(name.split('.').next().unwrap_or("")) else {
                    continue;
                };
                let metadata = std::fs::metadata(&path).map_err(io_error(&path))?;
                let used = metadata.modified().unwrap_or(std::time::UNIX_EPOCH);
                files.push(StoredFile { digest, path, size: metadata.len(), used });
            }
        }
        Ok(files)
    }

    /// Removes least recently used trees (saved or restored longest ago) until the store fits
    /// in `max_size` bytes, never removing a tree in `keep`; then removes every blob no
    /// remaining tree names, and leftovers of killed writers. Holds the store's lock alone,
    /// so no save or restore runs meanwhile.
    pub fn gc(&self, max_size: u64, keep: &[Digest]) -> Result<Collected, StoreError> {
        let _lock = self.lock(Lock::Exclusive)?;
        let mut trees = self.stored_files("trees")?;
        let blobs = self.stored_files("blobs")?;
        let (packs, unreadable_packs) = self.pack_files();
        let pack_bytes = |pack: &Path| {
            [pack.to_path_buf(), pack.with_extension("idx")]
                .iter()
                .filter_map(|path| std::fs::metadata(path).ok())
                .map(|metadata| metadata.len())
                .sum::<u64>()
        };
        let before = trees.iter().chain(&blobs).map(|file| file.size).sum::<u64>()
            + packs.iter().map(|(pack, _)| pack_bytes(pack)).sum::<u64>();

        // Least recently used first; kept trees go last and stop the eviction loop.
        trees.sort_by_key(|tree| (keep.contains(&tree.digest), tree.used));
        let mut contents = Vec::with_capacity(trees.len());
        for tree in &trees {
            let files: Vec<Digest> = match self.tree(&tree.digest) {
                Ok(manifest) => manifest
                    .entries()
                    .iter()
                    .filter_map(|entry| match entry.kind {
                        EntryKind::File { digest, .. } => Some(digest),
                        _ => None,
                    })
                    .collect(),
                // An unreadable manifest restores nothing: evict it first.
                Err(_) => Vec::new(),
            };
            contents.push(files);
        }
        let packed_sizes = packs.iter().flat_map(|(_, blobs)| blobs).map(|(d, b)| (*d, b.stored));
        let blob_size: std::collections::HashMap<Digest, u64> =
            blobs.iter().map(|blob| (blob.digest, blob.size)).chain(packed_sizes).collect();
        let mut references: std::collections::HashMap<Digest, usize> = Default::default();
        for digest in contents.iter().flatten() {
            *references.entry(*digest).or_default() += 1;
        }
        let mut live: u64 = trees.iter().map(|tree| tree.size).sum::<u64>()
            + references.keys().filter_map(|digest| blob_size.get(digest)).sum::<u64>();

        let mut removed_trees = 0;
        for (tree, files) in trees.iter().zip(&contents) {
            if live <= max_size || keep.contains(&tree.digest) {
                break;
            }
            std::fs::remove_file(&tree.path).map_err(io_error(&tree.path))?;
            removed_trees += 1;
            live -= tree.size;
            for digest in files {
                let count = references.get_mut(digest).expect("counted above");
                *count -= 1;
                if *count == 0 {
                    live -= blob_size.get(digest).copied().unwrap_or(0);
                }
            }
        }
        let mut removed_blobs = 0;
        let referenced = |digest: &Digest| references.get(digest).copied().unwrap_or(0) > 0;
        for blob in &blobs {
            if !referenced(&blob.digest) {
                std::fs::remove_file(&blob.path).map_err(io_error(&blob.path))?;
                removed_blobs += 1;
            }
        }
        // A pack with no live blob goes; one with some is rewritten with only those.
        // A blob kept loose or in an earlier pack is a duplicate (two writers packed it at once).
        let mut placed: std::collections::HashSet<Digest> =
            blobs.iter().map(|blob| blob.digest).filter(|d| referenced(d)).collect();
        for (pack, packed) in &packs {
            let live: Vec<(Digest, Packed)> = packed
                .iter()
                .filter(|(digest, _)| referenced(digest) && placed.insert(*digest))
                .cloned()
                .collect();
            removed_blobs += packed.len() - live.len();
            if live.is_empty() {
                let _ = std::fs::remove_file(pack.with_extension("idx"));
                std::fs::remove_file(pack).map_err(io_error(pack))?;
            } else if live.len() < packed.len() {
                self.repack(pack, &live)?;
            }
        }
        // Packs whose index is unreadable, or that a killed writer left without one, hold
        // nothing the store can use.
        for index in &unreadable_packs {
            let _ = std::fs::remove_file(index);
            let _ = std::fs::remove_file(index.with_extension("pack"));
        }
        let listed: std::collections::HashSet<&Path> =
            packs.iter().map(|(pack, _)| pack.as_path()).collect();
        let folder = self.layout().join("packs");
        for entry in std::fs::read_dir(&folder).map_err(io_error(&folder))?.flatten() {
            let path = entry.path();
            let orphan = path.extension().is_some_and(|ending| ending == "pack")
                && !listed.contains(path.as_path())
                && !path.with_extension("idx").exists();
            if orphan {
                let _ = std::fs::remove_file(&path);
            }
        }
        self.reload_packs();
        if removed_blobs > 0 {
            self.forget_stat_indexes();
        }
        let tmp = self.layout().join("tmp");
        for leftover in std::fs::read_dir(&tmp).map_err(io_error(&tmp))?.flatten() {
            let _ = std::fs::remove_file(leftover.path());
        }
        self.prune_records();
        Ok(Collected { before, after: live, removed_trees, removed_blobs })
    }

    /// Checks every blob and manifest in the store. Corrupt blobs are removed (and reported);
    /// a manifest naming a blob the store lacks is reported.
    pub fn verify(&self) -> Result<Verification, StoreError> {
        let _lock = self.lock(Lock::Shared)?;
        let mut report = Verification::default();
        for blob in self.stored_files("blobs")? {
            report.blobs += 1;
            let name = blob.path.display().to_string();
            if let Err(error) = self.read_blob(&blob.digest, &mut io::sink(), &name) {
                report.problems.push(error.to_string());
            }
        }
        let (packs, unreadable) = self.pack_files();
        for index in unreadable {
            report.problems.push(format!("pack index {} is unreadable", index.display()));
        }
        // Two writers saving the same files at once may each pack them: count blobs once.
        let mut counted = std::collections::HashSet::new();
        for (pack, packed) in packs {
            for (digest, _) in &packed {
                if counted.insert(*digest) {
                    report.blobs += 1;
                }
                let name = pack.display().to_string();
                if let Err(error) = self.read_blob(digest, &mut io::sink(), &name) {
                    report.problems.push(format!("{error} (with the rest of its pack)"));
                    break;
                }
            }
        }
        for tree in self.stored_files("trees")? {
            report.trees += 1;
            let manifest = match self.tree(&tree.digest) {
                Ok(manifest) => manifest,
                Err(error) => {
                    report.problems.push(error.to_string());
                    continue;
                }
            };
            for entry in manifest.entries() {
                if let EntryKind::File { digest, .. } = &entry.kind
                    && self.find_blob(digest).is_none()
                {
                    let missing =
                        StoreError::MissingBlob { digest: *digest, path: entry.display_path() };
                    report.problems.push(format!("tree {}: {missing}", tree.digest));
                }
            }
        }
        Ok(report)
    }
}

/// Gives the owner write access to every folder below `path`, so that a restored tree with
/// read-only folders can be removed when it is replaced.
fn make_removable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(metadata) = std::fs::symlink_metadata(path) else { return };
    if !metadata.is_dir() {
        return;
    }
    let mode = metadata.permissions().mode();
    if mode & 0o700 != 0o700 {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o700));
    }
    if let Ok(children) = std::fs::read_dir(path) {
        for child in children.flatten() {
            make_removable(&child.path());
        }
    }
}

#[cfg(test)]
mod tests;
