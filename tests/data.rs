//! Datasets through the store, from the command line: archives fetched from a local HTTP server
//! (good, wrong hash, interrupted, hostile), `data pull` / `status` / `lock`, `cache-key`, and
//! `store gc --config` keeping what the config needs. None of it needs libtorch.
#![cfg(unix)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};
use wiremock::matchers::{any, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A project folder: a config whose datasets are `train` and `test` as given, and its store.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(train: &str, test: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[data]\ntrain = {train}\ntest = {test}\nimage_size = [2, 2]\n\n[model]\nkind = \
             \"mlp\"\n"
        );
        std::fs::write(dir.path().join("modelci.toml"), config).unwrap();
        Project { dir }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn modelci(&self, arguments: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_modelci"))
            .current_dir(self.dir.path())
            .env_remove("MODELCI_STORE")
            .args(arguments)
            .output()
            .unwrap()
    }

    async fn modelci_async(&self, arguments: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_modelci"));
        command.current_dir(self.dir.path()).env_remove("MODELCI_STORE").args(arguments);
        tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn ok(output: &Output) -> String {
    assert!(output.status.success(), "{}{}", stdout(output), stderr(output));
    stdout(output)
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Every file below `root` with its content, by relative path.
fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path.strip_prefix(root).unwrap().display().to_string();
                found.push((relative, std::fs::read(&path).unwrap()));
            }
        }
    }
    found.sort();
    found
}

/// A tar of `entries` (path, content) below an optional top folder; gzip-compressed.
fn tar_gz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o640);
        header.set_entry_type(tar::EntryType::Regular);
        // Written by hand so that hostile names (`..`) get into the archive at all.
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        builder.append(&header, *content).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(&tar).unwrap();
    gzip.finish().unwrap()
}

const DIGITS: &[(&str, &[u8])] = &[
    ("mnist/train/0/a.png", b"zero"),
    ("mnist/train/1/b.png", b"one"),
    ("mnist/README", b"provenance"),
];

/// A server that answers GET `route` with `body` exactly `times` times and fails the test on
/// any other request.
async fn serving(route: &str, body: Vec<u8>, times: u64) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(route))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(body))
        .expect(times)
        .mount(&server)
        .await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(599))
        .with_priority(u8::MAX)
        .expect(0)
        .mount(&server)
        .await;
    server
}

fn remote(url: &str, sha256: &str, extra: &str) -> String {
    format!("{{ url = \"{url}\", sha256 = \"{sha256}\"{extra} }}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_archive_is_fetched_once_then_restored_from_the_store() {
    let archive = tar_gz(DIGITS);
    let server = serving("/mnist.tar.gz", archive.clone(), 1).await;
    let url = format!("{}/mnist.tar.gz", server.uri());
    let train = remote(&url, &sha256(&archive), ", subdir = \"mnist/train\"");
    let project = Project::new(&train, "\"data/test\"");
    write(&project.path("data/test/0/c.png"), b"test zero");

    let status = ok(&project.modelci(&["data", "status"]));
    assert!(status.contains("train: "), "{status}");
    assert!(status.contains("missing; `modelci data pull` downloads it"), "{status}");

    let pulled = ok(&project.modelci_async(&["data", "pull"]).await);
    assert!(pulled.contains("train: downloaded, verified and written"), "{pulled}");
    assert!(pulled.contains("test: kept in the store (not locked)"), "{pulled}");
    let folder = project.path(".modelci/datasets/train");
    assert_eq!(
        files(&folder),
        [("0/a.png".to_string(), b"zero".to_vec()), ("1/b.png".to_string(), b"one".to_vec())]
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(folder.join("0/a.png")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o640, "the archive's mode, whatever the umask");

    // Gone from the working tree: written again from the store, with no request (the server
    // allows exactly one).
    std::fs::remove_dir_all(&folder).unwrap();
    let again = ok(&project.modelci_async(&["data", "pull"]).await);
    assert!(again.contains("train: written from the store"), "{again}");
    assert!(again.contains("test: kept in the store"), "{again}");
    assert_eq!(files(&folder).len(), 2);
    let status = ok(&project.modelci(&["data", "status"]));
    assert!(
        status.contains("train: ") && status.contains("(up to date, in the store)"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_with_the_wrong_hash_is_refused_and_nothing_is_written() {
    let archive = tar_gz(DIGITS);
    let server = serving("/mnist.tar.gz", archive.clone(), 1).await;
    let url = format!("{}/mnist.tar.gz", server.uri());
    let pinned = sha256(b"something else");
    let project = Project::new(&remote(&url, &pinned, ""), "\"data/test\"");
    write(&project.path("data/test/0/c.png"), b"test zero");

    let output = project.modelci_async(&["data", "pull"]).await;
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains(&format!("has sha256 {}", sha256(&archive))), "{message}");
    assert!(message.contains(&format!("but the config pins {pinned}")), "{message}");
    assert!(!project.path(".modelci/datasets/train").exists());
    let scratch = project.path(".modelci/store/v1/tmp");
    assert_eq!(std::fs::read_dir(scratch).unwrap().count(), 0, "no download left behind");
}

/// A server that breaks off its first answer halfway, then answers in full.
fn flaky_server(body: Vec<u8>) -> (String, std::thread::JoinHandle<usize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        for attempt in 0..2 {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).unwrap();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            let sent = if attempt == 0 { body.len() / 2 } else { body.len() };
            stream.write_all(&body[..sent]).unwrap();
        }
        2
    });
    (format!("http://{address}/digits.tar.gz"), handle)
}

#[test]
fn an_interrupted_download_is_retried() {
    let archive = tar_gz(DIGITS);
    let (url, server) = flaky_server(archive.clone());
    let project = Project::new(&remote(&url, &sha256(&archive), ""), "\"data/test\"");
    write(&project.path("data/test/0/c.png"), b"test zero");

    let output = project.modelci(&["data", "pull"]);
    ok(&output);
    assert!(stderr(&output).contains("broke off"), "{}", stderr(&output));
    assert_eq!(server.join().unwrap(), 2, "one broken answer, one whole");
    assert_eq!(files(&project.path(".modelci/datasets/train")).len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_archive_reaching_outside_its_folder_is_refused_before_anything_is_written() {
    let archive = tar_gz(&[("ok/0/a.png", b"fine"), ("../escaped", b"hostile")]);
    let server = serving("/evil.tar.gz", archive.clone(), 1).await;
    let url = format!("{}/evil.tar.gz", server.uri());
    let project = Project::new(&remote(&url, &sha256(&archive), ""), "\"data/test\"");
    write(&project.path("data/test/0/c.png"), b"test zero");

    let output = project.modelci_async(&["data", "pull"]).await;
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    // The folder `..` the hostile entry implies is the first path refused.
    assert!(message.contains("refusing the manifest entry \"..\""), "{message}");
    assert!(message.contains("nothing was written"), "{message}");
    assert!(!project.path(".modelci/datasets/train").exists());
    assert!(!project.path(".modelci/datasets/escaped").exists());
    assert!(!project.path(".modelci/escaped").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn zip_and_tar_zst_archives_unpack_the_same_tree() {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().unix_permissions(0o644);
    zip.add_directory("mnist/train/", options).unwrap();
    for (name, content) in DIGITS {
        zip.start_file(*name, options).unwrap();
        zip.write_all(content).unwrap();
    }
    let zip = zip.finish().unwrap().into_inner();

    let mut tar = tar::Builder::new(Vec::new());
    for (name, content) in DIGITS {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, format!("./{name}"), *content).unwrap();
    }
    let tar_zst = zstd::encode_all(&tar.into_inner().unwrap()[..], 3).unwrap();

    let server = MockServer::start().await;
    for (route, body) in [("/d.zip", zip.clone()), ("/d.tar.zst", tar_zst.clone())] {
        Mock::given(path(route))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(body))
            .expect(1)
            .mount(&server)
            .await;
    }
    let subdir = ", subdir = \"mnist/train\"";
    let train = remote(&format!("{}/d.zip", server.uri()), &sha256(&zip), subdir);
    let test = remote(&format!("{}/d.tar.zst", server.uri()), &sha256(&tar_zst), subdir);
    let project = Project::new(&train, &test);
    let pulled = ok(&project.modelci_async(&["data", "pull"]).await);
    let trees: Vec<&str> =
        pulled.lines().map(|line| line.rsplit("tree ").next().unwrap()).collect();
    assert_eq!(trees[0], trees[1], "the same entries give the same tree: {pulled}");
    assert_eq!(
        files(&project.path(".modelci/datasets/train")),
        files(&project.path(".modelci/datasets/test"))
    );
}

#[test]
fn lock_pins_the_trees_and_pull_never_overwrites_a_changed_folder_without_force() {
    let project = Project::new("\"data/train\"", "\"data/test\"");
    write(&project.path("data/train/0/a.png"), b"zero");
    write(&project.path("data/test/0/b.png"), b"test zero");

    let locked = ok(&project.modelci(&["data", "lock"]));
    assert!(locked.contains("wrote ./modelci.lock") || locked.contains("modelci.lock"), "{locked}");
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.path("modelci.lock")).unwrap()).unwrap();
    assert_eq!(lock["schema"], "modelci.lock/v1");
    assert_eq!(lock["datasets"]["train"]["path"], "data/train");
    assert_eq!(lock["datasets"]["train"]["tree"].as_str().unwrap().len(), 64);
    let key = ok(&project.modelci(&["cache-key"]));
    assert!(key.starts_with("modelci-data-") && key.trim().len() == 45, "{key}");
    assert_eq!(ok(&project.modelci(&["cache-key"])), key, "the key is stable");

    // Edit a file: status says so, pull refuses, pull --force puts the locked tree back.
    write(&project.path("data/train/0/a.png"), b"zero, edited");
    let status = ok(&project.modelci(&["data", "status"]));
    assert!(status.contains("train: ") && status.contains("changed: tree"), "{status}");
    let refused = project.modelci(&["data", "pull"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(stderr(&refused).contains("modelci data pull --force"), "{}", stderr(&refused));
    assert_eq!(std::fs::read(project.path("data/train/0/a.png")).unwrap(), b"zero, edited");
    let forced = ok(&project.modelci(&["data", "pull", "--force"]));
    assert!(forced.contains("train: written from the store"), "{forced}");
    assert_eq!(std::fs::read(project.path("data/train/0/a.png")).unwrap(), b"zero");

    // A deleted dataset comes back from the store; a new lock changes the key.
    std::fs::remove_dir_all(project.path("data/test")).unwrap();
    assert!(ok(&project.modelci(&["data", "pull"])).contains("test: written from the store"));
    write(&project.path("data/train/1/c.png"), b"one");
    ok(&project.modelci(&["data", "lock"]));
    assert_ne!(ok(&project.modelci(&["cache-key"])), key);
}

#[test]
fn gc_with_a_config_keeps_its_datasets() {
    let project = Project::new("\"data/train\"", "\"data/test\"");
    write(&project.path("data/train/0/a.png"), b"zero");
    write(&project.path("data/test/0/b.png"), b"test zero");
    write(&project.path("other/x"), b"unreferenced");
    ok(&project.modelci(&["data", "lock"]));
    let store = project.path(".modelci/store");
    let store = store.to_str().unwrap();
    let other = ok(&project.modelci(&["store", "--store", store, "save", "other"]));

    let collected = ok(&project.modelci(&[
        "store",
        "--store",
        store,
        "gc",
        "--max-size",
        "0",
        "--config",
        "modelci.toml",
    ]));
    assert!(collected.starts_with("removed 1 trees"), "{collected}");
    std::fs::remove_dir_all(project.path("data")).unwrap();
    ok(&project.modelci(&["data", "pull"]));
    assert_eq!(std::fs::read(project.path("data/train/0/a.png")).unwrap(), b"zero");
    let gone = project.modelci(&["store", "--store", store, "restore", other.trim(), "back"]);
    assert_eq!(gone.status.code(), Some(2), "the unreferenced tree was collected");
}

#[test]
fn a_bad_dataset_entry_names_the_key_and_the_fix() {
    let project = Project::new("{ url = \"ftp://example.com/x.tar\", sha256 = \"00\" }", "\"t\"");
    let output = project.modelci(&["data", "status"]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("modelci.toml:2:"), "{message}");
    assert!(message.contains("data.train.url must be an http:// or https:// URL"), "{message}");

    let project = Project::new("{ url = \"https://example.com/x.tar\", sha = \"00\" }", "\"t\"");
    let message = stderr(&project.modelci(&["data", "status"]));
    assert!(message.contains("unknown field `sha`"), "{message}");
}
