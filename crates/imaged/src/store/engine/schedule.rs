//! When the engine is maintained: sled's periodic reopen, and when it may
//! run.
//!
//! sled 0.34 writes the snapshot of its page table only when it opens, so
//! bounding what a restart scans means closing sled and opening it again;
//! and every reopen pauses the reads that miss the record cache, and every
//! write, for as long as sled takes to close and open. So a reopen is
//! scheduled where it costs least: once half of [`Reopen::after_bytes`] has
//! been journaled since sled last opened, at the first moment no write and
//! no read has come for as long as the last reopen paused (at least
//! [`IDLE`]), so that the lull is likely long enough to hold it; and, should
//! the store never rest that long, at `after_bytes` between two batches
//! regardless, so that a restart never scans more than that.
//!
//! The log only reports what it journals ([`Engine::journaled`]), asks
//! between two batches whether it may apply the next
//! ([`Engine::may_apply`]), and, with nothing to do, how long a lull must
//! last before the engine does its upkeep ([`Engine::lull`],
//! [`Engine::maintain_in_lull`]).
//!
//! [`Engine::journaled`]: super::Engine::journaled
//! [`Engine::may_apply`]: super::Engine::may_apply
//! [`Engine::lull`]: super::Engine::lull
//! [`Engine::maintain_in_lull`]: super::Engine::maintain_in_lull

use std::time::Duration;

/// How often sled is reopened.
#[derive(Debug, Clone, Copy)]
pub struct Reopen {
    /// Journaled bytes at which a reopen runs even though writes wait; 0
    /// never reopens.
    pub after_bytes: u64,
}

/// The shortest time without a job or a read before a due reopen counts the
/// store as idle; the last reopen's pause, when longer, is the time it waits.
pub const IDLE: Duration = Duration::from_millis(20);

/// The schedule's state: what was journaled since sled last opened, and
/// how long the last reopen paused.
#[derive(Debug)]
pub(super) struct Schedule {
    policy: Reopen,
    /// Bytes journaled since sled last opened: about how much log an open
    /// of sled would scan now.
    since_open: u64,
    /// How long a lull must last before a reopen runs in it.
    idle: Duration,
}

impl Schedule {
    /// A schedule that never reopens, until [`Schedule::set`] says when.
    pub(super) fn never() -> Schedule {
        Schedule {
            policy: Reopen { after_bytes: 0 },
            since_open: 0,
            idle: IDLE,
        }
    }

    /// Reopens from now on as `policy` says.
    pub(super) fn set(&mut self, policy: Reopen) {
        self.policy = policy;
    }

    /// `bytes` more were journaled.
    pub(super) fn journaled(&mut self, bytes: u64) {
        self.since_open += bytes;
    }

    /// Bytes journaled since sled last opened.
    pub(super) fn since_open(&self) -> u64 {
        self.since_open
    }

    /// Whether a reopen must run before the next batch.
    pub(super) fn due(&self) -> bool {
        self.policy.after_bytes > 0 && self.since_open >= self.policy.after_bytes
    }

    /// How long a lull must last for a reopen to run in it, when one may.
    pub(super) fn lull(&self) -> Option<Duration> {
        let from = self.policy.after_bytes / 2;
        (self.policy.after_bytes > 0 && self.since_open >= from).then_some(self.idle)
    }

    /// sled has just opened again, after a reopen that paused `paused`
    /// (none for a recovery, which keeps the lull as it was).
    pub(super) fn opened(&mut self, paused: Option<Duration>) {
        self.since_open = 0;
        if let Some(paused) = paused {
            self.idle = paused.max(IDLE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopen_may_run_in_a_lull_from_half_the_bytes_and_must_at_all_of_them() {
        let mut schedule = Schedule::never();
        schedule.journaled(1 << 30);
        assert!(!schedule.due() && schedule.lull().is_none(), "never, until set");
        schedule.set(Reopen { after_bytes: 1000 });
        schedule.opened(None);
        schedule.journaled(499);
        assert_eq!((schedule.due(), schedule.lull()), (false, None));
        schedule.journaled(1);
        assert_eq!((schedule.due(), schedule.lull()), (false, Some(IDLE)));
        schedule.journaled(500);
        assert!(schedule.due());
        // A slow reopen asks the next lull to be as long as it was.
        schedule.opened(Some(Duration::from_millis(300)));
        assert_eq!(schedule.since_open(), 0);
        schedule.journaled(600);
        assert_eq!(schedule.lull(), Some(Duration::from_millis(300)));
        // A fast one never asks less than IDLE.
        schedule.opened(Some(Duration::from_millis(1)));
        schedule.journaled(600);
        assert_eq!(schedule.lull(), Some(IDLE));
    }
}
