use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store"), 3).unwrap();
    (dir, store)
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// `length` bytes from a xorshift generator: zstd cannot shrink them.
fn noise(length: usize, seed: u64) -> Vec<u8> {
    let mut state = 0x2545F4914F6CDD1D ^ seed;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every entry below `root`: relative path bytes, mode, and content or link target.
fn snapshot(root: &Path) -> Vec<(Vec<u8>, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let content = if metadata.file_type().is_symlink() {
                std::fs::read_link(&path).unwrap().as_os_str().as_bytes().to_vec()
            } else if metadata.is_dir() {
                stack.push(path.clone());
                b"<dir>".to_vec()
            } else {
                std::fs::read(&path).unwrap()
            };
            out.push((relative, mode(&path), content));
        }
    }
    out.sort();
    out
}

fn sample_tree(root: &Path) {
    write(&root.join("data/a.txt"), b"alpha\n");
    write(&root.join("data/with space\tand tab.txt"), b"odd name");
    write(&root.join(OsStr::from_bytes(b"data/latin1-\xe9.bin")), b"not utf-8 name");
    write(&root.join("run.sh"), b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&root.join("readonly.txt"), b"do not touch");
    std::fs::set_permissions(root.join("readonly.txt"), std::fs::Permissions::from_mode(0o444))
        .unwrap();
    std::fs::create_dir_all(root.join("empty/nested")).unwrap();
    std::os::unix::fs::symlink("data/a.txt", root.join("link-to-a")).unwrap();
    std::os::unix::fs::symlink("../a.txt", root.join("data/up-link")).unwrap();
    write(&root.join("big.bin"), &vec![7u8; 3 << 20]);
}

#[test]
fn round_trip_is_exact() {
    let (dir, store) = store();
    let source = dir.path().join("source");
    sample_tree(&source);
    let digest = store.save(&source).unwrap().digest;

    let target = dir.path().join("restored");
    store.restore(&digest, &target).unwrap();
    assert_eq!(snapshot(&target), snapshot(&source));
    assert_eq!(mode(&target), mode(&source));
    // Saving again gives the same digest: the encoding is canonical.
    assert_eq!(store.save(&target).unwrap().digest, digest);
}

#[test]
fn identical_content_is_stored_once_and_line_endings_matter() {
    let (dir, store) = store();
    let source = dir.path().join("source");
    write(&source.join("one.txt"), b"same bytes\n");
    write(&source.join("two/other name.txt"), b"same bytes\n");
    store.save(&source).unwrap();
    assert_eq!(store.verify().unwrap().blobs, 1);

    let (lf, _) = store.put_file(&source.join("one.txt")).unwrap();
    write(&source.join("crlf.txt"), b"same bytes\r\n");
    let (crlf, _) = store.put_file(&source.join("crlf.txt")).unwrap();
    assert_ne!(lf, crlf);
}

fn walk_files(folder: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk_files(&path)) } else { files.push(path) }
    }
    files
}

#[test]
fn incompressible_data_is_stored_raw_and_restored() {
    let (dir, store) = store();
    let source = dir.path().join("source");
    let noise = noise(200_000, 1);
    write(&source.join("noise.bin"), &noise);
    let digest = store.save(&source).unwrap().digest;
    match store.find_blob(&Digest::of(&noise)) {
        Some(Location::Packed(packed)) => {
            assert!(!packed.compressed);
            assert_eq!((packed.stored, packed.size), (200_000, 200_000));
        }
        other => panic!("a 200 kB file is packed: {other:?}"),
    }
    store.restore(&digest, &dir.path().join("out")).unwrap();
    assert_eq!(std::fs::read(dir.path().join("out/noise.bin")).unwrap(), noise);
}

#[test]
fn corrupt_truncated_and_missing_blobs_are_never_restored() {
    for damage in ["flip", "truncate", "delete"] {
        let (dir, store) = store();
        let source = dir.path().join("source");
        write(&source.join("file.txt"), &b"precious content ".repeat(1000));
        let digest = store.save(&source).unwrap().digest;
        // The one small file is in the save's pack.
        let blob = walk_files(&store.layout().join("packs"))
            .into_iter()
            .find(|path| path.extension() == Some(OsStr::new("pack")))
            .unwrap();
        let mut bytes = std::fs::read(&blob).unwrap();
        match damage {
            "flip" => {
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0xff;
                std::fs::write(&blob, bytes).unwrap();
            }
            "truncate" => std::fs::write(&blob, &bytes[..bytes.len() / 2]).unwrap(),
            _ => std::fs::remove_file(&blob).unwrap(),
        }

        let target = dir.path().join("target");
        write(&target.join("keep.txt"), b"the old tree");
        let error = store.restore(&digest, &target).unwrap_err();
        let expected = match damage {
            // A flipped byte may break the zstd frame or only the content; both are caught.
            "flip" => {
                matches!(error, StoreError::CorruptBlob { .. } | StoreError::UnreadableBlob { .. })
            }
            "truncate" => matches!(error, StoreError::UnreadableBlob { .. }),
            _ => matches!(error, StoreError::MissingBlob { .. }),
        };
        assert!(expected, "{damage}: {error}");
        assert_eq!(std::fs::read(target.join("keep.txt")).unwrap(), b"the old tree", "{damage}");
        assert!(!blob.exists(), "{damage}: a bad blob is removed");
        assert!(!blob.with_extension("idx").exists(), "{damage}: with its pack's index");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name.to_string_lossy().starts_with(".modelci-"))
            .collect();
        assert!(leftovers.is_empty(), "{damage}: {leftovers:?}");
        // The manifest now names a blob the store lacks, and verify says so.
        let problems = store.verify().unwrap().problems;
        assert_eq!(problems.len(), 1, "{damage}: {problems:?}");
        assert!(problems[0].contains("missing"), "{damage}: {problems:?}");
    }
}

fn plant_tree(store: &Store, entries: Vec<Entry>) -> Digest {
    let tree = Tree::decode(&Tree { entries }.encode()).unwrap();
    let encoding = tree.encode();
    let digest = Digest::of(&encoding);
    write(&store.tree_path(&digest), &encoding);
    digest
}

fn root() -> Entry {
    Entry { path: Vec::new(), mode: 0o755, kind: EntryKind::Directory }
}

#[test]
fn path_traversal_and_escaping_links_are_refused_before_writing() {
    let (dir, store) = store();
    let (digest, _) = {
        let file = dir.path().join("payload");
        write(&file, b"evil");
        store.put_file(&file).unwrap()
    };
    let file = |path: &[u8]| Entry {
        path: path.to_vec(),
        mode: 0o644,
        kind: EntryKind::File { digest, size: 4 },
    };
    let link = |path: &[u8], target: &[u8]| Entry {
        path: path.to_vec(),
        mode: 0o777,
        kind: EntryKind::Symlink { target: target.to_vec() },
    };
    let cases: Vec<Vec<Entry>> = vec![
        vec![root(), file(b"../escaped")],
        vec![root(), file(b"/etc/escaped")],
        vec![root(), file(b"a/../../escaped")],
        vec![root(), file(b"dir\\..\\escaped")],
        vec![root(), file(b"C:escaped")],
        vec![root(), link(b"inside", b"../outside")],
        vec![root(), link(b"abs", b"/etc/passwd")],
        vec![root(), link(b"dir", b"."), file(b"dir/through-link")],
    ];
    for entries in cases {
        let planted = plant_tree(&store, entries);
        let target = dir.path().join("sandbox/target");
        let error = store.restore(&planted, &target).unwrap_err();
        assert!(matches!(error, StoreError::Tree(_)), "{error}");
        assert!(!dir.path().join("sandbox").exists(), "nothing is written: {error}");
        assert!(!dir.path().join("escaped").exists());
    }
}

#[test]
fn links_leaving_the_tree_are_refused_when_saving() {
    let (dir, store) = store();
    let source = dir.path().join("source");
    write(&source.join("a.txt"), b"a");
    std::os::unix::fs::symlink("../../etc/passwd", source.join("sneaky")).unwrap();
    let error = store.save(&source).unwrap_err().to_string();
    assert!(error.contains("points outside the tree"), "{error}");
}

#[test]
fn restore_replaces_an_existing_tree() {
    let (dir, store) = store();
    let source = dir.path().join("source");
    write(&source.join("new.txt"), b"new");
    let digest = store.save(&source).unwrap().digest;
    let target = dir.path().join("target");
    write(&target.join("stale.txt"), b"stale");
    write(&target.join("new.txt"), b"old content");
    store.restore(&digest, &target).unwrap();
    assert_eq!(snapshot(&target), snapshot(&source));
}

#[test]
fn malformed_manifests_are_errors() {
    assert!(Tree::decode(b"nope").is_err());
    let mut encoding = Tree { entries: vec![root()] }.encode();
    encoding.push(0);
    assert!(matches!(Tree::decode(&encoding), Err(TreeError::Malformed(_))));
    let (_dir, store) = store();
    let missing = Digest([7; 32]);
    assert!(matches!(store.restore(&missing, Path::new("x")), Err(StoreError::NoTree(_))));
}

#[test]
fn digests_print_and_parse_as_hex() {
    let digest = Digest::of(b"abc");
    assert_eq!(digest.hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(Digest::parse(&digest.hex()), Some(digest));
    assert_eq!(Digest::parse("xyz"), None);
}

#[test]
fn large_files_stream_through_compressed_or_raw() {
    let (dir, store) = store();
    let source = dir.path().join("source");
    let noise = noise(3 << 20, 2);
    write(&source.join("noise.bin"), &noise);
    write(&source.join("zeros.bin"), &vec![0u8; 3 << 20]);
    let digest = store.save(&source).unwrap().digest;
    let mut suffixes: Vec<_> = walk_files(&store.layout().join("blobs"))
        .iter()
        .map(|blob| blob.extension().unwrap().to_string_lossy().into_owned())
        .collect();
    suffixes.sort();
    assert_eq!(suffixes, ["raw", "zst"]);

    let target = dir.path().join("out");
    store.restore(&digest, &target).unwrap();
    assert_eq!(snapshot(&target), snapshot(&source));
}

#[test]
fn the_stat_index_skips_unchanged_files_and_never_misses_a_change() {
    let (dir, store) = store();
    let source = dir.path().join("source");
    for index in 0..20 {
        write(&source.join(format!("file-{index:02}.txt")), format!("content {index}").as_bytes());
    }
    // A file stamped in the same clock tick as a save began is read again by the next save
    // (it might have changed within that tick); let the file system's clock move on first.
    std::thread::sleep(std::time::Duration::from_millis(50));
    // The first save reads every file; the second reads none.
    let first = store.save(&source).unwrap();
    assert_eq!((first.files, first.hashed), (20, 20));
    let again = store.save(&source).unwrap();
    assert_eq!((again.digest, again.hashed), (first.digest, 0), "nothing changed");

    // Same size, same mtime, different bytes: the ctime gives it away. (The pause lets the
    // file system's coarse clock move on, as it has for any edit made after a save.)
    std::thread::sleep(std::time::Duration::from_millis(50));
    let changed = source.join("file-07.txt");
    let mtime = std::fs::metadata(&changed).unwrap().modified().unwrap();
    std::fs::write(&changed, b"CONTENT 7").unwrap();
    File::options().write(true).open(&changed).unwrap().set_modified(mtime).unwrap();
    let after = store.save(&source).unwrap();
    assert_eq!(after.hashed, 1);
    assert_ne!(after.digest, first.digest);
    let target = dir.path().join("out");
    store.restore(&after.digest, &target).unwrap();
    assert_eq!(std::fs::read(target.join("file-07.txt")).unwrap(), b"CONTENT 7");

    // A blob found corrupt is removed, and with it the indexes that vouched for it: the next
    // save reads every file again and stores the lost blob anew.
    let Some(Location::Packed(packed)) = store.find_blob(&Digest::of(b"content 3")) else {
        panic!("small files are packed");
    };
    let mut pack = std::fs::read(&packed.pack).unwrap();
    pack[packed.offset as usize] ^= 0xff;
    std::fs::write(&packed.pack, pack).unwrap();
    let blob = packed.pack;
    let refused = store.restore(&after.digest, &dir.path().join("refused"));
    assert!(matches!(
        refused,
        Err(StoreError::CorruptBlob { .. } | StoreError::UnreadableBlob { .. })
    ));
    assert!(!blob.exists(), "the corrupt blob was removed");
    let rebuilt = store.save(&source).unwrap();
    assert_eq!((rebuilt.digest, rebuilt.hashed), (after.digest, 20));
    store.restore(&after.digest, &dir.path().join("whole")).unwrap();
    assert_eq!(std::fs::read(dir.path().join("whole/file-03.txt")).unwrap(), b"content 3");
}

fn age(path: &Path, seconds_ago: u64) {
    let when = std::time::SystemTime::now() - std::time::Duration::from_secs(seconds_ago);
    File::options().write(true).open(path).unwrap().set_modified(when).unwrap();
}

#[test]
fn gc_evicts_least_recently_used_trees_but_never_kept_ones() {
    let (dir, store) = store();
    let mut digests = Vec::new();
    for name in ["old", "kept", "recent"] {
        let source = dir.path().join(name);
        // Distinct, incompressible content: 40,000 bytes per tree.
        write(&source.join("data.bin"), &noise(40_000, name.len() as u64));
        digests.push(store.save(&source).unwrap().digest);
    }
    let [old, kept, recent] = digests[..] else { unreachable!() };
    age(&store.tree_path(&old), 300);
    age(&store.tree_path(&kept), 200);
    age(&store.tree_path(&recent), 100);
    std::fs::write(store.layout().join("tmp/left-by-a-killed-writer"), b"partial").unwrap();

    // Room for about two trees: the oldest unkept one goes.
    let collected = store.gc(100_000, &[kept]).unwrap();
    assert_eq!((collected.removed_trees, collected.removed_blobs), (1, 1), "{collected:?}");
    assert!(collected.after <= 100_000 && collected.after < collected.before, "{collected:?}");
    assert!(matches!(store.tree(&old), Err(StoreError::NoTree(_))));
    for digest in [kept, recent] {
        store.restore(&digest, &dir.path().join("out")).unwrap();
    }
    assert!(walk_files(&store.layout().join("tmp")).is_empty());

    // Room for nothing: everything unkept goes, the kept tree stays whole.
    let collected = store.gc(0, &[kept]).unwrap();
    assert_eq!(collected.removed_trees, 1);
    store.restore(&kept, &dir.path().join("out")).unwrap();
    assert!(store.verify().unwrap().problems.is_empty());
}

#[test]
fn concurrent_writers_leave_a_valid_store() {
    let (dir, store) = store();
    let shared = dir.path().join("shared");
    for index in 0..200 {
        write(&shared.join(format!("{index:03}.txt")), format!("shared {index}\n").as_bytes());
    }
    let digests: Vec<Digest> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|worker| {
                let root = dir.path().join("store");
                let shared = &shared;
                let own = dir.path().join(format!("own-{worker}"));
                scope.spawn(move || {
                    // Each writer opens its own handle, as separate processes would.
                    let store = Store::open(&root, 3).unwrap();
                    for index in 0..50 {
                        write(
                            &own.join(format!("{index}.txt")),
                            format!("{worker}/{index}").as_bytes(),
                        );
                    }
                    let first = store.save(shared).unwrap().digest;
                    let second = store.save(&own).unwrap().digest;
                    (first, second)
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                let (a, b) = w.join().unwrap();
                [a, b]
            })
            .collect()
    });
    assert!(digests.chunks(2).all(|pair| pair[0] == digests[0]), "the shared tree has one digest");
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.trees, report.blobs), (5, 200 + 4 * 50));
    for (index, digest) in digests.iter().enumerate() {
        store.restore(digest, &dir.path().join(format!("restored-{index}"))).unwrap();
    }
}

#[test]
fn hash_file_matches_the_published_sha256_of_abc() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("abc");
    std::fs::write(&file, b"abc").unwrap();
    let (digest, size) = hash_file(&file).unwrap();
    assert_eq!(size, 3);
    // FIPS 180-2, appendix B.1.
    assert_eq!(digest.hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

#[test]
fn gc_drops_dead_packs_and_rewrites_half_dead_ones() {
    let (dir, store) = store();
    let both = dir.path().join("both");
    write(&both.join("kept.txt"), b"kept by the second tree");
    write(&both.join("dropped.txt"), b"only in the first tree");
    let first = store.save(&both).unwrap().digest;
    let one = dir.path().join("one");
    write(&one.join("kept.txt"), b"kept by the second tree");
    let second = store.save(&one).unwrap().digest;
    let packs = || {
        let mut found: Vec<PathBuf> = walk_files(&store.layout().join("packs"));
        found.sort();
        found
    };
    assert_eq!(packs().len(), 2, "one pack and its index: the second save added no blob");
    // A pack a killed writer left without its index.
    std::fs::write(store.layout().join("packs").join(format!("{}.pack", "0".repeat(64))), b"x")
        .unwrap();

    let collected = store.gc(0, &[second]).unwrap();
    assert_eq!((collected.removed_trees, collected.removed_blobs), (1, 1));
    let left = packs();
    assert_eq!(left.len(), 2, "the rewritten pack and its index, no orphan: {left:?}");
    assert!(store.tree(&first).is_err());
    assert!(store.verify().unwrap().problems.is_empty());
    assert_eq!(store.verify().unwrap().blobs, 1);
    store.restore(&second, &dir.path().join("out")).unwrap();
    assert_eq!(std::fs::read(dir.path().join("out/kept.txt")).unwrap(), b"kept by the second tree");

    store.gc(0, &[]).unwrap();
    assert!(packs().is_empty(), "nothing referenced, nothing left");
}
