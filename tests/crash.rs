//! The crash harness: concurrent writers on both wire APIs record every
//! acknowledged change; the daemon is killed with SIGKILL, at an arbitrary
//! moment or inside a window forced open by `IMAGED_TEST_STALL` (sled synced
//! but the journal not reset; sled closed for its reopen; start-up halfway
//! through replaying the journal); `imaged check` then verifies the stopped
//! store, and after a restart every acknowledged change must be there.
//! Repeated on the same data directory: 20 cycles, or
//! `IMAGED_CRASH_CYCLES` (a soak runs 500 or more).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::Daemon;
use common::writers::{Model, Rng};

/// Cycles when `IMAGED_CRASH_CYCLES` is not set.
const CYCLES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let cycles = std::env::var("IMAGED_CRASH_CYCLES")
        .ok()
        .map_or(CYCLES, |n| n.parse().expect("IMAGED_CRASH_CYCLES is a number"));
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    // sled is reopened after every MiB of journaled writes, so some kills
    // land while it is closed and opening again.
    // Rotations are off: their windows have a harness of their own
    // (`rotation.rs`).
    let mut daemon = Daemon::start_with("info", &["--sled-snapshot-mb", "1", "--rotate-after-percent", "0"]);
    // The first cycle's window is an arbitrary moment: no stall to set.
    let mut model = Model::default();
    let mut reopens = 0usize;

    let mut forced: BTreeMap<&str, usize> = BTreeMap::new();
    for cycle in 0..cycles {
        let channel = daemon.channel().await;
        let round = model.start(&channel, &mut rng);

        // Kill inside a forced window, or at an arbitrary moment, while
        // every writer is busy.
        let window = WINDOWS[cycle % WINDOWS.len()];
        println!("cycle {cycle}: kill at {window}");
        let delay = Duration::from_millis(150 + rng.next() % 600);
        tokio::time::sleep(delay).await;
        if matches!(window, "checkpoint" | "reopen") && daemon.wait_for_stall(Duration::from_secs(5)).await {
            *forced.entry(window).or_default() += 1;
        }
        tokio::task::block_in_place(|| daemon.kill());
        reopens += daemon.log_text().matches("reopened sled").count();
        model.finish(round).await;

        if window == "replay" {
            // Killed again halfway through the replay of what the first
            // kill left in the journal.
            daemon.env = vec![("IMAGED_TEST_STALL".into(), "replay:300".into())];
            daemon.spawn_again();
            if daemon.wait_for_stall(Duration::from_secs(5)).await {
                *forced.entry(window).or_default() += 1;
            }
            tokio::task::block_in_place(|| daemon.kill());
        }
        // The stopped store checks clean: indexes, counters and records
        // agree after the crash (`check` recovers it first, as a start does).
        tokio::task::block_in_place(|| common::imaged_check(&daemon.root));
        daemon.env = stall_for(WINDOWS[(cycle + 1) % WINDOWS.len()]);
        daemon.restart();
        let stored_total = model.verify(&daemon, &format!("cycle {cycle} (seed {seed})")).await;
        // The namespace counters are updated in the same journaled batch as
        // the records, so the start-up count must match what is listed.
        let log = daemon.log_text();
        assert!(log.contains(&format!("images={stored_total}")), "cycle {cycle}: {log}");
    }
    println!("kills inside forced windows: {forced:?}");
    if cycles >= CYCLES {
        for window in ["checkpoint", "reopen", "replay"] {
            assert!(
                forced.get(window).copied().unwrap_or(0) > 0,
                "no kill landed in the {window} window: {forced:?}"
            );
        }
    }
    assert!(
        model.acked > 100,
        "too few acknowledged writes ({}) to prove anything",
        model.acked
    );
    println!(
        "{} acknowledged writes over {cycles} SIGKILL cycles, {reopens} reopens of sled",
        model.acked
    );
    assert!(
        reopens > 0,
        "sled was never reopened: the kills proved nothing about reopening"
    );

    // Indexes and counters are written in the records' batches: after every
    // crash (a batch sled holds in part is completed from the journal) they
    // must still agree with the records.
    tokio::task::block_in_place(|| assert!(daemon.terminate().success()));
    let report = common::imaged_check(&daemon.root);
    println!("{}", report.lines().next().unwrap_or_default());
}

/// What each cycle's kill aims at, in turn: an arbitrary moment, or a window
/// `IMAGED_TEST_STALL` holds open.
const WINDOWS: [&str; 4] = ["any", "checkpoint", "reopen", "replay"];

/// The stall a daemon that a cycle aiming at `window` kills is started with.
fn stall_for(window: &str) -> Vec<(String, String)> {
    match window {
        "checkpoint" | "reopen" => vec![("IMAGED_TEST_STALL".into(), format!("{window}:300"))],
        _ => Vec::new(),
    }
}
