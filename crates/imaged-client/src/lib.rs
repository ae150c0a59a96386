//! A typed async client for imaged, the local image-metadata daemon.
//!
//! # Using it
//! The crate is not published: depend on it by path from a clone of
//! imaged (the client is async on tokio; `futures-util` gives the stream
//! combinators the examples use):
//!
//! ```toml
//! [dependencies]
//! imaged-client = { path = "/path/to/imaged/crates/imaged-client" }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! futures-util = "0.3"
//! ```
//!
//! The README's whole program is `examples/readme.rs`.
//!
//! ```no_run
//! use imaged_client::{Client, Descriptor, Digest};
//! use futures_util::TryStreamExt;
//!
//! # async fn run() -> Result<(), imaged_client::Error> {
//! // Finds the daemon as imagectl does: $IMAGED_ADDRESS, then the default socket.
//! let client = Client::connect_default()?;
//! let images = client.namespace("k8s.io")?;
//!
//! let digest: Digest = "sha256:9b7c4b0e4b04e52b6a63e0a9f8b8d2c58d6b69e1c3bd1c2a4e7f1d8a6b5c4d3e".parse()?;
//! let target = Descriptor {
//!     media_type: "application/vnd.oci.image.index.v1+json".into(),
//!     digest: digest.clone(),
//!     size: 1234,
//!     annotations: Default::default(),
//! };
//! // Create only if absent: of many runtimes pulling at once, one wins.
//! match images.put("docker.io/library/redis:7", target).if_absent().await {
//!     Ok(()) => println!("created"),
//!     Err(e) if e.is_aborted() => println!("someone else created it"),
//!     Err(e) => return Err(e),
//! }
//!
//! let image = images.get("docker.io/library/redis:7").await?;
//! println!("{} → {}", image.name, image.target.digest);
//!
//! // One page, filtered and ordered…
//! let page = images.list().filter("labels.env==prod").order_by("created_at desc").page_size(100).page().await?;
//! // …or every image, streamed lazily.
//! let all: Vec<_> = images.list_all().try_collect().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`Client`]: the connection (cheap to clone, safe to share), namespaces,
//!   version.
//! - [`Images`]: the image calls of one namespace: [`Images::get`],
//!   [`Images::put`], [`Images::delete`], [`Images::label`],
//!   [`Images::list`], [`Images::list_all`], and [`Images::watch`]: the
//!   changes as they happen, resumed by themselves, and an informer that
//!   lists and then watches ([`Watch::informer`]).
//! - For operators: [`Client::health`], [`Client::status`] and
//!   [`Client::backup`].
//! - [`Error`]: every failure, with `is_not_found()`-style helpers.
//! - The domain types [`Image`], [`Descriptor`], [`Digest`], [`Namespace`]
//!   come from `imaged-types`; a [`Digest`] can only hold a valid digest.
//!
//! # Resilience
//! The connection is made on first use and remade after a daemon restart, so
//! a client may be created before the daemon starts. Reads retry on
//! UNAVAILABLE with bounded backoff ([`Retry`]); writes are never retried, since
//! a write whose answer was lost may have happened. Every call can have a
//! timeout ([`ClientBuilder::timeout`]).

#![warn(missing_docs)]

mod admin;
mod error;
mod images;
mod repos;
mod watch;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use imaged_api::containerd::services::namespaces::v1 as ctrd_ns;
use imaged_api::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use imaged_api::containerd::services::version::v1::version_client::VersionClient;
use imaged_types::wire::{namespace_from_containerd, namespace_to_containerd};
use tonic::transport::{Channel, Endpoint};

pub use admin::{Compacted, DaemonStatus};
pub use error::Error;
pub use imaged_types::{
    Descriptor, Digest, Image, Labels, Namespace, NamespaceName, PROTECTED_LABEL, PROTECTED_VALUE, Precondition,
    Repository, paths, repository_of, time,
};
pub use images::{Delete, Images, LabelChange, List, Page, Put};
pub use repos::{Repositories, RepositoryPage, limit_to_repository, repository_selector};
pub use watch::{Event, EventType, Informed, Update, Watch};

/// The largest message sent or accepted: containerd's 16 MiB.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The metadata header that carries a call's namespace.
const NAMESPACE_HEADER: &str = "containerd-namespace";

/// How reads retry while the daemon is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included (1 disables retries).
    pub attempts: u32,
    /// Wait before the first retry; doubled for each next one.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// What [`Client::version`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The daemon's version, such as `0.1.0`.
    pub version: String,
    /// The git revision it was built from, or `unknown`.
    pub revision: String,
}

/// Configures a [`Client`] before connecting.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    address: String,
    timeout: Option<Duration>,
    retry: Retry,
}

impl ClientBuilder {
    /// Sets a timeout for every call ([`Error::Timeout`] when it passes).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets how reads retry while the daemon is unavailable.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Makes the client. No I/O happens until the first call;
    /// [`Error::InvalidArgument`] when the address is not a path or
    /// `unix://PATH`.
    pub fn build(self) -> Result<Client, Error> {
        let socket = imaged_types::paths::socket_address("address", &self.address)?;
        let uri = format!("unix://{}", socket.display());
        let channel = Endpoint::try_from(uri)
            .map_err(|e| Error::Transport(format!("invalid socket path {}: {e}", socket.display())))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        Ok(Client {
            inner: Arc::new(Inner {
                channel,
                socket,
                timeout: self.timeout,
                retry: self.retry,
            }),
        })
    }
}

/// A connection to imaged. Cheap to clone; clones share the connection and
/// are safe to use from many tasks.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    channel: Channel,
    socket: PathBuf,
    timeout: Option<Duration>,
    retry: Retry,
}

impl Client {
    /// A client of the daemon listening at `address`: a socket path, or
    /// `unix://PATH`. No I/O happens until the first call, so the daemon
    /// need not be running yet.
    pub fn connect(address: impl AsRef<Path>) -> Result<Client, Error> {
        Client::builder(address).build()
    }

    /// A client of the daemon at [`default_address`]: `$IMAGED_ADDRESS` (a
    /// path, or `unix://PATH`), or else the daemon's default socket
    /// (`/run/imaged/imaged.sock` for root, `$XDG_RUNTIME_DIR/imaged/imaged.sock`
    /// for others, who reach the system socket when they run no daemon).
    pub fn connect_default() -> Result<Client, Error> {
        Client::connect(default_address())
    }

    /// A builder for a client of the daemon at `address`: a socket path,
    /// or `unix://PATH`.
    pub fn builder(address: impl AsRef<Path>) -> ClientBuilder {
        ClientBuilder {
            address: address.as_ref().to_string_lossy().into_owned(),
            timeout: None,
            retry: Retry::default(),
        }
    }

    /// This client with another timeout for every call made through it (and
    /// its namespace handles); the connection is shared. For one call:
    /// `client.with_timeout(d).namespace("k8s.io")?.get(name).await`.
    pub fn with_timeout(&self, timeout: Duration) -> Client {
        Client {
            inner: Arc::new(Inner {
                channel: self.inner.channel.clone(),
                socket: self.inner.socket.clone(),
                timeout: Some(timeout),
                retry: self.inner.retry,
            }),
        }
    }

    /// The socket this client dials.
    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    /// The image calls of namespace `name`; INVALID_ARGUMENT-style
    /// [`Error::InvalidArgument`] if the name breaks containerd's rule.
    pub fn namespace(&self, name: &str) -> Result<Images, Error> {
        let ns = NamespaceName::parse("namespace", name)?;
        Ok(Images::new(self.clone(), ns))
    }

    /// Every namespace, by name.
    pub async fn namespaces(&self) -> Result<Vec<Namespace>, Error> {
        let answer = self
            .read(|channel| async move {
                let mut client = NamespacesClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
                client.list(ctrd_ns::ListNamespacesRequest::default()).await
            })
            .await?;
        answer
            .namespaces
            .into_iter()
            .map(|n| namespace_from_containerd(Some(n)).map_err(Error::from))
            .collect()
    }

    /// Creates a namespace; [`Error::AlreadyExists`] when it exists.
    pub async fn create_namespace(&self, name: &str, labels: Labels) -> Result<Namespace, Error> {
        let namespace = Namespace {
            name: NamespaceName::parse("namespace", name)?,
            labels,
        };
        let request = ctrd_ns::CreateNamespaceRequest {
            namespace: Some(namespace_to_containerd(&namespace)),
        };
        let answer = self
            .write(move |channel| async move { NamespacesClient::new(channel).create(request).await })
            .await?;
        Ok(namespace_from_containerd(answer.namespace)?)
    }

    /// Deletes an empty namespace; [`Error::FailedPrecondition`] while it
    /// holds images.
    pub async fn delete_namespace(&self, name: &str) -> Result<(), Error> {
        let request = ctrd_ns::DeleteNamespaceRequest {
            name: NamespaceName::parse("namespace", name)?.as_str().to_owned(),
        };
        self.write(move |channel| async move { NamespacesClient::new(channel).delete(request).await })
            .await
    }

    /// The daemon's version and the git revision it was built from.
    pub async fn version(&self) -> Result<Version, Error> {
        let answer = self
            .read(|channel| async move { VersionClient::new(channel).version(()).await })
            .await?;
        Ok(Version {
            version: answer.version,
            revision: answer.revision,
        })
    }

    /// Runs a read, retrying on UNAVAILABLE with bounded backoff.
    async fn read<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let retry = self.inner.retry;
        let mut backoff = retry.initial_backoff;
        let mut attempt = 1;
        loop {
            match self.once(call(self.inner.channel.clone())).await {
                Err(e) if e.is_unavailable() && attempt < retry.attempts => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(retry.max_backoff);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// Runs a write once: a write whose answer was lost may have happened, so
    /// it is never retried blindly.
    async fn write<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.once(call(self.inner.channel.clone())).await
    }

    /// Runs a call once without the per-call timeout: for a stream that
    /// lasts as long as its work.
    async fn unbounded<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        call(self.inner.channel.clone())
            .await
            .map(|r| r.into_inner())
            .map_err(|status| self.error(status))
    }

    /// A status the daemon answered with, as an [`Error`].
    fn error(&self, status: tonic::Status) -> Error {
        Error::from_status(status, &self.inner.socket)
    }

    async fn once<T>(&self, call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Result<T, Error> {
        let result = match self.inner.timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .map_err(|_| Error::Timeout(limit))?,
            None => call.await,
        };
        result
            .map(|r| r.into_inner())
            .map_err(|status| Error::from_status(status, &self.inner.socket))
    }
}

/// Adds the namespace header to a message.
fn in_namespace<T>(ns: &NamespaceName, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        NAMESPACE_HEADER,
        ns.as_str().parse().expect("namespace names are ASCII"),
    );
    request
}

/// The address [`Client::connect_default`] dials: `$IMAGED_ADDRESS` (a
/// path or `unix://PATH`, checked when the client is built), else the
/// daemon's default socket for this user, else, when that does not exist
/// and the system daemon's `/run/imaged/imaged.sock` does, that one.
pub fn default_address() -> PathBuf {
    match std::env::var_os("IMAGED_ADDRESS") {
        Some(address) if !address.is_empty() => PathBuf::from(address),
        _ => imaged_types::paths::client_socket(),
    }
}
