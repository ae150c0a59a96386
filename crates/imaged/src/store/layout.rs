//! How the store lays its data out in the engine: the trees, the keys of
//! each, and the protobuf encodings of namespace records and change-log
//! entries (the image record's is [`super::record`]'s). This is the on-disk
//! format (`FORMAT` 3); docs/ARCHITECTURE.md draws it whole.
//!
//! It is public, and deliberately so, for one other user: the benchmark's
//! sled-only server writes the same keys and records to bound what sled
//! alone costs. Nothing here knows a wire API.
//!
//! Keys of the `images` tree are `namespace 0x00 name`. Namespace names are
//! identifiers and image names have no control characters, so the separator
//! never occurs inside either part, and the bytewise key order is exactly
//! "by namespace, then by name (bytewise)". A namespace is one key range.
//!
//! The `index` tree holds secondary indexes, all updated in the same
//! journaled batch as the records they point at; see [`index`] for their keys.
//!
//! Values are protobuf (prost) messages private to the store, so fields can
//! be added later without rewriting the data. The image name is not repeated
//! in the value: the key holds it.

use imaged_types::time::unix_nanos;
use imaged_types::{Image, Labels, repository_of};
use prost::Message;

/// The trees of the store, each a separate keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TreeId {
    /// `images`: `namespace 0x00 name` → [`ImageRecord`](super::record::ImageRecord).
    Images = 0,
    /// `namespaces`: `namespace` → [`NamespaceRecord`].
    Namespaces = 1,
    /// `meta`: the store-wide revision, the store's UUID and the page-token
    /// key.
    Meta = 2,
    /// `index`: secondary indexes (see [`index`]).
    Index = 3,
    /// `changes`: the change log, [`change_key`] → [`ChangeRecord`], one
    /// entry per revision, written in the same batch as the change.
    Changes = 4,
}

impl TreeId {
    /// Every tree, in the order of their numbers.
    pub const ALL: [TreeId; 5] = [
        TreeId::Images,
        TreeId::Namespaces,
        TreeId::Meta,
        TreeId::Index,
        TreeId::Changes,
    ];

    /// The tree's name in the engine.
    pub fn name(self) -> &'static str {
        match self {
            TreeId::Images => "images",
            TreeId::Namespaces => "namespaces",
            TreeId::Meta => "meta",
            TreeId::Index => "index",
            TreeId::Changes => "changes",
        }
    }

    /// The tree numbered `b` (as the journal writes it).
    pub fn from_byte(b: u8) -> Option<TreeId> {
        TreeId::ALL.get(usize::from(b)).copied()
    }
}

/// One write: a key of a tree set to a value, or removed. A batch is a list
/// of these, journaled whole and then applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effect {
    /// The tree written.
    pub tree: TreeId,
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` for a removal.
    pub value: Option<Vec<u8>>,
}

/// Keys of the `meta` tree.
pub mod meta {
    /// The store-wide revision (u64 big-endian), bumped by every change in
    /// the same journaled batch as the change: the last write of a batch.
    pub const REVISION: &[u8] = b"revision";
    /// The store's UUID, made on first open.
    pub const UUID: &[u8] = b"uuid";
    /// The 32-byte secret that signs page tokens, made on first open.
    pub const TOKEN_KEY: &[u8] = b"page-token-key";
    /// The change log's compaction mark (u64 big-endian): the entries up to
    /// it are gone or going, so a watch can start no earlier. Written by the
    /// compactor before it removes them, outside the journal.
    pub const COMPACTED: &[u8] = b"changes-compacted";
    /// Present once the repository index (`index::REPOSITORY` and
    /// `index::REPOSITORY_TAGS`) has been built from the records, as every
    /// store's open does once (a store written before imaged kept it has
    /// none); from then on every write keeps it.
    pub const REPOSITORIES_INDEXED: &[u8] = b"repositories-indexed";
}

/// The key of the change log's entry for `revision`: big-endian, so the
/// tree is in revision order.
pub fn change_key(revision: u64) -> [u8; 8] {
    revision.to_be_bytes()
}

/// The revision a change log key names.
pub fn change_revision(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// One entry of the change log: what one revision changed, with the stored
/// records before and after it, so that a watcher replaying the log sees
/// exactly what a live one saw.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChangeRecord {
    /// The namespace changed, or holding the image changed.
    #[prost(string, tag = "1")]
    pub namespace: String,
    /// The image's name; empty for a change of the namespace itself.
    #[prost(string, tag = "2")]
    pub name: String,
    /// The record before: an [`ImageRecord`](super::record::ImageRecord), or for a namespace its
    /// [`NamespaceRecord`]; absent when the change created it.
    #[prost(bytes = "vec", optional, tag = "3")]
    pub before: Option<Vec<u8>>,
    /// The record after; absent when the change deleted it.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub after: Option<Vec<u8>>,
    /// When the change was planned, nanoseconds since the Unix epoch: what
    /// retention by age and containerd's event timestamps go by.
    #[prost(int64, tag = "5")]
    pub unix_nanos: i64,
    /// Whether the namespace itself changed (its labels, its existence).
    #[prost(bool, tag = "6")]
    pub namespace_change: bool,
}

/// The engine, opened exactly as the daemon opens it, for the one other user
/// of this layout: the benchmark's sled-only server, which applies these
/// keys and records through it without the rest of the store.
pub use super::engine::{Backend, EngineError};

/// Separates the namespace from the image name in a key.
const SEP: u8 = 0;

/// The key of image `name` in namespace `ns`.
pub fn image_key(ns: &str, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(ns.len() + 1 + name.len());
    key.extend_from_slice(ns.as_bytes());
    key.push(SEP);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The key prefix shared by every image of namespace `ns`.
pub fn namespace_prefix(ns: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(ns.len() + 1);
    key.extend_from_slice(ns.as_bytes());
    key.push(SEP);
    key
}

/// Splits an image key into namespace and name.
pub fn split_image_key(key: &[u8]) -> Option<(&str, &str)> {
    let at = key.iter().position(|b| *b == SEP)?;
    let ns = std::str::from_utf8(&key[..at]).ok()?;
    let name = std::str::from_utf8(&key[at + 1..]).ok()?;
    Some((ns, name))
}

/// The kinds of index entries in the `index` tree, the first byte of a key.
pub mod index {
    /// `d ns 0x00 digest 0x00 name`: which names point at a digest.
    pub const DIGEST: u8 = b'd';
    /// `c ns 0x00 created_at(u64 BE ns) name`: images by creation time.
    pub const CREATED: u8 = b'c';
    /// `u ns 0x00 updated_at(u64 BE ns) name`: images by last change.
    pub const UPDATED: u8 = b'u';
    /// `s ns 0x00 size(u64 BE) name`: images by target size.
    pub const SIZE: u8 = b's';
    /// `t ns 0x00 repository 0x00 updated_at(u64 BE ns) name`: each
    /// repository's images by last change, so its newest is its last entry.
    pub const REPOSITORY_TAGS: u8 = b't';
    /// `r ns 0x00 repository` → [`RepositoryRecord`](super::RepositoryRecord):
    /// the repositories of a namespace, by name, with their counts.
    pub const REPOSITORY: u8 = b'r';
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The start of every index key of `kind` in namespace `ns`.
pub fn index_prefix(kind: u8, ns: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + ns.len());
    key.push(kind);
    key.extend_from_slice(ns.as_bytes());
    key.push(SEP);
    key
}

/// The digest index key of `name` pointing at `digest`.
pub fn digest_index_key(ns: &str, digest: &str, name: &str) -> Vec<u8> {
    let mut key = index_prefix(index::DIGEST, ns);
    key.extend_from_slice(digest.as_bytes());
    key.push(SEP);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The prefix of the digest index entries of `digest`.
pub fn digest_index_prefix(ns: &str, digest: &str) -> Vec<u8> {
    let mut key = index_prefix(index::DIGEST, ns);
    key.extend_from_slice(digest.as_bytes());
    key.push(SEP);
    key
}

/// A key of a numeric index (`CREATED`, `UPDATED`, `SIZE`): the value as 8
/// big-endian bytes, so byte order is numeric order, then the name.
pub fn number_index_key(kind: u8, ns: &str, value: i64, name: &str) -> Vec<u8> {
    let mut key = number_index_seek(kind, ns, value);
    key.extend_from_slice(name.as_bytes());
    key
}

/// Where the entries with numeric `value` start in a numeric index.
pub fn number_index_seek(kind: u8, ns: &str, value: i64) -> Vec<u8> {
    let mut key = index_prefix(kind, ns);
    key.extend_from_slice(&(value.max(0) as u64).to_be_bytes());
    key
}

/// Splits a numeric index key (after its prefix) into value and name.
pub fn split_number_index_key(rest: &[u8]) -> Option<(i64, &str)> {
    let (value, name) = rest.split_at_checked(8)?;
    let value = u64::from_be_bytes(value.try_into().ok()?);
    Some((i64::try_from(value).ok()?, std::str::from_utf8(name).ok()?))
}

/// The key of repository `repository`'s record in `ns`.
pub fn repository_key(ns: &str, repository: &str) -> Vec<u8> {
    let mut key = index_prefix(index::REPOSITORY, ns);
    key.extend_from_slice(repository.as_bytes());
    key
}

/// The prefix of the entries of `repository`'s images by last change.
pub fn repository_tags_prefix(ns: &str, repository: &str) -> Vec<u8> {
    let mut key = index_prefix(index::REPOSITORY_TAGS, ns);
    key.extend_from_slice(repository.as_bytes());
    key.push(SEP);
    key
}

/// The entry of `image` among its repository's images by last change.
pub fn repository_tags_key(ns: &str, image: &Image) -> Vec<u8> {
    let mut key = repository_tags_prefix(ns, repository_of(&image.name));
    key.extend_from_slice(&(unix_nanos(image.updated_at).max(0) as u64).to_be_bytes());
    key.extend_from_slice(image.name.as_bytes());
    key
}

/// How many index entries each image has.
pub const IMAGE_INDEX_ENTRIES: usize = 5;

/// Every index key of `image` in `ns`.
pub fn index_keys(ns: &str, image: &Image) -> [Vec<u8>; IMAGE_INDEX_ENTRIES] {
    [
        digest_index_key(ns, image.target.digest.as_str(), &image.name),
        number_index_key(index::CREATED, ns, unix_nanos(image.created_at), &image.name),
        number_index_key(index::UPDATED, ns, unix_nanos(image.updated_at), &image.name),
        number_index_key(index::SIZE, ns, image.target.size, &image.name),
        repository_tags_key(ns, image),
    ]
}

/// The index writes that a change of an image of `ns` from `before` to
/// `after` makes (either absent for a creation or a deletion): each stale
/// key removed (`None`), each fresh one set (`Some` empty value); keys both
/// images have are left as they are.
pub fn index_changes(ns: &str, before: Option<&Image>, after: Option<&Image>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let old = before.map(|image| index_keys(ns, image));
    let new = after.map(|image| index_keys(ns, image));
    let kept = |keys: &Option<[Vec<u8>; IMAGE_INDEX_ENTRIES]>, key: &Vec<u8>| {
        keys.as_ref().is_some_and(|keys| keys.contains(key))
    };
    let stale = old
        .iter()
        .flatten()
        .filter(|key| !kept(&new, key))
        .map(|key| (key.clone(), None));
    let fresh = new
        .iter()
        .flatten()
        .filter(|key| !kept(&old, key))
        .map(|key| (key.clone(), Some(Vec::new())));
    stale.chain(fresh).collect()
}

/// The highest revision a store takes: 2^63. Each write takes the next
/// revision and a write that would pass this one is refused, so the
/// revision never wraps (at a million writes a second it is 292,000 years
/// away), and a restore is refused from a file whose revision leaves no
/// room below it.
pub const MAX_REVISION: u64 = 1 << 63;

/// A namespace as stored. The record exists exactly while the namespace does:
/// from its explicit creation or its first image, until it is deleted.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamespaceRecord {
    /// Labels on the namespace.
    #[prost(btree_map = "string, string", tag = "1")]
    pub labels: Labels,
    /// How many images the namespace holds, kept in the same journaled batch
    /// as the images, so deleting a non-empty namespace is refused cheaply.
    #[prost(uint64, tag = "2")]
    pub images: u64,
    /// Bytes of the namespace's images as stored ([`image_bytes`](super::record::image_bytes) of each),
    /// kept with `images`, for the namespace's quota. Absent in a record
    /// written before imaged kept it, until the open that counts it.
    #[prost(uint64, optional, tag = "3")]
    pub bytes: Option<u64>,
}

/// A repository as stored (`index::REPOSITORY`): written in the batch of
/// every write of one of its images, removed with its last image.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RepositoryRecord {
    /// How many images it holds.
    #[prost(uint64, tag = "1")]
    pub tags: u64,
    /// Its image updated last: the last of its `index::REPOSITORY_TAGS`
    /// entries.
    #[prost(string, tag = "2")]
    pub newest: String,
    /// When `newest` was updated, nanoseconds since the Unix epoch.
    #[prost(int64, tag = "3")]
    pub newest_updated_at: i64,
    /// When one of its images was last written or deleted, nanoseconds since
    /// the Unix epoch. The index built for an older store starts it at
    /// `newest_updated_at`.
    #[prost(int64, tag = "4")]
    pub updated_at: i64,
    /// The revision of that write.
    #[prost(uint64, tag = "5")]
    pub mod_revision: u64,
}

/// The repository record of `repository` stored as `bytes`; damage is a
/// storage error naming it.
pub fn decode_repository(repository: &str, bytes: &[u8]) -> Result<RepositoryRecord, String> {
    RepositoryRecord::decode(bytes).map_err(|e| format!("repository record of {repository:?} does not decode: {e}"))
}

/// The namespace record of `name` stored as `bytes`; damage is a storage
/// error naming the namespace.
pub fn decode_namespace(name: &str, bytes: &[u8]) -> Result<NamespaceRecord, String> {
    NamespaceRecord::decode(bytes).map_err(|e| format!("namespace record of {name:?} does not decode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_by_namespace_then_name() {
        let mut keys = [
            image_key("b", "a"),
            image_key("a", "b/c"),
            image_key("a", "b"),
            image_key("ab", "a"),
        ];
        keys.sort();
        let split: Vec<_> = keys.iter().map(|k| split_image_key(k).unwrap()).collect();
        assert_eq!(split, vec![("a", "b"), ("a", "b/c"), ("ab", "a"), ("b", "a")]);
        assert!(image_key("a", "x").starts_with(&namespace_prefix("a")));
        assert!(!image_key("ab", "x").starts_with(&namespace_prefix("a")));
    }
}
