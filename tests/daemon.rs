//! End-to-end tests of the daemon as a process: flags, socket safety, its
//! allocator, refusing a second daemon, replacing a stale socket, start-up
//! log, format version, and clean shutdown that keeps every acknowledged
//! write.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;

use common::{Daemon, IMAGED, put};
use imaged_api::containerd::v1::{GetRequest, ListRequest};

#[test]
fn help_and_version_work() {
    let out = Command::new(&*IMAGED).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--socket") && help.contains("--root"), "{help}");

    let out = Command::new(&*IMAGED).arg("--version").output().unwrap();
    assert!(out.status.success());
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(&format!("imaged {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(version.contains("git "), "{version}");

    let out = Command::new(&*IMAGED).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn socket_is_0660_in_a_created_directory_and_logged_at_start() {
    let daemon = Daemon::start();
    let meta = fs::metadata(&daemon.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let log = daemon.log_text();
    let ready = log.lines().find(|l| l.contains("imaged ready")).expect(&log);
    assert!(ready.contains(env!("CARGO_PKG_VERSION")), "{ready}");
    assert!(ready.contains(&daemon.socket.display().to_string()), "{ready}");
    assert!(ready.contains(&daemon.root.display().to_string()), "{ready}");
    assert!(ready.contains("images=0"), "{ready}");
}

#[tokio::test]
async fn the_daemon_allocates_through_jemalloc_with_its_own_options() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    client.put(put("a", 1)).await.unwrap();
    // jemalloc starts its background thread only when it is the allocator
    // and has read the daemon's options (`background_thread:true`), which
    // return freed pages to the kernel while the daemon idles.
    let threads = daemon.thread_names();
    assert!(threads.iter().any(|t| t == "jemalloc_bg_thd"), "{threads:?}");
}

#[tokio::test]
async fn a_second_daemon_on_the_same_socket_is_refused_and_takes_nothing_over() {
    let first = Daemon::start();
    let mut client = first.seed().await;
    client.put(put("a", 1)).await.unwrap();

    let other_root = first.root.with_file_name("other-data");
    let mut second = Daemon::spawn(&first.socket, &other_root);
    let status = second.wait_exit();
    assert!(!status.success());
    let log = second.log_text();
    assert!(log.contains("another daemon is serving on"), "{log}");

    // A refused start creates nothing: not the data directory it was given.
    assert!(
        !other_root.exists(),
        "the refused daemon created {}",
        other_root.display()
    );
    assert_eq!(
        log.matches("another daemon is serving on").count(),
        1,
        "said once: {log}"
    );

    // The first daemon still owns its socket and serves.
    client.get(GetRequest { name: "a".into() }).await.unwrap();
    let fresh = first
        .seed()
        .await
        .list(ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fresh.images.len(), 1);
}

#[tokio::test]
async fn a_second_daemon_on_the_same_data_dir_is_refused_before_binding() {
    let first = Daemon::start();
    let other_socket = first.socket.with_file_name("other.sock");
    let mut second = Daemon::spawn(&other_socket, &first.root);
    let status = second.wait_exit();
    assert!(!status.success());
    let log = second.log_text();
    assert!(log.contains("is in use by another imaged"), "{log}");
    assert!(!other_socket.exists(), "the refused daemon created its socket");
    first.seed().await.put(put("still-serving", 1)).await.unwrap();
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("imaged.sock");
    // A socket file nobody listens on, as a killed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());

    let mut daemon = Daemon::spawn(&socket, &dir.path().join("data"));
    daemon.wait_ready();
    daemon.seed().await.put(put("a", 1)).await.unwrap();
    assert!(daemon.log_text().contains("replacing stale socket"));
}

#[test]
fn a_file_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("imaged.sock");
    fs::write(&path, "precious").unwrap();
    let mut daemon = Daemon::spawn(&path, &dir.path().join("data"));
    assert!(!daemon.wait_exit().success());
    assert!(daemon.log_text().contains("is not a socket"));
    assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
}

#[test]
fn a_data_dir_from_a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("FORMAT"), "imaged-format 7\n").unwrap();
    let socket = dir.path().join("imaged.sock");
    let mut daemon = Daemon::spawn(&socket, &root);
    assert!(!daemon.wait_exit().success());
    let log = daemon.log_text();
    assert!(log.contains("format version 7, newer than the 5"), "{log}");
    assert!(!socket.exists());
    assert_eq!(fs::read_to_string(root.join("FORMAT")).unwrap(), "imaged-format 7\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_calls_flushes_removes_the_socket_and_exits_0() {
    let mut daemon = Daemon::start();
    let channel = daemon.channel().await;

    // Writers keep putting while SIGTERM arrives; each remembers what was
    // acknowledged.
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let mut client = imaged_api::containerd::v1::images_client::ImagesClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..10_000u64 {
                let name = format!("w{w}/{i}");
                match client.put(put(&name, i + 1)).await {
                    Ok(_) => acked.push(name),
                    Err(status) => {
                        // Refused or cut off by the shutdown: never a wrong
                        // answer. A request sent after the daemon's GOAWAY is
                        // reported by the client's transport (INTERNAL with a
                        // transport source); HTTP/2 guarantees the daemon never
                        // processed it. An INTERNAL from the daemon itself has
                        // no source and fails here.
                        let from_transport = std::error::Error::source(&status).is_some();
                        assert!(
                            matches!(
                                status.code(),
                                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                            ) || (status.code() == tonic::Code::Internal && from_transport),
                            "{status:?}"
                        );
                        break;
                    }
                }
            }
            acked
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let status = tokio::task::block_in_place(|| daemon.terminate());
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
    assert!(!daemon.socket.exists(), "socket left behind");
    let log = daemon.log_text();
    assert!(log.contains("signal=\"SIGTERM\""), "{log}");
    assert!(log.contains("imaged stopped"), "{log}");

    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(!acked.is_empty());

    daemon.restart();
    let mut client = daemon.seed().await;
    let stored: std::collections::HashSet<String> = client
        .list(ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images
        .into_iter()
        .map(|i| i.name)
        .collect();
    for name in &acked {
        assert!(stored.contains(name), "acknowledged {name} lost across shutdown");
    }
    let ready = daemon.log_text();
    assert!(ready.contains(&format!("images={}", stored.len())), "{ready}");
}
