//! The seed API's Watch against the real daemon: revisions on images and
//! lists, list-then-watch with no gap, replay then live with no duplicate,
//! filters typed as ADDED / MODIFIED / DELETED, compaction and OUT_OF_RANGE,
//! progress notices, batching under a stream of commits, the bounds on
//! watchers and on a stalled one, a model
//! test of writers on both image APIs and resuming watchers, and a kill -9
//! under watchers.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Daemon, descriptor, in_ns, put};
use futures_util::TryStreamExt;
use imaged_api::containerd::services::images::v1 as ctrd;
use imaged_api::containerd::v1 as seed;
use imaged_api::containerd::v1::watch_event::Type;
use tonic::Code;
use tonic::transport::Channel;

type Seed = seed::images_client::ImagesClient<Channel>;

fn labelled(name: &str, n: u64, team: &str) -> seed::PutRequest {
    let mut request = put(name, n);
    request
        .image
        .as_mut()
        .unwrap()
        .labels
        .insert("team".into(), team.into());
    request
}

fn watch_request(filters: &[&str], start: Option<u64>) -> seed::WatchRequest {
    seed::WatchRequest {
        filters: filters.iter().map(|f| f.to_string()).collect(),
        start_revision: start,
        prev_image: true,
        progress_interval: None,
    }
}

/// Reads answers until `count` events have come; returns them.
async fn events(stream: &mut tonic::Streaming<seed::WatchResponse>, count: usize) -> Vec<seed::WatchEvent> {
    let mut got = Vec::new();
    while got.len() < count {
        let answer = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("a watch answer within 20 s")
            .unwrap()
            .expect("the watch goes on");
        assert!(answer.events.iter().all(|e| e.revision <= answer.revision));
        got.extend(answer.events);
    }
    assert_eq!(got.len(), count, "more events than expected: {got:?}");
    got
}

fn kinds(events: &[seed::WatchEvent]) -> Vec<(Type, String)> {
    events
        .iter()
        .map(|e| {
            (
                Type::try_from(e.r#type).unwrap(),
                e.image.as_ref().unwrap().name.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_then_watch_misses_nothing_and_filters_type_the_events() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    for (name, team) in [("a", "x"), ("b", "y")] {
        client.put(labelled(name, 1, team)).await.unwrap();
    }
    // Images carry their revisions; a list carries the revision it read.
    let listed = client.list(seed::ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.revision, 2);
    let a = &listed.images[0];
    assert_eq!((a.create_revision, a.mod_revision), (1, 1));
    client.put(labelled("a", 2, "x")).await.unwrap();
    let got = client
        .get(seed::GetRequest { name: "a".into() })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!((got.create_revision, got.mod_revision), (1, 3));

    // Watches from the list's revision: the put above comes first.
    let mut all = client
        .watch(watch_request(&[], Some(listed.revision)))
        .await
        .unwrap()
        .into_inner();
    let mut team_x = client
        .watch(watch_request(&["labels.team==x"], Some(listed.revision)))
        .await
        .unwrap()
        .into_inner();
    client.put(labelled("b", 3, "x")).await.unwrap(); // b moves into team x
    client.put(labelled("a", 4, "y")).await.unwrap(); // a moves out
    client
        .delete(seed::DeleteRequest {
            name: "b".into(),
            precondition: None,
        })
        .await
        .unwrap();
    let seen = events(&mut all, 4).await;
    assert_eq!(
        kinds(&seen),
        [
            (Type::Modified, "a".to_string()),
            (Type::Modified, "b".to_string()),
            (Type::Modified, "a".to_string()),
            (Type::Deleted, "b".to_string())
        ]
    );
    assert_eq!(seen.iter().map(|e| e.revision).collect::<Vec<_>>(), [3, 4, 5, 6]);
    // The delete shows the image as it was, and asked-for previous images
    // come with every change to an existing one.
    assert_eq!(seen[3].image.as_ref().unwrap().mod_revision, 4);
    assert_eq!(seen[1].prev_image.as_ref().unwrap().labels["team"], "y");
    let seen = events(&mut team_x, 4).await;
    assert_eq!(
        kinds(&seen),
        [
            (Type::Modified, "a".to_string()),
            (Type::Added, "b".to_string()),
            (Type::Deleted, "a".to_string()),
            (Type::Deleted, "b".to_string())
        ]
    );
    // What stopped matching is shown as it last matched.
    assert_eq!(seen[2].image.as_ref().unwrap().labels["team"], "x");

    // Another namespace's changes never reach this one's watchers.
    client.put(in_ns("other", put("c", 5))).await.unwrap();
    client.put(labelled("d", 6, "x")).await.unwrap();
    assert_eq!(kinds(&events(&mut all, 1).await), [(Type::Added, "d".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_the_past_replays_then_goes_live_with_no_gap_or_duplicate() {
    // A small window, so the replay reads the change log and then the
    // window while writers go on.
    let daemon = Daemon::start_with("info", &["--watch-window-events", "64"]);
    let mut client = daemon.seed().await;
    for n in 0..500u64 {
        client.put(put(&format!("img{n:04}"), n)).await.unwrap();
    }
    let mut watch = client.watch(watch_request(&[], Some(0))).await.unwrap().into_inner();
    let writer = {
        let mut client = client.clone();
        tokio::spawn(async move {
            for n in 500..1000u64 {
                client.put(put(&format!("img{n:04}"), n)).await.unwrap();
            }
        })
    };
    let seen = events(&mut watch, 1000).await;
    writer.await.unwrap();
    let revisions: Vec<u64> = seen.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, (1..=1000).collect::<Vec<_>>());
    assert!(seen.iter().all(|e| e.r#type == Type::Added as i32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_refuses_old_revisions_naming_the_oldest_kept() {
    let daemon = Daemon::start_with("info", &["--keep-changes", "10", "--keep-changes-for", "0"]);
    let mut client = daemon.seed().await;
    for n in 0..50u64 {
        client.put(put(&format!("img{n}"), n)).await.unwrap();
    }
    // The compactor runs in the background, once a second at most.
    let started = Instant::now();
    let status = loop {
        match client.watch(watch_request(&[], Some(5))).await {
            Err(status) => break status,
            Ok(_) if started.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(_) => panic!("the change log was not compacted within 20 s"),
        }
    };
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("revision 5 is compacted"),
        "{}",
        status.message()
    );
    let oldest: u64 = status
        .metadata()
        .get("imaged-compacted-revision")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(oldest, 40, "{}", status.message());
    assert!(status.message().contains("after revision 40"), "{}", status.message());
    // From the oldest kept, every retained change comes, in order.
    let mut watch = client
        .watch(watch_request(&[], Some(oldest)))
        .await
        .unwrap()
        .into_inner();
    let seen = events(&mut watch, 10).await;
    assert_eq!(
        seen.iter().map(|e| e.revision).collect::<Vec<_>>(),
        (41..=50).collect::<Vec<_>>()
    );
    // A revision ahead of the store is refused too.
    let ahead = client.watch(watch_request(&[], Some(51))).await.unwrap_err();
    assert_eq!(ahead.code(), Code::OutOfRange);
    assert!(
        ahead.message().contains("ahead of the store's revision 50"),
        "{ahead:?}"
    );
    // And so is a progress interval too short to be a notice.
    let mut request = watch_request(&[], None);
    request.progress_interval = Some(prost_types::Duration {
        seconds: 0,
        nanos: 1000,
    });
    let short = client.watch(request).await.unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument);
    assert!(short.message().contains("progress_interval"), "{short:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_watcher_gets_progress_notices_with_the_revision() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    let mut request = watch_request(&["name==never"], None);
    request.progress_interval = Some(prost_types::Duration {
        seconds: 0,
        nanos: 200_000_000,
    });
    let mut watch = client.watch(request).await.unwrap().into_inner();
    for n in 0..3u64 {
        client.put(put(&format!("img{n}"), n)).await.unwrap();
    }
    // Nothing concerns the watcher; the notices tell it how far it has seen.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = watch.message().await.unwrap().unwrap();
        assert!(answer.events.is_empty(), "{answer:?}");
        if answer.revision == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "no notice reached revision 3");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_within_the_batching_interval_reach_a_caught_up_watcher_in_one_answer() {
    // Long enough that three sequential durable puts land well inside it on
    // a loaded machine.
    let daemon = Daemon::start_with("info", &["--watch-batch-ms", "1000"]);
    let mut client = daemon.seed().await;
    let mut watch = client.watch(watch_request(&[], None)).await.unwrap().into_inner();
    client.put(put("first", 1)).await.unwrap();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(kinds(&first.events), [(Type::Added, "first".to_string())]);
    for n in 2..5u64 {
        client.put(put(&format!("img{n}"), n)).await.unwrap();
    }
    // Three commits, each of its own revision, in one answer.
    let answer = watch.message().await.unwrap().unwrap();
    let revisions: Vec<u64> = answer.events.iter().map(|e| e.revision).collect();
    assert_eq!(revisions, [2, 3, 4], "{answer:?}");
    assert_eq!(answer.revision, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_past_the_bound_are_refused_and_the_others_go_on() {
    let daemon = Daemon::start_with("info", &["--max-watchers", "2"]);
    let mut client = daemon.seed().await;
    let mut first = client.watch(watch_request(&[], None)).await.unwrap().into_inner();
    let _second = client.watch(watch_request(&[], None)).await.unwrap().into_inner();
    let third = client.watch(watch_request(&[], None)).await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    assert!(third.message().contains("max_watchers"), "{}", third.message());
    client.put(put("a", 1)).await.unwrap();
    assert_eq!(kinds(&events(&mut first, 1).await), [(Type::Added, "a".to_string())]);
    // A watcher that goes away frees its place.
    drop(first);
    let started = Instant::now();
    while client.watch(watch_request(&[], None)).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "the place was not freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates `count` images from `from` on, at concurrency 16, each with a
/// 2 KiB label (so that the events outgrow what the transport buffers), and
/// returns the creates per second.
async fn write_rate(client: &Seed, from: u64, count: u64) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            for n in (from + worker..from + count).step_by(16) {
                let mut request = put(&format!("img{n:06}"), n);
                let image = request.image.as_mut().unwrap();
                image.labels.insert("pad".into(), "x".repeat(2048));
                client.put(request).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_is_ended_with_its_last_revision_and_writers_do_not_wait() {
    let daemon = Daemon::start_with("info", &["--watch-window-events", "100"]);
    let client = daemon.seed().await;
    let alone = write_rate(&client, 0, 1000).await;
    // A watcher that reads one answer and then nothing.
    let mut stalled = client
        .clone()
        .watch(watch_request(&[], None))
        .await
        .unwrap()
        .into_inner();
    let with_stalled = write_rate(&client, 1000, 3000).await;
    eprintln!(
        "durable creates at concurrency 16: {alone:.0}/s alone, {with_stalled:.0}/s with a stalled watcher (ratio {:.2})",
        with_stalled / alone
    );
    // Once it reads again: what its transport held, then the end, naming
    // the revision to resume from.
    let mut last = 1000;
    let status = loop {
        let read = tokio::time::timeout(Duration::from_secs(20), stalled.message()).await;
        let read = read.unwrap_or_else(|_| panic!("the stalled watch neither went on nor ended, at {last}"));
        match read {
            Ok(Some(answer)) => {
                for event in &answer.events {
                    assert_eq!(event.revision, last + 1);
                    last = event.revision;
                }
            }
            Ok(None) => panic!("the stalled watch ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(last < 4000, "the watcher was never behind");
    assert!(
        status.message().contains(&format!("start_revision {last}")),
        "{last}: {}",
        status.message()
    );
    // Resuming there delivers the rest, exactly.
    let mut resumed = client
        .clone()
        .watch(watch_request(&[], Some(last)))
        .await
        .unwrap()
        .into_inner();
    let rest = events(&mut resumed, (4000 - last) as usize).await;
    assert_eq!(rest.last().unwrap().revision, 4000);
}

/// A change as the unfiltered reference watcher saw it.
#[derive(Debug, Clone)]
struct Seen {
    revision: u64,
    name: String,
    before: Option<String>,
    after: Option<String>,
}

fn team(image: &Option<seed::Image>) -> Option<String> {
    image
        .as_ref()
        .map(|i| i.labels.get("team").cloned().unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_every_watcher_sees_each_change_of_its_filter_once_in_order() {
    use rand_like::Rng;
    let daemon = Daemon::start();
    let seed_client = daemon.seed().await;
    let ctrd_client = daemon.images().await;
    let mut reference = seed_client
        .clone()
        .watch(watch_request(&[], Some(0)))
        .await
        .unwrap()
        .into_inner();

    // Writers on both image APIs, on few names so that their ops collide.
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (mut s, mut c) = (seed_client.clone(), ctrd_client.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = Rng::new(w + 1);
            for n in 0..150u64 {
                let name = format!("img{}", rng.below(12));
                let team = ["a", "b"][rng.below(2) as usize];
                let _ = match rng.below(5) {
                    0 | 1 => s.put(labelled(&name, n, team)).await.map(drop),
                    2 => s
                        .delete(seed::DeleteRequest {
                            name,
                            precondition: None,
                        })
                        .await
                        .map(drop),
                    3 => {
                        let image = ctrd::Image {
                            name,
                            labels: [("team".to_string(), team.to_string())].into(),
                            target: Some(descriptor(n)),
                            ..Default::default()
                        };
                        let request = ctrd::CreateImageRequest {
                            image: Some(image),
                            source_date_epoch: None,
                        };
                        c.create(in_ns("default", request)).await.map(drop)
                    }
                    _ => {
                        let image = ctrd::Image {
                            name,
                            labels: [("team".to_string(), team.to_string())].into(),
                            ..Default::default()
                        };
                        let request = ctrd::UpdateImageRequest {
                            image: Some(image),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["labels.team".into()],
                            }),
                            source_date_epoch: None,
                        };
                        c.update(in_ns("default", request)).await.map(drop)
                    }
                };
            }
        }));
    }
    // Watchers of one team each, that hang up after a few answers and
    // resume from the last revision they saw, until they have seen the
    // revision the writers ended at (progress notices tell them).
    let (end_tx, end) = tokio::sync::watch::channel(u64::MAX);
    let mut watchers = Vec::new();
    for (w, filter) in ["labels.team==a", "labels.team==b", ""].into_iter().enumerate() {
        let client = seed_client.clone();
        let end = end.clone();
        watchers.push(tokio::spawn(async move {
            let mut rng = Rng::new(100 + w as u64);
            let mut got: Vec<seed::WatchEvent> = Vec::new();
            let mut last = 0;
            let until = Instant::now() + Duration::from_secs(120);
            while last < *end.borrow() {
                let filters: Vec<&str> = if filter.is_empty() { vec![] } else { vec![filter] };
                let mut request = watch_request(&filters, Some(last));
                request.progress_interval = Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 100_000_000,
                });
                let mut stream = client.clone().watch(request).await.unwrap().into_inner();
                for _ in 0..1 + rng.below(4) {
                    let answer = stream.message().await.unwrap().expect("the watch goes on");
                    got.extend(answer.events);
                    last = answer.revision;
                }
                assert!(Instant::now() < until, "watcher {filter:?} stuck at {last}");
            }
            (got, last)
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut idle = seed_client.clone();
    let listed = idle.list(seed::ListRequest::default()).await.unwrap().into_inner();
    let total = listed.revision;
    end_tx.send_replace(total);

    // The reference: every change, revisions 1..=total, each once.
    let all = events(&mut reference, total as usize).await;
    assert_eq!(
        all.iter().map(|e| e.revision).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    let history: Vec<Seen> = all
        .iter()
        .map(|e| {
            let deleted = e.r#type == Type::Deleted as i32;
            Seen {
                revision: e.revision,
                name: e.image.as_ref().unwrap().name.clone(),
                before: team(&e.prev_image),
                after: if deleted { None } else { team(&e.image) },
            }
        })
        .collect();
    // Replaying the reference onto an empty map gives the store's list.
    let mut replayed = BTreeMap::new();
    for e in &all {
        let image = e.image.clone().unwrap();
        if e.r#type == Type::Deleted as i32 {
            replayed.remove(&image.name);
        } else {
            replayed.insert(image.name.clone(), image);
        }
    }
    let listed: BTreeMap<_, _> = listed.images.into_iter().map(|i| (i.name.clone(), i)).collect();
    assert_eq!(replayed, listed);

    for (watcher, filter) in watchers.into_iter().zip(["a", "b", ""]) {
        let (got, last) = watcher.await.unwrap();
        assert!(last >= total, "watcher {filter:?} did not reach the end");
        let expected: Vec<(u64, &str, i32)> = history
            .iter()
            .filter_map(|s| {
                let matches = |t: &Option<String>| t.as_deref().is_some_and(|t| filter.is_empty() || t == filter);
                let kind = match (matches(&s.before), matches(&s.after)) {
                    (false, false) => return None,
                    (false, true) => Type::Added,
                    (true, true) => Type::Modified,
                    (true, false) => Type::Deleted,
                };
                Some((s.revision, s.name.as_str(), kind as i32))
            })
            .collect();
        let got: Vec<(u64, &str, i32)> = got
            .iter()
            .map(|e| (e.revision, e.image.as_ref().unwrap().name.as_str(), e.r#type))
            .collect();
        assert_eq!(got, expected, "watcher of team {filter:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_a_resumed_client_watch_sees_every_acknowledged_change_once() {
    let mut daemon = Daemon::start();
    let client = imaged_client::Client::connect(&daemon.socket).unwrap();
    let images = client.namespace("default").unwrap();
    let mut updates = Box::pin(images.watch().since(0).stream());
    let writer = {
        let images = images.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0.. {
                let target = imaged_client::Descriptor {
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    digest: common::digest(n).parse().unwrap(),
                    size: 1 + n as i64,
                    annotations: Default::default(),
                };
                match images.put(format!("img{n}"), target).await {
                    Ok(()) => acked.push(format!("img{n}")),
                    Err(_) => return acked,
                }
            }
            unreachable!()
        })
    };
    // Some changes arrive live, then the daemon dies mid-write.
    let first = updates.try_next().await.unwrap().unwrap();
    assert!(!first.events.is_empty());
    tokio::time::sleep(Duration::from_millis(300)).await;
    daemon.kill();
    let acked = writer.await.unwrap();
    daemon.restart();
    let revision = {
        let mut seed = daemon.seed().await;
        seed.list(seed::ListRequest::default())
            .await
            .unwrap()
            .into_inner()
            .revision
    };
    // The same stream goes on by itself after the restart.
    let mut seen = first.events;
    while seen.last().map_or(0, |e| e.revision) < revision {
        let update = tokio::time::timeout(Duration::from_secs(30), updates.try_next())
            .await
            .expect("the watch resumed")
            .unwrap()
            .unwrap();
        seen.extend(update.events);
    }
    assert_eq!(
        seen.iter().map(|e| e.revision).collect::<Vec<_>>(),
        (1..=revision).collect::<Vec<_>>(),
        "each revision exactly once"
    );
    let names: Vec<&str> = seen.iter().map(|e| e.image.name.as_str()).collect();
    for name in &acked {
        assert!(names.contains(&name.as_str()), "acknowledged {name} was never seen");
    }
    // Nothing was seen that the store does not hold.
    assert!(
        seen.len() <= acked.len() + 1,
        "{} seen, {} acknowledged",
        seen.len(),
        acked.len()
    );
    eprintln!("{} acknowledged before the kill, {} seen", acked.len(), seen.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_informer_lists_again_when_its_gap_was_compacted_away() {
    use imaged_client::{EventType, Informed};
    let args = ["--keep-changes", "5", "--keep-changes-for", "0"];
    let mut daemon = Daemon::start_with("info", &args);
    let client = imaged_client::Client::connect(&daemon.socket).unwrap();
    let images = client.namespace("default").unwrap();
    let target = |n: u64| imaged_client::Descriptor {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        digest: common::digest(n).parse().unwrap(),
        size: 1 + n as i64,
        annotations: Default::default(),
    };
    for n in 0..3 {
        images.put(format!("img{n}"), target(n)).await.unwrap();
    }
    type Informer = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Informed, imaged_client::Error>> + Send>>;
    let mut informed: Informer = Box::pin(images.watch().informer());
    async fn next(informed: &mut Informer) -> Informed {
        let next = tokio::time::timeout(Duration::from_secs(30), informed.try_next());
        next.await.expect("the informer went on").unwrap().unwrap()
    }
    let Informed::Listing {
        images: listed,
        revision,
    } = next(&mut informed).await
    else {
        panic!("an informer starts with a listing");
    };
    assert_eq!((listed.len(), revision), (3, 3));
    images.put("img3", target(3)).await.unwrap();
    match next(&mut informed).await {
        Informed::Update(update) => {
            assert_eq!(update.events[0].kind, EventType::Added);
            assert_eq!(update.events[0].image.name, "img3");
        }
        other => panic!("{other:?}"),
    }
    // While the informer waits for the daemon, another daemon on the same
    // data (and a socket of its own) writes more than the log keeps.
    daemon.terminate();
    let elsewhere = daemon.root.parent().unwrap().join("elsewhere.sock");
    let mut writer = Daemon::spawn_with(
        &elsewhere,
        &daemon.root,
        "info",
        args.iter().map(|a| a.to_string()).collect(),
    );
    writer.wait_ready();
    let mut seed = Seed::new(common::channel(&elsewhere).await);
    for n in 4..20 {
        seed.put(put(&format!("img{n}"), n)).await.unwrap();
    }
    let started = Instant::now();
    while seed.watch(watch_request(&[], Some(4))).await.is_ok() {
        assert!(started.elapsed() < Duration::from_secs(20), "no compaction");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    writer.terminate();
    daemon.restart();
    // The informer's gap is gone from the log: it lists again.
    match next(&mut informed).await {
        Informed::Listing { images, revision } => {
            assert_eq!(images.len(), 20);
            assert_eq!(revision, 20);
        }
        other => panic!("{other:?}"),
    }
}

/// A small deterministic generator, so a failing run can be repeated.
mod rand_like {
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        pub fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }
}

mod events {
    //! containerd's Events service beyond what `ctr events` shows (that is in
    //! tests/ctr.rs): Publish and Forward checks, and Subscribe's filters
    //! over changes and published events.

    use super::*;
    use imaged_api::containerd::services::events::v1 as ev;
    use prost::Message;

    type Events = ev::events_client::EventsClient<Channel>;

    fn any(name: &str) -> prost_types::Any {
        let payload = ctrd::ImageDelete { name: name.into() };
        prost_types::Any {
            type_url: "containerd.services.images.v1.ImageDelete".into(),
            value: payload.encode_to_vec(),
        }
    }

    async fn next(stream: &mut tonic::Streaming<ev::Envelope>) -> ev::Envelope {
        tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an envelope within 10 s")
            .unwrap()
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publish_and_forward_check_their_fields_and_reach_filtered_subscribers() {
        let daemon = Daemon::start();
        let mut events = Events::new(daemon.channel().await);
        let publish = |topic: &str| ev::PublishRequest {
            topic: topic.into(),
            event: Some(any("x")),
        };
        // Refusals name the field.
        let no_ns = events.publish(publish("/test/a")).await.unwrap_err();
        assert_eq!(no_ns.code(), Code::FailedPrecondition, "{no_ns:?}");
        for (topic, why) in [
            ("test", "must start with /"),
            ("/a//b", "identifier rule"),
            ("/a/b c", "identifier"),
        ] {
            let err = events.publish(in_ns("default", publish(topic))).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{topic}: {err:?}");
            assert!(
                err.message().contains("topic") && err.message().contains(why),
                "{err:?}"
            );
        }
        let long = format!("/{}", "a".repeat(77));
        let err = events.publish(in_ns("default", publish(&long))).await.unwrap_err();
        assert!(err.message().contains("longer than 76"), "{err:?}");
        let envelope = |ns: &str, timestamp| ev::Envelope {
            timestamp,
            namespace: ns.into(),
            topic: "/test/forwarded".into(),
            event: Some(any("y")),
        };
        let now = Some(prost_types::Timestamp { seconds: 1, nanos: 0 });
        for (bad, field) in [
            (envelope("default", None), "envelope.timestamp"),
            (envelope("a b", now), "envelope.namespace"),
        ] {
            let err = events
                .forward(ev::ForwardRequest { envelope: Some(bad) })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
            assert!(err.message().contains(field), "{err:?}");
        }
        let err = events
            .subscribe(ev::SubscribeRequest {
                filters: vec!["labels.x==y".into()],
            })
            .await
            .unwrap_err();
        assert!(err.message().contains("event.labels"), "{err:?}");

        // One subscriber of published test events, one of team-a's images.
        let mut tests = events
            .subscribe(ev::SubscribeRequest {
                filters: vec![r#"topic~="^/test/""#.into()],
            })
            .await
            .unwrap()
            .into_inner();
        let mut images = events
            .subscribe(ev::SubscribeRequest {
                filters: vec!["namespace==team-a,event.labels.tier==web".into()],
            })
            .await
            .unwrap()
            .into_inner();
        let mut seed = daemon.seed().await;
        seed.put(in_ns("default", labelled("x", 1, "a"))).await.unwrap();
        let mut web = put("app", 2);
        web.image.as_mut().unwrap().labels.insert("tier".into(), "web".into());
        seed.put(in_ns("team-a", web)).await.unwrap();
        events.publish(in_ns("default", publish("/test/a"))).await.unwrap();
        events
            .forward(ev::ForwardRequest {
                envelope: Some(envelope("team-b", now)),
            })
            .await
            .unwrap();

        let got = next(&mut tests).await;
        assert_eq!((got.namespace.as_str(), got.topic.as_str()), ("default", "/test/a"));
        assert_eq!(got.event, Some(any("x")));
        let got = next(&mut tests).await;
        assert_eq!(got, envelope("team-b", now), "forwarded as it was");
        let got = next(&mut images).await;
        assert_eq!(
            (got.namespace.as_str(), got.topic.as_str()),
            ("team-a", "/images/create")
        );
        let payload = ctrd::ImageCreate::decode(&got.event.unwrap().value[..]).unwrap();
        assert_eq!(payload.name, "app");
        // Nothing else reached either.
        for stream in [&mut tests, &mut images] {
            let more = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
            assert!(more.is_err(), "{more:?}");
        }
    }
}
