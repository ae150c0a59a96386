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
        // Runs on until killed, at the end of each round.
        case(
            Attack::Churn,
            3003,
            scale(1_000_000, 100),
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

/// One call's figures over the rounds: the median of each, and the errors
/// of all.
#[derive(Default)]
struct Figures {
    p50: Vec<f64>,
    p99: Vec<f64>,
    max: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
}

impl Figures {
    fn add(&mut self, measured: &serde_json::Value) {
        let ms = |key: &str| measured[key].as_f64().unwrap_or(f64::NAN);
        self.p50.push(ms("p50_ms"));
        self.p99.push(ms("p99_ms"));
        self.max.push(ms("max_ms"));
        self.errors += measured["errors"].as_u64().unwrap_or(0);
        if self.first_error.is_none() {
            self.first_error = measured["first_error"].as_str().map(str::to_owned);
        }
    }

    fn median(values: &[f64]) -> f64 {
        crate::median(values).unwrap_or(f64::NAN)
    }

    fn show(&self) -> String {
        format!(
            "{:.2} / {:.2} / {:.2}",
            Figures::median(&self.p50),
            Figures::median(&self.p99),
            Figures::median(&self.max)
        )
    }
}

/// One attack's row: (Get, create) quiet and attacked.
struct Row {
    case: String,
    said: Vec<String>,
    quiet: (Figures, Figures),
    loud: (Figures, Figures),
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

/// Puts `count` images of about 60 KiB into `default`, as root, so that
/// a stream of them outgrows what the transport buffers and a reader that
/// stops reading stalls.
async fn seed_big(socket: &Path, count: u64) -> Result<(), String> {
    use imaged_api::containerd::v1 as seed;
    let channel = crate::load::connect(socket, 1)
        .await
        .map_err(|e| e.to_string())?
        .remove(0);
    let mut client = seed::images_client::ImagesClient::new(channel);
    for i in 0..count {
        let image = seed::Image {
            name: format!("big/image:{i}"),
            target: Some(imaged_api::containerd::types::Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: format!("sha256:{:064x}", i),
                size: 1,
                annotations: Default::default(),
            }),
            labels: (0..15).map(|k| (format!("k{k}"), "v".repeat(4000))).collect(),
            ..Default::default()
        };
        let put = seed::PutRequest {
            image: Some(image),
            ..Default::default()
        };
        client.put(put).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn attack_row(imaged: &Path, bin: &Path, dir: &Path, case: &Case, plan: &Plan) -> Result<Row, String> {
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
    seed_big(&socket, plan.big_images).await?;
    let mut row = Row {
        case: format!("{} (uid {}, grant: {})", attack_name(case.attack), case.uid, case.grant),
        said: Vec::new(),
        quiet: Default::default(),
        loud: Default::default(),
        rss_quiet: 0.0,
        rss_loud: 0.0,
    };
    // Rounds of quiet then attacked, so the machine's moods fall on both.
    for _ in 0..plan.rounds {
        let quiet = victim(bin, &socket, plan.seconds)?;
        row.quiet.0.add(&quiet.get);
        row.quiet.1.add(&quiet.create);
        row.rss_quiet = row.rss_quiet.max(server.rss_mib());
        let (hog, said) = start_hog(bin, case, &socket, &metrics)?;
        let loud = victim(bin, &socket, plan.seconds)?;
        row.loud.0.add(&loud.get);
        row.loud.1.add(&loud.create);
        row.rss_loud = row.rss_loud.max(server.rss_mib());
        drop(hog);
        row.said = said;
    }
    server.stop();
    Ok(row)
}

/// Sizes of a run.
struct Plan {
    seconds: f64,
    rounds: usize,
    /// Images of 60 KiB seeded before the victim starts.
    big_images: u64,
}

fn attack_name(attack: Attack) -> String {
    clap::ValueEnum::to_possible_value(&attack).map_or_else(|| format!("{attack:?}"), |v| v.get_name().to_owned())
}

/// Runs every attack (or those of `only`, then without the cost
/// comparison) and the cost comparison, and renders the report.
pub async fn run(smoke: bool, imaged: &Path, only: &[Attack]) -> Result<String, String> {
    let mut out = String::from("# imaged noisy-neighbour benchmark\n\n");
    if !is_root() {
        out.push_str("Not run: every caller runs as a uid of its own through setpriv, which needs root.\n");
        return Ok(out);
    }
    let (dir, bin) = workspace()?;
    let plan = if smoke {
        Plan {
            seconds: 1.0,
            rounds: 1,
            big_images: 20,
        }
    } else {
        Plan {
            seconds: 5.0,
            rounds: 3,
            big_images: 300,
        }
    };
    let mut rows = Vec::new();
    for case in cases(smoke)
        .into_iter()
        .filter(|c| only.is_empty() || only.contains(&c.attack))
    {
        eprintln!("attack: {}", attack_name(case.attack));
        rows.push(attack_row(imaged, &bin, dir.path(), &case, &plan).await?);
    }
    let rounds = match (smoke, only.is_empty()) {
        (_, false) => 0,
        (true, true) => 1,
        (false, true) => 5,
    };
    let cost_plan = ops::Plan::new(smoke, 0);
    let mut cost = Vec::new();
    for n in 0..rounds {
        eprintln!("fairness cost round {}/{rounds}", n + 1);
        cost.push(ops::round(&cost_plan, imaged, dir.path(), ops::Compare::Fairness).await?);
    }
    out.push_str(&format!(
        "Made by `cargo run --release -p imaged-bench -- neighbours` as root. For each attack a fresh imaged \
         (default settings, the access policy below, metrics on a Unix socket, {} images of 60 KiB in \
         `default`) serves a victim, uid {VICTIM}, a writer in its own namespace, making Gets and creates at \
         concurrency 4 for {} s, alone (quiet) and then once the attacker, a uid of its own, has its attack in \
         place (attacked); {} rounds of the two, each with the attack made afresh. Latencies are the victim's \
         medians over the rounds, in ms. Target: attacked p99 at most 2 × quiet p99, no error.\n\n```toml{POLICY}```\n\n",
        plan.big_images, plan.seconds, plan.rounds
    ));
    out.push_str(
        "| attack (attacker's uid and grant) | call | quiet p50 / p99 / max | attacked p50 / p99 / max | p99 ÷ \
         quiet | victim errors | daemon RSS quiet → attacked (MiB, most) |\n|---|---|---|---|---|---|---|\n",
    );
    for row in &rows {
        for (call, quiet, loud) in [
            ("Get", &row.quiet.0, &row.loud.0),
            ("create", &row.quiet.1, &row.loud.1),
        ] {
            let errors = quiet.errors + loud.errors;
            let first = loud.first_error.as_ref().or(quiet.first_error.as_ref());
            out.push_str(&format!(
                "| {} | {call} | {} | {} | **{:.2}** | {errors}{} | {:.0} → {:.0} |\n",
                row.case,
                quiet.show(),
                loud.show(),
                Figures::median(&loud.p99) / Figures::median(&quiet.p99),
                first.map_or(String::new(), |e| format!(" ({e})")),
                row.rss_quiet,
                row.rss_loud,
            ));
        }
    }
    out.push_str("\nWhat each attacker got, in its own words (its last round):\n\n");
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
