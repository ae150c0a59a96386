//! Repositories end to end through the real daemon: ListRepositories on
//! the seed API and the client, a List of one repository, pages that stay
//! exact while tags come and go, and records that survive kill -9, a
//! restore and `imaged check`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Daemon, digest, imaged_check, in_ns, put};
use futures_util::TryStreamExt;
use imaged_api::containerd::v1 as seed;
use tonic::Code;

type Seed = seed::images_client::ImagesClient<tonic::transport::Channel>;

fn request(filters: &[&str], page_size: u32, page_token: &str, order_by: &str) -> seed::ListRepositoriesRequest {
    seed::ListRepositoriesRequest {
        filters: filters.iter().map(|f| f.to_string()).collect(),
        page_size,
        page_token: page_token.into(),
        order_by: order_by.into(),
    }
}

/// Every repository of `ns` in pages of `page_size`: (name, tags, newest).
async fn walk(client: &mut Seed, ns: &str, page_size: u32, order_by: &str) -> Vec<(String, u64, String)> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_repositories(in_ns(ns, request(&[], page_size, &token, order_by)))
            .await
            .unwrap()
            .into_inner();
        // 0 asks for the largest page, 1000.
        assert!(page.repositories.len() <= if page_size == 0 { 1000 } else { page_size as usize });
        all.extend(page.repositories.into_iter().map(|r| (r.name, r.tags, r.newest)));
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

fn row(name: &str, tags: u64, newest: &str) -> (String, u64, String) {
    (name.into(), tags, newest.into())
}

#[tokio::test]
async fn repositories_count_their_images_and_name_the_newest() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    let pinned = format!("docker.io/library/alpine@{}", digest(9));
    for name in [
        "redis:6",
        "redis:7",
        "docker.io/library/alpine:3",
        &pinned,
        "localhost:5000/app:1",
    ] {
        client.put(put(name, 1)).await.unwrap();
    }
    client.put(in_ns("other", put("redis:1", 1))).await.unwrap();
    let expected = vec![
        row("docker.io/library/alpine", 2, &pinned),
        row("localhost:5000/app", 1, "localhost:5000/app:1"),
        row("redis", 2, "redis:7"),
    ];
    assert_eq!(walk(&mut client, "default", 0, "").await, expected);
    assert_eq!(walk(&mut client, "default", 1, "").await, expected);
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(walk(&mut client, "default", 2, "name desc").await, reversed);
    assert_eq!(
        walk(&mut client, "other", 10, "").await,
        vec![row("redis", 1, "redis:1")]
    );

    let page = client
        .list_repositories(request(&["tags>=2,name~=^redis"], 10, "", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.repositories.len(), 1);
    let redis = &page.repositories[0];
    assert_eq!((redis.name.as_str(), redis.tags), ("redis", 2));
    assert!(redis.mod_revision >= 2 && page.revision >= redis.mod_revision);
    assert!(redis.updated_at.is_some() && redis.newest_updated_at.is_some());

    // Bad input names the field and the value.
    for (bad, field, value) in [
        (request(&["tags>many"], 10, "", ""), "filters", "many"),
        (request(&["labels.a"], 10, "", ""), "filters", "labels.a"),
        (request(&[], 1001, "", ""), "page_size", "1001"),
        (request(&[], 10, "", "tags desc"), "order_by", "tags desc"),
        (request(&[], 10, "bogus", ""), "page_token", "bogus"),
    ] {
        let status = client.list_repositories(bad).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(field) && status.message().contains(value),
            "{status:?}"
        );
    }
    // A token of one query does not resume another.
    let first = client
        .list_repositories(request(&[], 1, "", ""))
        .await
        .unwrap()
        .into_inner();
    let status = client
        .list_repositories(request(&[], 1, &first.next_page_token, "name desc"))
        .await
        .expect_err("a token of another order");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // The client reads the same, and lists one repository's images.
    let images = imaged_client::Client::connect(&daemon.socket)
        .unwrap()
        .namespace("default")
        .unwrap();
    let all: Vec<imaged_client::Repository> = images.repositories().page_size(1).all().try_collect().await.unwrap();
    let seen: Vec<_> = all.iter().map(|r| (r.name.clone(), r.tags, r.newest.clone())).collect();
    assert_eq!(seen, expected);
    let alpine: Vec<String> = images
        .list()
        .repository("docker.io/library/alpine")
        .all()
        .map_ok(|i| i.name)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(alpine, ["docker.io/library/alpine:3".to_string(), pinned.clone()]);
    let page = images
        .list()
        .repository("redis")
        .filter("name~=6")
        .page()
        .await
        .unwrap();
    assert_eq!(page.images.len(), 1);
    assert_eq!(page.images[0].name, "redis:6");
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_of_repositories_stay_exact_while_tags_come_and_go() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    let stable: Vec<String> = (0..40).map(|i| format!("app-{i:02}")).collect();
    for name in &stable {
        client.put(put(&format!("{name}:base"), 1)).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let (mut client, stop) = (daemon.seed().await, stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                // Tags of the stable repositories come and go, and whole
                // repositories between them are made and removed.
                let tag = format!("app-{:02}:t{}", i % 40, i % 7);
                let passing = format!("app-{:02}x:1", i % 40);
                if i % 2 == 0 {
                    client.put(put(&tag, i)).await.unwrap();
                    client.put(put(&passing, i)).await.unwrap();
                } else {
                    let _ = client
                        .delete(seed::DeleteRequest {
                            name: tag,
                            ..Default::default()
                        })
                        .await;
                    let _ = client
                        .delete(seed::DeleteRequest {
                            name: passing,
                            ..Default::default()
                        })
                        .await;
                }
                i += 3;
            }
        }));
    }
    for (walk_number, order) in ["", "name desc"].iter().cycle().take(24).enumerate() {
        let page_size = 3 + walk_number as u32 % 5;
        let walked = walk(&mut client, "default", page_size, order).await;
        let names: Vec<&str> = walked.iter().map(|(n, _, _)| n.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        if order.contains("desc") {
            sorted.reverse();
        }
        assert_eq!(names, sorted, "walk {walk_number}: out of order or twice");
        let seen: Vec<&str> = names.iter().copied().filter(|n| !n.ends_with('x')).collect();
        assert_eq!(seen.len(), stable.len(), "walk {walk_number}: {names:?}");
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    // Quiet now: every count is exactly the repository's images.
    let listed = client.list(seed::ListRequest::default()).await.unwrap().into_inner();
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for image in &listed.images {
        *counted
            .entry(imaged_client::repository_of(&image.name).to_owned())
            .or_default() += 1;
    }
    let walked: BTreeMap<String, u64> = walk(&mut client, "default", 1000, "")
        .await
        .into_iter()
        .map(|(name, tags, _)| (name, tags))
        .collect();
    assert_eq!(walked, counted);
}

#[tokio::test(flavor = "multi_thread")]
async fn repositories_survive_kill_9_and_a_restore_and_pass_the_check() {
    let mut daemon = Daemon::start();
    let mut client = daemon.seed().await;
    for i in 0..30u64 {
        client.put(put(&format!("team-{}/app:{i}", i % 4), i)).await.unwrap();
    }
    client
        .delete(seed::DeleteRequest {
            name: "team-1/app:29".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let before = walk(&mut client, "default", 2, "").await;
    assert_eq!(before[1], row("team-1/app", 7, "team-1/app:25"));

    tokio::task::block_in_place(|| daemon.kill());
    tokio::task::block_in_place(|| daemon.restart());
    let mut client = daemon.seed().await;
    assert_eq!(walk(&mut client, "default", 3, "").await, before, "after kill -9");

    let file = daemon.root.parent().unwrap().join("backup");
    let backup = imaged_client::Client::connect(&daemon.socket).unwrap();
    let mut bytes = Vec::new();
    backup.backup(&mut bytes).await.unwrap();
    std::fs::write(&file, bytes).unwrap();
    for i in 0..4u64 {
        client.put(put(&format!("later-{i}:1"), i)).await.unwrap();
    }
    tokio::task::block_in_place(|| assert!(daemon.terminate().success()));
    common::restore_forced(&daemon.root, &file);
    let report = imaged_check(&daemon.root);
    assert!(report.contains("ok"), "{report}");
    tokio::task::block_in_place(|| daemon.restart());
    let mut client = daemon.seed().await;
    assert_eq!(
        walk(&mut client, "default", 1000, "").await,
        before,
        "after the restore"
    );
}
