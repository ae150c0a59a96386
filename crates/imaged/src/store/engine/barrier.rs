//! The durability barrier: after it returns, every write sled has applied is
//! on stable storage, surviving `kill -9` and power loss.
//!
//! sled 0.34.7's `flush` writes its buffers and calls `sync_file_range`, which
//! starts and waits for write-back of the data but neither flushes the disk's
//! volatile cache nor persists file metadata such as a grown file size. So the
//! barrier is three steps:
//! 1. `Db::flush`: every applied write reaches the `db` log file;
//! 2. nodes too large for a log segment live in `blobs/`, which sled writes
//!    with no sync at all: each blob file not seen before is `fsync`ed, and
//!    then the `blobs` directory itself, so its entries persist;
//! 3. `fdatasync` on the `db` file: the disk cache is flushed and the file's
//!    size is persisted. Last, since the log names the blobs.
//!
//! The barrier is the journal's checkpoint (see `journal`): it runs when the
//! journal fills, after a replay and at shutdown, never per request.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Makes applied sled writes durable.
pub struct Barrier {
    log: File,
    blobs: PathBuf,
    /// Blob files synced by an earlier barrier, by name and inode: a name
    /// sled removed and wrote again is a new file, and synced again.
    synced_blobs: HashSet<(OsString, u64)>,
}

impl Barrier {
    /// A barrier for the sled database whose files are in `dir`. It holds
    /// no handle on the database itself, so the store can close and reopen
    /// sled under it.
    pub fn new(dir: &Path) -> io::Result<Barrier> {
        let log = crate::store::files::no_follow().read(true).open(dir.join("db"))?;
        Ok(Barrier {
            log,
            blobs: dir.join("blobs"),
            synced_blobs: HashSet::new(),
        })
    }

    /// Runs the barrier on `db`: flush, sync new blobs, then fdatasync the
    /// log. The blobs go first: the log points at them, and a log made
    /// durable before a blob it names leaves a page sled cannot read.
    pub fn sync(&mut self, db: &sled::Db) -> io::Result<()> {
        // sled's own IO error, as it is: a full disk must still read as one.
        db.flush().map_err(|e| match e {
            sled::Error::Io(e) => e,
            other => io::Error::other(other),
        })?;
        self.sync_blobs()?;
        crate::fault::sync("checkpoint-log", || self.log.sync_data())
    }

    /// Makes what sled's files in `dir` hold durable, before sled opens
    /// them. sled's open reads its log and writes, and syncs, a snapshot of
    /// it: a log a killed process left unsynced (still in the page cache)
    /// would otherwise leave a durable snapshot pointing at records a power
    /// cut then takes away, and sled would serve older versions of them.
    pub fn sync_before_open(dir: &Path) -> io::Result<()> {
        match Barrier::new(dir) {
            Ok(mut files) => {
                files.sync_blobs()?;
                crate::fault::sync("before-open-log", || files.log.sync_data())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn sync_blobs(&mut self) -> io::Result<()> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = HashSet::new();
        let mut added = false;
        for entry in entries {
            let entry = entry?;
            let name = (entry.file_name(), std::os::unix::fs::DirEntryExt::ino(&entry));
            if !self.synced_blobs.contains(&name) {
                match File::open(entry.path()) {
                    Ok(f) => crate::fault::sync("checkpoint-blob", || f.sync_all())?,
                    // sled removed it meanwhile: nothing to persist.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                added = true;
            }
            present.insert(name);
        }
        if added {
            let blobs = File::open(&self.blobs)?;
            crate::fault::sync("checkpoint-blobs-dir", || blobs.sync_all())?;
        }
        self.synced_blobs = present;
        Ok(())
    }
}

/// `fsync`s a directory, so entries created in it persist.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents with `mode`, `fsync`ing the parent
/// of each directory it creates: otherwise a power cut may take the new
/// directory, and everything synced inside it, away again.
pub fn create_dir_durably(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty()) {
        if path.try_exists()? {
            break;
        }
        missing.push(path);
        at = path.parent();
    }
    for path in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(mode).create(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            result => result?,
        }
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        crate::fault::sync("created-dir-parent", || sync_dir(parent.unwrap_or(Path::new("."))))?;
    }
    Ok(())
}
