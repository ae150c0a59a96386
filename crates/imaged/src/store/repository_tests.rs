//! Unit tests of repositories through the store: the records every write
//! keeps (count, newest, last change), pages of them, a List limited to
//! one repository, and the index built for a store that had none.

use std::time::{Duration, UNIX_EPOCH};

use imaged_types::{ImageUpdate, Labels, Repository};

use super::tests::{image, ns, open, revision};
use super::*;

async fn repositories(store: &Store, filters: &[&str], order_by: &str, limit: usize) -> Vec<Repository> {
    let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
    let query = Arc::new(RepositoryQuery::new(ns("default"), &filters, order_by).unwrap());
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = store.repositories(query.clone(), &token, limit).await.unwrap();
        assert!(page.items.len() <= limit);
        all.extend(page.items);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

fn summary(repositories: &[Repository]) -> Vec<(String, u64, String)> {
    repositories
        .iter()
        .map(|r| (r.name.clone(), r.tags, r.newest.clone()))
        .collect()
}

fn row(name: &str, tags: u64, newest: &str) -> (String, u64, String) {
    (name.into(), tags, newest.into())
}

async fn check_clean(store: &Store) {
    let report = store.check().await.unwrap();
    assert_eq!(report.problem_count, 0, "{:?}", report.problems);
}

#[tokio::test]
async fn each_write_keeps_its_repositorys_count_newest_and_last_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d = ns("default");
    let digest = format!("sha256:{:064x}", 9);
    for name in ["redis:6", "redis:7", "localhost:5000/app:1", "redis-stack:1"] {
        store
            .put(d.clone(), image(name, 1, &[]), Precondition::None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    store
        .put(d.clone(), image(&format!("redis@{digest}"), 1, &[]), Precondition::None)
        .await
        .unwrap();
    let expected = vec![
        row("localhost:5000/app", 1, "localhost:5000/app:1"),
        row("redis", 3, &format!("redis@{digest}")),
        row("redis-stack", 1, "redis-stack:1"),
    ];
    assert_eq!(summary(&repositories(&store, &[], "", 100).await), expected);
    assert_eq!(summary(&repositories(&store, &[], "", 1).await), expected);
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(summary(&repositories(&store, &[], "name desc", 2).await), reversed);
    check_clean(&store).await;

    // Deleting the newest names the next newest; the last change is the
    // delete's.
    store
        .delete(d.clone(), format!("redis@{digest}"), Precondition::None)
        .await
        .unwrap();
    let at = revision(&store);
    let redis = repositories(&store, &["name==redis"], "", 10).await;
    assert_eq!(summary(&redis), vec![row("redis", 2, "redis:7")]);
    assert_eq!(redis[0].mod_revision, at);
    assert!(redis[0].updated_at > redis[0].newest_updated_at);

    // Updating an older tag back in time leaves the newest; dating the
    // newest back makes the other one newest.
    let update = |name: &str| ImageUpdate {
        name: name.into(),
        labels: Labels::new(),
        annotations: Labels::new(),
        target: Ok(image(name, 1, &[]).target),
    };
    let past = Some(UNIX_EPOCH + Duration::from_secs(1_000));
    store.update(d.clone(), update("redis:6"), vec![], past).await.unwrap();
    assert_eq!(
        summary(&repositories(&store, &["name==redis"], "", 10).await)[0].2,
        "redis:7"
    );
    store.update(d.clone(), update("redis:7"), vec![], past).await.unwrap();
    // Both at the same time: the greater name is the newest.
    assert_eq!(
        summary(&repositories(&store, &["name==redis"], "", 10).await)[0].2,
        "redis:7"
    );
    store
        .update(
            d.clone(),
            update("redis:7"),
            vec![],
            Some(UNIX_EPOCH + Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(
        summary(&repositories(&store, &["name==redis"], "", 10).await)[0].2,
        "redis:6"
    );
    check_clean(&store).await;

    // Filters: by count, by a name prefix (a range), by last change.
    let names = |r: Vec<Repository>| r.into_iter().map(|r| r.name).collect::<Vec<_>>();
    assert_eq!(names(repositories(&store, &["tags>=2"], "", 10).await), ["redis"]);
    assert_eq!(
        names(repositories(&store, &["name~=^redis"], "", 1).await),
        ["redis", "redis-stack"]
    );
    assert_eq!(
        names(repositories(&store, &["updated_at<2000-01-01"], "", 10).await),
        Vec::<String>::new()
    );

    // The last image gone, so is the repository.
    for name in ["redis:6", "redis:7"] {
        store.delete(d.clone(), name.into(), Precondition::None).await.unwrap();
    }
    assert_eq!(
        names(repositories(&store, &[], "", 10).await),
        ["localhost:5000/app", "redis-stack"]
    );
    check_clean(&store).await;
}

#[tokio::test]
async fn a_list_of_one_repository_holds_its_names_only_in_every_direction() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d = ns("default");
    let digest = format!("sha256:{:064x}", 9);
    let mine = [
        "localhost",
        "localhost:1",
        "localhost:2",
        &format!("localhost@{digest}"),
    ];
    let others = [
        "localhost:5000/app:1",
        "localhost-2:1",
        "localhost/x:1",
        "localhostA:1",
        "localhost:5000",
    ];
    for name in mine.iter().chain(&others) {
        store
            .put(d.clone(), image(name, 1, &[]), Precondition::None)
            .await
            .unwrap();
    }
    // "localhost:5000" is a tag of "localhost" too.
    let mut expected: Vec<String> = mine.iter().map(|s| s.to_string()).collect();
    expected.push("localhost:5000".into());
    expected.sort();
    for (order, limit) in [("", 1000), ("", 1), ("name desc", 2), ("name desc", 1)] {
        let query = Arc::new(Query::new(d.clone(), &["repository==localhost".into()], order).unwrap());
        let mut names = Vec::new();
        let mut token = String::new();
        loop {
            let (page, next) = store.list_page(query.clone(), token, limit).await.unwrap();
            names.extend(page.into_iter().map(|i| i.name));
            if next.is_empty() {
                break;
            }
            token = next;
        }
        if order.contains("desc") {
            names.reverse();
        }
        assert_eq!(names, expected, "order {order:?}, pages of {limit}");
    }
}

#[tokio::test]
async fn writes_in_one_batch_keep_the_records_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d = ns("default");
    // Many writes of one repository at once share batches, where the
    // newest is read from the batch's own entries.
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let (store, d) = (store.clone(), d.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("app:{}", i % 40);
            if i % 3 == 2 {
                let _ = store.delete(d, name, Precondition::None).await;
            } else {
                store.put(d, image(&name, i, &[]), Precondition::None).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    check_clean(&store).await;
    let live = store
        .list_page(Arc::new(Query::all(d.clone())), String::new(), 1000)
        .await
        .unwrap()
        .0;
    let app = repositories(&store, &[], "", 10).await;
    assert_eq!(app.len(), 1);
    assert_eq!(app[0].tags, live.len() as u64);
    let newest = live.iter().max_by_key(|i| (i.updated_at, i.name.clone())).unwrap();
    assert_eq!(app[0].newest, newest.name);
}

#[tokio::test]
async fn a_store_without_the_index_gets_it_at_its_next_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for name in ["a:1", "a:2", "b"] {
            store
                .put(ns("default"), image(name, 1, &[]), Precondition::None)
                .await
                .unwrap();
        }
        // As a store written before imaged kept repositories: no entries,
        // no mark.
        store
            .inner
            .engine
            .with(|backend| {
                let mut effects = vec![Effect {
                    tree: TreeId::Meta,
                    key: meta::REPOSITORIES_INDEXED.to_vec(),
                    value: None,
                }];
                for kind in [layout::index::REPOSITORY, layout::index::REPOSITORY_TAGS] {
                    for entry in backend.scan_prefix(TreeId::Index, &[kind]) {
                        effects.push(Effect {
                            tree: TreeId::Index,
                            key: entry.unwrap().0.to_vec(),
                            value: None,
                        });
                    }
                }
                assert_eq!(effects.len(), 1 + 2 + 3);
                backend.apply(&effects, |_| {})
            })
            .unwrap();
        store.inner.engine.sync().unwrap();
        // Its check knows the store has no index yet, and still finds the
        // images' own entries missing.
        let report = store.check().await.unwrap();
        assert_eq!(report.problem_count, 3, "{:?}", report.problems);
        assert!(repositories(&store, &[], "", 10).await.is_empty());
    }
    let store = open(dir.path());
    assert_eq!(
        summary(&repositories(&store, &[], "", 10).await),
        vec![row("a", 2, "a:2"), row("b", 1, "b")]
    );
    check_clean(&store).await;
}
