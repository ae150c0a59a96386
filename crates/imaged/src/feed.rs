//! The change feed: every committed change, in revision order, for every
//! watcher of every wire API (the seed API's Watch and containerd's
//! Subscribe adapt it).
//!
//! # Shape
//! - The store's commit hook ([`Feed::hook`]) publishes each durable batch
//!   into a shared window of recent batches, and wakes the watchers. It
//!   never waits for one: a publish is a push under a short lock.
//! - A [`Cursor`] is one watcher's place: the last revision it was handed.
//!   It starts in the past by reading the store's change log, and moves to
//!   the window once the window holds its next revision.
//! - A live watcher that falls out of the window, because writers outran
//!   it, is ended with the last revision it was handed ([`FeedError::Lagged`]),
//!   so that it resumes from the change log without loss. The window is
//!   shared, so a slow watcher costs no memory of its own: the window's
//!   bounds ([`FeedLimits`]) bound every watcher's backlog in events and in
//!   bytes.
//! - Each published event has slots for its encodings, filled by the first
//!   watcher that needs one and shared by the rest: a batch is encoded once,
//!   however many watch it.
//! - A caught-up cursor hands out at most once per batching interval
//!   ([`FeedLimits::batch_interval`]) while changes keep coming, and at once
//!   after a quiet interval. Under a stream of small commits each watcher
//!   then gets fewer, larger answers: a message, a wake-up and a write per
//!   watcher cost far more than the bytes of one more event in an answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use imaged_types::Image;
use imaged_types::image::labels_bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;
use crate::filter::Filter;
use crate::shares::Held;
use crate::stats::FeedStats;
use crate::store::{Change, Changed, Commit, CommitHook, Store, compacted_error};

/// The bounds and the pace of the feed. How many watchers may attach is a
/// fair share ([`crate::shares::Resource::Watchers`]), taken by the adapter
/// and held by the cursor.
#[derive(Debug, Clone, Copy)]
pub struct FeedLimits {
    /// Most events the shared window holds: how far a live watcher may fall
    /// behind the writers.
    pub window_events: usize,
    /// Most bytes (of the images its events carry, about) the window holds.
    pub window_bytes: usize,
    /// The shortest time between two hand-outs to a caught-up cursor while
    /// changes keep coming; zero hands out every commit as it lands.
    pub batch_interval: Duration,
}

impl Default for FeedLimits {
    fn default() -> Self {
        FeedLimits {
            window_events: 8192,
            window_bytes: 16 << 20,
            batch_interval: Duration::from_millis(5),
        }
    }
}

/// Changes a cursor reads from the change log in one go.
const REPLAY_CHUNK: usize = 1024;

/// One published change and its encodings, made once and shared.
#[derive(Debug)]
pub struct Event {
    /// The change.
    pub change: Change,
    /// The seed API's `Image` message of the image after the change (for a
    /// delete, before it).
    pub seed_image: OnceLock<Vec<u8>>,
    /// The seed API's `Image` message of the image before the change.
    pub seed_prev: OnceLock<Vec<u8>>,
    /// containerd's `Envelope` of the change.
    pub envelope: OnceLock<Vec<u8>>,
}

impl Event {
    fn new(change: Change) -> Event {
        Event {
            change,
            seed_image: OnceLock::new(),
            seed_prev: OnceLock::new(),
            envelope: OnceLock::new(),
        }
    }

    /// About how many bytes the event holds.
    fn bytes(&self) -> usize {
        // Beside an image's own bytes, its fixed fields and framing.
        let image = |i: &Option<imaged_types::Image>| i.as_ref().map_or(0, |i| 128 + i.bytes());
        64 + match &self.change.changed {
            Changed::Image {
                before,
                after,
                before_record,
                after_record,
            } => {
                let record = |r: &Option<Vec<u8>>| r.as_ref().map_or(0, Vec::len);
                image(before) + image(after) + record(before_record) + record(after_record)
            }
            Changed::Namespace { before, after } => {
                before.as_ref().map_or(0, labels_bytes) + after.as_ref().map_or(0, labels_bytes)
            }
        }
    }
}

/// Consecutive changes handed out together: one committed batch, or one
/// chunk of the change log.
#[derive(Debug)]
pub struct Batch {
    /// The first revision.
    pub first: u64,
    /// The last revision.
    pub last: u64,
    /// One event per revision, in order.
    pub events: Vec<Event>,
    bytes: usize,
}

impl Batch {
    fn new(first: u64, last: u64, changes: Vec<Change>) -> Batch {
        let events: Vec<Event> = changes.into_iter().map(Event::new).collect();
        let bytes = events.iter().map(Event::bytes).sum();
        Batch {
            first,
            last,
            events,
            bytes,
        }
    }
}

/// What a cursor hands out: a batch, of which the events after `after` are
/// new to it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The batch.
    pub batch: Arc<Batch>,
    /// The cursor's revision before this delivery.
    pub after: u64,
}

impl Delivery {
    /// The events new to the cursor, in revision order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.batch.events.iter().filter(move |e| e.change.revision > self.after)
    }

    /// The revision the cursor has reached.
    pub fn last(&self) -> u64 {
        self.batch.last
    }
}

/// Why a cursor stopped.
#[derive(Debug)]
pub enum FeedError {
    /// Writers outran the watcher; `last` is the last revision handed to it.
    Lagged {
        /// The last revision handed out.
        last: u64,
    },
    /// Reading the change log failed, or compaction passed the cursor.
    Store(Error),
}

/// The recent batches every live cursor reads from.
#[derive(Debug, Default)]
struct Window {
    batches: VecDeque<Arc<Batch>>,
    events: usize,
    bytes: usize,
}

struct Shared {
    window: Mutex<Window>,
    /// The last revision published.
    head: watch::Sender<u64>,
    /// The first revision the window holds: head + 1 when it is empty.
    first: AtomicU64,
    limits: FeedLimits,
    stats: FeedStats,
}

/// Who a cursor serves, as the metrics count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// A Watch of the seed API.
    Watch,
    /// A Subscribe of containerd's events service.
    Subscription,
}

/// The feed: cheap to clone, every clone the same.
#[derive(Clone)]
pub struct Feed {
    shared: Arc<Shared>,
}

impl Feed {
    /// An empty feed, bounded by `limits`; [`Feed::start`] sets where it
    /// begins.
    pub fn new(limits: FeedLimits) -> Feed {
        Feed {
            shared: Arc::new(Shared {
                window: Mutex::new(Window::default()),
                head: watch::Sender::new(0),
                first: AtomicU64::new(1),
                limits,
                stats: FeedStats::default(),
            }),
        }
    }

    /// Starts the feed after `revision`, the store's when it opened.
    pub fn start(&self, revision: u64) {
        self.shared.first.store(revision.saturating_add(1), Ordering::SeqCst);
        self.shared.head.send_replace(revision);
    }

    /// The commit hook that publishes into the feed.
    pub fn hook(&self) -> CommitHook {
        let shared = self.shared.clone();
        Box::new(move |commit: Commit| shared.publish(commit))
    }

    /// The last revision published.
    pub fn head(&self) -> u64 {
        *self.shared.head.borrow()
    }

    /// How many watchers are attached.
    pub fn watchers(&self) -> usize {
        let stats = &self.shared.stats;
        (stats.watches.load(Ordering::Relaxed) + stats.subscriptions.load(Ordering::Relaxed)) as usize
    }

    /// What the feed counts, for the metrics.
    pub fn stats(&self) -> &FeedStats {
        &self.shared.stats
    }

    /// A cursor for `audience` after revision `after` (the head when
    /// `None`), reading the change log of `store` while it is behind the
    /// window, and holding its caller's `share` of the watchers (and
    /// `filter_share`, of the memory of its filter's regular expressions)
    /// while it lives. OUT_OF_RANGE when compaction has passed `after` or it
    /// is ahead of the store.
    pub fn cursor(
        &self,
        store: Store,
        after: Option<u64>,
        audience: Audience,
        share: Held,
        filter_share: Option<Held>,
    ) -> Result<Cursor, Error> {
        let mut head = self.shared.head.subscribe();
        let current = *head.borrow_and_update();
        let after = after.unwrap_or(current);
        if after > current {
            return Err(Error::OutOfRange(format!(
                "start revision {after} is ahead of the store's revision {current}"
            )));
        }
        let mark = store.compacted();
        if after < mark {
            return Err(compacted_error(after, mark));
        }
        self.shared.attached(audience).fetch_add(1, Ordering::Relaxed);
        Ok(Cursor {
            shared: self.shared.clone(),
            store,
            last: after,
            live: false,
            handed: None,
            head,
            audience,
            _shares: (share, filter_share),
        })
    }
}

impl Shared {
    fn attached(&self, audience: Audience) -> &AtomicU64 {
        match audience {
            Audience::Watch => &self.stats.watches,
            Audience::Subscription => &self.stats.subscriptions,
        }
    }

    fn publish(&self, commit: Commit) {
        let batch = Arc::new(Batch::new(commit.first, commit.last, commit.changes));
        {
            let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
            window.events += batch.events.len();
            window.bytes += batch.bytes;
            window.batches.push_back(batch);
            // The newest batch always stays, whatever its size.
            while window.batches.len() > 1
                && (window.events > self.limits.window_events || window.bytes > self.limits.window_bytes)
            {
                let old = window.batches.pop_front().expect("more than one batch");
                window.events -= old.events.len();
                window.bytes -= old.bytes;
            }
            let first = window.batches.front().map_or(commit.last + 1, |b| b.first);
            self.first.store(first, Ordering::SeqCst);
        }
        self.head.send_replace(commit.last);
    }

    /// The window's batch holding revision `next`, or `None` when the window
    /// no longer (or does not yet) hold it.
    fn find(&self, next: u64) -> Option<Arc<Batch>> {
        let window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let at = window.batches.partition_point(|b| b.last < next);
        window.batches.get(at).filter(|b| b.first <= next).cloned()
    }
}

/// One watcher's place in the feed.
pub struct Cursor {
    shared: Arc<Shared>,
    store: Store,
    last: u64,
    /// Whether the cursor has read from the window: from then on, falling
    /// out of it ends the watcher.
    live: bool,
    /// When the cursor last handed out a batch from the window.
    handed: Option<Instant>,
    head: watch::Receiver<u64>,
    audience: Audience,
    _shares: (Held, Option<Held>),
}

impl Drop for Cursor {
    fn drop(&mut self) {
        self.shared.attached(self.audience).fetch_sub(1, Ordering::Relaxed);
    }
}

impl Cursor {
    /// The last revision handed out.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Waits for the changes after the last handed out, and hands out the
    /// next batch of them. A cursor that had caught up waits out the rest
    /// of the batching interval after its last hand-out first, so that the
    /// commits of that time go out together. Dropping the future while it
    /// waits loses nothing: the cursor moves only when it hands out.
    pub async fn next(&mut self) -> Result<Delivery, FeedError> {
        loop {
            let head = *self.head.borrow_and_update();
            if self.last < head {
                return self.take(head).await;
            }
            if self.head.changed().await.is_err() {
                // The feed is gone: the store is closing.
                return Err(FeedError::Store(Error::Unavailable("imaged is shutting down".into())));
            }
            // After a quiet spell the deadline has passed: no timer at all.
            let due = self.handed.map(|handed| handed + self.shared.limits.batch_interval);
            if let Some(due) = due.filter(|due| *due > Instant::now()) {
                tokio::time::sleep_until(due).await;
            }
        }
    }

    /// The next batch, only if the window holds it already: never waits,
    /// never reads the change log. A watcher a little behind takes the
    /// batches waiting together, in one answer.
    pub fn try_next(&mut self) -> Option<Delivery> {
        if self.last >= *self.head.borrow() {
            return None;
        }
        let batch = self.shared.find(self.last + 1)?;
        Some(self.hand_out_live(batch))
    }

    async fn take(&mut self, head: u64) -> Result<Delivery, FeedError> {
        let next = self.last + 1;
        if let Some(batch) = self.shared.find(next) {
            return Ok(self.hand_out_live(batch));
        }
        if self.live {
            self.shared.stats.ended_slow.fetch_add(1, Ordering::Relaxed);
            return Err(FeedError::Lagged { last: self.last });
        }
        // Behind the window: read the change log, up to where the window
        // starts (or the head, should the window have moved on since).
        let first = self.shared.first.load(Ordering::SeqCst);
        let upto = head.min(first.saturating_sub(1)).max(next);
        let changes = self
            .store
            .changes(self.last, upto, REPLAY_CHUNK)
            .await
            .map_err(FeedError::Store)?;
        let Some(last) = changes.last().map(|c| c.revision) else {
            return Err(FeedError::Store(Error::Storage(format!(
                "the change log holds nothing after revision {} though the store is at {head}",
                self.last
            ))));
        };
        Ok(self.hand_out(Arc::new(Batch::new(next, last, changes))))
    }

    fn hand_out_live(&mut self, batch: Arc<Batch>) -> Delivery {
        self.live = true;
        self.handed = Some(Instant::now());
        self.hand_out(batch)
    }

    fn hand_out(&mut self, batch: Arc<Batch>) -> Delivery {
        let delivery = Delivery {
            after: self.last,
            batch,
        };
        self.last = delivery.last();
        let events = delivery.events().count() as u64;
        self.shared.stats.delivered.fetch_add(events, Ordering::Relaxed);
        delivery
    }
}

/// How a change looks to a watcher of images matching a filter, as
/// Kubernetes' watch cache shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The image came to match: created, or changed into the filter.
    Added,
    /// It matched before and after.
    Modified,
    /// It stopped matching: deleted, or changed out of the filter.
    Deleted,
}

/// How the image change `before` → `after` looks through `filter`, or
/// `None` when the image matches neither before nor after.
pub fn classify(filter: &Filter, before: Option<&Image>, after: Option<&Image>) -> Option<Seen> {
    let was = before.is_some_and(|image| filter.matches(image));
    let is = after.is_some_and(|image| filter.matches(image));
    match (was, is) {
        (false, false) => None,
        (false, true) => Some(Seen::Added),
        (true, true) => Some(Seen::Modified),
        (true, false) => Some(Seen::Deleted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Subject;

    fn image(label: &str) -> Image {
        Image {
            name: "a".into(),
            labels: [("team".to_string(), label.to_string())].into_iter().collect(),
            target: imaged_types::Descriptor {
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                digest: imaged_types::Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap(),
                size: 1,
                annotations: Default::default(),
            },
            created_at: std::time::UNIX_EPOCH,
            updated_at: std::time::UNIX_EPOCH,
            create_revision: 0,
            mod_revision: 0,
        }
    }

    #[test]
    fn a_filter_turns_changes_into_added_modified_and_deleted() {
        let filter = Filter::parse(Subject::Image, "filters", &["labels.team==a".into()]).unwrap();
        let (a, b) = (image("a"), image("b"));
        assert_eq!(classify(&filter, None, Some(&a)), Some(Seen::Added));
        assert_eq!(classify(&filter, None, Some(&b)), None);
        assert_eq!(classify(&filter, Some(&b), Some(&a)), Some(Seen::Added));
        assert_eq!(classify(&filter, Some(&a), Some(&a)), Some(Seen::Modified));
        assert_eq!(classify(&filter, Some(&a), Some(&b)), Some(Seen::Deleted));
        assert_eq!(classify(&filter, Some(&a), None), Some(Seen::Deleted));
        assert_eq!(classify(&filter, Some(&b), None), None);
        assert_eq!(classify(&Filter::all(), Some(&b), None), Some(Seen::Deleted));
    }
}
