//! Access control by peer credentials, end to end: clients run as other
//! uids and gids (`setpriv`, as root) against a daemon whose socket every
//! user may connect to, through the seed API (imagectl) and containerd's
//! (`ctr`), with per-namespace grants and a SIGHUP reload that changes the
//! policy. CI runs as root; elsewhere the tests say so and return.

mod common;

use std::path::Path;
use std::process::Output;

use common::{Daemon, IMAGED, as_user, digest, output_text as text};

/// Everyone reads; uid 1000 writes only namespace `user-1000`; gid 2000
/// writes everywhere.
const POLICY: &str = r#"
socket_mode = "0666"

[[access]]
role = "reader"
everyone = true

[[access]]
role = "writer"
uids = [1000]
namespaces = ["user-1000"]

[[access]]
role = "writer"
gids = [2000]
"#;

fn imagectl(daemon: &Daemon, uid: u32, gid: u32, args: &[&str]) -> Output {
    let mut all = vec!["--address", daemon.socket.to_str().unwrap()];
    all.extend_from_slice(args);
    as_user(uid, gid, &common::binary(None, "imagectl"), &all)
}

fn put(daemon: &Daemon, uid: u32, gid: u32, ns: &str, name: &str) -> Output {
    let d = digest(7);
    imagectl(
        daemon,
        uid,
        gid,
        &[
            "-n",
            ns,
            "images",
            "put",
            name,
            "--digest",
            &d,
            "--size",
            "10",
            "--media-type",
            "application/vnd.oci.image.manifest.v1+json",
        ],
    )
}

fn ctr(daemon: &Daemon, uid: u32, gid: u32, ns: &str, args: &[&str]) -> Output {
    let mut all = vec!["--address", daemon.socket.to_str().unwrap(), "--namespace", ns];
    all.extend_from_slice(args);
    as_user(uid, gid, Path::new("/usr/bin/ctr"), &all)
}

fn denied(out: &Output, uid: u32, method: &str) {
    let text = text(out);
    assert!(!out.status.success(), "allowed: {text}");
    assert!(
        text.contains("permission denied") && text.contains(&format!("uid {uid}")) && text.contains(method),
        "{text}"
    );
}

fn allowed(out: &Output) -> String {
    assert!(out.status.success(), "refused: {}", text(out));
    text(out)
}

fn start(policy: &str) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, policy).unwrap();
    let daemon = Daemon::start_with("info", &["--config", config.to_str().unwrap()]);
    common::open_path_to_all(&daemon.socket);
    (daemon, dir)
}

#[test]
fn readers_read_writers_write_where_granted_on_both_apis() {
    if !common::is_root() || !common::have_ctr() {
        return;
    }
    let (daemon, _config) = start(POLICY);
    // root (the test itself) is an admin: it seeds an image.
    allowed(&put(&daemon, 0, 0, "default", "seeded:1"));

    // A stranger reads through everyone's grant, on both APIs, and writes
    // nothing.
    let ls = allowed(&imagectl(&daemon, 3000, 3000, &["images", "ls", "-q"]));
    assert!(ls.contains("seeded:1"), "{ls}");
    denied(
        &put(&daemon, 3000, 3000, "default", "x:1"),
        3000,
        "containerd.v1.Images/Put",
    );
    let ls = allowed(&ctr(&daemon, 3000, 3000, "default", &["images", "ls", "-q"]));
    assert!(ls.contains("seeded:1"), "{ls}");
    // ctr takes a lease before it tags: that first write is refused.
    denied(
        &ctr(&daemon, 3000, 3000, "default", &["images", "tag", "seeded:1", "copy:1"]),
        3000,
        "Leases/Create",
    );
    denied(
        &ctr(&daemon, 3000, 3000, "default", &["images", "rm", "seeded:1"]),
        3000,
        "Images/Delete",
    );
    denied(
        &ctr(&daemon, 3000, 3000, "default", &["namespaces", "create", "x"]),
        3000,
        "Namespaces/Create",
    );
    allowed(&ctr(&daemon, 3000, 3000, "default", &["version"]));
    // Health and status are open to readers; a backup and a compaction
    // need admin.
    assert!(allowed(&imagectl(&daemon, 3000, 3000, &["health"])).contains("SERVING"));
    assert!(allowed(&imagectl(&daemon, 3000, 3000, &["status", "-o", "json"])).contains("\"revision\""));
    denied(
        &imagectl(&daemon, 3000, 3000, &["backup"]),
        3000,
        "imaged.admin.v1.Admin/Backup",
    );
    denied(
        &imagectl(&daemon, 3000, 3000, &["compact"]),
        3000,
        "imaged.admin.v1.Admin/Compact",
    );

    // uid 1000 writes its own namespace only, on both APIs.
    allowed(&put(&daemon, 1000, 1000, "user-1000", "mine:1"));
    denied(
        &put(&daemon, 1000, 1000, "default", "mine:1"),
        1000,
        "in namespace default",
    );
    allowed(&ctr(
        &daemon,
        1000,
        1000,
        "user-1000",
        &["images", "tag", "mine:1", "mine:2"],
    ));
    denied(
        &ctr(&daemon, 1000, 1000, "default", &["images", "tag", "seeded:1", "mine:3"]),
        1000,
        "in namespace default",
    );

    // gid 2000 writes everywhere, namespaces included.
    allowed(&put(&daemon, 4000, 2000, "default", "team:1"));
    allowed(&ctr(
        &daemon,
        4000,
        2000,
        "default",
        &["namespaces", "create", "team-ns"],
    ));

    // Nothing refused was written.
    let names = allowed(&imagectl(&daemon, 0, 0, &["images", "ls", "-q"]));
    assert!(
        !names.contains("x:1") && !names.contains("copy:1") && !names.contains("mine:"),
        "{names}"
    );
    assert!(names.contains("seeded:1") && names.contains("team:1"), "{names}");

    // Refusals are logged within each uid's burst (tests/fairness.rs floods
    // it).
    denied(&put(&daemon, 3000, 3000, "default", "x:2"), 3000, "Put");
    let log = daemon.log_text();
    let refusals = log
        .lines()
        .filter(|l| l.contains("refused a call") && l.contains("uid=3000") && l.contains("containerd.v1.Images/Put"))
        .count();
    assert_eq!(refusals, 2, "{log}");
}

#[test]
fn sighup_reloads_the_policy_and_refuses_a_bad_file_keeping_the_old() {
    if !common::is_root() {
        return;
    }
    let (mut daemon, config_dir) = start(POLICY);
    let config = config_dir.path().join("config.toml");
    allowed(&imagectl(&daemon, 3000, 3000, &["images", "ls"]));

    // Readers are no longer everyone: the stranger is refused from now on,
    // the uid still granted is not.
    std::fs::write(&config, POLICY.replace("everyone = true", "uids = [1000]")).unwrap();
    daemon.send(nix::sys::signal::Signal::SIGHUP);
    wait_for_log(&daemon, "configuration reloaded");
    denied(
        &imagectl(&daemon, 3000, 3000, &["images", "ls"]),
        3000,
        "containerd.v1.Images/List",
    );
    allowed(&imagectl(&daemon, 1000, 1000, &["images", "ls"]));

    // A bad file is refused whole; the policy in force stays.
    std::fs::write(&config, "no_such_setting = 1\n").unwrap();
    daemon.send(nix::sys::signal::Signal::SIGHUP);
    wait_for_log(&daemon, "reload refused");
    assert!(daemon.log_text().contains("no_such_setting"), "{}", daemon.log_text());
    allowed(&put(&daemon, 1000, 1000, "user-1000", "still:1"));
    denied(&imagectl(&daemon, 3000, 3000, &["images", "ls"]), 3000, "List");

    // A reload that would open writing to everyone on a 0666 socket is
    // refused too.
    std::fs::write(&config, POLICY.replace("role = \"reader\"", "role = \"writer\"")).unwrap();
    daemon.send(nix::sys::signal::Signal::SIGHUP);
    wait_for_log_count(&daemon, "reload refused", 2);
    denied(&put(&daemon, 3000, 3000, "default", "x:1"), 3000, "Put");
    assert!(daemon.terminate().success());
}

#[test]
fn a_socket_everyone_can_reach_needs_a_policy_that_lets_them_read_at_most() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "socket_mode = \"0666\"\n[[access]]\nrole = \"writer\"\neveryone = true\n",
    )
    .unwrap();
    let out = std::process::Command::new(&*IMAGED)
        .args(["--config", config.to_str().unwrap(), "--socket"])
        .arg(dir.path().join("run/imaged.sock"))
        .arg("--root")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = text(&out);
    assert!(
        text.contains("socket mode 0666 lets every local user connect") && text.contains("grants everyone writer"),
        "{text}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "a refused start made the data directory"
    );
}

fn wait_for_log(daemon: &Daemon, what: &str) {
    wait_for_log_count(daemon, what, 1);
}

fn wait_for_log_count(daemon: &Daemon, what: &str, count: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while daemon.log_text().matches(what).count() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "no {what:?} in the log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
