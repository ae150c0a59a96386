//! Operations, end to end: health and reflection through clients we did not
//! write (Python's grpcio-health-checking and grpcio-reflection), the exec
//! probe `imagectl health` (serving, a store that refuses writes after a
//! storage failure, a daemon that is gone), and `imagectl status`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, imagectl, in_ns, output_text as text, put};

#[test]
fn python_health_and_reflection_clients_see_every_service_and_hear_the_shutdown() {
    let Some(python) = common::python(&["grpc", "grpc_health.v1", "grpc_reflection.v1alpha"]) else {
        return;
    };
    let mut daemon = Daemon::start();
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut client = Command::new(python)
        .arg(workspace.join("tests/python/ops_client.py"))
        .arg(&daemon.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let watching = line == "watching";
        seen.push(line);
        if watching {
            break;
        }
    }
    assert_eq!(seen.last().map(String::as_str), Some("watching"), "{seen:#?}");
    // Every service mounted is listed, and every method of the seed API
    // and of the admin service is described.
    let services = seen.iter().find(|l| l.starts_with("services:")).unwrap();
    for service in [
        "containerd.v1.Images",
        "containerd.services.images.v1.Images",
        "containerd.services.namespaces.v1.Namespaces",
        "containerd.services.events.v1.Events",
        "containerd.services.leases.v1.Leases",
        "containerd.services.version.v1.Version",
        "containerd.services.introspection.v1.Introspection",
        "imaged.admin.v1.Admin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(services.split(' ').any(|s| s == service), "{service} not in {services}");
    }
    for method in ["Get", "Put", "Delete", "List", "ListStream", "Watch"] {
        let line = format!("method: containerd.v1.Images/{method}");
        assert!(seen.contains(&line), "{line} not in {seen:#?}");
    }
    assert!(seen.contains(&"method: imaged.admin.v1.Admin/Backup".to_string()));
    assert!(
        seen.contains(&"reflection v1: the same services".to_string()),
        "{seen:#?}"
    );
    // The watch has heard SERVING; a SIGTERM turns it NOT_SERVING and
    // ends it, and the daemon still stops cleanly.
    std::thread::sleep(Duration::from_millis(300));
    let status = daemon.terminate();
    assert!(status.success(), "{status}");
    seen.extend(lines.map(Result::unwrap));
    let exit = client.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut client.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(exit.success(), "{seen:#?}\n{stderr}\n{}", daemon.log_text());
    assert!(seen.contains(&"watch: NOT_SERVING".to_string()), "{seen:#?}");
    assert_eq!(seen.last().map(String::as_str), Some("all ok"));
}

#[tokio::test(flavor = "multi_thread")]
async fn imagectl_health_is_an_exec_probe_that_fails_on_a_storage_failure_and_a_stopped_daemon() {
    // The journal's third write fails as a dying disk's would.
    let mut daemon = Daemon::start_env(&[("IMAGED_TEST_FAIL", "journal:3")]);
    let probe = imagectl(&daemon, &["health"]);
    assert_eq!(probe.status.code(), Some(0), "{}", text(&probe));
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "SERVING");

    let mut seed = daemon.seed().await;
    for n in 0..2 {
        seed.put(in_ns("default", put(&format!("ok:{n}"), n))).await.unwrap();
    }
    let failed = seed.put(in_ns("default", put("fails:1", 9))).await.unwrap_err();
    assert!(failed.message().contains("Input/output error"), "{failed:?}");
    // Within the health service's look-again interval, the probe fails;
    // asking about a read-only service still says SERVING.
    let mut probe = imagectl(&daemon, &["health"]);
    for _ in 0..50 {
        if probe.status.code() == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        probe = imagectl(&daemon, &["health"]);
    }
    assert_eq!(probe.status.code(), Some(1), "{}", text(&probe));
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "NOT_SERVING");
    let version = imagectl(
        &daemon,
        &["health", "--service", "containerd.services.version.v1.Version"],
    );
    assert_eq!(version.status.code(), Some(0), "{}", text(&version));
    // Reads go on, and status says the store refuses writes.
    let listed = imagectl(&daemon, &["images", "ls", "-q"]);
    assert!(text(&listed).contains("ok:1"), "{}", text(&listed));
    let status = imagectl(&daemon, &["status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["writable"], false, "{status}");

    // A daemon that is gone is not serving either.
    daemon.kill();
    let gone = imagectl(&daemon, &["health", "--timeout", "2s"]);
    assert_eq!(gone.status.code(), Some(1), "{}", text(&gone));
    assert_eq!(String::from_utf8_lossy(&gone.stdout).trim(), "NOT_SERVING");
}

#[tokio::test(flavor = "multi_thread")]
async fn imagectl_status_reports_revisions_namespaces_and_limits() {
    let daemon = Daemon::start_with("info", &["--max-streams", "77"]);
    let mut seed = daemon.seed().await;
    for n in 0..3 {
        seed.put(in_ns("a", put(&format!("a:{n}"), n))).await.unwrap();
    }
    seed.put(in_ns("b", put("b:1", 5))).await.unwrap();
    let out = imagectl(&daemon, &["status", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["revision"], 4, "{status}");
    assert_eq!(status["images"], 4, "{status}");
    assert_eq!(status["namespaces"]["a"], 3, "{status}");
    assert_eq!(status["namespaces"]["b"], 1, "{status}");
    assert_eq!(status["limits"]["max_streams"], "77", "{status}");
    assert_eq!(status["writable"], true, "{status}");
    assert!(status["journal_bytes"].as_u64().unwrap() > 0, "{status}");
    assert!(status["engine_bytes"].as_u64().unwrap() > 0, "{status}");
    let table = imagectl(&daemon, &["status"]);
    let table = text(&table);
    assert!(table.contains("revision") && table.contains("max_streams"), "{table}");
}
