//! Unit tests of the store as a whole: writes, reads, recovery and reopens.

use std::time::{Duration, UNIX_EPOCH};

use imaged_types::{Descriptor, Digest, Labels};

use super::*;
use crate::filter::Filter;
use prost::Message;

pub(super) fn ns(name: &str) -> NamespaceName {
    NamespaceName::parse("ns", name).unwrap()
}

fn digest(n: u64) -> Digest {
    Digest::parse(&format!("sha256:{n:064x}")).unwrap()
}

pub(super) fn image(name: &str, n: u64, labels: &[(&str, &str)]) -> Image {
    Image {
        name: name.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        target: Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: digest(n),
            size: n as i64 + 1,
            annotations: Labels::new(),
        },
        created_at: UNIX_EPOCH,
        updated_at: UNIX_EPOCH,
        create_revision: 0,
        mod_revision: 0,
    }
}

pub(super) fn open(dir: &Path) -> Store {
    Store::open(dir, &StoreOptions::default()).unwrap()
}

pub(super) fn revision(store: &Store) -> u64 {
    store.inner.engine.with(revision_of).unwrap()
}

#[tokio::test]
async fn replacing_a_target_keeps_labels_and_creation_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = store
        .put(ns("default"), image("a", 1, &[("k", "v")]), Precondition::None)
        .await
        .unwrap();
    assert_eq!(first.created_at, first.updated_at);
    assert!(first.created_at > UNIX_EPOCH + Duration::from_secs(1_600_000_000));
    assert_eq!(revision(&store), 1);

    tokio::time::sleep(Duration::from_millis(5)).await;
    // A replacing put carries no labels; the stored ones are kept.
    let second = store
        .put(ns("default"), image("a", 2, &[]), Precondition::None)
        .await
        .unwrap();
    assert_eq!(second.labels, first.labels);
    assert_eq!(second.created_at, first.created_at);
    assert!(second.updated_at > first.updated_at);
    assert_eq!(second.target.digest, digest(2));
    assert_eq!(revision(&store), 2);

    let got = store.get(&ns("default"), "a".into()).await.unwrap();
    assert_eq!(got, second);
}

#[tokio::test]
async fn an_encoded_get_answers_what_a_get_does_from_the_cache_and_from_sled() {
    use crate::server::images::CONTAINERD_IMAGE;
    use crate::server::seed::SEED_IMAGE;
    use imaged_api::containerd::services::images::v1 as ctrd;
    use imaged_api::containerd::v1 as seed;

    let dir = tempfile::tempdir().unwrap();
    let d = ns("default");
    let stored = image("docker.io/library/redis:7", 7, &[("a", "1"), ("b", "")]);
    let store = open(dir.path());
    store.put(d.clone(), stored.clone(), Precondition::None).await.unwrap();
    drop(store);
    // With a record cache the write left the record there; without one,
    // every Get reads sled.
    for record_cache_bytes in [1 << 20, 0] {
        let options = StoreOptions {
            record_cache_bytes,
            ..StoreOptions::default()
        };
        let store = Store::open(dir.path(), &options).unwrap();
        for _ in 0..2 {
            let image = store.get(&d, stored.name.clone()).await.unwrap();
            let bytes = crate::server::get_encoded(&store, &d, &stored.name, &SEED_IMAGE)
                .await
                .unwrap();
            assert_eq!(
                seed::Image::decode(&bytes[..]).unwrap(),
                imaged_types::wire::image_to_seed(image.clone())
            );
            let bytes = crate::server::get_encoded(&store, &d, &stored.name, &CONTAINERD_IMAGE)
                .await
                .unwrap();
            assert_eq!(
                ctrd::Image::decode(&bytes[..]).unwrap(),
                imaged_types::wire::image_to_containerd(image)
            );
        }
        // The refusals are a Get's.
        for name in ["missing", ""] {
            let get = store.get(&d, name.into()).await.unwrap_err().to_string();
            let encoded = crate::server::get_encoded(&store, &d, name, &SEED_IMAGE)
                .await
                .unwrap_err()
                .to_string();
            assert_eq!(encoded, get);
        }
        store.close().await;
    }
}

#[tokio::test]
async fn failed_preconditions_are_conflicts_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d = ns("default");
    store
        .put(d.clone(), image("a", 1, &[]), Precondition::Absent)
        .await
        .unwrap();

    let err = store
        .put(d.clone(), image("a", 2, &[]), Precondition::Absent)
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Conflict(m) if m.contains("already exists") && m.contains(digest(1).as_str())));
    let err = store
        .put(d.clone(), image("a", 2, &[]), Precondition::Digest(digest(9)))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Conflict(m) if m.contains(&format!("points at {}, not {}", digest(1), digest(9)))));
    let err = store
        .put(d.clone(), image("b", 2, &[]), Precondition::Digest(digest(1)))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Conflict(m) if m.contains("does not exist")));
    let err = store
        .delete(d.clone(), "a".into(), Precondition::Digest(digest(9)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict(_)));
    assert_eq!(revision(&store), 1, "a refused write bumped the revision");
    assert_eq!(store.get(&d, "a".into()).await.unwrap().target.digest, digest(1));

    store
        .put(d.clone(), image("a", 2, &[]), Precondition::Digest(digest(1)))
        .await
        .unwrap();
    store
        .delete(d.clone(), "a".into(), Precondition::Digest(digest(2)))
        .await
        .unwrap();
    assert!(matches!(store.get(&d, "a".into()).await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn namespace_counters_follow_creates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for (n, name) in ["a", "b", "c"].iter().enumerate() {
        store
            .put(ns("one"), image(name, n as u64 + 1, &[]), Precondition::None)
            .await
            .unwrap();
    }
    store
        .put(ns("two"), image("a", 7, &[]), Precondition::None)
        .await
        .unwrap();
    // Replacing does not count twice.
    store
        .put(ns("two"), image("a", 8, &[]), Precondition::None)
        .await
        .unwrap();
    assert_eq!(store.image_count().unwrap(), 4);

    store.delete(ns("two"), "a".into(), Precondition::None).await.unwrap();
    assert_eq!(store.image_count().unwrap(), 3);
    // An emptied namespace stays until it is deleted, as in containerd.
    let names: Vec<String> = store
        .list_namespaces(Filter::all())
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name.as_str().to_owned())
        .collect();
    assert_eq!(names, ["one", "two"]);
    store.delete_namespace(ns("two")).await.unwrap();
    let err = store.delete_namespace(ns("one")).await.unwrap_err();
    assert!(
        matches!(&err, Error::FailedPrecondition(m) if m.contains("still holds 3 images: delete them first")),
        "{err}"
    );
}

#[tokio::test]
async fn a_refused_job_does_not_stop_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = Vec::new();
    for n in 0..64u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut img = image(&format!("img{n:02}"), n + 1, &[]);
            if n % 4 == 0 {
                img.target.size = 0;
            }
            store.put(ns("default"), img, Precondition::None).await
        }));
    }
    let mut refused = 0;
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            assert!(matches!(e, Error::Invalid(_)));
            refused += 1;
        }
    }
    assert_eq!(refused, 16);
    let listed = store
        .list_page(Arc::new(Query::all(ns("default"))), String::new(), 1000)
        .await
        .unwrap()
        .0;
    assert_eq!(listed.len(), 48);
    assert!(listed.iter().all(|i| i.target.size > 0));
    assert_eq!(revision(&store), 48);
}

/// Copies what is on disk under `from` right now (through the page
/// cache, as a `kill -9` would leave it) to `to`.
pub(super) fn copy_disk_state(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_disk_state(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `store`'s default namespace holds exactly `images` (in name order),
/// its counters agree, it is at `revision`, and `check` finds nothing.
pub(super) async fn assert_holds(store: &Store, images: &[Image], at: u64) {
    let listed = store
        .list_page(Arc::new(Query::all(ns("default"))), String::new(), 1000)
        .await
        .unwrap()
        .0;
    assert_eq!(listed, images);
    assert_eq!(revision(store), at);
    assert_eq!(store.image_count().unwrap(), images.len() as u64);
    let report = store.check().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test]
async fn acknowledged_writes_sled_never_wrote_out_are_replayed_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let store = open(&live);
    let before_crash = dir.path().join("crashed");
    let mut stored = Vec::new();
    for n in 0..50u64 {
        stored.push(
            store
                .put(
                    ns("default"),
                    image(&format!("img{n:02}"), n + 1, &[("n", "v")]),
                    Precondition::None,
                )
                .await
                .unwrap(),
        );
    }
    store
        .delete(ns("default"), "img07".into(), Precondition::None)
        .await
        .unwrap();
    stored.remove(7);
    // sled holds these in its memory buffers; only the journal has them
    // on disk. A copy of the disk now is what a kill -9 leaves.
    copy_disk_state(&live, &before_crash);
    let sled_alone = Backend::open(&before_crash.join("sled"), 1 << 20)
        .unwrap()
        .len(TreeId::Images);
    assert!(
        sled_alone < 49,
        "sled wrote out {sled_alone} records: the test proves nothing"
    );

    let recovered = open(&before_crash);
    assert_holds(&recovered, &stored, 51).await;
    // The replay was checkpointed: writes after it go on from 51.
    recovered
        .put(ns("default"), image("after", 99, &[]), Precondition::None)
        .await
        .unwrap();
    assert_eq!(revision(&recovered), 52);
}

#[tokio::test]
async fn a_batch_sled_holds_only_in_part_is_completed_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let store = open(&live);
    let mut tasks = Vec::new();
    for n in 0..48u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let img = image(&format!("img{n:02}"), n + 1, &[("n", "v")]);
            store.put(ns("default"), img, Precondition::None).await.unwrap()
        }));
    }
    let mut stored = Vec::new();
    for task in tasks {
        stored.push(task.await.unwrap());
    }
    stored.sort_by(|a, b| a.name.cmp(&b.name));
    let crashed = dir.path().join("crashed");
    copy_disk_state(&live, &crashed);

    // What sled had written out when it stopped: every batch before the
    // largest one (group commit makes their sizes vary from run to run),
    // the first half of that one's writes (its revision, the last write,
    // not among them), and nothing after it.
    let entries = Journal::open(&crashed.join("journal")).unwrap().1.entries;
    let cut = (0..entries.len()).max_by_key(|&i| entries[i].effects.len()).unwrap();
    let (earlier, split) = (&entries[..cut], &entries[cut]);
    // One image's record and index entries, its namespace and the
    // revision are at least 7 writes.
    assert!(split.effects.len() >= 7, "a batch of {} writes", split.effects.len());
    {
        let backend = Backend::open(&crashed.join("sled"), 1024 * 1024).unwrap();
        let half = split.effects.len() / 2;
        let written: Vec<Effect> = earlier
            .iter()
            .flat_map(|e| &e.effects)
            .chain(&split.effects[..half])
            .cloned()
            .collect();
        backend.apply(&written, |_| {}).unwrap();
        backend.flush().unwrap();
    }

    assert_holds(&open(&crashed), &stored, 48).await;
}

#[tokio::test]
async fn batches_larger_than_an_entry_or_the_journal_are_cut_and_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let store = open(&live);
    // 120 concurrent puts of about 50 KiB each: 6 MB of writes, more
    // than an entry (1 MiB) and than the journal (4 MiB).
    let big = "x".repeat(4000);
    let labels: Vec<(String, String)> = (0..12).map(|k| (format!("k{k}"), big.clone())).collect();
    let mut tasks = Vec::new();
    for n in 0..120u64 {
        let store = store.clone();
        let mut img = image(&format!("big{n:03}"), n + 1, &[]);
        img.labels = labels.iter().cloned().collect();
        tasks.push(tokio::spawn(async move {
            store.put(ns("default"), img, Precondition::None).await
        }));
    }
    let mut stored = Vec::new();
    for task in tasks {
        stored.push(task.await.unwrap().unwrap());
    }
    stored.sort_by(|a, b| a.name.cmp(&b.name));
    let crashed = dir.path().join("crashed");
    copy_disk_state(&live, &crashed);
    assert_holds(&open(&crashed), &stored, 120).await;
}

#[tokio::test]
async fn an_encoded_page_is_cut_by_count_and_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for n in 0..5u64 {
        let labels = [("pad", &*"x".repeat(1000))];
        store
            .put(
                ns("default"),
                image(&format!("i{n}"), n + 1, &labels),
                Precondition::None,
            )
            .await
            .unwrap();
    }
    let query = Arc::new(Query::all(ns("default")));
    let wire = Some(&crate::server::seed::SEED_IMAGE);
    let page = |limit, budget| crate::server::encoded_page(&store, query.clone(), "", limit, budget, wire);
    let by_count = page(3, usize::MAX).await.unwrap();
    assert_eq!(by_count.count, 3);
    assert!(!by_count.next_page_token.is_empty());
    // Each image is over 1000 bytes: a 2500-byte budget keeps two, and
    // the token resumes after the second.
    let by_bytes = page(5, 2500).await.unwrap();
    assert_eq!(by_bytes.count, 2);
    let rest = crate::server::encoded_page(&store, query.clone(), &by_bytes.next_page_token, 5, usize::MAX, wire)
        .await
        .unwrap();
    assert_eq!((rest.count, rest.next_page_token.as_str()), (3, ""));
    // A budget smaller than one image still gives one.
    assert_eq!(page(5, 10).await.unwrap().count, 1);
    // A page of none has nothing to resume after.
    let none = page(0, usize::MAX).await.unwrap();
    assert_eq!(
        (none.count, none.next_page_token.as_str(), none.items.images.len()),
        (0, "", 0)
    );
}

/// The LSN of sled's newest snapshot in the store's sled directory (0
/// for none yet): it advances only when sled opens.
pub(super) fn snapshot_lsn(root: &Path) -> u64 {
    std::fs::read_dir(root.join("sled"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            let hex = name.strip_prefix("snap.")?;
            u64::from_str_radix(hex, 16).ok()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sled_is_reopened_under_load_and_nothing_is_lost_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        reopen_after_bytes: 64 * 1024,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), &options).unwrap();
    let opened_at = snapshot_lsn(dir.path());
    let d = ns("default");
    // Writers and readers at once, while the writer reopens sled again
    // and again under them.
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let (store, d) = (store.clone(), d.clone());
            tokio::spawn(async move {
                for i in 0..150u64 {
                    let name = format!("w{w}/{i:03}");
                    let labels = [("writer", "w"), ("pad", &*"x".repeat(200))];
                    store
                        .put(d.clone(), image(&name, w * 1000 + i, &labels), Precondition::None)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..3u64)
        .map(|_| {
            let (store, d) = (store.clone(), d.clone());
            tokio::spawn(async move {
                let query = Arc::new(Query::all(d.clone()));
                let mut reads = 0;
                while reads < 400 {
                    let (images, _) = store.list_page(query.clone(), String::new(), 50).await.unwrap();
                    if let Some(first) = images.first() {
                        assert_eq!(store.get(&d, first.name.clone()).await.unwrap().name, first.name);
                    }
                    reads += 1;
                }
            })
        })
        .collect();
    for task in writers.into_iter().chain(readers) {
        task.await.unwrap();
    }
    assert!(
        snapshot_lsn(dir.path()) > opened_at,
        "sled was not reopened while the store ran"
    );
    assert_eq!(store.image_count().unwrap(), 1200);
    let report = store.check().await.unwrap();
    assert_eq!(report.problem_count, 0, "{:?}", report.problems);
    store.close().await;
    drop(store);

    let store = open(dir.path());
    let query = Arc::new(Query::all(d.clone()));
    let (images, _) = store.list_page(query, String::new(), 1000).await.unwrap();
    assert_eq!(images.len(), 1000);
    assert_eq!(store.image_count().unwrap(), 1200);
    assert_eq!(revision(&store), 1200);
}

#[tokio::test]
async fn sled_cache_grows_with_the_store_when_sled_reopens_and_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let grows = SledCache {
        min_bytes: 64 << 10,
        max_bytes: 256 << 20,
    };
    let options = StoreOptions {
        sled_cache: grows,
        reopen_after_bytes: 256 << 10,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), &options).unwrap();
    let fresh = store.sled_cache_bytes();
    assert_eq!(fresh, grows.min_bytes);
    let d = ns("default");
    let pad = "x".repeat(2000);
    for i in 0..1500u64 {
        let labels = [("pad", pad.as_str())];
        store
            .put(d.clone(), image(&format!("img/{i:05}"), i, &labels), Precondition::None)
            .await
            .unwrap();
    }
    // Reopened with the store several MiB larger: a twelfth of its files.
    let grown = store.sled_cache_bytes();
    assert!(grown > fresh && grown > grows.min_bytes, "{fresh} -> {grown}");
    assert!(grown < grows.max_bytes, "{grown}");
    store.close().await;
    drop(store);

    // A restart sizes it from the files as they are when it opens.
    // (The store may have rotated: its sled is the generation in use.)
    let expected = grows.for_dir(&super::engine::generation::current(dir.path()).unwrap());
    let store = Store::open(dir.path(), &options).unwrap();
    assert_eq!(store.sled_cache_bytes(), expected);
    assert!(expected >= grown, "{grown} -> {expected}");
    store.close().await;
    drop(store);

    // A fixed cache keeps its size whatever the store holds.
    let fixed = StoreOptions {
        sled_cache: SledCache::fixed(1 << 20),
        ..options
    };
    let store = Store::open(dir.path(), &fixed).unwrap();
    assert_eq!(store.sled_cache_bytes(), 1 << 20);
    assert_eq!(store.image_count().unwrap(), 1500);
}

#[tokio::test]
async fn records_survive_close_and_reopen_and_writes_after_close_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let stored = store
        .put(ns("default"), image("keep", 3, &[("x", "y")]), Precondition::None)
        .await
        .unwrap();
    store.close().await;
    let err = store
        .put(ns("default"), image("late", 4, &[]), Precondition::None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)));
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.get(&ns("default"), "keep".into()).await.unwrap(), stored);
    assert_eq!(store.image_count().unwrap(), 1);
    assert_eq!(revision(&store), 1);
}

#[tokio::test]
async fn the_commit_hook_sees_every_durable_change_once_in_revision_order() {
    let dir = tempfile::tempdir().unwrap();
    /// A commit as the hook saw it: first and last revision, and changes.
    type Seen = (u64, u64, Vec<Change>);
    let seen: Arc<std::sync::Mutex<Vec<Seen>>> = Default::default();
    let hook: CommitHook = {
        let seen = seen.clone();
        Box::new(move |commit: Commit| {
            seen.lock().unwrap().push((commit.first, commit.last, commit.changes));
        })
    };
    let store = Store::open_with_hook(dir.path(), &StoreOptions::default(), Some(hook)).unwrap();
    let d = ns("default");
    let mut tasks = Vec::new();
    for n in 0..20u64 {
        let (store, d) = (store.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            store
                .put(d, image(&format!("img{n:02}"), n + 1, &[]), Precondition::None)
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // A refusal changes nothing, so the hook hears nothing of it.
    store
        .delete(d.clone(), "missing".into(), Precondition::None)
        .await
        .unwrap_err();
    store
        .delete(d.clone(), "img03".into(), Precondition::None)
        .await
        .unwrap();
    store
        .create_namespace(Namespace {
            name: ns("team-a"),
            labels: [("owner".to_string(), "alice".to_string())].into_iter().collect(),
        })
        .await
        .unwrap();
    store.close().await;
    drop(store);

    let seen = seen.lock().unwrap();
    let changes: Vec<&Change> = seen.iter().flat_map(|(_, _, c)| c).collect();
    // Each commit spans exactly its changes' revisions, and they follow on.
    let mut next = 1;
    for (first, last, batch) in seen.iter() {
        assert_eq!(*first, next);
        assert_eq!(
            batch.iter().map(|c| c.revision).collect::<Vec<_>>(),
            (*first..=*last).collect::<Vec<_>>()
        );
        next = last + 1;
    }
    assert_eq!(changes.len(), 22);
    assert_eq!(revision(&open(dir.path())), 22);
    match &changes[20].changed {
        Changed::Image {
            before: Some(before),
            after: None,
            ..
        } => assert_eq!(before.name, "img03"),
        other => panic!("{other:?}"),
    }
    match &changes[21] {
        Change {
            namespace,
            changed:
                Changed::Namespace {
                    before: None,
                    after: Some(labels),
                },
            ..
        } => {
            assert_eq!(namespace.as_str(), "team-a");
            assert_eq!(labels.get("owner").map(String::as_str), Some("alice"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_reopen_waits_for_a_lull_in_writes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        reopen_after_bytes: 256 * 1024,
        record_cache_bytes: 0,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), &options).unwrap();
    let opened_at = snapshot_lsn(dir.path());
    let d = ns("default");
    // Past half the setting, short of all of it: due, but not forced (each
    // put journals its record and its change log entry).
    let pad = "x".repeat(1000);
    for n in 0..80u64 {
        let labels = [("pad", pad.as_str())];
        store
            .put(
                d.clone(),
                image(&format!("img{n:03}"), n + 1, &labels),
                Precondition::None,
            )
            .await
            .unwrap();
    }
    assert_eq!(
        snapshot_lsn(dir.path()),
        opened_at,
        "reopened before the setting while busy"
    );
    // Reads that never pause for as long as a reopen would take hold it off.
    let reading = std::time::Instant::now();
    while reading.elapsed() < std::time::Duration::from_millis(300) {
        store.get(&d, "img007".into()).await.unwrap();
    }
    assert_eq!(snapshot_lsn(dir.path()), opened_at, "reopened under readers");
    // A lull: the reopen runs, and sled writes its snapshot.
    let waited = std::time::Instant::now();
    while snapshot_lsn(dir.path()) == opened_at {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(10),
            "no reopen in a lull"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(store.get(&d, "img079".into()).await.unwrap().name, "img079");
    assert_eq!(store.image_count().unwrap(), 80);
}
