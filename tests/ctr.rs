//! Proof with the real client: Debian's `ctr` (containerd 1.6) driven against
//! a real imaged. Without `ctr` these tests fail under `CI=true` and are
//! skipped (loudly) elsewhere.
//!
//! `ctr images ls` also asks containerd's content store for sizes and
//! platforms; imaged stores no content, so ctr logs "not implemented" for
//! those on stderr and prints the rest. That is expected here.

mod common;

use std::process::Command;

use common::{Daemon, digest, have_ctr, in_ns, put};
use imaged_api::containerd::services::images::v1 as ctrd;
use imaged_api::containerd::v1 as seed;

struct Ctr {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

fn ctr(daemon: &Daemon, ns: &str, args: &[&str]) -> Ctr {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(&daemon.socket)
        .args(["--namespace", ns])
        .args(args)
        .output()
        .expect("run ctr");
    Ctr {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(daemon: &Daemon, ns: &str, args: &[&str]) -> String {
    let out = ctr(daemon, ns, args);
    assert!(
        out.status.success(),
        "ctr {args:?} failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

async fn image(daemon: &Daemon, ns: &str, name: &str) -> Option<ctrd::Image> {
    daemon
        .images()
        .await
        .get(in_ns(ns, ctrd::GetImageRequest { name: name.into() }))
        .await
        .ok()
        .and_then(|r| r.into_inner().image)
}

#[tokio::test]
async fn ctr_images_ls_shows_what_the_seed_api_put() {
    if !have_ctr() {
        return;
    }
    let daemon = Daemon::start();
    let mut seed = daemon.seed().await;
    seed.put(in_ns("k8s.io", put("docker.io/library/redis:7", 1)))
        .await
        .unwrap();
    seed.put(in_ns("k8s.io", put("docker.io/library/alpine:3", 2)))
        .await
        .unwrap();
    seed.put(put("elsewhere:1", 3)).await.unwrap();

    let table = ok(&daemon, "k8s.io", &["images", "ls"]);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("REF"), "{table}");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows[0].starts_with("docker.io/library/alpine:3") && rows[0].contains(&digest(2)),
        "{table}"
    );
    assert!(
        rows[1].starts_with("docker.io/library/redis:7") && rows[1].contains(&digest(1)),
        "{table}"
    );
    assert!(rows[1].contains("application/vnd.oci.image.index.v1+json"), "{table}");

    let quiet = ok(&daemon, "k8s.io", &["images", "ls", "-q"]);
    assert_eq!(quiet, "docker.io/library/alpine:3\ndocker.io/library/redis:7\n");
    assert_eq!(ok(&daemon, "default", &["images", "ls", "-q"]), "elsewhere:1\n");
}

#[tokio::test]
async fn ctr_images_tag_force_rm() {
    if !have_ctr() {
        return;
    }
    let daemon = Daemon::start();
    let mut seed = daemon.seed().await;
    seed.put(put("docker.io/library/redis:7", 1)).await.unwrap();
    seed.put(put("docker.io/library/redis:6", 2)).await.unwrap();

    let out = ok(
        &daemon,
        "default",
        &[
            "images",
            "tag",
            "docker.io/library/redis:7",
            "docker.io/library/redis:latest",
        ],
    );
    assert_eq!(out.trim(), "docker.io/library/redis:latest");
    let tagged = image(&daemon, "default", "docker.io/library/redis:latest")
        .await
        .unwrap();
    assert_eq!(tagged.target.unwrap().digest, digest(1));

    // Tagging onto an existing name fails without --force…
    let out = ctr(
        &daemon,
        "default",
        &[
            "images",
            "tag",
            "docker.io/library/redis:6",
            "docker.io/library/redis:latest",
        ],
    );
    assert!(!out.status.success());
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);
    // …and moves the name with it.
    ok(
        &daemon,
        "default",
        &[
            "images",
            "tag",
            "--force",
            "docker.io/library/redis:6",
            "docker.io/library/redis:latest",
        ],
    );
    let moved = image(&daemon, "default", "docker.io/library/redis:latest")
        .await
        .unwrap();
    assert_eq!(moved.target.unwrap().digest, digest(2));

    ok(
        &daemon,
        "default",
        &[
            "images",
            "rm",
            "docker.io/library/redis:latest",
            "docker.io/library/redis:6",
        ],
    );
    assert!(
        image(&daemon, "default", "docker.io/library/redis:latest")
            .await
            .is_none()
    );
    assert_eq!(
        ok(&daemon, "default", &["images", "ls", "-q"]),
        "docker.io/library/redis:7\n"
    );
    let out = seed
        .get(seed::GetRequest {
            name: "docker.io/library/redis:6".into(),
        })
        .await;
    assert_eq!(out.unwrap_err().code(), tonic::Code::NotFound);
}

/// containerd's way to protect an image is the CRI plugin's pin label;
/// imaged refuses to remove or retarget it until the label is gone, and ctr
/// says why.
#[tokio::test]
async fn ctr_images_pinned_by_label_are_protected_until_the_label_goes() {
    if !have_ctr() {
        return;
    }
    let daemon = Daemon::start();
    let mut seed = daemon.seed().await;
    seed.put(put("redis:7", 1)).await.unwrap();
    seed.put(put("redis:6", 2)).await.unwrap();
    ok(
        &daemon,
        "default",
        &["images", "label", "redis:7", "io.cri-containerd.pinned=pinned"],
    );
    let shown = seed
        .get(seed::GetRequest { name: "redis:7".into() })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(shown.protected, Some(true), "the seed API shows it: {shown:?}");

    let out = ctr(&daemon, "default", &["images", "rm", "redis:7"]);
    assert!(!out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("failed precondition") && out.stderr.contains("is protected"),
        "{}",
        out.stderr
    );
    // Moving the name onto other content is refused too.
    let out = ctr(&daemon, "default", &["images", "tag", "--force", "redis:6", "redis:7"]);
    assert!(!out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("is protected"), "{}", out.stderr);
    assert_eq!(
        image(&daemon, "default", "redis:7")
            .await
            .unwrap()
            .target
            .unwrap()
            .digest,
        digest(1)
    );
    // Other labels still change.
    ok(&daemon, "default", &["images", "label", "redis:7", "env=prod"]);

    ok(
        &daemon,
        "default",
        &["images", "label", "redis:7", "io.cri-containerd.pinned="],
    );
    ok(&daemon, "default", &["images", "rm", "redis:7"]);
    assert!(image(&daemon, "default", "redis:7").await.is_none());
}

#[tokio::test]
async fn ctr_images_label_sets_and_removes() {
    if !have_ctr() {
        return;
    }
    let daemon = Daemon::start();
    daemon.seed().await.put(put("redis:7", 1)).await.unwrap();

    ok(
        &daemon,
        "default",
        &["images", "label", "redis:7", "env=prod", "team=a"],
    );
    let labels = image(&daemon, "default", "redis:7").await.unwrap().labels;
    assert_eq!(labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));

    ok(&daemon, "default", &["images", "label", "redis:7", "team="]);
    let img = image(&daemon, "default", "redis:7").await.unwrap();
    assert_eq!(img.labels.keys().collect::<Vec<_>>(), ["env"]);
    assert_eq!(img.target.unwrap().digest, digest(1), "labelling kept the target");
}

#[tokio::test]
async fn ctr_images_ls_with_filters() {
    if !have_ctr() {
        return;
    }
    let daemon = Daemon::start();
    let mut seed = daemon.seed().await;
    for (n, name) in [
        "docker.io/library/redis:7",
        "docker.io/library/redis:latest",
        "quay.io/x:1",
    ]
    .iter()
    .enumerate()
    {
        seed.put(put(name, n as u64 + 1)).await.unwrap();
    }
    ok(
        &daemon,
        "default",
        &["images", "label", "quay.io/x:1", "com.example/tier=gold"],
    );

    let out = ok(&daemon, "default", &["images", "ls", "-q", "name~=latest$"]);
    assert_eq!(out, "docker.io/library/redis:latest\n");
    let out = ok(&daemon, "default", &["images", "ls", "-q", "name~=^docker.io/"]);
    assert_eq!(out, "docker.io/library/redis:7\ndocker.io/library/redis:latest\n");
    let out = ok(
        &daemon,
        "default",
        &["images", "ls", "-q", "labels.\"com.example/tier\"==gold"],
    );
    assert_eq!(out, "quay.io/x:1\n");
    // Several filters are an OR.
    let out = ok(
        &daemon,
        "default",
        &["images", "ls", "-q", "name==quay.io/x:1", "name~=:7$"],
    );
    assert_eq!(out, "docker.io/library/redis:7\nquay.io/x:1\n");

    let out = ctr(&daemon, "default", &["images", "ls", "name=~x"]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("unsupported operator"), "{}", out.stderr);
}

#[tokio::test]
async fn ctr_namespaces_create_ls_label_rm() {
    if !have_ctr() {
        return;
    }
    let daemon = Daemon::start();
    ok(&daemon, "default", &["namespaces", "create", "team-a", "owner=alice"]);
    daemon.seed().await.put(in_ns("busy", put("x:1", 1))).await.unwrap();

    let table = ok(&daemon, "default", &["namespaces", "ls"]);
    let rows: Vec<Vec<&str>> = table.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows, vec![vec!["busy"], vec!["team-a", "owner=alice"]], "{table}");

    ok(&daemon, "default", &["namespaces", "label", "team-a", "tier=1"]);
    let table = ok(&daemon, "default", &["namespaces", "ls"]);
    assert!(table.contains("owner=alice") && table.contains("tier=1"), "{table}");

    let out = ctr(&daemon, "default", &["namespaces", "rm", "busy"]);
    assert!(!out.status.success(), "removing a namespace with images must fail");
    assert!(out.stderr.contains("must be empty"), "{}", out.stderr);

    let out = ok(&daemon, "default", &["namespaces", "rm", "team-a"]);
    assert_eq!(out.trim(), "team-a");
    assert_eq!(ok(&daemon, "default", &["namespaces", "ls", "-q"]), "busy\n");
}

#[tokio::test]
async fn ctr_version_shows_imaged() {
    if !have_ctr() {
        return;
    }
    let daemon = Daemon::start();
    let out = ok(&daemon, "default", &["version"]);
    let server = out.split("Server:").nth(1).expect(&out);
    assert!(
        server.contains(&format!("Version:  {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(server.contains("Revision: "), "{out}");
    let uuid = server
        .lines()
        .find_map(|l| l.trim().strip_prefix("UUID: "))
        .expect(&out);
    assert_eq!(uuid.len(), 36, "{out}");

    // The UUID is the store's: the same after a restart.
    let mut daemon = daemon;
    assert!(daemon.terminate().success());
    daemon.restart();
    let again = ok(&daemon, "default", &["version"]);
    assert!(again.contains(uuid), "{again}");
}

/// `ctr events` running against `daemon`, its lines gathered as they come.
struct CtrEvents {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl CtrEvents {
    fn start(daemon: &Daemon) -> CtrEvents {
        use std::io::BufRead;
        let mut child = Command::new("ctr")
            .arg("--address")
            .arg(&daemon.socket)
            .arg("events")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ctr events");
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        CtrEvents { child, lines }
    }

    /// The next line printed, within 10 s.
    fn line(&self) -> String {
        self.lines
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("ctr events printed nothing for 10 s")
    }
}

impl Drop for CtrEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Splits a `ctr events` line: timestamp (`2006-01-02 15:04:05.999 +0000
/// UTC`), namespace, topic, and the payload's JSON.
fn event_line(line: &str) -> (String, String, String, serde_json::Value) {
    let parts: Vec<&str> = line.splitn(7, ' ').collect();
    assert_eq!(parts.len(), 7, "{line}");
    assert!(
        parts[0].len() == 10 && parts[1].contains(':') && parts[3] == "UTC",
        "{line}"
    );
    let json = serde_json::from_str(parts[6]).unwrap_or_else(|e| panic!("{line}: {e}"));
    (parts[0..4].join(" "), parts[4].into(), parts[5].into(), json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_events_prints_every_change_whichever_client_made_it() {
    if !have_ctr() {
        return;
    }
    let daemon = Daemon::start();
    let events = CtrEvents::start(&daemon);
    // ctr subscribes a moment after it starts: probe until it shows a put.
    let mut seed = daemon.seed().await;
    let mut probe = 0;
    let started = std::time::Instant::now();
    loop {
        probe += 1;
        seed.put(put(&format!("probe{probe}"), probe)).await.unwrap();
        match events.lines.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(line) => {
                assert!(line.contains("/images/create"), "{line}");
                break;
            }
            Err(_) => assert!(started.elapsed().as_secs() < 20, "ctr events never showed a change"),
        }
    }
    // Later probes may still come; skip to ours.
    let next_own = |events: &CtrEvents| loop {
        let line = events.line();
        if !line.contains("\"probe") {
            return event_line(&line);
        }
    };

    ok(
        &daemon,
        "default",
        &["images", "tag", &format!("probe{probe}"), "docker.io/library/redis:7"],
    );
    let (time, ns, topic, json) = next_own(&events);
    assert_eq!((ns.as_str(), topic.as_str()), ("default", "/images/create"));
    assert_eq!(json["name"], "docker.io/library/redis:7");
    assert!(time.starts_with("20"), "{time}");
    ok(
        &daemon,
        "default",
        &["images", "label", "docker.io/library/redis:7", "env=prod"],
    );
    let (_, _, topic, json) = next_own(&events);
    assert_eq!(topic, "/images/update");
    assert_eq!(json["labels"]["env"], "prod", "{json}");
    ok(&daemon, "default", &["images", "rm", "docker.io/library/redis:7"]);
    let (_, _, topic, json) = next_own(&events);
    assert_eq!(topic, "/images/delete");
    assert_eq!(json["name"], "docker.io/library/redis:7");

    // A namespace made by ctr, and imagectl's changes in it.
    let imagectl = common::binary(option_env!("CARGO_BIN_EXE_imagectl"), "imagectl");
    let run = |args: &[&str]| {
        let out = Command::new(&imagectl)
            .arg("--address")
            .arg(&daemon.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "imagectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&daemon, "default", &["namespaces", "create", "team-a", "owner=alice"]);
    let (_, ns, topic, json) = next_own(&events);
    assert_eq!((ns.as_str(), topic.as_str()), ("team-a", "/namespaces/create"));
    assert_eq!(json["labels"]["owner"], "alice", "{json}");
    // Idle for a while: ctr stays subscribed.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let d = digest(9);
    run(&[
        "--namespace",
        "team-a",
        "images",
        "put",
        "app:1",
        "--digest",
        &d,
        "--size",
        "10",
        "--media-type",
        "application/vnd.oci.image.manifest.v1+json",
        "--label",
        "tier=web",
    ]);
    let (_, ns, topic, json) = next_own(&events);
    assert_eq!((ns.as_str(), topic.as_str()), ("team-a", "/images/create"));
    assert_eq!(json["labels"]["tier"], "web", "{json}");
    run(&["--namespace", "team-a", "images", "rm", "app:1"]);
    assert_eq!(next_own(&events).2, "/images/delete");
    ok(&daemon, "default", &["namespaces", "rm", "team-a"]);
    let (_, ns, topic, _) = next_own(&events);
    assert_eq!((ns.as_str(), topic.as_str()), ("team-a", "/namespaces/delete"));
}
