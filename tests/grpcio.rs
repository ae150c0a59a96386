//! Compatibility with gRPC's C core: Python `grpcio`, default channel
//! options, over a `unix:` target (`tests/python/grpcio_client.py`). Such
//! clients send the percent-encoded socket path as `:authority`, which the
//! daemon must accept (see `server::authority`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::Daemon;

/// The Python that has `grpcio` and `grpcio-tools`: `$IMAGED_PYTHON`, the
/// virtualenv CI makes in `target/pyenv`, or `python3`; `None` when none of
/// them can import grpc (CI always can).
fn python() -> Option<PathBuf> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [
        std::env::var_os("IMAGED_PYTHON").map(PathBuf::from),
        Some(workspace.join("target/pyenv/bin/python")),
        Some(PathBuf::from("python3")),
    ];
    for python in candidates.into_iter().flatten() {
        let ok = Command::new(&python)
            .args(["-c", "import grpc, grpc_tools"])
            .output()
            .is_ok_and(|out| out.status.success());
        if ok {
            return Some(python);
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide Python grpcio and grpcio-tools (see .ci/run)"
    );
    eprintln!("skipping: no Python with grpcio and grpcio-tools (pip install grpcio grpcio-tools)");
    None
}

#[test]
fn python_grpcio_with_default_options_works_over_a_unix_target() {
    let Some(python) = python() else { return };
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
