//! The reader pool: a few threads that make the store's point reads (a Get
//! the record cache cannot answer, a namespace) in sled, off the async
//! executor.
//!
//! # Why not tokio's blocking pool
//! A point read in sled takes a microsecond or two; handing it to tokio's
//! blocking pool costs more than the read. That pool grows a thread for
//! every read in flight, so under load each read wakes a sleeping thread of
//! dozens: a futex wake, a context switch and a cold cache, nearly half of a
//! Get's cost when it misses the record cache (docs/PERFORMANCE.md). Here a
//! fixed handful of threads share one queue. A thread drains the queue before
//! it sleeps, and a read queued wakes a sleeping thread only when no thread
//! is awake to take it, or when every awake one has been stuck in a read for
//! [`STALLED`] (on the disk, most likely). So under load the reads run back
//! to back on one or two threads with no wake-ups at all, and a slow disk
//! still gets every thread of the pool.
//!
//! Scans (list pages, checks) stay on tokio's blocking pool: a long one here
//! would hold up every Get behind it.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// A read to run, and where its answer goes.
type Task = Box<dyn FnOnce() + Send>;

/// A fixed pool of reader threads sharing one queue.
pub struct Readers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
}

struct State {
    queue: VecDeque<Task>,
    /// When each thread started its latest read; `None` from when it goes
    /// to sleep until it takes its next read.
    busy_since: Vec<Option<Instant>>,
    /// Threads waiting on `work`.
    sleeping: usize,
    /// Wake-ups sent and not yet taken.
    waking: usize,
    closed: bool,
}

impl State {
    /// Whether a read just queued should wake a sleeping thread: when no
    /// thread is awake to take it, or when every awake thread has been in
    /// its read for longer than [`STALLED`] (waiting on the disk, most
    /// likely). Otherwise an awake thread gets to it within microseconds,
    /// and waking another would only cost a context switch.
    fn needs_another(&self) -> bool {
        // None to wake, or one on its way already.
        if self.sleeping == 0 || self.waking > 0 {
            return false;
        }
        let now = Instant::now();
        // With no thread awake, there is no read to wait for: true.
        self.busy_since
            .iter()
            .flatten()
            .all(|since| now.saturating_duration_since(*since) >= STALLED)
    }
}

/// How long a read must have run before the pool wakes another thread for
/// the reads queued behind it. A point read from sled's cache takes a few
/// microseconds; one that waits this long is waiting on the disk.
const STALLED: Duration = Duration::from_micros(200);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Tasks run outside the lock, so a poisoned lock's state is whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The pool was closed, or a read panicked: the read has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoAnswer;

impl Readers {
    /// Starts `threads` reader threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<Readers> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                busy_since: vec![None; threads],
                sleeping: 0,
                waking: 0,
                closed: false,
            }),
            work: Condvar::new(),
        });
        let mut readers = Readers {
            shared,
            threads: Vec::with_capacity(threads),
        };
        for n in 0..threads {
            let shared = readers.shared.clone();
            // On failure, dropping `readers` stops the threads started.
            let thread = std::thread::Builder::new()
                .name(format!("imaged-reader-{n}"))
                .spawn(move || work(&shared, n))?;
            readers.threads.push(thread);
        }
        Ok(readers)
    }

    /// Runs `read` on a reader thread and returns its answer.
    pub async fn run<T: Send + 'static>(&self, read: impl FnOnce() -> T + Send + 'static) -> Result<T, NoAnswer> {
        let (tx, rx) = oneshot::channel();
        let task: Task = Box::new(move || {
            let _ = tx.send(read());
        });
        {
            let mut state = self.shared.lock();
            if state.closed {
                return Err(NoAnswer);
            }
            state.queue.push_back(task);
            if state.needs_another() {
                state.waking += 1;
                self.shared.work.notify_one();
            }
        }
        rx.await.map_err(|_| NoAnswer)
    }
}

impl Drop for Readers {
    /// Lets the threads finish what is queued, then stops them.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
        let me = std::thread::current().id();
        for thread in self.threads.drain(..) {
            // Dropped by one of its own reads: that thread stops by itself.
            if thread.thread().id() != me {
                let _ = thread.join();
            }
        }
    }
}

/// Reader thread `me`: runs queued reads until the pool closes.
fn work(shared: &Shared, me: usize) {
    let mut state = shared.lock();
    loop {
        if let Some(task) = state.queue.pop_front() {
            state.busy_since[me] = Some(Instant::now());
            drop(state);
            // A read that panics drops its answer's sender, which the caller
            // sees as no answer; the thread goes on.
            let _ = catch_unwind(AssertUnwindSafe(task));
            state = shared.lock();
            continue;
        }
        state.busy_since[me] = None;
        if state.closed {
            return;
        }
        state.sleeping += 1;
        state = shared.work.wait(state).unwrap_or_else(PoisonError::into_inner);
        state.sleeping -= 1;
        state.waking = state.waking.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_read_is_answered_by_one_of_a_few_threads() {
        let readers = Arc::new(Readers::new(2).unwrap());
        let calls = 2000;
        let mut answers = Vec::new();
        for n in 0..calls {
            let readers = readers.clone();
            answers.push(tokio::spawn(async move {
                readers
                    .run(move || (n, std::thread::current().name().unwrap().to_string()))
                    .await
            }));
        }
        let mut names = std::collections::BTreeSet::new();
        for (n, answer) in answers.into_iter().enumerate() {
            let (got, thread) = answer.await.unwrap().unwrap();
            assert_eq!(got, n);
            names.insert(thread);
        }
        // On the pool's threads, not inline on the caller's.
        assert!(names.iter().all(|name| name.starts_with("imaged-reader-")), "{names:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_queued_behind_a_stalled_read_get_another_thread() {
        let readers = Readers::new(2).unwrap();
        let (release, stalled) = std::sync::mpsc::channel::<()>();
        let slow = readers.run(move || stalled.recv().is_ok());
        let quick = async {
            // Past the stall threshold, with the first read still stuck.
            tokio::time::sleep(Duration::from_millis(20)).await;
            readers.run(|| 2).await
        };
        let (slow, quick) = tokio::join!(slow, async {
            let answer = tokio::time::timeout(Duration::from_secs(10), quick).await;
            release.send(()).unwrap();
            answer
        });
        assert_eq!(
            quick.expect("the read queued behind a stalled one was never run"),
            Ok(2)
        );
        assert_eq!(slow, Ok(true));
    }

    #[tokio::test]
    async fn a_read_that_panics_has_no_answer_and_the_pool_goes_on() {
        let readers = Readers::new(1).unwrap();
        assert_eq!(readers.run(|| -> () { panic!("a bug") }).await, Err(NoAnswer));
        assert_eq!(readers.run(|| 7).await, Ok(7));
    }

    #[tokio::test]
    async fn a_sleeping_pool_wakes_for_a_read_and_closing_finishes_the_queue() {
        let readers = Readers::new(3).unwrap();
        // Let every thread go to sleep, then submit.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let woken = tokio::time::timeout(Duration::from_secs(10), readers.run(|| 1)).await;
        assert_eq!(woken.expect("no thread woke for the read"), Ok(1));
        let done = Arc::new(AtomicUsize::new(0));
        let shared = readers.shared.clone();
        {
            // Queue reads no thread can take yet, then close: each still runs.
            let mut state = shared.lock();
            for _ in 0..10 {
                let done = done.clone();
                state.queue.push_back(Box::new(move || {
                    done.fetch_add(1, Ordering::SeqCst);
                }));
            }
        }
        drop(readers);
        assert_eq!(done.load(Ordering::SeqCst), 10);
        assert!(shared.lock().closed);
    }
}
