//! The store: the one place where image records live and where every rule of
//! every wire API is applied.
//!
//! # Layout
//! - [`format`]: the data directory, its lock and its format version.
//! - [`record`]: keys, index keys and record encodings in sled.
//! - [`query`]: list queries, plans, keyset pages and page tokens.
//! - [`encode`]: Get and list answers written straight from stored records
//!   into a wire API's protobuf.
//! - [`writer`]: the writer thread (batching, group commit), and the periodic
//!   reopen of sled that bounds its recovery.
//! - [`journal`]: the write-ahead journal that makes each batch durable.
//! - [`durable`]: the barrier that makes everything sled holds survive power
//!   loss; a checkpoint of the journal.
//! - [`cache`]: recently read and written records, for Gets.
//! - [`readers`]: the threads that make point reads in sled.
//! - [`check`]: verifies indexes and counters against the records.
//!
//! Gets answered from the record cache run on the async executor; other
//! point reads (a Get that misses, a namespace) run on the reader threads,
//! and scans (list pages, counts, checks) on tokio's blocking pool. Writes go
//! to the writer thread. No sled call ever runs on the async
//! executor. Both reach sled through one shared handle, which the writer
//! alone replaces when it reopens sled (readers wait meanwhile).
//!
//! # sled trees
//! - `images`: `namespace 0x00 name` → image record;
//! - `index`: secondary indexes (by digest, creation time, change time and
//!   size), written in the same journaled batch as the records;
//! - `namespaces`: namespace → labels, whether it was created explicitly, and
//!   how many images it holds;
//! - `meta`: the store-wide revision, bumped by every change in the same
//!   journaled batch as the change, and the store's UUID.

pub mod cache;
pub mod check;
pub mod durable;
pub mod encode;
pub mod format;
pub mod journal;
pub mod query;
pub mod readers;
pub mod record;
pub mod writer;

#[cfg(test)]
mod model_tests;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use std::time::SystemTime;

use encode::WireImage;
use imaged_api::encoded::EncodedImageList;
use imaged_types::image::validate_name;
use imaged_types::{Image, ImageUpdate, Namespace, NamespaceName};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

pub use format::{DataDir, FORMAT_VERSION, OpenError};
pub use imaged_types::Precondition;

use crate::error::Error;
use crate::filter::{Filter, NamespaceFields};
use cache::RecordCache;
use durable::{Barrier, sync_dir};
use journal::Journal;
use query::Found;
pub use query::{MAX_PAGE_SIZE, Order, Query};
use readers::Readers;
use record::{ImageRecord, NamespaceRecord, image_key};
pub use writer::SledCache;
use writer::{Durability, Job, Msg, Op, Outcome, Reopen, SharedTrees, Trees};

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache: sized from the store's files each time sled opens
    /// (see [`SledCache`]). sled's own default is 1 GiB, and its real memory
    /// use can be several times the setting.
    pub sled_cache: SledCache,
    /// The record cache that answers Gets without sled, in bytes.
    pub record_cache_bytes: usize,
    /// Journaled bytes after which the writer closes and reopens sled, so
    /// that sled writes a snapshot and an open never scans more log than
    /// this much writing made; 0 never reopens (see `writer::Reopen`).
    pub reopen_after_bytes: u64,
    /// Threads that make point reads in sled (see [`readers`]).
    pub reader_threads: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sled_cache: SledCache {
                min_bytes: 32 << 20,
                max_bytes: 256 << 20,
            },
            record_cache_bytes: 8 * 1024 * 1024,
            reopen_after_bytes: 64 * 1024 * 1024,
            reader_threads: default_reader_threads(),
        }
    }
}

/// One reader thread per core, at least 2 and at most 8. Under load one or
/// two do the reading; the others wake only for reads stalled on the disk.
fn default_reader_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8)
}

/// A page of images encoded for the wire (see [`Store::list_page_encoded`]).
#[derive(Debug, Default)]
pub struct EncodedPage {
    /// The images and the next page's token.
    pub list: EncodedImageList,
    /// How many images the page holds.
    pub count: usize,
}

/// A handle on the open store. Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    trees: SharedTrees,
    cache: Arc<RecordCache>,
    readers: Readers,
    jobs: mpsc::Sender<Msg>,
    failed: Arc<AtomicBool>,
    writer: Mutex<Option<JoinHandle<()>>>,
    uuid: String,
    tokens: query::Tokens,
    /// sled's page cache as last sized, in bytes.
    sled_cache: Arc<AtomicU64>,
    _dir: DataDir,
}

/// Key of the server's UUID in the `meta` tree.
const UUID_KEY: &[u8] = b"uuid";
/// Key of the secret that signs page tokens in the `meta` tree.
const TOKEN_KEY: &[u8] = b"page-token-key";

/// The store's UUID and page-token secret, made and made durable on first
/// open, so both survive restarts.
fn identity(trees: &Trees, barrier: &mut Barrier) -> std::io::Result<(String, [u8; 32])> {
    let meta = &trees.meta;
    let get = |key: &[u8]| meta.get(key).map_err(std::io::Error::other);
    let mut made = false;
    let uuid = match get(UUID_KEY)? {
        Some(uuid) => String::from_utf8_lossy(&uuid).into_owned(),
        None => {
            let uuid = crate::ids::uuid_v4()?;
            meta.insert(UUID_KEY, uuid.as_bytes()).map_err(std::io::Error::other)?;
            made = true;
            uuid
        }
    };
    let token_key = match get(TOKEN_KEY)?.and_then(|k| <[u8; 32]>::try_from(&*k).ok()) {
        Some(key) => key,
        None => {
            let key = crate::ids::random_bytes::<32>()?;
            meta.insert(TOKEN_KEY, &key).map_err(std::io::Error::other)?;
            made = true;
            key
        }
    };
    if made {
        barrier.sync(&trees.db)?;
    }
    Ok((uuid, token_key))
}

/// How many jobs may wait for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 4096;

impl Store {
    /// Opens (or creates) the store in data directory `root`, taking its lock.
    /// Blocking: call it before serving, or on a blocking thread.
    pub fn open(root: &Path, options: &StoreOptions) -> Result<Store, OpenError> {
        let dir = DataDir::open(root)?;
        let sled_dir = dir.sled_dir();
        let sled_err = |source| OpenError::Sled {
            path: sled_dir.clone(),
            source,
        };
        let cache_bytes = options.sled_cache.for_dir(&sled_dir);
        let trees = Trees::open(&sled_dir, cache_bytes).map_err(sled_err)?;
        let sled_cache_now = Arc::new(AtomicU64::new(cache_bytes));
        sync_dir(&sled_dir)
            .and_then(|_| sync_dir(root))
            .map_err(|source| OpenError::Io {
                what: "syncing",
                path: sled_dir.clone(),
                source,
            })?;
        let recovered = trees
            .meta
            .get(writer::REVISION_KEY)
            .map_err(sled_err)?
            .and_then(|v| <[u8; 8]>::try_from(&*v).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let barrier = Barrier::new(&sled_dir).map_err(|source| OpenError::Io {
            what: "opening",
            path: sled_dir.join("db"),
            source,
        })?;
        // Batches acknowledged after the last checkpoint are in the journal;
        // sled has those it wrote out before stopping. Replay the rest, then
        // checkpoint, so the journal can be overwritten from its start.
        let journal_path = dir.journal_path();
        let journal_err = |problem: String| OpenError::Journal {
            path: journal_path.clone(),
            problem,
        };
        let (journal, entries) = Journal::open(&journal_path).map_err(|e| journal_err(e.to_string()))?;
        let entries = entries.map_err(|e| journal_err(e.to_string()))?;
        let revision = writer::replay(&trees, &entries, recovered).map_err(journal_err)?;
        if revision != recovered {
            tracing::info!(
                from = recovered + 1,
                to = revision,
                "replayed acknowledged writes from the journal"
            );
        }
        let mut durability = Durability::new(barrier, journal);
        durability.checkpoint(&trees.db).map_err(|source| OpenError::Io {
            what: "checkpointing",
            path: sled_dir.clone(),
            source,
        })?;
        let (uuid, token_key) = identity(&trees, &mut durability.barrier).map_err(|source| OpenError::Io {
            what: "recording the server uuid and token key in",
            path: sled_dir.clone(),
            source,
        })?;

        let failed = Arc::new(AtomicBool::new(false));
        let (jobs, jobs_rx) = mpsc::channel(QUEUE_DEPTH);
        let writer_failed = failed.clone();
        let trees: SharedTrees = Arc::new(RwLock::new(Some(trees)));
        let writer_trees = trees.clone();
        let cache = Arc::new(RecordCache::new(options.record_cache_bytes));
        let writer_cache = cache.clone();
        let reopen = Reopen {
            dir: sled_dir.clone(),
            cache: options.sled_cache,
            cache_now: sled_cache_now.clone(),
            after_bytes: options.reopen_after_bytes,
        };
        let writer = std::thread::Builder::new()
            .name("imaged-writer".into())
            .spawn(move || {
                writer::run_writer(
                    jobs_rx,
                    writer_trees,
                    revision,
                    durability,
                    reopen,
                    writer_cache,
                    writer_failed,
                )
            })
            .map_err(|source| OpenError::Io {
                what: "starting the writer thread for",
                path: root.to_owned(),
                source,
            })?;
        let readers = Readers::new(options.reader_threads).map_err(|source| OpenError::Io {
            what: "starting the reader threads for",
            path: root.to_owned(),
            source,
        })?;
        Ok(Store {
            inner: Arc::new(Inner {
                trees,
                cache,
                readers,
                jobs,
                failed,
                writer: Mutex::new(Some(writer)),
                uuid,
                tokens: query::Tokens::new(token_key),
                sled_cache: sled_cache_now,
                _dir: dir,
            }),
        })
    }

    /// Returns image `name` of namespace `ns`.
    pub async fn get(&self, ns: &NamespaceName, name: String) -> Result<Image, Error> {
        self.read_image(ns, name, decode_image).await
    }

    /// Returns image `name` of namespace `ns` as `wire`'s `Image` message,
    /// encoded straight from its stored record: what a Get answers. The same
    /// image, and the same errors, as [`Store::get`].
    pub async fn get_encoded(
        &self,
        ns: &NamespaceName,
        name: String,
        wire: &'static WireImage,
    ) -> Result<Vec<u8>, Error> {
        self.read_image(ns, name, move |name, record| encode::encode_image(name, record, wire))
            .await
    }

    /// Reads the record of image `name` from the record cache, or else from
    /// sled on the reader pool, and makes `answer` of it.
    async fn read_image<T: Send + 'static>(
        &self,
        ns: &NamespaceName,
        name: String,
        answer: impl FnOnce(&str, &[u8]) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        validate_name("name", &name)?;
        let key = image_key(ns.as_str(), &name);
        if let Some(bytes) = self.inner.cache.get(&key) {
            return answer(&name, &bytes);
        }
        let ns = ns.clone();
        let cache = self.inner.cache.clone();
        let seen = cache.generation(&key);
        self.point_read(move |trees| match trees.images.get(&key)? {
            Some(bytes) => {
                cache.fill(&key, &bytes, seen);
                answer(&name, &bytes)
            }
            None => Err(Error::image_not_found(ns.as_str(), &name)),
        })
        .await
    }

    /// One page of `query`: up to `limit` images after the position
    /// `page_token` names (the start when empty), and the token of the next
    /// page (empty after the last). The cost depends on `limit`, and on how
    /// many non-matching images lie between matches, never on the position.
    pub async fn list_page(
        &self,
        query: Arc<Query>,
        page_token: String,
        limit: usize,
    ) -> Result<(Vec<Image>, String), Error> {
        let after = self.position(&query, &page_token)?;
        let inner = self.inner.clone();
        self.blocking(move |trees| {
            let mut found = query::collect(trees, &query, after.as_ref(), limit.saturating_add(1))?;
            let more = found.len() > limit;
            found.truncate(limit);
            let images = found.iter().map(Found::image).collect::<Result<Vec<_>, _>>()?;
            let next = match images.last() {
                Some(last) if more => inner.tokens.encode(&query, &query.order().position(last)),
                _ => String::new(),
            };
            Ok((images, next))
        })
        .await
    }

    /// A page of `query` as it goes on the wire: like [`Store::list_page`],
    /// but encoded as `wire` images straight from the stored records, and
    /// cut short (its token then resuming after the last image kept) where
    /// more would pass `budget` bytes of encoded images. A page holds at
    /// least one image however large. With no `wire`, the images are only
    /// counted.
    pub async fn list_page_encoded(
        &self,
        query: Arc<Query>,
        page_token: String,
        limit: usize,
        budget: usize,
        wire: Option<&'static WireImage>,
    ) -> Result<EncodedPage, Error> {
        let after = self.position(&query, &page_token)?;
        let inner = self.inner.clone();
        self.blocking(move |trees| {
            let found = query::collect(trees, &query, after.as_ref(), limit.saturating_add(1))?;
            let mut page = EncodedPage::default();
            for entry in found.iter().take(limit) {
                if let Some(wire) = wire {
                    let before = page.list.images.len();
                    encode::push_image(&mut page.list, entry, wire)?;
                    if page.list.images.len() > budget && page.count > 0 {
                        page.list.images.truncate(before);
                        break;
                    }
                }
                page.count += 1;
            }
            // More matched than the page holds: resume after its last image
            // (a page of none, `limit` 0, has no position to resume from).
            if page.count < found.len()
                && let Some(last) = found[..page.count].last()
            {
                let last = last.image()?;
                page.list.next_page_token = inner.tokens.encode(&query, &query.order().position(&last));
            }
            Ok(page)
        })
        .await
    }

    /// The position a page token names, or the start for an empty token.
    fn position(&self, query: &Query, page_token: &str) -> Result<Option<query::Position>, Error> {
        if page_token.is_empty() {
            Ok(None)
        } else {
            Ok(Some(self.inner.tokens.decode(query, page_token)?))
        }
    }

    /// Returns namespace `name`.
    pub async fn get_namespace(&self, name: NamespaceName) -> Result<Namespace, Error> {
        self.point_read(move |trees| match trees.namespaces.get(name.as_str())? {
            Some(bytes) => Ok(Namespace {
                labels: decode_namespace(&name, &bytes)?.labels,
                name,
            }),
            None => Err(Error::NotFound(format!("namespace {:?} not found", name.as_str()))),
        })
        .await
    }

    /// Returns the namespaces matching `filter`, ordered by name.
    pub async fn list_namespaces(&self, filter: Filter) -> Result<Vec<Namespace>, Error> {
        self.blocking(move |trees| {
            let mut namespaces = Vec::new();
            for entry in trees.namespaces.iter() {
                let (key, value) = entry?;
                let name = std::str::from_utf8(&key)
                    .ok()
                    .and_then(|n| NamespaceName::parse("namespace", n).ok())
                    .ok_or_else(|| Error::Storage(format!("malformed namespace key {key:?}")))?;
                let record = decode_namespace(&name, &value)?;
                if filter.matches(&NamespaceFields {
                    name: name.as_str(),
                    labels: &record.labels,
                }) {
                    namespaces.push(Namespace {
                        name,
                        labels: record.labels,
                    });
                }
            }
            Ok(namespaces)
        })
        .await
    }

    /// Creates `image` in `ns`; ALREADY_EXISTS when the name is taken. The
    /// creation time is `at`, or now.
    pub async fn create(&self, ns: NamespaceName, image: Image, at: Option<SystemTime>) -> Result<Image, Error> {
        self.write_image(Op::CreateImage { ns, image, at }).await
    }

    /// Updates an image of `ns` as a whole (empty `mask`) or by mask paths.
    /// The update time is `at`, or now.
    pub async fn update(
        &self,
        ns: NamespaceName,
        update: ImageUpdate,
        mask: Vec<String>,
        at: Option<SystemTime>,
    ) -> Result<Image, Error> {
        validate_name("image.name", &update.name)?;
        self.write_image(Op::UpdateImage { ns, update, mask, at }).await
    }

    /// Creates a namespace; ALREADY_EXISTS when it exists.
    pub async fn create_namespace(&self, namespace: Namespace) -> Result<Namespace, Error> {
        self.write_namespace(Op::CreateNamespace { namespace }).await
    }

    /// Updates a namespace's labels, as a whole (empty `mask`) or by paths.
    pub async fn update_namespace(&self, namespace: Namespace, mask: Vec<String>) -> Result<Namespace, Error> {
        self.write_namespace(Op::UpdateNamespace { namespace, mask }).await
    }

    /// Deletes a namespace; FAILED_PRECONDITION while it holds images.
    pub async fn delete_namespace(&self, name: NamespaceName) -> Result<(), Error> {
        match self.write(Op::DeleteNamespace { name }).await? {
            Outcome::NamespaceDeleted => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Assigns `image.name` to `image.target` in `ns` if `precondition` holds:
    /// creates the image, or replaces its target keeping labels and creation
    /// time. Returns the image as stored, once durable.
    pub async fn put(&self, ns: NamespaceName, image: Image, precondition: Precondition) -> Result<Image, Error> {
        self.write_image(Op::PutImage {
            ns,
            image,
            precondition,
        })
        .await
    }

    /// Deletes image `name` of `ns` if `precondition` holds. Returns the image
    /// as it was, once the deletion is durable.
    pub async fn delete(&self, ns: NamespaceName, name: String, precondition: Precondition) -> Result<Image, Error> {
        validate_name("name", &name)?;
        match self.write(Op::DeleteImage { ns, name, precondition }).await? {
            Outcome::Deleted(image) => Ok(image),
            other => Err(unexpected(other)),
        }
    }

    /// Verifies every index entry and namespace counter against the records.
    pub async fn check(&self) -> Result<check::Report, Error> {
        self.blocking(check::run).await
    }

    /// The store's UUID, made when the data directory was first opened.
    pub fn uuid(&self) -> &str {
        &self.inner.uuid
    }

    /// sled's page cache as sized at its last open, in bytes (see
    /// [`SledCache`]).
    pub fn sled_cache_bytes(&self) -> u64 {
        self.inner.sled_cache.load(Ordering::Relaxed)
    }

    /// How many images the store holds, over all namespaces. It reads the
    /// namespace counters, not the records, so it is cheap at any size.
    pub fn image_count(&self) -> Result<u64, Error> {
        let guard = writer::read_trees(&self.inner.trees);
        let trees = guard.as_ref().ok_or_else(sled_closed)?;
        let mut total = 0;
        for entry in trees.namespaces.iter() {
            let (_, value) = entry?;
            total += NamespaceRecord::decode(&*value)
                .map_err(|e| Error::Storage(format!("a namespace record does not decode: {e}")))?
                .images;
        }
        Ok(total)
    }

    /// Stops the writer after the changes already queued, makes them durable,
    /// and waits for the writer thread. Later writes are refused as
    /// UNAVAILABLE.
    pub async fn close(&self) {
        let _ = self.inner.jobs.send(Msg::Shutdown).await;
        let writer = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }

    async fn write_image(&self, op: Op) -> Result<Image, Error> {
        match self.write(op).await? {
            Outcome::Image(image) => Ok(image),
            other => Err(unexpected(other)),
        }
    }

    async fn write_namespace(&self, op: Op) -> Result<Namespace, Error> {
        match self.write(op).await? {
            Outcome::Namespace(namespace) => Ok(namespace),
            other => Err(unexpected(other)),
        }
    }

    async fn write(&self, op: Op) -> Result<Outcome, Error> {
        if self.inner.failed.load(Ordering::SeqCst) {
            return Err(writer::refused_after_failure());
        }
        let closing = || Error::Unavailable("imaged is shutting down".into());
        let (reply, answer) = oneshot::channel();
        self.inner
            .jobs
            .send(Msg::Job(Box::new(Job { op, reply })))
            .await
            .map_err(|_| closing())?;
        answer.await.map_err(|_| closing())?
    }

    /// Runs a scan of the trees on tokio's blocking pool, where a long one
    /// holds up nothing else.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Trees) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let trees = self.inner.trees.clone();
        tokio::task::spawn_blocking(move || with_trees(&trees, f))
            .await
            .map_err(|e| Error::Storage(format!("read task failed: {e}")))?
    }

    /// Runs a point read of the trees (a key or two) on the reader pool.
    async fn point_read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Trees) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let trees = self.inner.trees.clone();
        self.inner
            .readers
            .run(move || with_trees(&trees, f))
            .await
            .map_err(|_| Error::Storage("read task failed: the reader panicked or the store closed".into()))?
    }
}

/// Runs `f` on the open trees; UNAVAILABLE when reopening sled failed.
fn with_trees<T>(trees: &SharedTrees, f: impl FnOnce(&Trees) -> Result<T, Error>) -> Result<T, Error> {
    match writer::read_trees(trees).as_ref() {
        Some(trees) => f(trees),
        None => Err(sled_closed()),
    }
}

/// The answer to a read after reopening sled failed.
fn sled_closed() -> Error {
    Error::Unavailable("sled could not be reopened; see imaged's log and restart it".into())
}

/// An answer of the writer that does not fit the op: a bug, reported rather
/// than panicking.
fn unexpected(outcome: Outcome) -> Error {
    Error::Storage(format!("the writer answered with an unexpected outcome: {outcome:?}"))
}

fn decode_namespace(name: &NamespaceName, bytes: &[u8]) -> Result<NamespaceRecord, Error> {
    NamespaceRecord::decode(bytes)
        .map_err(|e| Error::Storage(format!("namespace record of {:?} does not decode: {e}", name.as_str())))
}

/// The image named `name` whose stored record is `bytes`; damage is a
/// storage error naming the image.
fn decode_image(name: &str, bytes: &[u8]) -> Result<Image, Error> {
    ImageRecord::decode(bytes)
        .map_err(|e| Error::Storage(format!("record of {name:?} does not decode: {e}")))?
        .into_image(name)
        .map_err(Error::Storage)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use imaged_types::{Descriptor, Digest, Labels};

    use super::*;

    fn ns(name: &str) -> NamespaceName {
        NamespaceName::parse("ns", name).unwrap()
    }

    fn digest(n: u64) -> Digest {
        Digest::parse(&format!("sha256:{n:064x}")).unwrap()
    }

    fn image(name: &str, n: u64, labels: &[(&str, &str)]) -> Image {
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
        }
    }

    fn open(dir: &Path) -> Store {
        Store::open(dir, &StoreOptions::default()).unwrap()
    }

    fn revision(store: &Store) -> u64 {
        let trees = writer::read_trees(&store.inner.trees);
        let bytes = trees.as_ref().unwrap().meta.get(writer::REVISION_KEY).unwrap().unwrap();
        u64::from_be_bytes(<[u8; 8]>::try_from(&*bytes).unwrap())
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
                let bytes = store.get_encoded(&d, stored.name.clone(), &SEED_IMAGE).await.unwrap();
                assert_eq!(
                    seed::Image::decode(&bytes[..]).unwrap(),
                    imaged_types::wire::image_to_seed(image.clone())
                );
                let bytes = store
                    .get_encoded(&d, stored.name.clone(), &CONTAINERD_IMAGE)
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
                let encoded = store
                    .get_encoded(&d, name.into(), &SEED_IMAGE)
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
        assert!(
            matches!(&err, Error::Conflict(m) if m.contains(&format!("points at {}, not {}", digest(1), digest(9))))
        );
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
            matches!(&err, Error::FailedPrecondition(m) if m.contains("still holds 3 image(s)")),
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
    fn copy_disk_state(from: &Path, to: &Path) {
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
    async fn assert_holds(store: &Store, images: &[Image], at: u64) {
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
        let sled_alone = sled::Config::new()
            .path(before_crash.join("sled"))
            .open()
            .unwrap()
            .open_tree("images")
            .unwrap()
            .len();
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
        let entries = Journal::open(&crashed.join("journal")).unwrap().1.unwrap();
        let cut = (0..entries.len()).max_by_key(|&i| entries[i].effects.len()).unwrap();
        let (earlier, split) = (&entries[..cut], &entries[cut]);
        // One image's record and index entries, its namespace and the
        // revision are at least 7 writes.
        assert!(split.effects.len() >= 7, "a batch of {} writes", split.effects.len());
        {
            let trees = Trees::open(&crashed.join("sled"), 1024 * 1024).unwrap();
            let half = split.effects.len() / 2;
            let written = earlier.iter().flat_map(|e| &e.effects).chain(&split.effects[..half]);
            for effect in written {
                let tree = trees.get(effect.tree);
                match &effect.value {
                    Some(value) => tree.insert(effect.key.as_slice(), value.as_slice()).map(drop),
                    None => tree.remove(effect.key.as_slice()).map(drop),
                }
                .unwrap();
            }
            trees.db.flush().unwrap();
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
        let page = |limit, budget| store.list_page_encoded(query.clone(), String::new(), limit, budget, wire);
        let by_count = page(3, usize::MAX).await.unwrap();
        assert_eq!(by_count.count, 3);
        assert!(!by_count.list.next_page_token.is_empty());
        // Each image is over 1000 bytes: a 2500-byte budget keeps two, and
        // the token resumes after the second.
        let by_bytes = page(5, 2500).await.unwrap();
        assert_eq!(by_bytes.count, 2);
        let rest = store
            .list_page_encoded(query.clone(), by_bytes.list.next_page_token, 5, usize::MAX, wire)
            .await
            .unwrap();
        assert_eq!((rest.count, rest.list.next_page_token.as_str()), (3, ""));
        // A budget smaller than one image still gives one.
        assert_eq!(page(5, 10).await.unwrap().count, 1);
        // A page of none has nothing to resume after.
        let none = page(0, usize::MAX).await.unwrap();
        assert_eq!(
            (none.count, none.list.next_page_token.as_str(), none.list.images.len()),
            (0, "", 0)
        );
    }

    /// The LSN of sled's newest snapshot in the store's sled directory (0
    /// for none yet): it advances only when sled opens.
    fn snapshot_lsn(root: &Path) -> u64 {
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
        let expected = grows.for_dir(&dir.path().join("sled"));
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
}
