//! Who is on the other end of a connection, as the kernel says: uid, gid
//! and pid from SO_PEERCRED, and supplementary groups from SO_PEERGROUPS.
//! Both are fixed when the client connects, so they are read once, at
//! accept, and cannot be changed by the client afterwards.

use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// Most supplementary groups read for a peer: Linux's NGROUPS_MAX.
const MAX_GROUPS: usize = 65_536;

/// A connected peer's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its effective uid when it connected.
    pub uid: u32,
    /// Its effective gid.
    pub gid: u32,
    /// Its pid, when the kernel gave one.
    pub pid: Option<i32>,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
}

impl Peer {
    /// The credentials of the peer of `socket`. A peer whose credentials
    /// cannot be read is nobody (uid and gid 65534), whom no default grant
    /// covers.
    pub fn of(socket: &impl AsFd) -> Peer {
        match getsockopt(socket, PeerCredentials) {
            Ok(cred) => Peer {
                uid: cred.uid(),
                gid: cred.gid(),
                pid: (cred.pid() > 0).then_some(cred.pid()),
                groups: groups(socket).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, uid = cred.uid(), "cannot read the peer's groups; using its gid only");
                    Vec::new()
                }),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the peer's credentials; treating it as nobody");
                Peer::nobody()
            }
        }
    }

    /// A peer nobody knows: uid and gid 65534, whom no default grant
    /// covers.
    pub fn nobody() -> Peer {
        Peer {
            uid: 65534,
            gid: 65534,
            pid: None,
            groups: Vec::new(),
        }
    }

    /// Whether `gid` is the peer's group or one of its supplementary ones.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// SO_PEERGROUPS: the peer's supplementary groups. nix has no wrapper; the
/// kernel answers ERANGE with the size it needs when the buffer is short.
fn groups(socket: &impl AsFd) -> std::io::Result<Vec<u32>> {
    let fd = socket.as_fd().as_raw_fd();
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * size_of::<u32>()) as libc::socklen_t;
        // SAFETY: the buffer is `len` bytes of u32s, as SO_PEERGROUPS writes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / size_of::<u32>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() && needed <= MAX_GROUPS {
            groups.resize(needed, 0);
            continue;
        }
        return Err(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_credentials_across_a_socket_pair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = Peer::of(&a);
        assert_eq!(peer.uid, nix::unistd::geteuid().as_raw());
        assert_eq!(peer.gid, nix::unistd::getegid().as_raw());
        let mut own: Vec<u32> = nix::unistd::getgroups().unwrap().iter().map(|g| g.as_raw()).collect();
        let mut seen = peer.groups.clone();
        own.sort();
        seen.sort();
        assert_eq!(seen, own);
    }
}
