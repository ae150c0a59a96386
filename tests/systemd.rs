//! imaged as systemd runs it, without systemd as PID 1: the units checked
//! by `systemd-analyze`, socket activation by `systemd-socket-activate`, and
//! the notices (READY, STATUS, WATCHDOG, STOPPING) read from a datagram
//! socket given as `NOTIFY_SOCKET`, as the service manager reads them.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{IMAGED, channel, have_tool, in_ns, put};
use imaged_api::containerd::v1 as seed;

fn units() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../systemd")
}

#[test]
fn the_units_verify_clean_and_the_service_is_hardened() {
    if !have_tool("systemd-analyze", "systemd") {
        return;
    }
    // verify checks that ExecStart= exists: the copy it checks runs this
    // build's binary instead of the installed path, and differs in nothing
    // else.
    let dir = tempfile::tempdir().unwrap();
    let service = std::fs::read_to_string(units().join("imaged.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/local/bin/imaged "));
    let here = service.replace("/usr/local/bin/imaged", IMAGED.to_str().unwrap());
    std::fs::write(dir.path().join("imaged.service"), here).unwrap();
    std::fs::copy(units().join("imaged.socket"), dir.path().join("imaged.socket")).unwrap();
    let out = Command::new("systemd-analyze")
        .current_dir(dir.path())
        .args(["verify", "./imaged.service", "./imaged.socket"])
        .output()
        .unwrap();
    let said = common::output_text(&out);
    // verify exits 0 on warnings: anything it prints is a failure.
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(units().join("imaged.service"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for imaged.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{report}");
    println!("systemd-analyze security: exposure {exposure}");

    let sysusers = std::fs::read_to_string(units().join("imaged.sysusers")).unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u imaged ")), "{sysusers}");
}

/// A daemon started by `systemd-socket-activate` on a socket it made.
struct Activated {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Activated {
    fn start(extra: &[&str]) -> Activated {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("imaged.sock");
        let log = dir.path().join("imaged.log");
        let child = Command::new("systemd-socket-activate")
            .args(extra)
            .arg("--listen")
            .arg(&socket)
            .arg("-E")
            .arg("IMAGED_CONFIG=/dev/null")
            .arg(&*IMAGED)
            .arg("--root")
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "systemd-socket-activate made no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Activated {
            child,
            socket,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn socket_activation_serves_a_client_that_connected_before_the_daemon_started() {
    if !have_tool("systemd-socket-activate", "systemd") {
        return;
    }
    let mut activated = Activated::start(&[]);
    // imaged is not running yet: systemd-socket-activate starts it on this
    // first connection, which waits in the socket's queue meanwhile.
    assert!(!activated.log().contains("imaged ready"));
    let mut client = seed::images_client::ImagesClient::new(channel(&activated.socket).await);
    client.put(in_ns("default", put("early:1", 1))).await.unwrap();
    let got = client
        .get(in_ns("default", seed::GetRequest { name: "early:1".into() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.image.unwrap().name, "early:1");
    let log = activated.log();
    assert!(log.contains("imaged ready"), "{log}");
    assert!(log.contains(&activated.socket.display().to_string()), "{log}");
    drop(client);

    // On SIGTERM it stops cleanly, and leaves the socket it did not make.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(activated.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = activated.child.wait().unwrap();
    assert!(status.success(), "{status}:\n{}", activated.log());
    assert!(activated.socket.exists(), "imaged removed systemd's socket");
}

#[test]
fn a_passed_socket_that_is_not_a_listening_stream_is_refused_clearly() {
    if !have_tool("systemd-socket-activate", "systemd") {
        return;
    }
    let mut activated = Activated::start(&["--datagram"]);
    // A datagram on it starts the daemon.
    let sender = UnixDatagram::unbound().unwrap();
    sender.send_to(b"x", &activated.socket).unwrap();
    let status = activated.child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{}", activated.log());
    let log = activated.log();
    assert!(
        log.contains("the socket systemd passed") && log.contains("not a stream socket"),
        "{log}"
    );
    assert!(!activated.socket.parent().unwrap().join("data").exists(), "{log}");
}

#[test]
fn notices_say_ready_status_watchdog_and_stopping_in_order_and_a_stuck_writer_stops_the_pings() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let socket = dir.path().join("run/imaged.sock");
    let log = dir.path().join("imaged.log");
    let mut child = KillOnDrop(
        Command::new(&*IMAGED)
            .arg("--socket")
            .arg(&socket)
            .arg("--root")
            .arg(dir.path().join("data"))
            .env("IMAGED_CONFIG", "/dev/null")
            .env("NOTIFY_SOCKET", &notify)
            // Pings every 150 ms, each given 150 ms to be answered.
            .env("WATCHDOG_USEC", "300000")
            // The first journaled batch waits 2 s: a disk that hangs.
            .env("IMAGED_TEST_STALL", "journal:2000")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut notices: Vec<Notice> = Vec::new();
    let read = |notices: &mut Vec<Notice>, until: &dyn Fn(&[Notice]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        while !until(notices) {
            assert!(Instant::now() < deadline, "notices so far: {notices:?}");
            if let Ok(n) = listener.recv(&mut buf) {
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    notices.push((Instant::now(), line.to_string()));
                }
            }
        }
    };
    let count = |notices: &[Notice], what: &str| notices.iter().filter(|(_, n)| n == what).count();
    read(&mut notices, &|n| count(n, "WATCHDOG=1") >= 3);

    // A write that hangs in the journal stops the pings while it hangs.
    let stuck_at = Instant::now();
    let writer = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let mut client = seed::images_client::ImagesClient::new(channel(&socket).await);
                client.put(in_ns("default", put("slow:1", 1))).await.unwrap();
            })
        })
    };
    read(&mut notices, &|_| stuck_at.elapsed() > Duration::from_millis(1800));
    let during: Vec<&Notice> = notices
        .iter()
        .filter(|(at, n)| *at > stuck_at + Duration::from_millis(400) && n == "WATCHDOG=1")
        .collect();
    assert!(during.is_empty(), "pings while the writer was stuck: {notices:?}");
    writer.join().unwrap();
    let before = count(&notices, "WATCHDOG=1");
    read(&mut notices, &|n| count(n, "WATCHDOG=1") >= before + 2);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    read(&mut notices, &|n| count(n, "STOPPING=1") >= 1);
    assert!(
        child.0.wait().unwrap().success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );

    let lines: Vec<&str> = notices.iter().map(|(_, n)| n.as_str()).collect();
    let first = |what: &str| lines.iter().position(|l| l.starts_with(what)).unwrap_or(usize::MAX);
    let opening = first("STATUS=opening the store");
    let ready = first("READY=1");
    let serving = first("STATUS=serving ");
    let watchdog = first("WATCHDOG=1");
    let stopping = first("STOPPING=1");
    assert!(
        opening < ready && ready < watchdog && serving < stopping && watchdog < stopping && stopping < usize::MAX,
        "{lines:?}"
    );
    assert!(lines[stopping + 1..].iter().all(|l| *l != "READY=1"), "{lines:?}");
}

/// A notice as read, with when it came.
type Notice = (Instant, String);

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every syscall group `systemd-analyze syscall-filter` knows, by name,
/// with its members (syscalls and nested groups).
fn syscall_groups() -> std::collections::HashMap<String, Vec<String>> {
    let out = Command::new("systemd-analyze").arg("syscall-filter").output().unwrap();
    let mut groups = std::collections::HashMap::new();
    let mut current: Option<String> = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(name) = line.strip_prefix('@') {
            current = Some(format!("@{}", name.trim()));
            groups.insert(format!("@{}", name.trim()), Vec::new());
        } else if let (Some(group), Some(member)) = (&current, line.strip_prefix("    ")) {
            let member = member.trim();
            if !member.starts_with('#') && !member.is_empty() {
                groups.get_mut(group).unwrap().push(member.to_string());
            }
        }
    }
    groups
}

fn expand(
    groups: &std::collections::HashMap<String, Vec<String>>,
    name: &str,
    into: &mut std::collections::BTreeSet<String>,
) {
    for member in groups.get(name).unwrap_or_else(|| panic!("no syscall group {name}")) {
        if member.starts_with('@') {
            expand(groups, member, into);
        } else {
            into.insert(member.clone());
        }
    }
}

/// The service's SystemCallFilter= (with its ~ lines) as the set of
/// syscalls it allows.
fn allowed_syscalls() -> std::collections::BTreeSet<String> {
    let groups = syscall_groups();
    let service = std::fs::read_to_string(units().join("imaged.service")).unwrap();
    let mut allowed = std::collections::BTreeSet::new();
    let mut denied = std::collections::BTreeSet::new();
    for filter in service.lines().filter_map(|l| l.strip_prefix("SystemCallFilter=")) {
        let (into, list) = match filter.strip_prefix('~') {
            Some(list) => (&mut denied, list),
            None => (&mut allowed, filter),
        };
        for item in list.split_whitespace() {
            if item.starts_with('@') {
                expand(&groups, item, into);
            } else {
                into.insert(item.to_string());
            }
        }
    }
    allowed.difference(&denied).cloned().collect()
}

#[tokio::test]
async fn every_syscall_imaged_makes_passes_the_services_filter() {
    if !have_tool("systemd-analyze", "systemd") || !have_tool("strace", "strace") {
        return;
    }
    let allowed = allowed_syscalls();
    assert!(allowed.contains("openat") && !allowed.contains("setuid"), "{allowed:?}");
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let notify = dir.path().join("notify.sock");
    // Bound and never read, as a hung service manager's: notices must not
    // stall the daemon once its buffer is full.
    let _listener = UnixDatagram::bind(&notify).unwrap();
    let socket = dir.path().join("run/imaged.sock");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "log_level = \"info\"\n").unwrap();
    // What a day of service does: start and replay, writes enough for sled
    // to be reopened (1 MiB), reads, a stream, a watch, the watchdog and
    // status notices, a reload, and a stop.
    let mut child = KillOnDrop(
        Command::new("strace")
            .args(["-f", "-qq", "-o"])
            .arg(&trace)
            .arg(&*IMAGED)
            .args(["--sled-snapshot-mb", "1", "--config"])
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .arg("--root")
            .arg(dir.path().join("data"))
            .env("NOTIFY_SOCKET", &notify)
            .env("WATCHDOG_USEC", "200000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "imaged did not start under strace");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut client = seed::images_client::ImagesClient::new(channel(&socket).await);
    let mut watch = client
        .watch(in_ns("default", seed::WatchRequest::default()))
        .await
        .unwrap()
        .into_inner();
    for round in 0..40u64 {
        let puts = (0..50u64).map(|i| {
            let mut client = client.clone();
            async move {
                let mut request = put(
                    &format!("registry.example/app-{round}/image-{i}:{}", "v".repeat(200)),
                    i,
                );
                request
                    .image
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert("pad".into(), "x".repeat(400));
                client.put(in_ns("default", request)).await.unwrap();
            }
        });
        futures_util::future::join_all(puts).await;
    }
    assert!(watch.message().await.unwrap().is_some());
    client
        .list(in_ns("default", seed::ListRequest::default()))
        .await
        .unwrap();
    let mut stream = client
        .list_stream(in_ns("default", seed::ListRequest::default()))
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    // strace's pid is not imaged's: signal imaged, strace's child.
    let imaged_pid = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse::<i32>()
        .unwrap();
    let imaged_pid = nix::unistd::Pid::from_raw(imaged_pid);
    nix::sys::signal::kill(imaged_pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop((watch, client));
    nix::sys::signal::kill(imaged_pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.0.wait().unwrap().success());

    let trace = std::fs::read_to_string(&trace).unwrap();
    let made: std::collections::BTreeSet<String> = trace
        .lines()
        .filter_map(|line| {
            let call = line.split_once(' ')?.1.trim_start();
            let name = &call[..call.find('(')?];
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                .then(|| name.to_string())
        })
        .collect();
    assert!(made.contains("fdatasync") && made.contains("accept4"), "{made:?}");
    assert!(trace.contains("reopen") || made.len() > 20);
    let refused: Vec<&String> = made.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(
        refused.is_empty(),
        "imaged made syscalls the unit's filter refuses: {refused:?}"
    );
}

#[tokio::test]
async fn a_long_journal_replay_asks_the_service_manager_for_more_time() {
    // Acknowledged writes left in the journal by a kill.
    let mut daemon = common::Daemon::start();
    let mut client = seed::images_client::ImagesClient::new(channel(&daemon.socket).await);
    for n in 0..3 {
        client
            .put(in_ns("default", put(&format!("replayed:{n}"), n)))
            .await
            .unwrap();
    }
    drop(client);
    daemon.kill();

    // Each entry's replay held for 6 s: the open takes longer than one
    // extension period (10 s), as a big store's does.
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut child = KillOnDrop(
        Command::new(&*IMAGED)
            .arg("--socket")
            .arg(&daemon.socket)
            .arg("--root")
            .arg(&daemon.root)
            .env("IMAGED_CONFIG", "/dev/null")
            .env("NOTIFY_SOCKET", &notify)
            .env("IMAGED_TEST_STALL", "replay:6000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 4096];
    while !lines.iter().any(|l| l == "READY=1") {
        assert!(Instant::now() < deadline, "{lines:?}");
        if let Ok(n) = listener.recv(&mut buf) {
            lines.extend(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_string));
        }
    }
    let extend = lines.iter().position(|l| l.starts_with("EXTEND_TIMEOUT_USEC="));
    let ready = lines.iter().position(|l| l == "READY=1");
    assert!(extend.is_some() && extend < ready, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l == "STATUS=opening the store (replaying the journal)"),
        "{lines:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.0.wait().unwrap().success());
}
