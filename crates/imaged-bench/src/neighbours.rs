//! The noisy-neighbour benchmark: each hostile caller of
//! [`crate::hostile`] against a fresh imaged, beside a victim of another
//! uid. The victim's Get and create latencies (p50, p99, max) and errors,
//! without the attacker and then with it, side by side, and the daemon's
//! RSS; then what the share machinery costs the hot paths (the same
//! workloads against imaged with fairness off and on, as the operations
//! benchmark measures metrics).
//!
//! Every process runs as its own uid through `setpriv`, so this needs root.
//! The target: under every attack the victim's p99 is at most twice its
//! quiet p99, with no error and no refusal. Nothing here asserts on time;
//! the report says what was measured.

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::hostile::Attack;
use crate::ops;
use crate::servers::Server;

/// The victim's uid: a writer in namespace `victim`.
const VICTIM: u32 = 2000;

/// The attackers' grants, by uid.
const POLICY: &str = r#"
socket_mode = "0666"

[[access]]              # the victim
role = "writer"
uids = [2000]
namespaces = ["victim"]

[[access]]              # a reader over everything
role = "reader"
uids = [3002]

[[access]]              # a writer limited to its own namespace
role = "writer"
uids = [3003]
namespaces = ["attacker"]

[[access]]              # a writer everywhere
role = "writer"
uids = [3004]
"#;

/// One attack of the run: who makes it, how hard, in which namespace.
struct Case {
    attack: Attack,
    uid: u32,
    count: u64,
    namespace: &'static str,
    /// What the attacker is granted, for the report.
    grant: &'static str,
}

fn cases(smoke: bool) -> Vec<Case> {
    let scale = |full: u64, small: u64| if smoke { small } else { full };
    let case = |attack, uid, count, namespace, grant| Case {
        attack,
        uid,
        count,
        namespace,
        grant,
    };
    vec![
        case(Attack::IdleConnections, 3001, scale(4100, 300), "default", "none"),
        case(Attack::Regex, 3002, 1, "default", "reader"),
        case(
            Attack::Watchers,
            3003,
            scale(1100, 200),
            "attacker",
            "writer of its namespace",
        ),
        case(
            Attack::Leases,
            3003,
            scale(2000, 200),
            "attacker",
            "writer of its namespace",
        ),
        case(Attack::Streams, 3002, scale(300, 50), "default", "reader"),
        case(Attack::HealthWatches, 3001, scale(2000, 50), "default", "none"),
        case(Attack::HealthWatches, 3002, scale(2000, 50), "default", "reader"),
        case(Attack::Subscriptions, 3002, scale(1100, 200), "default", "reader"),
        case(
            Attack::Churn,
            3003,
            scale(2000, 100),
            "attacker",
            "writer of its namespace",
        ),
        case(Attack::Publish, 3004, scale(128, 8), "default", "writer"),
        case(Attack::MetricsIdle, 3001, scale(64, 32), "default", "none"),
        case(Attack::LogFlood, 3001, scale(2000, 200), "default", "none"),
    ]
}

/// `program args` as `uid` (gid the same), no supplementary groups.
fn as_uid(uid: u32, program: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &uid.to_string(),
            "--clear-groups",
        ])
        .arg(program)
        .args(args);
    command
}

/// A hog running as its uid, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `case`'s hog and waits until it says `ready`; returns it and
/// what it said.
fn start_hog(bin: &Path, case: &Case, socket: &Path, metrics: &Path) -> Result<(Running, Vec<String>), String> {
    let attack = format!("{:?}", case.attack);
    let attack = clap::ValueEnum::to_possible_value(&case.attack).map_or(attack, |v| v.get_name().to_owned());
    let count = case.count.to_string();
    let mut child = as_uid(
        case.uid,
        bin,
        &[
            "hog",
            "--attack",
            &attack,
            "--address",
            socket.to_str().unwrap(),
            "--metrics",
            metrics.to_str().unwrap(),
            "--namespace",
            case.namespace,
            "--count",
            &count,
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .map_err(|e| format!("starting the {attack} hog: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut said = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line == "ready" => return Ok((running, said)),
            Ok(line) => said.push(line),
            Err(_) => return Err(format!("the {attack} hog never got ready; it said: {said:?}")),
        }
    }
}

/// What a victim run measured, as its JSON.
struct VictimRun {
    get: serde_json::Value,
    create: serde_json::Value,
}

fn victim(bin: &Path, socket: &Path, seconds: f64) -> Result<VictimRun, String> {
    let out = as_uid(
        VICTIM,
        bin,
        &[
            "victim",
            "--address",
            socket.to_str().unwrap(),
            "--seconds",
            &seconds.to_string(),
        ],
    )
    .output()
    .map_err(|e| format!("running the victim: {e}"))?;
    if !out.status.success() {
        return Err(format!("the victim failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("the victim's answer {text:?}: {e}"))?;
    Ok(VictimRun {
        get: json["get"].clone(),
        create: json["create"].clone(),
    })
}

/// One attack's row.
struct Row {
    case: String,
    said: Vec<String>,
    quiet: VictimRun,
    loud: VictimRun,
    rss_quiet: f64,
    rss_loud: f64,
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A directory every uid can pass through, with a copy of this binary every
/// uid can run.
fn workspace() -> Result<(tempfile::TempDir, PathBuf), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    let bin = dir.path().join("imaged-bench");
    std::fs::copy(std::env::current_exe().map_err(|e| e.to_string())?, &bin).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    Ok((dir, bin))
}

async fn attack_row(imaged: &Path, bin: &Path, dir: &Path, case: &Case, seconds: f64) -> Result<Row, String> {
    let daemon_dir = dir.join("daemon");
    let _ = std::fs::remove_dir_all(&daemon_dir);
    std::fs::create_dir_all(&daemon_dir).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&daemon_dir, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    let config = daemon_dir.join("config.toml");
    let metrics = daemon_dir.join("metrics.sock");
    std::fs::write(&config, POLICY).map_err(|e| e.to_string())?;
    let server = Server::imaged_with(
        imaged,
        &daemon_dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics-address",
            metrics.to_str().unwrap(),
            "--socket-mode",
            "0666",
        ],
    )?;
    let socket = server.socket.clone();
    let quiet = victim(bin, &socket, seconds)?;
    let rss_quiet = server.rss_mib();
    let (hog, said) = start_hog(bin, case, &socket, &metrics)?;
    let loud = victim(bin, &socket, seconds)?;
    let rss_loud = server.rss_mib();
    drop(hog);
    server.stop();
    Ok(Row {
        case: format!("{} (uid {}, grant: {})", attack_name(case.attack), case.uid, case.grant),
        said,
        quiet,
        loud,
        rss_quiet,
        rss_loud,
    })
}

fn attack_name(attack: Attack) -> String {
    clap::ValueEnum::to_possible_value(&attack).map_or_else(|| format!("{attack:?}"), |v| v.get_name().to_owned())
}

/// Runs every attack and the cost comparison, and renders the report.
pub async fn run(smoke: bool, imaged: &Path) -> Result<String, String> {
    let mut out = String::from("# imaged noisy-neighbour benchmark\n\n");
    if !is_root() {
        out.push_str("Not run: every caller runs as a uid of its own through setpriv, which needs root.\n");
        return Ok(out);
    }
    let (dir, bin) = workspace()?;
    let seconds = if smoke { 1.0 } else { 10.0 };
    let mut rows = Vec::new();
    for case in cases(smoke) {
        eprintln!("attack: {}", attack_name(case.attack));
        rows.push(attack_row(imaged, &bin, dir.path(), &case, seconds).await?);
    }
    let rounds = if smoke { 1 } else { 5 };
    let plan = ops::Plan::new(smoke, 0);
    let mut cost = Vec::new();
    for n in 0..rounds {
        eprintln!("fairness cost round {}/{rounds}", n + 1);
        cost.push(ops::round(&plan, imaged, dir.path(), ops::Compare::Fairness).await?);
    }
    out.push_str(&format!(
        "Made by `cargo run --release -p imaged-bench -- neighbours` as root. For each attack a fresh imaged \
         (default settings, the access policy below, metrics on a Unix socket) serves a victim, uid {VICTIM}, \
         a writer in its own namespace, making Gets and creates at concurrency 4 for {seconds} s: first alone \
         (quiet), then again once the attacker, a uid of its own, has its attack in place (attacked). Latencies \
         are the victim's, in ms. Target: attacked p99 at most 2 × quiet p99, no error.\n\n```toml{POLICY}```\n\n"
    ));
    out.push_str(
        "| attack (attacker's uid and grant) | call | quiet p50 / p99 / max | attacked p50 / p99 / max | p99 ÷ \
         quiet | victim errors | daemon RSS quiet → attacked (MiB) |\n|---|---|---|---|---|---|---|\n",
    );
    let ms = |v: &serde_json::Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
    for row in &rows {
        for (call, quiet, loud) in [
            ("Get", &row.quiet.get, &row.loud.get),
            ("create", &row.quiet.create, &row.loud.create),
        ] {
            let errors = loud["errors"].as_u64().unwrap_or(0) + quiet["errors"].as_u64().unwrap_or(0);
            let first = loud["first_error"]
                .as_str()
                .or(quiet["first_error"].as_str())
                .unwrap_or("");
            out.push_str(&format!(
                "| {} | {call} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} / {:.2} | **{:.2}** | {errors}{} | {:.0} → \
                 {:.0} |\n",
                row.case,
                ms(quiet, "p50_ms"),
                ms(quiet, "p99_ms"),
                ms(quiet, "max_ms"),
                ms(loud, "p50_ms"),
                ms(loud, "p99_ms"),
                ms(loud, "max_ms"),
                ms(loud, "p99_ms") / ms(quiet, "p99_ms"),
                if first.is_empty() {
                    String::new()
                } else {
                    format!(" ({first})")
                },
                row.rss_quiet,
                row.rss_loud,
            ));
        }
    }
    out.push_str("\nWhat each attacker got, in its own words:\n\n");
    for row in &rows {
        out.push_str(&format!("- {}: {}\n", row.case, row.said.join("; ")));
    }
    out.push_str(
        "\n## What the share machinery costs\n\nTwo fresh daemons per round, one with the machinery off \
         (`IMAGED_BENCH_NO_SHARES=1`: nothing counted, bounded or queued) and one with it on; durable creates at \
         concurrency 16 and Gets at concurrency 32, cut into slices the two take in turn.\n\n| measure, \
         fairness on ÷ off | per round | median |\n|---|---|---|\n",
    );
    out.push_str(&ops::costs(&cost));
    Ok(out)
}
