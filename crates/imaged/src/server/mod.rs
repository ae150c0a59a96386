//! The gRPC server: which services are mounted on the socket, whole-list
//! answers within the message limit, and graceful shutdown. What a call
//! carries before a service sees it is [`crate::transport`]'s.
//!
//! Mounted services:
//! - [`seed`] serves `containerd.v1.Images`, the seed API, whose Watch
//!   [`watch`] adapts onto the change feed;
//! - [`images`] serves `containerd.services.images.v1.Images`;
//! - [`namespaces`] serves `containerd.services.namespaces.v1.Namespaces`;
//! - [`version`] serves `containerd.services.version.v1.Version`;
//! - [`leases`] serves `containerd.services.leases.v1.Leases`, which `ctr`
//!   takes around its work;
//! - [`events`] serves `containerd.services.events.v1.Events`, also onto
//!   the change feed;
//! - [`introspection`] serves `Server` of
//!   `containerd.services.introspection.v1.Introspection`, which `ctr version`
//!   asks;
//! - [`admin`] serves `imaged.admin.v1.Admin`: status and online backups;
//! - [`health`] reports `grpc.health.v1.Health` (served by `tonic-health`),
//!   and gRPC server reflection (v1 and v1alpha, by `tonic-reflection`)
//!   describes every service from the descriptor set `build.rs` emits.
//!
//! Each wire API is one adapter module that reads the call's [`Context`]
//! once, converts messages to domain types, calls the [`Store`], and converts
//! the answer back. Rules live in the store, never in an adapter. Images are
//! answered from the store's records: an adapter names its `Image` message's
//! field numbers (a [`WireImage`]) and [`encode`] writes each image straight
//! from its stored bytes, with no message struct per image.

pub mod admin;
pub mod admission;
pub mod encode;
pub mod events;
pub mod health;
pub mod images;
pub mod introspection;
pub mod leases;
pub mod namespaces;
pub mod outbox;
pub mod published;
pub mod seed;
pub mod version;
pub mod watch;

use std::future::Future;
use std::os::unix::net::UnixListener as StdUnixListener;

use tonic::transport::Server;

use std::sync::Arc;

use imaged_api::encoded::EncodedImageList;

pub use crate::transport::context::Context;
pub use crate::transport::incoming::{Limits, Streams};
use encode::WireImage;

use crate::access::AccessLayer;
use crate::access::layer::SharedPolicy;
use crate::error::Error;
use crate::feed::Feed;
use crate::metrics::Metrics;
use crate::metrics::grpc::{GrpcStats, MetricsLayer};
use crate::shares::Shares;
use crate::store::{MAX_PAGE_SIZE, Page, Query, Store};

pub use admission::{Admitted, EXPENSIVE_PAGE, admit, admitted_filter, watch_filter};

/// Largest gRPC message accepted or sent: containerd's limit, 16 MiB.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Bytes of one answer kept free for everything but the images: the page
/// token (which holds a name of up to 4 KiB) and framing.
const ANSWER_SLACK_BYTES: usize = 64 * 1024;

/// Encoded images one paged answer may hold: a page that would hold more is
/// cut short, its token resuming after the last image kept.
pub const PAGE_BUDGET_BYTES: usize = MAX_MESSAGE_BYTES - ANSWER_SLACK_BYTES;

/// Bytes `item` adds to a repeated field of an answer.
fn framed_len(item: &impl prost::Message) -> usize {
    let len = item.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Wire bytes of a whole-list answer held while it is read. A larger answer
/// is measured rather than held, then read again if it fits, so a refused
/// List never holds more than this, however many images it matched.
const HELD_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Every image `query` matches, as one answer of `wire` images;
/// RESOURCE_EXHAUSTED saying how many matched (and `hint`) when they would
/// not fit in one message.
///
/// Reads page by page. Answers up to `HELD_ANSWER_BYTES` take one read.
/// Beyond that the first read only measures, and a second read collects the
/// answer if it fits: an answer that is refused never occupies memory, and
/// one that is given is held once.
pub async fn list_whole(
    store: &Store,
    context: &Context,
    query: Arc<Query>,
    hint: &str,
    wire: &'static WireImage,
) -> Result<EncodedImageList, Error> {
    let too_large = |matched: usize| {
        Error::ResourceExhausted(format!(
            "{matched} images match; the answer would be more than the {MAX_MESSAGE_BYTES}-byte message limit; {hint}"
        ))
    };
    match read_whole(store, context, &query, HELD_ANSWER_BYTES, wire).await? {
        Whole::Held(images) => Ok(images),
        Whole::Measured { matched, bytes } if bytes > MAX_MESSAGE_BYTES => Err(too_large(matched)),
        // It fits: read again, holding it all. Writes in between may have
        // made it too large after all.
        Whole::Measured { .. } => match read_whole(store, context, &query, MAX_MESSAGE_BYTES, wire).await? {
            Whole::Held(images) => Ok(images),
            Whole::Measured { matched, .. } => Err(too_large(matched)),
        },
    }
}

/// What one read of a whole list found.
enum Whole {
    /// Everything, within the bytes it could hold.
    Held(EncodedImageList),
    /// More than it could hold: how many images and wire bytes there were.
    Measured { matched: usize, bytes: usize },
}

/// Reads every image `query` matches, holding them while their wire bytes
/// stay within `hold`, only measuring from there on, and only counting
/// past the message limit.
async fn read_whole(
    store: &Store,
    context: &Context,
    query: &Arc<Query>,
    hold: usize,
    wire: &'static WireImage,
) -> Result<Whole, Error> {
    // The pages' bytes, joined once at the end: no copy for an answer of
    // one page, one exact copy for more.
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0;
    let mut matched = 0;
    let mut token = String::new();
    loop {
        // Past the message limit the answer is refused whatever follows:
        // only count the rest.
        context.check_deadline()?;
        let encode = (bytes <= MAX_MESSAGE_BYTES).then_some(wire);
        let page = encoded_page(store, query.clone(), &token, MAX_PAGE_SIZE, usize::MAX, encode).await?;
        matched += page.count;
        bytes += page.items.images.len();
        if bytes <= hold {
            held.push(page.items.images);
        } else {
            held = Vec::new();
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    Ok(if bytes <= hold {
        let images = match held.len() {
            1 => held.pop().unwrap_or_default(),
            _ => held.concat(),
        };
        Whole::Held(EncodedImageList {
            images,
            ..EncodedImageList::default()
        })
    } else {
        Whole::Measured { matched, bytes }
    })
}

/// Image `name` of `ns` as `wire`'s `Image` message, encoded straight from
/// its stored record: what a Get answers, on every API.
pub async fn get_encoded(
    store: &Store,
    ns: &imaged_types::NamespaceName,
    name: &str,
    wire: &'static WireImage,
) -> Result<Vec<u8>, Error> {
    let record = store.image_record(ns, name).await?;
    encode::encode_image(name, &record, wire)
}

/// A page of `query` as it goes on the wire: up to `limit` images encoded
/// as `wire` images straight from their records, on a blocking thread, and
/// cut short (its token then resuming after the last image kept) where more
/// would pass `budget` bytes. A page holds at least one image however large.
/// With no `wire`, the images are only counted. The page's token is also
/// set in the list.
pub async fn encoded_page(
    store: &Store,
    query: Arc<Query>,
    page_token: &str,
    limit: usize,
    budget: usize,
    wire: Option<&'static WireImage>,
) -> Result<Page<EncodedImageList>, Error> {
    let mut page = store
        .page(query, page_token, limit, move |found| {
            let mut list = EncodedImageList::default();
            let mut count = 0;
            for entry in found {
                if let Some(wire) = wire {
                    let before = list.images.len();
                    encode::push_image(&mut list, entry, wire)?;
                    if list.images.len() > budget && count > 0 {
                        list.images.truncate(before);
                        break;
                    }
                }
                count += 1;
            }
            Ok((list, count))
        })
        .await?;
    page.items.next_page_token = page.next_page_token.clone();
    Ok(page)
}

/// Checks that `items` fit in one answer under [`MAX_MESSAGE_BYTES`];
/// otherwise RESOURCE_EXHAUSTED saying how many `what` matched, rather than a
/// stream broken by the transport.
pub fn fit_in_message<T: prost::Message>(items: Vec<T>, what: &str) -> Result<Vec<T>, Error> {
    let bytes: usize = items.iter().map(framed_len).sum();
    if bytes > MAX_MESSAGE_BYTES {
        return Err(Error::ResourceExhausted(format!(
            "{} {what} match; the answer would be {bytes} bytes, more than the {MAX_MESSAGE_BYTES}-byte message limit; \
             narrow the filters",
            items.len()
        )));
    }
    Ok(items)
}

/// Every service on the socket, described: ours (with containerd's), and
/// the health and reflection services'. Reflection describes them, and the
/// metrics know the methods from them.
const DESCRIPTOR_SETS: [&[u8]; 4] = [
    imaged_api::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// Tasks aborted when dropped.
#[derive(Default)]
struct Background(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// What the server serves, besides the socket.
pub struct Served {
    /// The store.
    pub store: Store,
    /// The change feed.
    pub feed: Feed,
    /// The access policy every call goes through.
    pub policy: SharedPolicy,
    /// The server's bounds.
    pub limits: Limits,
    /// What each caller may hold, and the fair queue.
    pub shares: Shares,
    /// The queue of published events.
    pub published: events::PublishedLimits,
    /// The limits in force, by configuration key, as the admin service's
    /// status reports them (a reload replaces them).
    pub settings: admin::Limits,
    /// Where metrics are served, bound already; calls are counted only
    /// then.
    pub metrics: Option<crate::metrics::http::Listener>,
}

/// Serves every API on `listener`, each call through the access policy,
/// until `shutdown` resolves. Then health turns NOT_SERVING, the server
/// stops accepting, ends every stream with UNAVAILABLE, and waits for the
/// calls in flight and for clients to close their connections, for at most
/// `limits.shutdown_grace`; connections still open then are closed.
pub async fn serve(
    listener: StdUnixListener,
    served: Served,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let Served {
        store,
        feed,
        policy,
        limits,
        shares,
        published,
        settings,
        metrics,
    } = served;
    // Tasks that live as long as the server; aborted when this goes.
    let mut background = Background::default();
    let grpc = metrics.map(|listener| {
        // Made once per daemon, and kept for the life of the process.
        let grpc: &'static GrpcStats = Box::leak(Box::new(GrpcStats::new(&DESCRIPTOR_SETS)));
        let exposed = Arc::new(Metrics::new(grpc, store.clone(), feed.clone(), shares.clone()));
        background
            .0
            .push(tokio::spawn(listener.serve(exposed, shares.clone(), policy.clone())));
        grpc
    });
    listener.set_nonblocking(true)?;
    let incoming = crate::transport::incoming::accept(
        tokio::net::UnixListener::from_std(listener)?,
        shares.clone(),
        policy.clone(),
    );
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let streams = Streams::new(shares.clone(), stopping.clone());
    let mut graceful = stopping.clone();
    let (health, health_service) = health::Health::new(streams.clone()).await;
    let reporter = health.reporter();
    background.0.push(tokio::spawn(health.follow(store.clone())));
    // Both versions of reflection describe both, so that either lists
    // every service on the socket.
    let reflection = || {
        DESCRIPTOR_SETS.iter().fold(
            tonic_reflection::server::Builder::configure().include_reflection_service(false),
            |builder, set| builder.register_encoded_file_descriptor_set(set),
        )
    };
    let leases = Arc::new(crate::leases::LeaseTable::new(shares.clone()));
    // Outermost, so that refusals are counted too.
    let server = Server::builder()
        .max_concurrent_streams(limits.max_calls_per_connection)
        .layer(MetricsLayer::new(grpc))
        .layer(AccessLayer::new(policy))
        .add_service(seed::service(store.clone(), feed.clone(), streams.clone()))
        .add_service(events::service(store.clone(), feed.clone(), streams.clone(), published))
        .add_service(images::service(store.clone(), shares.clone()))
        .add_service(namespaces::service(store.clone(), shares.clone()))
        .add_service(leases::service(leases, shares.clone()))
        .add_service(introspection::service(store.clone()))
        .add_service(version::service())
        .add_service(admin::service(store, feed, streams, settings, limits.backup_stall))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = graceful.wait_for(|stopping| *stopping).await;
        });
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => return served.map_err(Into::into),
        () = shutdown => {}
    }
    drop(background);
    health::shutting_down(reporter).await;
    let _ = stop.send(true);
    match tokio::time::timeout(limits.shutdown_grace, &mut server).await {
        Ok(served) => served?,
        Err(_) => tracing::warn!(
            grace_secs = limits.shutdown_grace.as_secs_f64(),
            "connections still open at the end of the shutdown grace period; closing them"
        ),
    }
    Ok(())
}
