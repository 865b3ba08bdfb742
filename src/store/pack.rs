//! Packs: the small blobs of one save, written back to back into one file, so that saving ten
//! thousand small files creates a few files in the store rather than ten thousand (creating a
//! file costs far more than writing a few hundred bytes to one).
//!
//! ```text
//! packs/<sha256>.pack   the stored bytes of each blob (a zstd frame, or raw), back to back;
//!                       named by the sha256 of the whole file
//! packs/<sha256>.idx    "modelci-pack-v1\0", u64 count, then per blob, sorted by digest:
//!                       32-byte sha256 of the blob's bytes, u64 offset, u64 stored length,
//!                       u64 size, u8 1 when compressed
//! ```
//!
//! A pack is renamed into place before its index, so an index never names a pack that is not
//! there; a pack without an index (a killed writer) holds nothing the store knows of and is
//! removed by `gc`. Blobs in a pack are verified on every read like loose ones; a pack found
//! corrupt is removed whole.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};
use tempfile::NamedTempFile;

use super::{Digest, Store, StoreError, compress, io_error};

const MAGIC: &[u8] = b"modelci-pack-v1\0";
const RECORD: usize = 32 + 8 + 8 + 8 + 1;
/// A pack is closed and a new one begun past this many stored bytes.
const PACK_LIMIT: u64 = 256 << 20;

/// Where a packed blob lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Packed {
    pub pack: PathBuf,
    pub offset: u64,
    pub stored: u64,
    pub size: u64,
    pub compressed: bool,
}

/// A pack's path and the blobs its index lists.
pub(super) type PackContents = (PathBuf, Vec<(Digest, Packed)>);

/// Every packed blob of the store, by digest; loaded on first use.
pub(super) type PackIndex = HashMap<Digest, Packed>;

#[derive(Debug, Clone, Copy)]
struct Record {
    digest: Digest,
    offset: u64,
    stored: u64,
    size: u64,
    compressed: bool,
}

#[derive(Debug)]
struct OpenPack {
    file: NamedTempFile,
    hasher: Sha256,
    offset: u64,
    records: Vec<Record>,
}

/// Collects the small blobs of one operation into packs; shared by the threads of a save.
/// [`Store::finish_pack`] publishes what is left open.
#[derive(Debug, Default)]
pub(super) struct PackWriter {
    open: Mutex<(Option<OpenPack>, HashSet<Digest>)>,
}

fn encode(records: &mut [Record]) -> Vec<u8> {
    records.sort_by_key(|record| record.digest);
    let mut bytes = Vec::with_capacity(MAGIC.len() + 8 + records.len() * RECORD);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(records.len() as u64).to_le_bytes());
    for record in records.iter() {
        bytes.extend_from_slice(&record.digest.0);
        for value in [record.offset, record.stored, record.size] {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes.push(u8::from(record.compressed));
    }
    bytes
}

fn decode(bytes: &[u8]) -> Option<Vec<Record>> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let count = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
    let rest = &rest[8..];
    if rest.len() != count.checked_mul(RECORD)? {
        return None;
    }
    let number = |chunk: &[u8], at: usize| {
        u64::from_le_bytes(chunk[at..at + 8].try_into().unwrap_or_default())
    };
    rest.chunks_exact(RECORD)
        .map(|chunk| {
            Some(Record {
                digest: Digest(chunk[..32].try_into().ok()?),
                offset: number(chunk, 32),
                stored: number(chunk, 40),
                size: number(chunk, 48),
                compressed: match chunk[56] {
                    0 => false,
                    1 => true,
                    _ => return None,
                },
            })
        })
        .collect()
}

impl Store {
    fn packs_folder(&self) -> PathBuf {
        self.layout().join("packs")
    }

    /// Every pack with a readable index: its path and its records. Unreadable indexes are
    /// returned apart, for `verify`.
    pub(super) fn pack_files(&self) -> (Vec<PackContents>, Vec<PathBuf>) {
        let mut packs = Vec::new();
        let mut unreadable = Vec::new();
        for entry in std::fs::read_dir(self.packs_folder()).into_iter().flatten().flatten() {
            let index = entry.path();
            if index.extension().is_none_or(|ending| ending != "idx") {
                continue;
            }
            let pack = index.with_extension("pack");
            match std::fs::read(&index).ok().and_then(|bytes| decode(&bytes)) {
                Some(records) => {
                    let blobs = records
                        .iter()
                        .map(|record| (record.digest, packed(&pack, record)))
                        .collect();
                    packs.push((pack, blobs));
                }
                None => unreadable.push(index),
            }
        }
        (packs, unreadable)
    }

    /// The packed blob `digest`, loading the indexes of every pack on first use.
    pub(super) fn find_packed(&self, digest: &Digest) -> Option<Packed> {
        let mut index = self.packs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = index.get_or_insert_with(|| self.load_pack_index());
        index.get(digest).cloned()
    }

    fn load_pack_index(&self) -> PackIndex {
        let mut index = PackIndex::new();
        for entry in std::fs::read_dir(self.packs_folder()).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|ending| ending != "idx") {
                continue;
            }
            let Some(records) = std::fs::read(&path).ok().and_then(|bytes| decode(&bytes)) else {
                continue;
            };
            let pack = path.with_extension("pack");
            for record in records {
                index.insert(record.digest, packed(&pack, &record));
            }
        }
        index
    }

    /// Forgets the loaded pack indexes; the next lookup reads them again.
    pub(super) fn reload_packs(&self) {
        *self.packs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    /// Removes a pack and its index, after a blob in it was found corrupt.
    pub(super) fn remove_pack(&self, pack: &std::path::Path) {
        let _ = std::fs::remove_file(pack.with_extension("idx"));
        let _ = std::fs::remove_file(pack);
        self.reload_packs();
    }

    /// Stores `bytes` in the open pack of `writer` unless the store already has them.
    pub(super) fn put_packed(
        &self,
        bytes: &[u8],
        writer: &PackWriter,
    ) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        if self.find_blob(&digest).is_some() {
            return Ok(digest);
        }
        let compressed = compress(bytes, self.level).map_err(io_error(&self.root))?;
        let (content, is_compressed) = match &compressed {
            Some(compressed) if compressed.len() < bytes.len() => (&compressed[..], true),
            _ => (bytes, false),
        };

        let mut guard = writer.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (open, seen) = &mut *guard;
        if !seen.insert(digest) {
            return Ok(digest);
        }
        if open.is_none() {
            *open = Some(OpenPack {
                file: self.temporary()?,
                hasher: Sha256::new(),
                offset: 0,
                records: Vec::new(),
            });
        }
        let Some(pack) = open.as_mut() else { unreachable!("opened just above") };
        pack.file.write_all(content).map_err(io_error(pack.file.path()))?;
        pack.hasher.update(content);
        pack.records.push(Record {
            digest,
            offset: pack.offset,
            stored: content.len() as u64,
            size: bytes.len() as u64,
            compressed: is_compressed,
        });
        pack.offset += content.len() as u64;
        if pack.offset >= PACK_LIMIT
            && let Some(full) = open.take()
        {
            self.publish_pack(full)?;
        }
        Ok(digest)
    }

    /// Publishes the pack `writer` still has open, if any.
    pub(super) fn finish_pack(&self, writer: PackWriter) -> Result<(), StoreError> {
        let (open, _) = writer.open.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        match open {
            Some(pack) => self.publish_pack(pack),
            None => Ok(()),
        }
    }

    fn publish_pack(&self, mut pack: OpenPack) -> Result<(), StoreError> {
        pack.file.flush().map_err(io_error(pack.file.path()))?;
        let name = Digest(pack.hasher.finalize().into()).hex();
        let folder = self.packs_folder();
        let destination = folder.join(format!("{name}.pack"));
        self.publish(pack.file, &destination)?;
        let index_bytes = encode(&mut pack.records);
        let mut index = self.temporary()?;
        index.write_all(&index_bytes).map_err(io_error(index.path()))?;
        self.publish(index, &destination.with_extension("idx"))?;

        let mut loaded = self.packs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(loaded) = loaded.as_mut() {
            for record in &pack.records {
                loaded.insert(record.digest, packed(&destination, record));
            }
        }
        Ok(())
    }

    /// Writes a pack holding only the `keep` blobs of `pack` (copied as they are stored, not
    /// recompressed), then removes the old one. Used by `gc`.
    pub(super) fn repack(
        &self,
        pack: &std::path::Path,
        keep: &[(Digest, Packed)],
    ) -> Result<(), StoreError> {
        use std::io::{Read, Seek, SeekFrom};

        let writer = PackWriter::default();
        let mut source = std::fs::File::open(pack).map_err(io_error(pack))?;
        {
            let mut guard = writer.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut fresh = OpenPack {
                file: self.temporary()?,
                hasher: Sha256::new(),
                offset: 0,
                records: Vec::new(),
            };
            for (digest, blob) in keep {
                let mut content = vec![0u8; blob.stored as usize];
                source.seek(SeekFrom::Start(blob.offset)).map_err(io_error(pack))?;
                source.read_exact(&mut content).map_err(io_error(pack))?;
                fresh.file.write_all(&content).map_err(io_error(fresh.file.path()))?;
                fresh.hasher.update(&content);
                fresh.records.push(Record {
                    digest: *digest,
                    offset: fresh.offset,
                    stored: blob.stored,
                    size: blob.size,
                    compressed: blob.compressed,
                });
                fresh.offset += blob.stored;
            }
            guard.0 = Some(fresh);
        }
        self.finish_pack(writer)?;
        // The copies are durable before the originals go.
        self.sync()?;
        let _ = std::fs::remove_file(pack.with_extension("idx"));
        let _ = std::fs::remove_file(pack);
        Ok(())
    }
}

fn packed(pack: &std::path::Path, record: &Record) -> Packed {
    Packed {
        pack: pack.to_path_buf(),
        offset: record.offset,
        stored: record.stored,
        size: record.size,
        compressed: record.compressed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_decodes_to_what_was_encoded_and_rejects_damage() {
        let mut records = vec![
            Record { digest: Digest([9; 32]), offset: 0, stored: 5, size: 9, compressed: true },
            Record { digest: Digest([1; 32]), offset: 5, stored: 3, size: 3, compressed: false },
        ];
        let bytes = encode(&mut records);
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].digest, Digest([1; 32]), "sorted by digest");
        assert_eq!((decoded[1].offset, decoded[1].stored, decoded[1].size), (0, 5, 9));
        assert!(decoded[1].compressed && !decoded[0].compressed);
        assert!(decode(&bytes[..bytes.len() - 1]).is_none(), "truncated");
        let mut flag = bytes.clone();
        *flag.last_mut().unwrap() = 7;
        assert!(decode(&flag).is_none(), "a flag other than 0 or 1");
        assert!(decode(b"modelci-pack-v2\0").is_none());
    }
}
