//! Measures how listing costs grow with the store: fills a running imaged's
//! namespace up to each requested size and times, at each size, a Get, the
//! first page of 1000, a page of 1000 deep in the list, indexed filters, the
//! first batch of a stream and a whole stream; pages of 100 of images, of
//! repositories and of one repository's images; with the daemon's RSS and
//! on-disk size.
//!
//! Image `i` is tag `v{i}` of repository `repo-{i mod 10,000}`: a thousand
//! images are a thousand repositories of one tag, a million are ten
//! thousand of a hundred.
//!
//! `cargo run --release -p imaged --example scale -- SOCKET PID DATA_DIR SIZE...`
//!
//! Times are medians of repeated calls; they are for comparing sizes within
//! one run on one machine, not absolute figures.

use std::time::{Duration, Instant};

use imaged_api::containerd::types::Descriptor;
use imaged_api::containerd::v1::images_client::ImagesClient;
use imaged_api::containerd::v1::{GetRequest, Image, ListRepositoriesRequest, ListRequest, PutRequest};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

imaged::global_allocator!();

const NS: &str = "scale";

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("containerd-namespace", NS.parse().unwrap());
    request
}

/// Repositories the images are spread over.
const REPOSITORIES: u64 = 10_000;

fn repository(r: u64) -> String {
    format!("registry.example/team-{:03}/repo-{r:05}", r % 997)
}

fn name(i: u64) -> String {
    format!("{}:v{i:09}", repository(i % REPOSITORIES))
}

async fn fill(channel: &Channel, from: u64, to: u64) {
    let mut tasks = Vec::new();
    for worker in 0..64 {
        let mut client = ImagesClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = from + worker;
            while i < to {
                let image = Image {
                    name: name(i),
                    target: Some(Descriptor {
                        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                        digest: format!("sha256:{:064x}", i % 50_000),
                        size: 1000 + (i % 5000) as i64,
                        annotations: Default::default(),
                    }),
                    labels: [("team".to_string(), format!("t{}", i % 997))].into_iter().collect(),
                    ..Default::default()
                };
                client
                    .put(request(PutRequest {
                        image: Some(image),
                        ..Default::default()
                    }))
                    .await
                    .expect("put");
                i += 64;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn median<F, Fut>(runs: usize, mut f: F) -> Duration
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(runs);
    for run in 0..runs {
        let start = Instant::now();
        f(run).await;
        times.push(start.elapsed());
    }
    times.sort();
    times[runs / 2]
}

fn list(filters: &[String], page_size: u32, token: String) -> ListRequest {
    ListRequest {
        filters: filters.to_vec(),
        page_size,
        page_token: token,
        order_by: String::new(),
    }
}

fn rss_mib(pid: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn disk_mib(dir: &std::path::Path) -> f64 {
    imaged::store::files_bytes(dir) as f64 / (1 << 20) as f64
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// Point lookups at `size` images: a Get, and lists by name, by digest and
/// by name prefix (medians).
async fn lookups(client: &ImagesClient<Channel>, size: u64) -> [Duration; 4] {
    let get = median(301, |run| {
        let mut client = client.clone();
        async move {
            let n = (run as u64 * 7919) % size;
            client.get(request(GetRequest { name: name(n) })).await.unwrap();
        }
    })
    .await;
    let mid_filter = vec![format!("name~=^registry\\.example/team-{:03}/", 500)];
    let by_name = median(101, |run| {
        let mut client = client.clone();
        async move {
            let filters = vec![format!("name=={}", name((run as u64 * 31) % size))];
            let page = client
                .list(request(list(&filters, 1000, String::new())))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(page.images.len(), 1);
        }
    })
    .await;
    let by_digest = median(101, |run| {
        let mut client = client.clone();
        async move {
            let filters = vec![format!("target.digest==sha256:{:064x}", run as u64 % size.min(50_000))];
            client.list(request(list(&filters, 1000, String::new()))).await.unwrap();
        }
    })
    .await;
    let by_prefix = median(21, |_| {
        let mut client = client.clone();
        let filters = mid_filter.clone();
        async move {
            client.list(request(list(&filters, 1000, String::new()))).await.unwrap();
        }
    })
    .await;
    [get, by_name, by_digest, by_prefix]
}

/// Pages of 100 at `size` images: the first page of images, the first page
/// of repositories, and a page of one repository's images (medians).
async fn pages_of_100(client: &ImagesClient<Channel>, size: u64) -> [Duration; 3] {
    let images = median(101, |_| {
        let mut client = client.clone();
        async move {
            let page = client
                .list(request(list(&[], 100, String::new())))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(page.images.len(), 100.min(size as usize));
        }
    })
    .await;
    let repositories = median(101, |_| {
        let mut client = client.clone();
        async move {
            let page = client
                .list_repositories(request(ListRepositoriesRequest {
                    page_size: 100,
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(page.repositories.len(), 100.min(size.min(REPOSITORIES) as usize));
        }
    })
    .await;
    let one_repository = median(101, |run| {
        let mut client = client.clone();
        async move {
            let r = (run as u64 * 7919) % size.min(REPOSITORIES);
            let filters = vec![format!("repository=={}", repository(r))];
            let page = client
                .list(request(list(&filters, 100, String::new())))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(page.images.len() as u64, (size / REPOSITORIES).clamp(1, 100));
        }
    })
    .await;
    [images, repositories, one_repository]
}

/// Pages at `size` images: the first and a deep page of 1000, a stream's
/// first batch (medians) and the whole stream.
async fn pages(client: &mut ImagesClient<Channel>, size: u64) -> Result<[Duration; 4], Box<dyn std::error::Error>> {
    let first_page = median(21, |_| {
        let mut client = client.clone();
        async move {
            let page = client
                .list(request(list(&[], 1000, String::new())))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(page.images.len(), 1000);
        }
    })
    .await;
    // A token from the middle of the list: seek cost, not offset cost.
    let deep_token = {
        let mut token = String::new();
        for _ in 0..(size / 2000).min(50) {
            token = client
                .list(request(list(&[], 1000, token)))
                .await?
                .into_inner()
                .next_page_token;
        }
        token
    };
    let deep_page = median(21, |_| {
        let mut client = client.clone();
        let token = deep_token.clone();
        async move {
            client.list(request(list(&[], 1000, token))).await.unwrap();
        }
    })
    .await;
    let first_batch = median(21, |_| {
        let mut client = client.clone();
        async move {
            let mut stream = client
                .list_stream(request(list(&[], 0, String::new())))
                .await
                .unwrap()
                .into_inner();
            let batch = stream.next().await.unwrap().unwrap();
            assert_eq!(batch.images.len(), 1000);
        }
    })
    .await;
    let whole = {
        let start = Instant::now();
        let mut stream = client
            .list_stream(request(list(&[], 0, String::new())))
            .await?
            .into_inner();
        let mut count = 0u64;
        while let Some(batch) = stream.next().await {
            count += batch?.images.len() as u64;
        }
        assert_eq!(count, size);
        start.elapsed()
    };
    Ok([first_page, deep_page, first_batch, whole])
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, pid, data, sizes @ ..] = args.as_slice() else {
        return Err("usage: scale SOCKET PID DATA_DIR SIZE...".into());
    };
    let channel = Endpoint::try_from(format!("unix://{socket}"))?.connect().await?;
    let mut client = ImagesClient::new(channel.clone()).max_decoding_message_size(16 << 20);
    println!(
        "| images | fill rate | get | page 1 of 1000 | deep page of 1000 | name== | target.digest== | name~=^prefix | stream first batch | whole stream | images, page of 100 | repositories, page of 100 | one repository, page of 100 | RSS MiB | disk MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut filled = 0u64;
    for size in sizes {
        let size: u64 = size.parse()?;
        let start = Instant::now();
        fill(&channel, filled, size).await;
        let rate = (size - filled) as f64 / start.elapsed().as_secs_f64();
        filled = size;

        let [get, by_name, by_digest, by_prefix] = lookups(&client, size).await;
        let [first_page, deep_page, first_batch, whole] = pages(&mut client, size).await?;
        let [images_100, repositories_100, one_repository_100] = pages_of_100(&client, size).await;
        println!(
            "| {size} | {rate:.0}/s | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms | {} ms | {:.0} | {:.0} |",
            ms(get),
            ms(first_page),
            ms(deep_page),
            ms(by_name),
            ms(by_digest),
            ms(by_prefix),
            ms(first_batch),
            ms(whole),
            ms(images_100),
            ms(repositories_100),
            ms(one_repository_100),
            rss_mib(pid),
            disk_mib(std::path::Path::new(data)),
        );
    }
    Ok(())
}
