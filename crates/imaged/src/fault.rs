//! Test-only fault injection, for windows too narrow to hit by chance.
//!
//! `IMAGED_TEST_STALL=POINT:MS` makes the daemon log `stalling` with the
//! point's name and sleep `MS` milliseconds each time it passes `POINT`, so
//! that a test can SIGKILL it inside that window. The points:
//! - `checkpoint`: sled has been synced and the journal not yet reset;
//! - `reopen`: sled is closed and not yet opened again;
//! - `replay`: start-up has replayed one journal entry and not the next;
//! - `journal`: a batch is about to be journaled (a stuck disk, as the
//!   watchdog must notice);
//! - `backup-chunk`: a backup's copy has read one chunk of records and
//!   not the next (writers run on meanwhile);
//! - `restore-staged`: a restore has staged and synced the new store and
//!   not yet committed it;
//! - `restore-committed`: a restore is committed and not yet in place;
//! - `restore-settle`: a restore is putting the staged files in place,
//!   between two of them.
//!
//! `IMAGED_TEST_FAIL=POINT:N` makes the `N`th pass of `POINT` and every
//! later one fail with EIO, as a dying disk would. The one point is
//! `journal` (the journal's write).
//!
//! Unset, as it always is outside the crash tests, a point costs one load of
//! a static. It never changes what the daemon writes, only when.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
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

static FAIL: LazyLock<Option<(String, u64)>> = LazyLock::new(|| {
    let value = std::env::var("IMAGED_TEST_FAIL").ok()?;
    let (point, n) = value.split_once(':')?;
    Some((point.to_owned(), n.parse().ok()?))
});

static PASSES: AtomicU64 = AtomicU64::new(0);

/// Fails with EIO here when `IMAGED_TEST_FAIL` names `point` and this is
/// its `N`th pass or later.
pub fn fail(point: &str) -> std::io::Result<()> {
    if let Some((failing, from)) = &*FAIL
        && failing == point
        && PASSES.fetch_add(1, Ordering::SeqCst) + 1 >= *from
    {
        tracing::warn!(point, "failing (IMAGED_TEST_FAIL)");
        return Err(std::io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}
