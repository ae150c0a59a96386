//! The data directory: its exclusive lock and its format version.
//!
//! Layout of `--root`:
//! - `FORMAT`: `imaged-format N`, the on-disk format version, written once
//!   when the directory is initialised (atomically: temp file, fsync, rename,
//!   fsync of the directory);
//! - `lock`: held with an exclusive `flock` while a daemon uses the directory,
//!   and holding that daemon's pid, so a second daemon is refused with a clear
//!   message before it touches anything;
//! - `journal`: the write-ahead journal (format 2 on); see `store::journal`;
//! - `sled/`: the sled database; after a rotation, `sled.N/`, named by the
//!   pointer file `ENGINE` (see `store::engine::generation`);
//! - `restore/`: only while a restore runs, or after a crash interrupted
//!   one; every open finishes or discards it first (see `store::restore`).

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::engine::barrier::{create_dir_durably, sync_dir};
use super::engine::generation;
pub(crate) use super::files::no_follow;

/// The on-disk format this build writes and reads.
/// Version 2 added the journal: a version-1 directory is upgraded when opened
/// (it has no journal to lose), and an imaged that knows only version 1
/// refuses a version-2 one rather than miss the journal's writes. Version 3
/// added the change log (the `changes` tree, journaled as tree 4): a
/// version-2 directory is upgraded as it is, and an older imaged refuses a
/// version-3 one rather than fail on a journal entry it cannot read.
/// Version 4 added sled's generations (`ENGINE` and `sled.N/`, made by a
/// rotation): a version-3 directory is upgraded as it is, and an older
/// imaged refuses a version-4 one rather than open an empty `sled/`.
/// Version 5 added the repository index (`store::repositories`): a
/// version-4 directory is upgraded at open, where the index is built from
/// the records, and an older imaged refuses a version-5 one rather than
/// write images without keeping the index.
pub const FORMAT_VERSION: u32 = 5;

const FORMAT_FILE: &str = "FORMAT";
const LOCK_FILE: &str = "lock";
const FORMAT_PREFIX: &str = "imaged-format ";

/// Why the data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the directory's lock.
    #[error("data dir {root} is in use by another imaged{holder}: stop it first")]
    Locked {
        /// The directory.
        root: PathBuf,
        /// `" (pid N)"` when the holder wrote its pid.
        holder: String,
    },
    /// The directory was written by a newer imaged.
    #[error(
        "data dir {root} has format version {found}, newer than the {supported} this imaged understands; run a newer imaged"
    )]
    NewerFormat {
        /// The directory.
        root: PathBuf,
        /// The version found in `FORMAT`.
        found: u32,
        /// [`FORMAT_VERSION`].
        supported: u32,
    },
    /// `FORMAT` is missing where data exists, or unreadable.
    #[error("data dir {root}: {problem}")]
    BadFormat {
        /// The directory.
        root: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The journal cannot be read or replayed.
    #[error("journal {path}: {problem}")]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The data directory, or a file in it, is not safe to use.
    #[error("data dir {root}: refusing to use it: {problem}")]
    Unsafe {
        /// The directory or file.
        root: PathBuf,
        /// Why.
        problem: String,
    },
    /// sled refused to open its database.
    #[error("opening the store in {path}: {problem}")]
    Sled {
        /// The sled directory.
        path: PathBuf,
        /// sled's error.
        problem: String,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> OpenError + 'a {
    move |source| OpenError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// An open, locked data directory. The lock is released when it is dropped.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    _lock: Flock<File>,
}

impl DataDir {
    /// Creates (mode 0700) or opens `root`, takes its lock, and checks or
    /// writes its format version.
    pub fn open(root: &Path) -> Result<DataDir, OpenError> {
        create_dir_durably(root, 0o700).map_err(io_err("creating data dir", root))?;
        DataDir::open_existing(root)
    }

    /// Opens `root`, which must exist, as [`DataDir::open`] does: for tools
    /// such as `imaged repair`, which must never make a store.
    pub fn open_existing(root: &Path) -> Result<DataDir, OpenError> {
        check_owner(root)?;
        let lock = lock(root)?;
        super::staging::settle(root).map_err(io_err("finishing an interrupted restore in", root))?;
        check_format(root)?;
        generation::settle(root).map_err(io_err("removing sled directories no longer in use in", root))?;
        let sled = generation::current(root).map_err(io_err("reading the current sled directory of", root))?;
        check_no_links(&sled)?;
        Ok(DataDir {
            root: root.to_owned(),
            _lock: lock,
        })
    }

    /// The directory sled keeps its files in: the current generation's
    /// (its pointer was checked when the directory opened).
    pub fn sled_dir(&self) -> PathBuf {
        generation::current(&self.root).unwrap_or_else(|_| self.root.join(generation::FIRST))
    }

    /// The data directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The journal file.
    pub fn journal_path(&self) -> PathBuf {
        self.root.join("journal")
    }
}

/// Why a symlink in the data directory is refused.
const LINK_REFUSED: &str = "it is a symbolic link; imaged never opens its files through one. Remove the link";

/// Refuses a data directory that anyone but the daemon's user could change:
/// one owned by another user, or writable by its group or others, would let
/// them replace the store's files under it.
fn check_owner(root: &Path) -> Result<(), OpenError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(root).map_err(io_err("opening data dir", root))?;
    let refuse = |problem: String| {
        Err(OpenError::Unsafe {
            root: root.to_owned(),
            problem,
        })
    };
    if !meta.is_dir() {
        return refuse("it is not a directory".into());
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return refuse(format!(
            "it is owned by uid {}, not by imaged's uid {uid}; chown it to the daemon's user",
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse(format!(
            "it is writable by its group or others (mode {:04o}); run chmod go-w on it",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Refuses symlinks in sled's directory (and the directory as one): sled
/// opens its files by name, following links, so a link planted there would
/// be written through.
fn check_no_links(sled_dir: &Path) -> Result<(), OpenError> {
    let link = |path: &Path| {
        Err(OpenError::Unsafe {
            root: path.to_owned(),
            problem: LINK_REFUSED.into(),
        })
    };
    match fs::symlink_metadata(sled_dir) {
        Ok(meta) if meta.file_type().is_symlink() => return link(sled_dir),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("reading", sled_dir)(e)),
    }
    for entry in fs::read_dir(sled_dir).map_err(io_err("reading", sled_dir))? {
        let entry = entry.map_err(io_err("reading", sled_dir))?;
        if entry.file_type().map_err(io_err("reading", sled_dir))?.is_symlink() {
            return link(&entry.path());
        }
    }
    Ok(())
}

/// Names a symlink refused by [`no_follow`] as such.
pub(crate) fn named_open_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> OpenError + 'a {
    move |source| {
        if source.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
            OpenError::Unsafe {
                root: path.to_owned(),
                problem: LINK_REFUSED.into(),
            }
        } else {
            io_err(what, path)(source)
        }
    }
}

fn lock(root: &Path) -> Result<Flock<File>, OpenError> {
    let path = root.join(LOCK_FILE);
    let file = no_follow()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(named_open_error("opening lock file", &path))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(OpenError::Locked {
                root: root.to_owned(),
                holder: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            });
        }
        Err((_, errno)) => return Err(io_err("locking", &path)(io::Error::from(errno))),
    };
    let pid = format!("{}\n", std::process::id());
    lock.set_len(0)
        .and_then(|_| lock.rewind())
        .and_then(|_| lock.write_all(pid.as_bytes()))
        .map_err(io_err("writing pid to lock file", &path))?;
    Ok(lock)
}

fn check_format(root: &Path) -> Result<(), OpenError> {
    let path = root.join(FORMAT_FILE);
    let read = no_follow().read(true).open(&path).and_then(|mut f| {
        let mut text = String::new();
        f.read_to_string(&mut text).map(|_| text)
    });
    match read {
        Ok(text) => {
            let found = text
                .trim()
                .strip_prefix(FORMAT_PREFIX)
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| OpenError::BadFormat {
                    root: root.to_owned(),
                    problem: format!("{FORMAT_FILE} holds {:?}, not \"{FORMAT_PREFIX}N\"", text.trim()),
                })?;
            if found > FORMAT_VERSION {
                return Err(OpenError::NewerFormat {
                    root: root.to_owned(),
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            if found < FORMAT_VERSION {
                return write_format(root);
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if root.join(generation::FIRST).exists() || root.join(generation::POINTER).exists() {
                return Err(OpenError::BadFormat {
                    root: root.to_owned(),
                    problem: format!("holds a store but no {FORMAT_FILE} file; refusing to guess its format"),
                });
            }
            write_format(root)
        }
        Err(e) => Err(named_open_error("reading", &path)(e)),
    }
}

/// Writes `FORMAT` in `root`, atomically.
pub(crate) fn write_format(root: &Path) -> Result<(), OpenError> {
    let tmp = root.join(format!("{FORMAT_FILE}.tmp"));
    let path = root.join(FORMAT_FILE);
    // A leftover temp file from a kill is replaced; a link in its place is
    // removed, not written through.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("removing", &tmp)(e)),
        _ => {}
    }
    let mut f = no_follow()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("creating", &tmp))?;
    f.write_all(format!("{FORMAT_PREFIX}{FORMAT_VERSION}\n").as_bytes())
        .and_then(|_| crate::fault::sync("format-file", || f.sync_all()))
        .map_err(io_err("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("renaming", &tmp))?;
    crate::fault::sync("format-dir", || sync_dir(root)).map_err(io_err("syncing", root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_with_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let err = DataDir::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another imaged"), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        DataDir::open(dir.path()).unwrap();
    }

    #[test]
    fn a_version_1_directory_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FORMAT_FILE), "imaged-format 1\n").unwrap();
        DataDir::open(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap(),
            "imaged-format 5\n"
        );
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FORMAT_FILE), "imaged-format 99\n").unwrap();
        let err = DataDir::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("format version 99, newer than the {FORMAT_VERSION}")),
            "{err}"
        );
    }

    #[test]
    fn data_without_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sled")).unwrap();
        let err = DataDir::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no FORMAT file"), "{err}");
    }
}
