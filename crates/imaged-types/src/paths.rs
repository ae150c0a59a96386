//! Default locations of the socket and the data directory, shared by the
//! daemon and its clients so they meet without configuration.
//!
//! | who | socket | data |
//! |---|---|---|
//! | root | `/run/imaged/imaged.sock` | `/var/lib/imaged` |
//! | a user | `$XDG_RUNTIME_DIR/imaged/imaged.sock`, else `/run/user/UID/imaged/imaged.sock` when that directory exists, else `$TMPDIR/imaged-UID/imaged.sock` | `$XDG_DATA_HOME/imaged`, else `$HOME/.local/share/imaged` |
//!
//! A client run by a user whose own socket does not exist dials the
//! system socket when that one does ([`client_socket`]).

use std::env;
use std::path::PathBuf;

/// The root user's socket.
pub const SYSTEM_SOCKET: &str = "/run/imaged/imaged.sock";
/// The root user's data directory.
pub const SYSTEM_ROOT: &str = "/var/lib/imaged";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn env_dir(name: &str) -> Option<PathBuf> {
    // The XDG spec ignores relative paths.
    env::var_os(name).map(PathBuf::from).filter(|p| p.is_absolute())
}

/// The socket a daemon listens on, and a client dials, when none is given.
pub fn default_socket() -> PathBuf {
    if is_root() {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    let uid = nix::unistd::geteuid().as_raw();
    if let Some(dir) = env_dir("XDG_RUNTIME_DIR") {
        return dir.join("imaged").join("imaged.sock");
    }
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if run_user.is_dir() {
        return run_user.join("imaged").join("imaged.sock");
    }
    env::temp_dir().join(format!("imaged-{uid}")).join("imaged.sock")
}

/// The socket a client dials when none is given: [`default_socket`], or,
/// for a user who runs no daemon of their own, the system daemon's socket
/// when it exists, so a member of group `imaged` reaches the system daemon
/// without a flag.
pub fn client_socket() -> PathBuf {
    let own = default_socket();
    let system = PathBuf::from(SYSTEM_SOCKET);
    if own.exists() || !system.exists() { own } else { system }
}

/// The data directory a daemon uses when none is given.
pub fn default_root() -> PathBuf {
    if is_root() {
        return PathBuf::from(SYSTEM_ROOT);
    }
    if let Some(dir) = env_dir("XDG_DATA_HOME") {
        return dir.join("imaged");
    }
    match env_dir("HOME") {
        Some(home) => home.join(".local").join("share").join("imaged"),
        None => env::temp_dir()
            .join(format!("imaged-{}", nix::unistd::geteuid().as_raw()))
            .join("data"),
    }
}

/// The socket path an address names: the daemon's `--socket`, imagectl's
/// `--address`, `$IMAGED_ADDRESS` and the client's `connect` all read it
/// here. An address is a path, or `unix://PATH` (gRPC's form, as `ctr` and
/// grpc clients write it), or `unix:PATH`. Other schemes (`tcp://`,
/// `http://`) and an empty address are refused, naming `field`.
pub fn socket_address(field: &str, address: &str) -> Result<PathBuf, crate::ValidationError> {
    let refuse = |reason: &str| crate::ValidationError::new(field, address, reason);
    let path = match address.split_once(':') {
        Some(("unix", rest)) => rest.strip_prefix("//").unwrap_or(rest),
        Some((scheme, rest)) if rest.starts_with("//") && !scheme.contains('/') => {
            return Err(refuse(
                "imaged listens on a Unix socket only: give a path or unix://PATH",
            ));
        }
        _ => address,
    };
    if path.is_empty() {
        return Err(refuse("is empty: give a path or unix://PATH"));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod address_tests {
    use super::*;

    #[test]
    fn an_address_is_a_path_or_a_unix_uri() {
        let parse = |a: &str| socket_address("address", a).map(|p| p.display().to_string());
        assert_eq!(parse("/tmp/imaged.sock").unwrap(), "/tmp/imaged.sock");
        assert_eq!(parse("unix:///tmp/imaged.sock").unwrap(), "/tmp/imaged.sock");
        assert_eq!(parse("unix:/tmp/imaged.sock").unwrap(), "/tmp/imaged.sock");
        assert_eq!(parse("unix:relative.sock").unwrap(), "relative.sock");
        assert_eq!(parse("./a:b.sock").unwrap(), "./a:b.sock");
        for bad in ["", "unix://", "tcp://127.0.0.1:1", "http://x"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("address"), "{bad:?}: {err}");
        }
    }
}
