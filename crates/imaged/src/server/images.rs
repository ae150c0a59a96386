//! containerd's image service, `containerd.services.images.v1.Images`,
//! adapted onto the [`Store`]. The namespace header is required.

use imaged_api::containerd::services::images::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, ListImagesRequest, UpdateImageRequest,
};
use imaged_api::encoded::{EncodedImage, EncodedImageList};
use imaged_api::encoded_servers::containerd::services::images::v1::images_server::{Images, ImagesServer};
use imaged_types::wire::{
    image_from_containerd, image_to_containerd, image_update_from_containerd, time_from_timestamp,
};
use imaged_types::{Digest, ValidationError};
use prost::Message;
use tonic::{Request, Response, Status};

use super::encode::{ImageFields, WireImage, encode_stored};
use super::{MAX_MESSAGE_BYTES, admit, get_encoded, list_whole};
use crate::error::Error;
use crate::shares::Shares;
use crate::store::{Precondition, Store};
use crate::transport::context::{Context, Namespacing};

/// containerd's `Image` message: `name = 1, labels = 2, target = 3,
/// created_at = 7, updated_at = 8`.
pub static CONTAINERD_IMAGE: WireImage = WireImage::new(
    ImageFields {
        name: 1,
        labels: 2,
        target: 3,
        created_at: 7,
        updated_at: 8,
        revisions: None,
        protected: None,
    },
    |image| image_to_containerd(image).encode_to_vec(),
);

/// containerd's image service over `store`, with containerd's message
/// limits; its whole lists queue fairly in `shares`.
pub fn service(store: Store, shares: Shares) -> ImagesServer<ContainerdImages> {
    ImagesServer::new(ContainerdImages { store, shares })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Adapter from `containerd.services.images.v1.Images` to the store.
pub struct ContainerdImages {
    store: Store,
    shares: Shares,
}

fn source_date_epoch(field: &str, ts: Option<prost_types::Timestamp>) -> Result<Option<std::time::SystemTime>, Error> {
    Ok(ts.map(|ts| time_from_timestamp(field, &ts)).transpose()?)
}

#[tonic::async_trait]
impl Images for ContainerdImages {
    async fn get(&self, request: Request<GetImageRequest>) -> Result<Response<EncodedImage>, Status> {
        let ns = Context::of(&request, Namespacing::Required)?.namespace;
        let image = get_encoded(&self.store, &ns, &request.into_inner().name, &CONTAINERD_IMAGE).await?;
        Ok(Response::new(EncodedImage { image }))
    }

    async fn list(&self, request: Request<ListImagesRequest>) -> Result<Response<EncodedImageList>, Status> {
        let context = Context::of(&request, Namespacing::Required)?;
        let filters = request.into_inner().filters;
        // A whole list: expensive, so it takes its turn in the fair queue.
        let admitted = admit(&self.shares, &context, filters, String::new(), true).await?;
        let hint = "narrow the filters, or page with the containerd.v1 API (page_size, ListStream)";
        let whole = list_whole(&self.store, &context, admitted.query, hint, &CONTAINERD_IMAGE).await?;
        drop(admitted.seat);
        Ok(Response::new(whole))
    }

    async fn create(&self, request: Request<CreateImageRequest>) -> Result<Response<EncodedImage>, Status> {
        let ns = Context::of(&request, Namespacing::Required)?.namespace;
        let request = request.into_inner();
        let at = source_date_epoch("source_date_epoch", request.source_date_epoch)?;
        let image = image_from_containerd(request.image).map_err(Error::from)?;
        let written = self.store.create(ns, image, at).await?;
        Ok(Response::new(EncodedImage {
            image: encode_stored(&written.image, Some(&written.record), &CONTAINERD_IMAGE),
        }))
    }

    async fn update(&self, request: Request<UpdateImageRequest>) -> Result<Response<EncodedImage>, Status> {
        let ns = Context::of(&request, Namespacing::Required)?.namespace;
        let request = request.into_inner();
        let at = source_date_epoch("source_date_epoch", request.source_date_epoch)?;
        let mask = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let update = image_update_from_containerd(request.image);
        let written = self.store.update(ns, update, mask, at).await?;
        Ok(Response::new(EncodedImage {
            image: encode_stored(&written.image, Some(&written.record), &CONTAINERD_IMAGE),
        }))
    }

    async fn delete(&self, request: Request<DeleteImageRequest>) -> Result<Response<()>, Status> {
        let ns = Context::of(&request, Namespacing::Required)?.namespace;
        let request = request.into_inner();
        // `sync` asks to wait for garbage collection; imaged has none to wait for.
        let precondition = match request.target {
            Some(target) => Precondition::Digest(
                Digest::parse(&target.digest)
                    .map_err(|e| Error::from(ValidationError::new("target.digest", &target.digest, e.reason)))?,
            ),
            None => Precondition::None,
        };
        self.store
            .delete(ns, request.name, precondition)
            .await
            // containerd answers a compare-and-delete mismatch with NOT_FOUND.
            .map_err(|e| match e {
                Error::Conflict(message) => Error::NotFound(message),
                e => e,
            })?;
        Ok(Response::new(()))
    }
}
