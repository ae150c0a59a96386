//! Evidence that a write reaches stable storage before its answer: the
//! daemon runs under strace, and for a Put, a Create, an Update and a
//! Delete, an fdatasync of the journal completes after the call was sent
//! and before the daemon starts writing the answer to the socket.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{descriptor, in_ns};
use imaged_api::containerd::services::images::v1 as ctrd;
use imaged_api::containerd::v1 as seed;

/// strace's view of one system call: when it ended (or started, for one
/// that strace shows unfinished), what it was, and on which file.
#[derive(Debug)]
struct Call {
    pid: String,
    at: f64,
    line: String,
}

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn have_strace() -> bool {
    let ok = Command::new("strace")
        .args(["-f", "-o", "/dev/null", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI must run strace (see .ci/run)");
        common::skipped("strace cannot run here");
    }
    ok
}

fn spawn_traced(socket: &Path, root: &Path, trace: &Path) -> Child {
    Command::new("strace")
        .args([
            "-f",
            "-ttt",
            "-yy",
            "-e",
            "trace=fdatasync,fsync,write,writev,sendmsg,sendto",
            "-o",
        ])
        .arg(trace)
        .arg(&*common::IMAGED)
        .arg("--socket")
        .arg(socket)
        .arg("--root")
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace")
}

fn calls(trace: &Path) -> Vec<Call> {
    std::fs::read_to_string(trace)
        .unwrap()
        .lines()
        .filter_map(|line| {
            // "PID   SECONDS.MICROS call(...) = result"
            let (pid, rest) = line.trim_start().split_once(char::is_whitespace)?;
            let (at, call) = rest.trim_start().split_once(char::is_whitespace)?;
            Some(Call {
                pid: pid.to_owned(),
                at: at.parse().ok()?,
                line: call.to_owned(),
            })
        })
        .collect()
}

/// Whether `calls[i]` completes a sync of the journal: a whole
/// `fdatasync(N</…/journal>) = 0`, or the resumption of one this thread
/// began.
fn is_journal_sync(calls: &[Call], i: usize) -> bool {
    let call = &calls[i];
    if call.line.starts_with("fdatasync(") {
        return call.line.contains("/journal>") && call.line.ends_with("= 0");
    }
    if call.line.starts_with("<... fdatasync resumed>") && call.line.ends_with("= 0") {
        let began = calls[..i]
            .iter()
            .rev()
            .find(|c| c.pid == call.pid && c.line.starts_with("fdatasync("));
        return began.is_some_and(|c| c.line.contains("/journal>") && c.line.contains("unfinished"));
    }
    false
}

/// When the daemon first wrote to a client after `at`, and whether a sync
/// of the journal completed between `at` and then.
fn synced_before_answer(calls: &[Call], at: f64) -> (f64, bool) {
    let answer = calls
        .iter()
        .find(|c| c.at >= at && is_answer(c))
        .unwrap_or_else(|| panic!("no answer written after {at}"))
        .at;
    let synced = (0..calls.len()).any(|i| calls[i].at >= at && calls[i].at <= answer && is_journal_sync(calls, i));
    (answer, synced)
}

/// The daemon starting to write to a client's connection.
fn is_answer(call: &Call) -> bool {
    let write = ["write(", "writev(", "sendmsg(", "sendto("]
        .iter()
        .any(|w| call.line.starts_with(w));
    write && call.line.contains("UNIX-STREAM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_is_synced_to_the_journal_before_it_is_answered() {
    if !have_strace() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (socket, root, trace) = (
        dir.path().join("imaged.sock"),
        dir.path().join("data"),
        dir.path().join("trace"),
    );
    let mut child = spawn_traced(&socket, &root, &trace);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "imaged under strace did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let channel = common::channel(&socket).await;
    let mut seed = seed::images_client::ImagesClient::new(channel.clone());
    let mut containerd = ctrd::images_client::ImagesClient::new(channel);
    // A read first, so the connection's own set-up writes are behind us.
    let _ = seed.get(seed::GetRequest { name: "warm".into() }).await;

    let mut sent = Vec::new();
    sent.push(("Put", epoch_secs(SystemTime::now())));
    seed.put(common::put("a", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let image = |n| ctrd::Image {
        name: "b".into(),
        target: Some(descriptor(n)),
        ..Default::default()
    };
    sent.push(("Create", epoch_secs(SystemTime::now())));
    let create = ctrd::CreateImageRequest {
        image: Some(image(2)),
        source_date_epoch: None,
    };
    containerd.create(in_ns("default", create)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    sent.push(("Update", epoch_secs(SystemTime::now())));
    let update = ctrd::UpdateImageRequest {
        image: Some(image(3)),
        ..Default::default()
    };
    containerd.update(in_ns("default", update)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    sent.push(("Delete", epoch_secs(SystemTime::now())));
    seed.delete(seed::DeleteRequest {
        name: "a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let read_at = epoch_secs(SystemTime::now());
    seed.get(seed::GetRequest { name: "b".into() }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SIGTERM to imaged itself (strace's child); strace ends with it.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id())).unwrap();
    let imaged: i32 = children
        .split_whitespace()
        .next()
        .expect("imaged under strace")
        .parse()
        .unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(imaged), nix::sys::signal::SIGTERM).unwrap();
    child.wait().unwrap();

    let calls = calls(&trace);
    assert!(
        calls.iter().any(|c| c.line.contains("/journal>")),
        "no journal sync traced at all"
    );
    for (op, at) in sent {
        let (answer, synced) = synced_before_answer(&calls, at);
        assert!(
            synced,
            "{op}: the answer was written at {answer} with no journal sync since {at}:\n{}",
            calls
                .iter()
                .filter(|c| c.at >= at && c.at <= answer + 0.01)
                .map(|c| format!("{:.6} {}", c.at, c.line))
                .collect::<Vec<_>>()
                .join("\n")
        );
        println!("{op}: journal synced, then answered at {answer:.6}");
    }
    // The control: a read is answered with no sync at all, so the check
    // tells the two apart.
    let (_, synced) = synced_before_answer(&calls, read_at);
    assert!(
        !synced,
        "a Get was answered after a journal sync: the trace cannot tell writes from reads"
    );
}
