//! Counters the daemon keeps as it works, for the metrics to read: plain
//! atomics, so that keeping them takes no lock and allocates nothing on
//! any request's path; those that many threads add to at once are
//! [`Sharded`], so that they do not contend for a cache line. Nothing here
//! knows Prometheus; `metrics` encodes them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Copies of a set of counters, one per shard: a thread adds to the copy of
/// its own shard, so that threads counting at once do not contend for one
/// cache line; a reader sums them.
#[derive(Debug)]
pub struct Sharded<T> {
    shards: Box<[Padded<T>]>,
}

/// Shards for counters the threads that serve calls add to: more than those
/// threads on most hosts; beyond, threads share shards, which stays correct.
pub const CALL_SHARDS: usize = 8;

/// A value alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T: Default> Sharded<T> {
    /// `shards` copies of `T::default()` (at least one).
    pub fn new(shards: usize) -> Sharded<T> {
        Sharded {
            shards: (0..shards.max(1)).map(|_| Padded::default()).collect(),
        }
    }

    /// The copy this thread adds to.
    pub fn local(&self) -> &T {
        thread_local! {
            static SHARD: usize = {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed) as usize
            };
        }
        let at = SHARD.with(|shard| *shard) % self.shards.len();
        &self.shards[at].0
    }

    /// Every copy.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|padded| &padded.0)
    }
}

/// Most buckets a [`Histogram`] has, the last one (of the rest) included.
const MAX_BUCKETS: usize = 17;

/// One shard of a histogram.
#[derive(Debug, Default)]
struct HistogramShard {
    buckets: [AtomicU64; MAX_BUCKETS],
    sum: AtomicU64,
}

/// A histogram of whole-number observations (nanoseconds, counts) in fixed
/// buckets, lock-free.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, in the observations' unit, ascending;
    /// a last bucket holds the rest.
    bounds: &'static [u64],
    shards: Sharded<HistogramShard>,
}

/// A histogram read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The sum of the observations.
    pub sum: u64,
    /// How many.
    pub count: u64,
    /// The observations in each bucket (not cumulative), by upper bound;
    /// the last bucket, of the rest, has the bound `None`.
    pub buckets: Vec<(Option<u64>, u64)>,
}

impl Histogram {
    /// An empty histogram with buckets up to each of `bounds` (at most 16),
    /// for one thread to observe.
    pub fn new(bounds: &'static [u64]) -> Histogram {
        Histogram::sharded(bounds, 1)
    }

    /// An empty histogram as [`Histogram::new`] makes, for many threads to
    /// observe at once, in `shards` copies.
    pub fn sharded(bounds: &'static [u64], shards: usize) -> Histogram {
        assert!(bounds.len() < MAX_BUCKETS, "at most {} bounds", MAX_BUCKETS - 1);
        Histogram {
            bounds,
            shards: Sharded::new(shards),
        }
    }

    /// Counts `value`.
    pub fn observe(&self, value: u64) {
        let at = self.bounds.partition_point(|&bound| bound < value);
        let shard = self.shards.local();
        shard.buckets[at].fetch_add(1, Ordering::Relaxed);
        shard.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The counts now. Read bucket by bucket while others observe; the count
    /// is the buckets' sum, so the two always agree.
    pub fn snapshot(&self) -> Snapshot {
        let bounds = self.bounds.iter().map(|b| Some(*b)).chain([None]);
        let buckets: Vec<_> = bounds
            .enumerate()
            .map(|(i, bound)| {
                let n = self.shards.iter().map(|s| s.buckets[i].load(Ordering::Relaxed)).sum();
                (bound, n)
            })
            .collect();
        Snapshot {
            sum: self.shards.iter().map(|s| s.sum.load(Ordering::Relaxed)).sum(),
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

/// Bucket bounds for latencies, in nanoseconds: 50 µs to 10 s.
pub const LATENCY_NANOS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// Bucket bounds for the jobs of one group commit (at most `MAX_BATCH`).
pub const BATCH_JOBS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// What the store's log thread counts.
#[derive(Debug)]
pub struct StoreStats {
    /// Jobs per committed batch.
    pub batch_jobs: Histogram,
    /// Each journal append: the write and its fdatasync, in nanoseconds.
    pub journal_sync: Histogram,
    /// Each checkpoint (sled's full barrier), in nanoseconds.
    pub checkpoint: Histogram,
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            batch_jobs: Histogram::new(BATCH_JOBS),
            journal_sync: Histogram::new(LATENCY_NANOS),
            checkpoint: Histogram::new(LATENCY_NANOS),
        }
    }
}

/// What the change feed counts.
#[derive(Debug, Default)]
pub struct FeedStats {
    /// Seed API watches attached.
    pub watches: AtomicU64,
    /// containerd event subscriptions attached.
    pub subscriptions: AtomicU64,
    /// Events handed to watchers and subscribers (before each one's filter).
    pub delivered: AtomicU64,
    /// Watchers and subscribers ended for falling too far behind.
    pub ended_slow: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::sharded(&[10, 20], 3);
        for v in [0, 10, 11, 20, 21, 1000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(Some(10), 2), (Some(20), 2), (None, 2)]);
        assert_eq!((s.count, s.sum), (6, 1062));
    }

    #[test]
    fn threads_count_into_their_own_shards_and_the_sum_is_whole() {
        let h = std::sync::Arc::new(Histogram::sharded(LATENCY_NANOS, CALL_SHARDS));
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || (0..1000).for_each(|v| h.observe(v)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let s = h.snapshot();
        assert_eq!((s.count, s.sum), (12_000, 12 * 499_500));
    }
}
