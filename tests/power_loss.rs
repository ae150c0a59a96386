//! The power-loss harness. The data directory lives on `cutfs`, a FUSE file
//! system (crates/cutfs) that keeps everything not yet synced in memory and
//! drops it on command, as a disk losing power does: file contents survive
//! only by their own `fsync`, directory entries only by their directory's.
//! The writers of the crash harness record every acknowledged change; each
//! cycle the daemon dies where it stands and, every other round of windows,
//! the power goes with it. The windows, the first four with sled reopened
//! after every MiB journaled (so its snapshot is written often), the last
//! two at the production default (so the journal's checkpoints, and not
//! the syncs before each open of sled, are what keeps sled's writes):
//! - an arbitrary moment;
//! - inside sled's snapshot write at its periodic reopen (held halfway
//!   through a write of `snap.*.generating`, which lands torn);
//! - between that write and its rename to `snap.*`;
//! - inside the snapshot write of the start-up after a crash;
//! - an arbitrary moment, at production settings;
//! - inside a journal write, at production settings (held halfway).
//!
//! A power cut drops what was not synced, or, in turn, keeps a random
//! subset of each file's unsynced writes, a random in-order prefix, a prefix
//! with the next write torn, or a prefix of the unsynced renames, creations
//! and removals, as a real disk and a journaling file system may
//! (cutfs's cut modes).
//!
//! `imaged check` then verifies the stopped store, and after a restart
//! every acknowledged change must be there; every third cycle the daemon
//! restarts straight after the crash, its own recovery meeting the cut
//! state, and the check waits for a later cycle. 24 cycles, or
//! `IMAGED_POWER_CYCLES`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Daemon;
use common::writers::{Model, Rng};
use cutfs::Mount;
use nix::sys::signal::Signal;

/// Cycles when `IMAGED_POWER_CYCLES` is not set.
const CYCLES: usize = 24;

/// Where each cycle's crash lands, in turn, and whether the daemon runs at
/// the production default there (else sled is reopened every MiB).
const WINDOWS: [(&str, bool); 6] = [
    ("any", false),
    ("snapshot write", false),
    ("snapshot rename", false),
    ("start-up snapshot", false),
    ("any", true),
    ("journal write", true),
];

/// The cut modes of cutfs a power cut takes, in turn.
const CUTS: [&str; 5] = ["", "subset", "prefix", "torn", "metadata"];

/// The daemon's flags for a window at the production default or not.
fn settings(production: bool) -> Vec<String> {
    if production {
        Vec::new()
    } else {
        // sled is reopened after every MiB of journaled writes, and writes
        // its snapshot at each open.
        vec!["--sled-snapshot-mb".to_string(), "1".to_string()]
    }
}

/// The power-loss harness's view of cutfs: a refused command fails the
/// test. It takes the cut modes in turn, each with a seed of its own.
struct CutFs(Mount, u64);

impl CutFs {
    /// Cuts the power, in the next mode; says what was set back.
    fn cut(&mut self) -> String {
        self.1 = self
            .1
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mode = CUTS[(self.1 >> 33) as usize % CUTS.len()];
        let command = match mode {
            "" => "cut".to_string(),
            mode => format!("cut {mode} {}", self.1 >> 1),
        };
        let answer = self.command(&command);
        format!("{command}: {}", answer.trim_start_matches("ok cut "))
    }

    fn command(&mut self, command: &str) -> String {
        let answer = self.0.command(command);
        assert!(answer.starts_with("ok"), "cutfs: {command}: {answer}");
        answer
    }

    /// Waits for the armed trap to hold an operation.
    fn held(&mut self, within: Duration) -> Option<String> {
        let line = self.0.line(within)?;
        assert!(line.starts_with("stalled"), "cutfs: {line}");
        Some(line)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_power_cuts() {
    if !cutfs::can_mount() {
        return;
    }
    let cycles = std::env::var("IMAGED_POWER_CYCLES")
        .ok()
        .map_or(CYCLES, |n| n.parse().expect("IMAGED_POWER_CYCLES is a number"));
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut fs = CutFs(
        Mount::start(&common::binary(None, "cutfs"), &dir.path().join("disk")),
        rng.next(),
    );
    let socket = dir.path().join("run/imaged.sock");
    let mut daemon = Daemon::spawn_with(&socket, &fs.0.mountpoint.join("data"), "info", settings(false));
    daemon.wait_ready();
    let mut model = Model::default();
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut cuts, mut lost) = (0, Vec::new());
    for cycle in 0..cycles {
        let (window, production) = WINDOWS[cycle % WINDOWS.len()];
        let power = (cycle / WINDOWS.len()).is_multiple_of(2);
        println!(
            "cycle {cycle}: {} at {window}{}",
            if power { "power cut" } else { "kill" },
            if production { ", production settings" } else { "" }
        );
        let round = model.start(&daemon.channel().await, &mut rng);
        tokio::time::sleep(Duration::from_millis(150 + rng.next() % 600)).await;
        let trap = match window {
            "snapshot write" => Some("write snap.*.generating"),
            "snapshot rename" => Some("rename snap.*.generating"),
            "journal write" => Some("write journal"),
            _ => None,
        };
        let mut holding = false;
        if let Some(trap) = trap {
            fs.command(&format!("arm {trap}"));
            holding = fs.held(Duration::from_secs(10)).is_some();
            *held.entry(window).or_default() += usize::from(holding);
        }
        let context = format!("cycle {cycle} (seed {seed})");
        crash(&mut daemon, &mut fs, power, holding, &mut lost);
        cuts += usize::from(power);
        model.finish(round).await;

        if window == "start-up snapshot" {
            // The start-up after a crash writes a snapshot when sled's log
            // reached its file since the last one. Until a start-up does, the
            // daemon writes a while longer and dies again.
            for _ in 0..10 {
                fs.command("arm write snap.*.generating");
                daemon.spawn_again();
                if held_or_ready(&mut fs, &mut daemon).await {
                    crash(&mut daemon, &mut fs, power, true, &mut lost);
                    cuts += usize::from(power);
                    *held.entry(window).or_default() += 1;
                    break;
                }
                // Ready without a snapshot: what the crash left is checked
                // (which settles the changes it cut off), and writing goes on.
                fs.command("disarm");
                model.verify(&daemon, &context).await;
                let round = model.start(&daemon.channel().await, &mut rng);
                tokio::time::sleep(Duration::from_millis(300 + rng.next() % 600)).await;
                crash(&mut daemon, &mut fs, power, false, &mut lost);
                cuts += usize::from(power);
                model.finish(round).await;
            }
        }
        // The next cycle's settings; every third cycle the daemon's own
        // recovery meets the crash's state before `imaged check` does.
        daemon.args = settings(WINDOWS[(cycle + 1) % WINDOWS.len()].1);
        if cycle % 3 != 2 {
            tokio::task::block_in_place(|| common::imaged_check(&daemon.root));
        }
        daemon.restart();

        let stored_total = model.verify(&daemon, &context).await;
        let log = daemon.log_text();
        assert!(log.contains(&format!("images={stored_total}")), "{context}: {log}");
    }
    println!("operations held inside their window: {held:?}");
    println!("power cuts: {cuts}; files and directories each cut set back: {lost:?}");
    println!("{} acknowledged writes over {cycles} cycles, none lost", model.acked);
    if cycles >= CYCLES {
        for (window, _) in WINDOWS.iter().filter(|(w, _)| *w != "any") {
            assert!(
                held.get(window).copied().unwrap_or(0) > 0,
                "nothing held at {window}: {held:?}"
            );
        }
    }
    assert!(
        model.acked > 100,
        "too few acknowledged writes ({}) to prove anything",
        model.acked
    );
    // A cut that set nothing back would prove nothing about power loss.
    assert!(
        lost.iter().any(|l| !l.ends_with("files=0 dirs=0")),
        "no cut lost anything: {lost:?}"
    );
    tokio::task::block_in_place(|| assert!(daemon.terminate().success()));
    common::imaged_check(&daemon.root);
}

/// Waits until the armed trap holds the starting daemon's snapshot write
/// (true), or the daemon is ready without writing one (false).
async fn held_or_ready(fs: &mut CutFs, daemon: &mut Daemon) -> bool {
    loop {
        if fs.held(Duration::from_millis(20)).is_some() {
            return true;
        }
        if daemon.log_text().contains("imaged ready") {
            daemon.wait_ready();
            return false;
        }
    }
}

/// The daemon dies where it stands; with `power`, everything it had not
/// synced goes with it. Requests the file system is already serving finish
/// first, as they would before a real cut. A held operation is let go only
/// after the cut, and fails: the kernel waits for its answer before the
/// process can exit, and no later request is served before it.
fn crash(daemon: &mut Daemon, fs: &mut CutFs, power: bool, holding: bool, lost: &mut Vec<String>) {
    daemon.send(Signal::SIGKILL);
    if !holding {
        // A trap that fired just after the harness stopped waiting for it
        // is let go too, or the daemon could never exit.
        fs.command("disarm");
        fs.command("release");
        tokio::task::block_in_place(|| daemon.wait_exit());
    }
    if power {
        lost.push(fs.cut());
    }
    if holding {
        fs.command("release");
        tokio::task::block_in_place(|| daemon.wait_exit());
    }
}
