//! The queue of events clients Publish (or Forward) to containerd's Events
//! service, kept for the subscribers that have not read them yet.
//!
//! Published events are passed on, never stored, as containerd does. The
//! queue is one window shared by every subscriber, bounded in events and in
//! bytes ([`PublishedLimits`]): a publish pushes and drops the oldest past
//! either bound (the newest always stays), and never waits for a
//! subscriber. A subscriber that falls out of the window is ended, and a
//! stalled one costs no memory of its own, however large the events.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// The bounds of the queue of published events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedLimits {
    /// Events kept.
    pub events: usize,
    /// Bytes of their envelopes kept.
    pub bytes: usize,
}

impl Default for PublishedLimits {
    fn default() -> Self {
        PublishedLimits {
            events: crate::shares::defaults::PUBLISHED_QUEUE_EVENTS as usize,
            bytes: (crate::shares::defaults::PUBLISHED_QUEUE_MB << 20) as usize,
        }
    }
}

/// An event a client published: its envelope, encoded, and what filters
/// read of it.
#[derive(Debug)]
pub struct Published {
    /// The envelope.
    pub envelope: Vec<u8>,
    /// Its namespace.
    pub namespace: String,
    /// Its topic.
    pub topic: String,
}

#[derive(Debug, Default)]
struct Window {
    /// Each event with its number, oldest first.
    events: VecDeque<(u64, Arc<Published>)>,
    bytes: usize,
}

/// The queue: cheap to clone, every clone the same.
#[derive(Debug, Clone)]
pub struct Queue {
    window: Arc<Mutex<Window>>,
    /// The number of the last event published (0: none yet).
    head: Arc<watch::Sender<u64>>,
    limits: PublishedLimits,
}

/// Why a reader got no event.
#[derive(Debug, PartialEq, Eq)]
pub enum Missed {
    /// The window moved past it: this many events are lost to it.
    Lagged(u64),
    /// The queue is gone.
    Closed,
}

/// One subscriber's place in the queue.
#[derive(Debug)]
pub struct Reader {
    window: Arc<Mutex<Window>>,
    head: watch::Receiver<u64>,
    /// The number of the next event it reads.
    next: u64,
}

impl Queue {
    /// An empty queue bounded by `limits`.
    pub fn new(limits: PublishedLimits) -> Queue {
        Queue {
            window: Arc::default(),
            head: Arc::new(watch::Sender::new(0)),
            limits,
        }
    }

    /// Adds `event`, dropping the oldest past the bounds.
    pub fn publish(&self, event: Published) {
        let bytes = event.envelope.len();
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let number = *self.head.borrow() + 1;
        window.events.push_back((number, Arc::new(event)));
        window.bytes += bytes;
        while window.events.len() > 1 && (window.events.len() > self.limits.events || window.bytes > self.limits.bytes)
        {
            let (_, old) = window.events.pop_front().expect("more than one event");
            window.bytes -= old.envelope.len();
        }
        // Under the lock, so numbers are handed out in order.
        self.head.send_replace(number);
    }

    /// A reader of the events published from now on.
    pub fn reader(&self) -> Reader {
        let head = self.head.subscribe();
        let next = *head.borrow() + 1;
        Reader {
            window: self.window.clone(),
            head,
            next,
        }
    }
}

impl Reader {
    /// The next event, once it is published.
    pub async fn next(&mut self) -> Result<Arc<Published>, Missed> {
        loop {
            if *self.head.borrow_and_update() >= self.next {
                let window = self.window.lock().unwrap_or_else(|e| e.into_inner());
                let first = window.events.front().map_or(self.next, |(n, _)| *n);
                if first > self.next {
                    return Err(Missed::Lagged(first - self.next));
                }
                let (_, event) = &window.events[(self.next - first) as usize];
                self.next += 1;
                return Ok(event.clone());
            }
            if self.head.changed().await.is_err() {
                return Err(Missed::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(bytes: usize) -> Published {
        Published {
            envelope: vec![0; bytes],
            namespace: "default".into(),
            topic: "/t".into(),
        }
    }

    #[tokio::test]
    async fn the_window_is_bounded_in_bytes_and_a_reader_past_it_lags() {
        let queue = Queue::new(PublishedLimits {
            events: 100,
            bytes: 1000,
        });
        let mut slow = queue.reader();
        for _ in 0..4 {
            queue.publish(event(400));
        }
        // Two of 400 bytes fit; the first two are gone.
        assert_eq!(queue.window.lock().unwrap().bytes, 800);
        assert_eq!(slow.next().await.unwrap_err(), Missed::Lagged(2));
        let mut fresh = queue.reader();
        queue.publish(event(10));
        assert_eq!(fresh.next().await.unwrap().envelope.len(), 10);
        // One larger than the bound still passes, alone.
        queue.publish(event(5000));
        assert_eq!(fresh.next().await.unwrap().envelope.len(), 5000);
        assert_eq!(queue.window.lock().unwrap().events.len(), 1);
    }
}
