//! The operations benchmark: what metrics cost the hot paths (the same
//! workloads against imaged with metrics off and on, side by side, the
//! metrics scraped every second while they run); what the `:authority` fix
//! costs clients that do not need it (the same workloads against imaged
//! with the fix turned off and on); and an online backup and
//! a restore of a filled store (their time against a ListStream of the same
//! store, the file's size, and the write rate while the backup runs as a
//! ratio of the rate without it).

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use imaged::transport::incoming::NO_AUTHORITY_FIX;

use crate::load::{self, Report, Workload};
use crate::servers::Server;

/// Sizes of a run.
pub struct Plan {
    /// Calls per measured workload.
    calls: u64,
    /// Rounds of the metrics comparison.
    rounds: u64,
    /// Images the backup's store holds.
    fill_to: u64,
}

impl Plan {
    /// The full run, or a short one that only proves it works.
    pub fn new(smoke: bool, fill_to: u64) -> Plan {
        if smoke {
            Plan {
                calls: 400,
                rounds: 1,
                fill_to: 3_000,
            }
        } else {
            Plan {
                calls: 20_000,
                rounds: 5,
                fill_to,
            }
        }
    }
}

/// Scrapes `socket`'s `/metrics` once a second until dropped.
fn scraper(socket: &Path) -> tokio::task::JoinHandle<()> {
    let socket = socket.to_owned();
    tokio::spawn(async move {
        loop {
            if let Ok(mut conn) = tokio::net::UnixStream::connect(&socket).await {
                let _ = conn
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .await;
                let mut answer = Vec::new();
                let _ = conn.read_to_end(&mut answer).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// One daemon's side of a metrics round: calls made, the time they took,
/// and the daemon's CPU time over them.
#[derive(Default, Clone, Copy)]
struct Side {
    calls: u64,
    time: Duration,
    cpu: Duration,
}

impl Side {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.time.as_secs_f64()
    }

    fn cpu_per_call(&self) -> f64 {
        self.cpu.as_secs_f64() / self.calls as f64
    }
}

/// What a side-by-side round compares: a daemon without a feature, and one
/// with it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// Metrics off, and on (scraped every second).
    Metrics,
    /// The `:authority` fix off, and on, for a client (tonic) that sends a
    /// valid authority.
    AuthorityFix,
    /// The fair-share machinery off (`IMAGED_BENCH_NO_SHARES`), and on;
    /// Gets at concurrency 32.
    Fairness,
}

/// One round of a comparison: create and get, (without, with).
pub struct Round {
    create: (Side, Side),
    get: (Side, Side),
}

/// Slices each workload is cut into, taken in turn by the two daemons, so
/// that the machine's moods fall on both alike.
const SLICES: u64 = 10;

/// One round of `compare` between two fresh daemons under `dir`.
pub async fn round(plan: &Plan, imaged: &Path, dir: &Path, compare: Compare) -> Result<Round, String> {
    let off_dir = dir.join("off");
    let on_dir = dir.join("on");
    std::fs::create_dir_all(&off_dir).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&on_dir).map_err(|e| e.to_string())?;
    let metrics = on_dir.join("metrics.sock");
    let (off, on, scraping) = match compare {
        Compare::Metrics => (
            Server::imaged(imaged, &off_dir)?,
            Server::imaged_with(imaged, &on_dir, &["--metrics-address", metrics.to_str().unwrap()])?,
            Some(scraper(&metrics)),
        ),
        Compare::AuthorityFix => (
            Server::imaged_env(imaged, &off_dir, &[], &[(NO_AUTHORITY_FIX, "1")])?,
            Server::imaged(imaged, &on_dir)?,
            None,
        ),
        Compare::Fairness => (
            Server::imaged_env(imaged, &off_dir, &[], &[(imaged::shares::NO_SHARES, "1")])?,
            Server::imaged(imaged, &on_dir)?,
            None,
        ),
    };
    let get_concurrency = if compare == Compare::Fairness { 32 } else { 16 };
    let servers = [&off, &on];
    let channels = [
        load::connect(&off.socket, 1).await.map_err(|e| e.to_string())?,
        load::connect(&on.socket, 1).await.map_err(|e| e.to_string())?,
    ];
    let slice = (plan.calls / SLICES).max(1);
    let mut create = [Side::default(); 2];
    let mut get = [Side::default(); 2];
    for (workload, sides, per_slice) in [("create", &mut create, slice), ("get", &mut get, slice * 2)] {
        for n in 0..SLICES {
            for turn in 0..2 {
                // Each slice, the other daemon goes first.
                let which = (turn + n as usize) % 2;
                let work = match workload {
                    "create" => Workload::Create { start: n * per_slice },
                    _ => Workload::Get {
                        existing: slice * SLICES,
                    },
                };
                let cpu = servers[which].cpu_time();
                let concurrency = if workload == "create" { 16 } else { get_concurrency };
                let report: Report = load::run(&channels[which], work, per_slice, concurrency).await?;
                let side = &mut sides[which];
                side.calls += report.calls;
                side.time += report.elapsed;
                side.cpu += servers[which].cpu_time().saturating_sub(cpu);
            }
        }
    }
    if let Some(scraping) = scraping {
        scraping.abort();
    }
    off.stop();
    on.stop();
    let _ = std::fs::remove_dir_all(&off_dir);
    let _ = std::fs::remove_dir_all(&on_dir);
    Ok(Round {
        create: (create[0], create[1]),
        get: (get[0], get[1]),
    })
}

/// What the backup measured.
struct BackupRun {
    images: u64,
    fill: Duration,
    stream: Duration,
    backup: Duration,
    file_bytes: u64,
    writes_alone: Report,
    writes_during: (u64, Duration),
    restore: Duration,
    restored: String,
}

async fn backup_run(plan: &Plan, imaged: &Path, dir: &Path) -> Result<BackupRun, String> {
    let server_dir = dir.join("backup");
    std::fs::create_dir_all(&server_dir).map_err(|e| e.to_string())?;
    let server = Server::imaged(imaged, &server_dir)?;
    let channels = load::connect(&server.socket, 1).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    load::fill(&channels, 0, plan.fill_to, plan.fill_to, 16).await?;
    let fill = started.elapsed();
    let (streamed, stream) = load::stream(channels[0].clone()).await?;
    let calls = plan.calls;
    let writes_alone = load::run(&channels, Workload::Create { start: plan.fill_to }, calls, 16).await?;

    // The backup, with writers running until it is done.
    let client = imaged_client::Client::connect(&server.socket).map_err(|e| e.to_string())?;
    let file = dir.join("imaged.backup");
    let mut out = tokio::fs::File::create(&file).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    let backup = tokio::spawn(async move { client.backup(&mut out).await.map(|_| started.elapsed()) });
    let mut next = plan.fill_to + calls;
    let mut written = 0;
    let writing = Instant::now();
    while !backup.is_finished() {
        load::run(&channels, Workload::Create { start: next }, 256, 16).await?;
        next += 256;
        written += 256;
    }
    let during = writing.elapsed();
    let backup = backup.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    let file_bytes = std::fs::metadata(&file).map_err(|e| e.to_string())?.len();
    server.stop();

    let root = dir.join("restored");
    let started = Instant::now();
    let out = std::process::Command::new(imaged)
        .env("IMAGED_CONFIG", "/dev/null")
        .env("IMAGED_LOG_LEVEL", "warn")
        .args(["restore", "--root"])
        .arg(&root)
        .arg(&file)
        .output()
        .map_err(|e| e.to_string())?;
    let restore = started.elapsed();
    if !out.status.success() {
        return Err(format!("restore failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let _ = std::fs::remove_dir_all(&server_dir);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&file);
    Ok(BackupRun {
        images: streamed,
        fill,
        stream,
        backup,
        file_bytes,
        writes_alone,
        writes_during: (written, during),
        restore,
        restored: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    })
}

/// Runs the benchmark and renders its report (Markdown).
pub async fn run(plan: &Plan, imaged: &Path, dir: &Path) -> Result<String, String> {
    let (mut metrics, mut fix) = (Vec::new(), Vec::new());
    for n in 0..plan.rounds {
        eprintln!("metrics round {}/{}", n + 1, plan.rounds);
        metrics.push(round(plan, imaged, dir, Compare::Metrics).await?);
        eprintln!("authority fix round {}/{}", n + 1, plan.rounds);
        fix.push(round(plan, imaged, dir, Compare::AuthorityFix).await?);
    }
    let backup = if plan.fill_to > 0 {
        eprintln!("backup of {} images", plan.fill_to);
        Some(backup_run(plan, imaged, dir).await?)
    } else {
        None
    };
    Ok(render(plan, &metrics, &fix, backup.as_ref()))
}

/// The rows of one comparison: each measure's ratio, with ÷ without, per
/// round and their median.
pub fn costs(rounds: &[Round]) -> String {
    let rate = |pair: &(Side, Side)| pair.1.rate() / pair.0.rate();
    let cpu = |pair: &(Side, Side)| pair.1.cpu_per_call() / pair.0.cpu_per_call();
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(", ");
    let row = |what: &str, v: Vec<f64>| {
        format!(
            "| {what} | {} | **{:.3}** |\n",
            list(&v),
            crate::median(&v).unwrap_or(0.0)
        )
    };
    let mut out = String::new();
    out.push_str(&row(
        "durable create rate",
        rounds.iter().map(|r| rate(&r.create)).collect(),
    ));
    out.push_str(&row("Get rate", rounds.iter().map(|r| rate(&r.get)).collect()));
    out.push_str(&row(
        "daemon CPU per durable create",
        rounds.iter().map(|r| cpu(&r.create)).collect(),
    ));
    out.push_str(&row("daemon CPU per Get", rounds.iter().map(|r| cpu(&r.get)).collect()));
    out.push('\n');
    out
}

fn render(plan: &Plan, metrics: &[Round], fix: &[Round], backup: Option<&BackupRun>) -> String {
    let mut out = String::new();
    out.push_str("# imaged operations benchmark\n\n");
    out.push_str(&format!(
        "Made by `cargo run --release -p imaged-bench -- ops`. {} rounds of each comparison; each round starts \
         two fresh daemons, one without the feature and one with it, and cuts each workload ({} creates, {} Gets, \
         at concurrency 16) into {SLICES} slices the two take in turn, the first of each pair alternating.\n\n",
        plan.rounds,
        plan.calls,
        plan.calls * 2
    ));
    out.push_str("## What metrics cost\n\n| measure, metrics on ÷ off | per round | median |\n|---|---|---|\n");
    out.push_str(&costs(metrics));
    out.push_str(
        "## What the `:authority` fix costs clients that do not need it\n\nThe same rounds, between a daemon \
         started with `IMAGED_BENCH_NO_AUTHORITY_FIX=1` (no fix) and one without it (the fix on). The benchmark's \
         client is tonic, which sends a valid authority: its connections are scanned up to their first header \
         block and then handed to h2 untouched.\n\n| measure, fix on ÷ off | per round | median |\n|---|---|---|\n",
    );
    out.push_str(&costs(fix));
    let Some(b) = backup else { return out };
    let during = b.writes_during.0 as f64 / b.writes_during.1.as_secs_f64();
    out.push_str(&format!(
        "## Online backup and restore of {} images\n\n| measure | value |\n|---|---|\n",
        b.images
    ));
    let rows = [
        (
            "backup time ÷ one ListStream of every image",
            format!("{:.2}", b.backup.as_secs_f64() / b.stream.as_secs_f64()),
        ),
        (
            "restore time ÷ backup time",
            format!("{:.2}", b.restore.as_secs_f64() / b.backup.as_secs_f64()),
        ),
        (
            "restore time ÷ filling the store through the API",
            format!("{:.3}", b.restore.as_secs_f64() / b.fill.as_secs_f64()),
        ),
        (
            "file bytes per image",
            format!("{:.0}", b.file_bytes as f64 / b.images as f64),
        ),
        (
            "create rate during the backup ÷ without it (concurrency 16)",
            format!("**{:.2}**", during / b.writes_alone.rate()),
        ),
        (
            "backup, on this machine",
            format!("{:.1} s, {} MiB", b.backup.as_secs_f64(), b.file_bytes >> 20),
        ),
        ("restore, on this machine", format!("{:.1} s", b.restore.as_secs_f64())),
    ];
    for (what, value) in rows {
        out.push_str(&format!("| {what} | {value} |\n"));
    }
    out.push_str(&format!("\n`imaged restore` said: {}\n", b.restored));
    out
}
