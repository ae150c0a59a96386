//! Hostile local callers, one attack each, and the victim they try to
//! starve: `imaged-bench hog` and `imaged-bench victim`, run as other uids
//! (`setpriv`) by the noisy-neighbour benchmark and by the end-to-end suite
//! `tests/fairness.rs`.
//!
//! A hog takes what it can of one bound and holds it until killed. It
//! prints what it got on standard output, a line at a time, and `ready`
//! once its attack is in place (an attack that runs on, such as churn,
//! prints `ready` after its first round). A victim makes Gets and creates
//! in its own namespace for a while and prints their latencies and errors
//! as one JSON object.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use imaged_api::containerd::services::events::v1::{PublishRequest, SubscribeRequest, events_client::EventsClient};
use imaged_api::containerd::services::leases::v1::{CreateRequest as LeaseCreate, leases_client::LeasesClient};
use imaged_api::containerd::types::Descriptor;
use imaged_api::containerd::v1 as seed;
use seed::images_client::ImagesClient as SeedClient;
use tonic::transport::Channel;

use crate::load;

/// What a hog attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Attack {
    /// Connections that never send a byte, reopened as they are closed.
    IdleConnections,
    /// Lists whose filters hold 8 × 315 regular expressions `\w{20}`.
    Regex,
    /// Watch streams, held.
    Watchers,
    /// Subscribe streams that are never read.
    Subscriptions,
    /// ListStreams that are never read.
    Streams,
    /// grpc.health.v1 Watch streams, held.
    HealthWatches,
    /// Leases with 64 KiB of labels each.
    Leases,
    /// Put and Delete of one 64 KiB image, over and over.
    Churn,
    /// A Subscribe never read, while 4 MiB events are published.
    Publish,
    /// Idle connections to the metrics socket, reopened as they are closed.
    MetricsIdle,
    /// Calls to made-up 8 KB method paths.
    LogFlood,
}

/// How hard.
#[derive(Debug, Clone)]
pub struct Hog {
    /// The API socket.
    pub address: PathBuf,
    /// The metrics socket, for [`Attack::MetricsIdle`].
    pub metrics: Option<PathBuf>,
    /// The namespace its writes go to.
    pub namespace: String,
    /// How many of the attack's unit (connections, streams, calls, ...).
    pub count: u64,
}

fn say(line: impl AsRef<str>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

fn request<T>(namespace: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("containerd-namespace", namespace.parse().expect("a valid namespace"));
    request
}

/// Channels on `address`: a stream hog spreads its streams over several,
/// since one connection carries a bounded number of calls.
async fn channels(address: &Path, count: usize) -> Result<Vec<Channel>, String> {
    load::connect(address, count).await.map_err(|e| e.to_string())
}

/// A 64 KiB image (most of it one label), within imaged's bound.
fn big_image(name: &str) -> seed::Image {
    seed::Image {
        name: name.into(),
        target: Some(Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: 1,
            annotations: Default::default(),
        }),
        labels: (0..15).map(|i| (format!("k{i}"), "v".repeat(4000))).collect(),
        ..Default::default()
    }
}

/// Runs `attack` until it is in place, says `ready`, and holds on (or, for
/// attacks that run on, goes on) until killed.
pub async fn run(attack: Attack, hog: Hog) -> Result<(), String> {
    match attack {
        Attack::IdleConnections => idle(&hog.address, hog.count, false).await,
        Attack::MetricsIdle => {
            let metrics = hog.metrics.clone().ok_or("the metrics-idle attack needs --metrics")?;
            idle(&metrics, hog.count, true).await
        }
        Attack::Regex => regex(&hog).await,
        Attack::Watchers | Attack::Subscriptions | Attack::Streams | Attack::HealthWatches => {
            hold_streams(attack, &hog).await
        }
        Attack::Leases => leases(&hog).await,
        Attack::Churn => churn(&hog).await,
        Attack::Publish => publish(&hog).await,
        Attack::LogFlood => log_flood(&hog).await,
    }
}

/// Keeps `count` connections open that send nothing, reopening each as the
/// daemon closes it; says how many it opened and how many were closed.
async fn idle(address: &Path, count: u64, http: bool) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let open = |closed_tx: tokio::sync::mpsc::UnboundedSender<()>| {
        let address = address.to_owned();
        async move {
            let Ok(mut stream) = tokio::net::UnixStream::connect(&address).await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let _ = closed_tx.send(());
                return;
            };
            let mut sink = [0u8; 1024];
            // Read whatever comes (a GOAWAY, a 429) until the daemon closes,
            // and come back a second later.
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = closed_tx.send(());
        }
    };
    for _ in 0..count {
        tokio::spawn(open(closed_tx.clone()));
    }
    say(format!(
        "opened {count} idle {} connections",
        if http { "metrics" } else { "API" }
    ));
    say("ready");
    let mut reopened = 0u64;
    while closed.recv().await.is_some() {
        reopened += 1;
        if reopened.is_power_of_two() {
            say(format!("reopened {reopened} closed connections"));
        }
        tokio::spawn(open(closed_tx.clone()));
    }
    Ok(())
}

/// Lists with 8 filters of 315 `\w{20}` each, over and over; says the
/// first answer.
async fn regex(hog: &Hog) -> Result<(), String> {
    let channel = channels(&hog.address, 1).await?.remove(0);
    let filter = vec![r"name~=\w{20}"; 315].join(",");
    let filters = vec![filter; 8];
    let mut said = false;
    let mut rounds = 0u64;
    loop {
        let mut client = SeedClient::new(channel.clone()).max_encoding_message_size(16 << 20);
        let answer = client
            .list(request(
                &hog.namespace,
                seed::ListRequest {
                    filters: filters.clone(),
                    ..Default::default()
                },
            ))
            .await;
        rounds += 1;
        if !said {
            match &answer {
                Ok(_) => say("the list was answered"),
                Err(status) => say(format!("refused: {:?}: {}", status.code(), status.message())),
            }
            say("ready");
            said = true;
        }
        if rounds >= hog.count.max(1) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Opens streams of `attack`'s kind until one is refused, and holds them
/// all, reading nothing.
async fn hold_streams(attack: Attack, hog: &Hog) -> Result<(), String> {
    let per_channel = 100;
    let wanted = hog.count.max(1);
    let chans = channels(&hog.address, wanted.div_ceil(per_channel) as usize).await?;
    let mut held: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let mut refusal = None;
    for i in 0..wanted {
        let channel = chans[(i / per_channel) as usize].clone();
        let opened: Result<Box<dyn std::any::Any + Send>, tonic::Status> = match attack {
            Attack::Watchers => SeedClient::new(channel)
                .watch(request(&hog.namespace, seed::WatchRequest::default()))
                .await
                .map(|r| Box::new(r.into_inner()) as _),
            Attack::Streams => SeedClient::new(channel)
                .list_stream(request(&hog.namespace, seed::ListRequest::default()))
                .await
                .map(|r| Box::new(r.into_inner()) as _),
            Attack::Subscriptions => EventsClient::new(channel)
                .subscribe(SubscribeRequest::default())
                .await
                .map(|r| Box::new(r.into_inner()) as _),
            Attack::HealthWatches => tonic_health::pb::health_client::HealthClient::new(channel)
                .watch(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map(|r| Box::new(r.into_inner()) as _),
            _ => unreachable!("a stream attack"),
        };
        match opened {
            Ok(stream) => held.push(stream),
            Err(status) => {
                refusal = Some(status);
                break;
            }
        }
    }
    say(format!("held {} streams", held.len()));
    if let Some(status) = refusal {
        say(format!("refused: {:?}: {}", status.code(), status.message()));
    }
    say("ready");
    std::future::pending::<()>().await;
    drop(held);
    Ok(())
}

/// Creates leases of 64 KiB of labels until one is refused, and holds them.
async fn leases(hog: &Hog) -> Result<(), String> {
    let channel = channels(&hog.address, 1).await?.remove(0);
    let mut client = LeasesClient::new(channel);
    let labels: std::collections::BTreeMap<String, String> =
        (0..15).map(|i| (format!("k{i}"), "v".repeat(4000))).collect();
    let mut made = 0u64;
    let refusal = loop {
        let lease = LeaseCreate {
            id: format!("hog-{}-{made}", std::process::id()),
            labels: labels.clone(),
        };
        match client.create(request(&hog.namespace, lease)).await {
            Ok(_) => made += 1,
            Err(status) => break status,
        }
        if made >= hog.count.max(1) {
            break tonic::Status::ok("made all it was asked for");
        }
    };
    say(format!("held {made} leases"));
    say(format!("refused: {:?}: {}", refusal.code(), refusal.message()));
    say("ready");
    std::future::pending::<()>().await;
    Ok(())
}

/// Puts and deletes one 64 KiB image `count` times, saying `ready` after
/// the first, and how many it made when done.
async fn churn(hog: &Hog) -> Result<(), String> {
    let channel = channels(&hog.address, 1).await?.remove(0);
    let mut client = SeedClient::new(channel);
    let image = big_image("hog/churn:1");
    let mut refused = 0u64;
    // For experiments: rounds per second (IMAGED_HOG_RATE), else as fast as
    // the daemon answers.
    let pace = std::env::var("IMAGED_HOG_RATE")
        .ok()
        .and_then(|r| r.parse::<f64>().ok())
        .map(|r| Duration::from_secs_f64(1.0 / r));
    for round in 0..hog.count.max(1) {
        if let Some(pace) = pace {
            tokio::time::sleep(pace).await;
        }
        let put = client
            .put(request(
                &hog.namespace,
                seed::PutRequest {
                    image: Some(image.clone()),
                    ..Default::default()
                },
            ))
            .await;
        let deleted = client
            .delete(request(
                &hog.namespace,
                seed::DeleteRequest {
                    name: image.name.clone(),
                    ..Default::default()
                },
            ))
            .await;
        if let Err(status) = put.and(deleted) {
            refused += 1;
            if refused == 1 {
                say(format!("refused: {:?}: {}", status.code(), status.message()));
            }
        }
        if round == 0 {
            say("ready");
        }
    }
    say(format!("churned {} rounds, {refused} refused", hog.count));
    say("done");
    std::future::pending::<()>().await;
    Ok(())
}

/// Subscribes without ever reading, then publishes `count` events of 4 MiB.
async fn publish(hog: &Hog) -> Result<(), String> {
    let chans = channels(&hog.address, 2).await?;
    let stalled = EventsClient::new(chans[0].clone())
        .subscribe(SubscribeRequest::default())
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    let mut publisher = EventsClient::new(chans[1].clone()).max_encoding_message_size(16 << 20);
    let mut refused = None;
    for _ in 0..hog.count.max(1) {
        let event = prost_types::Any {
            type_url: "example.com/Blob".into(),
            value: vec![7u8; 4 << 20],
        };
        let published = publisher
            .publish(request(
                &hog.namespace,
                PublishRequest {
                    topic: "/hog/blob".into(),
                    event: Some(event),
                },
            ))
            .await;
        if let Err(status) = published {
            refused = Some(status);
            break;
        }
    }
    if let Some(status) = refused {
        say(format!("refused: {:?}: {}", status.code(), status.message()));
    }
    say(format!(
        "published {} events of 4 MiB to a subscriber that never reads",
        hog.count
    ));
    say("ready");
    std::future::pending::<()>().await;
    drop(stalled);
    Ok(())
}

/// Calls `count` made-up methods whose paths are 8 KB long.
async fn log_flood(hog: &Hog) -> Result<(), String> {
    let channel = channels(&hog.address, 1).await?.remove(0);
    let mut grpc = tonic::client::Grpc::new(channel);
    let mut refused = 0u64;
    for i in 0..hog.count.max(1) {
        grpc.ready().await.map_err(|e| e.to_string())?;
        let path = format!("/{}{i}/M", "x".repeat(8000));
        let path: tonic::codegen::http::uri::PathAndQuery = path.parse().map_err(|e| format!("{e}"))?;
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        if grpc.unary(tonic::Request::new(()), path, codec).await.is_err() {
            refused += 1;
        }
    }
    say(format!(
        "made {} calls to made-up methods, {refused} refused",
        hog.count
    ));
    say("ready");
    std::future::pending::<()>().await;
    Ok(())
}

/// What a victim measured of one kind of call.
#[derive(Debug, Default)]
pub struct Measured {
    /// Latencies of the calls answered OK.
    pub ok: Vec<Duration>,
    /// The first error's text, and how many there were.
    pub errors: (u64, Option<String>),
}

impl Measured {
    fn record(&mut self, took: Duration, result: Result<(), tonic::Status>) {
        match result {
            Ok(()) => self.ok.push(took),
            Err(status) => {
                self.errors.0 += 1;
                self.errors
                    .1
                    .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
            }
        }
    }

    /// The `q` quantile of the latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.ok.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }

    fn json(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        format!(
            r#"{{"calls":{},"p50_ms":{:.3},"p99_ms":{:.3},"max_ms":{:.3},"errors":{},"first_error":{}}}"#,
            self.ok.len(),
            ms(self.quantile(0.5)),
            ms(self.quantile(0.99)),
            ms(self.quantile(1.0)),
            self.errors.0,
            self.errors
                .1
                .as_ref()
                .map_or("null".to_string(), |e| format!("{:?}", e.replace('"', "'")))
        )
    }
}

/// A victim: Gets (of images it made first) and creates in `namespace`,
/// `concurrency` at a time, for `seconds`; prints
/// `{"get": {...}, "create": {...}}`.
pub async fn victim(address: &Path, namespace: &str, seconds: f64, concurrency: usize) -> Result<(), String> {
    let channel = channels(address, 1).await?.remove(0);
    let run = format!("{}", std::process::id());
    let mut client = SeedClient::new(channel.clone());
    let image = |name: String| seed::Image {
        name,
        target: Some(Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: format!("sha256:{}", "cd".repeat(32)),
            size: 1,
            annotations: Default::default(),
        }),
        ..Default::default()
    };
    for i in 0..100 {
        let put = seed::PutRequest {
            image: Some(image(format!("victim/{run}/seed:{i}"))),
            ..Default::default()
        };
        client
            .put(request(namespace, put))
            .await
            .map_err(|s| format!("seeding the victim's images: {s}"))?;
    }
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (channel, namespace, run) = (channel.clone(), namespace.to_owned(), run.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = SeedClient::new(channel);
            let (mut gets, mut creates) = (Measured::default(), Measured::default());
            let mut n = 0u64;
            while Instant::now() < until {
                let start = Instant::now();
                let got = client
                    .get(request(
                        &namespace,
                        seed::GetRequest {
                            name: format!("victim/{run}/seed:{}", n % 100),
                        },
                    ))
                    .await
                    .map(drop);
                gets.record(start.elapsed(), got);
                let start = Instant::now();
                let put = seed::PutRequest {
                    image: Some(image(format!("victim/{run}/w{worker}:{n}"))),
                    ..Default::default()
                };
                let made = client.put(request(&namespace, put)).await.map(drop);
                creates.record(start.elapsed(), made);
                n += 1;
            }
            (gets, creates)
        }));
    }
    let (mut gets, mut creates) = (Measured::default(), Measured::default());
    for task in tasks {
        let (g, c) = task.await.map_err(|e| e.to_string())?;
        gets.ok.extend(g.ok);
        gets.errors.0 += g.errors.0;
        gets.errors.1 = gets.errors.1.or(g.errors.1);
        creates.ok.extend(c.ok);
        creates.errors.0 += c.errors.0;
        creates.errors.1 = creates.errors.1.or(c.errors.1);
    }
    say(format!(r#"{{"get":{},"create":{}}}"#, gets.json(), creates.json()));
    Ok(())
}
