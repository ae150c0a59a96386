//! The load generator: workloads over containerd's images API (which imaged,
//! containerd and the null server all speak) and over imaged's seed API,
//! with concurrency, connections, throughput and latency percentiles.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use imaged_api::containerd::services::images::v1 as ctrd;
use imaged_api::containerd::services::images::v1::images_client::ImagesClient;
use imaged_api::containerd::types::Descriptor;
use imaged_api::containerd::v1 as seed;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

/// The namespace every workload uses.
pub const NAMESPACE: &str = "bench";

/// containerd's (and imaged's) message limit.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Opens `count` connections to the socket.
pub async fn connect(socket: &Path, count: usize) -> Result<Vec<Channel>, tonic::transport::Error> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        let endpoint = Endpoint::try_from(format!("unix://{}", socket.display()))?;
        channels.push(endpoint.connect().await?);
    }
    Ok(channels)
}

/// A containerd images client with the namespace header and 16 MiB limits.
pub fn images(channel: Channel) -> ImagesClient<Channel> {
    ImagesClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// Adds the namespace header.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("containerd-namespace", NAMESPACE.parse().unwrap());
    request
}

/// The name of image number `n`.
pub fn name(n: u64) -> String {
    format!("registry.example/team-{:03}/image-{n:09}:latest", n % 997)
}

/// The digest of image number `n`: distinct for every `n` and spread over
/// the whole digest space, as content hashes are. A counter written out in
/// hex would arrive in key order, which no registry's digests do, and
/// would measure a store's sequential-insert path instead of its common one.
pub fn digest(n: u64) -> String {
    // splitmix64: a bijection of u64, so each `n` has its own first word.
    let mut state = n;
    let mut words = [0u64; 4];
    for word in &mut words {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        *word = z ^ (z >> 31);
    }
    format!(
        "sha256:{:016x}{:016x}{:016x}{:016x}",
        words[0], words[1], words[2], words[3]
    )
}

/// Image number `n`, as containerd's API carries it: two labels, as in the
/// measurements the issue quotes.
pub fn image(n: u64) -> ctrd::Image {
    ctrd::Image {
        name: name(n),
        labels: [
            ("org.example/team".to_string(), format!("team-{}", n % 997)),
            ("org.example/build".to_string(), format!("{n}")),
        ]
        .into_iter()
        .collect(),
        target: Some(Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: digest(n),
            size: 1000 + (n % 5000) as i64,
            annotations: Default::default(),
        }),
        created_at: None,
        updated_at: None,
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Calls completed.
    pub calls: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Worst latency.
    pub max: Duration,
    /// The calls slower than [`SLOW`]: when each began (since the run's
    /// start) and how long it took, in the order they began; at most
    /// [`SLOW_KEPT`] of them.
    pub slow: Vec<(Duration, Duration)>,
}

/// A call slower than this is noted with its start, so that a report can
/// set it beside what the server logged at that moment.
pub const SLOW: Duration = Duration::from_millis(100);

/// The slow calls a report keeps.
pub const SLOW_KEPT: usize = 1000;

impl Report {
    /// Calls per second.
    pub fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    fn from(mut latencies: Vec<Duration>, mut slow: Vec<(Duration, Duration)>, elapsed: Duration) -> Report {
        latencies.sort();
        slow.sort();
        slow.truncate(SLOW_KEPT);
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or_default()
        };
        Report {
            calls: latencies.len() as u64,
            elapsed,
            p50: at(0.5),
            p99: at(0.99),
            max: latencies.last().copied().unwrap_or_default(),
            slow,
        }
    }
}

/// A workload over containerd's images API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Create new images, numbered from `start`.
    Create {
        /// First image number.
        start: u64,
    },
    /// Get existing images among the first `existing`.
    Get {
        /// How many images exist.
        existing: u64,
    },
    /// Set a label on existing images among the first `existing`.
    Update {
        /// How many images exist.
        existing: u64,
    },
    /// Delete images numbered from `start`.
    Delete {
        /// First image number.
        start: u64,
    },
    /// List the whole namespace in one call.
    List,
}

/// Runs `calls` calls of `workload` from `concurrency` tasks spread over
/// `channels`, and measures them. Every call must succeed.
pub async fn run(channels: &[Channel], workload: Workload, calls: u64, concurrency: usize) -> Result<Report, String> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let mut client = images(channels[worker % channels.len()].clone());
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut slow) = (Vec::new(), Vec::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    return Ok((latencies, slow));
                }
                let begun = Instant::now();
                let result = match workload {
                    Workload::Create { start } => client
                        .create(request(ctrd::CreateImageRequest {
                            image: Some(image(start + i)),
                            source_date_epoch: None,
                        }))
                        .await
                        .map(drop),
                    Workload::Get { existing } => client
                        .get(request(ctrd::GetImageRequest {
                            name: name(i.wrapping_mul(7919) % existing),
                        }))
                        .await
                        .map(drop),
                    Workload::Update { existing } => {
                        let mut image = image(i.wrapping_mul(7919) % existing);
                        image.labels.insert("org.example/updated".into(), i.to_string());
                        client
                            .update(request(ctrd::UpdateImageRequest {
                                image: Some(image),
                                update_mask: Some(prost_types::FieldMask {
                                    paths: vec!["labels.org.example/updated".into()],
                                }),
                                source_date_epoch: None,
                            }))
                            .await
                            .map(drop)
                    }
                    Workload::Delete { start } => client
                        .delete(request(ctrd::DeleteImageRequest {
                            name: name(start + i),
                            ..Default::default()
                        }))
                        .await
                        .map(drop),
                    Workload::List => client.list(request(ctrd::ListImagesRequest::default())).await.map(drop),
                };
                if let Err(status) = result {
                    return Err(format!("{workload:?} call {i}: {status}"));
                }
                let took = begun.elapsed();
                if took > SLOW && slow.len() < SLOW_KEPT {
                    slow.push((begun - started, took));
                }
                latencies.push(took);
            }
        }));
    }
    let (mut latencies, mut slow) = (Vec::new(), Vec::new());
    for task in tasks {
        let (some, slow_some) = task.await.map_err(|e| e.to_string())??;
        latencies.extend(some);
        slow.extend(slow_some);
    }
    Ok(Report::from(latencies, slow, started.elapsed()))
}

/// Creates images `from..to` in batches of `step`, reporting the rate and p99
/// of each batch, to show how writes behave as the store grows.
pub async fn fill(
    channels: &[Channel],
    from: u64,
    to: u64,
    step: u64,
    concurrency: usize,
) -> Result<Vec<(u64, Report)>, String> {
    let mut batches = Vec::new();
    let mut at = from;
    while at < to {
        let n = step.min(to - at);
        let report = run(channels, Workload::Create { start: at }, n, concurrency).await?;
        at += n;
        batches.push((at, report));
    }
    Ok(batches)
}

/// imaged only: walks the namespace in pages of `page_size` through the seed
/// API; returns the images seen and the time.
pub async fn walk(channel: Channel, page_size: u32) -> Result<(u64, Duration), String> {
    let mut client = seed::images_client::ImagesClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let started = Instant::now();
    let mut token = String::new();
    let mut seen = 0;
    loop {
        let page = client
            .list(request(seed::ListRequest {
                page_size,
                page_token: token,
                ..Default::default()
            }))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        seen += page.images.len() as u64;
        if page.next_page_token.is_empty() {
            return Ok((seen, started.elapsed()));
        }
        token = page.next_page_token;
    }
}

/// imaged only: streams the whole namespace with ListStream.
pub async fn stream(channel: Channel) -> Result<(u64, Duration), String> {
    let mut client = seed::images_client::ImagesClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let started = Instant::now();
    let mut stream = client
        .list_stream(request(seed::ListRequest::default()))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut seen = 0;
    while let Some(batch) = stream.next().await {
        seen += batch.map_err(|e| e.to_string())?.images.len() as u64;
    }
    Ok((seen, started.elapsed()))
}
