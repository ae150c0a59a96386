//! The seed API, `containerd.v1.Images`: Get, Put, List (with filters,
//! order, pages) and Delete, and ListStream, adapted onto the [`Store`];
//! and Watch, adapted onto the [`Feed`] (see [`super::watch`]).
//! Without a namespace header, calls use `default`.

use imaged_api::containerd::v1::{DeleteRequest, GetRequest, ListRequest, PutRequest, WatchRequest};
use imaged_api::encoded::{EncodedImage, EncodedImageList};
use imaged_api::encoded_servers::containerd::v1::images_server::{Images, ImagesServer};
use imaged_types::wire::{image_from_seed, image_to_seed, precondition_from_seed};
use prost::Message;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use imaged_types::ValidationError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::context::{Context, Namespacing};
use super::encode::WireImage;
use super::incoming::Streams;
use super::watch::{self, WatchStream};
use super::{MAX_MESSAGE_BYTES, PAGE_BUDGET_BYTES, encoded_page, get_encoded, list_whole};
use crate::error::Error;
use crate::feed::Feed;
use crate::store::{MAX_PAGE_SIZE, Precondition, Query, Store};

/// The seed API's `Image` message: `name = 1, target = 2, labels = 3,
/// created_at = 4, updated_at = 5`.
pub static SEED_IMAGE: WireImage = WireImage {
    name: 1,
    target: 2,
    labels: 3,
    created_at: 4,
    updated_at: 5,
    revisions: Some((6, 7)),
    encode: |image| image_to_seed(image).encode_to_vec(),
};

/// The context of a List or ListStream request and the query it asks for.
fn query(request: Request<ListRequest>) -> Result<(Context, Arc<Query>, ListRequest), Status> {
    let context = Context::of(&request, Namespacing::DefaultsToDefault)?;
    let request = request.into_inner();
    let query = Query::new(context.namespace.clone(), &request.filters, &request.order_by).map_err(Error::from)?;
    Ok((context, Arc::new(query), request))
}

/// Checks a page size (1 to [`MAX_PAGE_SIZE`]).
fn page_size(size: u32) -> Result<usize, Status> {
    let size = size as usize;
    if size > MAX_PAGE_SIZE {
        return Err(Error::from(ValidationError::new(
            "page_size",
            &size.to_string(),
            format!("must be at most {MAX_PAGE_SIZE}"),
        ))
        .into());
    }
    Ok(size)
}

/// Encoded images one ListStream batch may hold, so that a client that
/// stops reading holds few bytes in the daemon whatever the records' size:
/// the batches in the channel, one in the transport's buffer and one being
/// read (docs/API.md gives the bound).
pub const STREAM_BATCH_BYTES: usize = 1024 * 1024;

/// Batches a ListStream keeps queued ahead of the client.
const STREAM_QUEUE: usize = 2;

/// The seed service over `store` and `feed`, with containerd's message
/// limits; its list streams take their slots from `streams`.
pub fn service(store: Store, feed: Feed, streams: Streams) -> ImagesServer<SeedImages> {
    ImagesServer::new(SeedImages { store, feed, streams })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Adapter from `containerd.v1.Images` to the store.
pub struct SeedImages {
    store: Store,
    feed: Feed,
    streams: Streams,
}

#[tonic::async_trait]
impl Images for SeedImages {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<EncodedImage>, Status> {
        let ns = Context::of(&request, Namespacing::DefaultsToDefault)?.namespace;
        let image = get_encoded(&self.store, &ns, &request.into_inner().name, &SEED_IMAGE).await?;
        Ok(Response::new(EncodedImage { image }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<()>, Status> {
        let ns = Context::of(&request, Namespacing::DefaultsToDefault)?.namespace;
        let request = request.into_inner();
        let image = image_from_seed(request.image).map_err(Error::from)?;
        let precondition = precondition_from_seed(request.precondition).map_err(Error::from)?;
        self.store.put(ns, image, precondition).await?;
        Ok(Response::new(()))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<EncodedImageList>, Status> {
        let (context, query, request) = query(request)?;
        // Read before the images: every change up to it is in the answer.
        let revision = self.store.revision();
        if request.page_size == 0 {
            // The seed's meaning: the whole list, in one answer. A token
            // belongs to a paged walk, which needs its page size.
            if !request.page_token.is_empty() {
                let refusal =
                    ValidationError::new("page_size", "0", "must be set (1 to 1000) when page_token is given");
                return Err(Error::from(refusal).into());
            }
            let hint = "use page_size or ListStream";
            let mut whole = list_whole(&self.store, &context, query, hint, &SEED_IMAGE).await?;
            whole.revision = revision;
            return Ok(Response::new(whole));
        }
        let limit = page_size(request.page_size)?;
        let page = encoded_page(
            &self.store,
            query,
            &request.page_token,
            limit,
            PAGE_BUDGET_BYTES,
            Some(&SEED_IMAGE),
        )
        .await?;
        let mut answer = page.items;
        answer.revision = revision;
        Ok(Response::new(answer))
    }

    type ListStreamStream = ReceiverStream<Result<EncodedImageList, Status>>;

    async fn list_stream(&self, request: Request<ListRequest>) -> Result<Response<Self::ListStreamStream>, Status> {
        let (context, query, request) = query(request)?;
        let batch = match request.page_size {
            0 => MAX_PAGE_SIZE,
            n => page_size(n)?,
        };
        let slot = self.streams.open()?;
        // Every batch carries the revision read before the first: every
        // change up to it is in the stream.
        let revision = self.store.revision();
        // The first batch is read before answering, so a bad token or filter
        // is the call's status rather than a stream that fails.
        let read = {
            let (store, query) = (self.store.clone(), query.clone());
            move |token: String| {
                let (store, query) = (store.clone(), query.clone());
                async move { encoded_page(&store, query, &token, batch, STREAM_BATCH_BYTES, Some(&SEED_IMAGE)).await }
            }
        };
        let mut page = read(request.page_token.clone()).await?;
        let streams = self.streams.clone();
        // A few batches in the channel and one being read: the stream
        // follows the client's pace and never holds the whole result (the
        // second batch smooths the pipeline: docs/PERFORMANCE.md).
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        tokio::spawn(async move {
            let _slot = slot;
            // Where the batch being sent starts, for a client to resume from.
            let mut page_token = request.page_token;
            for batches in 0u64.. {
                let next_page_token = page.next_page_token;
                let done = next_page_token.is_empty();
                if page.count > 0 || !done {
                    let mut batch = page.items;
                    batch.revision = revision;
                    tokio::select! {
                        sent = tx.send(Ok(batch)) => if sent.is_err() {
                            tracing::debug!(batches, "ListStream stopped: the client went away");
                            return;
                        },
                        () = streams.stopping() => {
                            // A client that reads gets the reason after the
                            // batches queued; one that does not is cut off at
                            // the end of the grace period, which drops the
                            // receiver and ends this wait.
                            let _ = tx.send(Err(shutting_down(&page_token))).await;
                            return;
                        }
                    }
                }
                if done || tx.is_closed() {
                    return;
                }
                if let Err(e) = context.check_deadline() {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                page_token = next_page_token.clone();
                page = match read(next_page_token).await {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        Ok(Response::new(watch::start(
            &self.store,
            &self.feed,
            &self.streams,
            request,
        )?))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<()>, Status> {
        let ns = Context::of(&request, Namespacing::DefaultsToDefault)?.namespace;
        let request = request.into_inner();
        let precondition = match precondition_from_seed(request.precondition).map_err(Error::from)? {
            Precondition::Absent => {
                return Err(Error::from(ValidationError::new(
                    "precondition.absent",
                    &request.name,
                    "a delete cannot require the name to be absent",
                ))
                .into());
            }
            other => other,
        };
        self.store.delete(ns, request.name, precondition).await?;
        Ok(Response::new(()))
    }
}

/// How a stream cut by shutdown ends: where to resume, once imaged is back.
fn shutting_down(next_page_token: &str) -> Status {
    Status::unavailable(format!(
        "imaged is shutting down; resume the listing with page_token {next_page_token:?}"
    ))
}
