//! Metrics, end to end: the real daemon serves them on a Unix socket; curl
//! scrapes them and Debian's `promtool check metrics` checks them; the
//! figures move as this test's calls are made; a non-loopback address is
//! refused unless allowed.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Daemon, in_ns, put};
use imaged_api::containerd::v1 as seed;

/// The exposition, as curl gets it over the metrics socket.
fn scrape(socket: &Path) -> String {
    let out = Command::new("curl")
        .args(["--silent", "--fail", "--unix-socket"])
        .arg(socket)
        .arg("http://localhost/metrics")
        .output()
        .unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `promtool check metrics` on `text`; panics with its report unless
/// it passes.
fn promtool(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample `series` (name and labels, as written), or 0
/// when it is absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

const PUT_OK: &str = r#"imaged_grpc_requests_total{service="containerd.v1.Images",method="Put",code="OK"}"#;
const GET_NOT_FOUND: &str =
    r#"imaged_grpc_requests_total{service="containerd.v1.Images",method="Get",code="NOT_FOUND"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn promtool_accepts_the_metrics_and_they_follow_the_calls() {
    if !common::have_tool("promtool", "prometheus") || !common::have_tool("curl", "curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.sock");
    // Everyone may connect, and nobody but admins is granted anything.
    let daemon = Daemon::start_with(
        "info",
        &["--metrics-address", metrics.to_str().unwrap(), "--socket-mode", "0666"],
    );
    let before = scrape(&metrics);
    promtool(&before);
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_threads",
        "imaged_revision",
    ] {
        assert!(
            value(&before, name) > 0.0 || name == "imaged_revision",
            "{name}:\n{before}"
        );
    }

    let mut seed = daemon.seed().await;
    let watch = seed::WatchRequest::default();
    let mut watching = seed.watch(in_ns("metrics", watch)).await.unwrap().into_inner();
    for n in 0..5 {
        seed.put(in_ns("metrics", put(&format!("m:{n}"), n))).await.unwrap();
    }
    for _ in 0..2 {
        let missing = seed::GetRequest {
            name: "absent:1".into(),
        };
        seed.get(in_ns("metrics", missing)).await.unwrap_err();
    }
    let mut events = 0;
    while events < 5 {
        events += watching.message().await.unwrap().unwrap().events.len();
    }
    let after = scrape(&metrics);
    promtool(&after);
    assert_eq!(value(&after, PUT_OK) - value(&before, PUT_OK), 5.0, "{after}");
    assert_eq!(
        value(&after, GET_NOT_FOUND) - value(&before, GET_NOT_FOUND),
        2.0,
        "{after}"
    );
    let put_latency = r#"imaged_grpc_request_duration_seconds_count{service="containerd.v1.Images",method="Put"}"#;
    assert_eq!(value(&after, put_latency), 5.0, "{after}");
    assert_eq!(value(&after, r#"imaged_images{namespace="metrics"}"#), 5.0, "{after}");
    assert_eq!(value(&after, "imaged_revision"), 5.0, "{after}");
    assert_eq!(
        value(&after, "imaged_journal_sync_duration_seconds_count"),
        5.0,
        "{after}"
    );
    assert_eq!(value(&after, "imaged_commit_batch_jobs_sum"), 5.0, "{after}");
    assert_eq!(value(&after, r#"imaged_watchers{api="watch"}"#), 1.0, "{after}");
    assert!(value(&after, "imaged_watch_events_delivered_total") >= 5.0, "{after}");
    assert!(
        value(&after, r#"imaged_store_disk_bytes{part="journal"}"#) > 0.0,
        "{after}"
    );
    assert!(
        value(&after, r#"imaged_store_disk_bytes{part="sled"}"#) > 0.0,
        "{after}"
    );
    assert_eq!(value(&after, "imaged_store_writable"), 1.0, "{after}");
    drop(watching);

    // A refused call is counted by method, where the policy can refuse.
    if common::is_root() {
        common::open_path_to_all(&daemon.socket);
        let imagectl = common::binary(None, "imagectl");
        let socket = daemon.socket.to_str().unwrap();
        let out = common::as_user(3000, 3000, &imagectl, &["--address", socket, "images", "ls"]);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("permission denied"),
            "{out:?}"
        );
        let refused = scrape(&metrics);
        let series = r#"imaged_access_refusals_total{service="containerd.v1.Images",method="ListStream"}"#;
        assert_eq!(value(&refused, series), 1.0, "{refused}");
        promtool(&refused);
    }

    // Prometheus itself asks for OpenMetrics, and gets it.
    let out = Command::new("curl")
        .args([
            "--silent",
            "-H",
            "Accept: application/openmetrics-text; version=1.0.0",
            "--unix-socket",
        ])
        .arg(&metrics)
        .arg("http://localhost/metrics")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("# EOF\n"));
}

#[test]
fn a_metrics_address_other_hosts_can_reach_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&*common::IMAGED)
        .env("IMAGED_CONFIG", "/dev/null")
        .arg("--socket")
        .arg(dir.path().join("imaged.sock"))
        .arg("--root")
        .arg(dir.path().join("data"))
        .args(["--metrics-address", "0.0.0.0:9"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("not a loopback address") && text.contains("metrics_allow_remote"),
        "{text}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "a refused start made the data directory"
    );
}
