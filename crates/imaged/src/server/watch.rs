//! The seed API's Watch, adapted onto the [`Feed`]: a cursor from the
//! request's start revision, each batch it hands out filtered to the call's
//! namespace and filters and typed as [`Seen`] says, and progress notices.
//!
//! Each answer holds whole committed batches: the one the cursor handed out,
//! and those already waiting behind it (up to the answer's budget), so a
//! watcher that fell a little behind catches up in few messages.
//!
//! The answer stream is pulled: the next answer is made only when the
//! transport asks for one, so a client that stops reading holds one answer
//! and the transport's window in the daemon, never a queue. Once the client
//! reads again, a cursor the writers outran in the meantime ends the stream
//! with RESOURCE_EXHAUSTED naming the last revision sent.

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use imaged_api::containerd::v1::WatchRequest;
use imaged_api::containerd::v1::watch_event::Type;
use imaged_api::encoded::EncodedWatchResponse;
use imaged_types::{Image, NamespaceName, ValidationError};
use tonic::{Request, Status};

use super::encode::encode_stored;
use super::seed::SEED_IMAGE;
use super::watch_filter;
use crate::error::Error;
use crate::feed::{Audience, Cursor, Delivery, Event, Feed, FeedError, Seen, classify};
use crate::filter::{Filter, Subject};
use crate::shares::Resource;
use crate::store::{Changed, Store};
use crate::transport::context::{Context, Namespacing};
use crate::transport::incoming::Streams;

/// The stream of a Watch's answers.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<EncodedWatchResponse, Status>> + Send>>;

/// The shortest progress interval a watch may ask for.
pub const MIN_PROGRESS: Duration = Duration::from_millis(100);

/// Encoded events one answer holds before the rest of a batch goes in the
/// next one: well below the 4 MiB that gRPC clients accept by default.
pub const ANSWER_BUDGET_BYTES: usize = 1024 * 1024;

/// Starts a Watch: checks the request, takes the caller's shares and
/// places the cursor, so a bad filter, a bound or a compacted start
/// revision is the call's status.
pub async fn start(
    store: &Store,
    feed: &Feed,
    streams: &Streams,
    request: Request<WatchRequest>,
) -> Result<WatchStream, Status> {
    let context = Context::of(&request, Namespacing::DefaultsToDefault)?;
    let (ns, caller) = (context.namespace, context.caller);
    let mut request = request.into_inner();
    let share = streams.open(Resource::Watchers, caller)?;
    let filters = std::mem::take(&mut request.filters);
    let (filter, filter_share) = watch_filter(streams.shares(), caller, Subject::Image, filters).await?;
    let progress = match request.progress_interval {
        None => None,
        Some(d) => {
            let interval = Duration::try_from(d)
                .ok()
                .filter(|i| *i >= MIN_PROGRESS)
                .ok_or_else(|| {
                    Error::from(ValidationError::new(
                        "progress_interval",
                        &format!("{}s {}ns", d.seconds, d.nanos),
                        format!("must be at least {} ms", MIN_PROGRESS.as_millis()),
                    ))
                })?;
            Some(interval)
        }
    };
    let cursor = feed.cursor(
        store.clone(),
        request.start_revision,
        Audience::Watch,
        share,
        filter_share,
    )?;
    let watching = Watching {
        cursor,
        filter,
        ns,
        prev: request.prev_image,
        progress,
        streams: streams.clone(),
        pending: Vec::new(),
        done: false,
    };
    Ok(Box::pin(futures_util::stream::unfold(watching, |mut w| async move {
        let answer = w.next().await?;
        Some((answer, w))
    })))
}

/// One Watch call's state.
struct Watching {
    cursor: Cursor,
    filter: Filter,
    ns: NamespaceName,
    prev: bool,
    progress: Option<Duration>,
    streams: Streams,
    /// Answers made and not yet sent: the rest of a batch too large for one.
    pending: Vec<EncodedWatchResponse>,
    done: bool,
}

impl Watching {
    /// The next answer, or `None` once the stream has ended.
    async fn next(&mut self) -> Option<Result<EncodedWatchResponse, Status>> {
        if let Some(answer) = self.pending.pop() {
            return Some(Ok(answer));
        }
        if self.done {
            return None;
        }
        loop {
            let quiet = async {
                match self.progress {
                    Some(interval) => tokio::time::sleep(interval).await,
                    None => std::future::pending().await,
                }
            };
            let delivery = tokio::select! {
                delivery = self.cursor.next() => delivery,
                () = quiet => {
                    return Some(Ok(EncodedWatchResponse {
                        events: Vec::new(),
                        revision: self.cursor.last(),
                    }));
                }
                () = self.streams.stopping() => {
                    self.done = true;
                    return Some(Err(Status::unavailable(format!(
                        "imaged is shutting down; watch again with start_revision {}",
                        self.cursor.last()
                    ))));
                }
            };
            match delivery {
                Ok(delivery) => {
                    let (mut answers, mut answer) = (Vec::new(), EncodedWatchResponse::default());
                    self.fill(&delivery, &mut answers, &mut answer);
                    // Batches already waiting join the same answer: a
                    // watcher that fell a little behind catches up in fewer
                    // messages.
                    while answer.events.len() < ANSWER_BUDGET_BYTES
                        && let Some(more) = self.cursor.try_next()
                    {
                        self.fill(&more, &mut answers, &mut answer);
                    }
                    if !answer.events.is_empty() {
                        answer.revision = self.cursor.last();
                        answers.push(answer);
                    }
                    if !answers.is_empty() {
                        let first = answers.remove(0);
                        answers.reverse();
                        self.pending = answers;
                        return Some(Ok(first));
                    }
                }
                Err(FeedError::Lagged { last }) => {
                    self.done = true;
                    return Some(Err(Status::resource_exhausted(format!(
                        "the watcher fell too far behind the writers (more than the watch window of --watch-window-events \
                         or --watch-window-mb); watch again with start_revision {last} to go on without loss"
                    ))));
                }
                Err(FeedError::Store(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            }
        }
    }

    /// Adds the events of `delivery` that concern this watch to `answer`,
    /// moving it to `answers` (complete up to the revision before the next
    /// event) whenever it passes [`ANSWER_BUDGET_BYTES`].
    fn fill(&self, delivery: &Delivery, answers: &mut Vec<EncodedWatchResponse>, answer: &mut EncodedWatchResponse) {
        for event in delivery.events() {
            if event.change.namespace != self.ns {
                continue;
            }
            let Changed::Image { before, after, .. } = &event.change.changed else {
                continue;
            };
            let Some(seen) = classify(&self.filter, before.as_ref(), after.as_ref()) else {
                continue;
            };
            if answer.events.len() >= ANSWER_BUDGET_BYTES {
                answer.revision = event.change.revision - 1;
                answers.push(std::mem::take(answer));
            }
            push(answer, event, seen, self.prev);
        }
    }
}

/// Appends `event`, seen as `seen`, to `answer`, with the image before it
/// when `prev` asks. The images are encoded once per event, whoever watches.
fn push(answer: &mut EncodedWatchResponse, event: &Event, seen: Seen, prev: bool) {
    let Changed::Image {
        before,
        after,
        before_record,
        after_record,
    } = &event.change.changed
    else {
        return;
    };
    // The same encoder as a Get's and a List's, from the stored records.
    let encode = |image: &Option<Image>, record: &Option<Vec<u8>>| {
        image
            .as_ref()
            .map(|i| encode_stored(i, record.as_deref(), &SEED_IMAGE))
            .unwrap_or_default()
    };
    let before_bytes = || event.seed_prev.get_or_init(|| encode(before, before_record)).as_slice();
    let after_bytes = || event.seed_image.get_or_init(|| encode(after, after_record)).as_slice();
    let (kind, image) = match seen {
        Seen::Added => (Type::Added, after_bytes()),
        Seen::Modified => (Type::Modified, after_bytes()),
        // What stopped matching is shown as it last matched.
        Seen::Deleted => (Type::Deleted, before_bytes()),
    };
    let prev_image = (prev && before.is_some()).then(before_bytes);
    answer.push_event(kind as i32, event.change.revision, image, prev_image);
}
