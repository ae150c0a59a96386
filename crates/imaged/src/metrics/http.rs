//! The metrics listener: HTTP/1.1 (hyper) on a Unix socket or a TCP
//! address, answering `GET /metrics` and nothing else.
//!
//! Access: the metrics name every namespace and count its images, so a
//! scraper needs what the admin service's Status needs, a reader over every
//! namespace, by the same policy. On the Unix socket the peer's uid is the
//! kernel's (SO_PEERCRED); on a loopback TCP address it is the uid owning
//! the peer's socket, as the kernel lists it in `/proc/net/tcp` (the way an
//! identd answers); a peer found in neither is nobody, whom only an
//! `everyone` grant covers. A peer on another host can connect only where
//! `metrics_allow_remote` opened the listener to the network, which lets
//! it read.
//!
//! Bounds: each connection is a fair share of
//! [`Resource::MetricsConnections`] (past it, the scraper is answered 429
//! at once, saying why), its request's headers must arrive within the
//! handshake timeout (`handshake_timeout`), it serves one request (no keep-alive, so nothing
//! idles), all of it within [`CONNECTION_TIMEOUT`], and an encoding runs on
//! the blocking pool, off the executor, since it reads the store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Metrics;
use crate::access::layer::SharedPolicy;
use crate::access::{Level, Need, Peer, Scope};
use crate::shares::logs::Telling;
use crate::shares::{Caller, Held, Resource, Shares};

/// How long one connection may last, its answer included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Refused scrapers being told why at once, all uids together (see
/// [`Telling`]); past it, or past a uid's own few, a refused connection is
/// closed without a word.
const TELLING: u64 = 16;

/// Where the metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A Unix socket at this path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl Address {
    /// Reads `text`: a path (or `unix://PATH`), or `host:port` where the
    /// host is an IP address or `localhost`. A TCP address that is not
    /// loopback is refused unless `allow_remote`.
    pub fn parse(text: &str, allow_remote: bool) -> Result<Address, String> {
        if let Some(path) = text.strip_prefix("unix://").or(text.starts_with('/').then_some(text)) {
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let addr = match text.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => text.to_owned(),
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is neither a socket path nor an IP host:port (such as 127.0.0.1:9090)"))?;
        if !addr.ip().is_loopback() && !allow_remote {
            return Err(format!(
                "{text:?} is not a loopback address: the metrics would be open to the network. Use 127.0.0.1 or \
                 ::1, or set metrics_allow_remote = true"
            ));
        }
        Ok(Address::Tcp(addr))
    }
}

/// A bound metrics listener.
pub enum Listener {
    /// On a Unix socket, removed when this is dropped.
    Unix(tokio::net::UnixListener, crate::listener::SocketFile),
    /// On TCP.
    Tcp(tokio::net::TcpListener),
}

impl Listener {
    /// Binds `address`; a Unix socket gets `mode` and `gid`, as the API's
    /// socket does. Must run inside the runtime.
    pub async fn bind(address: &Address, mode: u32, gid: Option<u32>) -> Result<Listener, String> {
        match address {
            Address::Unix(path) => {
                crate::listener::probe(path).map_err(|e| format!("metrics socket: {e}"))?;
                let (listener, file) =
                    crate::listener::bind(path, mode, gid).map_err(|e| format!("metrics socket: {e}"))?;
                listener.set_nonblocking(true).map_err(|e| e.to_string())?;
                let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| e.to_string())?;
                Ok(Listener::Unix(listener, file))
            }
            Address::Tcp(addr) => tokio::net::TcpListener::bind(addr)
                .await
                .map(Listener::Tcp)
                .map_err(|e| format!("metrics address {addr}: {e}")),
        }
    }

    /// Serves `metrics` until the task is dropped: each connection takes
    /// its peer's share of `shares` and is checked against `policy`.
    pub async fn serve(self, metrics: Arc<Metrics>, shares: Shares, policy: SharedPolicy) {
        let telling = Telling::new(TELLING);
        loop {
            let accepted = match &self {
                Listener::Unix(listener, _) => listener
                    .accept()
                    .await
                    .map(|(s, _)| (Some(Known::Local(Peer::of(&s))), Conn::Unix(s))),
                Listener::Tcp(listener) => listener.accept().await.map(|(s, remote)| {
                    let peer = s.local_addr().ok().and_then(|local| tcp_peer(remote, local));
                    (peer, Conn::Tcp(s))
                }),
            };
            let (peer, conn) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let refusal = match &peer {
                Some(Known::Local(peer)) => admit(&policy, &shares, peer),
                // The operator opened the listener to the network.
                Some(Known::Remote) => shares
                    .take(Resource::MetricsConnections, REMOTE, 1)
                    .map_err(|r| (429, r.to_string())),
                None => admit(&policy, &shares, &Peer::nobody()),
            };
            let share = match refusal {
                Ok(share) => share,
                Err((code, why)) => {
                    let uid = match &peer {
                        Some(Known::Local(p)) => p.uid,
                        Some(Known::Remote) => REMOTE.uid,
                        None => Peer::nobody().uid,
                    };
                    if let Some(held_back) = policy.logs().allow(uid) {
                        tracing::warn!(uid, held_back, "metrics: refused a scraper: {why}");
                    }
                    if let Some(place) = telling.place(uid) {
                        tokio::spawn(async move {
                            tell(conn, code, &why).await;
                            drop(place);
                        });
                    }
                    continue;
                }
            };
            let metrics = metrics.clone();
            // A scraper's request is its handshake.
            let header_timeout = shares.handshake_timeout();
            tokio::spawn(async move {
                let _share = share;
                let service = hyper::service::service_fn(move |request| answer(metrics.clone(), request));
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(conn), service);
                match tokio::time::timeout(CONNECTION_TIMEOUT, served).await {
                    Ok(Err(e)) => tracing::debug!(error = %e, "metrics: connection ended"),
                    Err(_) => tracing::debug!("metrics: connection timed out"),
                    Ok(Ok(())) => {}
                }
            });
        }
    }
}

/// The uid a peer on another host counts as for its shares.
const REMOTE: Caller = Caller {
    uid: u32::MAX - 1,
    admin: false,
};

/// Who a TCP scraper is.
enum Known {
    /// A local process, by the uid owning its socket.
    Local(Peer),
    /// Another host.
    Remote,
}

/// Lets `peer` scrape if the policy lets it read every namespace, taking
/// its share; else the HTTP status and why.
fn admit(policy: &SharedPolicy, shares: &Shares, peer: &Peer) -> Result<Held, (u16, String)> {
    let need = Need {
        level: Level::Read,
        scope: Scope::Global,
    };
    if !policy.current().allows(peer, need, None) {
        return Err((
            403,
            format!(
                "permission denied: uid {} may not read the metrics, which name every namespace; ask the operator \
                 for a reader grant over every namespace in imaged's access policy",
                peer.uid
            ),
        ));
    }
    shares
        .take(Resource::MetricsConnections, policy.caller(peer), 1)
        .map_err(|refusal| (429, refusal.to_string()))
}

/// Answers a refused scraper with `code` and `why`, then drops what it
/// sends for a moment, so that closing does not reset it before it reads.
async fn tell(mut conn: Conn, code: u16, why: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let reason = if code == 403 { "Forbidden" } else { "Too Many Requests" };
    let answer = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{why}\n",
        why.len() + 1
    );
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        conn.write_all(answer.as_bytes()).await?;
        conn.flush().await?;
        let mut sink = [0u8; 4096];
        while conn.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Who is at the other end of a TCP connection from `remote` to our
/// `local` address: on loopback, the uid owning the peer's socket as the
/// kernel lists it; another host is [`Known::Remote`]; `None` when the
/// kernel's tables do not say.
fn tcp_peer(remote: SocketAddr, local: SocketAddr) -> Option<Known> {
    if !remote.ip().is_loopback() {
        return Some(Known::Remote);
    }
    let table = if remote.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table).ok()?;
    // The peer's own socket: its local address is our remote one.
    let uid = socket_owner(&text, remote, local)?;
    Some(Known::Local(Peer {
        uid,
        gid: nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map_or(u32::MAX, |u| u.gid.as_raw()),
        pid: None,
        groups: Vec::new(),
    }))
}

/// The uid column of the line of a `/proc/net/tcp{,6}` `table` whose local
/// address is `local` and remote address `remote`.
fn socket_owner(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let (local, remote) = (proc_address(local), proc_address(remote));
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 7 && fields[1].eq_ignore_ascii_case(&local) && fields[2].eq_ignore_ascii_case(&remote))
            .then(|| fields[7].parse().ok())
            .flatten()
    })
}

/// `addr` as `/proc/net/tcp{,6}` writes it: the address as the kernel's
/// 32-bit words in host order (little-endian here), in hex, then `:` and
/// the port in hex.
fn proc_address(addr: SocketAddr) -> String {
    let words: Vec<[u8; 4]> = match addr.ip() {
        std::net::IpAddr::V4(ip) => vec![ip.octets()],
        std::net::IpAddr::V6(ip) => ip.octets().chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect(),
    };
    let mut out = String::new();
    for word in words {
        out.push_str(&format!("{:08X}", u32::from_ne_bytes(word)));
    }
    format!("{out}:{:04X}", addr.port())
}

/// A scraper's connection.
enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn answer(metrics: Arc<Metrics>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let reply = |status: StatusCode, kind: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(kind),
        );
        Ok(response)
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "imaged serves /metrics only\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET /metrics\n".into());
    }
    let openmetrics = request
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
    let text = tokio::task::spawn_blocking(move || metrics.render(openmetrics)).await;
    match text {
        Ok(text) if openmetrics => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Ok(text) => reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("{e}\n")),
    }
}

macro_rules! delegate {
    ($self:ident, $conn:ident => $body:expr) => {
        match $self.get_mut() {
            Conn::Unix($conn) => {
                let $conn = std::pin::Pin::new($conn);
                $body
            }
            Conn::Tcp($conn) => {
                let $conn = std::pin::Pin::new($conn);
                $body
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, conn => conn.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, conn => conn.poll_write(cx, buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, conn => conn.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, conn => conn.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_taken_unless_remote_is_allowed() {
        assert_eq!(
            Address::parse("/run/imaged/metrics.sock", false),
            Ok(Address::Unix("/run/imaged/metrics.sock".into()))
        );
        assert!(matches!(Address::parse("127.0.0.1:9090", false), Ok(Address::Tcp(_))));
        assert!(matches!(Address::parse("[::1]:9090", false), Ok(Address::Tcp(_))));
        assert!(matches!(Address::parse("localhost:9090", false), Ok(Address::Tcp(_))));
        let refused = Address::parse("0.0.0.0:9090", false).unwrap_err();
        assert!(refused.contains("not a loopback address"), "{refused}");
        assert!(matches!(Address::parse("0.0.0.0:9090", true), Ok(Address::Tcp(_))));
        assert!(Address::parse("metrics:9090", false).unwrap_err().contains("neither"));
    }

    #[test]
    fn a_loopback_peer_is_found_in_the_kernels_table_by_its_addresses() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:2382 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:D431 0100007F:2382 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0 20 4 30 10 -1\n";
        let server: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        assert_eq!(socket_owner(table, client, server), Some(1000));
        assert_eq!(socket_owner(table, server, client), None);
        assert_eq!(
            proc_address("[::1]:9090".parse().unwrap()),
            format!("{}:2382", "0".repeat(24) + "01000000")
        );
    }
}
