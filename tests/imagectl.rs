//! imagectl through its binary against the real daemon: the command
//! contract, exit codes, stdout and stderr, JSON parsed back, tables on a
//! narrow terminal, and racing `--if-absent` puts.

mod common;

use std::process::Command;

use common::{Daemon, IMAGECTL, digest, imagectl};

fn ok(daemon: &Daemon, args: &[&str]) -> String {
    let out = imagectl(daemon, args);
    assert!(
        out.status.success(),
        "imagectl {args:?} exited {:?}:\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn put(daemon: &Daemon, ns: &str, name: &str, n: u64, extra: &[&str]) {
    let d = digest(n);
    let size = (1000 + n).to_string();
    let mut args = vec![
        "-n",
        ns,
        "images",
        "put",
        name,
        "--digest",
        &d,
        "--size",
        &size,
        "--media-type",
        "application/vnd.oci.image.manifest.v1+json",
    ];
    args.extend_from_slice(extra);
    ok(daemon, &args);
}

#[test]
fn put_get_ls_in_every_format() {
    let daemon = Daemon::start();
    put(
        &daemon,
        "default",
        "docker.io/library/redis:7",
        1,
        &["--label", "env=prod", "--label", "team=a"],
    );
    put(&daemon, "default", "docker.io/library/alpine:3", 2, &[]);

    let json: serde_json::Value = serde_json::from_str(&ok(
        &daemon,
        &["images", "get", "docker.io/library/redis:7", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(json["name"], "docker.io/library/redis:7");
    assert_eq!(json["digest"], digest(1));
    assert_eq!(json["size"], 1001);
    assert_eq!(json["labels"]["env"], "prod");
    let created = json["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() >= 20, "RFC 3339: {created}");

    let list: serde_json::Value = serde_json::from_str(&ok(&daemon, &["images", "ls", "-o", "json"])).unwrap();
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["docker.io/library/alpine:3", "docker.io/library/redis:7"]);

    let lines = ok(
        &daemon,
        &["images", "ls", "-o", "jsonl", "--filter", "labels.env==prod"],
    );
    let objects: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0]["annotations"], serde_json::json!({}));

    assert_eq!(
        ok(&daemon, &["images", "ls", "-q"]),
        "docker.io/library/alpine:3\ndocker.io/library/redis:7\n"
    );
    assert_eq!(
        ok(&daemon, &["images", "ls", "-o", "json", "--filter", "name==none"]).trim(),
        "[]"
    );

    let table = ok(&daemon, &["images", "ls"]);
    let mut rows = table.lines();
    let header: Vec<_> = rows
        .next()
        .unwrap()
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        ["NAME", "DIGEST", "MEDIA TYPE", "SIZE", "CREATED", "PROTECTED", "LABELS"]
    );
    let redis = rows.find(|r| r.starts_with("docker.io/library/redis:7")).expect(&table);
    assert!(redis.contains("sha256:000000000000 "), "short digest: {redis}");
    assert!(
        redis.contains("1001 B")
            && (redis.contains("just now") || redis.contains("second"))
            && redis.contains("env=prod,team=a"),
        "{redis}"
    );

    let got = ok(&daemon, &["images", "get", "docker.io/library/alpine:3"]);
    assert!(
        got.lines().nth(1).unwrap().starts_with("docker.io/library/alpine:3"),
        "{got}"
    );
}

#[test]
fn protect_refuses_rm_and_put_until_unprotect() {
    let daemon = Daemon::start();
    put(&daemon, "default", "redis:7", 1, &["--label", "env=prod"]);
    put(&daemon, "default", "redis:6", 2, &[]);
    assert_eq!(ok(&daemon, &["images", "protect", "redis:7"]), "redis:7\n");

    let rm = imagectl(&daemon, &["images", "rm", "redis:7"]);
    let text = common::output_text(&rm);
    assert!(!rm.status.success(), "{text}");
    assert!(
        text.contains("is protected") && text.contains("imagectl images unprotect redis:7"),
        "{text}"
    );
    let retarget = imagectl(
        &daemon,
        &[
            "images",
            "put",
            "redis:7",
            "--digest",
            &digest(3),
            "--size",
            "9",
            "--media-type",
            "a/b",
        ],
    );
    assert!(!retarget.status.success(), "{}", common::output_text(&retarget));
    // A put that keeps the target and replaces the labels keeps the
    // protection.
    put(&daemon, "default", "redis:7", 1, &["--label", "env=test"]);

    let shown: serde_json::Value =
        serde_json::from_str(&ok(&daemon, &["images", "get", "redis:7", "-o", "json"])).unwrap();
    assert_eq!(shown["protected"], true, "{shown}");
    assert_eq!(shown["labels"]["env"], "test", "{shown}");
    assert_eq!(
        ok(&daemon, &["images", "ls", "-q", "--filter", "protected==true"]),
        "redis:7\n"
    );
    assert_eq!(
        ok(&daemon, &["images", "ls", "-q", "--filter", "protected==false"]),
        "redis:6\n"
    );
    let table = ok(&daemon, &["images", "ls"]);
    let row = table.lines().find(|r| r.starts_with("redis:7")).expect(&table);
    assert!(row.contains(" yes "), "{table}");

    assert_eq!(ok(&daemon, &["images", "unprotect", "redis:7"]), "redis:7\n");
    ok(&daemon, &["images", "rm", "redis:7"]);
    assert_eq!(ok(&daemon, &["images", "ls", "-q"]), "redis:6\n");
}

#[test]
fn repos_ls_counts_tags_and_images_ls_takes_one_repository() {
    let daemon = Daemon::start();
    for (i, name) in ["redis:6", "redis:7", "localhost:5000/app:1", "redis-stack:1"]
        .iter()
        .enumerate()
    {
        put(&daemon, "default", name, i as u64 + 1, &[]);
    }
    let table = ok(&daemon, &["repos", "ls"]);
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["REPOSITORY", "TAGS", "NEWEST", "CHANGED"], "{table}");
    let named: Vec<(&str, &str, &str)> = rows[1..].iter().map(|r| (r[0], r[1], r[2])).collect();
    assert_eq!(
        named,
        [
            ("localhost:5000/app", "1", "localhost:5000/app:1"),
            ("redis", "2", "redis:7"),
            ("redis-stack", "1", "redis-stack:1"),
        ],
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&daemon, &["repos", "ls", "-o", "json", "--page-size", "1"])).unwrap();
    let redis = &json.as_array().unwrap()[1];
    assert_eq!(redis["name"], "redis", "{json}");
    assert_eq!(redis["tags"], 2, "{json}");
    assert_eq!(redis["newest"], "redis:7", "{json}");
    assert!(redis["mod_revision"].as_u64().unwrap() >= 2, "{json}");
    assert!(redis["updated_at"].as_str().unwrap().ends_with('Z'), "{json}");
    assert_eq!(
        ok(
            &daemon,
            &["repos", "ls", "-q", "--filter", "tags>=2", "--order-by", "name desc"]
        ),
        "redis\n"
    );
    assert_eq!(
        ok(&daemon, &["repos", "ls", "-q", "--order-by", "name desc"]),
        "redis-stack\nredis\nlocalhost:5000/app\n"
    );
    // One repository's images, whatever else shares its prefix.
    assert_eq!(
        ok(&daemon, &["images", "ls", "-q", "--repository", "redis"]),
        "redis:6\nredis:7\n"
    );
    assert_eq!(
        ok(
            &daemon,
            &[
                "images",
                "ls",
                "-q",
                "--repository",
                "redis",
                "--page-size",
                "1",
                "--filter",
                "name~=7"
            ]
        ),
        "redis:7\n"
    );
    let out = imagectl(&daemon, &["repos", "ls", "--filter", "labels.a==b"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("labels.a") && text.contains("known fields: name, tags, updated_at"),
        "{text}"
    );
    let out = imagectl(&daemon, &["repos", "ls", "--order-by", "tags"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("order_by"));
}

#[test]
fn ls_walks_every_page_and_orders() {
    let daemon = Daemon::start();
    for n in 0..25u64 {
        put(&daemon, "k8s.io", &format!("img-{n:02}"), n, &[]);
    }
    let paged = ok(&daemon, &["-n", "k8s.io", "images", "ls", "-q", "--page-size", "10"]);
    assert_eq!(paged.lines().count(), 25, "never truncated");
    let desc = ok(
        &daemon,
        &["-n", "k8s.io", "images", "ls", "-q", "--order-by", "target.size desc"],
    );
    assert_eq!(desc.lines().next(), Some("img-24"));
    assert_eq!(desc.lines().count(), 25);
    let env = Command::new(&*IMAGECTL)
        .args(["--address"])
        .arg(&daemon.socket)
        .args(["images", "ls", "-q"])
        .env("IMAGED_NAMESPACE", "k8s.io")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&env.stdout).lines().count(),
        25,
        "IMAGED_NAMESPACE is the default"
    );
}

#[test]
fn a_table_fits_a_narrow_terminal() {
    let daemon = Daemon::start();
    put(
        &daemon,
        "default",
        &format!("registry.example/{}/image:latest", "long-path".repeat(6)),
        1,
        &["--label", "a=b"],
    );
    let out = Command::new(&*IMAGECTL)
        .arg("--address")
        .arg(&daemon.socket)
        .args(["images", "ls"])
        .env("COLUMNS", "80")
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    for line in table.lines() {
        assert!(line.chars().count() <= 80, "{} columns: {line}", line.chars().count());
    }
    assert!(table.contains('…'), "{table}");
}

#[test]
fn exit_codes_and_messages() {
    let daemon = Daemon::start();
    let out = imagectl(&daemon, &["images", "get", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "imagectl: image \"x\" not found in namespace \"default\"\n"
    );
    assert!(out.stdout.is_empty());

    let out = imagectl(&daemon, &["images", "rm", "x"]);
    assert_eq!(out.status.code(), Some(1), "not found is an error for rm");

    let out = imagectl(
        &daemon,
        &[
            "images",
            "put",
            "x",
            "--digest",
            "sha256:abc",
            "--size",
            "1",
            "--media-type",
            "a/b",
        ],
    );
    // A value imagectl checks itself is bad usage (2), like a missing flag:
    // no call is made.
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid value 'sha256:abc' for '--digest"), "{stderr}");
    let negative = imagectl(
        &daemon,
        &[
            "images",
            "put",
            "x",
            "--digest",
            &digest(1),
            "--size",
            "-5",
            "--media-type",
            "a/b",
        ],
    );
    assert_eq!(negative.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&negative.stderr);
    assert!(stderr.contains("invalid value '-5' for '--size"), "{stderr}");

    let out = imagectl(&daemon, &["images", "put", "x", "--size", "1"]);
    assert_eq!(out.status.code(), Some(2), "bad usage");
    let out = imagectl(&daemon, &["images", "label", "x", "novalue"]);
    assert_eq!(out.status.code(), Some(2));
    let out = imagectl(&daemon, &["-n", "bad/ns", "images", "ls"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'bad/ns' for '--namespace"));
    let out = Command::new(&*IMAGECTL)
        .args(["--address", "tcp://127.0.0.1:1", "images", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Unix socket only"), "{stderr}");

    // No daemon: the message names the socket and says how to start one.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let out = Command::new(&*IMAGECTL)
        .arg("--address")
        .arg(&missing)
        .args(["--timeout", "5s", "images", "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&missing.display().to_string()) && stderr.contains("imaged --socket"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // Variables are not shown as flags typed, and a bad one is named.
    let out = Command::new(&*IMAGECTL)
        .args(["images", "put"])
        .env("IMAGED_ADDRESS", &daemon.socket)
        .env("IMAGED_NAMESPACE", "k8s.io")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Usage: imagectl images put"), "{stderr}");
    assert!(
        !stderr.contains("--address <") && !stderr.contains("--namespace <"),
        "{stderr}"
    );
    let out = Command::new(&*IMAGECTL)
        .args(["images", "ls"])
        .env("IMAGED_ADDRESS", &daemon.socket)
        .env("IMAGED_NAMESPACE", "bad/ns")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("$IMAGED_NAMESPACE") && stderr.contains("bad/ns"),
        "{stderr}"
    );

    // A directory for the socket: give the socket's path, not "start one".
    let out = Command::new(&*IMAGECTL)
        .arg("--address")
        .arg(dir.path())
        .args(["--timeout", "5s", "images", "ls"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is a directory, not a socket") && !stderr.contains("imaged --socket"),
        "{stderr}"
    );
}

/// A uid the socket's mode refuses is told so, with the socket's owner,
/// group and mode and what to ask for, not to start a daemon.
#[test]
fn a_uid_the_socket_refuses_is_told_what_to_ask_for() {
    if !common::is_root() {
        return;
    }
    let daemon = Daemon::start();
    common::open_path_to_all(&daemon.socket);
    let imagectl = std::path::PathBuf::from(&*IMAGECTL);
    let address = daemon.socket.to_str().unwrap();
    let out = common::as_user(
        3000,
        3000,
        &imagectl,
        &["--address", address, "--timeout", "5s", "images", "ls"],
    );
    let text = common::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("uid 3000 may not connect to") && text.contains("mode 660") && text.contains("add you to group"),
        "{text}"
    );
    assert!(!text.contains("imaged --socket"), "{text}");
}

#[test]
fn rm_label_and_conditional_puts() {
    let daemon = Daemon::start();
    put(&daemon, "default", "a", 1, &[]);
    put(&daemon, "default", "b", 2, &[]);

    assert_eq!(
        ok(&daemon, &["images", "label", "a", "env=prod", "team=x"]).trim(),
        "env=prod,team=x"
    );
    assert_eq!(ok(&daemon, &["images", "label", "a", "team="]).trim(), "env=prod");

    let d1 = digest(1);
    let d9 = digest(9);
    let out = imagectl(
        &daemon,
        &[
            "images",
            "put",
            "a",
            "--digest",
            &d9,
            "--size",
            "5",
            "--media-type",
            "a/b",
            "--if-absent",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = imagectl(&daemon, &["images", "rm", "a", "--if-digest", &d9]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("points at {d1}, not {d9}")));

    ok(
        &daemon,
        &[
            "images",
            "put",
            "a",
            "--digest",
            &d9,
            "--size",
            "5",
            "--media-type",
            "a/b",
            "--if-digest",
            &d1,
        ],
    );
    assert_eq!(ok(&daemon, &["images", "rm", "a", "b"]), "a\nb\n");
    assert_eq!(ok(&daemon, &["images", "ls", "-q"]), "");
}

#[test]
fn concurrent_if_absent_puts_have_exactly_one_winner() {
    let daemon = Daemon::start();
    let children: Vec<_> = (1..=8u64)
        .map(|n| {
            Command::new(&*IMAGECTL)
                .arg("--address")
                .arg(&daemon.socket)
                .args(["images", "put", "contended", "--digest", &digest(n), "--size", "1"])
                .args(["--media-type", "a/b", "--if-absent"])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let winners = outputs.iter().filter(|o| o.status.success()).count();
    assert_eq!(winners, 1);
    for out in outputs.iter().filter(|o| !o.status.success()) {
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    }
}

#[test]
fn namespaces_and_completions() {
    let daemon = Daemon::start();
    assert_eq!(ok(&daemon, &["namespaces", "create", "team-a"]).trim(), "team-a");
    put(&daemon, "busy", "x", 1, &[]);
    let table = ok(&daemon, &["ns", "ls"]);
    let names: Vec<_> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["busy", "team-a"]);
    let out = imagectl(&daemon, &["namespaces", "rm", "busy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be empty"));
    ok(&daemon, &["namespaces", "rm", "team-a"]);

    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&daemon, &["completions", shell]);
        assert!(script.contains("imagectl") && script.contains("images"), "{shell}");
    }
}

#[test]
fn unix_uris_full_digests_and_names_of_what_changed() {
    let daemon = Daemon::start();
    // `unix://PATH`, as the client crate and grpc clients write it.
    let uri = format!("unix://{}", daemon.socket.display());
    let d = digest(7);
    let out = Command::new(&*IMAGECTL)
        .args(["--address", &uri, "images", "put", "img", "--digest", &d])
        .args(["--size", "7", "--media-type", "a/b"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A write prints the name of what it changed, as rm does.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "img\n");
    let short = ok(&daemon, &["images", "ls"]);
    assert!(!short.contains(&d) && short.contains(&d[..7 + 12]), "{short}");
    let full = ok(&daemon, &["images", "ls", "--no-trunc"]);
    assert!(full.contains(&d), "{full}");
    assert_eq!(ok(&daemon, &["images", "rm", "img"]), "img\n");
}

#[test]
fn control_characters_a_daemon_stores_are_printed_escaped() {
    let daemon = Daemon::start();
    put(&daemon, "default", "a", 1, &[]);
    let value = "red\u{1b}[31m\u{7}\nnext";
    let labelled = ok(&daemon, &["images", "label", "a", &format!("k={value}")]);
    let listed = ok(&daemon, &["images", "ls"]);
    for out in [&labelled, &listed] {
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}'),
            "raw control characters: {out:?}"
        );
        assert!(out.contains("k=red\\u{1b}[31m\\u{7}\\nnext"), "{out:?}");
    }
    // JSON keeps the value exactly, in JSON's own escapes.
    let json = ok(&daemon, &["images", "get", "a", "-o", "json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["labels"]["k"], value);
}

#[test]
fn watch_prints_each_change_as_it_comes_and_from_a_revision() {
    use std::io::BufRead;
    let daemon = Daemon::start();
    put(&daemon, "default", "old", 1, &[]);
    let mut child = Command::new(&*IMAGECTL)
        .arg("--address")
        .arg(&daemon.socket)
        .args(["images", "watch", "--filter", "labels.env==prod"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || {
        lines
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a line within 10 s")
    };
    // The watch starts when imagectl connects: put until it shows one.
    let mut n = 10;
    let first = loop {
        n += 1;
        put(&daemon, "default", &format!("app{n}"), n, &["--label", "env=prod"]);
        if let Ok(line) = lines.recv_timeout(std::time::Duration::from_millis(300)) {
            break line;
        }
        assert!(n < 100, "imagectl images watch showed nothing");
    };
    // Later puts may show too; skip to the change below.
    assert!(first.starts_with("ADDED"), "{first}");
    // Each line comes as the change does (stdout is a pipe, not a terminal:
    // a held buffer would stall here).
    ok(&daemon, &["images", "label", &format!("app{n}"), "env=dev"]);
    let line = std::iter::repeat_with(next).find(|l| l.starts_with("DELETED")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[0], "DELETED", "{line}");
    assert_eq!(fields[2], format!("app{n}"));
    assert_eq!(fields[3], digest(n));
    let revision: u64 = fields[1].parse().unwrap();
    let _ = child.kill();
    let _ = child.wait();

    // From a revision, as JSON lines: the changes after it, then live ones.
    let mut child = Command::new(&*IMAGECTL)
        .arg("--address")
        .arg(&daemon.socket)
        .args(["images", "watch", "--since", "0", "--output", "jsonl"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut last = serde_json::Value::Null;
    for expected in 1..=revision {
        last = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(last["revision"], expected, "{last}");
    }
    assert_eq!(last["type"], "MODIFIED");
    assert_eq!(last["image"]["labels"]["env"], "dev");
    assert_eq!(last["image"]["mod_revision"], revision);
    let _ = child.kill();
    let _ = child.wait();
}
