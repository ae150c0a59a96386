//! Compatibility with gRPC's C core: Python `grpcio`, default channel
//! options, over a `unix:` target (`tests/python/grpcio_client.py`). Such
//! clients send the percent-encoded socket path as `:authority`, which the
//! daemon must accept (see `transport::authority`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Daemon;

#[test]
fn python_grpcio_with_default_options_works_over_a_unix_target() {
    let Some(python) = common::python(&["grpc", "grpc_tools"]) else {
        return;
    };
    let daemon = Daemon::start();
    let out_dir = tempfile::tempdir().unwrap();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(python)
        .arg(workspace.join("tests/python/grpcio_client.py"))
        .arg(&daemon.socket)
        .arg(workspace.join("proto"))
        .arg(out_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "grpcio client failed:\n{stdout}\n{stderr}\ndaemon log:\n{}",
        daemon.log_text()
    );
    assert!(stdout.contains("all ok"), "{stdout}");
}
