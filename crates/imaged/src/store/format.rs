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
//! - `sled/`: the sled database.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::engine::barrier::sync_dir;

/// The on-disk format this build writes and reads.
/// Version 2 added the journal: a version-1 directory is upgraded when opened
/// (it has no journal to lose), and an imaged that knows only version 1
/// refuses a version-2 one rather than miss the journal's writes.
pub const FORMAT_VERSION: u32 = 2;

const FORMAT_FILE: &str = "FORMAT";
const LOCK_FILE: &str = "lock";
const FORMAT_PREFIX: &str = "imaged-format ";

/// Why the data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the directory's lock.
    #[error("data dir {root} is in use by another imaged{holder}; refusing to start")]
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
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io_err("creating data dir", root))?;
        let lock = lock(root)?;
        check_format(root)?;
        Ok(DataDir {
            root: root.to_owned(),
            _lock: lock,
        })
    }

    /// The directory sled keeps its files in.
    pub fn sled_dir(&self) -> PathBuf {
        self.root.join("sled")
    }

    /// The journal file.
    pub fn journal_path(&self) -> PathBuf {
        self.root.join("journal")
    }
}

fn lock(root: &Path) -> Result<Flock<File>, OpenError> {
    let path = root.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("opening lock file", &path))?;
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
    match fs::read_to_string(&path) {
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
            if root.join("sled").exists() {
                return Err(OpenError::BadFormat {
                    root: root.to_owned(),
                    problem: format!("holds a store but no {FORMAT_FILE} file; refusing to guess its format"),
                });
            }
            write_format(root)
        }
        Err(e) => Err(io_err("reading", &path)(e)),
    }
}

fn write_format(root: &Path) -> Result<(), OpenError> {
    let tmp = root.join(format!("{FORMAT_FILE}.tmp"));
    let path = root.join(FORMAT_FILE);
    let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
    f.write_all(format!("{FORMAT_PREFIX}{FORMAT_VERSION}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io_err("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("renaming", &tmp))?;
    sync_dir(root).map_err(io_err("syncing", root))
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
            "imaged-format 2\n"
        );
    }

    #[test]
    fn newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FORMAT_FILE), "imaged-format 99\n").unwrap();
        let err = DataDir::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("format version 99, newer than the 2"), "{err}");
    }

    #[test]
    fn data_without_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sled")).unwrap();
        let err = DataDir::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no FORMAT file"), "{err}");
    }
}
