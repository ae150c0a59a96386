//! The hog and the victim say clearly when there is no daemon to attack.
//! (Being an integration test of this package, it also makes
//! `cargo test --workspace` build the `imaged-bench` binary that
//! `tests/fairness.rs` runs as other uids.)

use std::process::Command;

#[test]
fn a_hog_without_a_daemon_fails_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_imaged-bench"))
        .args(["hog", "--attack", "watchers", "--address"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("transport error") || said.contains("absent.sock"),
        "{said}"
    );
}
