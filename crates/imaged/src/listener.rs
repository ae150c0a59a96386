//! The Unix socket the daemon serves on: creating it safely, refusing to take
//! over a live daemon's socket, replacing a dead one's, and removing it on
//! exit.
//!
//! The socket is created with the configured mode (0660 by default: owner
//! and group may connect; others may not) and group. It is bound under a
//! umask that leaves it unreachable until its group and mode are set, so it
//! is never more open than configured, not even for an instant.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, umask};

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A daemon answers on the path already.
    #[error("another daemon is serving on {0}; refusing to take it over")]
    InUse(PathBuf),
    /// Others could replace the socket: its directory is writable by them.
    #[error(
        "the socket's directory {dir} is writable by {who} (mode {mode:04o}), who could replace the socket; \
         serve from a directory only imaged's user can write, such as {dir}/imaged/"
    )]
    UnsafeDirectory {
        /// The directory.
        dir: PathBuf,
        /// Its mode.
        mode: u32,
        /// `"others"`, `"its group"` or `"another user"`.
        who: &'static str,
    },
    /// The path exists and is not a socket.
    #[error("{0} exists and is not a socket; refusing to remove it")]
    NotASocket(PathBuf),
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
}

/// The bound socket file. Dropping it removes the file, if it is still the one
/// this process bound.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Remove only our own socket: a newer daemon may have replaced it.
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// What [`probe`] found at a socket path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Nothing: the path is free.
    Nothing,
    /// A socket nobody answers on, as a killed daemon leaves behind.
    Stale,
}

/// Checks, creating and changing nothing, that `path` could be bound: it is
/// free or a stale socket. A live socket (another daemon serves there) or a
/// file that is not a socket is refused. The daemon probes before it opens
/// its data directory, so a refused start leaves nothing behind.
pub fn probe(path: &Path) -> Result<Found, ListenError> {
    let io_err = |what: &'static str| {
        move |source| ListenError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    };
    check_directory(path)?;
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => Err(ListenError::NotASocket(path.to_owned())),
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => Err(ListenError::InUse(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(Found::Stale),
            Err(e) => Err(io_err("probing existing socket")(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Found::Nothing),
        Err(e) => Err(io_err("inspecting")(e)),
    }
}

/// Refuses a socket whose directory exists and could be written by anyone
/// but imaged's user (or root): they could remove the socket and bind their
/// own in its place, and callers would talk to them. A directory that does
/// not exist yet is made 0755 by [`bind`].
fn check_directory(path: &Path) -> Result<(), ListenError> {
    let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ListenError::Io {
                what: "inspecting the directory of",
                path: path.to_owned(),
                source,
            });
        }
    };
    let mode = meta.mode() & 0o7777;
    let uid = nix::unistd::geteuid().as_raw();
    let who = if mode & 0o002 != 0 {
        "others"
    } else if mode & 0o020 != 0 {
        "its group"
    } else if meta.uid() != uid && meta.uid() != 0 {
        "another user"
    } else {
        return Ok(());
    };
    Err(ListenError::UnsafeDirectory {
        dir: dir.to_owned(),
        mode,
        who,
    })
}

/// Binds `path` with `mode` and, when given, group `gid`: creates its parent
/// directory if missing, replaces a stale socket nobody answers on, and
/// refuses a live one or a non-socket file.
pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> Result<(UnixListener, SocketFile), ListenError> {
    let io_err = |what: &'static str| {
        move |source| ListenError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io_err("creating the directory of"))?;
    }
    if probe(path)? == Found::Stale {
        tracing::info!(socket = %path.display(), "replacing stale socket");
        fs::remove_file(path).map_err(io_err("removing stale socket"))?;
    }
    // No permission bits for anyone while the socket is bound; the mode is set
    // right after. The umask is process-wide, which is why this runs at start-up,
    // before anything else creates files.
    let old = umask(Mode::from_bits_truncate(0o777));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound.map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => ListenError::InUse(path.to_owned()),
        _ => io_err("binding")(e),
    })?;
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| io_err("setting the group of")(e.into()))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("setting mode of"))?;
    let meta = fs::symlink_metadata(path).map_err(io_err("inspecting"))?;
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            identity: (meta.dev(), meta.ino()),
        },
    ))
}

/// The permission bits and group of the socket at `path`, whoever made it.
pub fn mode_and_group(path: &Path) -> Result<(u32, u32), ListenError> {
    let meta = fs::metadata(path).map_err(|source| ListenError::Io {
        what: "inspecting",
        path: path.to_owned(),
        source,
    })?;
    Ok((meta.mode() & 0o777, meta.gid()))
}
