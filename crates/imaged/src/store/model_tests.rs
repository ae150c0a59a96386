//! Model-based tests of listing: random images, filters, orders and page
//! sizes, walked page by page through the store while random changes land
//! between pages, compared with a plain in-memory model.
//!
//! The model's order is written here independently of `query::Order`: a sort
//! of tuples. The filter itself is the shared one (it has its own tests); what
//! is tested is planning, indexes, pages and tokens.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use imaged_types::{Descriptor, Digest, Image, Labels, NamespaceName};
use proptest::prelude::*;

use imaged_api::containerd::v1 as seed;
use imaged_types::wire::image_to_seed;
use prost::Message;

use super::{Precondition, Query, Store, StoreOptions};
use crate::filter::{Filter, Subject};
use crate::server::seed::SEED_IMAGE;

const NAMES: &[&str] = &[
    "docker.io/library/redis:7",
    "docker.io/library/redis:6",
    "docker.io/library/alpine:3",
    "docker.io/x/y:1",
    "quay.io/a:1",
    "quay.io/b:2",
    "ghcr.io/c:latest",
    "a",
    "b",
    "zz",
    "docker.io/library/redis:7-alpine",
    "docker.iox",
];

const FILTERS: &[&[&str]] = &[
    &[],
    &["labels.env==prod"],
    &["labels.env!=prod"],
    &["name~=^docker\\.io/library/"],
    &["name~=^quay"],
    &["name==a"],
    &["target.size>2"],
    &["target.size<=3,labels.team"],
    &["name~=^quay", "labels.env==dev"],
    &["created_at>=1970-01-01T00:00:03Z"],
];

const ORDERS: &[&str] = &[
    "",
    "name desc",
    "created_at",
    "created_at desc",
    "target.size",
    "target.size desc, name desc",
    "updated_at",
    "updated_at desc",
    "target.size, created_at desc",
];

/// One random change.
#[derive(Debug, Clone)]
enum Change {
    /// Create (or re-point) a name with a size, creation second and labels.
    Put {
        name: usize,
        size: i64,
        second: u64,
        env: u8,
    },
    /// Delete a name.
    Delete { name: usize },
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (0..NAMES.len(), 1i64..6, 0u64..6, 0u8..3)
            .prop_map(|(name, size, second, env)| Change::Put { name, size, second, env }),
        1 => (0..NAMES.len()).prop_map(|name| Change::Delete { name }),
    ]
}

fn digest(size: i64) -> Digest {
    Digest::parse(&format!("sha256:{size:064x}")).unwrap()
}

fn labels(env: u8) -> Labels {
    let mut labels = Labels::new();
    match env {
        0 => {}
        1 => {
            labels.insert("env".into(), "prod".into());
        }
        _ => {
            labels.insert("env".into(), "dev".into());
            labels.insert("team".into(), "a".into());
        }
    }
    labels
}

/// Applies a change to the store and the model. New names are created with a
/// chosen creation time (many ties); existing ones are updated in full (new
/// target, labels and update time).
async fn apply(store: &Store, ns: &NamespaceName, model: &mut BTreeMap<String, Image>, change: &Change) {
    match *change {
        Change::Put {
            name,
            size,
            second,
            env,
        } => {
            let name = NAMES[name].to_string();
            let image = Image {
                name: name.clone(),
                labels: labels(env),
                target: Descriptor {
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    digest: digest(size),
                    size,
                    annotations: Labels::new(),
                },
                created_at: UNIX_EPOCH,
                updated_at: UNIX_EPOCH,
                create_revision: 0,
                mod_revision: 0,
            };
            let stored = if model.contains_key(&name) {
                let update = imaged_types::ImageUpdate {
                    name: name.clone(),
                    labels: image.labels.clone(),
                    annotations: Labels::new(),
                    target: Ok(image.target.clone()),
                };
                store.update(ns.clone(), update, Vec::new(), None).await.unwrap().image
            } else {
                let at = UNIX_EPOCH + Duration::from_secs(second);
                store.create(ns.clone(), image, Some(at)).await.unwrap().image
            };
            model.insert(name, stored);
        }
        Change::Delete { name } => {
            let name = NAMES[name];
            if model.remove(name).is_some() {
                store.delete(ns.clone(), name.into(), Precondition::None).await.unwrap();
            }
        }
    }
}

/// The model's order key of an image for an `order_by` string: a tuple
/// compared lexicographically, with descending parts negated and the name
/// last (descending names compare by their reversed bytes).
fn model_key(order: &str, image: &Image) -> (Vec<i128>, Vec<i32>) {
    let nanos = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i128;
    let mut numbers = Vec::new();
    let mut name_desc = false;
    for term in order.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let mut words = term.split_whitespace();
        let key = words.next().unwrap();
        let desc = words.next() == Some("desc");
        let value = match key {
            "name" => {
                name_desc = desc;
                break;
            }
            "created_at" => nanos(image.created_at),
            "updated_at" => nanos(image.updated_at),
            "target.size" => image.target.size as i128,
            other => panic!("model does not know {other}"),
        };
        numbers.push(if desc { -value } else { value });
    }
    let mut name: Vec<i32> = image.name.bytes().map(i32::from).collect();
    name.push(-1);
    if name_desc {
        name.iter_mut().for_each(|b| *b = -*b);
    }
    (numbers, name)
}

fn expected(model: &BTreeMap<String, Image>, filters: &[&str], order: &str) -> Vec<String> {
    let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
    let filter = Filter::parse(Subject::Image, "filters", &filters).unwrap();
    let mut images: Vec<&Image> = model.values().filter(|i| filter.matches(*i)).collect();
    images.sort_by_key(|i| model_key(order, i));
    images.into_iter().map(|i| i.name.clone()).collect()
}

/// Which orders never move an image during its life.
fn order_is_stable(order: &str) -> bool {
    !order.contains("updated_at") && !order.contains("target.size")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Without changes, a walk in pages is exactly the model's list.
    #[test]
    fn pages_match_the_model(
        setup in proptest::collection::vec(change(), 1..40),
        filter in 0..FILTERS.len(),
        order in 0..ORDERS.len(),
        page in 1usize..6,
    ) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let ns = NamespaceName::default_namespace();
            let mut model = BTreeMap::new();
            for c in &setup {
                apply(&store, &ns, &mut model, c).await;
            }
            let filters: Vec<String> = FILTERS[filter].iter().map(|s| s.to_string()).collect();
            let query = Arc::new(Query::new(ns.clone(), &filters, ORDERS[order]).unwrap());
            let mut walked = Vec::new();
            let mut token = String::new();
            for pages in 0.. {
                prop_assert!(pages <= NAMES.len(), "the walk does not end");
                // The page as the wire gets it, straight from the records,
                // is the same page.
                let encoded = crate::server::encoded_page(&store, query.clone(), &token, page, usize::MAX, Some(&SEED_IMAGE))
                    .await
                    .unwrap();
                let (images, next) = store.list_page(query.clone(), token, page).await.unwrap();
                let answer = seed::ListResponse::decode(&encoded.items.encode_to_vec()[..]).unwrap();
                prop_assert_eq!(&answer.images, &images.iter().cloned().map(image_to_seed).collect::<Vec<_>>());
                prop_assert_eq!(&answer.next_page_token, &next);
                prop_assert_eq!(encoded.count, images.len());
                prop_assert!(images.len() <= page);
                prop_assert!(!images.is_empty() || next.is_empty(), "an empty page must be the last");
                walked.extend(images.into_iter().map(|i| i.name));
                if next.is_empty() { break; }
                token = next;
            }
            prop_assert_eq!(walked, expected(&model, FILTERS[filter], ORDERS[order]),
                "filters {:?} order {:?} page {}", FILTERS[filter], ORDERS[order], page);
            let report = store.check().await.unwrap();
            prop_assert_eq!(report.problem_count, 0, "{:?}", report.problems);
            store.close().await;
            Ok(())
        })?;
    }

    /// With changes between pages: nothing twice unless it changed, every
    /// image that was there throughout and never changed exactly once, and
    /// for orders on keys that never change, every image there throughout
    /// exactly once, in order. (A name deleted and created again is a new
    /// image, with a creation time of its own: a walk may meet it once per
    /// life.)
    #[test]
    fn walks_under_concurrent_changes(
        setup in proptest::collection::vec(change(), 1..40),
        changes in proptest::collection::vec(proptest::collection::vec(change(), 0..4), 1..20),
        filter in 0..FILTERS.len(),
        order in 0..ORDERS.len(),
        page in 1usize..5,
    ) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let ns = NamespaceName::default_namespace();
            let mut model = BTreeMap::new();
            for c in &setup {
                apply(&store, &ns, &mut model, c).await;
            }
            let filters: Vec<String> = FILTERS[filter].iter().map(|s| s.to_string()).collect();
            let order_by = ORDERS[order];
            let query = Arc::new(Query::new(ns.clone(), &filters, order_by).unwrap());
            let at_start: BTreeSet<String> = expected(&model, FILTERS[filter], order_by).into_iter().collect();
            let mut touched: BTreeSet<String> = BTreeSet::new();
            let mut deletes: BTreeMap<String, usize> = BTreeMap::new();
            let mut walked: Vec<Image> = Vec::new();
            let mut token = String::new();
            let mut steps = changes.iter();
            for pages in 0.. {
                // Each page either ends the walk or advances past at least one
                // name, and at most every name is added once per change.
                prop_assert!(pages <= NAMES.len() * (changes.len() + 2), "the walk does not end");
                let (images, next) = store.list_page(query.clone(), token, page).await.unwrap();
                walked.extend(images);
                if next.is_empty() { break; }
                token = next;
                for c in steps.next().into_iter().flatten() {
                    let name = match c { Change::Put { name, .. } | Change::Delete { name } => NAMES[*name] };
                    touched.insert(name.to_string());
                    if matches!(c, Change::Delete { .. }) && model.contains_key(name) {
                        *deletes.entry(name.to_string()).or_default() += 1;
                    }
                    apply(&store, &ns, &mut model, c).await;
                }
            }
            let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
            for image in &walked {
                *seen.entry(image.name.as_str()).or_default() += 1;
            }
            for (name, count) in &seen {
                prop_assert!(*count == 1 || touched.contains(*name),
                    "{name} seen {count} times without changing (order {order_by:?})");
            }
            for name in at_start.iter().filter(|n| !touched.contains(*n)) {
                prop_assert_eq!(seen.get(name.as_str()).copied(), Some(1),
                    "{} was there throughout, unchanged, order {:?}", name, order_by);
            }
            if order_is_stable(order_by) {
                // Names never change and creation times stay with the name
                // until it is deleted: stronger guarantees hold. Each life of
                // a name is met at most once.
                for (name, count) in &seen {
                    let lives = 1 + deletes.get(*name).copied().unwrap_or(0);
                    prop_assert!(*count <= lives, "{} seen {} times in {} lives in a stable order {:?}",
                        name, count, lives, order_by);
                }
                let keys: Vec<_> = walked.iter().map(|i| model_key(order_by, i)).collect();
                prop_assert!(keys.windows(2).all(|w| w[0] < w[1]), "out of order: {:?}",
                    walked.iter().map(|i| &i.name).collect::<Vec<_>>());
            }
            store.close().await;
            Ok(())
        })?;
    }
}
