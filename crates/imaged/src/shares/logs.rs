//! Logging refusals without letting a caller write the log: a token bucket
//! per uid (a burst of [`BURST`] lines, then one per [`REFILL`]), and a cut
//! of anything the caller chose (a method path) to [`MAX_LOGGED_PATH`]
//! bytes. A uid whose lines were held back gets the count of them on its
//! next line, so nothing is hidden, only summed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines a uid may log at once after a quiet spell.
pub const BURST: u32 = 10;
/// One more line per this long.
pub const REFILL: Duration = Duration::from_secs(6);
/// Uids remembered; past this many the memory is cleared, which at worst
/// lets each uid log one more burst.
const REMEMBERED: usize = 4096;
/// The longest method path (or other caller-chosen text) a line carries.
pub const MAX_LOGGED_PATH: usize = 128;

#[derive(Debug)]
struct Bucket {
    tokens: u32,
    since: Instant,
    held_back: u64,
}

/// Per-uid token buckets for refusal lines.
#[derive(Debug, Default)]
pub struct RefusalLog {
    buckets: Mutex<HashMap<u32, Bucket>>,
}

impl RefusalLog {
    /// Whether a refusal of `uid` may be logged now: `Some(n)` with the
    /// lines held back since its last one, or `None` to hold this one back.
    pub fn allow(&self, uid: u32) -> Option<u64> {
        self.allow_at(uid, Instant::now())
    }

    fn allow_at(&self, uid: u32, now: Instant) -> Option<u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= REMEMBERED && !buckets.contains_key(&uid) {
            buckets.clear();
        }
        let bucket = buckets.entry(uid).or_insert(Bucket {
            tokens: BURST,
            since: now,
            held_back: 0,
        });
        let earned = (now.saturating_duration_since(bucket.since).as_millis() / REFILL.as_millis()) as u32;
        if earned > 0 {
            bucket.tokens = (bucket.tokens + earned).min(BURST);
            bucket.since = now;
        }
        if bucket.tokens == 0 {
            bucket.held_back += 1;
            return None;
        }
        bucket.tokens -= 1;
        Some(std::mem::take(&mut bucket.held_back))
    }
}

/// `text` cut to [`MAX_LOGGED_PATH`] bytes (at a character boundary), with
/// `…` where it was cut.
pub fn cut(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_LOGGED_PATH {
        return text.into();
    }
    let mut end = MAX_LOGGED_PATH;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_logs_a_burst_then_one_line_per_refill_with_the_count_held_back() {
        let log = RefusalLog::default();
        let start = Instant::now();
        for _ in 0..BURST {
            assert_eq!(log.allow_at(7, start), Some(0));
        }
        assert_eq!(log.allow_at(7, start), None);
        assert_eq!(log.allow_at(7, start), None);
        // Another uid is not held back by the first.
        assert_eq!(log.allow_at(8, start), Some(0));
        assert_eq!(log.allow_at(7, start + REFILL), Some(2));
        assert_eq!(log.allow_at(7, start + REFILL), None);
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        assert_eq!(cut("/a/b"), "/a/b");
        let long = "é".repeat(200);
        let cut = cut(&long);
        assert!(cut.len() <= MAX_LOGGED_PATH + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}

/// Refused connections being told why (a GOAWAY, a 403) at once: telling
/// takes a moment of the connection, so a uid that reconnects in a loop
/// may have [`TOLD_PER_UID`] told at a time, and all uids `total`; past
/// that a refused connection is closed without a word. So one uid's
/// refusals never silence another's.
#[derive(Debug)]
pub struct Telling {
    places: std::sync::Arc<super::Pool>,
}

/// Refused connections of one uid told why at a time.
pub const TOLD_PER_UID: u64 = 2;

impl Telling {
    /// At most `total` told at once.
    pub fn new(total: u64) -> Telling {
        Telling {
            places: super::Pool::new(super::Resource::Connections, super::Bound::new(total, TOLD_PER_UID, 0)),
        }
    }

    /// A place to tell `uid` why, held while telling; `None` to close at
    /// once.
    pub fn place(&self, uid: u32) -> Option<super::Held> {
        self.places.take(super::Caller { uid, admin: false }, 1).ok()
    }
}
