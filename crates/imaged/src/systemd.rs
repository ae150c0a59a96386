//! What imaged tells systemd, and the socket systemd hands it.
//!
//! - Notices (`sd_notify`): `STATUS=` lines while it starts, serves and
//!   stops; `EXTEND_TIMEOUT_USEC=` while a long open (journal replay) runs,
//!   so a big store is not killed at start-up; `READY=1` once the store is
//!   open and the socket accepts; `WATCHDOG=1` at half the watchdog's
//!   interval, only while the store's log thread answers; `STOPPING=1` on
//!   shutdown. Without `NOTIFY_SOCKET` each is a no-op.
//! - Socket activation (`LISTEN_FDS`, `LISTEN_PID`): the one passed socket
//!   must be a listening AF_UNIX stream socket. imaged never unlinks or
//!   rebinds a socket it did not create.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use nix::sys::socket::{SockType, UnixAddr, getsockname, getsockopt, sockopt};
use sd_notify::NotifyState;

use crate::store::Store;
use imaged_types::words::counted;

/// How often a long start-up asks systemd for more time, and how much each
/// time: the start times out only if a notice is missed twice.
const EXTEND_EVERY: Duration = Duration::from_secs(10);

/// How often the `STATUS=` line of a serving daemon is brought up to date.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Notices waiting for the notifier thread; past this many, new ones are
/// dropped (a manager that reads none of them misses a few pings).
const QUEUED_NOTICES: usize = 64;

/// The notifier thread's queue, when there is a service manager. The
/// datagram send blocks while the manager's socket buffer is full, so it
/// runs on a thread of its own: a manager that stops reading never stalls
/// the executor, the watchdog or shutdown.
static NOTIFIER: LazyLock<Option<SyncSender<String>>> = LazyLock::new(|| {
    std::env::var_os("NOTIFY_SOCKET")?;
    let (queue, notices) = std::sync::mpsc::sync_channel::<String>(QUEUED_NOTICES);
    let spawned = std::thread::Builder::new().name("imaged-notify".into()).spawn(move || {
        for notice in notices {
            if let Err(e) = sd_notify::notify(&[NotifyState::Custom(&notice)]) {
                tracing::warn!(error = %e, "cannot notify the service manager");
            }
        }
    });
    spawned.ok().map(|_| queue)
});

/// Sends `states` to the service manager, if there is one, in order and
/// without blocking. A failure is logged, never fatal: the daemon serves
/// without systemd as well.
pub fn notify(states: &[NotifyState]) {
    let Some(queue) = &*NOTIFIER else {
        return;
    };
    let notice = states.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("\n");
    if queue.try_send(notice).is_err() {
        tracing::debug!("service manager notice dropped: it is not reading them");
    }
}

/// Says what the daemon is doing, in systemd's status line.
pub fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

/// Whether a service manager listens for notices.
fn managed() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Runs `work` (the store's open, which replays the journal), asking the
/// service manager for more start-up time while it runs.
pub fn extending<T>(what: &str, work: impl FnOnce() -> T) -> T {
    status(what);
    if !managed() {
        return work();
    }
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let what = what.to_string();
    let extender = std::thread::Builder::new().name("imaged-extend".into()).spawn(move || {
        let usec = (EXTEND_EVERY * 3).as_micros() as u32;
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(EXTEND_EVERY) {
            notify(&[NotifyState::ExtendTimeoutUsec(usec), NotifyState::Status(&what)]);
        }
    });
    let result = work();
    drop(done);
    if let Ok(extender) = extender {
        let _ = extender.join();
    }
    result
}

/// The daemon's status line while it serves: "serving 12,345 images in 3
/// namespaces".
pub fn serving_status(images: u64, namespaces: u64) -> String {
    format!(
        "serving {} in {}",
        counted(images, "image", "images"),
        counted(namespaces, "namespace", "namespaces")
    )
}

/// Keeps systemd's watchdog fed while the store answers, and the status
/// line up to date, until the task is dropped. A log thread that is stuck
/// (a sync that never returns) or failed stops the pings, so systemd
/// restarts the daemon, and the restart replays the journal.
pub async fn keep_alive(store: Store) {
    if !managed() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    let tick = watchdog.map_or(STATUS_EVERY, |interval| (interval / 2).min(STATUS_EVERY));
    let mut last_status = tokio::time::Instant::now();
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Some(period) = watchdog {
            match tokio::time::timeout(period / 2, store.ping()).await {
                Ok(Ok(())) => notify(&[NotifyState::Watchdog]),
                Ok(Err(e)) => tracing::error!(error = %e, "the store refuses writes; no watchdog ping"),
                Err(_) => tracing::error!("the store's log thread did not answer in time; no watchdog ping"),
            }
        }
        if last_status.elapsed() >= STATUS_EVERY {
            last_status = tokio::time::Instant::now();
            let counting = store.clone();
            if let Ok(Ok(counts)) = tokio::task::spawn_blocking(move || counting.counts()).await {
                status(&serving_status(counts.images, counts.namespaces));
            }
        }
    }
}

/// A socket systemd passed.
#[derive(Debug)]
pub struct Passed {
    /// The listening socket.
    pub listener: UnixListener,
    /// The path it is bound to.
    pub path: PathBuf,
}

/// The socket systemd passed (`LISTEN_FDS` for this process), if any. One
/// listening AF_UNIX stream socket is accepted; anything else is an error
/// saying what was passed.
pub fn passed_socket() -> Result<Option<Passed>, String> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()
        .map_err(|e| format!("LISTEN_FDS / LISTEN_PID: {e}"))?
        .collect();
    let fd = match fds.as_slice() {
        [] => return Ok(None),
        [fd] => *fd,
        more => {
            return Err(format!(
                "systemd passed {} sockets (LISTEN_FDS); imaged serves one: give the socket unit one ListenStream=",
                more.len()
            ));
        }
    };
    // SAFETY: systemd passed this descriptor to this process (LISTEN_PID
    // matched) for it to own; nothing else in the process uses it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let wrong =
        |what: &str| format!("the socket systemd passed (fd {fd}) {what}; give the socket unit ListenStream=/path");
    match getsockopt(&owned, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(other) => return Err(wrong(&format!("is a {other:?} socket, not a stream socket"))),
        Err(e) => return Err(wrong(&format!("is not a socket ({e})"))),
    }
    if !getsockopt(&owned, sockopt::AcceptConn).unwrap_or(false) {
        return Err(wrong("is not listening"));
    }
    let address: UnixAddr = getsockname(fd).map_err(|e| wrong(&format!("is not an AF_UNIX socket ({e})")))?;
    let Some(path) = address.path().map(PathBuf::from) else {
        return Err(wrong("is an AF_UNIX socket without a path (abstract or unnamed)"));
    };
    Ok(Some(Passed {
        listener: UnixListener::from(owned),
        path,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counts_read_as_people_write_them() {
        assert_eq!(serving_status(12345, 3), "serving 12,345 images in 3 namespaces");
        assert_eq!(serving_status(1, 1), "serving 1 image in 1 namespace");
        assert_eq!(serving_status(1_000_000, 0), "serving 1,000,000 images in 0 namespaces");
    }
}
