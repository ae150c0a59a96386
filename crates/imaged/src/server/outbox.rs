//! A stream's outbox: what a producer task hands a client that takes it
//! at its own pace, through a short queue. Three things end it, and each
//! says why as the stream's last item, after what was queued:
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
use tokio::sync::mpsc;
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

/// The producer's end.
pub struct Outbox<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    last: Arc<Mutex<Option<Status>>>,
    stall: Duration,
    streams: Streams,
}

/// The client's end: the items, then the status that ended the stream.
pub type Inbox<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// An outbox queuing up to `depth` items, ending a stream whose client
/// takes nothing for `stall`, and stopping with the daemon (`streams`).
pub fn outbox<T: Send + 'static>(depth: usize, stall: Duration, streams: Streams) -> (Outbox<T>, Inbox<T>) {
    let (tx, rx) = mpsc::channel(depth);
    let last: Arc<Mutex<Option<Status>>> = Arc::default();
    let inbox = futures_util::stream::unfold((rx, last.clone()), |(mut rx, last)| async move {
        match rx.recv().await {
            Some(item) => Some((item, (rx, last))),
            None => {
                let why = last.lock().unwrap_or_else(|e| e.into_inner()).take()?;
                Some((Err(why), (rx, last)))
            }
        }
    });
    let outbox = Outbox {
        tx,
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
        tokio::select! {
            sent = tokio::time::timeout(self.stall, self.tx.send(item)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(Stop::Gone),
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
}
