//! The seed API, `containerd.v1.Images`: Get, Put, List (with filters,
//! order, pages) and Delete, and ListStream, adapted onto the [`Store`];
//! and Watch, adapted onto the [`Feed`] (see [`super::watch`]); and
//! ListRepositories, onto the store's repository records.
//! Without a namespace header, calls use `default`.

use imaged_api::containerd::v1::{
    DeleteRequest, GetRequest, ListRepositoriesRequest, ListRepositoriesResponse, ListRequest, PutRequest, WatchRequest,
};
use imaged_api::encoded::{EncodedImage, EncodedImageList};
use imaged_api::encoded_servers::containerd::v1::images_server::{Images, ImagesServer};
use imaged_types::wire::{image_from_seed, image_to_seed, precondition_from_seed, repository_to_seed};
use prost::Message;
use tonic::{Request, Response, Status};

use imaged_types::ValidationError;

use super::admission::admit_repositories;
use super::encode::{ImageFields, WireImage};
use super::outbox::{self, Inbox, Stop};
use super::watch::{self, WatchStream};
use super::{
    Admitted, EXPENSIVE_PAGE, MAX_MESSAGE_BYTES, PAGE_BUDGET_BYTES, admit, encoded_page, get_encoded, list_whole,
};
use crate::error::Error;
use crate::feed::Feed;
use crate::shares::Resource;
use crate::shares::queue::Seat;
use crate::store::{MAX_PAGE_SIZE, Precondition, Store};
use crate::transport::context::{Context, Namespacing};
use crate::transport::incoming::Streams;

/// The seed API's `Image` message: `name = 1, target = 2, labels = 3,
/// created_at = 4, updated_at = 5`.
pub static SEED_IMAGE: WireImage = WireImage::new(
    ImageFields {
        name: 1,
        target: 2,
        labels: 3,
        created_at: 4,
        updated_at: 5,
        revisions: Some((6, 7)),
        protected: Some(8),
    },
    |image| image_to_seed(image).encode_to_vec(),
);

/// The context of a List or ListStream request, its query, admitted (see
/// [`admit`]; `big` for a whole list or a big page), and the rest of the
/// request.
async fn query(
    streams: &Streams,
    request: Request<ListRequest>,
    big: impl FnOnce(&ListRequest) -> bool,
) -> Result<(Context, Admitted, ListRequest), Status> {
    let context = Context::of(&request, Namespacing::DefaultsToDefault)?;
    let mut request = request.into_inner();
    let big = big(&request);
    let (filters, order_by) = (std::mem::take(&mut request.filters), request.order_by.clone());
    let admitted = admit(streams.shares(), &context, filters, order_by, big).await?;
    Ok((context, admitted, request))
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
        let protect = request.image.as_ref().and_then(|i| i.protected);
        let image = image_from_seed(request.image).map_err(Error::from)?;
        let precondition = precondition_from_seed(request.precondition).map_err(Error::from)?;
        self.store.put_protecting(ns, image, precondition, protect).await?;
        Ok(Response::new(()))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<EncodedImageList>, Status> {
        let whole_or_big = |r: &ListRequest| r.page_size == 0 || r.page_size as usize > EXPENSIVE_PAGE;
        let (context, admitted, request) = query(&self.streams, request, whole_or_big).await?;
        // Held to the end of the answer.
        let (query, _seat) = (admitted.query, admitted.seat);
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

    async fn list_repositories(
        &self,
        request: Request<ListRepositoriesRequest>,
    ) -> Result<Response<ListRepositoriesResponse>, Status> {
        let context = Context::of(&request, Namespacing::DefaultsToDefault)?;
        let request = request.into_inner();
        let limit = match request.page_size {
            0 => MAX_PAGE_SIZE,
            n => page_size(n)?,
        };
        let big = limit > EXPENSIVE_PAGE;
        let (query, _seat) =
            admit_repositories(self.streams.shares(), &context, request.filters, request.order_by, big).await?;
        // Read before the page: every change up to it is in the answer.
        let revision = self.store.revision();
        let page = self.store.repositories(query, &request.page_token, limit).await?;
        Ok(Response::new(ListRepositoriesResponse {
            repositories: page.items.into_iter().map(repository_to_seed).collect(),
            next_page_token: page.next_page_token,
            revision,
        }))
    }

    type ListStreamStream = Inbox<EncodedImageList>;

    async fn list_stream(&self, request: Request<ListRequest>) -> Result<Response<Self::ListStreamStream>, Status> {
        let big = |r: &ListRequest| r.page_size == 0 || r.page_size as usize > EXPENSIVE_PAGE;
        let (context, admitted, request) = query(&self.streams, request, big).await?;
        let batch = match request.page_size {
            0 => MAX_PAGE_SIZE,
            n => page_size(n)?,
        };
        let share = self.streams.open(Resource::Streams, context.caller)?;
        let Admitted { query, expensive, seat } = admitted;
        // Every batch carries the revision read before the first: every
        // change up to it is in the stream.
        let revision = self.store.revision();
        // An expensive stream takes its turn in the fair queue for each
        // batch, never while it waits for its client.
        let read = {
            let (store, query, queue) = (self.store.clone(), query.clone(), self.streams.shares().queue().clone());
            move |token: String, seat: Option<Seat>| {
                let (store, query, queue) = (store.clone(), query.clone(), queue.clone());
                async move {
                    let _seat = match seat {
                        Some(seat) => Some(seat),
                        None if expensive => Some(queue.enter(context.caller).await?),
                        None => None,
                    };
                    encoded_page(&store, query, &token, batch, STREAM_BATCH_BYTES, Some(&SEED_IMAGE)).await
                }
            }
        };
        // The first batch is read before answering, so a bad token or filter
        // is the call's status rather than a stream that fails.
        let mut page = read(request.page_token.clone(), seat).await?;
        // A few batches queued and one being read: the stream follows the
        // client's pace and never holds the whole result (the second batch
        // smooths the pipeline: docs/PERFORMANCE.md).
        let bounds = outbox::Bounds {
            items: STREAM_QUEUE,
            bytes: STREAM_QUEUE * STREAM_BATCH_BYTES,
            size: |batch: &EncodedImageList| batch.images.len(),
        };
        let (outbox, inbox) = outbox::outbox(bounds, self.streams.shares().stall_timeout(), self.streams.clone());
        tokio::spawn(async move {
            let _share = share;
            // Where the batch being sent starts, for a client to resume from.
            let mut page_token = request.page_token;
            for batches in 0u64.. {
                let next_page_token = page.next_page_token;
                let done = next_page_token.is_empty();
                if page.count > 0 || !done {
                    let mut batch = page.items;
                    batch.revision = revision;
                    let stalled = |stall: std::time::Duration| {
                        Status::resource_exhausted(format!(
                            "the client took nothing for {} s (stream_stall_timeout), so the stream was ended to \
                             free its place; resume the listing with page_token {page_token:?}",
                            stall.as_secs()
                        ))
                    };
                    match outbox.send(Ok(batch), stalled).await {
                        Ok(()) => {}
                        Err(Stop::Gone) => {
                            tracing::debug!(batches, "ListStream stopped: the client went away");
                            return;
                        }
                        Err(Stop::Stalled) => {
                            tracing::info!(
                                uid = context.caller.uid,
                                batches,
                                "ListStream ended: its client took nothing"
                            );
                            return;
                        }
                        // A client that reads gets the reason after the
                        // batches queued; one that does not is cut off at
                        // the end of the grace period.
                        Err(Stop::Stopping) => return outbox.end(shutting_down(&page_token)),
                    }
                }
                if done || outbox.is_closed() {
                    return;
                }
                if let Err(e) = context.check_deadline() {
                    return outbox.end(e.into());
                }
                page_token = next_page_token.clone();
                page = match read(next_page_token, None).await {
                    Ok(page) => page,
                    Err(e) => return outbox.end(e.into()),
                };
            }
        });
        Ok(Response::new(inbox))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<WatchStream>, Status> {
        Ok(Response::new(
            watch::start(&self.store, &self.feed, &self.streams, request).await?,
        ))
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
