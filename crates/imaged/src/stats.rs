//! Counters the daemon keeps as it works, for the metrics to read: plain
//! atomics, so that keeping them takes no lock and allocates nothing on
//! any request's path. Nothing here knows Prometheus; `metrics` encodes
//! them.

use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram of whole-number observations (nanoseconds, counts) in fixed
/// buckets, lock-free.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, in the observations' unit, ascending.
    bounds: &'static [u64],
    /// Observations at most each bound (not cumulative), and one more for
    /// the rest.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
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
    /// An empty histogram with buckets up to each of `bounds`.
    pub fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts `value`.
    pub fn observe(&self, value: u64) {
        let at = self.bounds.partition_point(|&bound| bound < value);
        self.buckets[at].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The counts now. Read bucket by bucket while others observe, so the
    /// total may lead the buckets by the observations in flight.
    pub fn snapshot(&self) -> Snapshot {
        let bounds = self.bounds.iter().map(|b| Some(*b)).chain([None]);
        let buckets: Vec<_> = bounds
            .zip(self.buckets.iter())
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        Snapshot {
            sum: self.sum.load(Ordering::Relaxed),
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
        let h = Histogram::new(&[10, 20]);
        for v in [0, 10, 11, 20, 21, 1000] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(Some(10), 2), (Some(20), 2), (None, 2)]);
        assert_eq!((s.count, s.sum), (6, 1062));
    }
}
