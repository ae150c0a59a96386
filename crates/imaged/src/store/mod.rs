//! The store: the one place where image records live and where every rule of
//! every wire API is applied. Its shape is etcd's storage: a log in front of
//! a backend, with the rules above them.
//!
//! # Layout
//! - [`format`](mod@format): the data directory, its lock and its format version.
//! - [`layout`]: the trees, keys and record encodings (the on-disk format).
//! - `engine`: the only module that names sled: open, cache sizing, the
//!   durability barrier, the periodic reopen, and the backend interface
//!   (get, scan, apply a batch of effects).
//! - `log`: the journal and the commit loop (batching, group commit,
//!   durability, the store-wide revision, the commit hook, work between
//!   batches).
//! - `rules`: what each op does to the records, or why it is refused.
//! - `reads`: Gets, the record cache, the reader threads, list queries,
//!   plans and page tokens.
//! - `changes`: the change log read back, and its compaction.
//! - `check`: verifies indexes and counters against the records.
//! - `repositories`: the repository index built whole from the records.
//!
//! The store hands out records (see [`Record`] and [`Found`]), never wire
//! messages: encoding is the server's. docs/ARCHITECTURE.md draws the data
//! path, the trees and the journal, and states the durability argument.

pub mod changes;
pub(crate) mod check;
pub mod copy;
pub(crate) mod engine;
pub(crate) mod files;
pub mod format;
pub mod layout;
pub(crate) mod log;
pub(crate) mod reads;
pub mod record;
pub mod recovery;
pub mod repositories;
pub mod restore;
pub(crate) mod rules;
pub(crate) mod staging;

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod protection_tests;
#[cfg(test)]
mod repository_tests;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::SystemTime;

use imaged_types::image::validate_name;
use imaged_types::{Image, ImageUpdate, Namespace, NamespaceName};
use tokio::sync::{mpsc, oneshot};

pub use changes::Retention;
pub use check::Report;
pub use engine::rotation::{Reason, Rotated, Rotations};
pub use engine::{SledCache, files_bytes};
pub use format::{DataDir, FORMAT_VERSION, OpenError};
pub use imaged_types::Precondition;
pub use log::{Commit, CommitHook};
pub use reads::query::{Found, MAX_PAGE_SIZE, Order, Query};
pub use reads::repos::RepositoryQuery;
pub use reads::{Counts, Page, Record};
pub use recovery::{Repair, repair};
pub use rules::image::Written;
pub use rules::{Change, Changed, ImageOp, NamespaceOp};

use crate::error::Error;
use engine::{Backend, Engine};
use layout::{Effect, TreeId, meta};
use log::batch::{Job, Pending};
#[cfg(test)]
use log::journal::Journal;
use log::{Log, Msg, Upkeep};
use reads::Reads;
use reads::cache::RecordCache;
use reads::readers::Readers;
use reads::token::Tokens;
#[cfg(test)]
use recovery::revision_of;

/// Internals the criterion benches in `benches/` measure on their own. Not
/// an API: they change with the store.
#[doc(hidden)]
pub mod internals {
    pub use super::log::journal::{Entry, read_journal};
    pub use super::reads::cache::RecordCache;
    pub use super::reads::token::Tokens;
}

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled's page cache: sized from the store's files each time sled opens
    /// (see [`SledCache`]). sled's own default is 1 GiB, and its real memory
    /// use can be several times the setting.
    pub sled_cache: SledCache,
    /// The record cache that answers Gets without sled, in bytes.
    pub record_cache_bytes: usize,
    /// Journaled bytes after which the log closes and reopens sled, so that
    /// sled writes a snapshot and an open never scans more log than that;
    /// from half this on, it reopens at the first idle moment instead of
    /// waiting. 0 never reopens.
    pub reopen_after_bytes: u64,
    /// Growth of sled's files, in percent of their size after the last
    /// rotation, after which the store is rotated: a fresh sled built in
    /// the background and swapped in (`engine::rotation`); 0 never rotates.
    pub rotate_after_percent: u64,
    /// Threads that make point reads in sled.
    pub reader_threads: usize,
    /// Writes are refused with RESOURCE_EXHAUSTED while the file system
    /// holding the store has less free than this, so that sled's own writes
    /// (its log, its snapshots) always find room; 0 keeps no reserve.
    pub min_free_bytes: u64,
    /// How much of the change log is kept for watches that start in the
    /// past.
    pub retention: Retention,
    /// What one namespace may hold.
    pub quotas: Quotas,
    /// Journal bytes a second one uid other than an admin may write; past
    /// it its writes wait their turn. 0: no pace.
    pub write_rate_per_uid: u64,
}

/// What one namespace may hold; 0 is no quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quotas {
    /// Images.
    pub max_images: u64,
    /// Bytes of images as stored (keys and records).
    pub max_bytes: u64,
}

impl Quotas {
    /// No quota.
    pub const NONE: Quotas = Quotas {
        max_images: 0,
        max_bytes: 0,
    };
}

/// The store's settings that can change while it runs (SIGHUP): read by
/// the log for each batch, by the compactor for each pass, and by each
/// write before it is queued.
#[derive(Debug)]
pub struct Tunables {
    quotas: Mutex<Quotas>,
    retention: Mutex<Retention>,
    /// Journal bytes a second a uid other than an admin may write; 0 none.
    write_rate: AtomicU64,
}

impl Tunables {
    fn new(quotas: Quotas, retention: Retention, write_rate: u64) -> Arc<Tunables> {
        Arc::new(Tunables {
            quotas: Mutex::new(quotas),
            retention: Mutex::new(retention),
            write_rate: AtomicU64::new(write_rate),
        })
    }

    /// The pace of writing in force, in journal bytes a second per uid.
    pub fn write_rate(&self) -> u64 {
        self.write_rate.load(Ordering::Relaxed)
    }

    /// The quotas in force.
    pub fn quotas(&self) -> Quotas {
        *self.quotas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The retention in force.
    pub fn retention(&self) -> Retention {
        *self.retention.lock().unwrap_or_else(|e| e.into_inner())
    }
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
            rotate_after_percent: 50,
            reader_threads: default_reader_threads(),
            min_free_bytes: 64 * 1024 * 1024,
            retention: Retention::default(),
            quotas: Quotas {
                max_images: 0,
                max_bytes: crate::shares::defaults::MAX_NAMESPACE_MB << 20,
            },
            write_rate_per_uid: crate::shares::defaults::WRITE_MB_PER_UID << 20,
        }
    }
}

/// One reader thread per core, at least 2 and at most 8. Under load one or
/// two do the reading; the others wake only for reads stalled on the disk.
fn default_reader_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8)
}

/// A handle on the open store. Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<Engine>,
    reads: Reads,
    jobs: mpsc::Sender<Msg>,
    failed: Arc<AtomicBool>,
    log_thread: Mutex<Option<JoinHandle<()>>>,
    /// Every batch up to this revision is applied.
    revision: Arc<AtomicU64>,
    /// The change log's compaction mark: no watch starts before it.
    compacted: Arc<AtomicU64>,
    compactor: changes::Compactor,
    /// What the log counts, for the metrics.
    stats: Arc<crate::stats::StoreStats>,
    /// The revision a running copy holds compaction at; `u64::MAX` when
    /// none runs.
    held: Arc<AtomicU64>,
    /// Quotas, retention and the pace of writing, as reloaded.
    tunables: Arc<Tunables>,
    /// What each uid owes of its pace of writing.
    pace: Arc<log::fair::Pace>,
    uuid: String,
    dir: DataDir,
}

/// How many jobs may wait for the log before callers wait to enqueue.
const QUEUE_DEPTH: usize = 4096;

impl Store {
    /// Opens (or creates) the store in data directory `root`, taking its lock.
    /// Blocking: call it before serving, or on a blocking thread.
    pub fn open(root: &Path, options: &StoreOptions) -> Result<Store, OpenError> {
        Store::open_with_hook(root, options, None)
    }

    /// Opens the store as [`Store::open`] does, with `hook` called after
    /// every durable batch (see [`CommitHook`]).
    pub fn open_with_hook(root: &Path, options: &StoreOptions, hook: Option<CommitHook>) -> Result<Store, OpenError> {
        let dir = DataDir::open(root)?;
        let sled_dir = dir.sled_dir();
        let io = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |e: engine::EngineError| OpenError::Io {
                what,
                path,
                source: e.into(),
            }
        };
        let engine = Arc::new(recovery::open_engine(&dir, options.sled_cache)?);
        let (journal, revision) = recovery::recover(&engine, &dir)?;
        engine::sync_unless_full(&engine).map_err(io("checkpointing", &sled_dir))?;
        if engine
            .with(recovery::count_namespace_bytes)
            .map_err(io("counting the namespaces' bytes in", &sled_dir))?
        {
            engine
                .sync()
                .map_err(io("counting the namespaces' bytes in", &sled_dir))?;
        }
        if engine
            .with(|backend| repositories::build(backend, false))
            .map_err(io("building the repository index in", &sled_dir))?
        {
            engine
                .sync()
                .map_err(io("building the repository index in", &sled_dir))?;
        }
        let (uuid, token_key, made) = engine
            .with(identity)
            .map_err(io("recording the server uuid and token key in", &sled_dir))?;
        if made {
            engine
                .sync()
                .map_err(io("recording the server uuid and token key in", &sled_dir))?;
        }

        let mark = engine
            .with(|backend| changes::mark(backend, revision))
            .map_err(io("reading the change log's compaction mark in", &sled_dir))?;
        let failed = Arc::new(AtomicBool::new(false));
        let applied = Arc::new(AtomicU64::new(revision));
        let compacted = Arc::new(AtomicU64::new(mark));
        let held = Arc::new(AtomicU64::new(u64::MAX));
        let stats = Arc::new(crate::stats::StoreStats::default());
        let tunables = Tunables::new(options.quotas, options.retention, options.write_rate_per_uid);
        let pace = Arc::new(log::fair::Pace::default());
        let cache = Arc::new(RecordCache::new(options.record_cache_bytes));
        let (jobs, jobs_rx) = mpsc::channel(QUEUE_DEPTH);
        let waker = jobs.downgrade();
        engine.on_rotation_ready(Arc::new(move || {
            // A full queue means batches are coming, and the log looks
            // between any two of them anyway.
            if let Some(jobs) = waker.upgrade() {
                let _ = jobs.try_send(Msg::Maintain);
            }
        }));
        engine.schedule_reopens(engine::schedule::Reopen {
            after_bytes: options.reopen_after_bytes,
            rotate_after_percent: options.rotate_after_percent,
            reserve_bytes: options.min_free_bytes,
        });
        let log = Log::new(
            engine.clone(),
            journal,
            revision,
            Upkeep {
                min_free: options.min_free_bytes,
            },
            log::Shared {
                cache: cache.clone(),
                failed: failed.clone(),
                applied: applied.clone(),
                stats: stats.clone(),
                tunables: tunables.clone(),
                pace: pace.clone(),
            },
            hook,
        )
        .map_err(|source| OpenError::Io {
            what: "starting the writer's timer for",
            path: root.to_owned(),
            source,
        })?;
        let log_thread = std::thread::Builder::new()
            .name("imaged-writer".into())
            .spawn(move || log.run(jobs_rx))
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
        let compactor = changes::Compactor::start(
            engine.clone(),
            tunables.clone(),
            applied.clone(),
            compacted.clone(),
            failed.clone(),
            held.clone(),
        )
        .map_err(|source| OpenError::Io {
            what: "starting the change log's compactor for",
            path: root.to_owned(),
            source,
        })?;
        Ok(Store {
            inner: Arc::new(Inner {
                revision: applied,
                compacted,
                compactor,
                held,
                stats,
                tunables,
                pace,
                reads: Reads::new(engine.clone(), cache, readers, Tokens::new(token_key)),
                engine,
                jobs,
                failed,
                log_thread: Mutex::new(Some(log_thread)),
                uuid,
                dir,
            }),
        })
    }

    /// Puts `options`' quotas, retention and pace of writing in force from
    /// the next batch, the next compaction pass and the next write on
    /// (SIGHUP).
    pub fn retune(&self, options: &StoreOptions) {
        let tunables = &self.inner.tunables;
        *tunables.quotas.lock().unwrap_or_else(|e| e.into_inner()) = options.quotas;
        *tunables.retention.lock().unwrap_or_else(|e| e.into_inner()) = options.retention;
        tunables.write_rate.store(options.write_rate_per_uid, Ordering::Relaxed);
        self.inner.compactor.wake();
    }

    /// Bytes the change log holds, as the compactor last counted them.
    pub fn change_log_bytes(&self) -> u64 {
        self.inner.compactor.bytes()
    }

    /// Returns image `name` of namespace `ns`.
    pub async fn get(&self, ns: &NamespaceName, name: String) -> Result<Image, Error> {
        self.inner.reads.image(ns, name).await
    }

    /// The stored record of image `name` of namespace `ns`, for an adapter
    /// to encode: the same image, and the same refusals, as [`Store::get`].
    pub async fn image_record(&self, ns: &NamespaceName, name: &str) -> Result<Record, Error> {
        self.inner.reads.image_record(ns, name).await
    }

    /// One page of `query` after the position `page_token` names (the start
    /// when empty), of up to `limit` images handed to `take` on a blocking
    /// thread. `take` answers with what it made of them and how many it
    /// took; the page's token resumes after the last one taken.
    pub async fn page<T: Send + 'static>(
        &self,
        query: Arc<Query>,
        page_token: &str,
        limit: usize,
        take: impl FnOnce(&[Found]) -> Result<(T, usize), Error> + Send + 'static,
    ) -> Result<Page<T>, Error> {
        self.inner.reads.page(query, page_token, limit, take).await
    }

    /// One page of repositories of `query`: up to `limit` after the one
    /// `page_token` names (from the start when empty), with the token of
    /// the next page (empty after the last).
    pub async fn repositories(
        &self,
        query: Arc<RepositoryQuery>,
        page_token: &str,
        limit: usize,
    ) -> Result<Page<Vec<imaged_types::Repository>>, Error> {
        self.inner.reads.repositories(query, page_token, limit).await
    }

    /// One page of `query`, decoded: up to `limit` images and the token of
    /// the next page (empty after the last).
    pub async fn list_page(
        &self,
        query: Arc<Query>,
        page_token: String,
        limit: usize,
    ) -> Result<(Vec<Image>, String), Error> {
        let page = self
            .page(query, &page_token, limit, |found| {
                let images = found.iter().map(Found::image).collect::<Result<Vec<_>, _>>()?;
                let count = images.len();
                Ok((images, count))
            })
            .await?;
        Ok((page.items, page.next_page_token))
    }

    /// Returns namespace `name`.
    pub async fn get_namespace(&self, name: NamespaceName) -> Result<Namespace, Error> {
        self.inner.reads.namespace(name).await
    }

    /// Returns the namespaces matching `filter`, ordered by name.
    pub async fn list_namespaces(&self, filter: crate::filter::Filter) -> Result<Vec<Namespace>, Error> {
        self.inner.reads.namespaces(filter).await
    }

    /// Creates `image` in `ns`; ALREADY_EXISTS when the name is taken. The
    /// creation time is `at`, or now. Returns the image as stored, with its
    /// record.
    pub async fn create(&self, ns: NamespaceName, image: Image, at: Option<SystemTime>) -> Result<Written, Error> {
        self.write_image(ImageOp::Create { ns, image, at }).await
    }

    /// Updates an image of `ns` as a whole (empty `mask`) or by mask paths.
    /// The update time is `at`, or now. Returns the image as stored, with
    /// its record.
    pub async fn update(
        &self,
        ns: NamespaceName,
        update: ImageUpdate,
        mask: Vec<String>,
        at: Option<SystemTime>,
    ) -> Result<Written, Error> {
        validate_name("image.name", &update.name)?;
        self.write_image(ImageOp::Update { ns, update, mask, at }).await
    }

    /// Assigns `image.name` to `image.target` in `ns` if `precondition` holds:
    /// creates the image, or replaces its target keeping labels and creation
    /// time, and its protection. Returns the image as stored, once durable.
    pub async fn put(&self, ns: NamespaceName, image: Image, precondition: Precondition) -> Result<Image, Error> {
        self.put_protecting(ns, image, precondition, None).await
    }

    /// [`Store::put`] that also protects the image (`Some(true)`) or
    /// unprotects it (`Some(false)`) in the same write.
    pub async fn put_protecting(
        &self,
        ns: NamespaceName,
        image: Image,
        precondition: Precondition,
        protect: Option<bool>,
    ) -> Result<Image, Error> {
        self.write_image(ImageOp::Put {
            ns,
            image,
            precondition,
            protect,
        })
        .await
        .map(|written| written.image)
    }

    /// Deletes image `name` of `ns` if `precondition` holds. Returns the image
    /// as it was, once the deletion is durable.
    pub async fn delete(&self, ns: NamespaceName, name: String, precondition: Precondition) -> Result<Image, Error> {
        validate_name("name", &name)?;
        self.write_image(ImageOp::Delete { ns, name, precondition })
            .await
            .map(|written| written.image)
    }

    /// Creates a namespace; ALREADY_EXISTS when it exists.
    pub async fn create_namespace(&self, namespace: Namespace) -> Result<Namespace, Error> {
        self.write_namespace(NamespaceOp::Create { namespace }).await
    }

    /// Updates a namespace's labels, as a whole (empty `mask`) or by paths.
    pub async fn update_namespace(&self, namespace: Namespace, mask: Vec<String>) -> Result<Namespace, Error> {
        self.write_namespace(NamespaceOp::Update { namespace, mask }).await
    }

    /// Deletes a namespace; FAILED_PRECONDITION while it holds images.
    pub async fn delete_namespace(&self, name: NamespaceName) -> Result<(), Error> {
        self.write_namespace(NamespaceOp::Delete { name }).await.map(drop)
    }

    /// Verifies every index entry and namespace counter against the records.
    pub async fn check(&self) -> Result<Report, Error> {
        self.inner.reads.blocking(check::run).await
    }

    /// Makes everything written so far durable in sled itself, between two
    /// batches; the journal then starts again.
    pub async fn checkpoint(&self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Checkpoint(reply)).await?;
        answer.await.map_err(|_| closing())?
    }

    /// Answers once the log thread takes a message, and refuses once the
    /// store has stopped taking writes: what the service manager's watchdog
    /// needs to know, since a stuck or failed writer must stop its pings.
    pub async fn ping(&self) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Ping(reply)).await?;
        answer.await.map_err(|_| closing())
    }

    /// What the store counts as it works (batches, journal syncs,
    /// checkpoints), for the metrics.
    pub fn stats(&self) -> &crate::stats::StoreStats {
        &self.inner.stats
    }

    /// Whether the store takes writes: false once a storage failure has
    /// fenced it (reads go on).
    pub fn writable(&self) -> bool {
        !self.inner.failed.load(Ordering::SeqCst)
    }

    /// The store's UUID, made when the data directory was first opened.
    pub fn uuid(&self) -> &str {
        &self.inner.uuid
    }

    /// sled's page cache as sized at its last open, in bytes (see
    /// [`SledCache`]).
    pub fn sled_cache_bytes(&self) -> u64 {
        self.inner.engine.cache_bytes()
    }

    /// How many images the store holds, over all namespaces. It reads the
    /// namespace counters, not the records, so it is cheap at any size.
    pub fn image_count(&self) -> Result<u64, Error> {
        Ok(self.inner.reads.counts()?.images)
    }

    /// How many namespaces and images the store holds, from the namespace
    /// counters.
    pub fn counts(&self) -> Result<Counts, Error> {
        self.inner.reads.counts()
    }

    /// Every namespace, by name, with how many images it holds (from the
    /// namespace counters).
    pub fn namespace_counts(&self) -> Result<Vec<(String, u64)>, Error> {
        self.inner.reads.namespace_counts()
    }

    /// The bytes the store holds on disk: the journal's file, and the
    /// sled in use.
    pub fn bytes_on_disk(&self) -> (u64, u64) {
        let journal = std::fs::metadata(self.inner.dir.journal_path()).map_or(0, |m| m.len());
        (journal, files_bytes(&self.inner.engine.dir()))
    }

    /// The engine's rotations so far, as they change.
    pub fn rotations(&self) -> tokio::sync::watch::Receiver<Rotations> {
        self.inner.engine.rotations()
    }

    /// Rotates sled now (or waits for the rotation already running) and
    /// says what it did: a fresh copy of the store, which gives back the
    /// disk that churn and deletions left. Serving goes on meanwhile.
    pub async fn compact(&self) -> Result<Rotated, Error> {
        if !self.writable() {
            return Err(log::refused_after_failure());
        }
        let mut rotations = self.rotations();
        let seen = rotations.borrow_and_update().clone();
        let engine = self.inner.engine.clone();
        tokio::task::spawn_blocking(move || engine.start_rotation(Reason::Asked))
            .await
            .map_err(|e| Error::Storage(format!("starting the rotation failed: {e}")))?
            .map_err(|e| {
                let why = format!("cannot compact the store: {e}");
                if e.is_no_space() {
                    Error::ResourceExhausted(why)
                } else {
                    Error::Storage(why)
                }
            })?;
        loop {
            rotations
                .changed()
                .await
                .map_err(|_| Error::Unavailable("imaged is stopping".into()))?;
            let now = rotations.borrow_and_update();
            if now.done > seen.done
                && let Some(last) = &now.last
            {
                return Ok(last.clone());
            }
            if now.abandoned > seen.abandoned {
                let why = now.last_abandoned.clone().unwrap_or_default();
                return Err(Error::Unavailable(format!(
                    "the rotation was abandoned ({why}); the store is as it was, and serving goes on"
                )));
            }
        }
    }

    /// The store-wide revision: every change up to it is applied, and
    /// visible to reads that start now.
    pub fn revision(&self) -> u64 {
        self.inner.revision.load(Ordering::SeqCst)
    }

    /// The change log's compaction mark: the changes after it are kept, so
    /// a watch can start from it or later.
    pub fn compacted(&self) -> u64 {
        self.inner.compacted.load(Ordering::SeqCst)
    }

    /// The changes after revision `after`, up to `upto`, at most `max`, in
    /// revision order, from the change log. OUT_OF_RANGE when compaction
    /// has removed the first of them.
    pub async fn changes(&self, after: u64, upto: u64, max: usize) -> Result<Vec<Change>, Error> {
        let compacted = self.inner.compacted.clone();
        self.inner
            .reads
            .blocking(move |backend| {
                let changes = changes::read(backend, after, upto, max).map_err(Error::Storage)?;
                let mark = compacted.load(Ordering::SeqCst);
                let first = changes.first().map(|c| c.revision);
                if after < mark || (upto > after && first != Some(after + 1)) {
                    return Err(compacted_error(after, mark));
                }
                Ok(changes)
            })
            .await
    }

    /// Stops the log after the changes already queued, makes them durable,
    /// and waits for its thread. Later writes are refused as UNAVAILABLE.
    pub async fn close(&self) {
        let compactor = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || compactor.compactor.stop()).await;
        let _ = self.inner.jobs.send(Msg::Shutdown).await;
        let thread = self.inner.log_thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    async fn write_image(&self, op: ImageOp) -> Result<Written, Error> {
        let caller = self.paced().await;
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Job(Box::new(Job::Image(Pending::new(op, reply, caller)))))
            .await?;
        answer.await.map_err(|_| closing())?
    }

    async fn write_namespace(&self, op: NamespaceOp) -> Result<Namespace, Error> {
        let caller = self.paced().await;
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Job(Box::new(Job::Namespace(Pending::new(op, reply, caller)))))
            .await?;
        answer.await.map_err(|_| closing())?
    }

    /// The caller of the write about to be queued, once its uid owes no
    /// journal bytes beyond its pace (`write_mb_per_uid`; admins are never
    /// paced).
    async fn paced(&self) -> crate::shares::Caller {
        let caller = crate::shares::flow::current();
        let rate = self.inner.tunables.write_rate();
        if !caller.admin
            && rate > 0
            && let Some(wait) = self.inner.pace.wait(caller.uid, rate)
        {
            tokio::time::sleep(wait).await;
        }
        caller
    }

    async fn send(&self, msg: Msg) -> Result<(), Error> {
        if self.inner.failed.load(Ordering::SeqCst) {
            return Err(log::refused_after_failure());
        }
        self.inner.jobs.send(msg).await.map_err(|_| closing())
    }
}

/// The refusal of a watch from `after`, which compaction has passed.
pub fn compacted_error(after: u64, mark: u64) -> Error {
    Error::Compacted { after, mark }
}

/// The answer to a write once the store is closing.
fn closing() -> Error {
    Error::Unavailable("imaged is shutting down".into())
}

impl From<engine::EngineError> for String {
    fn from(e: engine::EngineError) -> String {
        e.to_string()
    }
}

/// The store's UUID and page-token secret, made on first open (the caller
/// then makes them durable, so both survive restarts), and whether they were
/// made now.
fn identity(backend: &Backend) -> Result<(String, [u8; 32], bool), engine::EngineError> {
    let mut made = Vec::new();
    let uuid = match backend.get(TreeId::Meta, meta::UUID)? {
        Some(uuid) => String::from_utf8_lossy(&uuid).into_owned(),
        None => {
            let uuid = crate::ids::uuid_v4()?;
            made.push((meta::UUID, uuid.as_bytes().to_vec()));
            uuid
        }
    };
    let stored_key = backend.get(TreeId::Meta, meta::TOKEN_KEY)?;
    let token_key = match stored_key.and_then(|k| <[u8; 32]>::try_from(&*k).ok()) {
        Some(key) => key,
        None => {
            let key = crate::ids::random_bytes::<32>()?;
            made.push((meta::TOKEN_KEY, key.to_vec()));
            key
        }
    };
    let fresh = !made.is_empty();
    if fresh {
        let effects: Vec<Effect> = made
            .into_iter()
            .map(|(key, value)| Effect {
                tree: TreeId::Meta,
                key: key.to_vec(),
                value: Some(value),
            })
            .collect();
        backend.apply(&effects, |_| {})?;
    }
    Ok((uuid, token_key, fresh))
}
