//! The null server: containerd's images API served by tonic with no storage.
//! It answers every call at once, so it is the ceiling of a unary call on
//! this machine with this client. Its List answers with a fixed set of
//! images built once in memory: the floor of listing that many images over
//! tonic (encoding, transport and the client's decoding). `compare` runs it
//! as a process of its own (`imaged-bench null`), as the daemons are.
//!
//! Given a sled directory (`--sled DIR`), it is the sled-only server instead: it
//! answers creates and label updates only after making the sled writes
//! imaged makes for them (see [`crate::sled_only`]). Everything else it answers
//! as the null server does.

use std::path::Path;

use imaged_api::containerd::services::images::v1::images_server::{Images, ImagesServer};
use imaged_api::containerd::services::images::v1::{
    CreateImageRequest, CreateImageResponse, DeleteImageRequest, GetImageRequest, GetImageResponse, ListImagesRequest,
    ListImagesResponse, UpdateImageRequest, UpdateImageResponse,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::sled_only::SledWrites;

/// Serves the null images API on `socket` until the task is dropped; List
/// answers with images `0..list_size` as the load generator makes them.
/// With `sled`, creates and updates are stored there as imaged stores them.
pub fn spawn(socket: &Path, list_size: u64, sled: Option<SledWrites>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = UnixListener::bind(socket)?;
    let listed = ListImagesResponse {
        images: (0..list_size).map(crate::load::image).collect(),
    };
    let image = crate::load::image(0);
    Ok(tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(
                ImagesServer::new(Null { image, listed, sled })
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
    /// Where creates and updates are stored, for the sled-only server.
    sled: Option<SledWrites>,
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
        let image = request.into_inner().image;
        if let Some(sled) = &self.sled {
            // On the executor: imaged must not block it; this server may.
            sled.create(
                image
                    .clone()
                    .ok_or_else(|| Status::invalid_argument("image is missing"))?,
            )?;
        }
        Ok(Response::new(CreateImageResponse { image }))
    }

    async fn update(&self, request: Request<UpdateImageRequest>) -> Result<Response<UpdateImageResponse>, Status> {
        let request = request.into_inner();
        if let Some(sled) = &self.sled {
            let image = request
                .image
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("image is missing"))?;
            let paths = request.update_mask.as_ref().map_or(&[][..], |m| &m.paths[..]);
            if paths.is_empty() {
                return Err(Status::unimplemented(
                    "the sled-only server updates labels by mask only",
                ));
            }
            for path in paths {
                let Some((key, value)) = path
                    .strip_prefix("labels.")
                    .and_then(|key| image.labels.get_key_value(key))
                else {
                    return Err(Status::unimplemented(format!(
                        "the sled-only server sets labels the image carries, not {path:?}"
                    )));
                };
                sled.set_label(&image.name, key, value)?;
            }
        }
        Ok(Response::new(UpdateImageResponse { image: request.image }))
    }

    async fn delete(&self, _request: Request<DeleteImageRequest>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}
