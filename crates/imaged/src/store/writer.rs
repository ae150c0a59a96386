//! The write path: one writer thread plans changes in batches, makes each
//! batch durable with one journal entry, applies it to sled, and only then
//! answers.
//!
//! ```text
//!  async callers ──Job──▶ writer thread: batch → plan (reads only)
//!                                       → one journal entry, fdatasync'ed
//!                                       → sled writes (in memory) → replies
//! ```
//!
//! - **One writer.** Every change goes through one thread, so a change's
//!   checks (does the name exist? does it point at this digest?) and its
//!   writes are atomic without locks.
//! - **Batches.** The writer takes the jobs waiting (up to [`MAX_BATCH`], and
//!   up to [`MAX_ENTRY_BYTES`] of writes) and plans them in order: the writes
//!   to the records, the indexes, the namespace counters and, last, the
//!   revision counter. A later op of the batch reads what an earlier one
//!   planned. Each job's refusal is its own: a refused job writes nothing and
//!   does not stop the others.
//! - **No sled transactions.** A sled transaction writes out its log buffer
//!   and waits for `sync_file_range` twice on sled's IO threads, flushed or
//!   not; measured, that was most of a write's cost (create at concurrency
//!   16: 11.8k/s with transactions, 17.4k/s without, same run). The journal
//!   gives what the transaction gave: a batch is in the journal before sled
//!   sees any of it, so one that sled holds only in part is completed by the
//!   replay, and one that never reached the journal never reached sled.
//! - **Group commit.** While the writer syncs a batch, new jobs queue up and
//!   form the next batch, so one sync serves every request that arrived
//!   during the previous one. (A separate flusher thread, overlapping
//!   the next batch's apply with this batch's sync, was measured: the extra
//!   thread handoffs cost more than the overlap gained, 25-30% at 16
//!   concurrent writers on 2 cores.)
//! - **Write-ahead.** The planned writes are appended to the
//!   [`journal`](super::journal) as one entry and synced; when the journal is
//!   full, a checkpoint (the full sled barrier) runs first and the journal
//!   starts again. Only then are they made in sled, so readers see a change
//!   only once it is durable.
//! - **Answers only once durable.** A caller hears "done" only once its
//!   change is on disk and in sled. If a write or sync fails, the store stops
//!   taking writes (its state in memory may be ahead of the disk) and says
//!   so.
//! - **The record cache** is updated with every record written to sled, as it
//!   is written.
//! - **One write per key per batch.** A key the batch writes twice (the
//!   namespace record, on every create) is journaled and written once, with
//!   its final value.
//! - **Bounded recovery.** After every [`Reopen::after_bytes`] journaled,
//!   between two batches, the writer checkpoints and reopens sled, so that
//!   sled writes a snapshot and no later open scans more log than that.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime};

use imaged_types::image::validate_labels;
use imaged_types::{Image, ImageUpdate, Labels, Namespace, NamespaceName, Precondition, ValidationError};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::cache::RecordCache;
use super::durable::{Barrier, sync_dir};
use super::journal::{Effect, Entry, Journal, TreeId};
use super::record::{ImageRecord, NamespaceRecord, image_key, index_keys};
use crate::error::Error;

/// Most jobs applied in one batch.
pub const MAX_BATCH: usize = 512;

/// Key of the store-wide revision counter in the `meta` tree.
pub const REVISION_KEY: &[u8] = b"revision";

/// One change to the store. Every wire API's writes are one of these.
#[derive(Debug)]
pub enum Op {
    /// Assigns `image.name` to `image.target`: creates the image, or replaces
    /// the target of an existing one, keeping its creation time, and its
    /// labels unless the put carries labels.
    PutImage {
        /// Namespace of the image.
        ns: NamespaceName,
        /// Name, target and (when not empty) labels.
        image: Image,
        /// Tested before writing.
        precondition: Precondition,
    },
    /// Creates an image; ALREADY_EXISTS when the name is taken.
    CreateImage {
        /// Namespace of the image.
        ns: NamespaceName,
        /// The image; its timestamps are ignored.
        image: Image,
        /// Creation time to use instead of the clock (`source_date_epoch`).
        at: Option<SystemTime>,
    },
    /// Updates an image as a whole (empty mask) or by field-mask paths:
    /// `labels`, `labels.<key>`, `annotations`, `annotations.<key>`, `target`.
    UpdateImage {
        /// Namespace of the image.
        ns: NamespaceName,
        /// What the request carries.
        update: ImageUpdate,
        /// Field-mask paths, applied in order.
        mask: Vec<String>,
        /// Update time to use instead of the clock (`source_date_epoch`).
        at: Option<SystemTime>,
    },
    /// Deletes an image.
    DeleteImage {
        /// Namespace of the image.
        ns: NamespaceName,
        /// Image name.
        name: String,
        /// Tested before deleting.
        precondition: Precondition,
    },
    /// Creates a namespace; ALREADY_EXISTS when it exists.
    CreateNamespace {
        /// Name and labels.
        namespace: Namespace,
    },
    /// Replaces a namespace's labels (empty mask) or changes them by mask
    /// paths `labels` and `labels.<key>`.
    UpdateNamespace {
        /// Name and labels.
        namespace: Namespace,
        /// Field-mask paths.
        mask: Vec<String>,
    },
    /// Deletes an empty namespace.
    DeleteNamespace {
        /// The namespace.
        name: NamespaceName,
    },
}

/// What a change did.
#[derive(Debug)]
pub enum Outcome {
    /// The image as stored after the change.
    Image(Image),
    /// The image as it was before it was deleted.
    Deleted(Image),
    /// The namespace as stored after the change.
    Namespace(Namespace),
    /// The namespace was deleted.
    NamespaceDeleted,
}

/// Where a change's result is sent once it is durable.
pub type Reply = oneshot::Sender<Result<Outcome, Error>>;

/// A change and where to send its answer.
pub struct Job {
    /// The change.
    pub op: Op,
    /// Receives the result once it is durable.
    pub reply: Reply,
}

/// What the writer sends its threads.
pub enum Msg {
    /// A change to apply (boxed: a job is large, and the channel holds many).
    Job(Box<Job>),
    /// Apply what came before, make it durable, and stop.
    Shutdown,
}

/// The sled trees a batch writes, and the database they are in.
#[derive(Clone)]
pub struct Trees {
    /// The database, which the barrier flushes. Dropping every `Trees`
    /// closes it.
    pub db: sled::Db,
    /// `namespace 0x00 name` → [`ImageRecord`].
    pub images: sled::Tree,
    /// `namespace` → [`NamespaceRecord`].
    pub namespaces: sled::Tree,
    /// Store-wide counters.
    pub meta: sled::Tree,
    /// Secondary indexes (see `record::index`).
    pub index: sled::Tree,
}

impl Trees {
    /// Opens the sled database in `dir`, with a page cache of `cache_bytes`,
    /// and its trees.
    pub fn open(dir: &Path, cache_bytes: u64) -> sled::Result<Trees> {
        wait_for_sled_lock(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // The writer decides when to flush (at checkpoints); sled's timer
            // would only add flushes the journal makes unnecessary.
            .flush_every_ms(None)
            .open()?;
        Ok(Trees {
            images: db.open_tree("images")?,
            namespaces: db.open_tree("namespaces")?,
            meta: db.open_tree("meta")?,
            index: db.open_tree("index")?,
            db,
        })
    }

    /// The tree a journal entry names.
    pub fn get(&self, tree: TreeId) -> &sled::Tree {
        match tree {
            TreeId::Images => &self.images,
            TreeId::Namespaces => &self.namespaces,
            TreeId::Meta => &self.meta,
            TreeId::Index => &self.index,
        }
    }
}

/// How long an open waits for a sled closed in this process to let go of
/// its file lock.
const SLED_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Waits until nothing holds sled's lock on `dir/db`, which sled takes
/// without waiting. A sled closed in this process lets go of it only when its
/// last IO job ends: measured up to 18 ms later on a loaded machine, where
/// 34 of 300 reopens found it still held. No other process can hold it: the
/// data directory's own lock keeps them out.
fn wait_for_sled_lock(dir: &Path) -> std::io::Result<()> {
    let path = dir.join("db");
    let started = Instant::now();
    loop {
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            // Unlocked as it drops; sled takes it next.
            Ok(_free) => return Ok(()),
            Err((_, Errno::EWOULDBLOCK)) if started.elapsed() < SLED_LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((_, errno)) => {
                return Err(std::io::Error::other(format!(
                    "sled's lock on {} is still held after {:?}: {errno}",
                    path.display(),
                    started.elapsed()
                )));
            }
        }
    }
}

/// Most bytes of writes one batch journals. A batch ends early at this size
/// (the remaining jobs start the next one), so an entry always fits the
/// journal after a checkpoint: one op writes at most a 64 KiB record, its
/// index keys and a namespace record, far less than the margin left.
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// What makes the writer's batches durable.
pub struct Durability {
    /// The full sled barrier, for checkpoints.
    pub barrier: Barrier,
    /// The journal, for every batch in between.
    pub journal: Journal,
    /// Bytes journaled since sled was last opened: about how much log an
    /// open of sled would scan now.
    since_open: u64,
}

impl Durability {
    /// The barrier and journal of a sled database just opened.
    pub fn new(barrier: Barrier, journal: Journal) -> Durability {
        Durability {
            barrier,
            journal,
            since_open: 0,
        }
    }

    /// Makes a planned batch durable before sled sees it: its entry goes to
    /// the journal, after a checkpoint of `db` when the journal is full.
    fn log(&mut self, db: &sled::Db, entry: &Entry) -> std::io::Result<()> {
        let bytes = entry.encode();
        self.since_open += bytes.len() as u64;
        if self.journal.append(&bytes)? {
            return Ok(());
        }
        self.checkpoint(db)?;
        if self.journal.append(&bytes)? {
            return Ok(());
        }
        Err(std::io::Error::other(format!(
            "a journal entry of {} bytes does not fit an empty journal",
            bytes.len()
        )))
    }

    /// Makes everything sled holds durable; the journal's entries are then
    /// no longer needed.
    pub fn checkpoint(&mut self, db: &sled::Db) -> std::io::Result<()> {
        self.barrier.sync(db)?;
        self.journal.reset();
        Ok(())
    }
}

/// How the writer keeps sled's recovery short.
///
/// sled 0.34 writes the snapshot of its page table only when it opens, and an
/// open scans all the log written since the last snapshot: after a million
/// creates that is seconds, and it grows for as long as the daemon runs. So
/// after every `after_bytes` of journaled writes the writer checkpoints,
/// closes sled and opens it again (readers and writers wait meanwhile), and
/// any later open, after a crash too, scans at most that much.
#[derive(Debug, Clone)]
pub struct Reopen {
    /// sled's directory.
    pub dir: PathBuf,
    /// Its page cache, sized again at each reopen.
    pub cache: SledCache,
    /// The size it has now, for [`crate::store::Store::sled_cache_bytes`].
    pub cache_now: Arc<std::sync::atomic::AtomicU64>,
    /// Journaled bytes between reopens; 0 never reopens.
    pub after_bytes: u64,
}

/// How large sled's page cache is: it grows with the store, from `min_bytes`
/// to `max_bytes`, as [`SledCache::for_store`] says, each time sled opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SledCache {
    /// The cache of a small store.
    pub min_bytes: u64,
    /// The most it grows to; equal to `min_bytes` for a fixed cache.
    pub max_bytes: u64,
}

impl SledCache {
    /// A cache of `bytes` that never grows.
    pub fn fixed(bytes: u64) -> SledCache {
        SledCache {
            min_bytes: bytes,
            max_bytes: bytes,
        }
    }

    /// Bytes of sled's files per byte of cache, once the store outgrows
    /// `min_bytes`. Measured at a million images (3.1 GB of sled files),
    /// a 256 MiB cache, about a twelfth, kept the fill's last tenth at 78% of
    /// its first against 66% with 32 MiB, and Gets spread over the store
    /// 18% faster; RSS went from 279 to 581 MiB.
    pub const FILES_PER_CACHE_BYTE: u64 = 12;

    /// The cache for a store whose sled files take `files_bytes`.
    pub fn for_store(&self, files_bytes: u64) -> u64 {
        (files_bytes / Self::FILES_PER_CACHE_BYTE).clamp(self.min_bytes, self.max_bytes.max(self.min_bytes))
    }

    /// The cache for the sled database in `dir`, as its files stand.
    pub fn for_dir(&self, dir: &Path) -> u64 {
        if self.max_bytes <= self.min_bytes {
            return self.min_bytes;
        }
        self.for_store(files_bytes(dir))
    }
}

/// The total length of the files under `dir`, in bytes, counting 0 for any
/// that cannot be read.
pub fn files_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => files_bytes(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The open sled trees, shared by the writer and every reader: `None` only
/// when reopening sled failed, which fences the store.
pub type SharedTrees = Arc<RwLock<Option<Trees>>>;

/// Reads the shared trees, whatever a panicking holder left.
pub fn read_trees(shared: &SharedTrees) -> RwLockReadGuard<'_, Option<Trees>> {
    shared.read().unwrap_or_else(PoisonError::into_inner)
}

/// Checkpoints, closes sled and opens it again (see [`Reopen`]). Readers
/// wait for the write lock meanwhile. If the checkpoint fails, sled stays
/// open as it was; if the open fails, the trees stay `None`.
fn reopen(shared: &SharedTrees, durability: &mut Durability, config: &Reopen) -> std::io::Result<()> {
    let started = Instant::now();
    let mut guard = shared.write().unwrap_or_else(PoisonError::into_inner);
    let Some(trees) = guard.as_ref() else {
        return Err(std::io::Error::other("sled is not open"));
    };
    durability.checkpoint(&trees.db)?;
    let checkpointed = started.elapsed();
    // Every handle on the database goes: the shared trees were the last
    // ones, so sled closes here.
    *guard = None;
    let closed = started.elapsed();
    let cache_bytes = config.cache.for_dir(&config.dir);
    let trees = Trees::open(&config.dir, cache_bytes).map_err(std::io::Error::other)?;
    config.cache_now.store(cache_bytes, Ordering::Relaxed);
    sync_dir(&config.dir)?;
    *guard = Some(trees);
    durability.since_open = 0;
    let millis = |d: std::time::Duration| d.as_millis() as u64;
    tracing::info!(
        took_ms = millis(started.elapsed()),
        checkpoint_ms = millis(checkpointed),
        close_ms = millis(closed - checkpointed),
        open_ms = millis(started.elapsed() - closed),
        cache_mib = cache_bytes >> 20,
        "reopened sled, which wrote a snapshot: a restart scans the log from here"
    );
    Ok(())
}

/// Runs the writer: takes the jobs waiting, plans them as one batch, makes
/// the batch durable in the journal, applies it to sled, and only then
/// answers. Jobs that arrive meanwhile form the next batch (group commit).
/// Stops at shutdown or when every sender is gone, after a last checkpoint.
pub fn run_writer(
    mut rx: mpsc::Receiver<Msg>,
    shared: SharedTrees,
    mut revision: u64,
    mut durability: Durability,
    reopen_after: Reopen,
    cache: Arc<RecordCache>,
    failed: Arc<AtomicBool>,
) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut stopping = false;
    loop {
        if pending.is_empty() && !stopping {
            match rx.blocking_recv() {
                Some(Msg::Job(job)) => pending.push_back(*job),
                Some(Msg::Shutdown) | None => stopping = true,
            }
        }
        while pending.len() < MAX_BATCH && !stopping {
            match rx.try_recv() {
                Ok(Msg::Job(job)) => pending.push_back(*job),
                Ok(Msg::Shutdown) => stopping = true,
                Err(_) => break,
            }
        }
        if pending.is_empty() {
            break;
        }
        if failed.load(Ordering::SeqCst) {
            // A job queued just before a failure: refuse it like later ones.
            for job in pending.drain(..) {
                let _ = job.reply.send(Err(refused_after_failure()));
            }
            continue;
        }
        let guard = read_trees(&shared);
        let Some(trees) = guard.as_ref() else {
            // Reopening sled failed (and set `failed`): refuse what waits.
            drop(guard);
            failed.store(true, Ordering::SeqCst);
            continue;
        };
        let plan = plan_batch(trees, pending.iter().map(|job| &job.op), revision);
        let jobs: Vec<Job> = pending.drain(..plan.results.len()).collect();
        let durable = match (plan.error, &plan.entry) {
            (Some(e), _) => Err(std::io::Error::other(format!("reading sled failed: {e}"))),
            (None, Some(entry)) => durability
                .log(&trees.db, entry)
                .and_then(|_| apply_effects(trees, Some(&cache), &entry.effects).map_err(std::io::Error::other)),
            (None, None) => Ok(()),
        };
        drop(guard);
        match &durable {
            Ok(()) => {
                if let Some(entry) = &plan.entry {
                    revision = entry.last;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "making a batch durable failed; refusing further writes");
                failed.store(true, Ordering::SeqCst);
            }
        }
        for (job, result) in jobs.into_iter().zip(plan.results) {
            let result = match (&durable, result) {
                (Err(e), Ok(_)) => Err(Error::Storage(format!(
                    "storage failed while the change was being made durable ({e}); whether it survives a restart is \
                     unknown"
                ))),
                (_, result) => result,
            };
            let _ = job.reply.send(result);
        }
        if reopen_after.after_bytes > 0
            && durability.since_open >= reopen_after.after_bytes
            && !failed.load(Ordering::SeqCst)
            && let Err(e) = reopen(&shared, &mut durability, &reopen_after)
        {
            tracing::error!(error = %e, "reopening sled failed; refusing further writes");
            failed.store(true, Ordering::SeqCst);
        }
    }
    if let Some(trees) = read_trees(&shared).as_ref()
        && let Err(e) = durability.checkpoint(&trees.db)
    {
        tracing::error!(error = %e, "final checkpoint failed");
    }
}

/// The answer to a write after a storage failure fenced the store.
pub fn refused_after_failure() -> Error {
    Error::Unavailable("imaged refuses writes after a storage failure; see its log and restart it".into())
}

/// A batch planned against sled plus its own earlier writes, before anything
/// is written: each op's result, and the writes to make.
///
/// A key written twice in one batch (the namespace record, whose image count
/// every create and delete changes) is written once, with its final value:
/// the journal holds the batch whole or not at all, and replaying it sets
/// every key to its final value either way.
struct Tx<'a> {
    trees: &'a Trees,
    /// Where this batch's write of each key is in `effects`, by tree: read
    /// before sled.
    written: [HashMap<Vec<u8>, usize>; 4],
    effects: Vec<Effect>,
    bytes: usize,
}

impl Tx<'_> {
    fn get(&self, tree: TreeId, key: &[u8]) -> sled::Result<Option<sled::IVec>> {
        match self.written[tree as usize].get(key) {
            Some(&at) => Ok(self.effects[at].value.as_deref().map(sled::IVec::from)),
            None => self.trees.get(tree).get(key),
        }
    }

    fn insert(&mut self, tree: TreeId, key: &[u8], value: Vec<u8>) {
        self.record(tree, key, Some(value));
    }

    fn remove(&mut self, tree: TreeId, key: &[u8]) {
        self.record(tree, key, None);
    }

    fn record(&mut self, tree: TreeId, key: &[u8], value: Option<Vec<u8>>) {
        let value_bytes = |value: &Option<Vec<u8>>| value.as_ref().map_or(0, |v| 4 + v.len());
        match self.written[tree as usize].get(key) {
            Some(&at) => {
                let effect = &mut self.effects[at];
                self.bytes = self.bytes - value_bytes(&effect.value) + value_bytes(&value);
                effect.value = value;
            }
            None => {
                self.bytes += 10 + key.len() + value_bytes(&value);
                self.written[tree as usize].insert(key.to_vec(), self.effects.len());
                self.effects.push(Effect {
                    tree,
                    key: key.to_vec(),
                    value,
                });
            }
        }
    }
}

/// A planned batch: one result per op planned (a prefix of the jobs
/// waiting), the journal entry when anything changes, and the sled failure
/// that cut planning short, if any (every op planned then fails).
struct Plan {
    results: Vec<Result<Outcome, Error>>,
    entry: Option<Entry>,
    error: Option<sled::Error>,
}

/// Plans `ops` in order after `revision`, until the journal entry reaches
/// [`MAX_ENTRY_BYTES`]. Nothing is written. The revision is the entry's last
/// write, so sled's recovered revision names the last batch it holds whole.
fn plan_batch<'a>(trees: &Trees, ops: impl Iterator<Item = &'a Op>, revision: u64) -> Plan {
    let mut tx = Tx {
        trees,
        written: Default::default(),
        effects: Vec::new(),
        bytes: 0,
    };
    let mut rev = revision;
    let mut results = Vec::new();
    for op in ops {
        match apply(&mut tx, op, &mut rev) {
            Ok(result) => results.push(result),
            Err(e) => {
                results.push(Err(Error::Storage(format!("reading sled failed: {e}"))));
                return Plan {
                    results,
                    entry: None,
                    error: Some(e),
                };
            }
        }
        if tx.bytes >= MAX_ENTRY_BYTES {
            break;
        }
    }
    if rev == revision {
        return Plan {
            results,
            entry: None,
            error: None,
        };
    }
    tx.insert(TreeId::Meta, REVISION_KEY, rev.to_be_bytes().to_vec());
    Plan {
        results,
        entry: Some(Entry {
            first: revision + 1,
            last: rev,
            effects: tx.effects,
        }),
        error: None,
    }
}

/// Makes a journaled batch's writes in sled, in order, keeping `cache` in
/// step with the records.
fn apply_effects(trees: &Trees, cache: Option<&RecordCache>, effects: &[Effect]) -> sled::Result<()> {
    for effect in effects {
        let tree = trees.get(effect.tree);
        match &effect.value {
            Some(value) => tree.insert(effect.key.as_slice(), value.as_slice()).map(drop)?,
            None => tree.remove(effect.key.as_slice()).map(drop)?,
        }
        if let (TreeId::Images, Some(cache)) = (effect.tree, cache) {
            cache.set(&effect.key, effect.value.as_deref());
        }
    }
    Ok(())
}

/// Applies the writes of journal `entries` that sled does not hold yet: sled
/// recovered every batch up to `revision`, and each later entry must follow
/// on. Returns the revision reached.
pub fn replay(trees: &Trees, entries: &[Entry], mut revision: u64) -> Result<u64, String> {
    for entry in entries {
        if entry.last <= revision {
            continue;
        }
        if entry.first != revision + 1 {
            return Err(format!(
                "the journal's entry for revisions {}..={} does not follow the store's revision {revision}",
                entry.first, entry.last
            ));
        }
        // sled may hold the start of this batch: each write sets a key's
        // final value, so doing them all again, in order, ends in the same
        // state.
        apply_effects(trees, None, &entry.effects)
            .map_err(|e| format!("replaying revisions {}..={}: {e}", entry.first, entry.last))?;
        revision = entry.last;
    }
    Ok(revision)
}

/// One op's result, or a sled failure that aborts the whole batch.
type OpResult = Result<Result<Outcome, Error>, sled::Error>;

/// Applies one op. All reads and checks come before the first write, so a
/// refused op writes nothing.
fn apply(tx: &mut Tx<'_>, op: &Op, rev: &mut u64) -> OpResult {
    let now = SystemTime::now();
    let (ns, name) = match op {
        Op::PutImage { ns, image, .. } | Op::CreateImage { ns, image, .. } => (ns, image.name.as_str()),
        Op::UpdateImage { ns, update, .. } => (ns, update.name.as_str()),
        Op::DeleteImage { ns, name, .. } => (ns, name.as_str()),
        Op::CreateNamespace { .. } | Op::UpdateNamespace { .. } | Op::DeleteNamespace { .. } => {
            return apply_namespace(tx, op, rev);
        }
    };
    let key = image_key(ns.as_str(), name);
    let old = match read_image(tx, &key, name)? {
        Ok(old) => old,
        Err(e) => return Ok(Err(e)),
    };
    let new = match plan_image(op, old.as_ref().map(|s| &s.image), now) {
        Ok(new) => new,
        Err(e) => return Ok(Err(e)),
    };
    let (ns_key, mut ns_record, ns_stored) = read_namespace(tx, ns)?;
    let images_before = ns_record.images;
    *rev += 1;
    // Index entries change with the record, in the same batch: stale
    // ones go, fresh ones come, unchanged ones are not rewritten.
    let old_index = old.as_ref().map(|o| index_keys(ns.as_str(), &o.image));
    let new_index = new.as_ref().map(|image| index_keys(ns.as_str(), image));
    for stale in old_index.iter().flatten() {
        if !new_index.as_ref().is_some_and(|keys| keys.contains(stale)) {
            tx.remove(TreeId::Index, stale);
        }
    }
    for fresh in new_index.iter().flatten() {
        if !old_index.as_ref().is_some_and(|keys| keys.contains(fresh)) {
            tx.insert(TreeId::Index, fresh, Vec::new());
        }
    }
    let outcome = match (new, old) {
        (Some(image), old) => {
            let create_revision = old.as_ref().map_or(*rev, |o| o.create_revision);
            if old.is_none() {
                ns_record.images += 1;
            }
            tx.insert(
                TreeId::Images,
                &key,
                ImageRecord::from_image(&image, create_revision, *rev).encode_to_vec(),
            );
            Outcome::Image(image)
        }
        (None, Some(old)) => {
            ns_record.images = ns_record.images.saturating_sub(1);
            tx.remove(TreeId::Images, &key);
            Outcome::Deleted(old.image)
        }
        (None, None) => unreachable!("plan_image deletes only existing images"),
    };
    // The first image creates its namespace, as in containerd; it stays until
    // deleted. A change that keeps the count (a replace, an update) leaves
    // the record as it is.
    if !ns_stored || ns_record.images != images_before {
        tx.insert(TreeId::Namespaces, &ns_key, ns_record.encode_to_vec());
    }
    Ok(Ok(outcome))
}

/// Decides what an image op makes of the current image: the new image, or
/// `None` to delete it. Pure, so every rule of every image write is here.
fn plan_image(op: &Op, old: Option<&Image>, now: SystemTime) -> Result<Option<Image>, Error> {
    let mut new = match op {
        Op::PutImage {
            ns,
            image,
            precondition,
        } => {
            check(ns, &image.name, old, precondition)?;
            let mut new = image.clone();
            new.updated_at = now;
            match old {
                Some(old) => {
                    // A put that carries no labels keeps the stored ones.
                    if new.labels.is_empty() {
                        new.labels = old.labels.clone();
                    }
                    new.created_at = old.created_at;
                }
                None => new.created_at = now,
            }
            new
        }
        Op::CreateImage { ns, image, at } => {
            if old.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "image {:?} already exists in namespace {:?}",
                    image.name,
                    ns.as_str()
                )));
            }
            let at = at.unwrap_or(now);
            Image {
                created_at: at,
                updated_at: at,
                ..image.clone()
            }
        }
        Op::UpdateImage { ns, update, mask, at } => {
            let old = old.ok_or_else(|| Error::image_not_found(ns.as_str(), &update.name))?;
            let mut new = apply_image_mask(old, update, mask)?;
            new.created_at = old.created_at;
            new.updated_at = at.unwrap_or(now);
            new
        }
        Op::DeleteImage { ns, name, precondition } => {
            if old.is_none() {
                return Err(Error::image_not_found(ns.as_str(), name));
            }
            check(ns, name, old, precondition)?;
            return Ok(None);
        }
        Op::CreateNamespace { .. } | Op::UpdateNamespace { .. } | Op::DeleteNamespace { .. } => {
            unreachable!("namespace ops are applied by apply_namespace")
        }
    };
    new.normalize();
    new.validate()?;
    Ok(Some(new))
}

/// The paths an image update mask may name.
const IMAGE_MASK_PATHS: &str = "labels, labels.<key>, annotations, annotations.<key>, target";

/// Applies containerd's update semantics: without a mask the request replaces
/// the image; with one, each path copies that part of the request.
fn apply_image_mask(old: &Image, update: &ImageUpdate, mask: &[String]) -> Result<Image, Error> {
    let target = || update.target.clone().map_err(Error::from);
    if mask.is_empty() {
        return Ok(Image {
            name: update.name.clone(),
            labels: update.labels.clone(),
            target: target()?,
            created_at: old.created_at,
            updated_at: old.updated_at,
        });
    }
    let mut new = old.clone();
    for path in mask {
        if let Some(key) = path.strip_prefix("labels.") {
            set_or_remove(&mut new.labels, key, update.labels.get(key));
        } else if let Some(key) = path.strip_prefix("annotations.") {
            set_or_remove(&mut new.target.annotations, key, update.annotations.get(key));
        } else {
            match path.as_str() {
                "labels" => new.labels = update.labels.clone(),
                "annotations" => new.target.annotations = update.annotations.clone(),
                "target" => new.target = target()?,
                _ => {
                    return Err(ValidationError::new(
                        "update_mask",
                        path,
                        format!("cannot update this field of an image; allowed paths: {IMAGE_MASK_PATHS}"),
                    )
                    .into());
                }
            }
        }
    }
    Ok(new)
}

/// Sets `key` to `value`, or removes it when the value is absent or empty.
fn set_or_remove(map: &mut Labels, key: &str, value: Option<&String>) {
    match value.filter(|v| !v.is_empty()) {
        Some(v) => {
            map.insert(key.to_owned(), v.clone());
        }
        None => {
            map.remove(key);
        }
    }
}

fn apply_namespace(tx: &mut Tx<'_>, op: &Op, rev: &mut u64) -> OpResult {
    let name = match op {
        Op::CreateNamespace { namespace } | Op::UpdateNamespace { namespace, .. } => &namespace.name,
        Op::DeleteNamespace { name } => name,
        _ => unreachable!("image ops are applied by apply"),
    };
    let key = name.as_str().as_bytes();
    let current = match tx.get(TreeId::Namespaces, key)? {
        Some(bytes) => match NamespaceRecord::decode(&*bytes) {
            Ok(record) => Some(record),
            Err(e) => {
                return Ok(Err(Error::Storage(format!(
                    "namespace record of {name} does not decode: {e}"
                ))));
            }
        },
        None => None,
    };
    let new = match plan_namespace(op, current.as_ref()) {
        Ok(new) => new,
        Err(e) => return Ok(Err(e)),
    };
    *rev += 1;
    Ok(Ok(match new {
        Some(record) => {
            tx.insert(TreeId::Namespaces, key, record.encode_to_vec());
            Outcome::Namespace(Namespace {
                name: name.clone(),
                labels: record.labels,
            })
        }
        None => {
            tx.remove(TreeId::Namespaces, key);
            Outcome::NamespaceDeleted
        }
    }))
}

/// Decides what a namespace op makes of the current record: the new record,
/// or `None` to delete it.
fn plan_namespace(op: &Op, current: Option<&NamespaceRecord>) -> Result<Option<NamespaceRecord>, Error> {
    let not_found = |name: &NamespaceName| Error::NotFound(format!("namespace {:?} not found", name.as_str()));
    let mut record = match (op, current) {
        (Op::CreateNamespace { namespace }, None) => NamespaceRecord {
            labels: namespace.labels.clone(),
            images: 0,
        },
        (Op::CreateNamespace { namespace }, Some(_)) => {
            return Err(Error::AlreadyExists(format!(
                "namespace {:?} already exists",
                namespace.name.as_str()
            )));
        }
        (Op::UpdateNamespace { namespace, .. }, None) => return Err(not_found(&namespace.name)),
        (Op::UpdateNamespace { namespace, mask }, Some(current)) => {
            let mut record = current.clone();
            if mask.is_empty() {
                record.labels = namespace.labels.clone();
            }
            for path in mask {
                match (path.as_str(), path.strip_prefix("labels.")) {
                    (_, Some(key)) => set_or_remove(&mut record.labels, key, namespace.labels.get(key)),
                    ("labels", None) => record.labels = namespace.labels.clone(),
                    _ => {
                        return Err(ValidationError::new(
                            "update_mask",
                            path,
                            "cannot update this field of a namespace; allowed paths: labels, labels.<key>",
                        )
                        .into());
                    }
                }
            }
            record
        }
        (Op::DeleteNamespace { name }, None) => return Err(not_found(name)),
        (Op::DeleteNamespace { name }, Some(current)) => {
            if current.images > 0 {
                return Err(Error::FailedPrecondition(format!(
                    "namespace {:?} must be empty, but it still holds {} image(s)",
                    name.as_str(),
                    current.images
                )));
            }
            return Ok(None);
        }
        _ => unreachable!("image ops are applied by apply"),
    };
    record.labels.retain(|_, v| !v.is_empty());
    validate_labels("namespace.labels", &record.labels)?;
    Ok(Some(record))
}

/// A stored image with its creation revision.
struct Stored {
    image: Image,
    create_revision: u64,
}

fn read_image(tx: &Tx<'_>, key: &[u8], name: &str) -> sled::Result<Result<Option<Stored>, Error>> {
    let Some(bytes) = tx.get(TreeId::Images, key)? else {
        return Ok(Ok(None));
    };
    let decoded = ImageRecord::decode(&*bytes)
        .map_err(|e| format!("record of {name:?} does not decode: {e}"))
        .and_then(|r| {
            let create_revision = r.create_revision;
            r.into_image(name).map(|image| Stored { image, create_revision })
        });
    Ok(decoded.map(Some).map_err(Error::Storage))
}

/// Tests a precondition against the current image.
fn check(ns: &NamespaceName, name: &str, current: Option<&Image>, precondition: &Precondition) -> Result<(), Error> {
    let ns = ns.as_str();
    match (precondition, current) {
        (Precondition::None, _) => Ok(()),
        (Precondition::Absent, None) => Ok(()),
        (Precondition::Absent, Some(cur)) => Err(Error::Conflict(format!(
            "image {name:?} already exists in namespace {ns:?}, pointing at {}",
            cur.target.digest
        ))),
        (Precondition::Digest(want), None) => Err(Error::Conflict(format!(
            "image {name:?} does not exist in namespace {ns:?}, so it does not point at {want}"
        ))),
        (Precondition::Digest(want), Some(cur)) if cur.target.digest != *want => Err(Error::Conflict(format!(
            "image {name:?} in namespace {ns:?} points at {}, not {want}",
            cur.target.digest
        ))),
        (Precondition::Digest(_), Some(_)) => Ok(()),
    }
}

/// The key and current record of namespace `ns`, and whether that record is
/// stored (a fresh one when it does not exist yet or does not decode).
fn read_namespace(tx: &Tx<'_>, ns: &NamespaceName) -> sled::Result<(Vec<u8>, NamespaceRecord, bool)> {
    let key = ns.as_str().as_bytes().to_vec();
    let stored = tx
        .get(TreeId::Namespaces, &key)?
        // A namespace record that does not decode is rebuilt from scratch
        // rather than failing every write to the namespace.
        .and_then(|bytes| NamespaceRecord::decode(&*bytes).ok());
    let found = stored.is_some();
    Ok((key, stored.unwrap_or_default(), found))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use imaged_types::{Descriptor, Digest};

    use super::*;

    #[test]
    fn sled_cache_is_a_twelfth_of_the_files_within_its_bounds() {
        let cache = SledCache {
            min_bytes: 32 << 20,
            max_bytes: 256 << 20,
        };
        assert_eq!(cache.for_store(0), 32 << 20);
        assert_eq!(cache.for_store(12 * (32 << 20)), 32 << 20);
        assert_eq!(cache.for_store(12 * (100 << 20)), 100 << 20);
        assert_eq!(cache.for_store(12 * (256 << 20)), 256 << 20);
        assert_eq!(cache.for_store(u64::MAX), 256 << 20);
        // Fixed: neither grows nor reads the directory.
        let fixed = SledCache::fixed(8 << 20);
        assert_eq!(fixed.for_store(u64::MAX), 8 << 20);
        assert_eq!(fixed.for_dir(Path::new("/nonexistent")), 8 << 20);
        // A maximum below the minimum is the minimum.
        let odd = SledCache {
            min_bytes: 8 << 20,
            max_bytes: 1 << 20,
        };
        assert_eq!(odd.for_store(u64::MAX), 8 << 20);
        // The files are measured as they are.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a"), vec![0; 24 << 20]).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![0; 12 << 20]).unwrap();
        let small = SledCache {
            min_bytes: 1 << 20,
            max_bytes: 16 << 20,
        };
        assert_eq!(small.for_dir(dir.path()), 3 << 20);
    }

    fn trees() -> (tempfile::TempDir, Trees) {
        let dir = tempfile::tempdir().unwrap();
        let trees = Trees::open(dir.path(), 1024 * 1024).unwrap();
        (dir, trees)
    }

    fn create(name: &str, n: u64) -> Op {
        Op::CreateImage {
            ns: NamespaceName::default_namespace(),
            image: Image {
                name: name.into(),
                labels: Labels::new(),
                target: Descriptor {
                    media_type: "application/vnd.oci.image.index.v1+json".into(),
                    digest: Digest::parse(&format!("sha256:{n:064x}")).unwrap(),
                    size: n as i64,
                    annotations: Labels::new(),
                },
                created_at: UNIX_EPOCH,
                updated_at: UNIX_EPOCH,
            },
            at: Some(UNIX_EPOCH + Duration::from_secs(n)),
        }
    }

    fn delete(name: &str) -> Op {
        Op::DeleteImage {
            ns: NamespaceName::default_namespace(),
            name: name.into(),
            precondition: Precondition::None,
        }
    }

    fn dump(trees: &Trees) -> Vec<Vec<(sled::IVec, sled::IVec)>> {
        [&trees.images, &trees.namespaces, &trees.meta, &trees.index]
            .iter()
            .map(|tree| tree.iter().map(Result::unwrap).collect())
            .collect()
    }

    #[test]
    fn an_open_waits_for_a_sled_closing_in_this_process() {
        let (dir, trees) = trees();
        let closed = Arc::new(AtomicBool::new(false));
        let closer = {
            let closed = closed.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                drop(trees);
                closed.store(true, Ordering::SeqCst);
            })
        };
        // sled itself would refuse at once: its lock is held until the drop.
        let reopened = Trees::open(dir.path(), 1024 * 1024).unwrap();
        assert!(closed.load(Ordering::SeqCst), "opened while the first sled was open");
        closer.join().unwrap();
        assert!(reopened.images.is_empty());
    }

    #[test]
    fn a_key_written_twice_in_a_batch_is_journaled_once_with_its_final_value() {
        let ops = [
            create("a", 1),
            create("b", 2),
            create("c", 3),
            delete("b"),
            create("b", 4),
            delete("c"),
        ];
        let (_dir, batched) = trees();
        let plan = plan_batch(&batched, ops.iter(), 0);
        assert!(plan.results.iter().all(Result::is_ok), "{:?}", plan.results);
        let entry = plan.entry.unwrap();
        for (i, effect) in entry.effects.iter().enumerate() {
            let again = entry.effects[i + 1..]
                .iter()
                .any(|e| e.tree == effect.tree && e.key == effect.key);
            assert!(!again, "{:?} {:?} is written twice", effect.tree, effect.key);
        }
        let namespace: Vec<_> = entry.effects.iter().filter(|e| e.tree == TreeId::Namespaces).collect();
        assert_eq!(namespace.len(), 1);
        let record = NamespaceRecord::decode(namespace[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(record.images, 2);
        apply_effects(&batched, None, &entry.effects).unwrap();

        // The same ops one batch each end in exactly the same trees.
        let (_dir2, one_by_one) = trees();
        for (revision, op) in ops.iter().enumerate() {
            let entry = plan_batch(&one_by_one, std::iter::once(op), revision as u64)
                .entry
                .unwrap();
            apply_effects(&one_by_one, None, &entry.effects).unwrap();
        }
        assert_eq!(dump(&batched), dump(&one_by_one));
    }
}
