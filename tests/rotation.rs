//! Rotation of sled, end to end through the real binaries: `imagectl
//! compact` gives the disk back and keeps every image; a SIGKILL inside
//! every window of a rotation (the copy, the built copy before its swap,
//! the pointer's switch, the old directory's removal) loses no acknowledged
//! write and leaves one sled; a rotation short of space is abandoned and
//! serving goes on. Power cuts in the same windows are in `power_loss.rs`;
//! that compaction needs admin, in `access.rs`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::writers::{Model, Rng};
use common::{Daemon, imagectl, in_ns, output_text, put};
use imaged_api::containerd::v1 as seed;

/// Writes `count` images named `{prefix}{i}` through the seed API, 16 at a
/// time, each with a 2 KB label so that the store is worth compacting.
async fn put_padded(daemon: &Daemon, prefix: &str, count: u64, seed_of: impl Fn(u64) -> u64) {
    let channel = daemon.channel().await;
    let mut tasks = Vec::new();
    for lane in 0..16 {
        let channel = channel.clone();
        let seeds: Vec<(String, u64)> = (0..count)
            .filter(|i| i % 16 == lane)
            .map(|i| (format!("{prefix}{i}"), seed_of(i)))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut client = seed::images_client::ImagesClient::new(channel);
            for (name, s) in seeds {
                let mut request = put(&name, s);
                let image = request.image.as_mut().unwrap();
                image.labels.insert("pad".into(), "x".repeat(2048));
                client.put(in_ns("default", request)).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Every image of `default`: name → digest.
async fn digests(daemon: &Daemon) -> BTreeMap<String, String> {
    let mut client = daemon.seed().await;
    client
        .list(in_ns("default", seed::ListRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .images
        .into_iter()
        .map(|i| (i.name, i.target.unwrap().digest))
        .collect()
}

/// The sled directories of data directory `root`, sorted.
fn generations(root: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n == "sled" || n.starts_with("sled."))
        .collect();
    found.sort();
    found
}

/// Waits until only one sled directory is left (the old one's removal runs
/// after the swap, on a thread of its own); returns it.
fn one_generation(root: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = generations(root);
        if found.len() == 1 {
            return found[0].clone();
        }
        assert!(Instant::now() < deadline, "sled directories left: {found:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A number in `imagectl compact`'s table.
fn field(table: &str, name: &str) -> u64 {
    let line = table
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {table}"));
    line[name.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{name} in {table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compact_gives_the_disk_back_and_keeps_every_image() {
    // Rotations only when asked: the test compares before and after one.
    // The change log keeps little, so the deleted images leave nothing live.
    let mut daemon = Daemon::start_with(
        "info",
        &[
            "--rotate-after-percent",
            "0",
            "--keep-changes",
            "10",
            "--keep-changes-for",
            "0",
        ],
    );
    put_padded(&daemon, "img", 3000, |i| i).await;
    // 90% deleted, the rest rewritten twice: what churn leaves behind.
    let mut client = daemon.seed().await;
    for i in (0..3000).filter(|i| i % 10 != 0) {
        let request = seed::DeleteRequest {
            name: format!("img{i}"),
            ..Default::default()
        };
        client.delete(in_ns("default", request)).await.unwrap();
    }
    for round in 1..=2 {
        put_padded(&daemon, "img", 300, |i| i * 10 + round * 100_000).await;
    }
    // Left: the 300 survivors (img0, img10, …) and img0…img299 rewritten,
    // 30 of which are survivors.
    let before_compact = digests(&daemon).await;
    assert_eq!(before_compact.len(), 3000 - 2700 + 270, "{}", before_compact.len());

    wait_for_compaction(&daemon).await;
    let out = tokio::task::block_in_place(|| imagectl(&daemon, &["compact"]));
    let table = output_text(&out);
    assert!(out.status.success(), "{table}");
    let (before, after) = (field(&table, "bytes before"), field(&table, "bytes after"));
    println!("{table}");
    assert!(after < before, "compacting gave nothing back: {before} → {after}");
    assert!(field(&table, "entries copied") > 570, "{table}");
    assert_eq!(one_generation(&daemon.root), "sled.1");
    assert_eq!(std::fs::read_to_string(daemon.root.join("ENGINE")).unwrap(), "sled.1\n");
    assert_eq!(
        digests(&daemon).await,
        before_compact,
        "the images changed in the rotation"
    );

    let status = output_text(&tokio::task::block_in_place(|| {
        imagectl(&daemon, &["status", "-o", "json"])
    }));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["rotations"], 1, "{status}");
    assert_eq!(status["rotating"], false, "{status}");
    assert!(status["engine_bytes"].as_u64().unwrap() <= after * 2, "{status}");

    // Writes go on into the new sled, and everything survives a SIGKILL.
    put_padded(&daemon, "after", 50, |i| 7_000_000 + i).await;
    let expected = digests(&daemon).await;
    tokio::task::block_in_place(|| daemon.kill());
    tokio::task::block_in_place(|| common::imaged_check(&daemon.root));
    daemon.restart();
    assert_eq!(digests(&daemon).await, expected);

    // Compacting again builds the next generation and removes this one.
    let out = tokio::task::block_in_place(|| imagectl(&daemon, &["compact", "-o", "json"]));
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(one_generation(&daemon.root), "sled.2");
    assert_eq!(digests(&daemon).await, expected);
}

/// Waits until the change log's compactor has removed what its retention
/// no longer keeps.
async fn wait_for_compaction(daemon: &Daemon) {
    let client = imaged_client::Client::connect(&daemon.socket).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client.status().await.unwrap();
        if status.compacted_revision + 20 >= status.revision {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the change log was not compacted: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Kill windows, in turn: an arbitrary moment while rotations run, then
/// each window of a rotation held open by `IMAGED_TEST_STALL`.
const WINDOWS: [&str; 5] = [
    "any",
    "rotation-copy",
    "rotation-built",
    "rotation-switch",
    "rotation-removal",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kills_in_every_window_of_a_rotation_lose_nothing() {
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    // A rotation after every MiB journaled: several a cycle.
    let mut daemon = Daemon::start_with("info", &common::ROTATING_OFTEN);
    let mut model = Model::default();
    let mut held: BTreeMap<&str, usize> = BTreeMap::new();
    let mut rotated = 0;
    for cycle in 0..2 * WINDOWS.len() {
        let window = WINDOWS[cycle % WINDOWS.len()];
        println!("cycle {cycle}: kill at {window}");
        let round = model.start(&daemon.channel().await, &mut rng);
        tokio::time::sleep(Duration::from_millis(150 + rng.next() % 600)).await;
        if window != "any" && daemon.wait_for_stall(Duration::from_secs(30)).await {
            *held.entry(window).or_default() += 1;
        }
        tokio::task::block_in_place(|| daemon.kill());
        for line in daemon
            .log_text()
            .lines()
            .filter(|l| l.contains("rotat") || l.contains("stalling"))
        {
            println!("  {}", line.split_once(" imaged").map_or(line, |(_, rest)| rest));
        }
        rotated += daemon.log_text().matches("rotated sled").count();
        model.finish(round).await;
        tokio::task::block_in_place(|| common::imaged_check(&daemon.root));
        let next = WINDOWS[(cycle + 1) % WINDOWS.len()];
        daemon.env = match next {
            "any" => Vec::new(),
            point => vec![("IMAGED_TEST_STALL".into(), format!("{point}:1000"))],
        };
        daemon.restart();
        // The start removed whichever generation the kill left unused.
        assert_eq!(
            generations(&daemon.root).len(),
            1,
            "cycle {cycle}: {:?}",
            generations(&daemon.root)
        );
        model.verify(&daemon, &format!("cycle {cycle} (seed {seed})")).await;
    }
    println!(
        "kills inside held windows: {held:?}; {rotated} rotations swapped in; {} writes",
        model.acked
    );
    for window in &WINDOWS[1..] {
        assert!(
            held.get(window).copied().unwrap_or(0) > 0,
            "no kill landed at {window}: {held:?}"
        );
    }
    assert!(rotated > 0, "no rotation was swapped in: the kills proved nothing");
    assert!(model.acked > 100, "too few acknowledged writes ({})", model.acked);
    tokio::task::block_in_place(|| assert!(daemon.terminate().success()));
    common::imaged_check(&daemon.root);
}
