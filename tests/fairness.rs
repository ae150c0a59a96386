//! Fair sharing, end to end: hostile local callers, each its own uid
//! (`setpriv`, as root), attack one bound at a time with `imaged-bench hog`
//! while a victim uid (a writer of namespace `victim`) and root keep
//! working. Each test is one attack; the victim and root must keep being
//! served, and the attacker must get only its share, told why.
//!
//! Also the files a local user could plant or edit: a backup's partial
//! file, the configuration file, and what a failed restore leaves.
//!
//! CI runs as root; elsewhere each test says so and returns.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{Background, Daemon, as_user, digest, output_text as text};

const VICTIM: u32 = 2000;
/// No grant at all.
const STRANGER: u32 = 3001;
/// A reader over every namespace.
const READER: u32 = 3002;
/// A writer of namespace `attacker` only.
const NAMESPACED: u32 = 3003;
/// A writer everywhere.
const WRITER: u32 = 3004;

const POLICY: &str = r#"
socket_mode = "0666"

[[access]]
role = "writer"
uids = [2000]
namespaces = ["victim"]

[[access]]
role = "reader"
uids = [3002]

[[access]]
role = "writer"
uids = [3003]
namespaces = ["attacker"]

[[access]]
role = "writer"
uids = [3004]
"#;

/// A daemon under [`POLICY`] (plus `extra` settings) with `args`, its
/// socket reachable by every uid.
fn start(extra: &str, args: &[&str]) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("{extra}\n{POLICY}")).unwrap();
    let mut all = vec!["--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let daemon = Daemon::start_with("info", &all);
    common::open_path_to_all(&daemon.socket);
    (daemon, dir)
}

fn bench() -> PathBuf {
    common::binary(option_env!("CARGO_BIN_EXE_imaged-bench"), "imaged-bench")
}

/// Starts `attack` as `uid` against `daemon` and waits until it is in
/// place.
fn hog(daemon: &Daemon, uid: u32, attack: &str, namespace: &str, count: u64, more: &[&str]) -> Background {
    let count = count.to_string();
    let mut args = vec![
        "hog",
        "--attack",
        attack,
        "--address",
        daemon.socket.to_str().unwrap(),
        "--namespace",
        namespace,
        "--count",
        &count,
    ];
    args.extend_from_slice(more);
    let mut hog = common::spawn_as_user(uid, uid, &bench(), &args);
    hog.wait_for("ready", Duration::from_secs(120));
    hog
}

fn imagectl_as(daemon: &Daemon, uid: u32, args: &[&str]) -> Output {
    let mut all = vec!["--address", daemon.socket.to_str().unwrap(), "--timeout", "10s"];
    all.extend_from_slice(args);
    as_user(uid, uid, &common::binary(None, "imagectl"), &all)
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "refused: {}", text(&out));
    text(&out)
}

/// The victim writes and reads its namespace, and root asks for health and
/// lists: each within its timeout, none refused.
fn others_are_served(daemon: &Daemon, round: u32) {
    let name = format!("victim/app:{round}");
    let d = digest(u64::from(round) + 1);
    ok(imagectl_as(
        daemon,
        VICTIM,
        &[
            "-n",
            "victim",
            "images",
            "put",
            &name,
            "--digest",
            &d,
            "--size",
            "10",
            "--media-type",
            "application/vnd.oci.image.manifest.v1+json",
        ],
    ));
    let got = ok(imagectl_as(
        daemon,
        VICTIM,
        &["-n", "victim", "images", "get", &name, "-o", "json"],
    ));
    assert!(got.contains(&d), "{got}");
    ok(imagectl_as(daemon, VICTIM, &["-n", "victim", "images", "ls", "-q"]));
    let health = ok(imagectl_as(daemon, 0, &["health"]));
    assert!(health.contains("SERVING"), "{health}");
    ok(imagectl_as(daemon, 0, &["images", "ls", "-q"]));
}

/// The hog's `refused: …` line, which must name `setting` and its uid.
fn refused_naming(hog: &Background, uid: u32, setting: &str) -> String {
    let said = hog.text();
    let line = said
        .lines()
        .find(|l| l.starts_with("refused:"))
        .unwrap_or_else(|| panic!("the hog was never refused: {said}"))
        .to_string();
    assert!(
        line.contains(setting) && line.contains(&format!("uid {uid}")),
        "the refusal names neither {setting} nor uid {uid}: {line}"
    );
    line
}

/// How many of a hog's `held N …` it held.
fn held(hog: &Background) -> u64 {
    hog.said
        .iter()
        .find_map(|l| l.strip_prefix("held "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the hog held nothing: {}", hog.text()))
}

/// `GET /metrics` on the metrics socket `socket`, as `uid`: (HTTP status,
/// body).
fn scrape_as(uid: u32, socket: &Path) -> (u32, String) {
    let out = common::as_user(
        uid,
        uid,
        Path::new("/usr/bin/curl"),
        &[
            "-s",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
            socket.to_str().unwrap(),
            "http://localhost/metrics",
        ],
    );
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = body.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A metric's value in an exposition.
fn metric(exposition: &str, sample: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in the metrics"))
}

fn skip() -> bool {
    if !common::is_root() {
        common::skipped("the attackers run as other uids through setpriv, which needs root");
        return true;
    }
    if !common::have_tool("curl", "curl") {
        return true;
    }
    false
}

#[test]
fn idle_connections_of_a_uid_without_a_grant_leave_root_and_others_served() {
    if skip() {
        return;
    }
    let (daemon, _dir) = start("", &["--handshake-timeout", "1"]);
    // More than the daemon-wide bound: before shares, the daemon served
    // 4,096 and nobody else got in.
    let hog = hog(&daemon, STRANGER, "idle-connections", "default", 4200, &[]);
    std::thread::sleep(Duration::from_secs(2));
    others_are_served(&daemon, 1);
    let log = daemon.log_text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused a connection") && l.contains("uid=3001"))
        .collect();
    assert!(
        refused.first().is_some_and(|l| l.contains("max_connections_per_uid")),
        "{log}"
    );
    // Logged by a token bucket, not once per refused connection.
    assert!(refused.len() <= 11, "{} lines:\n{log}", refused.len());
    drop(hog);
}

#[test]
fn one_list_of_many_regular_expressions_is_refused_within_its_budget() {
    if skip() {
        return;
    }
    let (daemon, _dir) = start("", &[]);
    let before = daemon.rss_kib();
    let hog = hog(&daemon, READER, "regex", "default", 1, &[]);
    let said = hog.text();
    assert!(
        said.contains("InvalidArgument") && said.contains("max_regex_filters"),
        "{said}"
    );
    // It goes on asking, twenty times a second.
    std::thread::sleep(Duration::from_secs(2));
    others_are_served(&daemon, 1);
    let grown = daemon.rss_kib().saturating_sub(before);
    assert!(grown < 200 * 1024, "the daemon grew {grown} KiB");
    // Three of the expensive expressions fit a request's budget; more do not.
    let few = [r"name~=\w{20}"; 3].join(",");
    let out = imagectl_as(&daemon, READER, &["images", "ls", "-q", "--filter", &few]);
    assert!(out.status.success(), "{}", text(&out));
    let many = [r"name~=\w{20}"; 12].join(",");
    let out = imagectl_as(&daemon, READER, &["images", "ls", "-q", "--filter", &many]);
    assert!(
        !out.status.success() && text(&out).contains("regex_budget_kb"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_writer_of_its_own_namespace_cannot_take_every_watcher() {
    if skip() {
        return;
    }
    let (daemon, _dir) = start("", &[]);
    let hog = hog(&daemon, NAMESPACED, "watchers", "attacker", 1100, &[]);
    assert_eq!(held(&hog), 128, "{}", hog.text());
    refused_naming(&hog, NAMESPACED, "max_watchers_per_uid");
    // root's `ctr events` attaches (it runs until stopped) ...
    if common::have_ctr() {
        let out = std::process::Command::new("timeout")
            .args(["2", "ctr", "--address", daemon.socket.to_str().unwrap(), "events"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(124), "{}", text(&out));
    }
    // ... and so does the victim's watch.
    let out = std::process::Command::new("timeout")
        .args(["2", "setpriv", "--reuid", "2000", "--regid", "2000", "--clear-groups"])
        .arg(common::binary(None, "imagectl"))
        .args([
            "--address",
            daemon.socket.to_str().unwrap(),
            "-n",
            "victim",
            "images",
            "watch",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124), "{}", text(&out));
    others_are_served(&daemon, 1);
}

#[test]
fn a_writer_of_its_own_namespace_cannot_take_every_lease() {
    if skip() {
        return;
    }
    let (daemon, _dir) = start("", &[]);
    let hog = hog(&daemon, NAMESPACED, "leases", "attacker", 2000, &[]);
    refused_naming(&hog, NAMESPACED, "lease_mb_per_uid");
    assert!(held(&hog) < 200, "{}", hog.text());
    // root's `ctr images tag` takes a lease first.
    if common::have_ctr() {
        ok(imagectl_as(
            &daemon,
            0,
            &[
                "images",
                "put",
                "app:1",
                "--digest",
                &digest(9),
                "--size",
                "1",
                "--media-type",
                "application/vnd.oci.image.manifest.v1+json",
            ],
        ));
        let out = std::process::Command::new("ctr")
            .args([
                "--address",
                daemon.socket.to_str().unwrap(),
                "images",
                "tag",
                "app:1",
                "app:2",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    others_are_served(&daemon, 1);
}

/// Puts `count` images of about 60 KiB into `default`, as root.
async fn fill_big(daemon: &Daemon, count: u64) {
    let mut client = daemon.seed().await;
    for i in 0..count {
        let mut image = common::image(&format!("big/image:{i}"), i);
        image.labels = (0..15).map(|k| (format!("k{k}"), "v".repeat(4000))).collect();
        client
            .put(imaged_api::containerd::v1::PutRequest {
                image: Some(image),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unread_list_streams_are_a_bounded_share_and_are_ended_when_stalled() {
    if skip() {
        return;
    }
    let (daemon, _dir) = start("", &["--stream-stall-timeout", "2"]);
    // Far more than the transport's windows and the queue hold.
    fill_big(&daemon, 400).await;
    let hog = hog(&daemon, READER, "streams", "default", 300, &[]);
    assert_eq!(held(&hog), 32, "{}", hog.text());
    refused_naming(&hog, READER, "max_streams_per_uid");
    others_are_served(&daemon, 1);
    // The admin's backup runs beside them.
    let backup = _dir.path().join("backup");
    ok(imagectl_as(&daemon, 0, &["backup", "-o", backup.to_str().unwrap()]));
    // Past the stall timeout every unread stream is ended, saying why.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = daemon.log_text();
        let ended = log.matches("ListStream ended: its client took nothing").count();
        if ended == 32 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{ended} of 32 ended:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(hog);
}

#[test]
fn health_watch_streams_are_a_bounded_share() {
    if skip() {
        return;
    }
    let (daemon, _dir) = start("", &[]);
    let hog = hog(&daemon, READER, "health-watches", "default", 2000, &[]);
    assert_eq!(held(&hog), 16, "{}", hog.text());
    refused_naming(&hog, READER, "max_health_watches_per_uid");
    // A stranger with no grant gets none at all.
    let stranger = self::hog(&daemon, STRANGER, "health-watches", "default", 10, &[]);
    assert!(stranger.text().contains("PermissionDenied"), "{}", stranger.text());
    others_are_served(&daemon, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn unread_subscriptions_are_a_bounded_share_and_are_ended_when_stalled() {
    if skip() {
        return;
    }
    let (daemon, _dir) = start("", &["--stream-stall-timeout", "2"]);
    let hog = hog(&daemon, READER, "subscriptions", "default", 200, &[]);
    assert_eq!(held(&hog), 128, "{}", hog.text());
    refused_naming(&hog, READER, "max_watchers_per_uid");
    // Changes the subscribers never read, until their windows fill.
    fill_big(&daemon, 300).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let log = daemon.log_text();
        let ended = log.matches("a subscriber was ended: its client took nothing").count();
        if ended == 128 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{ended} of 128 ended:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    others_are_served(&daemon, 1);
    drop(hog);
}

#[test]
fn churn_in_one_namespace_keeps_the_change_log_within_its_bytes() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.sock");
    let (daemon, _config) = start(
        "",
        &["--keep-changes-mb", "4", "--metrics-address", metrics.to_str().unwrap()],
    );
    common::open_path_to_all(&metrics);
    // 600 revisions of a 64 KiB image: 38 MiB of change log unbounded.
    let mut hog = hog(&daemon, NAMESPACED, "churn", "attacker", 300, &[]);
    hog.wait_for("done", Duration::from_secs(300));
    assert!(hog.text().contains("0 refused"), "{}", hog.text());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = scrape_as(0, &metrics);
        assert_eq!(code, 200, "{body}");
        let held = metric(&body, "imaged_change_log_bytes ");
        if held <= (4 << 20) as f64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the change log holds {held} bytes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    others_are_served(&daemon, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_is_refused_writes_past_its_quotas() {
    if skip() {
        return;
    }
    let (daemon, _dir) = start("max_images_per_namespace = 5\n", &[]);
    let mut client = daemon.seed().await;
    for i in 0..5 {
        client.put(common::put(&format!("small:{i}"), i)).await.unwrap();
    }
    let refused = client.put(common::put("small:5", 5)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("max_images_per_namespace"), "{refused:?}");
    // Replacing one is not a new image.
    client.put(common::put("small:4", 99)).await.unwrap();
    // Bytes: 60 KiB images, past 1 MiB.
    let (daemon, _dir) = start("max_namespace_mb = 1\n", &[]);
    let mut client = daemon.seed().await;
    let mut made = 0;
    let refused = loop {
        let mut image = common::image(&format!("big:{made}"), made);
        image.labels = (0..15).map(|k| (format!("k{k}"), "v".repeat(4000))).collect();
        let put = imaged_api::containerd::v1::PutRequest {
            image: Some(image),
            ..Default::default()
        };
        match client.put(common::in_ns("bulky", put)).await {
            Ok(_) => made += 1,
            Err(status) => break status,
        }
        assert!(made < 100, "never refused");
    };
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("max_namespace_mb"), "{refused:?}");
    assert!((15..=17).contains(&made), "{made}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_subscriber_holds_no_published_bytes_and_own_topics_cannot_be_published() {
    if skip() {
        return;
    }
    let (daemon, _dir) = start("", &[]);
    let before = daemon.rss_kib();
    // 64 events of 4 MiB to a subscriber that never reads.
    let hog = hog(&daemon, WRITER, "publish", "default", 64, &[]);
    assert!(!hog.text().contains("refused"), "{}", hog.text());
    let grown = daemon.rss_kib().saturating_sub(before);
    assert!(grown < 120 * 1024, "the daemon grew {grown} KiB");
    others_are_served(&daemon, 1);
    // imaged's own topics are refused, naming the topic: every /images/
    // and /namespaces/ event a subscriber sees is a committed change.
    use imaged_api::containerd::services::events::v1::{PublishRequest, events_client::EventsClient};
    let mut events = EventsClient::new(daemon.channel().await);
    for topic in ["/images/create", "/namespaces/delete", "/images"] {
        let publish = PublishRequest {
            topic: topic.into(),
            event: Some(prost_types::Any {
                type_url: "containerd.services.images.v1.ImageCreate".into(),
                value: Vec::new(),
            }),
        };
        let refused = events.publish(common::in_ns("default", publish)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains(topic) && refused.message().contains("imaged's own"),
            "{refused:?}"
        );
    }
}

#[test]
fn metrics_hogs_cannot_delay_an_admins_scrape_and_a_stranger_reads_nothing() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let metrics = dir.path().join("metrics.sock");
    let (daemon, _config) = start(
        "",
        &["--metrics-address", metrics.to_str().unwrap(), "--socket-mode", "0666"],
    );
    common::open_path_to_all(&metrics);
    let metrics_arg = metrics.to_str().unwrap();
    let strangers = hog(
        &daemon,
        STRANGER,
        "metrics-idle",
        "default",
        32,
        &["--metrics", metrics_arg],
    );
    let readers = hog(
        &daemon,
        READER,
        "metrics-idle",
        "default",
        32,
        &["--metrics", metrics_arg],
    );
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..5 {
        let (code, body) = scrape_as(0, &metrics);
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("imaged_images"), "{body}");
    }
    // A uid with no grant reads no namespace's name.
    let (code, body) = scrape_as(3005, &metrics);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("uid 3005"), "{body}");
    assert!(daemon.log_text().contains("metrics: refused a scraper"));
    drop((strangers, readers));
}

#[test]
fn a_flood_of_made_up_methods_writes_little_to_the_log() {
    if skip() {
        return;
    }
    let (daemon, _dir) = start("", &[]);
    let before = daemon.log_text().len();
    let hog = hog(&daemon, STRANGER, "log-flood", "default", 2000, &[]);
    assert!(hog.text().contains("2000 refused"), "{}", hog.text());
    let log = daemon.log_text();
    let grown = log.len() - before;
    assert!(grown < 16 * 1024, "the log grew {grown} bytes:\n{}", &log[before..]);
    for line in log[before..].lines() {
        assert!(line.len() < 600, "a long line: {line}");
    }
    others_are_served(&daemon, 1);
}

#[test]
fn a_backup_never_writes_through_a_planted_partial_file() {
    if skip() {
        return;
    }
    let daemon = Daemon::start();
    // A directory every user may write, as /tmp is.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let target = shared.path().join("backup");
    let partial = shared.path().join("backup.partial");
    let victim_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(victim_file.path(), "keep me").unwrap();
    // Another user plants a link where the partial file goes.
    let out = as_user(
        STRANGER,
        STRANGER,
        Path::new("/usr/bin/ln"),
        &["-s", victim_file.path().to_str().unwrap(), partial.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = common::imagectl(&daemon, &["backup", "-o", target.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("backup.partial") && text(&out).contains("symbolic link"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(victim_file.path()).unwrap(), "keep me");
    // Or a file of its own that everyone may read.
    std::fs::remove_file(&partial).unwrap();
    let out = as_user(
        STRANGER,
        STRANGER,
        Path::new("/usr/bin/install"),
        &["-m", "0666", "/dev/null", partial.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = common::imagectl(&daemon, &["backup", "-o", target.to_str().unwrap()]);
    assert!(
        !out.status.success() && text(&out).contains("uid 3001"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), 0);
    // Our own leftover is replaced, and the backup is for root's eyes only.
    std::fs::remove_file(&partial).unwrap();
    std::fs::write(&partial, "left over").unwrap();
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = common::imagectl(&daemon, &["backup", "-o", target.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!partial.exists());
}

#[test]
fn a_configuration_file_others_can_write_is_refused_at_start_and_at_reload() {
    if skip() {
        return;
    }
    let (mut daemon, dir) = start("", &[]);
    let config = dir.path().join("config.toml");
    // The stranger may not back up (to its standard output).
    let out = imagectl_as(&daemon, STRANGER, &["backup"]);
    assert!(text(&out).contains("permission denied"), "{}", text(&out));
    // The file is made writable by everyone, and the stranger grants itself
    // admin; the reload refuses the file and the stranger stays refused.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut grants = std::fs::read_to_string(&config).unwrap();
    grants.push_str("\n[[access]]\nrole = \"admin\"\nuids = [3001]\n");
    std::fs::write(&config, grants).unwrap();
    daemon.send(nix::sys::signal::Signal::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !daemon.log_text().contains("reload refused") {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = daemon.log_text();
    assert!(log.contains("config.toml") && log.contains("0666"), "{log}");
    let out = imagectl_as(&daemon, STRANGER, &["backup"]);
    assert!(text(&out).contains("permission denied"), "{}", text(&out));
    // A daemon started on it is refused, naming the file and its mode.
    let out = std::process::Command::new(&*common::IMAGED)
        .args(["--config", config.to_str().unwrap(), "config"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("config.toml") && text(&out).contains("0666"),
        "{}",
        text(&out)
    );
    daemon.terminate();
}

#[test]
fn a_failed_restore_into_an_empty_directory_leaves_it_empty() {
    let dir = tempfile::tempdir().unwrap();
    let damaged = dir.path().join("damaged");
    std::fs::write(&damaged, b"IMAGEDBK\0\0\0\x01not a backup").unwrap();
    let root = dir.path().join("empty");
    std::fs::create_dir(&root).unwrap();
    let out = std::process::Command::new(&*common::IMAGED)
        .env("IMAGED_CONFIG", "/dev/null")
        .args(["restore", "--root", root.to_str().unwrap(), damaged.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let left: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn subscribers_that_leave_a_quiet_store_give_their_shares_back() {
    if skip() {
        return;
    }
    let (daemon, _dir) = start("", &[]);
    let first = hog(&daemon, READER, "subscriptions", "default", 128, &[]);
    assert_eq!(held(&first), 128, "{}", first.text());
    // Its process ends; nothing is ever published or written.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = hog(&daemon, READER, "subscriptions", "default", 128, &[]);
        if held(&again) == 128 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the shares never came back: {}",
            again.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
