//! Faults of the machine, through the real daemon: a full disk (fill, free,
//! restart while full, free and restart), a rotation short of space,
//! damaged files at start-up, and a single request that cannot be written.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Daemon, image, in_ns};
use imaged_api::containerd::v1::images_client::ImagesClient;
use imaged_api::containerd::v1::{GetRequest, PutRequest};
use tonic::Code;
use tonic::transport::Channel;

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `mib`; `None` when this process may not mount (not
    /// root), which CI always is.
    fn mount(mib: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("disk");
        std::fs::create_dir(&mount).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(&mount)
            .status()
            .ok()?;
        if !status.success() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root and must mount a tmpfs"
            );
            common::skipped("cannot mount a tmpfs (not root)");
            return None;
        }
        Some(SmallDisk { mount, _dir: dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Writes `bytes` of ballast to `path`, to be removed to free space.
fn ballast(path: &Path, bytes: usize) {
    std::fs::write(path, vec![0x5a; bytes]).unwrap();
}

/// A Put of an image about 60 KiB large, so few fill a small disk.
fn big_put(name: &str, seed: u64) -> PutRequest {
    let mut img = image(name, seed);
    img.labels = (0..15)
        .map(|i| {
            (
                format!("label{i}"),
                format!("{seed}-").repeat(3900 / (seed.to_string().len() + 1)),
            )
        })
        .collect();
    PutRequest {
        image: Some(img),
        ..Default::default()
    }
}

/// What the writes so far may have left: every acknowledged name, and any
/// of the refused ones (a write refused when the disk filled under it may
/// have reached the journal, as its refusal says).
#[derive(Default)]
struct Written {
    acked: BTreeSet<String>,
    maybe: BTreeSet<String>,
}

impl Written {
    /// Puts big images named `{prefix}{n}` until the daemon refuses one;
    /// returns the refusal.
    async fn fill(&mut self, client: &mut ImagesClient<Channel>, prefix: &str) -> tonic::Status {
        for n in 0..2000u64 {
            let name = format!("{prefix}{n:04}");
            match client.put(in_ns("default", big_put(&name, n + 1))).await {
                Ok(_) => self.acked.insert(name),
                Err(status) => {
                    self.maybe.insert(name);
                    return status;
                }
            };
        }
        panic!("2000 images of 60 KiB did not fill the disk");
    }

    /// Puts one big image, remembering it once acknowledged.
    async fn put(&mut self, client: &mut ImagesClient<Channel>, name: &str, seed: u64) -> Result<(), tonic::Status> {
        client.put(in_ns("default", big_put(name, seed + 1))).await?;
        self.acked.insert(name.to_owned());
        Ok(())
    }

    /// The daemon holds every acknowledged name, and nothing else but the
    /// maybes.
    async fn assert_held(&self, client: &mut ImagesClient<Channel>) {
        let names = common::names(client, "default").await;
        let lost: Vec<_> = self.acked.difference(&names).collect();
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
        let invented: Vec<_> = names
            .difference(&self.acked)
            .filter(|n| !self.maybe.contains(*n))
            .collect();
        assert!(invented.is_empty(), "writes never made: {invented:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_without_losing_anything() {
    // With a reserve, the store refuses before the disk is full.
    full_disk("1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_under_sled_is_healed_without_a_restart() {
    // With none, sled's own writes fail with ENOSPC, and sled refuses every
    // write after that until the store reopens it and replays the journal.
    full_disk("0").await;
}

async fn full_disk(min_free_mb: &str) {
    let Some(disk) = SmallDisk::mount(16) else { return };
    let run = tempfile::tempdir().unwrap();
    let socket = run.path().join("imaged.sock");
    let root = disk.mount.join("store");
    let (first, second) = (disk.mount.join("ballast1"), disk.mount.join("ballast2"));
    ballast(&first, 2 << 20);
    ballast(&second, 2 << 20);
    let args = vec!["--min-free-mb".to_string(), min_free_mb.to_string()];
    let mut daemon = Daemon::spawn_with(&socket, &root, "info", args.clone());
    daemon.wait_ready();
    let mut client = ImagesClient::new(daemon.channel().await);

    // Fill: the refusal is RESOURCE_EXHAUSTED, saying the disk is full.
    let mut written = Written::default();
    let refused = written.fill(&mut client, "a").await;
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("disk"), "{refused:?}");
    assert!(
        written.acked.len() > 10,
        "only {} images before the disk filled",
        written.acked.len()
    );
    // Reads go on: a List, a Get, and the daemon is alive.
    written.assert_held(&mut client).await;
    let first_name = written.acked.first().unwrap().clone();
    let got = client
        .get(in_ns(
            "default",
            GetRequest {
                name: first_name.clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(got.into_inner().image.unwrap().name, first_name);
    // Still full: still refused, by name of the cause.
    let again = client.put(in_ns("default", big_put("still", 1))).await.unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");
    written.maybe.insert("still".into());

    // Free space: writes succeed again, without a restart (the store looks
    // again at most once a second, so the first tries may still be refused).
    std::fs::remove_file(&first).unwrap();
    let mut resumed = false;
    for _ in 0..100 {
        match client.put(in_ns("default", big_put("after-free", 7))).await {
            Ok(_) => {
                resumed = true;
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        resumed,
        "writes did not resume after space was freed:\n{}",
        daemon.log_text()
    );
    written.acked.insert("after-free".into());
    written.assert_held(&mut client).await;

    // Fill again, then restart while full: it starts or says why not.
    let refused = written.fill(&mut client, "b").await;
    assert_eq!(
        refused.code(),
        Code::ResourceExhausted,
        "{refused:?}\n{}",
        daemon.log_text()
    );
    drop(client);
    assert!(daemon.terminate().success(), "{}", daemon.log_text());
    let mut full = Daemon::spawn_with(&socket, &root, "info", args.clone());
    match full.ready_or_exit() {
        Ok(()) => {
            let mut client = ImagesClient::new(full.channel().await);
            written.assert_held(&mut client).await;
            drop(client);
            assert!(full.terminate().success(), "{}", full.log_text());
        }
        Err(status) => {
            let log = full.log_text();
            assert_eq!(status.code(), Some(1), "{log}");
            assert!(log.contains("full") || log.contains("No space"), "{log}");
        }
    }

    // Free and restart: every acknowledged write is there, and the store
    // checks clean.
    std::fs::remove_file(&second).unwrap();
    let mut daemon = Daemon::spawn_with(&socket, &root, "info", args);
    daemon.wait_ready();
    let mut client = ImagesClient::new(daemon.channel().await);
    written.assert_held(&mut client).await;
    client.put(in_ns("default", big_put("last", 9))).await.unwrap();
    drop(client);
    assert!(daemon.terminate().success());
    common::imaged_check(&root);
    eprintln!("{}", daemon.log_text());
}

/// Runs `imaged` on `root` until it is ready or exits: `Ok(names held)` if
/// it started, `Err(its log)` if it refused.
async fn try_start(root: &Path) -> Result<BTreeSet<String>, String> {
    let run = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::spawn_with(&run.path().join("imaged.sock"), root, "info", Vec::new());
    match daemon.ready_or_exit() {
        Ok(()) => {
            let mut client = ImagesClient::new(daemon.channel().await);
            let names = common::names(&mut client, "default").await;
            drop(client);
            assert!(daemon.terminate().success(), "{}", daemon.log_text());
            Ok(names)
        }
        Err(status) => {
            let log = daemon.log_text();
            assert_eq!(status.code(), Some(1), "not a clean refusal: {status}\n{log}");
            assert!(!log.contains("panicked"), "{log}");
            Err(log)
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Changes the file at `path` as `damage` says.
fn damage(path: &Path, damage: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    match damage {
        "truncate" => bytes.truncate(bytes.len() / 3),
        "empty" => bytes.clear(),
        "garbage" => {
            let mut x = 0x2545_f491_4f6c_dd1du64;
            for b in bytes.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
        }
        "bitflip" => {
            let at = bytes.len() / 2;
            bytes[at] ^= 0x08;
        }
        other => panic!("unknown damage {other}"),
    }
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_files_never_panic_nor_reset_the_store_silently() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    let mut daemon = Daemon::spawn_with(&dir.path().join("imaged.sock"), &pristine, "info", Vec::new());
    daemon.wait_ready();
    let mut client = ImagesClient::new(daemon.channel().await);
    let mut stored = BTreeSet::new();
    for n in 0..200u64 {
        let name = format!("img{n:03}");
        client.put(in_ns("default", common::put(&name, n + 1))).await.unwrap();
        stored.insert(name);
    }
    drop(client);
    assert!(daemon.terminate().success());
    // Once more, so that sled has written a snapshot to damage too.
    daemon.restart();
    assert!(daemon.terminate().success());

    let sled_files: Vec<String> = std::fs::read_dir(pristine.join("sled"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| format!("sled/{}", e.file_name().to_string_lossy()))
        .collect();
    let mut files = vec!["FORMAT".to_string(), "journal".into(), "lock".into()];
    files.extend(sled_files);
    let mut outcomes = Vec::new();
    for file in &files {
        for how in ["truncate", "empty", "garbage", "bitflip"] {
            let case = dir.path().join(format!("case-{}-{how}", file.replace('/', "-")));
            copy_dir(&pristine, &case);
            if std::fs::metadata(case.join(file)).unwrap().len() == 0 && how != "empty" {
                continue;
            }
            damage(&case.join(file), how);
            match try_start(&case).await {
                // Started: then with everything, never with less.
                Ok(names) => {
                    assert_eq!(names, stored, "{file} {how}: started without every image");
                    outcomes.push(format!("{file} {how}: started whole"));
                }
                Err(log) => {
                    let named = file.split('/').any(|part| log.contains(part)) || log.contains("sled");
                    assert!(named, "{file} {how}: the refusal does not name the file:\n{log}");
                    outcomes.push(format!("{file} {how}: refused"));
                }
            }
        }
    }
    eprintln!("{}", outcomes.join("\n"));
}

/// The bytes of the files under `dir`.
fn files_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            if e.path().is_dir() {
                files_bytes(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

/// The free space of the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(path).unwrap();
    stat.blocks_available() as u64 * stat.fragment_size() as u64
}

/// A rotation with no room for a second copy does not start; one whose disk
/// fills while it copies is abandoned, its directory removed; either way
/// the store goes on as it was, reads and writes, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_short_of_space_is_abandoned_and_the_store_goes_on() {
    let Some(disk) = SmallDisk::mount(64) else { return };
    let run = tempfile::tempdir().unwrap();
    let root = disk.mount.join("store");
    let args = ["--min-free-mb", "4", "--rotate-after-percent", "0"]
        .map(String::from)
        .to_vec();
    let mut daemon = Daemon::spawn_with(&run.path().join("imaged.sock"), &root, "info", args);
    daemon.wait_ready();
    // Each chunk of a copy is held a while, so the disk can fill meanwhile.
    daemon.send(nix::sys::signal::Signal::SIGKILL);
    tokio::task::block_in_place(|| daemon.wait_exit());
    daemon.env = vec![("IMAGED_TEST_STALL".into(), "rotation-copy:500".into())];
    daemon.restart();
    let mut client = ImagesClient::new(daemon.channel().await);
    let mut written = Written::default();
    for n in 0..60 {
        written.put(&mut client, &format!("img{n}"), n).await.unwrap();
    }
    let generations = || {
        let mut found: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("sled"))
            .collect();
        found.sort();
        found
    };

    // No room for a second copy besides the reserve: refused at once.
    let sled = files_bytes(&root.join("sled"));
    assert!(sled > 2 << 20, "sled holds {sled} bytes");
    let ballast_path = disk.mount.join("ballast");
    // 5 MiB left: the 4 MiB reserve and less than the store again.
    ballast(&ballast_path, (free_bytes(&disk.mount) - (5 << 20)) as usize);
    let out = tokio::task::block_in_place(|| common::imagectl(&daemon, &["--timeout", "60s", "compact"]));
    let text = common::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("room for a second copy"), "{text}");
    assert_eq!(generations(), ["sled"]);
    std::fs::remove_file(&ballast_path).unwrap();

    // The disk fills while the copy runs: abandoned, named.
    let compact = {
        let socket = daemon.socket.clone();
        std::thread::spawn(move || {
            Command::new(common::binary(None, "imagectl"))
                .arg("--address")
                .arg(&socket)
                // A copy that fills the disk stops sled's writes: bounded,
                // so that a regression fails instead of hanging.
                .args(["--timeout", "60s", "compact"])
                .output()
                .unwrap()
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !daemon.log_text().contains("stalling") {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy never began:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    ballast(&ballast_path, (free_bytes(&disk.mount) - (2 << 20)) as usize);
    let out = tokio::task::block_in_place(|| compact.join().unwrap());
    let text = common::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("abandoned") && text.contains("kept free"), "{text}");
    assert_eq!(generations(), ["sled"], "the abandoned copy is left");
    let status = imaged_client::Client::connect(&daemon.socket)
        .unwrap()
        .status()
        .await
        .unwrap();
    assert_eq!((status.rotations, status.rotations_abandoned), (0, 1), "{status:?}");
    assert!(status.last_rotation_abandoned.contains("kept free"), "{status:?}");

    // Space back: the store goes on, with everything.
    std::fs::remove_file(&ballast_path).unwrap();
    written.put(&mut client, "after", 1000).await.unwrap();
    written.assert_held(&mut client).await;
    daemon.send(nix::sys::signal::Signal::SIGKILL);
    tokio::task::block_in_place(|| daemon.wait_exit());
    daemon.env = Vec::new();
    daemon.restart();
    written
        .assert_held(&mut ImagesClient::new(daemon.channel().await))
        .await;
}
