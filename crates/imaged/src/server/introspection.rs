//! The `Server` call of containerd's introspection service: the store's
//! persistent UUID, the daemon's pid and its pid namespace. `ctr version`
//! prints them.

use std::os::unix::fs::MetadataExt;

use imaged_api::containerd::services::introspection::v1::ServerResponse;
use imaged_api::containerd::services::introspection::v1::introspection_server::{Introspection, IntrospectionServer};
use tonic::{Request, Response, Status};

use crate::store::Store;

/// The introspection service.
pub fn service(store: Store) -> IntrospectionServer<ImagedIntrospection> {
    IntrospectionServer::new(ImagedIntrospection { store })
}

/// Answers who this server is.
pub struct ImagedIntrospection {
    store: Store,
}

#[tonic::async_trait]
impl Introspection for ImagedIntrospection {
    async fn server(&self, _request: Request<()>) -> Result<Response<ServerResponse>, Status> {
        // The pid namespace is the inode of /proc/self/ns/pid (0 if unknown).
        let pidns = std::fs::metadata("/proc/self/ns/pid").map(|m| m.ino()).unwrap_or(0);
        Ok(Response::new(ServerResponse {
            uuid: self.store.uuid().to_owned(),
            pid: u64::from(std::process::id()),
            pidns,
        }))
    }
}
