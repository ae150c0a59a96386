//! Micro-benchmarks of the store's hot paths, so regressions show in review:
//! record encoding and decoding, journal entries, the record cache, filter
//! parsing and matching, page tokens, and one durable put through the whole
//! store (writer, journal, sled), a cached Get and a page of images, each
//! read as images and as wire bytes.
//!
//! `cargo bench -p imaged --bench hot_paths`

use std::hint::black_box;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use criterion::{Criterion, criterion_group, criterion_main};
use imaged::filter::{Filter, Subject};
use imaged::server::seed::SEED_IMAGE;
use imaged::store::internals::{Entry, RecordCache, Tokens};
use imaged::store::layout::{Effect, TreeId};
use imaged::store::record::ImageRecord;
use imaged::store::{Precondition, Query, Store, StoreOptions};
use imaged_types::{Descriptor, Digest, Image, Labels, NamespaceName};
use prost::Message;

imaged::global_allocator!();

fn image(n: u64) -> Image {
    Image {
        name: format!("registry.example/team-{:03}/image-{n:09}:latest", n % 997),
        labels: [
            ("org.example/team".to_string(), format!("team-{}", n % 997)),
            ("env".to_string(), "prod".to_string()),
        ]
        .into_iter()
        .collect(),
        target: Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: Digest::parse(&format!("sha256:{n:064x}")).unwrap(),
            size: 1000 + n as i64,
            annotations: Labels::new(),
        },
        created_at: UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        updated_at: UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_100),
        create_revision: 0,
        mod_revision: 0,
    }
}

fn records(c: &mut Criterion) {
    let img = image(42);
    let bytes = ImageRecord::from_image(&img, 1, 2).encode_to_vec();
    c.bench_function("record encode", |b| {
        b.iter(|| ImageRecord::from_image(black_box(&img), 1, 2).encode_to_vec())
    });
    c.bench_function("record decode", |b| {
        b.iter(|| {
            ImageRecord::decode(black_box(&bytes[..]))
                .unwrap()
                .into_image(&img.name)
                .unwrap()
        })
    });
}

fn journal_and_cache(c: &mut Criterion) {
    // A batch of 16 creates: a record and 4 index entries each, the
    // namespace record and the revision.
    let mut effects = Vec::new();
    for n in 0..16 {
        let img = image(n);
        let key = format!("default\0{}", img.name).into_bytes();
        effects.push(Effect {
            tree: TreeId::Images,
            key: key.clone(),
            value: Some(ImageRecord::from_image(&img, n, n).encode_to_vec()),
        });
        for kind in [b'd', b'c', b'u', b's'] {
            let mut index = vec![kind];
            index.extend_from_slice(&key);
            effects.push(Effect {
                tree: TreeId::Index,
                key: index,
                value: Some(Vec::new()),
            });
        }
        effects.push(Effect {
            tree: TreeId::Namespaces,
            key: b"default".to_vec(),
            value: Some(vec![0; 4]),
        });
    }
    let entry = Entry {
        first: 1,
        last: 16,
        effects,
    };
    c.bench_function("journal entry encode (16 creates)", |b| {
        b.iter(|| black_box(&entry).encode())
    });

    let cache = RecordCache::new(8 << 20);
    let record = ImageRecord::from_image(&image(7), 1, 1).encode_to_vec();
    for n in 0..4000u64 {
        cache.set(format!("default\0{n}").as_bytes(), Some(&record));
    }
    c.bench_function("record cache hit", |b| {
        b.iter(|| cache.get(black_box(b"default\x001234")).unwrap())
    });
}

fn filters(c: &mut Criterion) {
    let filters = vec![
        "labels.env==prod,name~=^registry\\.example/team-04".to_string(),
        "target.size>=2000,created_at<2024-01-01".to_string(),
    ];
    c.bench_function("filter parse", |b| {
        b.iter(|| Filter::parse(Subject::Image, "filters", black_box(&filters)).unwrap())
    });
    let filter = Filter::parse(Subject::Image, "filters", &filters).unwrap();
    let img = image(42);
    c.bench_function("filter match", |b| b.iter(|| filter.matches(black_box(&img))));
}

fn tokens(c: &mut Criterion) {
    let tokens = Tokens::new([7; 32]);
    let query = Query::new(
        NamespaceName::default_namespace(),
        &["labels.env==prod".to_string()],
        "created_at desc",
    )
    .unwrap();
    let position = query.order().position(&image(42));
    let token = tokens.encode(&query, &position);
    c.bench_function("page token encode", |b| {
        b.iter(|| tokens.encode(black_box(&query), black_box(&position)))
    });
    c.bench_function("page token decode", |b| {
        b.iter(|| tokens.decode(black_box(&query), black_box(&token)).unwrap())
    });
}

fn durable_put(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
    let ns = NamespaceName::default_namespace();
    let mut n = 0u64;
    c.bench_function("durable put, concurrency 1 (store only)", |b| {
        b.iter(|| {
            n += 1;
            runtime
                .block_on(store.put(ns.clone(), image(n), Precondition::None))
                .unwrap()
        })
    });
    // What the reads below find, also when a filter skipped the puts above.
    for n in 1..=200 {
        runtime
            .block_on(store.put(ns.clone(), image(n), Precondition::None))
            .unwrap();
    }
    let name = image(1).name;
    c.bench_function("get of a cached image (store only)", |b| {
        b.iter(|| runtime.block_on(store.get(&ns, name.clone())).unwrap())
    });
    c.bench_function(
        "get of a cached image, then converted and encoded by prost for the seed API",
        |b| {
            b.iter(|| {
                let image = runtime.block_on(store.get(&ns, name.clone())).unwrap();
                imaged_types::wire::image_to_seed(image).encode_to_vec()
            })
        },
    );
    c.bench_function(
        "get of a cached image, encoded for the seed API from its record (store only)",
        |b| {
            b.iter(|| {
                runtime
                    .block_on(imaged::server::get_encoded(&store, &ns, &name, &SEED_IMAGE))
                    .unwrap()
            })
        },
    );
    let query = Arc::new(Query::all(ns.clone()));
    c.bench_function("page of 100 by name (store only)", |b| {
        b.iter(|| {
            runtime
                .block_on(store.list_page(query.clone(), String::new(), 100))
                .unwrap()
        })
    });
    c.bench_function("page of 100 by name, encoded for the seed API (store only)", |b| {
        b.iter(|| {
            let page = imaged::server::encoded_page(&store, query.clone(), "", 100, usize::MAX, Some(&SEED_IMAGE));
            runtime.block_on(page).unwrap()
        })
    });
    runtime.block_on(store.close());
}

criterion_group!(benches, records, journal_and_cache, filters, tokens, durable_put);
criterion_main!(benches);
