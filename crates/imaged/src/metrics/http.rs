//! The metrics listener: HTTP/1.1 (hyper) on a Unix socket or a TCP
//! address, answering `GET /metrics` and nothing else.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] scrapers at once (more wait in the
//! kernel's backlog), a request's headers must arrive within
//! [`HEADER_TIMEOUT`], and an encoding runs on the blocking pool, off the
//! executor, since it reads the store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use super::Metrics;

/// Scrapers served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a scraper has to send its request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// Serves `metrics` until the task is dropped.
    pub async fn serve(self, metrics: Arc<Metrics>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let accepted = match &self {
                Listener::Unix(listener, _) => listener.accept().await.map(|(s, _)| Conn::Unix(s)),
                Listener::Tcp(listener) => listener.accept().await.map(|(s, _)| Conn::Tcp(s)),
            };
            let conn = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |request| answer(metrics.clone(), request));
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "metrics: connection ended");
                }
            });
        }
    }
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
}
