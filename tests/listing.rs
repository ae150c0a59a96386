//! Listing at scale through the seed API of the real daemon: pages, orders,
//! tokens and their errors, comparisons, the digest index, ListStream's
//! batches, bounded memory and cancellation, and `imaged check`.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::{Daemon, IMAGED, descriptor, digest, in_ns, put};
use imaged_api::containerd::services::images::v1 as ctrd;
use imaged_api::containerd::v1 as seed;
use imaged_api::containerd::v1::images_client::ImagesClient;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

fn list(filters: &[&str], order_by: &str, page_size: u32, page_token: &str) -> seed::ListRequest {
    seed::ListRequest {
        filters: filters.iter().map(|s| s.to_string()).collect(),
        page_size,
        page_token: page_token.into(),
        order_by: order_by.into(),
    }
}

/// Walks every page; returns the names and the number of pages.
async fn walk(
    client: &mut ImagesClient<Channel>,
    ns: &str,
    filters: &[&str],
    order_by: &str,
    size: u32,
) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list(in_ns(ns, list(filters, order_by, size, &token)))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.images.len() <= size as usize);
        names.extend(page.images.into_iter().map(|i| i.name));
        if page.next_page_token.is_empty() {
            return (names, pages);
        }
        token = page.next_page_token;
    }
}

async fn stream(
    client: &mut ImagesClient<Channel>,
    ns: &str,
    filters: &[&str],
    order_by: &str,
    size: u32,
) -> Vec<Vec<String>> {
    let mut batches = Vec::new();
    let mut stream = client
        .list_stream(in_ns(ns, list(filters, order_by, size, "")))
        .await
        .unwrap()
        .into_inner();
    while let Some(batch) = stream.next().await {
        batches.push(batch.unwrap().images.into_iter().map(|i| i.name).collect());
    }
    batches
}

/// Creates 60 images with chosen creation seconds (ties) and sizes (ties)
/// through containerd's API; returns name → (created second, size).
async fn fill_varied(daemon: &Daemon, ns: &str) -> BTreeMap<String, (i64, i64)> {
    let mut images = daemon.images().await;
    let mut model = BTreeMap::new();
    for n in 0..60i64 {
        let name = format!(
            "{}/img-{:02}",
            ["docker.io/library", "quay.io/org", "ghcr.io/x"][(n % 3) as usize],
            n
        );
        let second = 1_700_000_000 + (n * 7) % 13;
        let size = 100 + (n * 5) % 9;
        let mut target = descriptor(n as u64 + 1);
        target.size = size;
        let request = ctrd::CreateImageRequest {
            image: Some(ctrd::Image {
                name: name.clone(),
                labels: [(
                    "parity".to_string(),
                    if n % 2 == 0 { "even" } else { "odd" }.to_string(),
                )]
                .into_iter()
                .collect(),
                target: Some(target),
                ..Default::default()
            }),
            source_date_epoch: Some(prost_types::Timestamp {
                seconds: second,
                nanos: 0,
            }),
        };
        images.create(in_ns(ns, request)).await.unwrap();
        model.insert(name, (second, size));
    }
    model
}

#[tokio::test]
async fn pages_and_streams_follow_every_order() {
    let daemon = Daemon::start();
    let model = fill_varied(&daemon, "walk").await;
    let mut client = daemon.seed().await;
    // An entry of the model and its sort key: two numbers, then the name
    // (reversed when the flag is set).
    type Entry<'a> = (&'a String, &'a (i64, i64));
    let sorted = |key: &dyn Fn(&Entry) -> (i64, i64, bool)| {
        let mut entries: Vec<_> = model.iter().collect();
        entries.sort_by(|a, b| {
            let (ka, kb) = (key(a), key(b));
            (ka.0, ka.1).cmp(&(kb.0, kb.1)).then_with(|| {
                let names = a.0.cmp(b.0);
                if ka.2 { names.reverse() } else { names }
            })
        });
        entries.into_iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    };
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("", sorted(&|_| (0, 0, false))),
        ("name desc", sorted(&|_| (0, 0, true))),
        ("created_at", sorted(&|(_, (c, _))| (*c, 0, false))),
        ("created_at desc, name", sorted(&|(_, (c, _))| (-*c, 0, false))),
        ("target.size desc", sorted(&|(_, (_, s))| (-*s, 0, false))),
        ("target.size, created_at desc", sorted(&|(_, (c, s))| (*s, -*c, false))),
    ];
    for (order, expected) in cases {
        let (names, pages) = walk(&mut client, "walk", &[], order, 7).await;
        assert_eq!(names, expected, "order {order:?}");
        assert_eq!(pages, 9, "60 images in pages of 7");
        let batches = stream(&mut client, "walk", &[], order, 25).await;
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [25, 25, 10]);
        assert_eq!(batches.concat(), expected, "stream, order {order:?}");
    }

    // Filters combine with pages and orders.
    let (names, _) = walk(
        &mut client,
        "walk",
        &["labels.parity==even,name~=^quay\\.io/"],
        "created_at",
        3,
    )
    .await;
    assert!(!names.is_empty() && names.iter().all(|n| n.starts_with("quay.io/")));
    let (all, _) = walk(&mut client, "walk", &[], "", 1000).await;
    assert_eq!(all.len(), 60);

    // page_size 0 keeps the seed's meaning: everything, in one answer.
    let whole = client
        .list(in_ns("walk", list(&[], "created_at", 0, "")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.images.len(), 60);
    assert!(whole.next_page_token.is_empty());
}

#[tokio::test]
async fn comparisons_and_the_digest_index() {
    let daemon = Daemon::start();
    let model = fill_varied(&daemon, "cmp").await;
    let mut client = daemon.seed().await;
    let count = |f: &dyn Fn(&(i64, i64)) -> bool| model.values().filter(|v| f(v)).count();

    let (big, _) = walk(&mut client, "cmp", &["target.size>=105"], "", 1000).await;
    assert_eq!(big.len(), count(&|(_, s)| *s >= 105));
    let (between, _) = walk(&mut client, "cmp", &["target.size>101,target.size<104"], "", 1000).await;
    assert_eq!(between.len(), count(&|(_, s)| *s > 101 && *s < 104));
    let (late, _) = walk(&mut client, "cmp", &["created_at>=2023-11-14T22:13:26Z"], "", 1000).await;
    assert_eq!(late.len(), count(&|(c, _)| *c >= 1_700_000_006));
    let (early, _) = walk(&mut client, "cmp", &["created_at<2023-11-15"], "", 1000).await;
    assert_eq!(early.len(), 60, "a bare date is midnight UTC, after every creation");
    let (none, _) = walk(&mut client, "cmp", &["updated_at<2023-11-14"], "", 1000).await;
    assert!(none.is_empty());

    // Which names point at a digest: retag two names onto one digest.
    client.put(in_ns("cmp", put("alias-a", 1))).await.unwrap();
    client.put(in_ns("cmp", put("alias-b", 1))).await.unwrap();
    let (names, _) = walk(
        &mut client,
        "cmp",
        &[&format!("target.digest=={}", digest(1))],
        "",
        1000,
    )
    .await;
    assert_eq!(names, ["alias-a", "alias-b", "docker.io/library/img-00"]);
    let (names, _) = walk(
        &mut client,
        "cmp",
        &[&format!("target.digest=={}", digest(1))],
        "name desc",
        2,
    )
    .await;
    assert_eq!(names, ["docker.io/library/img-00", "alias-b", "alias-a"]);
}

#[tokio::test]
async fn page_and_order_errors_name_their_field() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    for n in 0..5 {
        client.put(put(&format!("img-{n}"), n + 1)).await.unwrap();
    }
    let invalid = |r: Result<tonic::Response<seed::ListResponse>, tonic::Status>, field: &str, want: &str| {
        let err = r.map(|_| ()).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(field) && err.message().contains(want),
            "{}",
            err.message()
        );
    };
    invalid(client.list(list(&[], "", 1001, "")).await, "page_size", "at most 1000");
    invalid(
        client.list(list(&[], "size", 10, "")).await,
        "order_by",
        "unknown key \"size\"",
    );
    invalid(
        client.list(list(&[], "name sideways", 10, "")).await,
        "order_by",
        "not asc or desc",
    );
    invalid(
        client.list(list(&["name=="], "", 10, "")).await,
        "filters[0]",
        "position 6",
    );

    let first = client
        .list(list(&["name~=img"], "name", 2, ""))
        .await
        .unwrap()
        .into_inner();
    let token = first.next_page_token;
    assert!(!token.is_empty());
    client.list(list(&["name~=img"], "name", 3, &token)).await.unwrap();
    invalid(
        client.list(list(&["name~=im"], "name", 2, &token)).await,
        "page_token",
        "another query",
    );
    invalid(
        client.list(list(&["name~=img"], "name desc", 2, &token)).await,
        "page_token",
        "another query",
    );
    invalid(
        client
            .list(in_ns("other", list(&["name~=img"], "name", 2, &token)))
            .await,
        "page_token",
        "another query",
    );
    let mut tampered = token.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    invalid(
        client.list(list(&["name~=img"], "name", 2, &tampered)).await,
        "page_token",
        "altered",
    );
    invalid(
        client.list(list(&["name~=img"], "name", 2, "not a token")).await,
        "page_token",
        "altered",
    );
    invalid(
        client.list(list(&["name~=img"], "name", 0, &token)).await,
        "page_size",
        "must be set",
    );
    let err = client
        .list_stream(list(&[], "", 2000, ""))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .list_stream(list(&[], "", 10, "garbage"))
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(err.message().contains("page_token"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_survive_deleting_the_last_item_and_a_restart() {
    let mut daemon = Daemon::start();
    let mut client = daemon.seed().await;
    for n in 0..6 {
        client.put(put(&format!("img-{n}"), n + 1)).await.unwrap();
    }
    let page = client.list(list(&[], "", 2, "")).await.unwrap().into_inner();
    assert_eq!(
        page.images.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["img-0", "img-1"]
    );
    client
        .delete(seed::DeleteRequest {
            name: "img-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let next = client
        .list(list(&[], "", 2, &page.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        next.images.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["img-2", "img-3"]
    );

    // The token's key lives in the store: tokens outlive the daemon.
    tokio::task::block_in_place(|| assert!(daemon.terminate().success()));
    daemon.restart();
    let mut client = daemon.seed().await;
    let after = client
        .list(list(&[], "", 10, &next.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        after.images.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["img-4", "img-5"]
    );
}

#[tokio::test]
async fn seed_put_labels_replace_when_given_and_are_kept_otherwise() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    let mut image = common::image("x", 1);
    image.labels.insert("a".into(), "1".into());
    client
        .put(seed::PutRequest {
            image: Some(image),
            ..Default::default()
        })
        .await
        .unwrap();
    client.put(put("x", 2)).await.unwrap();
    let got = client
        .get(seed::GetRequest { name: "x".into() })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(
        got.labels.get("a").map(String::as_str),
        Some("1"),
        "a put without labels keeps them"
    );
    let mut image = common::image("x", 3);
    image.labels.insert("b".into(), "2".into());
    client
        .put(seed::PutRequest {
            image: Some(image),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = client
        .get(seed::GetRequest { name: "x".into() })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(
        got.labels.keys().collect::<Vec<_>>(),
        ["b"],
        "a put with labels replaces them"
    );
    let (created, updated) = (got.created_at.unwrap(), got.updated_at.unwrap());
    assert!((updated.seconds, updated.nanos) > (created.seconds, created.nanos));
}

/// Fills `count` images with `label_bytes` of labels each, from 32 tasks.
async fn fill(daemon: &Daemon, ns: &str, count: u64, label_bytes: usize) {
    let channel = daemon.channel().await;
    let mut tasks = Vec::new();
    for w in 0..32u64 {
        let mut client = ImagesClient::new(channel.clone());
        let ns = ns.to_string();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < count {
                let mut image = common::image(&format!("fill/{i:07}"), i + 1);
                if label_bytes > 0 {
                    image.labels.insert("payload".into(), "x".repeat(label_bytes));
                }
                client
                    .put(in_ns(
                        &ns,
                        seed::PutRequest {
                            image: Some(image),
                            ..Default::default()
                        },
                    ))
                    .await
                    .unwrap();
                i += 32;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_over_a_large_namespace_keeps_memory_bounded() {
    const COUNT: u64 = 40_000;
    const LABEL_BYTES: usize = 4_000;
    let daemon = Daemon::start();
    fill(&daemon, "big", COUNT, LABEL_BYTES).await;
    let filled = daemon.rss_kib();
    // Reading everything once fills sled's page cache; what the stream itself
    // holds is measured after that.
    let mut client = daemon.seed().await;
    let (names, _) = walk(&mut client, "big", &[], "", 1000).await;
    assert_eq!(names.len() as u64, COUNT);
    let before = daemon.rss_kib();
    println!("RSS after fill {filled} KiB, after a paged walk {before} KiB");

    // A slow client: the stream must wait for it rather than buffer.
    let mut client = daemon.seed().await;
    let mut stream = client
        .list_stream(in_ns("big", list(&[], "", 0, "")))
        .await
        .unwrap()
        .into_inner();
    let mut total = 0u64;
    let mut peak = before;
    let mut last = String::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.unwrap();
        assert!(batch.images.len() <= 1000);
        for image in &batch.images {
            assert!(image.name > last, "out of order at {}", image.name);
            last = image.name.clone();
        }
        total += batch.images.len() as u64;
        if total.is_multiple_of(5000) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            peak = peak.max(daemon.rss_kib());
        }
    }
    assert_eq!(total, COUNT);
    let payload_mib = COUNT * LABEL_BYTES as u64 / (1 << 20);
    let growth_mib = peak.saturating_sub(before) / 1024;
    println!("streamed {total} images (~{payload_mib} MiB of labels): RSS {before} KiB before, peak {peak} KiB");
    // A stream that held the whole result would grow by more than the
    // payload (the labels alone, then their wire copies). One that follows
    // the client holds a batch or two (about 4 MiB each here), plus sled's
    // cache and allocator slack, which do not grow with the payload: measured
    // at 14 to 25 MiB with half this payload. The payload is large so that
    // the two cases stay far apart.
    assert!(
        growth_mib < payload_mib / 2,
        "daemon grew by {growth_mib} MiB while streaming {payload_mib} MiB: the stream is buffering"
    );
}

#[tokio::test]
async fn a_cancelled_stream_stops_the_servers_work() {
    let daemon = Daemon::start_logging("info,imaged=debug");
    fill(&daemon, "cancel", 3000, 0).await;
    let mut client = daemon.seed().await;
    let mut stream = client
        .list_stream(in_ns("cancel", list(&[], "", 10, "")))
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = daemon.log_text();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("ListStream stopped: the client went away"))
        {
            let batches: u64 = line
                .split("batches=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
                .expect(line);
            // HTTP/2 flow control lets the server run ahead of the client
            // by one stream window (64 KiB, about 20 of these 3 KiB batches)
            // plus its channel; a server that ignored the cancellation would
            // produce all 300.
            assert!(
                batches < 50,
                "{batches} of 300 batches were produced after the client left: {line}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the stream did not stop:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imaged_check_verifies_indexes_against_records() {
    let mut daemon = Daemon::start();
    fill_varied(&daemon, "chk").await;
    let mut client = daemon.seed().await;
    for n in 0..10 {
        client
            .delete(in_ns(
                "chk",
                seed::DeleteRequest {
                    name: format!("docker.io/library/img-{:02}", n * 3),
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
    }

    // The data directory is locked while the daemon runs.
    let out = Command::new(&*IMAGED)
        .args(["check", "--root"])
        .arg(&daemon.root)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another imaged"));

    tokio::task::block_in_place(|| assert!(daemon.terminate().success()));
    let out = Command::new(&*IMAGED)
        .args(["check", "--root"])
        .arg(&daemon.root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        // Five index entries per image, and each image is a repository
        // of its own.
        stdout.contains("checked 50 images, 300 index entries, 1 namespace in"),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
}

/// A List's images, each as (the order's time in nanoseconds, name).
fn timed(images: &[seed::Image], by_updated: bool) -> Vec<(i128, String)> {
    images
        .iter()
        .map(|i| {
            let t = if by_updated { &i.updated_at } else { &i.created_at };
            let t = t.as_ref().expect("a time");
            (t.seconds as i128 * 1_000_000_000 + t.nanos as i128, i.name.clone())
        })
        .collect()
}

/// What is wrong with `items` as an answer in that order, if anything: a
/// pair out of order, or (where asked) a name shown twice.
fn misordered(items: &[(i128, String)], desc: bool, distinct: bool) -> Option<String> {
    let out_of_order = items
        .windows(2)
        .find(|w| if desc { w[0] <= w[1] } else { w[0] >= w[1] });
    if let Some(w) = out_of_order {
        return Some(format!("{:?} before {:?}", w[0], w[1]));
    }
    let mut names: Vec<&String> = items.iter().map(|(_, n)| n).collect();
    names.sort();
    let twice = names.windows(2).find(|w| w[0] == w[1]);
    (distinct && twice.is_some()).then(|| format!("{} twice", twice.unwrap()[0]))
}

/// Images deleted and made again under Lists ordered by their times: every
/// answer is in order and shows a name once, and a paged walk keeps its
/// order across pages. An index walk once showed a re-created image at its
/// old place, read before the record changed under it (issue 33).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lists_by_time_stay_in_order_while_images_are_made_again() {
    let daemon = Daemon::start();
    let channel = daemon.channel().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for lane in 0..8u64 {
        let mut client = ImagesClient::new(channel.clone());
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = common::writers::Rng(0x9e37_79b9_7f4a_7c15 ^ (lane + 1));
            let mut writes = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = rng.next();
                let name = format!("re/{}", r % 12);
                if r & 0x100 == 0 {
                    let request = seed::DeleteRequest {
                        name,
                        ..Default::default()
                    };
                    if let Err(status) = client.delete(in_ns("default", request)).await {
                        assert_eq!(status.code(), Code::NotFound, "{status:?}");
                    }
                } else {
                    client.put(in_ns("default", put(&name, 1 + r % 100_000))).await.unwrap();
                }
                writes += 1;
            }
            writes
        }));
    }
    let mut client = ImagesClient::new(channel);
    let mut answers = 0u64;
    let mut wrong = Vec::new();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(10) && wrong.len() < 5 {
        for (order_by, desc, by_updated) in [
            ("created_at", false, false),
            ("created_at desc", true, false),
            ("updated_at", false, true),
        ] {
            let page = client
                .list(in_ns("default", list(&[], order_by, 0, "")))
                .await
                .unwrap()
                .into_inner();
            answers += 1;
            // An image updated during the answer may be met at both its
            // places by updated_at: only a created_at answer is distinct.
            if let Some(why) = misordered(&timed(&page.images, by_updated), desc, !by_updated) {
                wrong.push(format!("List({order_by}): {why}"));
            }
        }
        // A walk in pages of 3: in order across its pages. (An image made
        // again between two pages is a new image, and may be met again.)
        let mut walked = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list(in_ns("default", list(&[], "created_at", 3, &token)))
                .await
                .unwrap()
                .into_inner();
            answers += 1;
            walked.extend(timed(&page.images, false));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        if let Some(why) = misordered(&walked, false, false) {
            wrong.push(format!("a walk by created_at: {why}"));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut writes = 0;
    for writer in writers {
        writes += writer.await.unwrap();
    }
    println!("{answers} answers, {writes} writes");
    assert!(writes > 1000, "too few writes to prove anything ({writes})");
    assert!(
        wrong.is_empty(),
        "{} of {answers} answers wrong: {wrong:#?}",
        wrong.len()
    );
}
