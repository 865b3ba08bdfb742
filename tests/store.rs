//! `modelci store` from the command line: save, restore, verify and gc in one store, and a
//! writer killed in the middle of a save.
#![cfg(unix)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn modelci(store: &Path, arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelci"))
        .env("MODELCI_STORE", store)
        .arg("store")
        .args(arguments)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// `length` bytes that zstd cannot shrink.
fn noise(length: usize, seed: u64) -> Vec<u8> {
    let mut state = 0x9E3779B97F4A7C15 ^ seed;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn save_restore_verify_and_gc_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let source = dir.path().join("data");
    std::fs::create_dir_all(source.join("class a")).unwrap();
    std::fs::write(source.join("class a/one.txt"), "one\n").unwrap();
    std::fs::write(source.join("two.txt"), "two\n").unwrap();

    let digest = stdout(&modelci(&store, &["save", source.to_str().unwrap()]));
    let digest = digest.trim();
    assert_eq!(digest.len(), 64, "{digest}");
    let target = dir.path().join("restored");
    stdout(&modelci(&store, &["restore", digest, target.to_str().unwrap()]));
    assert_eq!(std::fs::read_to_string(target.join("class a/one.txt")).unwrap(), "one\n");
    assert_eq!(
        stdout(&modelci(&store, &["verify"])),
        format!("{}: 2 blobs, 1 trees checked\n", store.display())
    );

    let kept = stdout(&modelci(&store, &["gc", "--max-size", "0", "--keep", digest]));
    assert!(kept.starts_with("removed 0 trees and 0 blobs"), "{kept}");
    let emptied = stdout(&modelci(&store, &["gc", "--max-size", "0"]));
    assert!(emptied.starts_with("removed 1 trees and 2 blobs"), "{emptied}");
    assert!(emptied.trim_end().ends_with("-> 0.0 MiB"), "{emptied}");

    let bad = modelci(&store, &["restore", &digest[..10], "x"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("64 hexadecimal digits"));
    let bad = modelci(&store, &["gc", "--max-size", "lots"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`lots` is not a size"));
}

#[test]
fn a_writer_killed_mid_save_leaves_a_valid_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let source = dir.path().join("data");
    std::fs::create_dir_all(&source).unwrap();
    for index in 0..24 {
        std::fs::write(source.join(format!("{index:02}.bin")), noise(2 << 20, index)).unwrap();
    }

    let mut writer = Command::new(env!("CARGO_BIN_EXE_modelci"))
        .env("MODELCI_STORE", &store)
        .args(["store", "save", source.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has started storing blobs (or has finished: either way the store must
    // be valid afterwards).
    let blobs = store.join("v1/blobs");
    let started = std::time::Instant::now();
    while std::fs::read_dir(&blobs).map(|shards| shards.count()).unwrap_or(0) < 2
        && started.elapsed().as_secs() < 30
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    writer.kill().unwrap();
    writer.wait().unwrap();

    // Verify exits non-zero on any problem; `stdout` asserts it did not.
    stdout(&modelci(&store, &["verify"]));
    let digest = stdout(&modelci(&store, &["save", source.to_str().unwrap()]));
    let target = dir.path().join("restored");
    stdout(&modelci(&store, &["restore", digest.trim(), target.to_str().unwrap()]));
    for index in 0..24 {
        let name = format!("{index:02}.bin");
        assert!(std::fs::read(target.join(&name)).unwrap() == noise(2 << 20, index), "{name}");
    }
    stdout(&modelci(&store, &["gc", "--max-size", "1T"]));
    assert_eq!(store.join("v1/tmp").read_dir().unwrap().count(), 0, "gc removes leftovers");
}
