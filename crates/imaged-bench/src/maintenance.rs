//! The maintenance benchmark: what callers wait for while the engine keeps
//! itself up. Two daemons in turn, in one run: one that reopens sled
//! (`--rotate-after-percent 0`, the engine before rotations) and one that
//! rotates it (the default). For each, a store is filled, then creates at
//! c16 and Gets of images spread over the whole store at c4 run at once
//! for a while, so that maintenance falls inside the window; the report
//! gives the p99 and the max of each, every reopen and rotation the daemon
//! logged meanwhile with how long writes waited, and the data directory's
//! peak size. Then the daemon is killed (SIGKILL) and started again on the
//! same store: how long until it answers a Get.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::load::{self, Report, Workload};
use crate::servers::Server;

/// Sizes of a run.
pub struct Plan {
    /// Images the store is filled to.
    pub fill_to: u64,
    /// About how long the creates and Gets run together.
    pub seconds: u64,
    /// Extra flags for both daemons (such as `--sled-snapshot-mb 8`).
    pub args: Vec<String>,
}

impl Plan {
    /// The run for `fill_to` images, or a short one that only proves it
    /// works (with frequent maintenance, so that some falls in the window).
    pub fn new(smoke: bool, fill_to: u64, seconds: u64, args: Vec<String>) -> Plan {
        if smoke {
            Plan {
                fill_to: 3_000,
                seconds: 3,
                args: vec!["--sled-snapshot-mb".into(), "1".into()],
            }
        } else {
            Plan { fill_to, seconds, args }
        }
    }
}

/// The two engines compared.
const ARMS: [(&str, &[&str]); 2] = [("reopen", &["--rotate-after-percent", "0"]), ("rotation", &[])];

/// What one arm measured.
struct Arm {
    name: &'static str,
    created: Report,
    got: Report,
    /// The reopens and rotations logged in the window.
    upkeep: Vec<Upkeep>,
    /// What the commit loop waited for in the window, by its metrics.
    waits: Waits,
    /// The data directory's largest size in the window, and its size after.
    peak_bytes: u64,
    end_bytes: u64,
    answered: Duration,
}

/// What the daemon logged of its upkeep.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// sled reopened.
    Reopen,
    /// A rotation began, with nothing measured yet.
    Start,
    /// A rotation swapped in.
    Swap,
    /// A rotation given up.
    Abandon,
}

/// One reopen or rotation the daemon logged (or a rotation's start or end
/// without a swap).
struct Upkeep {
    /// When it was logged, in seconds: of the day (UTC) as read, then since
    /// the window began.
    at: f64,
    kind: Kind,
    /// How long writes waited.
    paused_ms: u64,
    /// A reopen's checkpoint before it, or a rotation's copy.
    work_ms: u64,
    /// A rotation's entries copied, and sled's size before and after (MiB).
    keys: u64,
    before_mib: u64,
    after_mib: u64,
}

/// Runs the plan against each arm of the daemon at `binary`, in
/// directories under `dir`; returns the report (Markdown).
pub async fn run(plan: &Plan, binary: &Path, dir: &Path) -> Result<String, String> {
    let mut arms = Vec::new();
    for (name, flags) in ARMS {
        let arm_dir = dir.join(name);
        std::fs::create_dir_all(&arm_dir).map_err(|e| e.to_string())?;
        arms.push(run_arm(plan, name, flags, binary, &arm_dir).await?);
    }
    Ok(report(plan, &arms))
}

async fn run_arm(plan: &Plan, name: &'static str, flags: &[&str], binary: &Path, dir: &Path) -> Result<Arm, String> {
    let mut args: Vec<&str> = plan.args.iter().map(String::as_str).collect();
    args.extend_from_slice(flags);
    let metrics = dir.join("metrics.sock");
    let mut serving_args = args.clone();
    serving_args.extend([
        "--metrics-address",
        metrics.to_str().ok_or("a temporary path is not UTF-8")?,
    ]);
    let server = Server::imaged_env(binary, dir, &serving_args, &[("IMAGED_LOG_LEVEL", "info")])?;
    let channels = load::connect(&server.socket, 4).await.map_err(|e| e.to_string())?;
    eprintln!("imaged ({name}): filling {} images…", plan.fill_to);
    let step = (plan.fill_to / 10).max(1);
    let fill = load::fill(&channels, 0, plan.fill_to, step, 16).await?;
    let create_rate = fill.last().map_or(1000.0, |(_, r)| r.rate());
    // The Gets' rate alone, briefly, to size the window's Gets.
    let probe = load::run(&channels, Workload::Get { existing: plan.fill_to }, 2_000, 4).await?;
    let log = dir.join("imaged.log");
    let before = upkeep(&log).len();
    let waits_before = Waits::scrape(&metrics)?;
    let creates = (create_rate * plan.seconds as f64) as u64;
    // Gets share the cores with the creates: about half their rate alone.
    let gets = (probe.rate() * plan.seconds as f64 / 2.0) as u64;
    eprintln!("imaged ({name}): {creates} creates at c16 and {gets} Gets at c4, together…");
    let (sampling, peak) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicU64::new(0)));
    let sampler = {
        let (sampling, peak, data) = (sampling.clone(), peak.clone(), dir.join("data"));
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(imaged::store::files_bytes(&data), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let window = seconds_of_day(std::time::SystemTime::now());
    let (created, got) = tokio::join!(
        load::run(&channels, Workload::Create { start: plan.fill_to }, creates.max(1), 16),
        load::run(&channels, Workload::Get { existing: plan.fill_to }, gets.max(1), 4),
    );
    let (created, got) = (created?, got?);
    // The log line is written once the upkeep is done.
    tokio::time::sleep(Duration::from_millis(200)).await;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let mut during: Vec<Upkeep> = upkeep(&log).into_iter().skip(before).collect();
    for u in &mut during {
        u.at -= window;
    }
    let waits = Waits::scrape(&metrics)?.since(&waits_before);
    let end_bytes = imaged::store::files_bytes(&dir.join("data"));
    drop(channels);
    // Dropped, the server is killed with SIGKILL: the restart recovers.
    drop(server);
    let restarted = Instant::now();
    let server = Server::imaged_env(binary, dir, &args, &[])?;
    let channels = load::connect(&server.socket, 1).await.map_err(|e| e.to_string())?;
    load::run(&channels, Workload::Get { existing: plan.fill_to }, 1, 1).await?;
    let answered = restarted.elapsed();
    server.stop();
    Ok(Arm {
        name,
        created,
        got,
        upkeep: during,
        waits,
        peak_bytes: peak.load(Ordering::Relaxed).max(end_bytes),
        end_bytes,
        answered,
    })
}

/// Counts from two of the daemon's histograms: checkpoints (sled's full
/// barrier, run when the journal fills) and journal syncs. Every write
/// behind one waits for it, so they bound what maintenance does not explain.
#[derive(Default)]
struct Waits {
    checkpoints: u64,
    checkpoint_seconds: f64,
    /// Of them, those over 100 ms.
    checkpoints_slow: u64,
    syncs: u64,
    syncs_slow: u64,
}

impl Waits {
    /// Reads the metrics from the daemon's listener at `socket` (HTTP over
    /// a Unix socket).
    fn scrape(socket: &Path) -> Result<Waits, String> {
        use std::io::{Read, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(socket)
            .map_err(|e| format!("metrics at {}: {e}", socket.display()))?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: imaged\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        stream.read_to_string(&mut text).map_err(|e| e.to_string())?;
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
                .unwrap_or(0.0)
        };
        let count = |family: &str| -> (u64, u64) {
            let count = value(&format!("{family}_count "));
            let under = value(&format!("{family}_bucket{{le=\"0.1\"}} "));
            (count as u64, under as u64)
        };
        let (checkpoints, checkpoints_fast) = count("imaged_checkpoint_duration_seconds");
        let (syncs, syncs_fast) = count("imaged_journal_sync_duration_seconds");
        Ok(Waits {
            checkpoints,
            checkpoint_seconds: value("imaged_checkpoint_duration_seconds_sum "),
            checkpoints_slow: checkpoints - checkpoints_fast,
            syncs,
            syncs_slow: syncs - syncs_fast,
        })
    }

    /// What happened between `before` and this.
    fn since(&self, before: &Waits) -> Waits {
        Waits {
            checkpoints: self.checkpoints - before.checkpoints,
            checkpoint_seconds: self.checkpoint_seconds - before.checkpoint_seconds,
            checkpoints_slow: self.checkpoints_slow - before.checkpoints_slow,
            syncs: self.syncs - before.syncs,
            syncs_slow: self.syncs_slow - before.syncs_slow,
        }
    }
}

/// Every reopen and rotation in the daemon's log, in order.
fn upkeep(log: &Path) -> Vec<Upkeep> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let field = |line: &str, name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    text.lines()
        .filter_map(|l| {
            let kind = if l.contains("reopened sled") {
                Kind::Reopen
            } else if l.contains("rotating sled: copying") {
                Kind::Start
            } else if l.contains("rotated sled") {
                Kind::Swap
            } else if l.contains("rotation of sled was abandoned") {
                Kind::Abandon
            } else {
                return None;
            };
            Some(Upkeep {
                at: logged_at(l).unwrap_or(f64::NAN),
                kind,
                paused_ms: field(l, "paused_ms="),
                work_ms: field(l, if kind == Kind::Reopen { "sync_ms=" } else { "copy_ms=" }),
                keys: field(l, "keys="),
                before_mib: field(l, "before_mib="),
                after_mib: field(l, "after_mib="),
            })
        })
        .collect()
}

/// Seconds since midnight UTC of `t`.
fn seconds_of_day(t: std::time::SystemTime) -> f64 {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (since.as_secs() % 86_400) as f64 + f64::from(since.subsec_micros()) / 1e6
}

/// The time of day (UTC, in seconds) that a log line of the daemon's
/// begins with: `2026-12-07T17:43:01.123456Z …`.
fn logged_at(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let (h, m, s): (f64, f64, f64) = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The slow calls of `r` as "+start s (ms)", the first `n` of them.
fn slow_calls(r: &Report, n: usize) -> String {
    let shown: Vec<String> = r
        .slow
        .iter()
        .take(n)
        .map(|(at, took)| format!("+{:.1} s ({:.0})", at.as_secs_f64(), took.as_secs_f64() * 1000.0))
        .collect();
    match r.slow.len() {
        0 => "none".into(),
        k if k > n => format!("{k}, the first {n}: {}", shown.join(", ")),
        k => format!("{k}: {}", shown.join(", ")),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1 << 20) as f64)
}

fn list(values: impl Iterator<Item = u64>) -> String {
    let values: Vec<String> = values.map(|v| v.to_string()).collect();
    if values.is_empty() {
        "-".into()
    } else {
        values.join(", ")
    }
}

fn report(plan: &Plan, arms: &[Arm]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Latency through the engine's maintenance\n");
    let _ = writeln!(
        out,
        "{} images, then creates at c16 and Gets of random images at c4 together for about {} s, against \
         imaged reopening sled (`--rotate-after-percent 0`) and rotating it (the default), one after the \
         other in one run; flags of both: `{}`. Generated by `imaged-bench maintenance`; docs/PERFORMANCE.md \
         explains it.\n",
        plan.fill_to,
        plan.seconds,
        plan.args.join(" ")
    );
    let _ = writeln!(out, "| engine | calls | count | rate /s | p50 ms | p99 ms | max ms |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for arm in arms {
        for (calls, r) in [("creates (c16)", &arm.created), ("Gets (c4)", &arm.got)] {
            let _ = writeln!(
                out,
                "| {} | {calls} | {} | {:.0} | {} | {} | {} |",
                arm.name,
                r.calls,
                r.rate(),
                ms(r.p50),
                ms(r.p99),
                ms(r.max)
            );
        }
    }
    for arm in arms {
        let of = |kind: Kind| arm.upkeep.iter().filter(move |u| u.kind == kind);
        let reopens: Vec<&Upkeep> = of(Kind::Reopen).collect();
        let rotations: Vec<&Upkeep> = of(Kind::Swap).collect();
        let _ = writeln!(out, "\n**{}**:", arm.name);
        let _ = writeln!(
            out,
            "- Reopens of sled in the window: {} (paused ms: {}; checkpoint ms: {}).",
            reopens.len(),
            list(reopens.iter().map(|u| u.paused_ms)),
            list(reopens.iter().map(|u| u.work_ms)),
        );
        let _ = writeln!(
            out,
            "- Rotations in the window: {} (writes paused ms: {}; copy ms: {}; entries copied: {}; sled MiB \
             before → after: {}).",
            rotations.len(),
            list(rotations.iter().map(|u| u.paused_ms)),
            list(rotations.iter().map(|u| u.work_ms)),
            list(rotations.iter().map(|u| u.keys)),
            if rotations.is_empty() {
                "-".into()
            } else {
                rotations
                    .iter()
                    .map(|u| format!("{} → {}", u.before_mib, u.after_mib))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        let at = |values: &mut dyn Iterator<Item = f64>| {
            let shown: Vec<String> = values.map(|v| format!("+{v:.1} s")).collect();
            if shown.is_empty() { "-".into() } else { shown.join(", ") }
        };
        let _ = writeln!(
            out,
            "- In the window (seconds since it began): rotations started {}; swapped {}; abandoned {}; \
             reopens {}.",
            at(&mut of(Kind::Start).map(|u| u.at)),
            at(&mut rotations.iter().map(|u| u.at)),
            at(&mut of(Kind::Abandon).map(|u| u.at)),
            at(&mut reopens.iter().map(|u| u.at)),
        );
        let _ = writeln!(out, "- Creates over 100 ms: {}.", slow_calls(&arm.created, 40));
        let _ = writeln!(out, "- Gets over 100 ms: {}.", slow_calls(&arm.got, 40));
        let w = &arm.waits;
        let _ = writeln!(
            out,
            "- Checkpoints (journal full): {}, {} of them over 100 ms, mean {} ms; journal syncs: {}, {} over \
             100 ms.",
            w.checkpoints,
            w.checkpoints_slow,
            if w.checkpoints == 0 {
                "-".into()
            } else {
                format!("{:.1}", w.checkpoint_seconds * 1000.0 / w.checkpoints as f64)
            },
            w.syncs,
            w.syncs_slow,
        );
        let _ = writeln!(
            out,
            "- Data directory: {} MiB at its peak in the window, {} MiB after it.",
            mib(arm.peak_bytes),
            mib(arm.end_bytes)
        );
        let _ = writeln!(
            out,
            "- Killed with SIGKILL after the window and started again: it answered a Get {} ms after the start.",
            ms(arm.answered)
        );
    }
    out
}
