//! Streams and connections that clients hold: a stalled ListStream holds few
//! bytes in the daemon, streams past the bound are refused, and SIGTERM ends
//! streams with UNAVAILABLE and finishes within the grace period whatever
//! the clients do, keeping every acknowledged write.

mod common;

use std::collections::BTreeSet;

use common::{Daemon, in_ns};
use imaged_api::containerd::v1 as seed;
use seed::images_client::ImagesClient;
use tokio_stream::StreamExt;
use tonic::Code;

/// Puts `count` images of about `label_bytes` each into namespace `ns`.
async fn fill(client: &mut ImagesClient<tonic::transport::Channel>, ns: &str, count: u64, label_bytes: usize) {
    for i in 0..count {
        let mut image = common::image(&format!("img{i:05}"), i + 1);
        // Labels are at most 4 KiB each, key and value.
        for part in 0..label_bytes / 4000 {
            image.labels.insert(format!("payload{part}"), "x".repeat(3990));
        }
        let put = seed::PutRequest {
            image: Some(image),
            ..Default::default()
        };
        client.put(in_ns(ns, put)).await.unwrap();
    }
}

fn stream_request(ns: &str) -> tonic::Request<seed::ListRequest> {
    in_ns(ns, seed::ListRequest::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_streams_hold_little_are_bounded_and_never_hold_up_shutdown() {
    const STREAMS: usize = 4;
    const COUNT: u64 = 2000;
    const LABEL_BYTES: usize = 30_000;
    let mut daemon = Daemon::start_with(
        "info",
        &["--max-streams", &STREAMS.to_string(), "--shutdown-grace", "2"],
    );
    let mut client = daemon.seed().await;
    fill(&mut client, "big", COUNT, LABEL_BYTES).await;
    // One read of everything, so sled's cache is warm before measuring.
    let mut all = client.list_stream(stream_request("big")).await.unwrap().into_inner();
    let mut seen = 0;
    while let Some(batch) = all.next().await {
        seen += batch.unwrap().images.len();
    }
    assert_eq!(seen as u64, COUNT);
    let before = daemon.rss_kib();

    // Streams that are opened and never read, each on its own connection.
    let mut stalled = Vec::new();
    for _ in 0..STREAMS - 1 {
        let mut client = daemon.seed().await;
        stalled.push(client.list_stream(stream_request("big")).await.unwrap().into_inner());
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let held_mib = daemon.rss_kib().saturating_sub(before) / 1024;
    let payload_mib = (COUNT * LABEL_BYTES as u64) >> 20;
    println!(
        "{} stalled streams over {payload_mib} MiB each: RSS grew {held_mib} MiB",
        STREAMS - 1
    );
    // Each stalled stream holds its queued batches of at most 1 MiB, one in
    // the transport and one being read: a few MiB, whatever the payload.
    // (With 16 MiB batches this was three times the bound.)
    assert!(held_mib < 48, "stalled streams hold {held_mib} MiB");

    // One more stream fits; the next is refused by the bound, by name.
    let mut reader = daemon.seed().await;
    let mut reading = reader.list_stream(stream_request("big")).await.unwrap().into_inner();
    let refused = daemon
        .seed()
        .await
        .list_stream(stream_request("big"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("max_streams"), "{refused:?}");
    let first = reading.next().await.unwrap().unwrap();
    assert!(!first.images.is_empty());

    // A connection that never even says hello, and writes acknowledged
    // just before the signal.
    let idle = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    let mut acked = BTreeSet::new();
    for i in 0..20u64 {
        let name = format!("last{i}");
        client.put(in_ns("default", common::put(&name, i + 1))).await.unwrap();
        acked.insert(name);
    }

    // A client that goes on reading, slowly, through the shutdown.
    let reader = tokio::spawn(async move {
        while let Some(item) = reading.next().await {
            if let Err(status) = item {
                return Some(status);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        None
    });
    let status = tokio::task::block_in_place(|| daemon.terminate());
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(
        log.contains("shutdown grace period"),
        "the grace period did not end the wait:\n{log}"
    );
    // The client that reads learns why its stream ended, and where to resume.
    let ended = reader
        .await
        .unwrap()
        .expect("the reading stream ended without a status");
    assert!(
        ended.code() == Code::Unavailable && ended.message().contains("page_token"),
        "{ended:?}"
    );
    drop((idle, stalled));

    daemon.restart();
    let mut client = daemon.seed().await;
    assert_eq!(common::names(&mut client, "default").await, acked);
}
