//! The crash test: concurrent writers record every acknowledged Put and
//! Delete; the daemon is killed with SIGKILL at an arbitrary moment; after a
//! restart every acknowledged change must be there. Repeated for several
//! cycles on the same data directory.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Daemon, digest, in_ns, put};
use imaged_api::containerd::v1::images_client::ImagesClient;
use imaged_api::containerd::v1::{DeleteRequest, ListRequest};
use tokio::sync::watch;

const CYCLES: usize = 6;
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
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    // sled is reopened after every MiB of journaled writes, so some kills
    // land while it is closed and opening again.
    let mut daemon = Daemon::start_with("info", &["--sled-snapshot-mb", "1"]);
    // (namespace, name) → state, carried across cycles.
    let mut model: BTreeMap<(String, String), KeyState> = BTreeMap::new();
    let mut total_acked = 0usize;
    let mut reopens = 0usize;

    for cycle in 0..CYCLES {
        let channel = daemon.channel().await;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut client = ImagesClient::new(channel.clone());
            let mut rng = Rng(rng.next() | 1);
            let stop = stop_rx.clone();
            let ns = NAMESPACES[(w % 2) as usize];
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
                    let result = if delete {
                        client
                            .delete(in_ns(
                                ns,
                                DeleteRequest {
                                    name: name.clone(),
                                    ..Default::default()
                                },
                            ))
                            .await
                            .map(|_| ())
                    } else {
                        // A label of 2 KB makes each write journal enough
                        // that sled is reopened a few times per cycle.
                        let mut request = put(&name, value);
                        if let Some(image) = request.image.as_mut() {
                            image.labels.insert("pad".into(), "x".repeat(2048));
                        }
                        client.put(in_ns(ns, request)).await.map(|_| ())
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

        // Kill at an arbitrary moment while every writer is busy.
        let delay = Duration::from_millis(150 + rng.next() % 600);
        tokio::time::sleep(delay).await;
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
    assert!(
        total_acked > 100,
        "too few acknowledged writes ({total_acked}) to prove anything"
    );
    println!("{total_acked} acknowledged writes over {CYCLES} SIGKILL cycles, {reopens} reopens of sled");
    assert!(
        reopens > 0,
        "sled was never reopened: the kills proved nothing about reopening"
    );

    // Indexes and counters are written in the records' batches: after every
    // crash (a batch sled holds in part is completed from the journal) they
    // must still agree with the records.
    tokio::task::block_in_place(|| assert!(daemon.terminate().success()));
    let check = std::process::Command::new(&*common::IMAGED)
        .args(["check", "--root"])
        .arg(&daemon.root)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "imaged check after {CYCLES} crashes:\n{report}");
    assert!(report.trim_end().ends_with("ok"), "{report}");
    println!("{}", report.lines().next().unwrap_or_default());
}
