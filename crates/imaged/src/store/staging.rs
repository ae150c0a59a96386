//! A restore's staging directory, by name, and how every open of the data
//! directory finishes or discards one that a crash interrupted. Apart from
//! `restore`, which builds and commits the staging, so that opening a data
//! directory (`format`) need not import the restore.

use std::fs;
use std::io;
use std::path::Path;

use super::engine::generation;

/// The staging directory, inside the data directory.
pub(super) const STAGING: &str = "restore";

/// Its commit mark.
pub(super) const COMMITTED: &str = "COMMITTED";

/// What a data directory holds that a restore replaces, in the order
/// replaced.
const REPLACED: &[&str] = &["sled", "journal", "FORMAT"];

/// Finishes or discards a restore that a crash interrupted in data
/// directory `root` (see `restore`'s steps). Called on every open, with
/// the directory's lock held.
pub fn settle(root: &Path) -> io::Result<()> {
    let staging = root.join(STAGING);
    match fs::symlink_metadata(&staging) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(meta) if !meta.is_dir() => {
            return remove_any(&staging);
        }
        Ok(_) => {}
    }
    if fs::symlink_metadata(staging.join(COMMITTED)).is_err() {
        tracing::warn!(path = %staging.display(), "discarding an unfinished restore; the data in place is unchanged");
        // Not synced: a power cut that brings it back has it discarded
        // again at the next open.
        return remove_any(&staging);
    }
    // A rotation's pointer names a generation the restore replaces: with
    // it gone, the restored `sled` is the store, and the next open removes
    // the old generations (`engine::generation`).
    remove_any(&root.join(generation::POINTER))?;
    for name in REPLACED {
        let new = staging.join(name);
        if fs::symlink_metadata(&new).is_err() {
            continue;
        }
        let old = root.join(name);
        remove_any(&old)?;
        crate::fault::point("restore-settle");
        fs::rename(&new, &old)?;
    }
    // None of these renames and removals is synced: the commit mark is the
    // restore's one durable decision, and settling is a redo. A power cut
    // that takes some of them back leaves the mark, and the files the
    // daemon has written since under their new names are the same inodes
    // under the old ones, so the next open settles them again.
    remove_any(&staging)?;
    tracing::info!(root = %root.display(), "a committed restore is in place");
    Ok(())
}

/// Removes `path`, a directory tree or a file (a link is removed, never
/// followed); nothing there is fine.
pub(super) fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    }
}
