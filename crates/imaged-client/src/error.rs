//! [`Error`]: everything a call can fail with, mapped once from gRPC status
//! codes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imaged_types::ValidationError;
use tonic::Code;

/// Why a call failed. Its `Debug` is its kind and its message, so a `main`
/// that returns `Err` prints words, not a struct.
#[derive(Clone, thiserror::Error)]
pub enum Error {
    /// The image or namespace does not exist (NOT_FOUND). The message names
    /// it, e.g. `image "x" not found in namespace "default"`.
    #[error("{0}")]
    NotFound(String),
    /// The name exists already (ALREADY_EXISTS).
    #[error("{0}")]
    AlreadyExists(String),
    /// A value was refused; the message names the field and the value
    /// (INVALID_ARGUMENT, or refused by this crate before sending).
    #[error("{0}")]
    InvalidArgument(String),
    /// The operation is not allowed in the current state, e.g. deleting a
    /// namespace that holds images (FAILED_PRECONDITION).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A conditional write's test failed and nothing was written (ABORTED).
    /// The message gives the current digest, or says the name exists or not.
    #[error("{0}")]
    Aborted(String),
    /// The caller may not do this (PERMISSION_DENIED).
    #[error("{0}")]
    PermissionDenied(String),
    /// The daemon could not be reached, or it answered that it cannot
    /// serve the call now: it is shutting down, or refuses writes after a
    /// storage failure (UNAVAILABLE).
    #[error("{}", unavailable(socket, message, *reached))]
    Unavailable {
        /// The socket dialled.
        socket: PathBuf,
        /// What went wrong.
        message: String,
        /// Whether the daemon itself gave the answer (else the connection
        /// failed).
        reached: bool,
    },
    /// A watch asked for changes the daemon's change log no longer keeps
    /// (OUT_OF_RANGE): list again, and watch from the listing's revision.
    #[error("{message}")]
    Compacted {
        /// The oldest revision a watch can start from now.
        oldest: u64,
        /// The daemon's message.
        message: String,
    },
    /// The call's timeout passed.
    #[error("no answer from imaged within {0:?}")]
    Timeout(Duration),
    /// The connection failed in another way.
    #[error("transport error: {0}")]
    Transport(String),
    /// Any other status (RESOURCE_EXHAUSTED, INTERNAL, …).
    #[error("{message} ({code:?})")]
    Other {
        /// The gRPC code.
        code: Code,
        /// The daemon's message.
        message: String,
    },
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Error::NotFound(_) => "NotFound",
            Error::AlreadyExists(_) => "AlreadyExists",
            Error::InvalidArgument(_) => "InvalidArgument",
            Error::FailedPrecondition(_) => "FailedPrecondition",
            Error::Aborted(_) => "Aborted",
            Error::PermissionDenied(_) => "PermissionDenied",
            Error::Unavailable { .. } => "Unavailable",
            Error::Compacted { .. } => "Compacted",
            Error::Timeout(_) => "Timeout",
            Error::Transport(_) => "Transport",
            Error::Other { .. } => "Other",
        };
        write!(f, "{kind}: {self}")
    }
}

impl Error {
    pub(crate) fn from_status(status: tonic::Status, socket: &Path) -> Error {
        let message = status.message().to_owned();
        match status.code() {
            Code::NotFound => Error::NotFound(message),
            Code::AlreadyExists => Error::AlreadyExists(message),
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::FailedPrecondition => Error::FailedPrecondition(message),
            Code::Aborted => Error::Aborted(message),
            Code::PermissionDenied => Error::PermissionDenied(message),
            Code::Unavailable => Error::Unavailable {
                reached: !is_transport(&status),
                socket: socket.to_owned(),
                message: if message.is_empty() {
                    "unavailable".into()
                } else {
                    message
                },
            },
            // Made by this side's transport (a refused stream after the
            // daemon's GOAWAY, a broken connection), not by the daemon.
            _ if is_transport(&status) => Error::Transport(message),
            code => Error::Other { code, message },
        }
    }

    /// Whether the image or namespace does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_))
    }

    /// Whether the name exists already.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::AlreadyExists(_))
    }

    /// Whether a conditional write's test failed.
    pub fn is_aborted(&self) -> bool {
        matches!(self, Error::Aborted(_))
    }

    /// Whether a value was refused.
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self, Error::InvalidArgument(_))
    }

    /// Whether a watch's gap is no longer in the daemon's change log
    /// ([`Error::Compacted`]).
    pub fn is_compacted(&self) -> bool {
        matches!(self, Error::Compacted { .. })
    }

    /// Whether the daemon could not be reached or cannot serve now.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// Whether the call timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }
}

fn unavailable(socket: &Path, message: &str, reached: bool) -> String {
    if reached {
        format!("imaged at {} cannot serve this now: {message}", socket.display())
    } else {
        format!("cannot reach imaged at {}: {message}", socket.display())
    }
}

fn is_transport(status: &tonic::Status) -> bool {
    std::error::Error::source(status).is_some()
}

impl From<ValidationError> for Error {
    fn from(e: ValidationError) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

impl From<imaged_types::digest::DigestError> for Error {
    fn from(e: imaged_types::digest::DigestError) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}
