//! containerd's version service, `containerd.services.version.v1.Version`:
//! imaged's version and the git revision it was built from.

use imaged_api::containerd::services::version::v1::VersionResponse;
use imaged_api::containerd::services::version::v1::version_server::{Version, VersionServer};
use tonic::{Request, Response, Status};

use crate::build_info::{REVISION, VERSION};

/// The version service.
pub fn service() -> VersionServer<ImagedVersion> {
    VersionServer::new(ImagedVersion)
}

/// Answers imaged's version and revision.
pub struct ImagedVersion;

#[tonic::async_trait]
impl Version for ImagedVersion {
    async fn version(&self, _request: Request<()>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: VERSION.to_owned(),
            revision: REVISION.to_owned(),
        }))
    }
}
