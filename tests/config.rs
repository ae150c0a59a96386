//! Settings through the real binary: precedence (defaults, file,
//! environment, flags) as `imaged config` reports it, refusals that name
//! the file, key and value, and what a SIGHUP reloads.

mod common;

use std::process::{Command, Output};

use common::{IMAGED, output_text};

fn imaged(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(&*IMAGED)
        .args(args)
        .env_remove("IMAGED_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn imaged_config_says_each_value_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "max_streams = 10\nmax_watchers = 11\nkeep_changes = 12\n[[access]]\nrole = \"reader\"\nuids = [1000]\n",
    )
    .unwrap();
    let out = imaged(
        &["--config", file.to_str().unwrap(), "--max-streams", "30", "config"],
        &[("IMAGED_MAX_STREAMS", "20"), ("IMAGED_MAX_WATCHERS", "21")],
    );
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    let file = file.display().to_string();
    for line in [
        "max_streams = 30  # flag --max-streams".to_string(),
        "max_watchers = 21  # environment IMAGED_MAX_WATCHERS".to_string(),
        format!("keep_changes = 12  # file {file}"),
        "max_connections = 4096  # default".to_string(),
        "reader_threads = ".to_string(),
        format!("# access grants: file {file}"),
        "uids = [1000]".to_string(),
    ] {
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }
    // The output is TOML that imaged reads back.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, String::from_utf8_lossy(&out.stdout).as_bytes()).unwrap();
    let out = imaged(&["--config", again.to_str().unwrap(), "config"], &[]);
    assert!(out.status.success(), "{}", output_text(&out));
}

#[test]
fn a_bad_file_key_or_value_stops_start_up_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("cache_mbb = 64\n", &["unknown field `cache_mbb`", "line 1"]),
        ("cache_mb = \"big\"\n", &["cache_mb = \"big\"", "invalid type"]),
        ("cache_mb = 0\n", &["key cache_mb = 0", "must be from 1 to 65536"]),
        ("socket_mode = \"0999\"\n", &["key socket_mode = \"0999\"", "octal"]),
        ("log_level = \"info,=[\"\n", &["key log_level", "not a log filter"]),
        ("[[access]]\nrole = \"reader\"\n", &["grants reader to nobody"]),
        ("[[access]]\nrole = \"root\"\nuids = [1]\n", &["unknown variant `root`"]),
    ];
    for (i, (content, wanted)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&file, content).unwrap();
        let root = dir.path().join(format!("data-{i}"));
        let out = imaged(
            &[
                "--config",
                file.to_str().unwrap(),
                "--root",
                root.to_str().unwrap(),
                "--socket",
                dir.path().join(format!("s-{i}/imaged.sock")).to_str().unwrap(),
            ],
            &[],
        );
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{content}: {text}");
        assert!(text.contains(&file.display().to_string()), "{content}: {text}");
        for w in *wanted {
            assert!(text.contains(w), "{content}: no {w:?} in {text}");
        }
        assert!(!root.exists(), "a refused start made {}", root.display());
    }
    let out = imaged(&["--config", "/nonexistent/imaged.toml", "config"], &[]);
    assert!(
        output_text(&out).contains("cannot read /nonexistent/imaged.toml"),
        "{}",
        output_text(&out)
    );
    let out = imaged(&["config"], &[("IMAGED_RECORD_CACHE_MB", "-1")]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("IMAGED_RECORD_CACHE_MB") || output_text(&out).contains("-1"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn sighup_puts_the_log_filter_in_force_and_says_what_waits_for_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let socket = dir.path().join("run/imaged.sock");
    let log = dir.path().join("imaged.log");
    std::fs::write(&file, "log_level = \"warn\"\nrecord_cache_mb = 5\nmax_streams = 5\n").unwrap();
    let mut child = Command::new(&*IMAGED)
        .args([
            "--config",
            file.to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "--root",
        ])
        .arg(dir.path().join("data"))
        .env_remove("IMAGED_LOG_LEVEL")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let wait_for = |what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !read().contains(what) {
            assert!(std::time::Instant::now() < deadline, "no {what:?} in:\n{}", read());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "{}", read());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // At warn, "imaged ready" (info) was not logged.
    assert!(!read().contains("imaged ready"), "{}", read());
    std::fs::write(&file, "log_level = \"info\"\nrecord_cache_mb = 7\nmax_streams = 7\n").unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_for("takes effect at the next restart");
    let text = read();
    assert!(
        text.contains("in force now") && text.contains("key=\"log_level\""),
        "{text}"
    );
    assert!(
        text.contains("key=\"record_cache_mb\"") && text.contains("old=\"5\"") && text.contains("new=\"7\""),
        "{text}"
    );
    // Fair shares are put in force at once, and Status says so; a key that
    // waits for a restart keeps its old value there.
    let streams = text
        .lines()
        .find(|l| l.contains("key=\"max_streams\""))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(streams.contains("in force now"), "{streams}");
    let status = Command::new(&*common::IMAGECTL)
        .args(["--address", socket.to_str().unwrap(), "status", "-o", "json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["limits"]["max_streams"], "7", "{status}");
    assert_eq!(status["limits"]["record_cache_mb"], "5", "{status}");
    // Info lines now pass the filter.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(read().contains("imaged stopped"), "{}", read());
}

/// Settings flags may follow a subcommand; a bad value from the environment
/// is named as its variable; settings left unset are listed.
#[test]
fn flags_after_a_subcommand_and_variables_named_as_themselves() {
    let out = imaged(&["config", "--max-streams", "9"], &[]);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("max_streams = 9  # flag --max-streams"), "{text}");
    assert!(text.contains("# cache_mb is unset: "), "{text}");

    let out = imaged(&["config"], &[("IMAGED_MAX_STREAMS", "abc")]);
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("invalid value 'abc' for $IMAGED_MAX_STREAMS (the variable for --max-streams)"),
        "{text}"
    );
    // On the command line, the flag is named as clap names it.
    let out = imaged(&["config", "--max-streams", "abc"], &[("IMAGED_MAX_STREAMS", "abc")]);
    let text = output_text(&out);
    assert!(text.contains("for '--max-streams <N>'"), "{text}");
}
