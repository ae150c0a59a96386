//! The record cache: recently read or written image records by key, so a Get
//! of a hot image is answered on the async executor, without a trip to a
//! reader thread and without a sled call.
//!
//! # Why it never serves a stale record
//! The writer updates the cache after each committed batch, with the record
//! it wrote (or its removal), and bumps the generation of the key's shard.
//! A reader that missed notes the generation *before* reading sled, and adds
//! what it read only if the generation is unchanged when it comes back. So
//! a record read before a write can only be added if no write touched the
//! shard meanwhile, and any write committed later replaces it.
//!
//! The cache is bounded in bytes; when a shard is full, arbitrary entries are
//! dropped. It holds encoded records, as sled does.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

const SHARDS: usize = 16;
/// What an entry costs beyond its key and value (map slot, `Arc` header).
const ENTRY_OVERHEAD: usize = 64;

/// A bounded, sharded map from record key to encoded record.
pub struct RecordCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    shard_bytes: usize,
}

#[derive(Default)]
struct Shard {
    generation: u64,
    bytes: usize,
    map: HashMap<Box<[u8]>, Arc<[u8]>>,
}

/// A shard's generation, taken before reading sled on a miss.
#[derive(Debug, Clone, Copy)]
pub struct Generation(u64);

impl RecordCache {
    /// A cache of at most about `capacity` bytes (0 disables it).
    pub fn new(capacity: usize) -> RecordCache {
        RecordCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            shard_bytes: capacity / SHARDS,
        }
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        let index = self.hasher.hash_one(key) as usize % SHARDS;
        // A panic while holding a shard cannot leave it inconsistent in a way
        // that matters more than losing the cache: keep using it.
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record under `key`, if cached.
    pub fn get(&self, key: &[u8]) -> Option<Arc<[u8]>> {
        self.shard(key).map.get(key).cloned()
    }

    /// The generation of `key`'s shard, to pass to [`RecordCache::fill`].
    pub fn generation(&self, key: &[u8]) -> Generation {
        Generation(self.shard(key).generation)
    }

    /// Adds a record a reader found in sled, unless a write touched the
    /// key's shard since `seen` was taken.
    pub fn fill(&self, key: &[u8], record: &[u8], seen: Generation) {
        let mut shard = self.shard(key);
        if shard.generation == seen.0 {
            self.put(&mut shard, key, Some(record));
        }
    }

    /// Records a committed write: `key` now holds `record`, or nothing.
    pub fn set(&self, key: &[u8], record: Option<&[u8]>) {
        let mut shard = self.shard(key);
        shard.generation += 1;
        self.put(&mut shard, key, record);
    }

    fn put(&self, shard: &mut Shard, key: &[u8], record: Option<&[u8]>) {
        if let Some(old) = shard.map.remove(key) {
            shard.bytes -= key.len() + old.len() + ENTRY_OVERHEAD;
        }
        let Some(record) = record else { return };
        let cost = key.len() + record.len() + ENTRY_OVERHEAD;
        if cost > self.shard_bytes {
            return;
        }
        while shard.bytes + cost > self.shard_bytes {
            let Some(victim) = shard.map.keys().next().cloned() else {
                break;
            };
            if let Some(value) = shard.map.remove(&victim) {
                shard.bytes -= victim.len() + value.len() + ENTRY_OVERHEAD;
            }
        }
        shard.bytes += cost;
        shard.map.insert(key.into(), record.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_after_a_write_to_the_shard_is_dropped() {
        let cache = RecordCache::new(1 << 20);
        let seen = cache.generation(b"k");
        // A write lands between the reader's sled read and its fill.
        cache.set(b"k", Some(b"new"));
        cache.fill(b"k", b"old", seen);
        assert_eq!(cache.get(b"k").as_deref(), Some(&b"new"[..]));
        cache.set(b"k", None);
        assert_eq!(cache.get(b"k"), None);
        let seen = cache.generation(b"k");
        cache.fill(b"k", b"again", seen);
        assert_eq!(cache.get(b"k").as_deref(), Some(&b"again"[..]));
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let capacity = 64 * 1024;
        let cache = RecordCache::new(capacity);
        for n in 0..10_000u32 {
            cache.set(&n.to_be_bytes(), Some(&[0; 100]));
        }
        let held: usize = cache.shards.iter().map(|s| s.lock().unwrap().bytes).sum();
        let entries: usize = cache.shards.iter().map(|s| s.lock().unwrap().map.len()).sum();
        assert!(held <= capacity, "{held} bytes held");
        assert_eq!(held, entries * (4 + 100 + ENTRY_OVERHEAD));
        assert!(entries > 100, "only {entries} entries kept");
        // A record larger than a shard is never cached.
        cache.set(b"big", Some(&vec![0; capacity]));
        assert_eq!(cache.get(b"big"), None);
    }
}
