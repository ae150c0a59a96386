//! Load: 1,000 concurrent connections, each making a mix of calls, while
//! stalled ListStream readers hold streams open. Every call must answer,
//! and the daemon's memory must stay within a stated bound.

mod common;

use std::time::Instant;

use common::{Daemon, in_ns};
use imaged_api::containerd::v1 as seed;
use seed::images_client::ImagesClient;

const CONNECTIONS: usize = 1000;
const ROUNDS: u64 = 5;
const STALLED: usize = 20;
/// The daemon's resident memory under this load stays below this (debug
/// build; measured peaks are in docs/RELIABILITY.md).
const RSS_BOUND_MIB: u64 = 768;

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 4 * CONNECTIONS as u64,
        "the hard limit on open files ({hard}) is too low for this test"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_connections_with_stalled_streams_are_all_answered() {
    raise_fd_limit();
    let daemon = Daemon::start();
    // A namespace large enough that a stream over it cannot finish in the
    // transport's buffers: these readers stall holding it open.
    let mut client = daemon.seed().await;
    for i in 0..400u64 {
        let mut image = common::image(&format!("big/{i:04}"), i + 1);
        image.labels.insert("payload".into(), "x".repeat(4000));
        let put = seed::PutRequest {
            image: Some(image),
            ..Default::default()
        };
        client.put(in_ns("big", put)).await.unwrap();
    }
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let mut client = daemon.seed().await;
        stalled.push(
            client
                .list_stream(in_ns("big", seed::ListRequest::default()))
                .await
                .unwrap(),
        );
    }
    let idle_kib = daemon.rss_kib();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        // Its own connection each.
        let channel = common::channel(&daemon.socket).await;
        tasks.push(tokio::spawn(async move {
            let mut client = ImagesClient::new(channel);
            let ns = format!("load{}", c % 10);
            for r in 0..ROUNDS {
                let name = format!("c{c}/r{r}");
                client.put(in_ns(&ns, common::put(&name, r + 1))).await?;
                client.get(in_ns(&ns, seed::GetRequest { name: name.clone() })).await?;
                let page = seed::ListRequest {
                    page_size: 20,
                    ..Default::default()
                };
                client.list(in_ns(&ns, page)).await?;
                if r % 2 == 1 {
                    let delete = seed::DeleteRequest {
                        name,
                        ..Default::default()
                    };
                    client.delete(in_ns(&ns, delete)).await?;
                }
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    let mut peak_kib = idle_kib;
    let mut failed = Vec::new();
    for task in tasks {
        if let Err(status) = task.await.unwrap() {
            failed.push(status);
        }
        peak_kib = peak_kib.max(daemon.rss_kib());
    }
    let calls = CONNECTIONS as u64 * (ROUNDS * 3 + ROUNDS / 2);
    println!(
        "{CONNECTIONS} connections, {calls} calls in {:.1} s with {STALLED} stalled streams; RSS {} MiB idle, {} MiB peak",
        started.elapsed().as_secs_f64(),
        idle_kib / 1024,
        peak_kib / 1024
    );
    assert!(
        failed.is_empty(),
        "{} connections failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert!(peak_kib / 1024 < RSS_BOUND_MIB, "RSS reached {} MiB", peak_kib / 1024);
    // The stalled streams are still open, and still answer when read.
    for mut stream in stalled.into_iter().map(tonic::Response::into_inner).take(1) {
        use tokio_stream::StreamExt;
        assert!(stream.next().await.unwrap().is_ok());
    }
}
