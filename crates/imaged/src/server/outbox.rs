//! A stream's outbox: what a producer task hands a client that takes it
//! at its own pace, through a short queue bounded in items and in bytes
//! (an item larger than the byte bound goes alone), so a stalled client
//! holds that much here, plus the one message the transport is sending.
//! Three things end it, and each says why as the stream's last item, after
//! what was queued:
//! - the client takes nothing for the stall timeout while an item waits
//!   (a stalled client holds its share of streams or watchers, and what
//!   the producer holds, for nothing);
//! - the daemon stops;
//! - the producer ends it with a status.
//!
//! ListStream, Subscribe and backups use it; a Watch needs none, since a
//! watcher that falls behind the shared window is ended anyway.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::Status;

use super::Streams;

/// Why the producer must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The client went away.
    Gone,
    /// The client took nothing for the stall timeout; the stream's last
    /// item says so.
    Stalled,
    /// The daemon is stopping; the producer may still [`Outbox::end`] the
    /// stream with its own status.
    Stopping,
}

/// An item queued, with the bytes of the budget it takes until the client
/// takes it.
type Queued<T> = (Result<T, Status>, OwnedSemaphorePermit);

/// The producer's end.
pub struct Outbox<T> {
    tx: mpsc::Sender<Queued<T>>,
    bytes: Arc<Semaphore>,
    budget: usize,
    size: fn(&T) -> usize,
    last: Arc<Mutex<Option<Status>>>,
    stall: Duration,
    streams: Streams,
}

/// The client's end: the items, then the status that ended the stream.
pub type Inbox<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What an outbox may hold.
#[derive(Debug, Clone, Copy)]
pub struct Bounds<T> {
    /// Items queued at most.
    pub items: usize,
    /// Bytes queued at most, as `size` counts them.
    pub bytes: usize,
    /// An item's bytes.
    pub size: fn(&T) -> usize,
}

/// An outbox within `bounds`, ending a stream whose client takes nothing
/// for `stall`, and stopping with the daemon (`streams`).
pub fn outbox<T: Send + 'static>(bounds: Bounds<T>, stall: Duration, streams: Streams) -> (Outbox<T>, Inbox<T>) {
    let (tx, rx) = mpsc::channel::<Queued<T>>(bounds.items);
    let last: Arc<Mutex<Option<Status>>> = Arc::default();
    let inbox = futures_util::stream::unfold((rx, last.clone()), |(mut rx, last)| async move {
        match rx.recv().await {
            // Taken: its bytes go back to the budget.
            Some((item, _taken)) => Some((item, (rx, last))),
            None => {
                let why = last.lock().unwrap_or_else(|e| e.into_inner()).take()?;
                Some((Err(why), (rx, last)))
            }
        }
    });
    let budget = bounds.bytes.clamp(1, Semaphore::MAX_PERMITS);
    let outbox = Outbox {
        tx,
        bytes: Arc::new(Semaphore::new(budget)),
        budget,
        size: bounds.size,
        last,
        stall,
        streams,
    };
    (outbox, Box::pin(inbox))
}

impl<T> Outbox<T> {
    /// Queues `item` for the client, waiting while the queue is full.
    /// `stalled` makes the status a stalled client gets, which
    /// `stream_stall_timeout` seconds of waiting end the stream with.
    pub async fn send(&self, item: Result<T, Status>, stalled: impl FnOnce(Duration) -> Status) -> Result<(), Stop> {
        // An item over the whole budget takes all of it: it goes alone.
        let bytes = item.as_ref().map_or(0, self.size).clamp(1, self.budget) as u32;
        let queued = async {
            let permit = self
                .bytes
                .clone()
                .acquire_many_owned(bytes)
                .await
                .map_err(|_| Stop::Gone)?;
            self.tx.send((item, permit)).await.map_err(|_| Stop::Gone)
        };
        tokio::select! {
            sent = tokio::time::timeout(self.stall, queued) => match sent {
                Ok(sent) => sent,
                Err(_) => {
                    self.end(stalled(self.stall));
                    Err(Stop::Stalled)
                }
            },
            () = self.streams.stopping() => Err(Stop::Stopping),
        }
    }

    /// Ends the stream with `status`, after what is queued.
    pub fn end(&self, status: Status) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
    }

    /// Whether the client went away.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves once the client goes away: a producer that waits for
    /// something to send (a quiet subscriber) stops then, giving back what
    /// it holds.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}
