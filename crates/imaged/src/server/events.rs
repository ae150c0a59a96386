//! containerd's Events service, `containerd.services.events.v1.Events`,
//! adapted onto the [`Feed`]: Subscribe streams an `Envelope` for every
//! committed change to images and namespaces, whichever API made it, and for
//! every event clients Publish or Forward. Published events are passed on,
//! never stored, as containerd does.
//!
//! Each change's envelope is encoded once, by the first subscriber that
//! sends it, and shared by the rest. A subscriber that falls behind is ended
//! with RESOURCE_EXHAUSTED, as a slow watcher is; published events wait in a
//! bounded queue shared by all subscribers, and one that falls further
//! behind than that is ended the same way.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::Stream;
use imaged_api::containerd::events as ns_events;
use imaged_api::containerd::services::events::v1::{Envelope, ForwardRequest, PublishRequest, SubscribeRequest};
use imaged_api::containerd::services::images::v1 as image_events;
use imaged_api::encoded::RawMessage;
use imaged_api::encoded_servers::containerd::services::events::v1::events_server::{Events, EventsServer};
use imaged_types::namespace::{MAX_NAMESPACE_CHARS as MAX_TOPIC_COMPONENT, validate_identifier};
use imaged_types::wire::timestamp_from_time;
use imaged_types::{Labels, NamespaceName, ValidationError};
use prost::Message;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use super::MAX_MESSAGE_BYTES;
use super::context::{Context, Namespacing};
use super::incoming::Streams;
use crate::error::Error;
use crate::feed::{Audience, Delivery, Event, Feed, FeedError};
use crate::filter::{EventFields, Filter, Subject};
use crate::store::{Change, Changed, Store};

/// Published events queued for the subscribers, shared by all of them: a
/// subscriber further behind than this is ended.
pub const PUBLISHED_QUEUE: usize = 1024;

/// The stream of a Subscribe's envelopes.
pub type SubscribeStream = Pin<Box<dyn Stream<Item = Result<RawMessage, Status>> + Send>>;

/// An event a client published: its envelope, encoded, and what filters
/// read of it.
#[derive(Debug)]
struct Published {
    envelope: Vec<u8>,
    namespace: String,
    topic: String,
}

/// The events service over `store` and `feed`; its subscribers end with
/// the others at shutdown (`streams`).
pub fn service(store: Store, feed: Feed, streams: Streams) -> EventsServer<EventsService> {
    let (published, _) = broadcast::channel(PUBLISHED_QUEUE);
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
    published: broadcast::Sender<Arc<Published>>,
}

#[tonic::async_trait]
impl Events for EventsService {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<()>, Status> {
        let ns = Context::of(&request, Namespacing::Required)?.namespace;
        let request = request.into_inner();
        check_topic("topic", &request.topic)?;
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
        if envelope.timestamp.is_none() {
            return Err(invalid("envelope.timestamp", "", "must be set"));
        }
        self.pass_on(envelope);
        Ok(Response::new(()))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<SubscribeStream>, Status> {
        let filter = Filter::parse(Subject::Event, "filters", &request.into_inner().filters).map_err(Error::from)?;
        let subscriber = Subscriber {
            cursor: self.feed.cursor(self.store.clone(), None, Audience::Subscription)?,
            published: self.published.subscribe(),
            filter,
            streams: self.streams.clone(),
            pending: None,
            done: false,
        };
        Ok(Response::new(Box::pin(futures_util::stream::unfold(
            subscriber,
            |mut s| async move {
                let envelope = s.next().await?;
                Some((envelope, s))
            },
        ))))
    }
}

impl EventsService {
    /// Hands a client's event to every subscriber; nobody listening is no
    /// error, as in containerd.
    fn pass_on(&self, envelope: Envelope) {
        let published = Published {
            envelope: envelope.encode_to_vec(),
            namespace: envelope.namespace,
            topic: envelope.topic,
        };
        let _ = self.published.send(Arc::new(published));
    }
}

/// One Subscribe call's state.
struct Subscriber {
    cursor: crate::feed::Cursor,
    published: broadcast::Receiver<Arc<Published>>,
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
                published = self.published.recv() => match published {
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
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        return self.end(Status::resource_exhausted(format!(
                            "the subscriber fell {missed} published events behind (more than the {PUBLISHED_QUEUE} \
                             queued); published events are not stored, so they are lost to it: subscribe again"
                        )));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
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
            Changed::Image { before, after } => {
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

fn invalid(field: &str, value: &str, reason: &str) -> Status {
    Error::from(ValidationError::new(field, value, reason)).into()
}
