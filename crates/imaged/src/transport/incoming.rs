//! The accept loop and the server's bounds on what callers hold: every
//! connection takes a share of [`Resource::Connections`] for its peer's uid
//! (past it, the connection is closed at once with an HTTP/2 GOAWAY that
//! says why), has the handshake timeout to send HTTP/2's preface and first
//! SETTINGS, and open streams take shares of their own
//! ([`Streams::open`]), all ending at shutdown.
//!
//! Running out of file descriptors must not spin a core: the loop logs it
//! once and backs off until an accept succeeds again. Each connection's
//! bytes pass the [`AuthorityFix`] on their way to h2.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tonic::transport::server::Connected;

use super::authority::AuthorityFix;
use super::peer::Peer;
use crate::error::Error;
use crate::shares::logs::Telling;
use crate::shares::{Caller, Held, Refusal, Resource, Shares};

/// The server's bounds that are not fair shares, from the daemon's flags.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Calls in flight on one connection (HTTP/2's
    /// SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_calls_per_connection: u32,
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
            max_calls_per_connection: crate::shares::defaults::MAX_CALLS_PER_CONNECTION as u32,
            shutdown_grace: Duration::from_secs(10),
            backup_stall: Duration::from_secs(60),
        }
    }
}

/// How long the accept loop waits after running out of descriptors (or
/// memory for a socket) before it tries again.
const BACKOFF: Duration = Duration::from_millis(100);

/// Refused connections being told why at once, all uids together (see
/// [`Telling`]); past it, or past a uid's own few, a refused connection is
/// closed without a word, so a uid that reconnects in a loop costs an
/// accept and a close, nothing more.
const TELLING: u64 = 64;

/// How long a refused connection is given to read its GOAWAY: its own
/// bytes are read and dropped meanwhile, since closing a Unix socket with
/// unread bytes resets the peer before it reads ours.
const TELL_FOR: Duration = Duration::from_millis(500);

/// An accepted connection, holding its share of the connections, knowing
/// its peer, timing its handshake, and reading the client's bytes through
/// the [`AuthorityFix`].
pub struct Connection {
    stream: UnixStream,
    peer: Peer,
    _share: Held,
    fix: AuthorityFix,
    /// Bytes read from the client and not yet handed to h2.
    inbox: Vec<u8>,
    /// How many of them (from the start) are scanned and may be handed on.
    ready: usize,
    /// Until the handshake is done: its deadline and progress.
    handshake: Option<Handshake>,
}

impl Connection {
    fn new(stream: UnixStream, peer: Peer, share: Held, fix: bool, handshake: Duration) -> Connection {
        Connection {
            peer,
            stream,
            _share: share,
            fix: if fix {
                AuthorityFix::default()
            } else {
                AuthorityFix::off()
            },
            inbox: Vec::new(),
            ready: 0,
            handshake: Some(Handshake {
                deadline: Box::pin(tokio::time::sleep(handshake)),
                seen: 0,
                header: [0; 9],
            }),
        }
    }
}

/// HTTP/2's client preface: these 24 bytes, then a SETTINGS frame.
const PREFACE_BYTES: usize = 24;
/// An HTTP/2 frame header.
const FRAME_HEADER: usize = 9;

/// How far a connection is through its handshake, and until when it may
/// take.
struct Handshake {
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Bytes of the handshake seen.
    seen: usize,
    /// The first frame's header, as it arrives.
    header: [u8; FRAME_HEADER],
}

impl Handshake {
    /// Takes `bytes`, the next the client sent; whether the preface and the
    /// whole first frame (SETTINGS, or whatever h2 then refuses) are in.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            let at = self.seen.checked_sub(PREFACE_BYTES);
            if let Some(at) = at.filter(|at| *at < FRAME_HEADER) {
                self.header[at] = b;
            }
            self.seen += 1;
            if self.done() {
                return true;
            }
        }
        self.done()
    }

    fn done(&self) -> bool {
        if self.seen < PREFACE_BYTES + FRAME_HEADER {
            return false;
        }
        let len = u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]) as usize;
        self.seen >= PREFACE_BYTES + FRAME_HEADER + len
    }
}

/// Set in the environment, this turns the [`AuthorityFix`] off for every
/// connection. It is for `imaged-bench ops` alone, which measures what the
/// fix costs clients that do not need it against a daemon without it;
/// clients built on gRPC's C core cannot call a daemon started with it.
pub const NO_AUTHORITY_FIX: &str = "IMAGED_BENCH_NO_AUTHORITY_FIX";

/// What the accept loop needs from the access policy above it.
pub trait Admission: Clone + Send + Sync + 'static {
    /// `peer` as fairness sees it.
    fn caller(&self, peer: &Peer) -> Caller;

    /// Whether a refusal of `uid` may be logged now (a token bucket per
    /// uid), and how many were held back before it.
    fn may_log(&self, uid: u32) -> Option<u64>;
}

/// The connections accepted on `listener`, each holding a share of
/// [`Resource::Connections`] for its peer; `policy` says who is an admin
/// and logs refusals.
pub fn accept(
    listener: UnixListener,
    shares: Shares,
    policy: impl Admission,
) -> impl Stream<Item = io::Result<Connection>> {
    let fix = std::env::var_os(NO_AUTHORITY_FIX).is_none();
    if !fix {
        tracing::warn!("{NO_AUTHORITY_FIX} is set: clients built on gRPC's C core cannot call this daemon");
    }
    let telling = Arc::new(Telling::new(TELLING));
    futures_util::stream::unfold((listener, false), move |(listener, mut warned)| {
        let (shares, policy, telling) = (shares.clone(), policy.clone(), telling.clone());
        async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        if warned {
                            tracing::info!("accepting connections again");
                            warned = false;
                        }
                        let peer = Peer::of(&stream);
                        let caller = policy.caller(&peer);
                        match shares.take(Resource::Connections, caller, 1) {
                            Ok(share) => {
                                let connection = Connection::new(stream, peer, share, fix, shares.handshake_timeout());
                                return Some((Ok(connection), (listener, warned)));
                            }
                            Err(refusal) => refuse(stream, &refusal, &policy, &telling),
                        }
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
        }
    })
}

/// Closes a connection past its peer's share: logged (a token bucket per
/// uid), and told why with an HTTP/2 GOAWAY (ENHANCE_YOUR_CALM) carrying
/// the refusal's text, which gRPC clients show.
fn refuse(stream: UnixStream, refusal: &Refusal, policy: &impl Admission, telling: &Telling) {
    if let Some(held_back) = policy.may_log(refusal.caller.uid) {
        tracing::warn!(uid = refusal.caller.uid, held_back, "refused a connection: {refusal}");
    }
    let Some(place) = telling.place(refusal.caller.uid) else {
        return;
    };
    let why = refusal.to_string();
    tokio::spawn(async move {
        let _ = tell(stream, &why).await;
        drop(place);
    });
}

/// Writes a server preface and a GOAWAY saying `why`, then drops what the
/// client sends until it closes or [`TELL_FOR`] passes.
async fn tell(mut stream: UnixStream, why: &str) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let debug = why.as_bytes();
    let mut frames = Vec::with_capacity(2 * FRAME_HEADER + 8 + debug.len());
    let header = |out: &mut Vec<u8>, len: usize, kind: u8| {
        out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, 0, 0, 0, 0, 0]);
    };
    header(&mut frames, 0, 0x4);
    header(&mut frames, 8 + debug.len(), 0x7);
    frames.extend_from_slice(&0u32.to_be_bytes());
    frames.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    frames.extend_from_slice(debug);
    let _ = tokio::time::timeout(TELL_FOR, async {
        stream.write_all(&frames).await?;
        stream.flush().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
    Ok(())
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
        if let Some(handshake) = &mut this.handshake
            && handshake.deadline.as_mut().poll(cx).is_ready()
        {
            tracing::debug!(
                uid = this.peer.uid,
                pid = this.peer.pid,
                "closed a connection that did not finish its handshake in time"
            );
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface and SETTINGS within the handshake timeout",
            )));
        }
        let before = out.filled().len();
        let read = this.read(cx, out);
        if let Some(handshake) = &mut this.handshake
            && handshake.feed(&out.filled()[before..])
        {
            this.handshake = None;
        }
        read
    }
}

impl Connection {
    /// Reads the client's bytes, through the authority fix.
    fn read(&mut self, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self;
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

/// What every stream shares: the fair shares streams take, and the
/// shutdown they end at. Cheap to clone.
#[derive(Clone)]
pub struct Streams {
    shares: Shares,
    stopping: watch::Receiver<bool>,
}

impl Streams {
    /// Streams taking from `shares`, ending when `stopping` turns true.
    pub fn new(shares: Shares, stopping: watch::Receiver<bool>) -> Streams {
        Streams { shares, stopping }
    }

    /// Takes `caller`'s share of `resource` for a new stream, or refuses it
    /// (RESOURCE_EXHAUSTED naming the bound, the uid and the setting);
    /// UNAVAILABLE once the daemon is stopping.
    pub fn open(&self, resource: Resource, caller: Caller) -> Result<Held, Error> {
        if *self.stopping.borrow() {
            return Err(Error::Unavailable("imaged is shutting down".into()));
        }
        Ok(self.shares.take(resource, caller, 1)?)
    }

    /// The fair shares.
    pub fn shares(&self) -> &Shares {
        &self.shares
    }

    /// Resolves once the daemon starts shutting down.
    pub async fn stopping(&self) {
        let mut stopping = self.stopping.clone();
        // An error means the sender is gone: the daemon is stopping too.
        let _ = stopping.wait_for(|stopping| *stopping).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_handshake_is_done_after_the_preface_and_the_whole_first_frame() {
        let mut handshake = Handshake {
            deadline: Box::pin(tokio::time::sleep(Duration::ZERO)),
            seen: 0,
            header: [0; FRAME_HEADER],
        };
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert!(!handshake.feed(preface));
        // SETTINGS with 12 bytes of payload, a byte at a time.
        let frame = [0, 0, 12, 4, 0, 0, 0, 0, 0];
        for b in frame {
            assert!(!handshake.feed(&[b]));
        }
        assert!(!handshake.feed(&[0; 11]));
        assert!(handshake.feed(&[0; 5]));
    }
}
