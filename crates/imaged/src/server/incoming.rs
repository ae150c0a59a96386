//! The accept loop and the server's bounds on what callers hold: connections
//! (past the bound, new ones wait in the socket's backlog), open streams
//! (past the bound, a new one is refused), and the shutdown every stream
//! hears.
//!
//! Running out of file descriptors must not spin a core: the loop logs it
//! once and backs off until an accept succeeds again. Each connection's
//! bytes pass the [`AuthorityFix`] on their way to h2.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, watch};
use tonic::transport::server::Connected;

use super::authority::AuthorityFix;
use crate::access::Peer;
use crate::error::Error;

/// The server's bounds, from the daemon's flags.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the socket's backlog.
    pub max_connections: usize,
    /// ListStreams (and later watches) open at once; more are refused.
    pub max_streams: usize,
    /// How long shutdown waits for calls in flight and for clients to close
    /// their connections before it closes them.
    pub shutdown_grace: Duration,
    /// How long a backup's reader may take no data before the backup is
    /// ended: a stalled backup holds compaction back.
    pub backup_stall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_streams: 256,
            shutdown_grace: Duration::from_secs(10),
            backup_stall: Duration::from_secs(60),
        }
    }
}

/// How long the accept loop waits after running out of descriptors (or
/// memory for a socket) before it tries again.
const BACKOFF: Duration = Duration::from_millis(100);

/// An accepted connection, holding its place among the connections served,
/// knowing its peer, and reading the client's bytes through the
/// [`AuthorityFix`].
pub struct Connection {
    stream: UnixStream,
    peer: Peer,
    _slot: OwnedSemaphorePermit,
    fix: AuthorityFix,
    /// Bytes read from the client and not yet handed to h2.
    inbox: Vec<u8>,
    /// How many of them (from the start) are scanned and may be handed on.
    ready: usize,
}

impl Connection {
    fn new(stream: UnixStream, slot: OwnedSemaphorePermit, fix: bool) -> Connection {
        Connection {
            peer: Peer::of(&stream),
            stream,
            _slot: slot,
            fix: if fix {
                AuthorityFix::default()
            } else {
                AuthorityFix::off()
            },
            inbox: Vec::new(),
            ready: 0,
        }
    }
}

/// Set in the environment, this turns the [`AuthorityFix`] off for every
/// connection. It is for `imaged-bench ops` alone, which measures what the
/// fix costs clients that do not need it against a daemon without it;
/// clients built on gRPC's C core cannot call a daemon started with it.
pub const NO_AUTHORITY_FIX: &str = "IMAGED_BENCH_NO_AUTHORITY_FIX";

/// The connections accepted on `listener`, at most `max` open at once.
pub fn accept(listener: UnixListener, max: usize) -> impl Stream<Item = io::Result<Connection>> {
    let fix = std::env::var_os(NO_AUTHORITY_FIX).is_none();
    if !fix {
        tracing::warn!("{NO_AUTHORITY_FIX} is set: clients built on gRPC's C core cannot call this daemon");
    }
    let slots = Arc::new(Semaphore::new(max));
    futures_util::stream::unfold(
        (listener, slots, false),
        move |(listener, slots, mut warned)| async move {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return None;
            };
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        if warned {
                            tracing::info!("accepting connections again");
                        }
                        let connection = Connection::new(stream, slot, fix);
                        return Some((Ok(connection), (listener, slots, false)));
                    }
                    Err(e) if is_exhaustion(&e) => {
                        if !warned {
                            tracing::warn!(
                                error = %e,
                                "cannot accept connections: out of file descriptors or memory; retrying"
                            );
                            warned = true;
                        }
                        tokio::time::sleep(BACKOFF).await;
                    }
                    // A client that went away before its connection was
                    // accepted, and the like: nothing to do but go on.
                    Err(e) => tracing::debug!(error = %e, "accept failed"),
                }
            }
        },
    )
}

fn is_exhaustion(e: &io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)
    )
}

/// Each call's request carries its connection's [`Peer`], for the access
/// layer.
impl Connected for Connection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

/// Bytes read from the client at a time while its frames are scanned.
const SCAN_CHUNK: usize = 16 * 1024;

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready > 0 {
                let n = this.ready.min(out.remaining());
                out.put_slice(&this.inbox[..n]);
                this.inbox.drain(..n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            if this.fix.passing() && this.inbox.is_empty() {
                // The connection needs no fix: h2 reads the socket itself.
                return Pin::new(&mut this.stream).poll_read(cx, out);
            }
            let mut chunk = [0u8; SCAN_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            std::task::ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                if this.inbox.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                // The client stopped mid-frame: h2 sees what it sent.
                this.ready = this.inbox.len();
                continue;
            }
            this.inbox.extend_from_slice(read.filled());
            this.ready = this.fix.scan(&mut this.inbox);
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// What every stream shares: the slots streams take, and the shutdown they
/// end at. Cheap to clone.
#[derive(Clone)]
pub struct Streams {
    slots: Arc<Semaphore>,
    max: usize,
    stopping: watch::Receiver<bool>,
}

/// A stream's place among the open streams, given back when it ends.
pub type StreamSlot = OwnedSemaphorePermit;

impl Streams {
    /// At most `max` streams at once, ending when `stopping` turns true.
    pub fn new(max: usize, stopping: watch::Receiver<bool>) -> Streams {
        Streams {
            slots: Arc::new(Semaphore::new(max)),
            max,
            stopping,
        }
    }

    /// Takes a slot for a new stream, or refuses it past the bound.
    pub fn open(&self) -> Result<StreamSlot, Error> {
        self.slots.clone().try_acquire_owned().map_err(|e| match e {
            TryAcquireError::NoPermits => Error::ResourceExhausted(format!(
                "{} streams are open already, the most imaged serves at once (--max-streams); retry later",
                self.max
            )),
            TryAcquireError::Closed => Error::Unavailable("imaged is shutting down".into()),
        })
    }

    /// Resolves once the daemon starts shutting down.
    pub async fn stopping(&self) {
        let mut stopping = self.stopping.clone();
        // An error means the sender is gone: the daemon is stopping too.
        let _ = stopping.wait_for(|stopping| *stopping).await;
    }
}
