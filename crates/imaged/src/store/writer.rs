//! The write path: one writer thread applies changes, one flusher thread makes
//! them durable in groups, and only then are they answered.
//!
//! ```text
//!  async callers ──Job──▶ writer thread ──Applied──▶ flusher thread ──▶ replies
//!                         (batch → one sled          (one barrier for every
//!                          transaction)               batch waiting)
//! ```
//!
//! - **One writer.** Every change goes through one thread, so a change's
//!   checks (does the name exist? does it point at this digest?) and its
//!   writes are atomic without locks, and sled transactions never conflict.
//! - **Batches.** The writer takes every job waiting (up to [`MAX_BATCH`]) and
//!   applies them in order in one sled transaction over the records, the
//!   namespace counters and the revision counter, so a crash keeps all of a
//!   batch or none of it. Each job's refusal is its own: a refused job writes
//!   nothing and does not stop the others.
//! - **Group commit.** While the flusher runs the durability barrier, the
//!   writer goes on applying the next batch; the flusher then makes all waiting
//!   batches durable with one barrier. One barrier serves many requests.
//! - **Answers only after the barrier.** A caller hears "done" only once its
//!   change is durable. If the barrier fails, the store stops taking writes
//!   (its state in memory may be ahead of the disk) and says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::SystemTime;

use imaged_types::{Digest, Image, NamespaceName};
use prost::Message;
use sled::Transactional;
use sled::transaction::{TransactionalTree, UnabortableTransactionError};
use tokio::sync::{mpsc, oneshot};

use super::durable::Barrier;
use super::record::{ImageRecord, NamespaceRecord, image_key};
use crate::error::Error;

/// Most jobs applied in one transaction.
pub const MAX_BATCH: usize = 512;

/// Key of the store-wide revision counter in the `meta` tree.
pub const REVISION_KEY: &[u8] = b"revision";

/// A condition a write tests atomically before it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Write unconditionally.
    None,
    /// The name must not exist (a create-only put).
    Absent,
    /// The name must exist and point at this digest.
    Digest(Digest),
}

/// One change to the store.
#[derive(Debug)]
pub enum Op {
    /// Assigns `image.name` to `image.target`: creates the image, or replaces
    /// the target of an existing one, keeping its labels and creation time.
    PutImage {
        /// Namespace of the image.
        ns: NamespaceName,
        /// Name and target; labels apply only when the image is created.
        image: Image,
        /// Tested before writing.
        precondition: Precondition,
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
}

/// What a change did.
#[derive(Debug)]
pub enum Outcome {
    /// The image as stored after the change.
    Image(Image),
    /// The image as it was before it was deleted.
    Deleted(Image),
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

/// The sled trees one transaction spans.
#[derive(Clone)]
pub struct Trees {
    /// `namespace 0x00 name` → [`ImageRecord`].
    pub images: sled::Tree,
    /// `namespace` → [`NamespaceRecord`].
    pub namespaces: sled::Tree,
    /// Store-wide counters.
    pub meta: sled::Tree,
}

/// A batch applied, waiting for the barrier.
pub struct Applied {
    answers: Vec<(Reply, Result<Outcome, Error>)>,
    wrote: bool,
}

/// Runs the writer: applies batches until shutdown or until every sender is
/// gone, then closes the flusher's queue.
pub fn run_writer(mut rx: mpsc::Receiver<Msg>, trees: Trees, mut revision: u64, flusher: std_mpsc::Sender<Applied>) {
    let mut stopping = false;
    while !stopping {
        let Some(first) = rx.blocking_recv() else { break };
        let mut jobs = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Job(job) => jobs.push(*job),
                Msg::Shutdown => {
                    stopping = true;
                    break;
                }
            }
            if jobs.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if jobs.is_empty() {
            continue;
        }
        let (ops, replies): (Vec<Op>, Vec<_>) = jobs.into_iter().map(|j| (j.op, j.reply)).unzip();
        let results = apply_batch(&trees, &ops, &mut revision);
        let wrote = results.iter().any(|r| r.is_ok());
        let answers = replies.into_iter().zip(results).collect();
        if flusher.send(Applied { answers, wrote }).is_err() {
            break;
        }
    }
}

/// Runs the flusher: one barrier for every batch waiting, then the answers.
/// A last barrier runs when the writer is gone.
pub fn run_flusher(rx: std_mpsc::Receiver<Applied>, mut barrier: Barrier, failed: Arc<AtomicBool>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        let synced = if group.iter().any(|a| a.wrote) {
            barrier.sync()
        } else {
            Ok(())
        };
        if let Err(e) = &synced {
            tracing::error!(error = %e, "durability barrier failed; refusing further writes");
            failed.store(true, Ordering::SeqCst);
        }
        for applied in group {
            for (reply, result) in applied.answers {
                let result = match (&synced, result) {
                    (Err(e), Ok(_)) => Err(Error::Storage(format!(
                        "the change was applied but could not be made durable: {e}"
                    ))),
                    (_, result) => result,
                };
                let _ = reply.send(result);
            }
        }
    }
    if let Err(e) = barrier.sync() {
        tracing::error!(error = %e, "final durability barrier failed");
    }
}

/// Applies `ops` in order in one transaction; returns each op's result.
fn apply_batch(trees: &Trees, ops: &[Op], revision: &mut u64) -> Vec<Result<Outcome, Error>> {
    let start = *revision;
    let result = (&trees.images, &trees.namespaces, &trees.meta).transaction(|(images, namespaces, meta)| {
        let mut rev = start;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(apply(images, namespaces, op, &mut rev)?);
        }
        if rev != start {
            meta.insert(REVISION_KEY, &rev.to_be_bytes())?;
        }
        Ok::<_, sled::transaction::ConflictableTransactionError<()>>((results, rev))
    });
    match result {
        Ok((results, rev)) => {
            *revision = rev;
            results
        }
        Err(e) => {
            tracing::error!(error = ?e, "write transaction failed");
            ops.iter()
                .map(|_| Err(Error::Storage(format!("write transaction failed: {e:?}"))))
                .collect()
        }
    }
}

/// A refusal of one op, or a sled failure that aborts the batch.
type Applied1 = Result<Result<Outcome, Error>, UnabortableTransactionError>;

/// Applies one op. All reads and checks come before the first write, so a
/// refused op writes nothing.
fn apply(images: &TransactionalTree, namespaces: &TransactionalTree, op: &Op, rev: &mut u64) -> Applied1 {
    match op {
        Op::PutImage {
            ns,
            image,
            precondition,
        } => {
            let key = image_key(ns.as_str(), &image.name);
            let old = match read_image(images, &key, &image.name)? {
                Ok(old) => old,
                Err(e) => return Ok(Err(e)),
            };
            if let Err(e) = check(ns, &image.name, old.as_ref(), precondition) {
                return Ok(Err(e));
            }
            let now = SystemTime::now();
            let mut stored = image.clone();
            stored.updated_at = now;
            let create_revision = match &old {
                Some(old) => {
                    stored.labels = old.labels.clone();
                    stored.created_at = old.created_at;
                    old.create_revision
                }
                None => {
                    stored.created_at = now;
                    *rev + 1
                }
            };
            stored.normalize();
            if let Err(e) = stored.validate() {
                return Ok(Err(e.into()));
            }
            let ns_update = if old.is_none() {
                Some(count_images(namespaces, ns, 1)?)
            } else {
                None
            };
            *rev += 1;
            images.insert(
                key,
                ImageRecord::from_image(&stored, create_revision, *rev).encode_to_vec(),
            )?;
            if let Some((ns_key, record)) = ns_update {
                write_namespace(namespaces, &ns_key, record)?;
            }
            Ok(Ok(Outcome::Image(stored)))
        }
        Op::DeleteImage { ns, name, precondition } => {
            let key = image_key(ns.as_str(), name);
            let old = match read_image(images, &key, name)? {
                Ok(Some(old)) => old,
                Ok(None) => return Ok(Err(Error::image_not_found(ns.as_str(), name))),
                Err(e) => return Ok(Err(e)),
            };
            if let Err(e) = check(ns, name, Some(&old), precondition) {
                return Ok(Err(e));
            }
            let (ns_key, record) = count_images(namespaces, ns, -1)?;
            *rev += 1;
            images.remove(key)?;
            write_namespace(namespaces, &ns_key, record)?;
            Ok(Ok(Outcome::Deleted(old.image)))
        }
    }
}

/// A stored image with its creation revision.
struct Stored {
    image: Image,
    create_revision: u64,
}

impl std::ops::Deref for Stored {
    type Target = Image;
    fn deref(&self) -> &Image {
        &self.image
    }
}

fn read_image(
    images: &TransactionalTree,
    key: &[u8],
    name: &str,
) -> Result<Result<Option<Stored>, Error>, UnabortableTransactionError> {
    let Some(bytes) = images.get(key)? else {
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

/// Tests a precondition against the current record.
fn check(ns: &NamespaceName, name: &str, current: Option<&Stored>, precondition: &Precondition) -> Result<(), Error> {
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

/// The namespace record after adding `delta` images to its count. `None`
/// means the record is to be removed (no images left, never created
/// explicitly).
fn count_images(
    namespaces: &TransactionalTree,
    ns: &NamespaceName,
    delta: i64,
) -> Result<(Vec<u8>, Option<NamespaceRecord>), UnabortableTransactionError> {
    let key = ns.as_str().as_bytes().to_vec();
    let mut record = match namespaces.get(&key)? {
        // A namespace record that does not decode is rebuilt from scratch
        // rather than failing every write to the namespace; `imaged check`
        // reports such damage.
        Some(bytes) => NamespaceRecord::decode(&*bytes).unwrap_or_default(),
        None => NamespaceRecord::default(),
    };
    record.images = record.images.saturating_add_signed(delta);
    let keep = record.explicit || record.images > 0 || !record.labels.is_empty();
    Ok((key, keep.then_some(record)))
}

fn write_namespace(
    namespaces: &TransactionalTree,
    key: &[u8],
    record: Option<NamespaceRecord>,
) -> Result<(), UnabortableTransactionError> {
    match record {
        Some(record) => namespaces.insert(key, record.encode_to_vec())?,
        None => namespaces.remove(key)?,
    };
    Ok(())
}
