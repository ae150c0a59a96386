//! The engine: the only module that names sled.
//!
//! It opens sled (waiting out the lock a sled closed in this process still
//! holds), sizes its page cache from its files, runs the full durability
//! barrier ([`barrier`]), and, when its own [`schedule`] says, closes and
//! reopens a small sled so that it writes a snapshot, or rotates a large one
//! ([`rotation`]): a fresh sled built beside it and swapped in, in a
//! directory of its own ([`generation`]). The rest of the store sees a
//! small interface, [`Backend`]: get a key, scan a key range, apply a batch
//! of [`Effect`]s, and [`Bytes`], the shared bytes a read returns. Another
//! engine would change this module alone.
//!
//! # Sharing and the reopen
//! The open [`Backend`] sits behind one lock that every reader and the log
//! share and only [`Engine::reopen`] takes for writing, and only for the
//! close and the open: the checkpoint before them runs under the shared lock,
//! so reads go on while it syncs. A read that arrives during the close and
//! open waits for it; Gets the record cache holds never reach the engine at
//! all (see `reads`).

pub mod barrier;
pub mod generation;
pub mod rotation;
pub mod schedule;

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::layout::{Effect, TreeId};
use barrier::{Barrier, sync_dir};

/// Bytes a read returns: cheap to clone, shared with the engine's cache.
pub type Bytes = sled::IVec;

/// A failure of the engine: sled's or the file system's.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    message: String,
    no_space: bool,
}

impl EngineError {
    /// Whether the file system was full (`ENOSPC`): the one failure that
    /// freeing space cures.
    pub fn is_no_space(&self) -> bool {
        self.no_space
    }
}

fn is_no_space(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(Errno::ENOSPC as i32) || e.kind() == std::io::ErrorKind::StorageFull
}

impl From<sled::Error> for EngineError {
    fn from(e: sled::Error) -> Self {
        let no_space = matches!(&e, sled::Error::Io(io) if is_no_space(io));
        EngineError {
            message: e.to_string(),
            no_space,
        }
    }
}

/// Here, not in `error`, so that the crate's error names no layer of the
/// store.
impl From<EngineError> for crate::error::Error {
    fn from(e: EngineError) -> Self {
        crate::error::Error::Storage(e.to_string())
    }
}

impl From<std::io::Error> for EngineError {
    fn from(e: std::io::Error) -> Self {
        EngineError {
            no_space: is_no_space(&e),
            message: e.to_string(),
        }
    }
}

impl From<EngineError> for std::io::Error {
    fn from(e: EngineError) -> Self {
        if e.no_space {
            std::io::Error::new(std::io::ErrorKind::StorageFull, e.message)
        } else {
            std::io::Error::other(e.message)
        }
    }
}

/// One entry of a scan: a key and its value.
pub type KeyValue = Result<(Bytes, Bytes), EngineError>;

/// The open database and its trees: what the rest of the store reads and
/// writes through.
#[derive(Clone)]
pub struct Backend {
    db: sled::Db,
    trees: [sled::Tree; 5],
    /// The serving handle's tap, through which a rotation hears of every
    /// apply; `None` on every other handle.
    tap: Option<Arc<rotation::Tap>>,
}

impl Backend {
    /// Opens the sled database in `dir`, exactly as the daemon does, with a
    /// page cache of `cache_bytes`, and its trees.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Backend, EngineError> {
        wait_for_sled_lock(dir)?;
        remove_unfinished_snapshots(dir)?;
        Barrier::sync_before_open(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // The log decides when to flush (at checkpoints); sled's timer
            // would only add flushes the journal makes unnecessary.
            .flush_every_ms(None)
            .open()?;
        // sled writes `conf` at every open and never syncs it: a power cut
        // would leave it empty, and sled would warn and write it again.
        let conf = crate::store::files::no_follow().read(true).open(dir.join("conf"))?;
        crate::fault::sync("sled-conf", || conf.sync_data())?;
        let tree = |id: TreeId| db.open_tree(id.name());
        Ok(Backend {
            trees: [
                tree(TreeId::Images)?,
                tree(TreeId::Namespaces)?,
                tree(TreeId::Meta)?,
                tree(TreeId::Index)?,
                tree(TreeId::Changes)?,
            ],
            db,
            tap: None,
        })
    }

    fn tree(&self, id: TreeId) -> &sled::Tree {
        &self.trees[id as usize]
    }

    /// The value of `key` in `tree`.
    pub fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        Ok(self.tree(tree).get(key)?)
    }

    /// The entries of `tree` between `start` and `end`, ascending, or
    /// descending when `rev`.
    pub fn scan(
        &self,
        tree: TreeId,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        rev: bool,
    ) -> Box<dyn Iterator<Item = KeyValue>> {
        let range = self.tree(tree).range::<Vec<u8>, _>((start, end));
        let range = range.map(|entry| entry.map_err(EngineError::from));
        if rev { Box::new(range.rev()) } else { Box::new(range) }
    }

    /// The entries of `tree` whose keys start with `prefix`, ascending.
    pub fn scan_prefix(&self, tree: TreeId, prefix: &[u8]) -> impl Iterator<Item = KeyValue> + use<> {
        self.tree(tree)
            .scan_prefix(prefix)
            .map(|entry| entry.map_err(EngineError::from))
    }

    /// Every entry of `tree`, ascending.
    pub fn iter(&self, tree: TreeId) -> impl Iterator<Item = KeyValue> + use<> {
        self.tree(tree).iter().map(|entry| entry.map_err(EngineError::from))
    }

    /// The last key of `tree`, if it holds any.
    pub fn last_key(&self, tree: TreeId) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.tree(tree).last()?.map(|(key, _)| key.to_vec()))
    }

    /// How many entries `tree` holds (a scan: for tests and checks).
    pub fn len(&self, tree: TreeId) -> usize {
        self.tree(tree).len()
    }

    /// Makes `effects` in order, calling `written` with each one made. Not
    /// durable by itself: the journal, or a checkpoint, makes it so.
    pub fn apply(&self, effects: &[Effect], mut written: impl FnMut(&Effect)) -> Result<(), EngineError> {
        // Held until the effects are queued: see `rotation::Tap`.
        let tap = self.tap.as_ref().map(|tap| tap.hold());
        for effect in effects {
            let tree = self.tree(effect.tree);
            match &effect.value {
                Some(value) => drop(tree.insert(effect.key.as_slice(), value.as_slice())?),
                None => drop(tree.remove(effect.key.as_slice())?),
            }
            written(effect);
        }
        if let Some(queue) = tap.as_deref().and_then(Option::as_ref) {
            queue.push(effects);
        }
        Ok(())
    }

    /// sled's own flush: its buffers reach the files with `sync_file_range`,
    /// which is not the full barrier (see the `barrier` module).
    pub fn flush(&self) -> Result<(), EngineError> {
        self.db.flush()?;
        Ok(())
    }
}

/// Removes the snapshot files sled began and never finished.
///
/// sled 0.34 writes a snapshot to `snap.<lsn>.generating`, syncs it, renames
/// it to `snap.<lsn>` and only then removes the older snapshot. A kill or a
/// full disk before the rename leaves the `.generating` file behind, and sled
/// itself reads the highest-named `snap.*` file whatever its suffix, so a
/// partial one would fail every later open as corrupt. Such a file was never
/// the snapshot of record (the older one, still present, is), so removing it
/// loses nothing.
fn remove_unfinished_snapshots(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // The removals are not synced: should a power cut bring such a file
    // back, the next open removes it again before sled looks.
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(
                file = %entry.path().display(),
                "removing a snapshot sled did not finish (a kill or a full disk while it was written)"
            );
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// How long an open waits for a sled closed in this process to let go of
/// its file lock.
const SLED_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Waits until nothing holds sled's lock on `dir/db`, which sled takes
/// without waiting. A sled closed in this process lets go of it only when its
/// last IO job ends, which on a loaded machine can be milliseconds after the
/// close (see docs/ARCHITECTURE.md). No other process can hold it: the data
/// directory's own lock keeps them out.
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
    /// `min_bytes` (the measurement behind it is in docs/PERFORMANCE.md).
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

/// The engine: the open [`Backend`], shared by the log and every reader,
/// and what it takes to make it durable and to reopen it.
pub struct Engine {
    open: RwLock<Option<Backend>>,
    barrier: Mutex<Barrier>,
    /// The current generation's directory.
    dir: RwLock<PathBuf>,
    /// The data directory, for a store that rotates; `None` for one opened
    /// in a directory of its own (a staged restore, an offline tool).
    root: Option<PathBuf>,
    cache: SledCache,
    cache_now: AtomicU64,
    /// Reads started through [`Engine::with`], so the log can tell whether
    /// readers are idle too before it reopens sled under them.
    reads: AtomicU64,
    /// Set when sled must not be closed: after a failed write it waits
    /// forever on the flush its close makes.
    abandon: std::sync::atomic::AtomicBool,
    /// When sled is next reopened or rotated.
    schedule: Mutex<schedule::Schedule>,
    /// The serving handle's tap (see `rotation`).
    tap: Arc<rotation::Tap>,
    /// The rotation under way.
    rotation: Mutex<Option<rotation::Running>>,
    /// The rotations so far.
    rotations: tokio::sync::watch::Sender<rotation::Rotations>,
    /// Called when a rotation's thread ends, so the log swaps it in even
    /// when no write comes.
    waker: OnceLock<Arc<dyn Fn() + Send + Sync>>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.abandon.load(Ordering::SeqCst) {
            // Its copy holds the old handle open: stopped first.
            self.stop_rotation();
        }
        if self.abandon.load(Ordering::SeqCst) {
            let open = self.open.get_mut().unwrap_or_else(PoisonError::into_inner);
            // The process is stopping; the journal holds what sled lost.
            std::mem::forget(open.take());
        }
    }
}

impl Engine {
    /// Opens sled in `dir`, its page cache sized by `cache`: `dir` is made
    /// first when missing, its own entry synced, and the entries sled makes
    /// in it (its log, `conf`, `blobs/`) are synced after the open.
    pub fn open(dir: &Path, cache: SledCache) -> Result<Engine, EngineError> {
        Engine::open_in(dir, None, cache)
    }

    /// Opens the current generation of sled in data directory `root`, as
    /// [`Engine::open`] does, able to rotate it.
    pub fn open_generations(root: &Path, cache: SledCache) -> Result<Engine, EngineError> {
        Engine::open_in(&generation::current(root)?, Some(root), cache)
    }

    fn open_in(dir: &Path, root: Option<&Path>, cache: SledCache) -> Result<Engine, EngineError> {
        let started = Instant::now();
        barrier::create_dir_durably(dir, 0o700)?;
        let cache_bytes = cache.for_dir(dir);
        let mut backend = Backend::open(dir, cache_bytes)?;
        crate::fault::sync("sled-dir", || sync_dir(dir))?;
        let tap = Arc::new(rotation::Tap::default());
        backend.tap = Some(tap.clone());
        Ok(Engine {
            barrier: Mutex::new(Barrier::new(dir)?),
            open: RwLock::new(Some(backend)),
            dir: RwLock::new(dir.to_owned()),
            root: root.map(Path::to_owned),
            cache,
            cache_now: AtomicU64::new(cache_bytes),
            reads: AtomicU64::new(0),
            abandon: std::sync::atomic::AtomicBool::new(false),
            schedule: Mutex::new(schedule::Schedule::new(files_bytes(dir), started.elapsed())),
            tap,
            rotation: Mutex::new(None),
            rotations: tokio::sync::watch::Sender::new(rotation::Rotations::default()),
            waker: OnceLock::new(),
        })
    }

    /// The current generation's directory.
    pub fn dir(&self) -> PathBuf {
        self.dir.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Calls `wake` whenever a rotation's thread ends, so that it is swapped
    /// in without waiting for a write (set once; later calls do nothing).
    pub fn on_rotation_ready(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        let _ = self.waker.set(wake);
    }

    /// The open backend: `None` only when reopening sled failed.
    pub fn backend(&self) -> RwLockReadGuard<'_, Option<Backend>> {
        self.open.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many reads have started through [`Engine::with`]: unchanged
    /// over a while means no reader used the engine meanwhile.
    pub fn reads_started(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// sled's page cache as sized at its last open, in bytes.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_now.load(Ordering::Relaxed)
    }

    /// The full barrier: everything applied so far is on stable storage.
    pub fn sync(&self) -> Result<(), EngineError> {
        let open = self.backend();
        let backend = open.as_ref().ok_or_else(closed)?;
        let mut barrier = self.barrier.lock().unwrap_or_else(PoisonError::into_inner);
        barrier.sync(&backend.db)?;
        crate::fault::point("checkpoint");
        Ok(())
    }

    /// Reopens or rotates sled from now on as `policy` says (never, until
    /// called).
    pub fn schedule_reopens(&self, policy: schedule::Reopen) {
        self.schedule().set(policy);
    }

    /// `bytes` more were journaled, which a restart would scan were sled
    /// not reopened.
    pub fn journaled(&self, bytes: u64) {
        self.schedule().journaled(bytes);
    }

    /// Asked by the log between two batches: runs the upkeep that may not
    /// wait any longer (swapping in a rotation that is ready; starting one,
    /// or reopening a small sled, as the [`schedule`] says), and says what
    /// it did. After [`Upkept::durable`] the engine holds everything
    /// durably: the journal may start again.
    pub fn may_apply(&self) -> Result<Option<Upkept>, EngineError> {
        if self.rotating() {
            return self.finish_rotation();
        }
        if self.schedule().measure_due() {
            let bytes = files_bytes(&self.dir());
            self.schedule().measured(bytes);
        }
        let due = self.schedule().due();
        match due {
            Some(schedule::Due::Rotate) => match self.start_rotation(rotation::Reason::Grown) {
                Ok(_) => Ok(Some(Upkept::Started(rotation::Reason::Grown))),
                Err(e) => {
                    let bytes = files_bytes(&self.dir());
                    self.schedule().rotation_abandoned(bytes);
                    Ok(Some(Upkept::Abandoned(format!("a rotation could not start: {e}"))))
                }
            },
            Some(schedule::Due::Reopen) => self.reopen().map(|r| Some(Upkept::Reopened(r))),
            None => Ok(None),
        }
    }

    /// With nothing to apply: how long a lull in writes and reads must last
    /// before upkeep due soon runs in it ([`Engine::maintain_in_lull`]).
    pub fn lull(&self) -> Option<Duration> {
        self.schedule().lull()
    }

    /// Runs, in a lull the log has seen last [`Engine::lull`], the upkeep
    /// due soon, and says what it did, as [`Engine::may_apply`] does.
    pub fn maintain_in_lull(&self) -> Result<Option<Upkept>, EngineError> {
        if self.rotating() || self.schedule().lull().is_none() {
            return Ok(None);
        }
        self.reopen().map(|r| Some(Upkept::Reopened(r)))
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, schedule::Schedule> {
        self.schedule.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes everything durable, then closes sled and opens it again, so that
    /// it writes a snapshot and a later open scans only the log written
    /// after it. Reads wait only for the close and the open. If the open
    /// fails, the backend stays `None` and every later call says so.
    pub fn reopen(&self) -> Result<Reopened, EngineError> {
        let started = Instant::now();
        // Nothing writes meanwhile (the log calls this between batches), so
        // what this sync makes durable is everything.
        self.sync()?;
        let synced = started.elapsed();
        let mut open = self.open.write().unwrap_or_else(PoisonError::into_inner);
        let waited = started.elapsed();
        // The shared backend holds the last handles on the database: sled
        // closes here.
        *open = None;
        crate::fault::point("reopen");
        let dir = self.dir();
        let cache_bytes = self.cache.for_dir(&dir);
        // No directory sync: the entries a reopen changes are sled's
        // snapshots, and its log, synced above, recovers the same state
        // from the older one should a power cut take the newer away.
        let mut backend = Backend::open(&dir, cache_bytes)?;
        backend.tap = Some(self.tap.clone());
        *open = Some(backend);
        self.cache_now.store(cache_bytes, Ordering::Relaxed);
        let paused = started.elapsed() - waited;
        let mut schedule = self.schedule();
        let journaled = schedule.since_open();
        schedule.opened(Some(paused));
        Ok(Reopened {
            sync: synced,
            paused,
            cache_bytes,
            journaled,
        })
    }
}

impl Engine {
    /// Closes sled without a checkpoint and opens it again: after a write of
    /// sled's failed (a full disk), it refuses every later write until it is
    /// reopened. What it held only in memory is lost, so the caller replays
    /// the journal after this. If the open fails, the backend stays `None`
    /// and the next call tries again.
    pub fn reopen_after_failure(&self) -> Result<(), EngineError> {
        self.stop_rotation();
        let mut open = self.open.write().unwrap_or_else(PoisonError::into_inner);
        *open = None;
        let dir = self.dir();
        let cache_bytes = self.cache.for_dir(&dir);
        let mut backend = Backend::open(&dir, cache_bytes)?;
        backend.tap = Some(self.tap.clone());
        *open = Some(backend);
        self.cache_now.store(cache_bytes, Ordering::Relaxed);
        self.schedule().opened(None);
        Ok(())
    }

    /// Leaves sled unclosed when the engine drops (see the field).
    pub fn abandon(&self) {
        self.abandon.store(true, Ordering::SeqCst);
    }

    /// The bytes free to this process on the file system holding sled.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        let stat = nix::sys::statvfs::statvfs(&self.dir())?;
        Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
    }
}

/// How long the checkpoint after recovery may wait on a full disk before
/// the open is refused.
const FULL_DISK_PATIENCE: Duration = Duration::from_secs(3);

/// Free space below which a checkpoint that does not return counts as
/// stuck on a full disk.
const FULL_DISK_BYTES: u64 = 1 << 20;

/// The checkpoint after recovery, or a full-disk error if it is stuck:
/// sled 0.34's flush never returns once a write of its own failed for want
/// of space, which a replay into a nearly full disk can cause. The stuck
/// thread is left behind; the daemon, failing to start, exits with it.
pub fn sync_unless_full(engine: &Arc<Engine>) -> Result<(), EngineError> {
    let (done, result) = std::sync::mpsc::channel();
    let syncing = engine.clone();
    std::thread::Builder::new()
        .name("imaged-open-sync".into())
        .spawn(move || drop(done.send(syncing.sync())))?;
    let started = std::time::Instant::now();
    loop {
        match result.recv_timeout(Duration::from_millis(200)) {
            Ok(synced) => return synced,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(std::io::Error::other("the checkpoint thread stopped without an answer").into());
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let free = engine.free_bytes().unwrap_or(u64::MAX);
                if started.elapsed() >= FULL_DISK_PATIENCE && free < FULL_DISK_BYTES {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        format!(
                            "No space left on device: sled's checkpoint after replaying the journal has not \
                             returned in {:?}, with {free} bytes free",
                            started.elapsed()
                        ),
                    )
                    .into());
                }
            }
        }
    }
}

/// What a reopen took.
#[derive(Debug, Clone, Copy)]
pub struct Reopened {
    /// The checkpoint before it, during which reads went on.
    pub sync: Duration,
    /// The close and the open, during which reads that missed the record
    /// cache waited.
    pub paused: Duration,
    /// sled's page cache, sized again.
    pub cache_bytes: u64,
    /// Bytes journaled since sled last opened, before this open.
    pub journaled: u64,
}

/// What the engine's upkeep did between two batches.
#[derive(Debug, Clone)]
pub enum Upkept {
    /// sled was reopened.
    Reopened(Reopened),
    /// A rotation started, for this reason.
    Started(rotation::Reason),
    /// A rotation was swapped in.
    Rotated(rotation::Rotated),
    /// A rotation was abandoned, or could not start; serving goes on.
    Abandoned(String),
}

impl Upkept {
    /// Whether the engine now holds everything durably, so that the
    /// journal may start again.
    pub fn durable(&self) -> bool {
        matches!(self, Upkept::Reopened(_) | Upkept::Rotated(_))
    }
}

/// The engine's answer after reopening sled failed.
fn closed() -> EngineError {
    EngineError {
        message: "sled could not be reopened; see imaged's log".into(),
        no_space: false,
    }
}

impl Engine {
    /// Runs a read `f` on the open backend; an error when reopening sled
    /// failed.
    pub fn with<T, E: From<EngineError>>(&self, f: impl FnOnce(&Backend) -> Result<T, E>) -> Result<T, E> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        match self.backend().as_ref() {
            Some(backend) => f(backend),
            None => Err(closed().into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

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

    #[test]
    fn an_open_waits_for_a_sled_closing_in_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::open(dir.path(), 1 << 20).unwrap();
        let closed = Arc::new(AtomicBool::new(false));
        let closer = {
            let closed = closed.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                drop(backend);
                closed.store(true, Ordering::SeqCst);
            })
        };
        // sled itself would refuse at once: its lock is held until the drop.
        let reopened = Backend::open(dir.path(), 1 << 20).unwrap();
        assert!(closed.load(Ordering::SeqCst), "opened while the first sled was open");
        closer.join().unwrap();
        assert_eq!(reopened.len(TreeId::Images), 0);
    }
}
