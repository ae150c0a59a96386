//! The watch workloads, measured side by side in one run:
//! - durable creates at concurrency 16 with 0, 10 and 100 watchers attached
//!   to imaged, each receiving every event, as ratios of the rate with none;
//! - fan-out: many watchers while a writer creates at a fixed rate, with the
//!   delivery latency from each create's acknowledgement to each watcher's
//!   receipt, what each one missed, and the daemon's CPU per delivered
//!   event: imaged's Watch and Subscribe, and containerd's Subscribe;
//! - one subscriber that never reads while writes go on: both daemons'
//!   resident memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use imaged_api::containerd::services::events::v1 as ev;
use imaged_api::containerd::services::images::v1 as ctrd;
use imaged_api::containerd::v1 as seed;
use prost::Message;
use tonic::transport::Channel;

use crate::load::{self, Workload};
use crate::servers::Server;

/// What one comparison runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Creates per measurement of the write rate.
    pub writes: u64,
    /// Watchers attached in each measurement of the write rate; the first
    /// is the baseline the others are compared with.
    pub watchers: Vec<usize>,
    /// Rounds of measurements of the write rate.
    pub rounds: usize,
    /// Watchers of the fan-out.
    pub fan_out: usize,
    /// Creates per second of the fan-out and the stall.
    pub rate: u64,
    /// How long the fan-out writes.
    pub fan_out_for: Duration,
    /// How long writes go on: half with no subscriber, half while one stalls.
    pub stall_for: Duration,
    /// Whether to stop after the writers with watchers.
    pub writers_only: bool,
}

impl Plan {
    /// The figures, or a few seconds' worth that only proves the
    /// workloads run.
    pub fn new(smoke: bool) -> Plan {
        if smoke {
            Plan {
                writes: 300,
                watchers: vec![0, 2, 10],
                rounds: 2,
                fan_out: 20,
                rate: 200,
                fan_out_for: Duration::from_secs(2),
                stall_for: Duration::from_secs(3),
                writers_only: false,
            }
        } else {
            Plan {
                writes: 10_000,
                watchers: vec![0, 10, 100],
                rounds: 6,
                fan_out: 1000,
                rate: 1000,
                fan_out_for: Duration::from_secs(10),
                stall_for: Duration::from_secs(120),
                writers_only: false,
            }
        }
    }
}

/// Watchers that share one connection: below the 200 streams an HTTP/2
/// server allows on one.
const WATCHERS_PER_CONNECTION: usize = 100;

/// How a fan-out went for one server and API.
#[derive(Debug, Default)]
pub struct FanOut {
    /// Creates acknowledged.
    pub written: u64,
    /// Events delivered, over all watchers.
    pub delivered: u64,
    /// Events a watcher never received, over all watchers.
    pub missed: u64,
    /// Delivery latency percentiles: p50, p99, max.
    pub latency: [Duration; 3],
    /// Daemon CPU time per delivered event.
    pub cpu_per_event: Duration,
}

/// The rate of `plan.writes` durable creates at concurrency 16, numbered
/// from `start`, with `watchers` seed watchers attached that must each
/// receive every one. The watchers count the events of each answer as they
/// come, without decoding their images, so that the client's share of this
/// machine's two cores stays small; they go away with the measurement.
/// Returns the rate, and the events an answer held on average (0 with no
/// watcher).
pub async fn rate_with_watchers(
    server: &Server,
    start: u64,
    writes: u64,
    watchers: usize,
) -> Result<(f64, f64), String> {
    let channels = load::connect(&server.socket, 4).await.map_err(|e| e.to_string())?;
    let connections = watchers.div_ceil(WATCHERS_PER_CONNECTION).max(1);
    let watch_channels = load::connect(&server.socket, connections)
        .await
        .map_err(|e| e.to_string())?;
    let tallies: Arc<Vec<Tally>> = Arc::new((0..watchers).map(|_| Tally::default()).collect());
    let mut tasks = Vec::new();
    for i in 0..watchers {
        let mut grpc = tonic::client::Grpc::new(watch_channels[i / WATCHERS_PER_CONNECTION].clone());
        grpc.ready().await.map_err(|e| e.to_string())?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/containerd.v1.Images/Watch");
        let mut stream = grpc
            .server_streaming(load::request(seed::WatchRequest::default()), path, Counting)
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let tallies = tallies.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(events)) = stream.message().await {
                tallies[i].events.fetch_add(events, Ordering::Relaxed);
                tallies[i].answers.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let report = load::run(&channels, Workload::Create { start }, writes, 16).await?;
    wait_for(&tallies, writes).await?;
    for task in tasks {
        task.abort();
    }
    let answers: u64 = tallies.iter().map(|t| t.answers.load(Ordering::Relaxed)).sum();
    let per_answer = (writes * watchers as u64) as f64 / answers.max(1) as f64;
    Ok((report.rate(), if watchers == 0 { 0.0 } else { per_answer }))
}

/// The codec of the write-rate watchers: it sends a `WatchRequest` and
/// reads of each answer only how many events it holds, where the bytes lie,
/// so that the client spends as little of the machine as it can.
#[derive(Debug, Clone, Copy, Default)]
struct Counting;

impl tonic::codec::Codec for Counting {
    type Encode = seed::WatchRequest;
    type Decode = u64;
    type Encoder = Counting;
    type Decoder = Counting;

    fn encoder(&mut self) -> Counting {
        Counting
    }

    fn decoder(&mut self) -> Counting {
        Counting
    }
}

impl tonic::codec::Encoder for Counting {
    type Item = seed::WatchRequest;
    type Error = tonic::Status;

    fn encode(&mut self, item: seed::WatchRequest, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        item.encode(dst).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Decoder for Counting {
    type Item = u64;
    type Error = tonic::Status;

    /// Counts the answer's `events` (field 1); skips its `revision`.
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<u64>, tonic::Status> {
        use prost::bytes::Buf;
        use prost::encoding::{WireType, decode_key, decode_varint};
        let bad = |e: prost::DecodeError| tonic::Status::internal(e.to_string());
        let mut count = 0;
        while src.has_remaining() {
            let (field, wire) = decode_key(src).map_err(bad)?;
            match wire {
                WireType::LengthDelimited => {
                    let len = decode_varint(src).map_err(bad)? as usize;
                    if len > src.remaining() {
                        return Err(tonic::Status::internal("a truncated answer"));
                    }
                    src.advance(len);
                    count += u64::from(field == 1);
                }
                WireType::Varint => {
                    decode_varint(src).map_err(bad)?;
                }
                other => return Err(tonic::Status::internal(format!("unexpected wire type {other:?}"))),
            }
        }
        Ok(Some(count))
    }
}

/// The fan-out: `watchers` on `api` while one writer creates `rate` images
/// a second for `duration`, numbered from `start`.
pub async fn fan_out(
    server: &Server,
    api: Api,
    watchers: usize,
    start: u64,
    rate: u64,
    duration: Duration,
) -> Result<FanOut, String> {
    let total = rate * duration.as_secs();
    let acks = Arc::new(Acks::new(total as usize));
    let (counts, tasks) = attach(server, watchers, api, acks.clone()).await?;
    let cpu_before = server.cpu_time();
    let written = write_at(server, start, total, rate, acks.clone()).await?;
    // Whatever has not arrived a few seconds after the last write is missed.
    let _ = tokio::time::timeout(Duration::from_secs(5), wait_for(&counts, written)).await;
    let cpu = server.cpu_time().saturating_sub(cpu_before);
    for task in tasks {
        task.abort();
    }
    let mut latencies: Vec<u32> = Vec::new();
    let mut delivered = 0;
    for watcher in counts.iter() {
        delivered += watcher.events.load(Ordering::Relaxed);
        latencies.extend(watcher.latencies.lock().unwrap().iter());
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        let micros = latencies
            .get(((latencies.len().max(1) - 1) as f64 * q) as usize)
            .copied();
        Duration::from_micros(micros.unwrap_or_default().into())
    };
    Ok(FanOut {
        written,
        delivered,
        missed: (written * watchers as u64).saturating_sub(delivered),
        latency: [at(0.5), at(0.99), at(1.0)],
        cpu_per_event: cpu / delivered.max(1) as u32,
    })
}

/// Resident memory (MiB) before and after `duration` of creates at `rate`
/// a second, twice: first with no subscriber (what the store's own growth
/// costs), then while one subscriber never reads. The difference of the two
/// growths is what the stalled subscriber costs.
pub async fn stalled(server: &Server, start: u64, rate: u64, duration: Duration) -> Result<[f64; 4], String> {
    let count = rate * duration.as_secs();
    let rss = |server: &Server| server.rss_mib();
    let control = rss(server);
    write_at(server, start, count, rate, Arc::new(Acks::new(0))).await?;
    let control_end = rss(server);

    let channel = load::connect(&server.socket, 1)
        .await
        .map_err(|e| e.to_string())?
        .remove(0);
    // Held, never read, until the writes end (containerd answers the call
    // only with its first event, so it is opened aside).
    let (release, held) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let stream = ev::events_client::EventsClient::new(channel)
            .subscribe(ev::SubscribeRequest::default())
            .await;
        let _ = held.await;
        drop(stream);
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stalled = rss(server);
    write_at(server, start + count, count, rate, Arc::new(Acks::new(0))).await?;
    let stalled_end = rss(server);
    drop(release);
    Ok([control, control_end, stalled, stalled_end])
}

/// Which API a watcher uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// The seed API's Watch (imaged only).
    Watch,
    /// containerd's Events Subscribe.
    Subscribe,
}

/// When each create was acknowledged, in microseconds since `epoch` (0:
/// not yet).
struct Acks {
    epoch: Instant,
    at: Vec<AtomicU64>,
    base: AtomicU64,
}

impl Acks {
    fn new(count: usize) -> Acks {
        Acks {
            epoch: Instant::now(),
            at: (0..count).map(|_| AtomicU64::new(0)).collect(),
            base: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    /// How long after its acknowledgement image `n` arrived, in
    /// microseconds (0 when it arrived first, which imaged allows: it hands
    /// a batch to the feed before it answers); `None` for an image this run
    /// did not write.
    fn latency(&self, n: u64) -> Option<u32> {
        let i = n.checked_sub(self.base.load(Ordering::Relaxed))? as usize;
        let acked = self.at.get(i)?.load(Ordering::Relaxed);
        if acked == 0 {
            return Some(0);
        }
        Some(self.now().saturating_sub(acked).min(u32::MAX as u64) as u32)
    }
}

/// One watcher's tally.
#[derive(Default)]
struct Tally {
    opened: std::sync::atomic::AtomicBool,
    events: AtomicU64,
    answers: AtomicU64,
    latencies: std::sync::Mutex<Vec<u32>>,
}

/// Attaches `count` watchers on `api`, each counting what it receives, and
/// returns once all are attached.
///
/// containerd answers a Subscribe (its headers too) only with its first
/// event, so each watcher opens in a task of its own, and published
/// "prime" events, which no watcher counts, let each know it is attached.
async fn attach(
    server: &Server,
    count: usize,
    api: Api,
    acks: Arc<Acks>,
) -> Result<(Arc<Vec<Tally>>, Vec<tokio::task::JoinHandle<()>>), String> {
    let connections = count.div_ceil(WATCHERS_PER_CONNECTION).max(1);
    let channels = load::connect(&server.socket, connections)
        .await
        .map_err(|e| e.to_string())?;
    let tallies: Arc<Vec<Tally>> = Arc::new((0..count).map(|_| Tally::default()).collect());
    let mut tasks = Vec::new();
    for i in 0..count {
        let channel = channels[i / WATCHERS_PER_CONNECTION].clone();
        let (tallies, acks) = (tallies.clone(), acks.clone());
        tasks.push(tokio::spawn(async move {
            let tally = &tallies[i];
            let Ok(mut names) = open(channel, api).await else {
                return;
            };
            if api == Api::Watch {
                tally.opened.store(true, Ordering::SeqCst);
            }
            while let Some(batch) = names.next().await {
                tally.opened.store(true, Ordering::SeqCst);
                for n in batch {
                    tally.events.fetch_add(1, Ordering::Relaxed);
                    if let Some(latency) = acks.latency(n) {
                        tally.latencies.lock().unwrap().push(latency);
                    }
                }
            }
        }));
    }
    let mut events = ev::events_client::EventsClient::new(channels[0].clone());
    let started = Instant::now();
    while tallies.iter().any(|t| !t.opened.load(Ordering::SeqCst)) {
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the watchers were not all attached within 60 s".into());
        }
        if api == Api::Subscribe {
            let prime = ev::PublishRequest {
                topic: "/bench/prime".into(),
                event: Some(prost_types::Any {
                    type_url: "bench.Prime".into(),
                    value: Vec::new(),
                }),
            };
            events.publish(load::request(prime)).await.map_err(|e| e.to_string())?;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((tallies, tasks))
}

/// A watcher's stream of the image numbers it is told of, batch by batch.
enum Names {
    Watch(tonic::Streaming<seed::WatchResponse>),
    Subscribe(tonic::Streaming<ev::Envelope>),
}

impl Names {
    async fn next(&mut self) -> Option<Vec<u64>> {
        match self {
            Names::Watch(stream) => {
                let answer = stream.message().await.ok()??;
                Some(
                    answer
                        .events
                        .iter()
                        .filter_map(|e| number(&e.image.as_ref()?.name))
                        .collect(),
                )
            }
            Names::Subscribe(stream) => {
                let envelope = stream.message().await.ok()??;
                if envelope.topic != "/images/create" {
                    return Some(Vec::new());
                }
                let payload = ctrd::ImageCreate::decode(&envelope.event?.value[..]).ok()?;
                Some(number(&payload.name).into_iter().collect())
            }
        }
    }
}

async fn open(channel: Channel, api: Api) -> Result<Names, String> {
    Ok(match api {
        Api::Watch => Names::Watch(
            seed::images_client::ImagesClient::new(channel)
                .watch(load::request(seed::WatchRequest::default()))
                .await
                .map_err(|e| e.to_string())?
                .into_inner(),
        ),
        Api::Subscribe => Names::Subscribe(
            ev::events_client::EventsClient::new(channel)
                .subscribe(ev::SubscribeRequest {
                    filters: vec![format!("namespace=={}", load::NAMESPACE)],
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner(),
        ),
    })
}

/// The number of a benchmark image's name (see [`load::name`]).
fn number(name: &str) -> Option<u64> {
    name.rsplit_once("/image-")?.1.strip_suffix(":latest")?.parse().ok()
}

/// Creates `count` images from `start` at `rate` a second (up to 16 at a
/// time), recording each acknowledgement; returns how many succeeded.
async fn write_at(server: &Server, start: u64, count: u64, rate: u64, acks: Arc<Acks>) -> Result<u64, String> {
    let channel = load::connect(&server.socket, 1)
        .await
        .map_err(|e| e.to_string())?
        .remove(0);
    acks.base.store(start, Ordering::Relaxed);
    let slots = Arc::new(tokio::sync::Semaphore::new(16));
    let done = Arc::new(AtomicU64::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for i in 0..count {
        tick.tick().await;
        let permit = slots.clone().acquire_owned().await.map_err(|e| e.to_string())?;
        let mut client = load::images(channel.clone());
        let (acks, done) = (acks.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let created = client
                .create(load::request(ctrd::CreateImageRequest {
                    image: Some(load::image(start + i)),
                    source_date_epoch: None,
                }))
                .await;
            if created.is_ok() {
                if let Some(slot) = acks.at.get(i as usize) {
                    slot.store(acks.now(), Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())?;
    }
    Ok(done.load(Ordering::Relaxed))
}

/// Waits until every watcher has received `each` events.
async fn wait_for(tallies: &[Tally], each: u64) -> Result<(), String> {
    let started = Instant::now();
    while tallies.iter().any(|t| t.events.load(Ordering::Relaxed) < each) {
        if started.elapsed() > Duration::from_secs(60) {
            let short = tallies
                .iter()
                .filter(|t| t.events.load(Ordering::Relaxed) < each)
                .count();
            return Err(format!(
                "{short} watchers did not receive all {each} events within 60 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The plan's watcher counts in the order of `round`: as given in even
/// rounds, reversed in odd ones.
fn order(watchers: &[usize], round: usize) -> Vec<usize> {
    let mut order = watchers.to_vec();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// Runs every watch workload on imaged (the binary at `imaged`) and
/// containerd, one after the other on fresh stores under `dir`, and returns
/// the report (Markdown).
pub async fn compare(plan: &Plan, imaged: &std::path::Path, dir: &std::path::Path) -> Result<String, String> {
    use std::fmt::Write as _;
    let mut report = String::new();
    let w = |report: &mut String, line: String| writeln!(report, "{line}").map_err(|e| e.to_string());
    w(
        &mut report,
        format!(
            "# Watch benchmark\n\nOne run on this machine, every figure measured side by side in it. \
             imaged and containerd each from an empty store; every imaged write durable.\n\n\
             ## Writers with watchers (imaged)\n\nDurable creates at concurrency 16, {} per measurement, \
             with watchers attached that each receive every event (counted in each answer as it comes, \
             without decoding the images, so that the client's share of the machine stays small). {} rounds \
             on one daemon, the order reversed every other round ({}), so that the store's growth over the \
             run falls on every count alike; the ratio is of medians, so that a stall of sled's periodic \
             reopen, which lands in one measurement, does not decide it.\n\n\
             | watchers | creates/s, each round | ratio to none (medians) | events per answer |\n|---|---|---|---|",
            plan.writes,
            plan.rounds,
            order(&plan.watchers, 0)
                .iter()
                .chain(order(&plan.watchers, 1).iter())
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
    )?;
    let writers_dir = dir.join("imaged-writers");
    std::fs::create_dir_all(&writers_dir).map_err(|e| e.to_string())?;
    let server = Server::imaged(imaged, &writers_dir)?;
    let mut rates = vec![Vec::new(); plan.watchers.len()];
    let mut per_answer = vec![Vec::new(); plan.watchers.len()];
    let mut start = 0;
    for round in 0..plan.rounds {
        for watchers in order(&plan.watchers, round) {
            eprintln!("imaged: {} creates with {watchers} watchers…", plan.writes);
            let i = plan
                .watchers
                .iter()
                .position(|&w| w == watchers)
                .expect("one of the plan's");
            let (rate, events) = rate_with_watchers(&server, start, plan.writes, watchers).await?;
            rates[i].push(rate);
            per_answer[i].push(events);
            start += plan.writes;
            // A lull between measurements, as a host has between bursts:
            // the store's periodic reopen of sled runs in it rather than
            // inside whichever measurement crosses its threshold.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    server.stop();
    let mean = |r: &[f64]| r.iter().sum::<f64>() / r.len() as f64;
    let median = |r: &[f64]| crate::median(r).unwrap_or(0.0);
    for (i, &watchers) in plan.watchers.iter().enumerate() {
        let each: Vec<String> = rates[i].iter().map(|r| format!("{r:.0}")).collect();
        w(
            &mut report,
            format!(
                "| {watchers} | {} | {:.2} | {:.1} |",
                each.join(", "),
                median(&rates[i]) / median(&rates[0]),
                mean(&per_answer[i])
            ),
        )?;
    }
    if plan.writers_only {
        return Ok(report);
    }

    w(
        &mut report,
        format!(
            "\n## Fan-out\n\n{} watchers on one daemon while one writer creates {} images a second for {} s. \
             Latency: from each create's acknowledgement to each watcher's receipt (imaged hands a batch to \
             the feed before it answers, so an event can arrive first: counted as 0).\n\n\
             | server, API | written | delivered | missed | p50 | p99 | max | daemon CPU per event |\n\
             |---|---|---|---|---|---|---|---|",
            plan.fan_out,
            plan.rate,
            plan.fan_out_for.as_secs()
        ),
    )?;
    // The imaged runs with batching off show what the default batching
    // interval costs in latency and saves in CPU; only the daemons as
    // configured by default take the stalled subscriber after their fan-out.
    let off: &[&str] = &["--watch-batch-ms", "0"];
    let runs: [(&str, Api, Option<&[&str]>, bool); 5] = [
        ("imaged, Watch", Api::Watch, Some(&[]), false),
        ("imaged, Watch, --watch-batch-ms 0", Api::Watch, Some(off), false),
        ("imaged, Subscribe", Api::Subscribe, Some(&[]), true),
        (
            "imaged, Subscribe, --watch-batch-ms 0",
            Api::Subscribe,
            Some(off),
            false,
        ),
        ("containerd, Subscribe", Api::Subscribe, None, true),
    ];
    let mut memory = Vec::new();
    for (name, api, imaged_args, stall) in runs {
        eprintln!("{name}: fan-out to {} watchers…", plan.fan_out);
        let sub = dir.join(name.replace([',', ' ', '-'], "_"));
        std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
        let server = match imaged_args {
            None => Server::containerd(&sub)?,
            Some(args) => Server::imaged_with(imaged, &sub, args)?,
        };
        let f = fan_out(&server, api, plan.fan_out, 0, plan.rate, plan.fan_out_for).await?;
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
        w(
            &mut report,
            format!(
                "| {name} | {} | {} | {} | {} | {} | {} | {:.1} µs |",
                f.written,
                f.delivered,
                f.missed,
                ms(f.latency[0]),
                ms(f.latency[1]),
                ms(f.latency[2]),
                f.cpu_per_event.as_secs_f64() * 1e6
            ),
        )?;
        if stall {
            eprintln!("{name}: a stalled subscriber for {} s…", plan.stall_for.as_secs());
            let start = plan.rate * plan.fan_out_for.as_secs();
            memory.push((name, stalled(&server, start, plan.rate, plan.stall_for / 2).await?));
        }
        server.stop();
    }
    w(
        &mut report,
        format!(
            "\n## A subscriber that never reads\n\nOn the daemon of the fan-out above: creates at {} a second \
             for {} s with no subscriber, then as long again while one Subscribe is never read. Resident \
             memory, MiB; the last column is what the stalled subscriber cost beyond the store's own growth.\n\n\
             | server | no subscriber: start → end | stalled subscriber: start → end | growth, stalled − none |\n\
             |---|---|---|---|",
            plan.rate,
            (plan.stall_for / 2).as_secs()
        ),
    )?;
    for (name, [a, b, c, d]) in memory {
        w(
            &mut report,
            format!(
                "| {name} | {a:.0} → {b:.0} | {c:.0} → {d:.0} | {:+.0} |",
                (d - c) - (b - a)
            ),
        )?;
    }
    Ok(report)
}
