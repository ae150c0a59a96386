//! The daemon's one error type, and its one mapping to gRPC status codes.
//!
//! The store returns [`Error`]; every wire adapter converts it with
//! `Status::from`, so an error has the same code and text on every API.

use imaged_api::COMPACTED_REVISION_HEADER;
use imaged_types::ValidationError;
use tonic::{Code, Status};

/// Everything a store operation can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field broke a rule (INVALID_ARGUMENT).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The named thing does not exist (NOT_FOUND). The text names it.
    #[error("{0}")]
    NotFound(String),
    /// The named thing exists already (ALREADY_EXISTS).
    #[error("{0}")]
    AlreadyExists(String),
    /// A conditional write's test failed; nothing was written (ABORTED).
    #[error("{0}")]
    Conflict(String),
    /// The operation is not allowed in the current state (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// An answer would exceed a limit (RESOURCE_EXHAUSTED).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A revision outside what the store keeps (OUT_OF_RANGE).
    #[error("{0}")]
    OutOfRange(String),
    /// A watch from `after`, which the change log no longer holds: it keeps
    /// the changes after `mark` (OUT_OF_RANGE, with `mark` also in the
    /// [`COMPACTED_REVISION_HEADER`] metadata).
    #[error(
        "revision {after} is compacted: the change log keeps the changes after revision {mark}; list again and watch \
         from the list's revision"
    )]
    Compacted {
        /// Where the watch asked to start.
        after: u64,
        /// The oldest revision a watch can start from.
        mark: u64,
    },
    /// The caller's deadline passed before the answer was complete
    /// (DEADLINE_EXCEEDED).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The store is closing or stopped after a storage failure (UNAVAILABLE).
    #[error("{0}")]
    Unavailable(String),
    /// sled or the file system failed (INTERNAL).
    #[error("storage failure: {0}")]
    Storage(String),
}

impl Error {
    /// NOT_FOUND for image `name` in namespace `ns`.
    pub fn image_not_found(ns: &str, name: &str) -> Self {
        Error::NotFound(format!("image {name:?} not found in namespace {ns:?}"))
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Invalid(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Conflict(_) => Code::Aborted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::OutOfRange(_) | Error::Compacted { .. } => Code::OutOfRange,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Storage(_) => Code::Internal,
        };
        let mut status = Status::new(code, e.to_string());
        if let Error::Compacted { mark, .. } = e {
            status.metadata_mut().insert(COMPACTED_REVISION_HEADER, mark.into());
        }
        status
    }
}
