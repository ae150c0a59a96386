//! Online backup and restore, end to end, through the real binaries: a
//! backup taken while writers run restores to exactly the store at its
//! revision (checked against the change log replayed through Watch); every
//! damaged file is refused with nothing restored; a SIGKILL at each step of
//! a restore leaves a store that opens, with the old data or the new.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Daemon, IMAGED, in_ns, output_text as text, put};
use imaged_api::containerd::v1 as seed;
use seed::watch_event::Type;

/// What the tests compare of an image: everything a backup must keep.
type Kept = (String, BTreeMap<String, String>, i64, i64, u64, u64);

fn kept(image: &seed::Image) -> Kept {
    let time =
        |t: &Option<prost_types::Timestamp>| t.as_ref().map_or(0, |t| t.seconds * 1_000_000_000 + i64::from(t.nanos));
    (
        image.target.as_ref().unwrap().digest.clone(),
        image.labels.clone().into_iter().collect(),
        time(&image.created_at),
        time(&image.updated_at),
        image.create_revision,
        image.mod_revision,
    )
}

fn restore(root: &Path, file: &Path, force: bool) -> Output {
    let mut command = Command::new(&*IMAGED);
    command
        .env("IMAGED_CONFIG", "/dev/null")
        .arg("restore")
        .arg("--root")
        .arg(root);
    if force {
        command.arg("--force");
    }
    command.arg(file).output().unwrap()
}

/// The revision `imaged restore` says it restored at.
fn restored_revision(out: &Output) -> u64 {
    restored_revisions(out).1
}

/// The revisions `imaged restore` says the copy began at and restored at.
fn restored_revisions(out: &Output) -> (u64, u64) {
    assert!(out.status.success(), "restore failed: {}", text(out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let number = |after: &str| -> u64 {
        let rest = stdout.split(after).nth(1).unwrap();
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (number("began at revision "), number("), at revision "))
}

async fn backup_bytes(daemon: &Daemon) -> Vec<u8> {
    let client = imaged_client::Client::connect(&daemon.socket).unwrap();
    let mut bytes = Vec::new();
    client.backup(&mut bytes).await.unwrap();
    bytes
}

/// Every image of `ns` at `revision`, from the change log: a watch from
/// revision 0, folded up to `revision`.
async fn at_revision(daemon: &Daemon, ns: &str, revision: u64) -> BTreeMap<String, Kept> {
    let mut seed = daemon.seed().await;
    let request = seed::WatchRequest {
        start_revision: Some(0),
        progress_interval: Some(prost_types::Duration {
            seconds: 0,
            nanos: 100_000_000,
        }),
        ..Default::default()
    };
    let mut stream = seed.watch(in_ns(ns, request)).await.unwrap().into_inner();
    let mut images = BTreeMap::new();
    loop {
        let answer = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("a watch answer")
            .unwrap()
            .expect("the watch goes on");
        for event in answer.events.iter().filter(|e| e.revision <= revision) {
            let image = event.image.as_ref().unwrap();
            if event.r#type() == Type::Deleted {
                images.remove(&image.name);
            } else {
                images.insert(image.name.clone(), kept(image));
            }
        }
        if answer.revision >= revision {
            return images;
        }
    }
}

/// Every image of `ns` as the seed API lists it, and the list's revision.
async fn listed(daemon: &Daemon, ns: &str) -> (BTreeMap<String, Kept>, u64) {
    let mut seed = daemon.seed().await;
    let answer = seed
        .list(in_ns(ns, seed::ListRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let images = answer.images.iter().map(|i| (i.name.clone(), kept(i))).collect();
    (images, answer.revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_concurrent_writes_restores_to_the_store_at_its_revision() {
    // The copy pauses after each chunk it reads, so that writers land
    // between its chunks and after its scan, for the change log to settle.
    let daemon = Daemon::start_env(&[("IMAGED_TEST_STALL", "backup-chunk:300")]);
    let mut seed = daemon.seed().await;
    for n in 0..2500u64 {
        let ns = if n % 3 == 0 { "b" } else { "a" };
        seed.put(in_ns(ns, put(&format!("img:{n}"), n))).await.unwrap();
    }
    let mut namespaces = daemon.namespaces().await;
    namespaces
        .create(
            imaged_api::containerd::services::namespaces::v1::CreateNamespaceRequest {
                namespace: Some(imaged_api::containerd::services::namespaces::v1::Namespace {
                    name: "labelled".into(),
                    labels: [("team".to_string(), "infra".to_string())].into(),
                }),
            },
        )
        .await
        .unwrap();

    // Writers replace, create and delete while the backup runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let mut seed = daemon.seed().await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut n = w;
            let mut writes = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || writes < 200 {
                let ns = if n % 3 == 0 { "b" } else { "a" };
                let name = format!("img:{}", (n * 7919) % 3000);
                if n % 5 == 0 {
                    let _ = seed
                        .delete(in_ns(
                            ns,
                            seed::DeleteRequest {
                                name,
                                ..Default::default()
                            },
                        ))
                        .await;
                } else {
                    let mut request = put(&name, 10_000 + n);
                    request.image.as_mut().unwrap().labels.insert("n".into(), n.to_string());
                    seed.put(in_ns(ns, request)).await.unwrap();
                }
                n += 4;
                writes += 1;
            }
            writes
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let bytes = backup_bytes(&daemon).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut writes = 0;
    for writer in writers {
        writes += writer.await.unwrap();
    }
    assert!(writes >= 800, "{writes} writes");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup");
    std::fs::write(&file, &bytes).unwrap();
    let root = dir.path().join("restored");
    let (began, revision) = restored_revisions(&restore(&root, &file, false));
    let (_, head) = listed(&daemon, "a").await;
    assert!(
        2501 <= began && began + 100 < revision && revision < head,
        "the copy began at {began} and is at {revision}; writes went on to {head}"
    );
    common::imaged_check(&root);

    let restored = Daemon::spawn(&dir.path().join("restored.sock"), &root);
    let mut restored = restored;
    restored.wait_ready();
    for ns in ["a", "b"] {
        let expected = at_revision(&daemon, ns, revision).await;
        let (got, got_revision) = listed(&restored, ns).await;
        assert_eq!(got_revision, revision);
        assert_eq!(got.len(), expected.len(), "namespace {ns}");
        assert!(
            got == expected,
            "namespace {ns} differs from the store at revision {revision}"
        );
    }
    let labelled = restored
        .namespaces()
        .await
        .get(imaged_api::containerd::services::namespaces::v1::GetNamespaceRequest {
            name: "labelled".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .namespace
        .unwrap();
    assert_eq!(labelled.labels.get("team").map(String::as_str), Some("infra"));
    // The revision goes on from the backup's, and a watch from before it
    // is OUT_OF_RANGE: watchers can tell a restore happened.
    let mut seed = restored.seed().await;
    seed.put(in_ns("a", put("after:restore", 1))).await.unwrap();
    let next = seed
        .get(in_ns(
            "a",
            seed::GetRequest {
                name: "after:restore".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.image.unwrap().mod_revision, revision + 1);
    let request = seed::WatchRequest {
        start_revision: Some(revision - 1),
        ..Default::default()
    };
    let refused = match seed.watch(in_ns("a", request)).await {
        Err(status) => status,
        Ok(stream) => stream.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
}

/// A backup of 100 images in two namespaces, and the daemon it came from.
async fn sample_backup(dir: &Path) -> (Daemon, PathBuf) {
    let daemon = Daemon::start();
    let mut seed = daemon.seed().await;
    for n in 0..100u64 {
        let ns = if n % 2 == 0 { "even" } else { "odd" };
        seed.put(in_ns(ns, put(&format!("img:{n}"), n))).await.unwrap();
    }
    let file = dir.join("backup");
    std::fs::write(&file, backup_bytes(&daemon).await).unwrap();
    (daemon, file)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_damaged_backup_is_refused_and_nothing_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, file) = sample_backup(dir.path()).await;
    let whole = std::fs::read(&file).unwrap();
    let len = whole.len();
    // An old store the forced restores must leave as it is.
    let old = dir.path().join("old");
    assert_eq!(restored_revision(&restore(&old, &file, false)), 100);
    let old_report = common::imaged_check(&old);

    let mut damaged: Vec<(String, Vec<u8>)> = Vec::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below as u64) as usize
    };
    let mut cuts = vec![0, 7, 12, 13, 40, len / 2, len - 33, len - 32, len - 1];
    cuts.extend((0..12).map(|_| random(len)));
    for cut in cuts {
        damaged.push((format!("truncated to {cut} bytes"), whole[..cut].to_vec()));
    }
    let mut flips = vec![0, 9, 12, 13, 20, len - 40, len - 1];
    flips.extend((0..16).map(|_| random(len)));
    for at in flips {
        let mut bad = whole.clone();
        bad[at] ^= 1 << (at % 8);
        damaged.push((format!("bit flipped at byte {at}"), bad));
    }
    let mut newer = whole.clone();
    newer[11] = 2;
    damaged.push(("version 2".into(), newer));
    let mut longer = whole.clone();
    longer.extend_from_slice(b"junk");
    damaged.push(("bytes after the end".into(), longer));

    for (what, bytes) in damaged {
        let bad = dir.path().join("bad");
        std::fs::write(&bad, &bytes).unwrap();
        let fresh = dir.path().join("fresh");
        let out = restore(&fresh, &bad, false);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        assert!(
            text(&out).contains("backup file refused at byte"),
            "{what}: {}",
            text(&out)
        );
        assert!(text(&out).contains("nothing was restored"), "{what}: {}", text(&out));
        assert!(
            !fresh.join("sled").exists() && !fresh.join("restore").exists(),
            "{what}"
        );
        std::fs::remove_dir_all(&fresh).unwrap();
        let out = restore(&old, &bad, true);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
    }
    assert_eq!(
        common::imaged_check(&old),
        old_report,
        "a refused restore changed the old store"
    );
    assert!(!old.join("restore").exists());
}

/// Runs `imaged restore --force` with its stall at `point`, kills it inside
/// the stall, and returns once it is dead.
fn kill_restore_at(root: &Path, file: &Path, point: &str) {
    let mut child = Command::new(&*IMAGED)
        .env("IMAGED_CONFIG", "/dev/null")
        .env("IMAGED_TEST_STALL", format!("{point}:20000"))
        .args(["restore", "--force", "--root"])
        .arg(root)
        .arg(file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let stalled = line.contains("stalling");
        seen.push(line);
        if stalled {
            break;
        }
    }
    assert!(seen.last().is_some_and(|l| l.contains(point)), "{seen:#?}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Makes a fresh store in `root` holding 3 images of its own (`old:N` in
/// namespace `even`), and stops its daemon.
async fn old_store(root: &Path, socket: &Path) {
    let _ = std::fs::remove_dir_all(root);
    let mut old = Daemon::spawn(socket, root);
    old.wait_ready();
    let mut seed = old.seed().await;
    for n in 0..3 {
        seed.put(in_ns("even", put(&format!("old:{n}"), n))).await.unwrap();
    }
    assert!(old.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_at_any_step_of_a_restore_leaves_the_old_store_or_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, file) = sample_backup(dir.path()).await;
    let root = dir.path().join("data");
    for (point, new) in [
        ("restore-staged", false),
        ("restore-committed", true),
        ("restore-settle", true),
    ] {
        old_store(&root, &dir.path().join("old.sock")).await;
        kill_restore_at(&root, &file, point);
        let mut after = Daemon::spawn(&dir.path().join("after.sock"), &root);
        after.wait_ready();
        let (even, _) = listed(&after, "even").await;
        let (odd, _) = listed(&after, "odd").await;
        if new {
            assert_eq!((even.len(), odd.len()), (50, 50), "killed at {point}");
            assert!(!even.contains_key("old:0"), "killed at {point}");
        } else {
            assert_eq!((even.len(), odd.len()), (3, 0), "killed at {point}");
        }
        assert!(!root.join("restore").exists(), "killed at {point}");
        assert!(after.terminate().success());
        common::imaged_check(&root);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_whose_client_stops_reading_is_ended_and_lets_the_next_one_run() {
    use imaged_api::imaged::admin::v1::BackupRequest;
    use imaged_api::imaged::admin::v1::admin_client::AdminClient;

    let daemon = Daemon::start_with("info", &["--backup-stall-timeout", "1"]);
    // About 24 MiB of backup: more than the connection's windows and the
    // daemon's queue hold, so a client that stops reading stalls the copy.
    let mut seed = daemon.seed().await;
    let padding = "x".repeat(4000);
    for n in 0..1500u64 {
        let mut request = put(&format!("big:{n}"), n);
        let labels = &mut request.image.as_mut().unwrap().labels;
        for l in 0..4 {
            labels.insert(format!("pad{l}"), padding.clone());
        }
        seed.put(in_ns("default", request)).await.unwrap();
    }
    let mut admin = AdminClient::new(daemon.channel().await);
    let mut stalled = admin.backup(BackupRequest {}).await.unwrap().into_inner();
    stalled.message().await.unwrap().expect("a first chunk");
    // It takes nothing more. After the stall timeout the daemon ends it, and
    // another backup runs to its end.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let next = backup_bytes(&daemon).await;
    assert!(next.len() > 20 << 20, "{} bytes", next.len());
    // Read on, the stalled stream gives what was queued, then ABORTED.
    let status = loop {
        match stalled.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stalled backup ended as if whole"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(status.message().contains("backup-stall-timeout"), "{status:?}");
}

/// A checksummed backup file, as imaged writes them, of one image in
/// `default` at `revision`.
fn crafted_backup(path: &Path, revision: u64) {
    use imaged::backup::file::Writer;
    use imaged_api::imaged::admin::v1::{BackupHeader, BackupImage, BackupRecord, backup_record};
    let header = BackupHeader {
        start_revision: revision,
        created_unix_nanos: 0,
        store_uuid: "crafted".into(),
        imaged_version: "0.1.0".into(),
    };
    let mut writer = Writer::new(std::fs::File::create(path).unwrap(), &header).unwrap();
    let mut image = common::image("old:1", 1);
    image.create_revision = revision;
    image.mod_revision = revision;
    let image = BackupImage {
        namespace: "default".into(),
        image: Some(image),
    };
    writer
        .record(&BackupRecord {
            record: Some(backup_record::Record::Image(image)),
        })
        .unwrap();
    writer.finish(revision).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_revision_never_wraps_a_store_at_its_ceiling_refuses_writes_and_stays_readable() {
    const CEILING: u64 = 1 << 63;
    let dir = tempfile::tempdir().unwrap();
    // A file whose revision leaves no room is refused, and nothing is made.
    for revision in [u64::MAX, u64::MAX - 1, CEILING] {
        let file = dir.path().join(format!("at-{revision}"));
        crafted_backup(&file, revision);
        let root = dir.path().join(format!("root-{revision}"));
        let out = restore(&root, &file, false);
        assert!(!out.status.success(), "restored at {revision}: {}", text(&out));
        assert!(text(&out).contains("leaves no room"), "{}", text(&out));
        assert!(std::fs::read_dir(&root).map_or(true, |mut d| d.next().is_none()));
    }
    // One below the ceiling: restored; one write takes the ceiling, the
    // next is refused naming it, and the store stays readable, checks clean
    // and starts again.
    let file = dir.path().join("below");
    crafted_backup(&file, CEILING - 1);
    let root = dir.path().join("root");
    assert_eq!(restored_revision(&restore(&root, &file, false)), CEILING - 1);
    let socket = dir.path().join("run/imaged.sock");
    let mut daemon = Daemon::spawn(&socket, &root);
    daemon.wait_ready();
    let mut client = daemon.seed().await;
    client.put(put("new:1", 2)).await.unwrap();
    let got = client
        .get(seed::GetRequest { name: "new:1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.image.unwrap().mod_revision, CEILING);
    let refused = client.put(put("new:2", 3)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("2^63"), "{refused:?}");
    let refused = client
        .delete(seed::DeleteRequest {
            name: "old:1".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(refused.unwrap_err().code(), tonic::Code::ResourceExhausted);
    let names: Vec<String> = common::names(&mut client, "default").await.into_iter().collect();
    assert_eq!(names, ["new:1", "old:1"]);
    drop(client);
    assert!(daemon.terminate().success());
    common::imaged_check(&root);
    daemon.restart();
    daemon.wait_ready();
    let mut client = daemon.seed().await;
    let got = client
        .get(seed::GetRequest { name: "old:1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.image.unwrap().mod_revision, CEILING - 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_power_cut_at_any_step_of_a_restore_or_after_it_leaves_the_old_store_or_the_new() {
    if !cutfs::can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, file) = sample_backup(dir.path()).await;
    let mut fs = cutfs::Mount::start(&common::binary(None, "cutfs"), &dir.path().join("disk"));
    let root = fs.mountpoint.join("data");
    // Each step in turn with each of cutfs's cut modes; "done" cuts the
    // power once `imaged restore` has said it restored, which it may say
    // only once the new store is durable.
    let steps = [
        ("restore-staged", false),
        ("restore-committed", true),
        ("restore-settle", true),
        ("done", true),
    ];
    let modes = ["cut", "cut subset 7", "cut prefix 11", "cut torn 13", "cut metadata 17"];
    for (i, (point, new)) in steps.iter().flat_map(|s| std::iter::repeat_n(*s, 2)).enumerate() {
        let mode = modes[i % modes.len()];
        old_store(&root, &dir.path().join("old.sock")).await;
        if point == "done" {
            assert!(restore(&root, &file, true).status.success());
        } else {
            kill_restore_at(&root, &file, point);
        }
        let answer = fs.command(mode);
        assert!(answer.starts_with("ok"), "{mode}: {answer}");
        let context = format!("power cut ({mode}) at {point}");
        let mut after = Daemon::spawn(&dir.path().join("after.sock"), &root);
        if let Err(status) = after.ready_or_exit() {
            panic!("{context}: the daemon did not start ({status}):\n{}", after.log_text());
        }
        let (even, _) = listed(&after, "even").await;
        let (odd, _) = listed(&after, "odd").await;
        if new {
            assert_eq!((even.len(), odd.len()), (50, 50), "{context}");
        } else {
            assert_eq!((even.len(), odd.len()), (3, 0), "{context}");
        }
        assert!(!root.join("restore").exists(), "{context}");
        assert!(after.terminate().success(), "{context}");
        common::imaged_check(&root);
    }
}

/// `imagectl backup -o FILE` onto a disk that then loses power: once it
/// has said it wrote the backup, FILE is there, whole, and restores.
#[tokio::test(flavor = "multi_thread")]
async fn a_backup_file_survives_a_power_cut() {
    if !cutfs::can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (daemon, expected) = sample_backup(dir.path()).await;
    let mut fs = cutfs::Mount::start(&common::binary(None, "cutfs"), &dir.path().join("disk"));
    let file = fs.mountpoint.join("imaged.backup");
    let out = tokio::task::block_in_place(|| common::imagectl(&daemon, &["backup", "-o", file.to_str().unwrap()]));
    assert!(out.status.success(), "{}", common::output_text(&out));
    let answer = fs.command("cut");
    assert!(answer.starts_with("ok"), "{answer}");
    let kept = std::fs::metadata(&file).map(|m| m.len());
    let whole = std::fs::metadata(&expected).unwrap().len();
    assert_eq!(
        kept.ok(),
        Some(whole),
        "after a power cut ({answer}), the backup imagectl wrote"
    );
    let restored = restore(&dir.path().join("restored"), &file, false);
    assert!(restored.status.success(), "{}", common::output_text(&restored));
}
