//! Why imagectl could not reach the daemon, said as what to do next: no
//! socket at the address, a directory given for it, a socket this uid may
//! not connect to, or one a stopped daemon left behind.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User, geteuid};

/// What to do about a connection to `socket` that failed, found by looking
/// at the path and dialling it once more.
pub fn hint(socket: &Path) -> String {
    let path = socket.display();
    let uid = geteuid();
    let meta = match std::fs::metadata(socket) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return format!("no socket at {path}: is the daemon running? Start it with: imaged --socket {path}");
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return format!(
                "uid {uid} may not reach {path}: a directory on the way is closed to it; ask the host's \
                 administrator for access, or run as root"
            );
        }
        Err(e) => return format!("{path}: {e}"),
    };
    if meta.is_dir() {
        return format!(
            "{path} is a directory, not a socket: give the socket's path, e.g. --address {path}/imaged.sock"
        );
    }
    if !meta.file_type().is_socket() {
        return format!("{path} is not a socket: give the path imaged listens on (imaged --socket PATH)");
    }
    match UnixStream::connect(socket) {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            let owner = name(
                User::from_uid(Uid::from_raw(meta.uid())).ok().flatten().map(|u| u.name),
                meta.uid(),
            );
            let group = name(
                Group::from_gid(Gid::from_raw(meta.gid()))
                    .ok()
                    .flatten()
                    .map(|g| g.name),
                meta.gid(),
            );
            format!(
                "uid {uid} may not connect to {path} (owner {owner}, group {group}, mode {:o}): ask the host's \
                 administrator to add you to group {group}, or run as root",
                meta.mode() & 0o7777
            )
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            format!("nothing listens on {path}, a socket a stopped daemon left: start it with: imaged --socket {path}")
        }
        Err(e) => format!("{path}: {e}"),
        Ok(_) => "the daemon accepts connections now: try again".to_owned(),
    }
}

/// A user's or group's name, else its number.
fn name(found: Option<String>, id: u32) -> String {
    found.unwrap_or_else(|| id.to_string())
}
