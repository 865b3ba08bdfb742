//! The stat index: what each file of a saved folder looked like when it was last hashed, so
//! that saving an unchanged folder again reads metadata only.
//!
//! One index per saved folder, named by the sha256 of the folder's absolute path, in
//! `<store>/v1/stat/`. Its encoding, integers little-endian:
//!
//! ```text
//! "modelci-stat-v1\0"
//! i64 when the scan that wrote it began, in nanoseconds since the epoch, by the clock
//!   that stamps files (a new file's mtime), which may run a tick behind the system clock
//! u64 record count
//! per record: u64 path length, path bytes, then the Stat fields (u64 size, i64 mtime,
//!   i64 ctime, u64 inode, u64 device), then the 32-byte sha256 of the content
//! ```
//!
//! A record is trusted only when every stat field is unchanged and the file was last modified
//! strictly before the recorded scan began. A file written in the same instant as the scan
//! (the "racily clean" case git knows) is hashed again rather than trusted, so a change that
//! keeps size and mtime can only be missed if it also keeps the inode and the ctime, which
//! writing a file does not.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use super::Digest;

const MAGIC: &[u8] = b"modelci-stat-v1\0";

/// What `lstat` said about a file, as far as change detection needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub inode: u64,
    pub device: u64,
}

impl Stat {
    pub fn of(metadata: &std::fs::Metadata) -> Stat {
        let nanos = |seconds: i64, nanos: i64| seconds.saturating_mul(1_000_000_000) + nanos;
        Stat {
            size: metadata.len(),
            mtime_ns: nanos(metadata.mtime(), metadata.mtime_nsec()),
            ctime_ns: nanos(metadata.ctime(), metadata.ctime_nsec()),
            inode: metadata.ino(),
            device: metadata.dev(),
        }
    }
}

/// The index of one folder: relative path bytes → (stat, digest).
#[derive(Debug, Default)]
pub struct StatIndex {
    scanned_ns: i64,
    records: HashMap<Vec<u8>, (Stat, Digest)>,
}

impl StatIndex {
    pub fn new(scanned_ns: i64) -> StatIndex {
        StatIndex { scanned_ns, records: HashMap::new() }
    }

    /// The digest recorded for `path`, when the file provably has not changed since.
    pub fn lookup(&self, path: &[u8], stat: &Stat) -> Option<Digest> {
        let (recorded, digest) = self.records.get(path)?;
        (recorded == stat && stat.mtime_ns < self.scanned_ns).then_some(*digest)
    }

    pub fn insert(&mut self, path: Vec<u8>, stat: Stat, digest: Digest) {
        self.records.insert(path, (stat, digest));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&self.scanned_ns.to_le_bytes());
        out.extend_from_slice(&(self.records.len() as u64).to_le_bytes());
        for (path, (stat, digest)) in &self.records {
            out.extend_from_slice(&(path.len() as u64).to_le_bytes());
            out.extend_from_slice(path);
            out.extend_from_slice(&stat.size.to_le_bytes());
            out.extend_from_slice(&stat.mtime_ns.to_le_bytes());
            out.extend_from_slice(&stat.ctime_ns.to_le_bytes());
            out.extend_from_slice(&stat.inode.to_le_bytes());
            out.extend_from_slice(&stat.device.to_le_bytes());
            out.extend_from_slice(&digest.0);
        }
        out
    }

    /// Reads an index; anything malformed reads as an empty index, since the index is only
    /// ever a shortcut and hashing again is always correct.
    pub fn decode(bytes: &[u8]) -> StatIndex {
        Self::try_decode(bytes).unwrap_or_default()
    }

    fn try_decode(bytes: &[u8]) -> Option<StatIndex> {
        let mut reader = Cursor { bytes };
        if reader.take(MAGIC.len())? != MAGIC {
            return None;
        }
        let mut index = StatIndex::new(reader.u64()? as i64);
        let count = reader.u64()?;
        for _ in 0..count {
            let length = usize::try_from(reader.u64()?).ok()?;
            let path = reader.take(length)?.to_vec();
            let stat = Stat {
                size: reader.u64()?,
                mtime_ns: reader.u64()? as i64,
                ctime_ns: reader.u64()? as i64,
                inode: reader.u64()?,
                device: reader.u64()?,
            };
            let digest = Digest(reader.take(32)?.try_into().ok()?);
            index.records.insert(path, (stat, digest));
        }
        reader.bytes.is_empty().then_some(index)
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, length: usize) -> Option<&'a [u8]> {
        if length > self.bytes.len() {
            return None;
        }
        let (head, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(size: u64, mtime_ns: i64) -> Stat {
        Stat { size, mtime_ns, ctime_ns: mtime_ns, inode: 42, device: 7 }
    }

    #[test]
    fn a_record_is_trusted_only_when_unchanged_and_older_than_the_scan() {
        let digest = Digest::of(b"content");
        let mut index = StatIndex::new(1_000);
        index.insert(b"a".to_vec(), stat(7, 900), digest);
        index.insert(b"racy".to_vec(), stat(7, 1_000), digest);

        let index = StatIndex::decode(&index.encode());
        assert_eq!(index.len(), 2);
        assert_eq!(index.lookup(b"a", &stat(7, 900)), Some(digest));
        assert_eq!(index.lookup(b"a", &stat(8, 900)), None, "size changed");
        assert_eq!(index.lookup(b"a", &stat(7, 901)), None, "mtime changed");
        let moved = Stat { inode: 43, ..stat(7, 900) };
        assert_eq!(index.lookup(b"a", &moved), None, "inode changed");
        assert_eq!(index.lookup(b"racy", &stat(7, 1_000)), None, "modified as the scan began");
        assert_eq!(index.lookup(b"b", &stat(7, 900)), None, "never seen");
    }

    #[test]
    fn a_damaged_index_reads_as_empty() {
        let mut index = StatIndex::new(1_000);
        index.insert("é \t".as_bytes().to_vec(), stat(1, 1), Digest::of(b""));
        let bytes = index.encode();
        assert_eq!(StatIndex::decode(&bytes).len(), 1);
        assert!(StatIndex::decode(&bytes[..bytes.len() - 1]).is_empty());
        assert!(StatIndex::decode(b"junk").is_empty());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(StatIndex::decode(&longer).is_empty());
    }
}
