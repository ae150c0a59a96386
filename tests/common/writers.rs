//! The writers of the crash and power-loss harnesses: concurrent clients on
//! both wire APIs that record every acknowledged change, and the check that
//! a restarted daemon holds each of them.

use std::collections::BTreeMap;

use imaged_api::containerd::services::images::v1 as ctrd;
use imaged_api::containerd::v1::images_client::ImagesClient;
use imaged_api::containerd::v1::{DeleteRequest, ListRequest};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::{Daemon, descriptor, digest, in_ns, put};

const WRITERS: u64 = 12;
const KEYS_PER_WRITER: u64 = 40;
/// The namespaces the writers use, half each.
pub const NAMESPACES: [&str; 2] = ["default", "crash.test"];

/// What a key may hold after a crash: the last acknowledged state, or the
/// state of the one change that was in flight when the daemon died.
#[derive(Clone, Debug, Default)]
pub struct KeyState {
    acked: Option<u64>,
    in_flight: Option<Option<u64>>,
}

/// A small deterministic generator, so a failing cycle can be replayed from
/// the printed seed.
pub struct Rng(pub u64);
impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Every key's state, carried across crashes.
#[derive(Default)]
pub struct Model {
    keys: BTreeMap<(String, String), KeyState>,
    /// Writes acknowledged so far.
    pub acked: usize,
    /// Whether some writes are large enough to make sled write blob files.
    pub blobs: bool,
}

/// What one writer recorded: its namespace, its keys' states, and how many
/// writes were acknowledged.
type Recorded = (&'static str, BTreeMap<String, KeyState>, usize);

/// Writers running against one daemon.
pub struct Round {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Recorded>>,
}

impl Model {
    /// Starts the writers on `channel`: each owns its keys, writes until
    /// stopped or until a call fails (the daemon died), and records what
    /// was acknowledged and what was in flight.
    pub fn start(&self, channel: &Channel, rng: &mut Rng) -> Round {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut client = ImagesClient::new(channel.clone());
            let mut containerd = ctrd::images_client::ImagesClient::new(channel.clone());
            let mut rng = Rng(rng.next() | 1);
            let stop = stop_rx.clone();
            let blobs = self.blobs;
            let ns = NAMESPACES[((w / 2) % 2) as usize];
            let mut states: BTreeMap<String, KeyState> = (0..KEYS_PER_WRITER)
                .map(|k| {
                    let name = format!("w{w}/k{k}");
                    let state = self
                        .keys
                        .get(&(ns.to_string(), name.clone()))
                        .cloned()
                        .unwrap_or_default();
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
                        seed_write(&mut client, ns, &name, next, blobs).await
                    } else {
                        let exists = state.acked.is_some();
                        containerd_write(&mut containerd, ns, &name, exists, next, blobs).await
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
        Round { stop, tasks }
    }

    /// Stops the writers of `round` (the daemon is dead or dying) and takes
    /// in what they recorded.
    pub async fn finish(&mut self, round: Round) {
        let _ = round.stop.send(true);
        for task in round.tasks {
            let (ns, states, acked) = task.await.unwrap();
            self.acked += acked;
            for (name, state) in states {
                self.keys.insert((ns.to_string(), name), state);
            }
        }
    }

    /// Checks the restarted `daemon` holds, for every key, its acknowledged
    /// state or the state of the change in flight at the crash, and nothing
    /// else; what it holds becomes the acknowledged state. Returns how many
    /// images it holds. `context` names the cycle in a failure.
    pub async fn verify(&mut self, daemon: &Daemon, context: &str) -> usize {
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
            for ((model_ns, name), state) in self.keys.iter_mut().filter(|((n, _), _)| n == ns) {
                let actual = stored.get(name).cloned();
                let acked = state.acked.map(digest);
                let in_flight = state.in_flight.map(|s| s.map(digest));
                assert!(
                    actual == acked || Some(actual.clone()) == in_flight,
                    "{context}: {model_ns}/{name} is {actual:?}, acknowledged {acked:?}, in flight {in_flight:?}"
                );
                // Whatever survived is now the acknowledged state.
                state.acked = actual.map(|d| u64::from_str_radix(&d["sha256:".len()..], 16).unwrap());
                state.in_flight = None;
            }
            for name in stored.keys() {
                assert!(
                    self.keys.contains_key(&(ns.to_string(), name.clone())),
                    "{context}: {ns}/{name} appeared from nowhere"
                );
            }
        }
        stored_total
    }
}

type Answer = Result<(), tonic::Status>;

/// Labels that pad a write: one of 2 KB, so each write journals enough
/// that sled is reopened a few times per cycle; with `blobs`, in one write
/// of eight, fifteen of 4 KB (a label's most), so that sled's nodes outgrow
/// a quarter of its segments and go to blob files of their own.
fn pad(value: u64, fill: &str, blobs: bool) -> std::collections::BTreeMap<String, String> {
    if blobs && value.is_multiple_of(8) {
        (0..15).map(|i| (format!("pad{i}"), fill.repeat(4000))).collect()
    } else {
        [("pad".to_string(), fill.repeat(2048))].into()
    }
}

/// A Put (or, for `None`, a Delete) through the seed API, padded (see
/// [`pad`]).
async fn seed_write(
    client: &mut ImagesClient<Channel>,
    ns: &str,
    name: &str,
    next: Option<u64>,
    blobs: bool,
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
                image.labels.extend(pad(value, "x", blobs));
            }
            client.put(in_ns(ns, request)).await.map(|_| ())
        }
    }
}

/// The same change through containerd's API: Create when the image is
/// absent, Update when present, Delete for `None`.
async fn containerd_write(
    client: &mut ctrd::images_client::ImagesClient<Channel>,
    ns: &str,
    name: &str,
    exists: bool,
    next: Option<u64>,
    blobs: bool,
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
        labels: pad(value, "y", blobs).into_iter().collect(),
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
