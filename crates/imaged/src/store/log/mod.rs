//! The log: the one writer thread, which takes changes in batches, makes
//! each batch durable with one journal entry, applies it to the engine, and
//! only then answers; and the store-wide revision it keeps.
//!
//! ```text
//!  async callers ──Job──▶ log thread: batch → plan (rules; reads only)
//!                                    → one journal entry, fdatasync'ed
//!                                    → engine writes (in memory) → record cache
//!                                    → commit hook → replies
//! ```
//!
//! - **One writer.** Every change goes through one thread, so a change's
//!   checks (does the name exist? does it point at this digest?) and its
//!   writes are atomic without locks.
//! - **Batches.** The thread takes the jobs waiting (up to [`MAX_BATCH`],
//!   and up to [`batch::MAX_ENTRY_BYTES`] of writes) and plans them in order
//!   ([`batch`]). A later op of the batch reads what an earlier one planned.
//!   Each job's refusal is its own: a refused job writes nothing and does
//!   not stop the others.
//! - **No engine transactions.** The journal gives what a transaction would:
//!   a batch is in the journal before the engine sees any of it, so one that
//!   the engine holds only in part is completed by the replay, and one that
//!   never reached the journal never reached the engine (why sled's own
//!   transactions are not used: docs/PERFORMANCE.md).
//! - **Group commit.** While the thread syncs a batch, new jobs queue up and
//!   form the next batch, so one sync serves every request that arrived
//!   during the previous one.
//! - **Fair turns.** When jobs of more than one uid wait, a batch takes
//!   those of the uids whose turn it is by the journal bytes each has written
//!   ([`fair`]), so one uid's heavy writes cannot make every batch heavy.
//! - **Write-ahead.** The planned writes are appended to the [`journal`] as
//!   one entry and synced; when the journal is full, a checkpoint (the
//!   engine's full barrier) runs first and the journal starts again. Only
//!   then are they made in the engine, so readers see a change only once it
//!   is durable.
//! - **Answers only once durable.** If a write or sync fails, the store
//!   stops taking writes (its state in memory may be ahead of the disk) and
//!   says so.
//! - **The commit hook.** After each durable batch, and before its answers,
//!   the hook (when one is installed) is handed the batch's [`Change`]s:
//!   revisions, namespace, records before and after. This is where a change
//!   feed starts.
//! - **Between batches.** [`Msg::Checkpoint`] makes everything durable in the
//!   engine. The log asks the engine whether it may apply the next batch,
//!   and, when idle, how long a lull the engine's upkeep wants: the engine
//!   schedules its own reopens (`engine::schedule`); the log only tells it
//!   what it journals, and starts the journal again after one.

pub mod batch;
pub mod fair;
pub mod journal;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::engine::{Backend, Engine, EngineError, Upkept};
use super::layout::Effect;
use super::reads::cache::RecordCache;
use super::rules::Change;
use crate::error::Error;
use crate::stats::StoreStats;
use batch::{Job, Plan};
use journal::{Entry, Journal};

/// Most jobs applied in one batch.
pub const MAX_BATCH: usize = 512;

/// What the log thread is sent.
pub enum Msg {
    /// A change to apply (boxed: a job is large, and the channel holds many).
    Job(Box<Job>),
    /// Between two batches, make everything the engine holds durable; the
    /// journal then starts again.
    Checkpoint(oneshot::Sender<Result<(), Error>>),
    /// Answer at once: the log thread is alive and taking messages (the
    /// service manager's watchdog asks).
    Ping(oneshot::Sender<()>),
    /// Between two batches, run the engine's upkeep now: a rotation's
    /// copy is ready to swap in.
    Maintain,
    /// Apply what came before, make it durable, and stop.
    Shutdown,
}

/// A batch that was made durable and applied: the revisions it spans and
/// what it changed, in order.
#[derive(Debug)]
pub struct Commit {
    /// The batch's first revision.
    pub first: u64,
    /// Its last revision.
    pub last: u64,
    /// One change per revision.
    pub changes: Vec<Change>,
}

/// Called on the log thread after each durable batch, before its callers
/// hear back, with every revision exactly once and in order (the batches a
/// heal replays too). It must not block: it holds up every write.
pub type CommitHook = Box<dyn FnMut(Commit) + Send>;

/// What the log keeps up between batches besides the engine's own upkeep
/// (`engine::schedule`): the space it keeps free.
#[derive(Debug, Clone, Copy)]
pub struct Upkeep {
    /// Writes are refused while the file system has less free than this.
    pub min_free: u64,
}

/// What the log shares with the readers of the store.
pub struct Shared {
    /// The record cache it keeps in step with each batch.
    pub cache: Arc<RecordCache>,
    /// Set once the store stops taking writes after a storage failure.
    pub failed: Arc<AtomicBool>,
    /// The revision up to which every batch is applied.
    pub applied: Arc<AtomicU64>,
    /// What the log counts, for the metrics.
    pub stats: Arc<StoreStats>,
    /// The quotas each batch is planned under.
    pub tunables: Arc<super::Tunables>,
    /// What each uid owes of its pace of writing: the log charges it.
    pub pace: Arc<fair::Pace>,
}

/// The log thread's state.
pub struct Log {
    engine: Arc<Engine>,
    journal: Journal,
    revision: u64,
    /// Times the wait for a lull (a runtime of the log thread's
    /// own, with a timer and nothing else).
    timer: tokio::runtime::Runtime,
    cache: Arc<RecordCache>,
    failed: Arc<AtomicBool>,
    hook: Option<CommitHook>,
    /// The revision readers may count on: every batch up to it is applied.
    applied: Arc<AtomicU64>,
    /// Writes are refused while the file system has less free than this.
    min_free: u64,
    /// Set when a write failed for want of space: sled then refuses every
    /// write until it is reopened, so the log heals it (reopen, replay the
    /// journal) once space is free again, and refuses writes until then.
    /// Holds when the last attempt was.
    no_space: Option<Instant>,
    stats: Arc<StoreStats>,
    tunables: Arc<super::Tunables>,
    /// Each uid's turn when more than one writes.
    turns: fair::Turns,
    pace: Arc<fair::Pace>,
}

/// How often a log short of space looks again, at most.
const SPACE_RETRY: Duration = Duration::from_secs(1);

impl Log {
    /// The log of `engine`, whose journal is `journal` (already replayed and
    /// checkpointed) and whose revision is `revision`.
    pub fn new(
        engine: Arc<Engine>,
        journal: Journal,
        revision: u64,
        upkeep: Upkeep,
        shared: Shared,
        hook: Option<CommitHook>,
    ) -> std::io::Result<Log> {
        let Upkeep { min_free } = upkeep;
        let Shared {
            cache,
            failed,
            applied,
            stats,
            tunables,
            pace,
        } = shared;
        let timer = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
        Ok(Log {
            engine,
            journal,
            revision,
            timer,
            cache,
            failed,
            hook,
            applied,
            min_free,
            no_space: None,
            stats,
            tunables,
            turns: fair::Turns::default(),
            pace,
        })
    }

    /// Runs the log: takes the jobs waiting, plans them as one batch, makes
    /// the batch durable in the journal, applies it, and only then answers.
    /// Jobs that arrive meanwhile form the next batch (group commit). Stops
    /// at shutdown or when every sender is gone, after a last checkpoint.
    pub fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut pending: Vec<Job> = Vec::new();
        let mut stopping = false;
        loop {
            if pending.is_empty() && !stopping {
                match self.next_idle(&mut rx) {
                    Some(msg) => stopping = self.take(msg, &mut pending),
                    None => stopping = true,
                }
            }
            while pending.len() < MAX_BATCH && !stopping {
                match rx.try_recv() {
                    Ok(msg) => stopping = self.take(msg, &mut pending),
                    Err(_) => break,
                }
            }
            if pending.is_empty() {
                if stopping {
                    break;
                }
                continue;
            }
            self.commit(&mut pending);
            if self.may_maintain() {
                let done = self.engine.may_apply();
                self.maintained(done);
            }
        }
        self.engine.stop_rotation();
        if self.no_space.is_some() {
            // sled waits forever on a flush after a failed write; the journal
            // holds every acknowledged batch, and the next start replays it.
            tracing::warn!("no final checkpoint: the disk is full; the next start replays the journal");
            self.engine.abandon();
        } else if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "final checkpoint failed");
        }
    }

    /// Takes `msg`: queues a job, or runs a between-batches message at once
    /// (every job before it has been answered). Returns whether to stop.
    fn take(&mut self, msg: Msg, pending: &mut Vec<Job>) -> bool {
        match msg {
            Msg::Job(job) => pending.push(*job),
            Msg::Checkpoint(reply) => {
                self.commit_all(pending);
                let result = if self.no_space.is_some() {
                    Err(Error::ResourceExhausted("the disk is full; free space first".into()))
                } else {
                    self.checkpoint().map_err(|e| Error::Storage(e.to_string()))
                };
                let _ = reply.send(result);
            }
            Msg::Ping(reply) => {
                let _ = reply.send(());
            }
            Msg::Maintain => {
                if self.may_maintain() {
                    let done = self.engine.may_apply();
                    self.maintained(done);
                }
            }
            Msg::Shutdown => return true,
        }
        false
    }

    /// Waits for the next message. When the engine has upkeep due soon, it
    /// runs once neither a message nor a read has come for as long as the
    /// engine asks ([`Engine::lull`]): a reopen pauses readers that miss the
    /// record cache as well as writers.
    fn next_idle(&mut self, rx: &mut mpsc::Receiver<Msg>) -> Option<Msg> {
        if let Some(idle) = self.engine.lull().filter(|_| self.may_maintain()) {
            loop {
                let reads = self.engine.reads_started();
                // The timeout is made inside the timer's runtime, whose clock
                // it reads.
                match self
                    .timer
                    .block_on(async { tokio::time::timeout(idle, rx.recv()).await })
                {
                    Ok(msg) => return msg,
                    Err(_) if self.engine.reads_started() == reads => break,
                    Err(_) => continue,
                }
            }
            let done = self.engine.maintain_in_lull();
            self.maintained(done);
        }
        rx.blocking_recv()
    }

    /// Plans, makes durable, applies and answers the jobs of `pending` whose
    /// turn it is ([`fair::Turns`]): all of them, batch after batch, unless
    /// some uid's must wait, when it returns after one batch so that jobs
    /// arriving meanwhile join the next.
    fn commit(&mut self, pending: &mut Vec<Job>) {
        // Jobs one plan may take: all, or one alone to find the job whose
        // writes do not fit.
        let mut take = usize::MAX;
        while !pending.is_empty() {
            if self.failed.load(Ordering::SeqCst) {
                // A job queued just before a failure: refuse it like later ones.
                for job in pending.drain(..) {
                    job.refuse(refused_after_failure());
                }
                return;
            }
            if let Some(why) = self.short_of_space() {
                for job in pending.drain(..) {
                    job.refuse(Error::ResourceExhausted(why.clone()));
                }
                return;
            }
            let engine = self.engine.clone();
            let open = engine.backend();
            let Some(backend) = open.as_ref() else {
                // Reopening sled failed: refuse what waits.
                self.failed.store(true, Ordering::SeqCst);
                continue;
            };
            // Only the uids whose turn it is, when more than one waits; the
            // others wait for the next batch, with what arrives meanwhile.
            let chosen = self.turns.choose(pending);
            let deferred = pending.len() > chosen;
            let mut changes = self.hook.as_ref().map(|_| Vec::new());
            let plan = batch::plan(
                backend,
                pending.iter_mut().take(take.min(chosen)),
                self.revision,
                self.tunables.quotas(),
                changes.as_mut(),
            );
            let durable = self.make_durable(backend, &plan);
            drop(open);
            for (job, cost) in pending.iter().zip(&plan.costs) {
                self.turns.charge(job.flow(), *cost);
                if !job.caller().admin {
                    self.pace.charge(job.flow(), *cost);
                }
            }
            if let Err(Failed::TooLarge(why)) = durable {
                // Nothing was journaled or applied. Each job is planned
                // alone until the one that does not fit is found and
                // refused; the store goes on.
                if plan.planned > 1 {
                    take = 1;
                } else {
                    pending.remove(0).refuse(Error::ResourceExhausted(why));
                }
                continue;
            }
            if let Err(Failed::Storage(e)) = &durable
                && e.is_no_space()
            {
                tracing::error!(error = %e, "the disk is full; refusing writes until space is freed");
                self.no_space = Some(Instant::now());
                let why = format!(
                    "the disk holding imaged's data is full ({e}); writes resume once space is freed. This change \
                     may have reached the journal, in which case it is applied then: read it back to know"
                );
                for job in pending.drain(..plan.planned) {
                    job.refuse(Error::ResourceExhausted(why.clone()));
                }
                continue;
            }
            let failure = match &durable {
                Ok(()) => {
                    self.stats.batch_jobs.observe(plan.planned as u64);
                    if let Some(entry) = &plan.entry {
                        self.revision = entry.last;
                        self.applied.store(entry.last, Ordering::SeqCst);
                        if let (Some(hook), Some(changes)) = (&mut self.hook, changes) {
                            hook(Commit {
                                first: entry.first,
                                last: entry.last,
                                changes,
                            });
                        }
                    }
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "making a batch durable failed; refusing further writes");
                    self.failed.store(true, Ordering::SeqCst);
                    Some(e.to_string())
                }
            };
            for job in pending.drain(..plan.planned) {
                job.answer(failure.as_deref());
            }
            if deferred {
                return;
            }
        }
    }

    /// Commits every job in `pending`, batch after batch.
    fn commit_all(&mut self, pending: &mut Vec<Job>) {
        while !pending.is_empty() {
            self.commit(pending);
        }
    }

    /// Why writes are refused for want of space, if they are: the file
    /// system has less free than the reserve, or a write failed for want of
    /// space and the engine has not healed yet (it is healed here once the
    /// space is back).
    fn short_of_space(&mut self) -> Option<String> {
        // Not knowing is no reason to refuse: the write itself will say.
        let free = self.engine.free_bytes().unwrap_or(u64::MAX);
        if free < self.min_free {
            return Some(format!(
                "the disk holding imaged's data has {free} bytes free, less than the {} it keeps in reserve \
                 (--min-free-mb); free space and retry",
                self.min_free
            ));
        }
        let last = self.no_space?;
        if last.elapsed() >= SPACE_RETRY {
            self.no_space = Some(Instant::now());
            match self.heal() {
                Ok(()) => {
                    tracing::info!(revision = self.revision, "space is free again: writes resume");
                    self.no_space = None;
                    return None;
                }
                Err(e) if e.is_no_space() => {}
                Err(e) => {
                    tracing::error!(error = %e, "recovering from a full disk failed; refusing further writes");
                    self.failed.store(true, Ordering::SeqCst);
                }
            }
        }
        Some("the disk holding imaged's data was full and the store has not recovered yet; free space and retry".into())
    }

    /// Recovers from a failed write without a restart: reopens sled, which
    /// lost what it held only in memory, replays the journal (every
    /// acknowledged batch since the last checkpoint, and the failed one if
    /// it was journaled), and checkpoints.
    fn heal(&mut self) -> Result<(), EngineError> {
        self.engine.reopen_after_failure()?;
        let chain = self.journal.read()?;
        let revision = self.engine.with(|backend| {
            let recovered = super::recovery::revision_of(backend).map_err(std::io::Error::other)?;
            let replayed = chain.entries.last().map_or(recovered, |e| e.last.max(recovered));
            if chain.damage(replayed).is_some() {
                return Err(EngineError::from(std::io::Error::other(
                    "the journal is damaged; restart imaged, which names the damage",
                )));
            }
            replay(backend, &chain.entries, recovered).map_err(|e| EngineError::from(std::io::Error::other(e)))
        })?;
        self.checkpoint()?;
        let before = self.revision;
        self.revision = revision;
        self.applied.store(revision, Ordering::SeqCst);
        if revision > before
            && let Some(hook) = &mut self.hook
        {
            // A batch refused for want of space may have been journaled, and
            // the replay applied it: the hook hears of it from the change
            // log, so that it misses no revision.
            let changes = self.engine.with(|backend| {
                super::changes::read(backend, before, revision, usize::MAX)
                    .map_err(|e| EngineError::from(std::io::Error::other(e)))
            })?;
            if changes.len() as u64 == revision - before {
                hook(Commit {
                    first: before + 1,
                    last: revision,
                    changes,
                });
            } else {
                tracing::error!(before, revision, "the change log misses replayed revisions");
            }
        }
        Ok(())
    }

    /// Journals a planned batch (checkpointing first when the journal is
    /// full) and applies it to `backend`, keeping the record cache in step.
    fn make_durable(&mut self, backend: &Backend, plan: &Plan) -> Result<(), Failed> {
        if let Some(e) = &plan.error {
            return Err(Failed::Storage(e.clone()));
        }
        let Some(entry) = &plan.entry else {
            return Ok(());
        };
        let bytes = entry.encode();
        if bytes.len() as u64 > journal::CAPACITY {
            // The bounds on records keep every batch far below this; should
            // one pass them, it is refused rather than fence the store.
            return Err(Failed::TooLarge(format!(
                "the change needs a journal entry of {} bytes, more than the journal's {} bytes",
                bytes.len(),
                journal::CAPACITY
            )));
        }
        self.engine.journaled(bytes.len() as u64);
        crate::fault::point("journal");
        crate::fault::fail("journal")?;
        if !self.timed_append(&bytes)? {
            self.checkpoint()?;
            if !self.timed_append(&bytes)? {
                return Err(Failed::Storage(
                    std::io::Error::other(format!(
                        "a journal entry of {} bytes does not fit an empty journal",
                        bytes.len()
                    ))
                    .into(),
                ));
            }
        }
        let cache = &self.cache;
        backend.apply(&entry.effects, |effect| cache_write(cache, effect))?;
        Ok(())
    }

    /// Appends `bytes` to the journal and syncs it, timed for the metrics;
    /// false when the journal is full.
    fn timed_append(&mut self, bytes: &[u8]) -> std::io::Result<bool> {
        let start = Instant::now();
        let appended = self.journal.append(bytes)?;
        if appended {
            self.stats.journal_sync.observe(start.elapsed().as_nanos() as u64);
        }
        Ok(appended)
    }

    /// Makes everything the engine holds durable; the journal's entries are
    /// then no longer needed.
    fn checkpoint(&mut self) -> Result<(), EngineError> {
        let start = Instant::now();
        self.engine.sync()?;
        self.journal.reset();
        self.stats.checkpoint.observe(start.elapsed().as_nanos() as u64);
        Ok(())
    }

    /// Whether the engine's upkeep may run: not once the store refuses
    /// writes after a failure or for want of space.
    fn may_maintain(&self) -> bool {
        !self.failed.load(Ordering::SeqCst) && self.no_space.is_none()
    }

    /// What the engine's upkeep did: after a reopen or a rotation, whose
    /// checkpoint made everything durable, the journal starts again.
    fn maintained(&mut self, done: Result<Option<Upkept>, EngineError>) {
        match done {
            Ok(None) => {}
            Ok(Some(upkept)) => {
                if upkept.durable() {
                    self.journal.reset();
                }
                log_upkeep(&upkept);
            }
            Err(e) => {
                tracing::error!(error = %e, "maintaining sled failed; refusing further writes");
                self.failed.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Logs what the engine's upkeep did.
fn log_upkeep(upkept: &Upkept) {
    match upkept {
        Upkept::Reopened(took) => tracing::info!(
            sync_ms = took.sync.as_millis() as u64,
            paused_ms = took.paused.as_millis() as u64,
            journaled_mib = took.journaled >> 20,
            cache_mib = took.cache_bytes >> 20,
            "reopened sled, which wrote a snapshot: a restart scans the log from here"
        ),
        Upkept::Started(reason) => tracing::info!(%reason, "rotating sled: copying it to a fresh one"),
        Upkept::Rotated(r) => tracing::info!(
            reason = %r.reason,
            before_mib = r.before_bytes >> 20,
            after_mib = r.after_bytes >> 20,
            keys = r.keys,
            caught_up = r.caught_up,
            copy_ms = r.copy.as_millis() as u64,
            open_ms = r.opened.as_millis() as u64,
            paused_ms = r.paused.as_millis() as u64,
            swap_sync_ms = r.swap_sync.as_millis() as u64,
            swap_switch_ms = r.swap_switch.as_millis() as u64,
            took_ms = r.took.as_millis() as u64,
            "rotated sled: a fresh copy is in use, and the old one is removed"
        ),
        Upkept::Abandoned(why) => {
            tracing::warn!(why = %why, "a rotation of sled was abandoned; serving goes on with the sled in use")
        }
    }
}

/// Why a batch was not made durable.
#[derive(Debug, thiserror::Error)]
enum Failed {
    /// Its entry could never fit the journal: the batch alone is refused.
    #[error("{0}")]
    TooLarge(String),
    /// Storage failed: the store stops taking writes.
    #[error("{0}")]
    Storage(#[from] EngineError),
}

impl From<std::io::Error> for Failed {
    fn from(e: std::io::Error) -> Self {
        Failed::Storage(e.into())
    }
}

/// Keeps the record cache in step with an image record written.
fn cache_write(cache: &RecordCache, effect: &Effect) {
    if effect.tree == super::layout::TreeId::Images {
        cache.set(&effect.key, effect.value.as_deref());
    }
}

/// The answer to a write after a storage failure fenced the store.
pub fn refused_after_failure() -> Error {
    Error::Unavailable("imaged refuses writes after a storage failure; see its log and restart it".into())
}

/// Applies the writes of journal `entries` that the engine does not hold
/// yet: it recovered every batch up to `revision`, and each later entry
/// must follow on. Returns the revision reached.
pub fn replay(backend: &Backend, entries: &[Entry], mut revision: u64) -> Result<u64, String> {
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
        // The engine may hold the start of this batch: each write sets a
        // key's final value, so doing them all again, in order, ends in the
        // same state.
        backend
            .apply(&entry.effects, |_| {})
            .map_err(|e| format!("replaying revisions {}..={}: {e}", entry.first, entry.last))?;
        revision = entry.last;
        crate::fault::point("replay");
    }
    Ok(revision)
}

#[cfg(test)]
mod tests;
