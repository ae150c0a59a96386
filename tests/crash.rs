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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Daemon, descriptor, digest, in_ns, put};
use imaged_api::containerd::services::images::v1 as ctrd;
use imaged_api::containerd::v1::images_client::ImagesClient;
use imaged_api::containerd::v1::{DeleteRequest, ListRequest};
use tokio::sync::watch;

/// Cycles when `IMAGED_CRASH_CYCLES` is not set.
const CYCLES: usize = 20;
const WRITERS: u64 = 12;
const KEYS_PER_WRITER: u64 = 40;
const NAMESPACES: [&str; 2] = ["default", "crash.test"];

/// What a key may hold after a crash: the last acknowledged state, or the
/// state of the one change that was in flight when the daemon died.
#[derive(Clone, Debug, Default)]
struct KeyState {
    acked: Option<u64>,
    in_flight: Option<Option<u64>>,
}

/// A small deterministic generator, so a failing cycle can be replayed from
/// the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

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
    let mut daemon = Daemon::start_with("info", &["--sled-snapshot-mb", "1"]);
    // The first cycle's window is an arbitrary moment: no stall to set.
    // (namespace, name) → state, carried across cycles.
    let mut model: BTreeMap<(String, String), KeyState> = BTreeMap::new();
    let mut total_acked = 0usize;
    let mut reopens = 0usize;

    let mut forced: BTreeMap<&str, usize> = BTreeMap::new();
    for cycle in 0..cycles {
        let channel = daemon.channel().await;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut client = ImagesClient::new(channel.clone());
            let mut containerd = ctrd::images_client::ImagesClient::new(channel.clone());
            let mut rng = Rng(rng.next() | 1);
            let stop = stop_rx.clone();
            let ns = NAMESPACES[((w / 2) % 2) as usize];
            let mut states: BTreeMap<String, KeyState> = (0..KEYS_PER_WRITER)
                .map(|k| {
                    let name = format!("w{w}/k{k}");
                    let state = model.get(&(ns.to_string(), name.clone())).cloned().unwrap_or_default();
                    (name, state)
                })
                .collect();
            tasks.push(tokio::spawn(async move {
                let mut acked = 0usize;
                while !*stop.borrow() {
                    let name = format!("w{w}/k{}", rng.next() % KEYS_PER_WRITER);
                    let state = states.get_mut(&name).unwrap();
                    let delete = state.acked.is_some() && rng.next().is_multiple_of(3);
                    let value = rng.next() % 1_000_000 + 1;
                    let next = if delete { None } else { Some(value) };
                    state.in_flight = Some(next);
                    let result = if w % 2 == 0 {
                        seed_write(&mut client, ns, &name, next).await
                    } else {
                        containerd_write(&mut containerd, ns, &name, state.acked.is_some(), next).await
                    };
                    match result {
                        Ok(()) => {
                            state.acked = next;
                            state.in_flight = None;
                            acked += 1;
                        }
                        // The daemon died under the call: it may or may not
                        // have been applied, so `in_flight` stays.
                        Err(_) => break,
                    }
                }
                (ns, states, acked)
            }));
        }

        // Kill inside a forced window, or at an arbitrary moment, while
        // every writer is busy.
        let window = WINDOWS[cycle % WINDOWS.len()];
        println!("cycle {cycle}: kill at {window}");
        let delay = Duration::from_millis(150 + rng.next() % 600);
        tokio::time::sleep(delay).await;
        if matches!(window, "checkpoint" | "reopen") && wait_for_stall(&daemon).await {
            *forced.entry(window).or_default() += 1;
        }
        tokio::task::block_in_place(|| daemon.kill());
        reopens += daemon.log_text().matches("reopened sled").count();
        let _ = stop_tx.send(true);
        for task in tasks {
            let (ns, states, acked) = task.await.unwrap();
            total_acked += acked;
            for (name, state) in states {
                model.insert((ns.to_string(), name), state);
            }
        }

        if window == "replay" {
            // Killed again halfway through the replay of what the first
            // kill left in the journal.
            daemon.env = vec![("IMAGED_TEST_STALL".into(), "replay:300".into())];
            daemon.spawn_again();
            if wait_for_stall(&daemon).await {
                *forced.entry(window).or_default() += 1;
            }
            tokio::task::block_in_place(|| daemon.kill());
        }
        // The stopped store checks clean: indexes, counters and records
        // agree after the crash (`check` recovers it first, as a start does).
        tokio::task::block_in_place(|| common::imaged_check(&daemon.root));
        daemon.env = stall_for(WINDOWS[(cycle + 1) % WINDOWS.len()]);
        daemon.restart();
        let mut client = daemon.seed().await;
        let mut stored_total = 0;
        for ns in NAMESPACES {
            let list = client
                .list(in_ns(ns, ListRequest::default()))
                .await
                .unwrap()
                .into_inner();
            stored_total += list.images.len();
            let stored: BTreeMap<String, String> = list
                .images
                .into_iter()
                .map(|i| (i.name, i.target.unwrap().digest))
                .collect();
            for ((model_ns, name), state) in model.iter_mut().filter(|((n, _), _)| n == ns) {
                let actual = stored.get(name).cloned();
                let acked = state.acked.map(digest);
                let in_flight = state.in_flight.map(|s| s.map(digest));
                assert!(
                    actual == acked || Some(actual.clone()) == in_flight,
                    "cycle {cycle} (seed {seed}): {model_ns}/{name} is {actual:?}, acknowledged {acked:?}, in flight {in_flight:?}"
                );
                // Whatever survived is now the acknowledged state.
                state.acked = actual.map(|d| u64::from_str_radix(&d["sha256:".len()..], 16).unwrap());
                state.in_flight = None;
            }
            for name in stored.keys() {
                assert!(
                    model.contains_key(&(ns.to_string(), name.clone())),
                    "cycle {cycle}: {ns}/{name} appeared from nowhere"
                );
            }
        }
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
        total_acked > 100,
        "too few acknowledged writes ({total_acked}) to prove anything"
    );
    println!("{total_acked} acknowledged writes over {cycles} SIGKILL cycles, {reopens} reopens of sled");
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

/// Waits until the daemon logs a new stall; false if none comes (the window
/// was not reached this cycle, and the kill lands at an arbitrary moment).
async fn wait_for_stall(daemon: &Daemon) -> bool {
    let before = daemon.log_text().matches("stalling").count();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if daemon.log_text().matches("stalling").count() > before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

type Answer = Result<(), tonic::Status>;

/// A Put (or, for `None`, a Delete) through the seed API. A label of 2 KB
/// makes each write journal enough that sled is reopened a few times per
/// cycle.
async fn seed_write(
    client: &mut ImagesClient<tonic::transport::Channel>,
    ns: &str,
    name: &str,
    next: Option<u64>,
) -> Answer {
    match next {
        None => {
            let request = DeleteRequest {
                name: name.into(),
                ..Default::default()
            };
            client.delete(in_ns(ns, request)).await.map(|_| ())
        }
        Some(value) => {
            let mut request = put(name, value);
            if let Some(image) = request.image.as_mut() {
                image.labels.insert("pad".into(), "x".repeat(2048));
            }
            client.put(in_ns(ns, request)).await.map(|_| ())
        }
    }
}

/// The same change through containerd's API: Create when the image is
/// absent, Update when present, Delete for `None`.
async fn containerd_write(
    client: &mut ctrd::images_client::ImagesClient<tonic::transport::Channel>,
    ns: &str,
    name: &str,
    exists: bool,
    next: Option<u64>,
) -> Answer {
    let Some(value) = next else {
        let request = ctrd::DeleteImageRequest {
            name: name.into(),
            ..Default::default()
        };
        return client.delete(in_ns(ns, request)).await.map(|_| ());
    };
    let image = ctrd::Image {
        name: name.into(),
        labels: [("pad".to_string(), "y".repeat(2048))].into(),
        target: Some(descriptor(value)),
        ..Default::default()
    };
    if exists {
        let request = ctrd::UpdateImageRequest {
            image: Some(image),
            ..Default::default()
        };
        client.update(in_ns(ns, request)).await.map(|_| ())
    } else {
        let request = ctrd::CreateImageRequest {
            image: Some(image),
            source_date_epoch: None,
        };
        client.create(in_ns(ns, request)).await.map(|_| ())
    }
}
