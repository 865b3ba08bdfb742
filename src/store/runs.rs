//! Records: a tree found again by a key rather than by its own digest. The run cache keeps a
//! finished run's files under the run's fingerprint (`runs/`); fetched datasets keep their
//! unpacked tree under the archive's digest (`sources/`).

use std::io::Write;

use sha2::{Digest as _, Sha256};

use super::{Digest, Entry, EntryKind, Store, StoreError, Tree, io_error};

/// A file of a cached run: its name and content.
pub type NamedFile = (String, Vec<u8>);

/// Builds a run's fingerprint: sha256 over named fields, each encoded as the name's length
/// (u64, little-endian), the name, the value's length and the value, after a versioned
/// preamble. No two different lists of fields share an encoding, so none share a fingerprint.
pub struct Fingerprint {
    hasher: Sha256,
}

impl Default for Fingerprint {
    fn default() -> Self {
        let mut fingerprint = Fingerprint { hasher: Sha256::new() };
        fingerprint.part(b"modelci.run-fingerprint/v1");
        fingerprint
    }
}

impl Fingerprint {
    fn part(&mut self, bytes: &[u8]) {
        self.hasher.update((bytes.len() as u64).to_le_bytes());
        self.hasher.update(bytes);
    }

    /// Adds the field `name` with `value`; the order of calls matters.
    pub fn field(mut self, name: &str, value: &[u8]) -> Fingerprint {
        self.part(name.as_bytes());
        self.part(value);
        self
    }

    pub fn finish(self) -> Digest {
        Digest(self.hasher.finalize().into())
    }
}

/// The kinds of record, each a folder of the layout.
pub(super) const RECORD_FOLDERS: [&str; 2] = ["runs", "sources"];

impl Store {
    fn record_path(&self, folder: &str, key: &Digest) -> std::path::PathBuf {
        let hex = key.hex();
        self.layout().join(folder).join(&hex[..2]).join(hex)
    }

    /// Stores the manifest of `tree` (whose blobs must be in the store) after checking its
    /// paths; returns its digest.
    pub(super) fn put_tree(&self, tree: &Tree) -> Result<Digest, StoreError> {
        tree.check_paths()?;
        // The blobs the manifest names become durable before the manifest exists.
        self.sync()?;
        let encoding = tree.encode();
        let digest = Digest::of(&encoding);
        let mut temporary = self.temporary()?;
        temporary.write_all(&encoding).map_err(io_error(temporary.path()))?;
        self.publish_durably(temporary, &self.tree_path(&digest))?;
        self.touch_tree(&digest);
        Ok(digest)
    }

    /// Records `tree` under `key` in `folder`, replacing an earlier record.
    pub(super) fn write_record(
        &self,
        folder: &str,
        key: &Digest,
        tree: &Digest,
    ) -> Result<(), StoreError> {
        let mut record = self.temporary()?;
        writeln!(record, "{tree}").map_err(io_error(record.path()))?;
        record.as_file().sync_all().map_err(io_error(record.path()))?;
        self.publish_replacing(record, &self.record_path(folder, key))
    }

    /// The tree recorded under `key` in `folder`, when there is one and its manifest is there.
    pub(super) fn read_record(&self, folder: &str, key: &Digest) -> Option<Digest> {
        let record = std::fs::read_to_string(self.record_path(folder, key)).ok()?;
        Digest::parse(record.trim()).filter(|tree| self.tree_path(tree).is_file())
    }

    /// Stores `files` (name, content) as a flat tree and records it under `fingerprint`,
    /// replacing an earlier record. Returns the tree's digest.
    pub fn record_run(
        &self,
        fingerprint: &Digest,
        files: &[(&str, &[u8])],
    ) -> Result<Digest, StoreError> {
        let _lock = self.lock(super::Lock::Shared)?;
        let mut entries = vec![Entry { path: Vec::new(), mode: 0o755, kind: EntryKind::Directory }];
        for (name, bytes) in files {
            let digest = self.put_bytes(bytes)?;
            let size = bytes.len() as u64;
            entries.push(Entry {
                path: name.as_bytes().to_vec(),
                mode: 0o644,
                kind: EntryKind::File { digest, size },
            });
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let digest = self.put_tree(&Tree { entries })?;
        self.write_record("runs", fingerprint, &digest)?;
        Ok(digest)
    }

    /// The tree recorded for run `fingerprint`, if it is still in the store.
    pub fn run_tree(&self, fingerprint: &Digest) -> Option<Digest> {
        self.read_record("runs", fingerprint)
    }

    /// The files recorded for run `fingerprint`, by name, each verified; `None` when there is
    /// no record or any part of it is gone or damaged (the run is then simply made again).
    pub fn find_run(&self, fingerprint: &Digest) -> Option<(Digest, Vec<NamedFile>)> {
        let _lock = self.lock(super::Lock::Shared).ok()?;
        let digest = self.read_record("runs", fingerprint)?;
        let tree = self.tree(&digest).ok()?;
        let mut files = Vec::new();
        for entry in tree.entries() {
            if let EntryKind::File { digest: blob, .. } = &entry.kind {
                let mut bytes = Vec::new();
                self.read_blob(blob, &mut bytes, &entry.display_path()).ok()?;
                files.push((String::from_utf8(entry.path.clone()).ok()?, bytes));
            }
        }
        self.touch_tree(&digest);
        Some((digest, files))
    }

    /// Removes records whose tree is gone; returns how many.
    pub(super) fn prune_records(&self) -> usize {
        let mut removed = 0;
        for folder in RECORD_FOLDERS {
            let Ok(shards) = std::fs::read_dir(self.layout().join(folder)) else { continue };
            for shard in shards.flatten() {
                for record in std::fs::read_dir(shard.path()).into_iter().flatten().flatten() {
                    let text = std::fs::read_to_string(record.path()).unwrap_or_default();
                    let whole = Digest::parse(text.trim())
                        .is_some_and(|tree| self.tree_path(&tree).is_file());
                    if !whole && std::fs::remove_file(record.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_fields_apart_however_their_bytes_are_split() {
        let of = |fields: &[(&str, &str)]| {
            fields
                .iter()
                .fold(Fingerprint::default(), |print, (name, value)| {
                    print.field(name, value.as_bytes())
                })
                .finish()
        };
        let base = of(&[("seed", "7"), ("lr", "0.1")]);
        assert_eq!(base, of(&[("seed", "7"), ("lr", "0.1")]), "the same fields, the same print");
        assert_ne!(base, of(&[("seed", "8"), ("lr", "0.1")]));
        assert_ne!(base, of(&[("lr", "0.1"), ("seed", "7")]), "order is part of the encoding");
        // Without length prefixes these two would both hash "seed7lr0.1".
        assert_ne!(of(&[("seed7", ""), ("lr0.1", "")]), of(&[("seed", "7lr"), ("0.1", "")]));
        assert_ne!(of(&[]), Digest::of(b""), "the preamble makes prints their own namespace");
    }

    #[test]
    fn a_recorded_run_is_found_by_its_fingerprint_until_its_tree_is_collected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        let fingerprint = Digest::of(b"config and data");
        assert!(store.find_run(&fingerprint).is_none(), "a miss before anything is recorded");

        let files: [(&str, &[u8]); 2] =
            [("metrics.json", b"{\"accuracy\": 0.97}\n"), ("predictions.jsonl", b"{}\n")];
        let tree = store.record_run(&fingerprint, &files).unwrap();
        let (found, contents) = store.find_run(&fingerprint).unwrap();
        assert_eq!(found, tree);
        let expected: Vec<(String, Vec<u8>)> =
            files.iter().map(|(name, bytes)| (name.to_string(), bytes.to_vec())).collect();
        assert_eq!(contents, expected);
        assert!(store.find_run(&Digest::of(b"another config")).is_none());

        store.gc(0, &[]).unwrap();
        assert!(store.find_run(&fingerprint).is_none(), "a miss once the tree is gone");
        assert_eq!(
            std::fs::read_dir(dir.path().join("v1/runs"))
                .unwrap()
                .flatten()
                .flat_map(|shard| std::fs::read_dir(shard.path()).unwrap())
                .count(),
            0
        );
    }
}
