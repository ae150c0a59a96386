//! The seed API, `containerd.v1.Images`: Get, Put, List and Delete, adapted
//! onto the [`Store`]. Without a namespace header, calls use `default`.

use imaged_api::containerd::v1::images_server::{Images, ImagesServer};
use imaged_api::containerd::v1::{DeleteRequest, GetRequest, GetResponse, ListRequest, ListResponse, PutRequest};
use imaged_types::wire::{image_from_seed, image_to_seed};
use tonic::{Request, Response, Status};

use super::{MAX_MESSAGE_BYTES, fit_in_message, namespace};
use crate::error::Error;
use crate::filter::Filter;
use crate::store::{Precondition, Store};

/// The seed service over `store`, with containerd's message limits.
pub fn service(store: Store) -> ImagesServer<SeedImages> {
    ImagesServer::new(SeedImages { store })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Adapter from `containerd.v1.Images` to the store.
pub struct SeedImages {
    store: Store,
}

#[tonic::async_trait]
impl Images for SeedImages {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let ns = namespace(request.metadata(), false)?;
        let image = self.store.get(&ns, request.into_inner().name).await?;
        Ok(Response::new(GetResponse {
            image: Some(image_to_seed(&image)),
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata(), false)?;
        let image = image_from_seed(request.into_inner().image).map_err(Error::from)?;
        self.store.put(ns, image, Precondition::None).await?;
        Ok(Response::new(()))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let ns = namespace(request.metadata(), false)?;
        let images = self.store.list(&ns, Filter::all()).await?;
        let images = fit_in_message(images.iter().map(image_to_seed).collect(), "images")?;
        Ok(Response::new(ListResponse { images }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(request.metadata(), false)?;
        self.store
            .delete(ns, request.into_inner().name, Precondition::None)
            .await?;
        Ok(Response::new(()))
    }
}
