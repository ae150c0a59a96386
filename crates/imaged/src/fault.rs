//! Test-only fault injection, for windows too narrow to hit by chance.
//!
//! `IMAGED_TEST_STALL=POINT:MS` makes the daemon log `stalling` with the
//! point's name and sleep `MS` milliseconds each time it passes `POINT`, so
//! that a test can SIGKILL it inside that window. The points:
//! - `checkpoint`: sled has been synced and the journal not yet reset;
//! - `reopen`: sled is closed and not yet opened again;
//! - `replay`: start-up has replayed one journal entry and not the next;
//! - `journal`: a batch is about to be journaled (a stuck disk, as the
//!   watchdog must notice).
//!
//! Unset, as it always is outside the crash tests, a point costs one load of
//! a static. It never changes what the daemon writes, only when.

use std::sync::LazyLock;
use std::time::Duration;

static STALL: LazyLock<Option<(String, Duration)>> = LazyLock::new(|| {
    let value = std::env::var("IMAGED_TEST_STALL").ok()?;
    let (point, ms) = value.split_once(':')?;
    Some((point.to_owned(), Duration::from_millis(ms.parse().ok()?)))
});

/// Stalls here when `IMAGED_TEST_STALL` names `point`.
pub fn point(point: &str) {
    if let Some((stalled, pause)) = &*STALL
        && stalled == point
    {
        tracing::warn!(point, "stalling (IMAGED_TEST_STALL)");
        std::thread::sleep(*pause);
    }
}
