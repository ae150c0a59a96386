//! The null server: containerd's images API served by tonic with no storage.
//! It answers every call at once, so it is the ceiling of a unary call on
//! this machine with this client. Its List answers with a fixed set of
//! images built once in memory: the floor of listing that many images over
//! tonic (encoding, transport and the client's decoding). `compare` runs it
//! as a process of its own (`imaged-bench null`), as the daemons are.

use std::path::Path;

use imaged_api::containerd::services::images::v1::images_server::{Images, ImagesServer};
use imaged_api::containerd::services::images::v1::{
    CreateImageRequest, CreateImageResponse, DeleteImageRequest, GetImageRequest, GetImageResponse, ListImagesRequest,
    ListImagesResponse, UpdateImageRequest, UpdateImageResponse,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// Serves the null images API on `socket` until the task is dropped; List
/// answers with images `0..list_size` as the load generator makes them.
pub fn spawn(socket: &Path, list_size: u64) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = UnixListener::bind(socket)?;
    let listed = ListImagesResponse {
        images: (0..list_size).map(crate::load::image).collect(),
    };
    let image = crate::load::image(0);
    Ok(tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(
                ImagesServer::new(Null { image, listed })
                    .max_encoding_message_size(crate::load::MAX_MESSAGE)
                    .max_decoding_message_size(crate::load::MAX_MESSAGE),
            )
            .serve_with_incoming(UnixListenerStream::new(listener))
            .await;
    }))
}

/// An images API that stores nothing.
struct Null {
    /// What Get answers, under the name asked for.
    image: imaged_api::containerd::services::images::v1::Image,
    listed: ListImagesResponse,
}

#[tonic::async_trait]
impl Images for Null {
    async fn get(&self, request: Request<GetImageRequest>) -> Result<Response<GetImageResponse>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(GetImageResponse {
            image: Some(imaged_api::containerd::services::images::v1::Image {
                name,
                ..self.image.clone()
            }),
        }))
    }

    async fn list(&self, _request: Request<ListImagesRequest>) -> Result<Response<ListImagesResponse>, Status> {
        Ok(Response::new(self.listed.clone()))
    }

    async fn create(&self, request: Request<CreateImageRequest>) -> Result<Response<CreateImageResponse>, Status> {
        Ok(Response::new(CreateImageResponse {
            image: request.into_inner().image,
        }))
    }

    async fn update(&self, request: Request<UpdateImageRequest>) -> Result<Response<UpdateImageResponse>, Status> {
        Ok(Response::new(UpdateImageResponse {
            image: request.into_inner().image,
        }))
    }

    async fn delete(&self, _request: Request<DeleteImageRequest>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}
