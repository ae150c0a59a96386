//! Opening the data directory's files: never through a symlink planted in
//! a file's place. The one helper every layer of the store uses (engine,
//! log, format, restore), kept apart so that none imports another for it.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;

/// Open options for a file of the data directory: never through a symlink
/// planted in its place (the open fails with `ELOOP` instead).
pub fn no_follow() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits());
    options
}
