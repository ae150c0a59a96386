//! [`Watch`]: a stream of the changes to a namespace's images, which resumes
//! by itself, and [`Watch::informer`], which lists and then watches.
//!
//! The daemon numbers every change with a store-wide revision and keeps a
//! log of recent ones. A watch remembers the last revision it delivered; if
//! the connection drops, the daemon restarts, or the daemon ends the watch
//! because it fell behind, the stream asks again from there, so no change
//! is missed or delivered twice. Only a gap the daemon's log no longer
//! covers ends it, with an error for which [`Error::is_compacted`] holds.

use std::time::Duration;

use futures_util::stream::{self, Stream};
use imaged_api::containerd::v1 as seed;
use imaged_api::containerd::v1::watch_event::Type;
use imaged_types::wire::stored_image_from_seed;
use imaged_types::{Image, NamespaceName};
use tonic::Code;

use crate::images::seed_client;
use crate::{Client, Error, Images, in_namespace};

/// How a change looks to a watch with filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The image came to match: it was created, or changed into the filters.
    Added,
    /// It matched before and after the change.
    Modified,
    /// It stopped matching: it was deleted, or changed out of the filters.
    Deleted,
}

/// One change to an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// How it looks through the watch's filters.
    pub kind: EventType,
    /// The store revision of the change.
    pub revision: u64,
    /// The image after the change; for [`EventType::Deleted`], as it last
    /// matched.
    pub image: Image,
    /// The image before the change, when [`Watch::prev_image`] asked and it
    /// existed.
    pub prev_image: Option<Image>,
}

/// What a watch delivers at once: the events of one committed batch (or
/// none, a progress notice) and the revision reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// In revision order.
    pub events: Vec<Event>,
    /// Every change up to this revision has been delivered.
    pub revision: u64,
}

/// What an informer delivers: a fresh listing, then the updates after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Informed {
    /// Every matching image at `revision`: replace the cache with them. Sent
    /// first, and again if the watch had to start over.
    Listing {
        /// The images, by name.
        images: Vec<Image>,
        /// The revision they were read at.
        revision: u64,
    },
    /// Changes after the listing: apply them in order.
    Update(Update),
}

/// A watch being built. Made by [`Images::watch`].
#[must_use = "a watch does nothing until read with .stream() or .informer()"]
#[derive(Debug, Clone)]
pub struct Watch {
    client: Client,
    ns: NamespaceName,
    request: seed::WatchRequest,
}

impl Images {
    /// Watches the changes to this namespace's images.
    ///
    /// ```no_run
    /// use futures_util::TryStreamExt;
    /// # async fn run(images: imaged_client::Images) -> Result<(), imaged_client::Error> {
    /// let mut updates = std::pin::pin!(images.watch().filter("labels.env==prod").stream());
    /// while let Some(update) = updates.try_next().await? {
    ///     for event in update.events {
    ///         println!("{:?} {} at {}", event.kind, event.image.name, event.revision);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn watch(&self) -> Watch {
        Watch {
            client: self.client.clone(),
            ns: self.ns.clone(),
            request: seed::WatchRequest::default(),
        }
    }
}

impl Watch {
    /// Adds a filter, as for a list: only images matching one of them
    /// before or after a change are shown.
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.request.filters.push(filter.into());
        self
    }

    /// Starts after `revision`: the retained changes after it come first.
    pub fn since(mut self, revision: u64) -> Self {
        self.request.start_revision = Some(revision);
        self
    }

    /// Delivers each event's image as it was before the change too.
    pub fn prev_image(mut self) -> Self {
        self.request.prev_image = true;
        self
    }

    /// Asks for a progress notice (an [`Update`] with no events) whenever
    /// `interval` (at least 100 ms) passes with nothing delivered.
    pub fn progress(mut self, interval: Duration) -> Self {
        self.request.progress_interval = prost_types::Duration::try_from(interval).ok();
        self
    }

    /// The updates, from the start revision (or now), resuming by itself
    /// after a dropped connection, a restart or a lag, from the last
    /// revision delivered. It waits for the daemon as long as the stream is
    /// held, as an informer must: between attempts it backs off as the
    /// client's [`crate::Retry`] says, up to its longest wait. Other errors
    /// end it.
    pub fn stream(self) -> impl Stream<Item = Result<Update, Error>> + Send + 'static {
        struct State {
            watch: Watch,
            streaming: Option<tonic::Streaming<seed::WatchResponse>>,
            failures: u32,
            done: bool,
        }
        let state = State {
            watch: self,
            streaming: None,
            failures: 0,
            done: false,
        };
        stream::unfold(state, |mut state| async move {
            loop {
                if state.done {
                    return None;
                }
                let result = match state.streaming.as_mut() {
                    None => state.watch.open().await.map(|s| {
                        state.streaming = Some(s);
                        None
                    }),
                    Some(streaming) => match streaming.message().await {
                        Ok(Some(answer)) => state.watch.update(answer).map(Some),
                        Ok(None) => Err(Error::Unavailable {
                            socket: state.watch.client.socket().to_owned(),
                            message: "the watch ended".into(),
                            reached: true,
                        }),
                        Err(status) => Err(state.watch.error(status)),
                    },
                };
                match result {
                    Ok(Some(update)) => {
                        state.failures = 0;
                        return Some((Ok(update), state));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        state.streaming = None;
                        let retry = state.watch.client.inner.retry;
                        if !resumable(&e) {
                            state.done = true;
                            return Some((Err(e), state));
                        }
                        let backoff = retry
                            .initial_backoff
                            .saturating_mul(2u32.saturating_pow(state.failures.min(16)));
                        state.failures += 1;
                        tokio::time::sleep(backoff.min(retry.max_backoff)).await;
                    }
                }
            }
        })
    }

    /// Lists the matching images, then watches from the listing's revision:
    /// a cache that replaces itself with each [`Informed::Listing`] and
    /// applies each [`Informed::Update`] stays equal to the daemon's images.
    /// When the daemon's log no longer covers the gap (after a long
    /// disconnection), it lists again rather than fail.
    ///
    /// ```no_run
    /// use std::collections::BTreeMap;
    /// use futures_util::TryStreamExt;
    /// use imaged_client::{EventType, Informed};
    /// # async fn run(images: imaged_client::Images) -> Result<(), imaged_client::Error> {
    /// let mut cache = BTreeMap::new();
    /// let mut informed = std::pin::pin!(images.watch().informer());
    /// while let Some(item) = informed.try_next().await? {
    ///     match item {
    ///         Informed::Listing { images, .. } => {
    ///             cache = images.into_iter().map(|i| (i.name.clone(), i)).collect();
    ///         }
    ///         Informed::Update(update) => {
    ///             for event in update.events {
    ///                 match event.kind {
    ///                     EventType::Deleted => cache.remove(&event.image.name),
    ///                     _ => cache.insert(event.image.name.clone(), event.image),
    ///                 };
    ///             }
    ///         }
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn informer(self) -> impl Stream<Item = Result<Informed, Error>> + Send + 'static {
        enum State {
            List(Watch),
            Watching(
                Watch,
                std::pin::Pin<Box<dyn Stream<Item = Result<Update, Error>> + Send>>,
            ),
            Done,
        }
        stream::unfold(State::List(self), |mut state| async move {
            use futures_util::StreamExt;
            loop {
                state = match state {
                    State::Done => return None,
                    State::List(watch) => {
                        return Some(match watch.listing().await {
                            Ok((images, revision)) => {
                                let updates = Box::pin(watch.clone().since(revision).stream());
                                (
                                    Ok(Informed::Listing { images, revision }),
                                    State::Watching(watch, updates),
                                )
                            }
                            Err(e) => (Err(e), State::Done),
                        });
                    }
                    State::Watching(watch, mut updates) => match updates.next().await {
                        Some(Ok(update)) => {
                            return Some((Ok(Informed::Update(update)), State::Watching(watch, updates)));
                        }
                        // The gap is gone from the daemon's log: list again.
                        Some(Err(e)) if e.is_compacted() => State::List(watch),
                        Some(Err(e)) => return Some((Err(e), State::Done)),
                        None => return None,
                    },
                };
            }
        })
    }

    /// Every image matching the filters, page by page, and the revision of
    /// the first page: every change up to it is in the listing, and a later
    /// one that a later page shows is delivered again by the watch, which
    /// the cache applies as the same image.
    async fn listing(&self) -> Result<(Vec<Image>, u64), Error> {
        let mut request = seed::ListRequest {
            filters: self.request.filters.clone(),
            page_size: 1000,
            ..Default::default()
        };
        let (mut images, mut revision) = (Vec::new(), None);
        loop {
            let answer = self
                .client
                .read(|channel| {
                    let request = in_namespace(&self.ns, request.clone());
                    async move { seed_client(channel).list(request).await }
                })
                .await?;
            revision.get_or_insert(answer.revision);
            for image in answer.images {
                images.push(stored_image_from_seed(image)?);
            }
            if answer.next_page_token.is_empty() {
                return Ok((images, revision.unwrap_or_default()));
            }
            request.page_token = answer.next_page_token;
        }
    }

    /// Opens the call, from the last revision delivered.
    async fn open(&self) -> Result<tonic::Streaming<seed::WatchResponse>, Error> {
        let channel = self.client.inner.channel.clone();
        match seed_client(channel)
            .watch(in_namespace(&self.ns, self.request.clone()))
            .await
        {
            Ok(answer) => Ok(answer.into_inner()),
            Err(status) => Err(self.error(status)),
        }
    }

    /// Reads an answer, and moves the resume point past it.
    fn update(&mut self, answer: seed::WatchResponse) -> Result<Update, Error> {
        let mut events = Vec::with_capacity(answer.events.len());
        for event in answer.events {
            let kind = match Type::try_from(event.r#type) {
                Ok(Type::Added) => EventType::Added,
                Ok(Type::Modified) => EventType::Modified,
                Ok(Type::Deleted) => EventType::Deleted,
                _ => return Err(Error::Transport(format!("unknown watch event type {}", event.r#type))),
            };
            let image = event
                .image
                .ok_or_else(|| Error::Transport("a watch event without an image".into()))?;
            events.push(Event {
                kind,
                revision: event.revision,
                image: stored_image_from_seed(image)?,
                prev_image: event.prev_image.map(stored_image_from_seed).transpose()?,
            });
        }
        self.request.start_revision = Some(answer.revision);
        Ok(Update {
            events,
            revision: answer.revision,
        })
    }

    fn error(&self, status: tonic::Status) -> Error {
        let compacted = status
            .metadata()
            .get(imaged_api::COMPACTED_REVISION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        match (status.code(), compacted) {
            (Code::OutOfRange, Some(oldest)) => Error::Compacted {
                oldest,
                message: status.message().to_owned(),
            },
            _ => Error::from_status(status, self.client.socket()),
        }
    }
}

/// Whether a watch resumes after `e`: the daemon was unreachable or
/// restarting, or it ended the watch for falling behind (the resume point
/// is kept, so nothing is lost).
fn resumable(e: &Error) -> bool {
    match e {
        Error::Unavailable { .. } | Error::Transport(_) => true,
        Error::Other { code, .. } => *code == Code::ResourceExhausted,
        _ => false,
    }
}
