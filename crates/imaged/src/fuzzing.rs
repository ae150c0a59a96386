//! The bodies of the fuzz targets in `fuzz/`, here so that the kept corpus
//! also replays as an ordinary test on stable (`tests/fuzz_corpus.rs`).
//! Each takes arbitrary bytes and must return, never panic: a refusal is a
//! fine answer. Not an API.

use std::sync::LazyLock;

use imaged_api::containerd::services::images::v1 as ctrd;
use imaged_api::containerd::services::namespaces::v1 as ctrd_ns;
use imaged_api::containerd::v1 as seed;
use imaged_types::wire;
use imaged_types::{Digest, Image, NamespaceName};
use prost::Message;

use crate::filter::{Filter, Subject};
use crate::store::Query;
use crate::store::internals::{Entry, Tokens, read_journal};

/// A target's body: arbitrary bytes in, a return (never a panic) out.
pub type Target = fn(&[u8]);

/// The targets, by name: what `fuzz/` builds and the corpus replays.
pub const TARGETS: &[(&str, Target)] = &[
    ("filter", filter),
    ("validation", validation),
    ("page_token", page_token),
    ("journal", journal),
    ("requests", requests),
    ("authority", authority),
];

/// Lines of the input as strings, for targets that take several.
fn lines(data: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(data).lines().map(str::to_owned).collect()
}

/// The filter parser, for every subject, and a match against an image.
pub fn filter(data: &[u8]) {
    let filters = lines(data);
    for subject in [Subject::Image, Subject::Namespace, Subject::Lease] {
        if let Ok(filter) = Filter::parse(subject, "filters", &filters) {
            let _ = filter.matches(&*SAMPLE);
        }
    }
}

static SAMPLE: LazyLock<Image> = LazyLock::new(|| {
    let mut image = wire::image_from_seed(Some(seed::Image {
        name: "docker.io/library/redis:7".into(),
        target: Some(imaged_api::containerd::types::Descriptor {
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 1,
            annotations: Default::default(),
        }),
        ..Default::default()
    }))
    .expect("a valid sample image");
    image.labels.insert("env".into(), "prod".into());
    image
});

/// Names, digests, namespaces and whole images from arbitrary text.
pub fn validation(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = Digest::parse(&text);
    let _ = NamespaceName::parse("namespace", &text);
    let _ = imaged_types::image::validate_name("name", &text);
    let parts = lines(data);
    let part = |i: usize| parts.get(i).cloned().unwrap_or_default();
    let image = seed::Image {
        name: part(0),
        labels: [(part(1), part(2))].into(),
        target: Some(imaged_api::containerd::types::Descriptor {
            media_type: part(3),
            digest: part(4),
            size: part(5).parse().unwrap_or(-1),
            annotations: [(part(6), part(7))].into(),
        }),
        ..Default::default()
    };
    let _ = wire::image_from_seed(Some(image));
}

/// Page tokens: arbitrary text decoded against a query.
pub fn page_token(data: &[u8]) {
    static TOKENS: LazyLock<Tokens> = LazyLock::new(|| Tokens::new([7; 32]));
    static QUERY: LazyLock<Query> =
        LazyLock::new(|| Query::new(NamespaceName::default_namespace(), &[], "").expect("the default query"));
    let _ = TOKENS.decode(&QUERY, &String::from_utf8_lossy(data));
}

/// A journal file's contents: the replay's reading refuses or accepts.
pub fn journal(data: &[u8]) {
    let _ = read_journal(data);
    // And one entry's payload encoding round trip, when it decodes.
    if let Some(entry) = Entry::decode_payload(data) {
        let _ = entry.encode();
    }
}

/// Request messages of every handler, decoded from the bytes, through the
/// conversions and checks the handlers make before the store.
pub fn requests(data: &[u8]) {
    if let Ok(r) = seed::PutRequest::decode(data) {
        let _ = wire::image_from_seed(r.image);
        let _ = wire::precondition_from_seed(r.precondition);
    }
    if let Ok(r) = seed::ListRequest::decode(data) {
        let _ = Query::new(NamespaceName::default_namespace(), &r.filters, &r.order_by);
    }
    if let Ok(r) = seed::DeleteRequest::decode(data) {
        let _ = wire::precondition_from_seed(r.precondition);
    }
    if let Ok(r) = ctrd::CreateImageRequest::decode(data) {
        let _ = wire::image_from_containerd(r.image);
        if let Some(ts) = r.source_date_epoch {
            let _ = wire::time_from_timestamp("source_date_epoch", &ts);
        }
    }
    if let Ok(r) = ctrd::UpdateImageRequest::decode(data) {
        let _ = wire::image_from_containerd(r.image);
    }
    if let Ok(r) = ctrd::ListImagesRequest::decode(data) {
        let _ = Filter::parse(Subject::Image, "filters", &r.filters);
    }
    if let Ok(r) = ctrd_ns::CreateNamespaceRequest::decode(data)
        && let Some(ns) = r.namespace
    {
        let _ = NamespaceName::parse("namespace.name", &ns.name);
        let _ = imaged_types::image::validate_label_set("namespace.labels", &ns.labels);
    }
}

/// The authority fix's scan of a client's first bytes.
pub fn authority(data: &[u8]) {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(data);
    let mut fix = crate::transport::authority::AuthorityFix::default();
    let ready = fix.scan(&mut bytes);
    assert!(ready <= bytes.len());
}
