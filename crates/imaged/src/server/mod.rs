//! The gRPC server: which services are mounted on the socket, how a call's
//! namespace is read, and graceful shutdown.
//!
//! Each wire API is one adapter module that converts messages to domain types,
//! calls the [`Store`], and converts the answer back. Rules live in the store,
//! never in an adapter.

pub mod seed;

use std::future::Future;
use std::os::unix::net::UnixListener as StdUnixListener;

use imaged_types::NamespaceName;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::Status;
use tonic::metadata::MetadataMap;
use tonic::transport::Server;

use crate::store::Store;

/// Largest gRPC message accepted or sent: containerd's limit, 16 MiB.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The metadata header that selects a call's namespace.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

/// Reads the call's namespace from [`NAMESPACE_HEADER`]. Without the header
/// the namespace is `default` when `required` is false (the seed API), and
/// FAILED_PRECONDITION when it is true (containerd's services).
pub fn namespace(metadata: &MetadataMap, required: bool) -> Result<NamespaceName, Status> {
    let Some(value) = metadata.get(NAMESPACE_HEADER) else {
        if required {
            return Err(Status::failed_precondition(format!(
                "namespace is required: set the {NAMESPACE_HEADER} header"
            )));
        }
        return Ok(NamespaceName::default_namespace());
    };
    let value = value
        .to_str()
        .map_err(|_| Status::invalid_argument(format!("invalid {NAMESPACE_HEADER} header: not printable ASCII")))?;
    NamespaceName::parse(NAMESPACE_HEADER, value).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Serves every API on `listener` until `shutdown` resolves, then stops
/// accepting and waits for the calls in flight.
pub async fn serve(
    listener: StdUnixListener,
    store: Store,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    listener.set_nonblocking(true)?;
    let incoming = UnixListenerStream::new(tokio::net::UnixListener::from_std(listener)?);
    Server::builder()
        .add_service(seed::service(store))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
