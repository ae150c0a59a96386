//! The change log: one entry per revision in the `changes` tree. The rules
//! write each entry in the batch that makes its change (so the journal
//! holds both or neither); this module reads entries back, for a watch that
//! starts in the past and for the commit hook after the log healed, and
//! compacts the log to its [`Retention`] on a thread of its own.
//!
//! # The compaction mark
//! `meta/changes-compacted` names the last revision compaction has removed
//! or is removing: no watch can start before it. The compactor writes the
//! mark before it removes the entries it covers, outside the journal. A
//! kill that loses the mark also loses the removals after it (sled recovers
//! a prefix of its writes), and a replay of the journal that brings back
//! entries below the mark is harmless: reads start above it, and the next
//! pass removes them again. A store with no mark (new, or from before the
//! change log) starts with its current revision as the mark, or just before
//! its first entry.

use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use imaged_types::time::from_unix_nanos;
use imaged_types::{NamespaceName, time::unix_nanos};
use prost::Message;

use super::engine::{Backend, Engine, EngineError};
use super::layout::{ChangeRecord, Effect, TreeId, change_key, change_revision, decode_namespace, meta};
use super::record::decode_image;
use super::rules::{Change, Changed};

/// How much of the change log is kept: an entry goes once it is both older
/// than `keep_for` and more than `keep` revisions behind the current one,
/// or, whatever its age and number, once the log holds more than
/// `max_bytes`: the byte bound wins, so churn can never fill the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Revisions kept whatever their age.
    pub keep: u64,
    /// Age below which an entry is kept whatever the count.
    pub keep_for: Duration,
    /// Bytes (keys and entries) the log holds at most.
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: 100_000,
            keep_for: Duration::from_secs(24 * 3600),
            max_bytes: 128 << 20,
        }
    }
}

/// Entries one compaction step removes (or counts) before it lets go of
/// the engine.
const COMPACT_CHUNK: usize = 1024;

/// How often the compactor looks, at most.
const COMPACT_EVERY: Duration = Duration::from_secs(1);

/// What an entry takes against [`Retention::max_bytes`].
fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

/// The change `value`, the entry at `key`, as the commit hook sees changes.
pub fn decode(key: &[u8], value: &[u8]) -> Result<Change, String> {
    let revision = change_revision(key).ok_or_else(|| format!("change log key {key:?} is not a revision"))?;
    let entry = ChangeRecord::decode(value).map_err(|e| format!("change log entry {revision} does not decode: {e}"))?;
    let namespace = NamespaceName::parse("namespace", &entry.namespace)
        .map_err(|e| format!("change log entry {revision} names a bad namespace: {e}"))?;
    let changed = if entry.namespace_change {
        let labels = |bytes: Option<Vec<u8>>| {
            bytes
                .map(|b| decode_namespace(&entry.namespace, &b).map(|r| r.labels))
                .transpose()
        };
        Changed::Namespace {
            before: labels(entry.before)?,
            after: labels(entry.after)?,
        }
    } else {
        let image = |bytes: &Option<Vec<u8>>| bytes.as_ref().map(|b| decode_image(&entry.name, b)).transpose();
        Changed::Image {
            before: image(&entry.before)?,
            after: image(&entry.after)?,
            before_record: entry.before,
            after_record: entry.after,
        }
    };
    Ok(Change {
        revision,
        at: from_unix_nanos(entry.unix_nanos),
        namespace,
        changed,
    })
}

/// The entries after revision `after`, up to `upto`, at most `max` of them,
/// in revision order. The first is `after + 1` unless compaction removed it:
/// the caller checks.
pub fn read(backend: &Backend, after: u64, upto: u64, max: usize) -> Result<Vec<Change>, String> {
    let start = Bound::Excluded(change_key(after).to_vec());
    let end = Bound::Included(change_key(upto).to_vec());
    let mut changes = Vec::new();
    for entry in backend.scan(TreeId::Changes, start, end, false).take(max) {
        let (key, value) = entry.map_err(String::from)?;
        changes.push(decode(&key, &value)?);
    }
    Ok(changes)
}

/// The compaction mark as stored, or where it starts for a store that has
/// none: just before the first entry, or at `revision` when the log is
/// empty.
pub fn mark(backend: &Backend, revision: u64) -> Result<u64, EngineError> {
    if let Some(mark) = backend.get(TreeId::Meta, meta::COMPACTED)?
        && let Ok(bytes) = <[u8; 8]>::try_from(&*mark)
    {
        return Ok(u64::from_be_bytes(bytes));
    }
    let first = backend.iter(TreeId::Changes).next().transpose()?;
    Ok(match first.and_then(|(key, _)| change_revision(&key)) {
        Some(first) => first - 1,
        None => revision,
    })
}

/// The thread that compacts the change log, and how to stop it.
pub struct Compactor {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Bytes the log holds, as last counted.
    bytes: Arc<AtomicU64>,
}

/// What the compactor knows of the log between passes.
struct Tally {
    /// Entries up to this revision are counted in `bytes`.
    counted: u64,
    bytes: Arc<AtomicU64>,
}

impl Compactor {
    /// Starts compacting `engine`'s change log to the retention `tunables`
    /// hold, reading the store's revision from `revision` and keeping the
    /// mark in `mark`. Nothing is compacted while `failed` holds, nor past
    /// `held` (a copy for a backup holds it; `u64::MAX` holds nothing).
    pub fn start(
        engine: Arc<Engine>,
        tunables: Arc<super::Tunables>,
        revision: Arc<AtomicU64>,
        mark: Arc<AtomicU64>,
        failed: Arc<AtomicBool>,
        held: Arc<AtomicU64>,
    ) -> std::io::Result<Compactor> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let stopped = stop.clone();
        let bytes = Arc::new(AtomicU64::new(0));
        // Entries at or below the mark are gone, or going: counting starts
        // after it.
        let mut tally = Tally {
            counted: mark.load(Ordering::SeqCst),
            bytes: bytes.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("imaged-compact".into())
            .spawn(move || {
                loop {
                    let (lock, wake) = &*stopped;
                    let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                    let (guard, _) = wake
                        .wait_timeout_while(guard, COMPACT_EVERY, |stop| !*stop)
                        .unwrap_or_else(|e| e.into_inner());
                    if *guard {
                        return;
                    }
                    drop(guard);
                    if failed.load(Ordering::SeqCst) {
                        continue;
                    }
                    let retention = tunables.retention();
                    let current = revision.load(Ordering::SeqCst);
                    if let Err(e) = tally.count(&engine, current) {
                        tracing::warn!(error = %e, "counting the change log's bytes failed; trying again later");
                        continue;
                    }
                    let held = held.load(Ordering::SeqCst);
                    // Nothing is due: leave the engine alone (a read would
                    // put off an idle reopen).
                    let by_count = current
                        .min(held.saturating_add(retention.keep))
                        .saturating_sub(retention.keep);
                    let over = tally.bytes.load(Ordering::SeqCst) > retention.max_bytes;
                    if by_count <= mark.load(Ordering::SeqCst) && !over {
                        continue;
                    }
                    // Steps until nothing is due, letting go of the engine
                    // between them, so a reopen waits for one step at most.
                    loop {
                        let due = Due {
                            retention,
                            current,
                            held,
                            now: SystemTime::now(),
                        };
                        match engine.with(|backend| step(backend, due, &mark, &tally.bytes)) {
                            Ok(true) => continue,
                            Ok(false) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "compacting the change log failed; trying again later");
                                break;
                            }
                        }
                    }
                }
            })?;
        Ok(Compactor {
            stop,
            thread: Mutex::new(Some(thread)),
            bytes,
        })
    }

    /// Bytes the log holds, as last counted.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Makes the next pass now rather than at its time (the retention
    /// changed).
    pub fn wake(&self) {
        self.stop.1.notify_all();
    }

    /// Stops the thread and waits for it.
    pub fn stop(&self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Tally {
    /// Adds the entries written since the last count, up to `current`, a
    /// chunk at a time.
    fn count(&mut self, engine: &Engine, current: u64) -> Result<(), EngineError> {
        while self.counted < current {
            let (added, last) = engine.with(|backend| {
                let start = Bound::Excluded(change_key(self.counted).to_vec());
                let end = Bound::Included(change_key(current).to_vec());
                let mut added = 0;
                let mut last = None;
                for entry in backend.scan(TreeId::Changes, start, end, false).take(COMPACT_CHUNK) {
                    let (key, value) = entry?;
                    added += entry_bytes(&key, &value);
                    last = change_revision(&key);
                }
                Ok::<_, EngineError>((added, last))
            })?;
            self.bytes.fetch_add(added, Ordering::SeqCst);
            match last {
                Some(last) if last < current => self.counted = last,
                _ => self.counted = current,
            }
        }
        Ok(())
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one compaction step may remove.
#[derive(Debug, Clone, Copy)]
pub struct Due {
    /// The retention in force.
    pub retention: Retention,
    /// The store's revision.
    pub current: u64,
    /// Nothing after this is removed (a copy holds it).
    pub held: u64,
    /// The clock, for `keep_for`.
    pub now: SystemTime,
}

/// Removes up to `COMPACT_CHUNK` entries that the retention of `due` no
/// longer keeps, oldest first, moving the mark first and taking their bytes
/// off `bytes`. Returns whether it removed a full chunk (more may be due).
pub fn step(backend: &Backend, due: Due, mark: &AtomicU64, bytes: &AtomicU64) -> Result<bool, EngineError> {
    let Due {
        retention,
        current,
        held,
        now,
    } = due;
    let by_count = current.saturating_sub(retention.keep);
    let from = mark.load(Ordering::SeqCst);
    let mut left = bytes.load(Ordering::SeqCst);
    if by_count <= from && left <= retention.max_bytes {
        return Ok(false);
    }
    let old_enough = unix_nanos(now) - i64::try_from(retention.keep_for.as_nanos()).unwrap_or(i64::MAX);
    let mut doomed = Vec::new();
    let mut freed = 0;
    let end = Bound::Included(change_key(current.min(held)).to_vec());
    for entry in backend
        .scan(TreeId::Changes, Bound::Unbounded, end, false)
        .take(COMPACT_CHUNK)
    {
        let (key, value) = entry?;
        let revision = change_revision(&key).unwrap_or(0);
        let at = ChangeRecord::decode(&*value).map_or(i64::MIN, |e| e.unix_nanos);
        let kept_by_count = revision > by_count || at > old_enough;
        // Entries at or below the mark were never counted (a replay can
        // bring them back): they go without touching the count.
        let size = if revision > from { entry_bytes(&key, &value) } else { 0 };
        if kept_by_count && left <= retention.max_bytes {
            break;
        }
        left -= size.min(left);
        freed += size;
        doomed.push(key);
    }
    let Some(last) = doomed.last().and_then(|key| change_revision(key)) else {
        return Ok(false);
    };
    let full = doomed.len() == COMPACT_CHUNK;
    let new_mark = last.max(from);
    let mut effects = vec![Effect {
        tree: TreeId::Meta,
        key: meta::COMPACTED.to_vec(),
        value: Some(new_mark.to_be_bytes().to_vec()),
    }];
    mark.store(new_mark, Ordering::SeqCst);
    effects.extend(doomed.into_iter().map(|key| Effect {
        tree: TreeId::Changes,
        key: key.to_vec(),
        value: None,
    }));
    backend.apply(&effects, |_| {})?;
    bytes.fetch_sub(freed.min(bytes.load(Ordering::SeqCst)), Ordering::SeqCst);
    Ok(full)
}
