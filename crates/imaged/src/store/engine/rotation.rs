//! Rotation: a fresh sled built beside the serving one, brought up to date
//! and swapped in, so that neither sled's snapshot nor its growth ever
//! stops the store.
//!
//! sled 0.34 writes its snapshot only when it opens, and reuses its files
//! but never gives them back; a reopen of a large store pauses everything
//! for as long as its open takes. A rotation does the same work off the
//! serving path, in the manner of an online defragmentation:
//!
//! 1. **Start.** The next generation's directory (`generation`) is made, and
//!    a tap ([`Tap`]) is put on the serving sled: from now on every apply,
//!    the log's and the compactor's, also queues its effects, in order.
//! 2. **Copy.** A thread of low priority copies every tree in key order, a
//!    chunk at a time, up to the key that was the tree's last when its copy
//!    began, and before each chunk applies what the queue holds. Each
//!    effect sets a key's final value, so the copy ends equal to the
//!    serving sled: a key read after its last change holds that change, a
//!    key changed after it was read gets the change from the queue, and so
//!    does a key past the tree's last (it was written after the tap went
//!    on). The scan's work is thus the store as it was, not a chase of the
//!    trees that grow at their end.
//! 3. **Open once.** The copy is closed and opened again, which writes its
//!    first snapshot (the slow part of any open) while the old one serves;
//!    then it is made durable by the full barrier.
//! 4. **Swap**, in the log thread between two batches, so no write waits
//!    more than this: the last queued effects are applied, the new sled's
//!    barrier runs (a few batches' worth), and the generation pointer is
//!    switched and synced: the one durable decision. Readers wait only for
//!    the in-memory exchange of the two handles.
//! 5. **Remove** the old directory, on a thread of its own, once sled has let
//!    go of it.
//!
//! A kill or a power cut before the switch leaves the old sled, whole, with
//! the journal that completes it; after it, the new one, durable at the
//! revision of the swap, with the same journal. Every open removes the
//! generation not in use. A rotation that fails (a full disk, an I/O error,
//! writers outrunning its queue) is abandoned: its directory is removed and
//! the serving sled never noticed; until a later one swaps in, sled is
//! reopened instead (`schedule`), so that a restart's scan stays bounded.

use std::collections::VecDeque;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::barrier::{Barrier, create_dir_durably, sync_dir};
use super::{Backend, Engine, EngineError, SledCache, Upkept, closed, files_bytes, generation};
use crate::store::layout::{Effect, TreeId};

/// Entries the copy reads from the serving sled at a time, before it
/// applies what writers changed meanwhile.
const CHUNK: usize = 1024;

/// Bytes of keys and values one chunk holds at most, so that the look at
/// the free space between two chunks is never far behind the writes.
const CHUNK_BYTES: usize = 4 << 20;

/// Most bytes of effects the catch-up queue holds: past it, writers outran
/// the copy, and the rotation is abandoned rather than hold more memory.
pub const QUEUE_BYTES: u64 = 256 << 20;

/// Chunks between two flushes of the new sled, so its dirty pages stay few.
/// (Flushing more often slowed the copy and did not remove the stalls of
/// journal syncs: docs/PERFORMANCE.md.)
const FLUSH_EVERY: u64 = 64;

/// How long stopping a rotation waits for its copy to stop.
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// How often a long copy says in the log how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// The copying thread's nice value: the serving threads come first.
const NICE: i32 = 5;

/// The tap on the serving sled: while a rotation runs, every apply queues
/// its effects too. An apply holds the tap's read lock from before it
/// writes until it has queued, so installing the tap (the write lock) waits
/// for the applies in flight, and a copy started after it misses nothing.
#[derive(Default)]
pub struct Tap {
    queue: RwLock<Option<Arc<Queue>>>,
}

impl Tap {
    /// Held across one apply: the queue to add its effects to, if any.
    pub(super) fn hold(&self) -> RwLockReadGuard<'_, Option<Arc<Queue>>> {
        self.queue.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, queue: Option<Arc<Queue>>) -> Option<Arc<Queue>> {
        std::mem::replace(&mut *self.queue.write().unwrap_or_else(PoisonError::into_inner), queue)
    }
}

/// The effects applied to the serving sled since a rotation started, in
/// order, bounded by [`QUEUE_BYTES`].
#[derive(Default)]
pub struct Queue {
    held: Mutex<(VecDeque<Vec<Effect>>, u64)>,
    overflowed: AtomicBool,
}

impl Queue {
    /// Queues the effects of one apply.
    pub(super) fn push(&self, effects: &[Effect]) {
        if self.overflowed.load(Ordering::Relaxed) {
            return;
        }
        let size: u64 = effects
            .iter()
            .map(|e| (e.key.len() + e.value.as_ref().map_or(0, Vec::len) + 32) as u64)
            .sum();
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.1 + size > QUEUE_BYTES {
            self.overflowed.store(true, Ordering::Relaxed);
            *held = (VecDeque::new(), 0);
            return;
        }
        held.0.push_back(effects.to_vec());
        held.1 += size;
    }

    /// Bytes queued now.
    fn bytes(&self) -> u64 {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).1
    }

    /// Applies what is queued to `new`, in order; says how many effects.
    fn drain_into(&self, new: &Backend) -> Result<u64, EngineError> {
        if self.overflowed.load(Ordering::Relaxed) {
            return Err(abandon(format!(
                "writers changed more than {QUEUE_BYTES} bytes while the copy ran; it could not keep up"
            )));
        }
        let batches = std::mem::take(&mut *self.held.lock().unwrap_or_else(PoisonError::into_inner)).0;
        let mut applied = 0;
        for effects in batches {
            new.apply(&effects, |_| {})?;
            applied += effects.len() as u64;
        }
        Ok(applied)
    }
}

/// Why a rotation ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// sled's files grew by the share the schedule allows.
    Grown,
    /// An operator asked (`imagectl compact`).
    Asked,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Grown => "sled's files grew",
            Reason::Asked => "asked",
        })
    }
}

/// What one rotation did.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// Why it ran.
    pub reason: Reason,
    /// Bytes of sled's files before it.
    pub before_bytes: u64,
    /// Bytes of the new sled's files at the swap.
    pub after_bytes: u64,
    /// Entries copied.
    pub keys: u64,
    /// Effects of writers applied from the queue.
    pub caught_up: u64,
    /// The copy, catch-up included.
    pub copy: Duration,
    /// The new sled's first open, which wrote its snapshot.
    pub opened: Duration,
    /// The swap, during which writes waited.
    pub paused: Duration,
    /// Of the swap: the last effects and the new sled's barrier.
    pub swap_sync: Duration,
    /// Of the swap: the pointer's switch.
    pub swap_switch: Duration,
    /// From start to swap.
    pub took: Duration,
}

/// The rotations so far, as `imagectl status`, the metrics and
/// `imagectl compact` see them.
#[derive(Debug, Clone, Default)]
pub struct Rotations {
    /// Whether one is running now.
    pub running: bool,
    /// Rotations swapped in.
    pub done: u64,
    /// Rotations abandoned.
    pub abandoned: u64,
    /// The last one swapped in.
    pub last: Option<Rotated>,
    /// Why the last abandoned one was.
    pub last_abandoned: Option<String>,
}

/// A rotation under way.
pub(super) struct Running {
    queue: Arc<Queue>,
    stop: Arc<AtomicBool>,
    /// Set by the thread as it ends, before it wakes the log: the log may
    /// look before the thread has quite returned.
    done: Arc<AtomicBool>,
    thread: JoinHandle<Result<Built, EngineError>>,
    reason: Reason,
    started: Instant,
    before_bytes: u64,
    dir: PathBuf,
}

/// A new sled, copied, opened once and durable, ready to swap in.
pub(super) struct Built {
    backend: Backend,
    barrier: Barrier,
    cache_bytes: u64,
    keys: u64,
    caught_up: u64,
    copy: Duration,
    opened: Duration,
    after_bytes: u64,
}

/// What the copying thread needs.
struct Job {
    old: Backend,
    dir: PathBuf,
    cache: SledCache,
    cache_bytes: u64,
    queue: Arc<Queue>,
    stop: Arc<AtomicBool>,
    reserve: u64,
}

/// An error that abandons a rotation, naming why.
fn abandon(why: String) -> EngineError {
    std::io::Error::other(why).into()
}

impl Engine {
    /// Starts a rotation, unless one runs already (then `Ok(false)`). A
    /// rotation needs room for a second copy of the store besides the
    /// reserve; without it, it does not start.
    pub fn start_rotation(&self, reason: Reason) -> Result<bool, EngineError> {
        let root = self
            .root
            .clone()
            .ok_or_else(|| abandon("this store does not rotate (it is staged or opened offline)".into()))?;
        let mut slot = self.rotation.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return Ok(false);
        }
        let current = self.dir();
        let before_bytes = files_bytes(&current);
        let reserve = self.schedule().reserve();
        let free = self.free_bytes()?;
        if free < before_bytes.saturating_add(reserve) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "a rotation needs room for a second copy of the store: {before_bytes} bytes besides the \
                     {reserve} kept free, and the disk has {free} bytes free"
                ),
            )
            .into());
        }
        let dir = generation::next(&root)?;
        generation::remove_dir(&dir)?;
        let mut old = self.backend().clone().ok_or_else(closed)?;
        // The copy reads; only the serving handle queues.
        old.tap = None;
        let queue = Arc::new(Queue::default());
        self.tap.set(Some(queue.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let job = Job {
            old,
            dir: dir.clone(),
            cache: self.cache,
            cache_bytes: self.cache.for_store(before_bytes),
            queue: queue.clone(),
            stop: stop.clone(),
            reserve,
        };
        let waker = self.waker.get().cloned();
        let done = Arc::new(AtomicBool::new(false));
        let ended = done.clone();
        let thread = std::thread::Builder::new()
            .name("imaged-rotation".into())
            .spawn(move || {
                let built = build(job);
                ended.store(true, Ordering::SeqCst);
                if let Some(wake) = waker {
                    wake();
                }
                built
            });
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                self.tap.set(None);
                return Err(e.into());
            }
        };
        *slot = Some(Running {
            queue,
            stop,
            done,
            thread,
            reason,
            started: Instant::now(),
            before_bytes,
            dir,
        });
        self.rotations.send_modify(|r| r.running = true);
        self.schedule().rotation_started();
        Ok(true)
    }

    /// Whether a rotation is under way.
    pub fn rotating(&self) -> bool {
        self.rotation.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// The rotations so far; changes are sent as they happen.
    pub fn rotations(&self) -> tokio::sync::watch::Receiver<Rotations> {
        self.rotations.subscribe()
    }

    /// Between two batches: swaps in a rotation that is ready, or notes one
    /// that failed.
    pub(super) fn finish_rotation(&self) -> Result<Option<Upkept>, EngineError> {
        let mut slot = self.rotation.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(running) = slot.as_ref() else {
            return Ok(None);
        };
        if running.queue.overflowed.load(Ordering::Relaxed) {
            running.stop.store(true, Ordering::Relaxed);
        }
        if !running.done.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let running = slot.take().expect("checked above");
        drop(slot);
        match running.thread.join() {
            Ok(Ok(built)) => self.swap(
                running.reason,
                running.started,
                running.before_bytes,
                &running.dir,
                built,
            ),
            Ok(Err(e)) => Ok(Some(self.abandoned(&running.dir, e.to_string()))),
            Err(_) => Ok(Some(
                self.abandoned(&running.dir, "the rotation's thread panicked".into()),
            )),
        }
    }

    /// Stops a rotation under way and removes what it built (at shutdown,
    /// and before sled is reopened after a failure).
    pub fn stop_rotation(&self) {
        let running = self.rotation.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(running) = running {
            running.stop.store(true, Ordering::Relaxed);
            // It stops between two chunks; but a flush of sled 0.34 that met
            // a full disk never returns, and nothing may wait for that.
            let started = Instant::now();
            while !running.thread.is_finished() && started.elapsed() < STOP_PATIENCE {
                std::thread::sleep(Duration::from_millis(5));
            }
            if running.thread.is_finished() {
                let _ = running.thread.join();
                self.abandoned(
                    &running.dir,
                    "stopped: imaged is stopping, or sled is reopened after a failure".into(),
                );
            } else {
                // Left behind, holding its directory, which the next start
                // removes as any generation the pointer does not name.
                tracing::error!(
                    dir = %running.dir.display(),
                    "a rotation's copy did not stop within {STOP_PATIENCE:?} (a full disk?); it is left behind"
                );
                self.tap.set(None);
                self.rotations.send_modify(|r| {
                    r.running = false;
                    r.abandoned += 1;
                    r.last_abandoned = Some("its copy did not stop; see imaged's log".into());
                });
                let bytes = files_bytes(&self.dir());
                self.schedule().rotation_abandoned(bytes);
            }
        }
    }

    /// Notes an abandoned rotation: the tap comes off, its directory goes.
    fn abandoned(&self, dir: &Path, why: String) -> Upkept {
        self.tap.set(None);
        // A failed copy's thread has removed its directory already, so that
        // writes do not wait here for a large removal; this one has work
        // only when the swap failed.
        if let Err(e) = generation::remove_dir(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an abandoned rotation's directory");
        }
        self.rotations.send_modify(|r| {
            r.running = false;
            r.abandoned += 1;
            r.last_abandoned = Some(why.clone());
        });
        let bytes = files_bytes(&self.dir());
        self.schedule().rotation_abandoned(bytes);
        Upkept::Abandoned(why)
    }

    /// Swaps `built` in: the last effects, the barrier, the switch, and the
    /// exchange of handles. Runs in the log thread, so no batch is applied
    /// meanwhile; the compactor may still apply, and its effects follow
    /// through the tap until the exchange.
    fn swap(
        &self,
        reason: Reason,
        started: Instant,
        before_bytes: u64,
        dir: &Path,
        mut built: Built,
    ) -> Result<Option<Upkept>, EngineError> {
        let pause = Instant::now();
        let root = self.root.clone().expect("only a store with a root rotates");
        let queue = self.tap.hold().clone();
        let ready = queue
            .as_ref()
            .map_or(Ok(0), |q| q.drain_into(&built.backend))
            .and_then(|_| Ok(built.barrier.sync(&built.backend.db)?));
        if let Err(e) = ready {
            return Ok(Some(self.abandoned(dir, format!("making the new sled durable: {e}"))));
        }
        let swap_sync = pause.elapsed();
        let switched = generation::switch(&root, dir);
        let swap_switch = pause.elapsed() - swap_sync;
        if let Err(e) = &switched
            && generation::current(&root).ok().as_deref() != Some(dir)
        {
            return Ok(Some(self.abandoned(dir, format!("switching to the new sled: {e}"))));
        }
        let (old, old_dir) = {
            let mut open = self.open.write().unwrap_or_else(PoisonError::into_inner);
            // No apply is in flight: each holds the open handle's read lock.
            if let Some(queue) = self.tap.set(None) {
                // Only the compactor's, since the drain above: in memory,
                // made durable by the next checkpoint, as its others are.
                queue.drain_into(&built.backend)?;
            }
            let mut serving = built.backend.clone();
            serving.tap = Some(self.tap.clone());
            let old = open.replace(serving);
            *self.barrier.lock().unwrap_or_else(PoisonError::into_inner) = built.barrier;
            let old_dir = std::mem::replace(
                &mut *self.dir.write().unwrap_or_else(PoisonError::into_inner),
                dir.into(),
            );
            self.cache_now.store(built.cache_bytes, Ordering::Relaxed);
            (old, old_dir)
        };
        let paused = pause.elapsed();
        remove_when_closed(old, old_dir);
        let rotated = Rotated {
            reason,
            before_bytes,
            after_bytes: built.after_bytes,
            keys: built.keys,
            caught_up: built.caught_up,
            copy: built.copy,
            opened: built.opened,
            paused,
            swap_sync,
            swap_switch,
            took: started.elapsed(),
        };
        self.rotations.send_modify(|r| {
            r.running = false;
            r.done += 1;
            r.last = Some(rotated.clone());
        });
        self.schedule().rotation_swapped(built.after_bytes, built.opened);
        // A switch whose directory sync failed is made (the pointer names
        // the new sled), but the disk said no: the store stops writing.
        switched?;
        Ok(Some(Upkept::Rotated(rotated)))
    }
}

/// The copying thread: builds the new sled, or removes what it made.
fn build(job: Job) -> Result<Built, EngineError> {
    // SAFETY: setpriority on this thread's own id changes nothing but its
    // scheduling; on failure the copy just runs at normal priority.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, NICE);
    }
    let dir = job.dir.clone();
    let built = copy(job);
    if built.is_err() {
        // Not synced: a power cut that brings it back has it removed at the
        // next open, as any generation the pointer does not name.
        if let Err(e) = generation::remove_dir(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an abandoned rotation's directory");
        }
    }
    built
}

fn copy(job: Job) -> Result<Built, EngineError> {
    let Job {
        old,
        dir,
        cache,
        cache_bytes,
        queue,
        stop,
        reserve,
    } = job;
    let started = Instant::now();
    create_dir_durably(&dir, 0o700)?;
    let new = Backend::open(&dir, cache_bytes)?;
    let mut keys = 0u64;
    let mut caught_up = 0u64;
    let mut chunks = 0u64;
    let mut told = Instant::now();
    for tree in TreeId::ALL {
        // Only up to the tree's last key now: any key past it was written
        // after the tap went on, and the queue brings it. Scanning on would
        // chase the trees that grow at their end (the change log, the time
        // indexes) for as long as writers write, copying each new entry a
        // second time.
        let Some(last) = old.last_key(tree)? else { continue };
        let mut after: Option<Vec<u8>> = None;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(abandon("stopped before the copy ended".into()));
            }
            caught_up += queue.drain_into(&new)?;
            let from = after.take().map_or(Bound::Unbounded, Bound::Excluded);
            let mut bytes = 0;
            let chunk = old
                .scan(tree, from, Bound::Included(last.clone()), false)
                .take_while(|entry| {
                    let within = bytes < CHUNK_BYTES;
                    bytes += entry.as_ref().map_or(0, |(k, v)| k.len() + v.len());
                    within
                })
                .take(CHUNK)
                .collect::<Result<Vec<_>, _>>()?;
            for (key, value) in &chunk {
                new.tree(tree).insert(key, value.clone())?;
            }
            keys += chunk.len() as u64;
            chunks += 1;
            crate::fault::point("rotation-copy");
            // A look at the free space after every chunk (a statvfs, cheap
            // beside a chunk): the copy must never take the reserve that
            // the store's own writes need.
            {
                let free = free_bytes(&dir)?;
                // The next chunk's room too: sled may write it out before
                // the next look.
                if free < reserve + CHUNK_BYTES as u64 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        format!(
                            "the disk has {free} bytes free, less than the {reserve} kept free and room for \
                             the next {CHUNK_BYTES} bytes of the copy"
                        ),
                    )
                    .into());
                }
            }
            if chunks.is_multiple_of(FLUSH_EVERY) {
                new.flush()?;
            }
            if told.elapsed() >= PROGRESS_EVERY {
                told = Instant::now();
                // Abandoning a copy that falls behind was tried: the reopen
                // it leads to pays for all the log written meanwhile, in
                // one pause (docs/PERFORMANCE.md).
                tracing::info!(
                    tree = tree.name(),
                    keys,
                    caught_up,
                    queued_mib = queue.bytes() >> 20,
                    "rotating sled: still copying"
                );
            }
            // A chunk cut short by its bytes is not the tree's end.
            match chunk.last() {
                Some((key, _)) if chunk.len() == CHUNK || bytes >= CHUNK_BYTES => after = Some(key.to_vec()),
                _ => break,
            }
        }
    }
    caught_up += queue.drain_into(&new)?;
    let copied = started.elapsed();
    new.flush()?;
    drop(new);
    // The first open of a large sled writes its snapshot, which takes as
    // long as the reopen a rotation replaces: here, off the serving path.
    let opening = Instant::now();
    let cache_bytes = cache.for_dir(&dir);
    let new = Backend::open(&dir, cache_bytes)?;
    let opened = opening.elapsed();
    caught_up += queue.drain_into(&new)?;
    let mut barrier = Barrier::new(&dir)?;
    barrier.sync(&new.db)?;
    crate::fault::sync("rotation-dir", || sync_dir(&dir))?;
    // Twice more, so that what the swap itself drains and syncs, while
    // writes wait, is only what came since.
    for _ in 0..2 {
        caught_up += queue.drain_into(&new)?;
        barrier.sync(&new.db)?;
    }
    crate::fault::point("rotation-built");
    Ok(Built {
        after_bytes: files_bytes(&dir),
        backend: new,
        barrier,
        cache_bytes,
        keys,
        caught_up,
        copy: copied,
        opened,
    })
}

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// Removes the old generation's directory once sled has let go of it: the
/// last handle (a reader's scan may hold one a while) closes it, and its
/// file lock goes with its last IO job.
fn remove_when_closed(old: Option<Backend>, dir: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("imaged-rotation-removal".into())
        .spawn(move || {
            drop(old);
            crate::fault::point("rotation-removal");
            let started = Instant::now();
            let mut warned = Duration::ZERO;
            while !sled_let_go(&dir) {
                if started.elapsed() >= warned + Duration::from_secs(60) {
                    warned = started.elapsed();
                    tracing::warn!(dir = %dir.display(), "the old sled is still open; its directory waits");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // Not synced: should a power cut bring it back, the next open
            // removes it, as any generation the pointer does not name.
            match generation::remove_dir(&dir) {
                Ok(()) => tracing::info!(dir = %dir.display(), "removed the old sled"),
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the old sled"),
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start removing the old sled; the next start removes it");
    }
}

/// Whether nothing holds sled's lock on `dir/db` any more.
fn sled_let_go(dir: &Path) -> bool {
    use nix::fcntl::{Flock, FlockArg};
    match std::fs::File::open(dir.join("db")) {
        Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok(),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const BASE: u64 = 60_000;

    fn effect(tree: TreeId, n: u64, value: Option<u64>) -> Effect {
        Effect {
            tree,
            key: n.to_be_bytes().to_vec(),
            value: value.map(|v| v.to_be_bytes().repeat(4)),
        }
    }

    /// Applies `effects` through the serving handle, as the log does, and
    /// to `model`.
    fn apply(engine: &Engine, model: &mut BTreeMap<(u8, Vec<u8>), Vec<u8>>, effects: &[Effect]) {
        engine.with(|b| b.apply(effects, |_| {})).unwrap();
        for e in effects {
            let key = (e.tree as u8, e.key.clone());
            match &e.value {
                Some(v) => drop(model.insert(key, v.clone())),
                None => drop(model.remove(&key)),
            }
        }
    }

    #[test]
    fn the_copy_reads_each_tree_as_it_began_and_the_queue_brings_what_came_after() {
        let root = tempfile::tempdir().unwrap();
        let engine = Engine::open_generations(root.path(), SledCache::fixed(8 << 20)).unwrap();
        let mut model = BTreeMap::new();
        // A change log (keys that grow at its end) and images (keys
        // anywhere).
        for start in (0..BASE).step_by(1000) {
            let effects: Vec<Effect> = (start..start + 1000)
                .flat_map(|n| {
                    [
                        effect(TreeId::Changes, n, Some(n)),
                        effect(TreeId::Images, n * 2, Some(n)),
                    ]
                })
                .collect();
            apply(&engine, &mut model, &effects);
        }
        assert!(engine.start_rotation(Reason::Asked).unwrap());
        // While it copies: the log grows at its end and is compacted at its
        // start, images are rewritten, added between others and removed.
        let mut written = 0u64;
        let rotated = loop {
            let n = written;
            let effects = [
                effect(TreeId::Changes, BASE + n, Some(n)),
                effect(TreeId::Changes, n, None),
                effect(TreeId::Images, (n * 7919) % (2 * BASE), Some(n + 1)),
                effect(TreeId::Images, ((n * 104_729) % (2 * BASE)) | 1, Some(n + 2)),
                effect(TreeId::Images, (n * 31) % (2 * BASE), None),
            ];
            apply(&engine, &mut model, &effects);
            written += 1;
            match engine.may_apply().unwrap() {
                None => {}
                Some(Upkept::Rotated(rotated)) => break rotated,
                Some(other) => panic!("{other:?}"),
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        assert!(
            written > 100,
            "the copy ended before the writes began ({written} rounds)"
        );
        let held: BTreeMap<(u8, Vec<u8>), Vec<u8>> = engine
            .with(|b| {
                let mut held = BTreeMap::new();
                for tree in TreeId::ALL {
                    for entry in b.iter(tree) {
                        let (k, v) = entry?;
                        held.insert((tree as u8, k.to_vec()), v.to_vec());
                    }
                }
                Ok::<_, EngineError>(held)
            })
            .unwrap();
        assert!(held == model, "the new sled differs from what was written");
        // The scan read the store as it was: the log's new end came from
        // the queue, not from chasing it.
        assert!(
            rotated.keys <= 2 * BASE + written / 2,
            "{} entries scanned, of {} at the start and {written} appended at the log's end",
            rotated.keys,
            2 * BASE
        );
        assert!(rotated.caught_up >= 5 * written / 2, "{rotated:?}");
    }
}
