//! The rules: what each change does to the records, or why it is refused.
//!
//! Every write of every wire API is an op, one enum per concern: an
//! [`ImageOp`] ([`image`]) or a [`NamespaceOp`] ([`namespace`]); the log
//! carries each as its own kind of job, with its own answer type. A rule reads
//! the current records through [`Records`] (the store as the batch so far
//! leaves it), checks everything before it writes anything, and then either
//! refuses, writing nothing, or records its effects: the record, its index
//! entries, the namespace's counter. The log decides when those effects
//! become durable and visible; the rules never touch the engine or the
//! journal.
//!
//! Each op answers with its own type: an image op with the image (as stored
//! after the change, or as it was before a delete), a namespace op with the
//! namespace.

pub mod image;
pub mod namespace;
pub mod repository;

use std::time::SystemTime;

use imaged_types::{Image, ImageUpdate, Labels, Namespace, NamespaceName, Precondition};

use prost::Message;

use super::engine::{Bytes, EngineError};
use super::layout::{ChangeRecord, TreeId, change_key};

/// A change to an image.
#[derive(Debug)]
pub enum ImageOp {
    /// Assigns `image.name` to `image.target`: creates the image, or replaces
    /// the target of an existing one, keeping its creation time, and its
    /// labels unless the put carries labels.
    Put {
        /// Namespace of the image.
        ns: NamespaceName,
        /// Name, target and (when not empty) labels.
        image: Image,
        /// Tested before writing.
        precondition: Precondition,
        /// Protects (`true`) or unprotects (`false`) the image; `None`
        /// keeps its protection, even when the put replaces its labels.
        protect: Option<bool>,
    },
    /// Creates an image; ALREADY_EXISTS when the name is taken.
    Create {
        /// Namespace of the image.
        ns: NamespaceName,
        /// The image; its timestamps are ignored.
        image: Image,
        /// Creation time to use instead of the clock (`source_date_epoch`).
        at: Option<SystemTime>,
    },
    /// Updates an image as a whole (empty mask) or by field-mask paths:
    /// `labels`, `labels.<key>`, `annotations`, `annotations.<key>`, `target`.
    Update {
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
    Delete {
        /// Namespace of the image.
        ns: NamespaceName,
        /// Image name.
        name: String,
        /// Tested before deleting.
        precondition: Precondition,
    },
}

/// A change to a namespace.
#[derive(Debug)]
pub enum NamespaceOp {
    /// Creates a namespace; ALREADY_EXISTS when it exists.
    Create {
        /// Name and labels.
        namespace: Namespace,
    },
    /// Replaces a namespace's labels (empty mask) or changes them by mask
    /// paths `labels` and `labels.<key>`.
    Update {
        /// Name and labels.
        namespace: Namespace,
        /// Field-mask paths.
        mask: Vec<String>,
    },
    /// Deletes an empty namespace.
    Delete {
        /// The namespace.
        name: NamespaceName,
    },
}

/// The records as a rule sees them: the engine's, overlaid with what the
/// batch being planned has written so far.
pub trait Records {
    /// The current value of `key` in `tree`.
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Bytes>, EngineError>;
    /// Sets `key` of `tree` to `value`, or removes it (`None`), in the batch.
    fn put(&mut self, tree: TreeId, key: &[u8], value: Option<Vec<u8>>);
    /// The namespaces' quotas in force.
    fn quotas(&self) -> super::Quotas;
    /// The greatest key of `tree` that starts with `prefix`.
    fn last_with_prefix(&self, tree: TreeId, prefix: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;
}

/// A rule's answer: the op's own result (a refusal writes nothing), or an
/// engine failure while reading, which fails the whole batch.
pub type Ruled<T> = Result<Result<T, crate::error::Error>, EngineError>;

/// One committed change, as the commit hook sees it and the change log
/// keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The store revision the change made.
    pub revision: u64,
    /// When it was planned (its batch's clock).
    pub at: SystemTime,
    /// The namespace it happened in.
    pub namespace: NamespaceName,
    /// What changed.
    pub changed: Changed,
}

/// What a [`Change`] changed: `None` before a creation and after a
/// deletion.
// Changes are made only for a commit hook, one per revision, and read in
// place: boxing the images would add an allocation to each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Changed {
    /// An image.
    Image {
        /// The image as it was.
        before: Option<Image>,
        /// The image as it is now.
        after: Option<Image>,
        /// `before` as stored (`store::record`), for the encoder that
        /// copies records into answers.
        before_record: Option<Vec<u8>>,
        /// `after` as stored.
        after_record: Option<Vec<u8>>,
    },
    /// The namespace's own labels.
    Namespace {
        /// Its labels as they were.
        before: Option<Labels>,
        /// Its labels as they are now.
        after: Option<Labels>,
    },
}

/// The revision a write after `rev` takes, or the refusal of a store at its
/// ceiling ([`MAX_REVISION`](crate::store::layout::MAX_REVISION)): it
/// stays readable, and takes no more writes.
fn next_revision(rev: u64) -> Result<u64, crate::error::Error> {
    use crate::store::layout::MAX_REVISION;
    rev.checked_add(1).filter(|next| *next <= MAX_REVISION).ok_or_else(|| {
        crate::error::Error::ResourceExhausted(format!(
            "the store's revision is {rev}, the most it takes ({MAX_REVISION}, 2^63), so no write can be numbered; \
             reads go on. Back up the store and restore it into a new one to start again from its revision"
        ))
    })
}

/// Appends revision `rev`'s entry to the change log, in the batch that makes
/// the change: the records before and after (encoded as stored), so that the
/// log never holds a change that was not made, nor misses one that was.
fn log_change(records: &mut impl Records, rev: u64, entry: &ChangeRecord) {
    records.put(TreeId::Changes, &change_key(rev), Some(entry.encode_to_vec()));
}

/// Sets `key` to `value`, or removes it when the value is absent or empty:
/// what a field-mask path `labels.<key>` does.
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
