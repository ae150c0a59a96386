//! containerd's Events service, `containerd.services.events.v1.Events`,
//! adapted onto the [`Feed`]: Subscribe streams an `Envelope` for every
//! committed change to images and namespaces, whichever API made it, and for
//! every event clients Publish or Forward. Published events are passed on,
//! never stored, as containerd does.
//!
//! Each change's envelope is encoded once, by the first subscriber that
//! sends it, and shared by the rest. A subscriber that falls behind is ended
//! with RESOURCE_EXHAUSTED, as a slow watcher is; published events wait in a
//! queue shared by all subscribers, bounded in events and bytes
//! ([`super::published`]), and one that falls further behind than that is
//! ended the same way. A subscriber holds its caller's share of the
//! watchers, and one whose client takes nothing for the stall timeout is
//! ended ([`super::outbox`]).
//!
//! Topics imaged emits itself from its durable log (`/images/...`,
//! `/namespaces/...`) cannot be published by clients, so every such event a
//! subscriber sees is a committed change.

use std::time::SystemTime;

use futures_util::StreamExt;
use imaged_api::containerd::events as ns_events;
use imaged_api::containerd::services::events::v1::{Envelope, ForwardRequest, PublishRequest, SubscribeRequest};
use imaged_api::containerd::services::images::v1 as image_events;
use imaged_api::encoded::RawMessage;
use imaged_api::encoded_servers::containerd::services::events::v1::events_server::{Events, EventsServer};
use imaged_types::namespace::{MAX_NAMESPACE_CHARS as MAX_TOPIC_COMPONENT, validate_identifier};
use imaged_types::wire::timestamp_from_time;
use imaged_types::{Labels, NamespaceName, ValidationError};
use prost::Message;
use tonic::{Request, Response, Status};

use super::outbox::{self, Stop};
use super::published::{Missed, Published, Queue, Reader};
use super::{MAX_MESSAGE_BYTES, watch_filter};
use crate::error::Error;
use crate::feed::{Audience, Delivery, Event, Feed, FeedError};
use crate::filter::{EventFields, Filter, Subject};
use crate::shares::Resource;
use crate::store::{Change, Changed, Store};
use crate::transport::context::{self, Context, Namespacing};
use crate::transport::incoming::Streams;

pub use super::published::PublishedLimits;

/// Envelopes queued for a subscriber's client before its task waits, in
/// runs of those ready together, and their bytes (one larger envelope goes
/// alone): what a stalled subscriber holds beyond the one message its
/// transport is sending.
const SUBSCRIBER_QUEUE: outbox::Bounds<Vec<RawMessage>> = outbox::Bounds {
    items: 16,
    bytes: 1 << 20,
    size: |run| run.iter().map(|envelope| envelope.bytes.len()).sum(),
};

/// Envelopes one run holds at most: the envelopes of a batch ready at once
/// cross to the stream together, rather than one hand-off each.
const RUN: usize = 64;

/// Topics imaged publishes from its own log, which clients may not.
const OWN_TOPICS: [&str; 2] = ["/images", "/namespaces"];

/// The stream of a Subscribe's envelopes.
pub type SubscribeStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<RawMessage, Status>> + Send>>;

/// The events service over `store` and `feed`, keeping published events
/// within `limits`; its subscribers take their shares from `streams`, and
/// end with the others at shutdown.
pub fn service(store: Store, feed: Feed, streams: Streams, limits: PublishedLimits) -> EventsServer<EventsService> {
    let published = Queue::new(limits);
    EventsServer::new(EventsService {
        store,
        feed,
        streams,
        published,
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Adapter from containerd's Events service to the feed.
pub struct EventsService {
    store: Store,
    feed: Feed,
    streams: Streams,
    published: Queue,
}

#[tonic::async_trait]
impl Events for EventsService {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<()>, Status> {
        let ns = Context::of(&request, Namespacing::Required)?.namespace;
        let request = request.into_inner();
        check_topic("topic", &request.topic)?;
        check_not_own("topic", &request.topic)?;
        let event = request.event.ok_or_else(|| invalid("event", "", "must be set"))?;
        self.pass_on(Envelope {
            timestamp: Some(timestamp_from_time(SystemTime::now())),
            namespace: ns.as_str().to_owned(),
            topic: request.topic,
            event: Some(event),
        });
        Ok(Response::new(()))
    }

    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<()>, Status> {
        let envelope = request
            .into_inner()
            .envelope
            .ok_or_else(|| invalid("envelope", "", "must be set"))?;
        NamespaceName::parse("envelope.namespace", &envelope.namespace).map_err(Error::from)?;
        check_topic("envelope.topic", &envelope.topic)?;
        check_not_own("envelope.topic", &envelope.topic)?;
        if envelope.timestamp.is_none() {
            return Err(invalid("envelope.timestamp", "", "must be set"));
        }
        self.pass_on(envelope);
        Ok(Response::new(()))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<SubscribeStream>, Status> {
        let caller = context::caller(&request);
        let share = self.streams.open(Resource::Watchers, caller)?;
        let filters = request.into_inner().filters;
        let (filter, filter_share) = watch_filter(self.streams.shares(), caller, Subject::Event, filters).await?;
        let mut subscriber = Subscriber {
            cursor: self
                .feed
                .cursor(self.store.clone(), None, Audience::Subscription, share, filter_share)?,
            published: self.published.reader(),
            filter,
            streams: self.streams.clone(),
            pending: None,
            done: false,
        };
        let stall = self.streams.shares().stall_timeout();
        let (outbox, inbox) = outbox::outbox(SUBSCRIBER_QUEUE, stall, self.streams.clone());
        tokio::spawn(async move {
            loop {
                let envelope = tokio::select! {
                    envelope = subscriber.next() => envelope,
                    // A quiet subscriber whose client left gives its share back.
                    () = outbox.closed() => return,
                };
                let Some(envelope) = envelope else { return };
                // The envelopes ready with it go in the same run.
                let run = envelope.map(|first| {
                    let mut run = vec![first];
                    while run.len() < RUN
                        && let Some(bytes) = subscriber.next_pending()
                    {
                        run.push(RawMessage { bytes });
                    }
                    run
                });
                let stalled = |stall: std::time::Duration| {
                    Status::resource_exhausted(format!(
                        "the subscriber took nothing for {} s (stream_stall_timeout), so it was ended to free its \
                         place; subscribe again, or use the seed API's Watch, which resumes without loss",
                        stall.as_secs()
                    ))
                };
                match outbox.send(run, stalled).await {
                    Ok(()) => {}
                    Err(Stop::Stalled) => {
                        tracing::info!(uid = caller.uid, "a subscriber was ended: its client took nothing");
                        return;
                    }
                    Err(Stop::Gone) => return,
                    Err(Stop::Stopping) => return outbox.end(Status::unavailable("imaged is shutting down")),
                }
            }
        });
        let envelopes = inbox.flat_map(|run| {
            let envelopes: Vec<Result<RawMessage, Status>> = match run {
                Ok(run) => run.into_iter().map(Ok).collect(),
                Err(status) => vec![Err(status)],
            };
            futures_util::stream::iter(envelopes)
        });
        Ok(Response::new(Box::pin(envelopes)))
    }
}

impl EventsService {
    /// Hands a client's event to every subscriber; nobody listening is no
    /// error, as in containerd.
    fn pass_on(&self, envelope: Envelope) {
        self.published.publish(Published {
            envelope: envelope.encode_to_vec(),
            namespace: envelope.namespace,
            topic: envelope.topic,
        });
    }
}

/// One Subscribe call's state.
struct Subscriber {
    cursor: crate::feed::Cursor,
    published: Reader,
    filter: Filter,
    streams: Streams,
    /// A batch being sent, and how many of its events are done.
    pending: Option<(Delivery, usize)>,
    done: bool,
}

impl Subscriber {
    async fn next(&mut self) -> Option<Result<RawMessage, Status>> {
        loop {
            if let Some(envelope) = self.next_pending() {
                return Some(Ok(RawMessage { bytes: envelope }));
            }
            if self.done {
                return None;
            }
            tokio::select! {
                delivery = self.cursor.next() => match delivery {
                    Ok(delivery) => self.pending = Some((delivery, 0)),
                    Err(FeedError::Lagged { .. }) => {
                        return self.end(Status::resource_exhausted(
                            "the subscriber fell too far behind the writers (more than the watch window of \
                             --watch-window-events or --watch-window-mb); subscribe again, or use the seed API's \
                             Watch, which resumes without loss",
                        ));
                    }
                    Err(FeedError::Store(e)) => return self.end(e.into()),
                },
                published = self.published.next() => match published {
                    Ok(published) => {
                        let fields = EventFields {
                            namespace: &published.namespace,
                            topic: &published.topic,
                            name: None,
                            labels: None,
                        };
                        if self.filter.matches(&fields) {
                            return Some(Ok(RawMessage { bytes: published.envelope.clone() }));
                        }
                    }
                    Err(Missed::Lagged(missed)) => {
                        return self.end(Status::resource_exhausted(format!(
                            "the subscriber fell {missed} published events behind (more than the queue holds: \
                             published_queue_events or published_queue_mb); published events are not stored, so \
                             they are lost to it: subscribe again"
                        )));
                    }
                    Err(Missed::Closed) => return None,
                },
                () = self.streams.stopping() => {
                    return self.end(Status::unavailable("imaged is shutting down"));
                }
            }
        }
    }

    fn end(&mut self, status: Status) -> Option<Result<RawMessage, Status>> {
        self.done = true;
        Some(Err(status))
    }

    /// The next envelope of the batch being sent that the filters pass.
    fn next_pending(&mut self) -> Option<Vec<u8>> {
        let (delivery, done) = self.pending.as_mut()?;
        let events = &delivery.batch.events;
        while let Some(event) = events.get(*done) {
            *done += 1;
            if event.change.revision <= delivery.after {
                continue;
            }
            let Some(shown) = Shown::of(&event.change) else {
                continue;
            };
            if self.filter.matches(&shown.fields()) {
                return Some(event.envelope.get_or_init(|| envelope(event, &shown)).clone());
            }
        }
        self.pending = None;
        None
    }
}

/// A change as containerd's events show it: its namespace, topic, and the
/// name and labels its payload carries.
struct Shown<'a> {
    namespace: &'a str,
    topic: &'static str,
    /// The payload's full name, its `Any` type URL.
    type_url: &'static str,
    name: &'a str,
    /// The labels after the change; a delete's payload has none.
    labels: Option<&'a Labels>,
    kind: Kind,
    image: bool,
}

impl<'a> Shown<'a> {
    fn of(change: &'a Change) -> Option<Shown<'a>> {
        let namespace = change.namespace.as_str();
        let image = matches!(change.changed, Changed::Image { .. });
        let shown = |kind: Kind, name, labels| {
            let (topic, type_url) = kind.names(image);
            Some(Shown {
                namespace,
                topic,
                type_url,
                name,
                labels,
                kind,
                image,
            })
        };
        match &change.changed {
            Changed::Image { before, after, .. } => {
                let name = after.as_ref().or(before.as_ref())?.name.as_str();
                shown(Kind::of(before, after), name, after.as_ref().map(|i| &i.labels))
            }
            Changed::Namespace { before, after } => shown(Kind::of(before, after), namespace, after.as_ref()),
        }
    }

    fn fields(&self) -> EventFields<'_> {
        EventFields {
            namespace: self.namespace,
            topic: self.topic,
            name: Some(self.name),
            labels: self.labels,
        }
    }
}

/// Whether a change created, updated or deleted what it changed.
#[derive(Clone, Copy)]
enum Kind {
    Create,
    Update,
    Delete,
}

impl Kind {
    fn of<T>(before: &Option<T>, after: &Option<T>) -> Kind {
        match (before, after) {
            (None, _) => Kind::Create,
            (Some(_), Some(_)) => Kind::Update,
            (Some(_), None) => Kind::Delete,
        }
    }

    /// The topic and payload name of this kind of change to an image (or
    /// else a namespace).
    fn names(self, image: bool) -> (&'static str, &'static str) {
        match (image, self) {
            (true, Kind::Create) => ("/images/create", "containerd.services.images.v1.ImageCreate"),
            (true, Kind::Update) => ("/images/update", "containerd.services.images.v1.ImageUpdate"),
            (true, Kind::Delete) => ("/images/delete", "containerd.services.images.v1.ImageDelete"),
            (false, Kind::Create) => ("/namespaces/create", "containerd.events.NamespaceCreate"),
            (false, Kind::Update) => ("/namespaces/update", "containerd.events.NamespaceUpdate"),
            (false, Kind::Delete) => ("/namespaces/delete", "containerd.events.NamespaceDelete"),
        }
    }
}

/// The envelope of `event`, shown as `shown`, encoded: the change's time,
/// namespace, topic, and its payload as an `Any` named by its full name.
fn envelope(event: &Event, shown: &Shown<'_>) -> Vec<u8> {
    let name = shown.name.to_owned();
    let labels = shown.labels.cloned().unwrap_or_default();
    let payload = match (shown.image, shown.kind) {
        (true, Kind::Create) => image_events::ImageCreate { name, labels }.encode_to_vec(),
        (true, Kind::Update) => image_events::ImageUpdate { name, labels }.encode_to_vec(),
        (true, Kind::Delete) => image_events::ImageDelete { name }.encode_to_vec(),
        (false, Kind::Create) => ns_events::NamespaceCreate { name, labels }.encode_to_vec(),
        (false, Kind::Update) => ns_events::NamespaceUpdate { name, labels }.encode_to_vec(),
        (false, Kind::Delete) => ns_events::NamespaceDelete { name }.encode_to_vec(),
    };
    Envelope {
        timestamp: Some(timestamp_from_time(event.change.at)),
        namespace: shown.namespace.to_owned(),
        topic: shown.topic.to_owned(),
        event: Some(prost_types::Any {
            type_url: shown.type_url.to_owned(),
            value: payload,
        }),
    }
    .encode_to_vec()
}

/// Checks a topic: `/` then components of containerd's identifier rule, each
/// at most 76 bytes.
fn check_topic(field: &str, topic: &str) -> Result<(), Status> {
    let Some(rest) = topic.strip_prefix('/') else {
        return Err(invalid(field, topic, "must start with /"));
    };
    for component in rest.split('/') {
        if component.len() > MAX_TOPIC_COMPONENT {
            return Err(invalid(
                field,
                topic,
                &format!("component {component:?} is longer than {MAX_TOPIC_COMPONENT} bytes"),
            ));
        }
        if validate_identifier(field, component).is_err() {
            return Err(invalid(
                field,
                topic,
                &format!(
                    "component {component:?} must be letters and digits, joined by single '.', '_' or '-' \
                     (containerd's identifier rule)"
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses a topic imaged emits itself from its durable log: a client that
/// could publish one could show subscribers a change that never happened.
fn check_not_own(field: &str, topic: &str) -> Result<(), Status> {
    for own in OWN_TOPICS {
        if topic == own || topic.strip_prefix(own).is_some_and(|rest| rest.starts_with('/')) {
            return Err(invalid(
                field,
                topic,
                &format!(
                    "topics under {own}/ are imaged's own: it publishes one for every committed change, from its \
                     durable log, so clients may not"
                ),
            ));
        }
    }
    Ok(())
}

fn invalid(field: &str, value: &str, reason: &str) -> Status {
    Error::from(ValidationError::new(field, value, reason)).into()
}
