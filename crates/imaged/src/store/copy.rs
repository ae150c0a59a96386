//! An online, consistent copy of the store's contents, for backups.
//!
//! sled has no snapshots, and stopping writers for a whole scan of a million
//! images is out of the question. So the copy is taken as etcd's learners
//! catch up: a scan that writers may run through, then the change log that
//! says what they did.
//!
//! 1. Note the revision `start`: every batch up to it is applied.
//! 2. Scan the namespaces, then the images, in chunks, letting go of the
//!    engine between chunks (so a reopen or a write waits for one chunk at
//!    most). Each record read is its value at some revision from `start` on.
//! 3. Note the revision `end`, and hand over every change of the change log
//!    in `start+1..=end`, in order: a record written or removed.
//!
//! Applied in order, the records are the store at `end`: a key no change
//! touched has had one value since `start`, which the scan read; a key a
//! change touched ends with its last change. Compaction is held at `start`
//! while the copy runs, so the changes it needs stay in the log.

use std::ops::Bound;
use std::sync::atomic::Ordering;

use imaged_types::{Image, Namespace, NamespaceName};

use super::Store;
use super::layout::{TreeId, decode_namespace, split_image_key};
use super::record::decode_image;
use super::rules::Changed;
use crate::error::Error;

/// One item of a copy, in the order the copy hands them over.
#[derive(Debug, Clone)]
pub enum Item {
    /// A namespace, with its labels.
    Namespace(Namespace),
    /// An image of a namespace, with its times and revisions.
    Image(NamespaceName, Image),
    /// A namespace that is gone.
    NamespaceRemoved(NamespaceName),
    /// An image that is gone: its namespace and name.
    ImageRemoved(NamespaceName, String),
}

/// Records one chunk of the scan reads before it lets go of the engine.
const CHUNK: usize = 1024;

/// Why a copy stopped early: the receiver of its items said stop.
#[derive(Debug)]
pub struct Stopped;

impl Store {
    /// Copies the store: hands every item to `emit`, in order, and returns
    /// the revisions the copy started at and is consistent at. Blocking,
    /// for a thread of its own; it stops early, with `Ok(None)`, once
    /// `emit` says so.
    pub fn copy(&self, mut emit: impl FnMut(Item) -> Result<(), Stopped>) -> Result<Option<(u64, u64)>, Error> {
        let _hold = self.hold_compaction()?;
        let start = self.revision();
        let engine = &self.inner.engine;
        for tree in [TreeId::Namespaces, TreeId::Images] {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let from = after.take().map_or(Bound::Unbounded, Bound::Excluded);
                let chunk = engine.with(|backend| {
                    backend
                        .scan(tree, from, Bound::Unbounded, false)
                        .take(CHUNK)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(Error::from)
                })?;
                let Some((last, _)) = chunk.last() else { break };
                after = Some(last.to_vec());
                for (key, value) in &chunk {
                    let item = match tree {
                        TreeId::Namespaces => namespace_item(key, value)?,
                        _ => image_item(key, value)?,
                    };
                    if emit(item).is_err() {
                        return Ok(None);
                    }
                }
                crate::fault::point("backup-chunk");
                if chunk.len() < CHUNK {
                    break;
                }
            }
        }
        let end = self.revision();
        let mut at = start;
        while at < end {
            let changes =
                engine.with(|backend| super::changes::read(backend, at, end, CHUNK).map_err(Error::Storage))?;
            if changes.first().map(|c| c.revision) != Some(at + 1) {
                return Err(Error::Storage(format!(
                    "the change log lacks revision {} that the copy needs; take the backup again",
                    at + 1
                )));
            }
            for change in changes {
                at = change.revision;
                let ns = change.namespace;
                let item = match change.changed {
                    Changed::Image { after: Some(image), .. } => Item::Image(ns, image),
                    Changed::Image {
                        before, after: None, ..
                    } => Item::ImageRemoved(ns, before.map(|b| b.name).unwrap_or_default()),
                    Changed::Namespace {
                        after: Some(labels), ..
                    } => Item::Namespace(Namespace { name: ns, labels }),
                    Changed::Namespace { after: None, .. } => Item::NamespaceRemoved(ns),
                };
                if emit(item).is_err() {
                    return Ok(None);
                }
            }
        }
        Ok(Some((start, end)))
    }

    /// Holds compaction at the current revision until the guard goes; one
    /// copy at a time.
    fn hold_compaction(&self) -> Result<HoldGuard<'_>, Error> {
        self.inner
            .held
            .compare_exchange(u64::MAX, self.revision(), Ordering::SeqCst, Ordering::SeqCst)
            .map_err(|_| Error::ResourceExhausted("a backup is running already; one runs at a time".into()))?;
        Ok(HoldGuard(self))
    }
}

/// Lets compaction go on when dropped.
struct HoldGuard<'a>(&'a Store);

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        self.0.inner.held.store(u64::MAX, Ordering::SeqCst);
    }
}

fn namespace_item(key: &[u8], value: &[u8]) -> Result<Item, Error> {
    let name = std::str::from_utf8(key)
        .ok()
        .and_then(|n| NamespaceName::parse("namespace", n).ok())
        .ok_or_else(|| Error::Storage(format!("malformed namespace key {key:?}")))?;
    let record = decode_namespace(name.as_str(), value).map_err(Error::Storage)?;
    Ok(Item::Namespace(Namespace {
        name,
        labels: record.labels,
    }))
}

fn image_item(key: &[u8], value: &[u8]) -> Result<Item, Error> {
    let (ns, name) = split_image_key(key).ok_or_else(|| Error::Storage(format!("malformed image key {key:?}")))?;
    let ns = NamespaceName::parse("namespace", ns).map_err(|e| Error::Storage(e.to_string()))?;
    let image = decode_image(name, value).map_err(Error::Storage)?;
    Ok(Item::Image(ns, image))
}
