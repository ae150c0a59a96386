//! Files and the socket, attacked as another local user would: a socket in
//! a directory anyone can write, a data directory someone else owns or can
//! write, a symlink planted in the data directory, and an unprivileged
//! caller. Tests that need root (to be, or to act as, another user) say so
//! and return elsewhere; CI runs as root.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::{Daemon, IMAGED};

/// The unprivileged user the attacks run as.
const NOBODY: u32 = 65534;

/// Runs imaged with `args` until it exits (a refused start exits at once).
fn imaged(args: &[&str], root: &Path) -> Output {
    Command::new(&*IMAGED)
        .args(args)
        .arg("--root")
        .arg(root)
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_socket_in_a_directory_others_can_write_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let root = dir.path().join("data");
    let socket = shared.join("imaged.sock");
    let out = imaged(&["--socket", socket.to_str().unwrap()], &root);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.contains(&format!("{} is writable by others (mode 1777)", shared.display())),
        "{text}"
    );
    // Refused before anything was made.
    assert!(!root.exists() && !socket.exists());
    // /tmp itself is such a directory.
    let out = imaged(&["--socket", "/tmp/imaged-security-test.sock"], &root);
    assert!(stderr(&out).contains("/tmp is writable by others"), "{}", stderr(&out));
}

#[test]
fn a_data_dir_another_user_owns_or_can_write_is_refused() {
    if !common::is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/imaged.sock");
    let root = dir.path().join("data");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(&root, Some(NOBODY.into()), None).unwrap();
    let out = imaged(&["--socket", socket.to_str().unwrap()], &root);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("owned by uid 65534"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "a refused start wrote into the dir"
    );

    nix::unistd::chown(&root, Some(0.into()), None).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o770)).unwrap();
    let out = imaged(&["--socket", socket.to_str().unwrap()], &root);
    assert!(
        stderr(&out).contains("writable by its group or others (mode 0770)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_symlink_planted_in_the_data_dir_is_refused_and_never_written_through() {
    let mut daemon = Daemon::start();
    assert!(daemon.terminate().success());
    let victim = daemon.root.with_extension("victim");
    std::fs::write(&victim, b"do not touch").unwrap();
    for planted in ["journal", "FORMAT", "lock", "sled/conf"] {
        let path = daemon.root.join(planted);
        let saved = daemon.root.with_extension("saved");
        std::fs::rename(&path, &saved).unwrap();
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let out = imaged(&["--socket", daemon.socket.to_str().unwrap()], &daemon.root);
        assert_eq!(out.status.code(), Some(1), "{planted}: {}", stderr(&out));
        let text = stderr(&out);
        assert!(
            text.contains("symbolic link") && text.contains(planted),
            "{planted}: {text}"
        );
        assert_eq!(
            std::fs::read(&victim).unwrap(),
            b"do not touch",
            "{planted} was written through"
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::rename(&saved, &path).unwrap();
    }
    daemon.restart();
}

/// Runs `program args` as the unprivileged user.
fn as_nobody(program: &Path, args: &[&str]) -> Output {
    common::as_user(NOBODY, NOBODY, program, args)
}

#[test]
fn an_unprivileged_user_can_neither_call_the_daemon_nor_take_its_data() {
    if !common::is_root() {
        return;
    }
    let daemon = Daemon::start();
    // The socket is 0660, owned by root: nobody may not connect. The
    // temporary directory must let nobody reach it, to prove the socket's
    // own mode is what refuses.
    common::open_path_to_all(&daemon.socket);
    let imagectl = common::binary(None, "imagectl");
    let out = as_nobody(
        &imagectl,
        &["--address", daemon.socket.to_str().unwrap(), "images", "ls"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).to_lowercase().contains("permission denied"),
        "{}",
        stderr(&out)
    );

    // Nor start a daemon of its own on the same data: refused, nothing made.
    let socket = std::env::temp_dir().join(format!("imaged-nobody-{}", std::process::id()));
    let out = as_nobody(
        &IMAGED,
        &[
            "--socket",
            socket.join("imaged.sock").to_str().unwrap(),
            "--root",
            daemon.root.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(daemon.root.to_str().unwrap()), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&socket);
}
