//! When the engine is maintained: sled's reopen, its rotation, and when
//! each may run.
//!
//! sled 0.34 writes the snapshot of its page table only when it opens, so
//! bounding what a restart scans means opening sled again; and a reopen
//! pauses every write, and the reads that miss the record cache, for as
//! long as sled takes to close and open, which grows with the store. So:
//!
//! - **A small sled is reopened**, when its last open took at most
//!   [`CHEAP_OPEN`]: once half of [`Reopen::after_bytes`] has been journaled
//!   since it opened, at the first moment no write and no read has come for
//!   as long as the last reopen paused (at least [`IDLE`]); and, should the
//!   store never rest that long, at `after_bytes` between two batches
//!   regardless.
//! - **A large sled is never reopened under callers.** It is rotated
//!   (`rotation`): a fresh copy built beside it and swapped in, with a pause
//!   of a few batches. A rotation rewrites the whole store, so it comes
//!   once sled's files have grown by a share of what they were after the
//!   last one ([`Reopen::rotate_after_percent`]), and at least `after_bytes`
//!   was journaled, which keeps its cost proportional to the writes. The
//!   growth is sled's log (which a restart scans) and the garbage churn
//!   leaves (which the rotation gives back). Any sled, small or large, is
//!   rotated on that schedule.
//!
//! With rotations off (`rotate_after_percent` 0), every sled is reopened as
//! a small one is. So is a large one after a rotation was abandoned (its
//! writers outran the copy, or the disk had no room), until a rotation
//! swaps in: the serving sled gets no snapshot while it waits, and without
//! reopens a restart would scan all the log written since. The next
//! rotation is tried once the files have grown by the share again, from
//! their size when the last one gave up.
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

/// How often sled is reopened or rotated.
#[derive(Debug, Clone, Copy)]
pub struct Reopen {
    /// Journaled bytes after which a small sled is reopened even though
    /// writes wait, and the least a rotation waits for; 0 never reopens.
    pub after_bytes: u64,
    /// Growth of sled's files, in percent of their size after the last
    /// rotation (or open), after which the store is rotated; 0 never
    /// rotates.
    pub rotate_after_percent: u64,
    /// Free space a rotation leaves on the disk: it does not start, and
    /// stops, short of it.
    pub reserve_bytes: u64,
}

/// The shortest time without a job or a read before a due reopen counts the
/// store as idle; the last reopen's pause, when longer, is the time it waits.
pub const IDLE: Duration = Duration::from_millis(20);

/// The longest open of sled that may be repeated under callers: a sled
/// whose last open took longer is only rotated.
pub const CHEAP_OPEN: Duration = Duration::from_millis(50);

/// Journaled bytes between two measurements of sled's files.
pub const MEASURE_EVERY: u64 = 1 << 20;

/// The upkeep due now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Reopen sled.
    Reopen,
    /// Start a rotation.
    Rotate,
}

/// The schedule's state: what was journaled since sled last opened and
/// since the last rotation, and how long opening it took.
#[derive(Debug)]
pub(super) struct Schedule {
    policy: Reopen,
    /// Bytes journaled since sled last opened: about how much log an open
    /// of sled would scan now.
    since_open: u64,
    /// Bytes journaled since the last rotation ended (or sled opened).
    since_rotation: u64,
    /// sled's files when it last opened or was rotated.
    store_bytes: u64,
    /// sled's files as last measured, and `since_rotation` then.
    files_now: u64,
    measured_at: u64,
    /// How long sled's last open took.
    open_took: Duration,
    /// How long a lull must last before a reopen runs in it.
    idle: Duration,
    /// Whether a rotation is under way.
    rotating: bool,
    /// Whether the last rotation was abandoned: until one swaps in, a
    /// large sled is reopened as a small one is.
    fallen_back: bool,
}

impl Schedule {
    /// The schedule of a sled of `store_bytes` whose open took `open_took`:
    /// it never reopens nor rotates until [`Schedule::set`] says when.
    pub(super) fn new(store_bytes: u64, open_took: Duration) -> Schedule {
        Schedule {
            policy: Reopen {
                after_bytes: 0,
                rotate_after_percent: 0,
                reserve_bytes: 0,
            },
            since_open: 0,
            since_rotation: 0,
            store_bytes,
            files_now: store_bytes,
            measured_at: 0,
            open_took,
            idle: IDLE,
            rotating: false,
            fallen_back: false,
        }
    }

    /// Reopens and rotates from now on as `policy` says.
    pub(super) fn set(&mut self, policy: Reopen) {
        self.policy = policy;
    }

    /// The free space a rotation leaves.
    pub(super) fn reserve(&self) -> u64 {
        self.policy.reserve_bytes
    }

    /// `bytes` more were journaled.
    pub(super) fn journaled(&mut self, bytes: u64) {
        self.since_open += bytes;
        self.since_rotation += bytes;
    }

    /// Bytes journaled since sled last opened.
    pub(super) fn since_open(&self) -> u64 {
        self.since_open
    }

    /// Whether reopening sled is cheap enough to do under callers.
    fn cheap(&self) -> bool {
        self.open_took <= CHEAP_OPEN || self.policy.rotate_after_percent == 0 || self.fallen_back
    }

    /// The upkeep that must run before the next batch, if any.
    pub(super) fn due(&self) -> Option<Due> {
        let Reopen {
            after_bytes,
            rotate_after_percent,
            ..
        } = self.policy;
        if self.rotating {
            return None;
        }
        let grown = self.files_now.saturating_sub(self.store_bytes);
        let share = self.store_bytes.saturating_mul(rotate_after_percent) / 100;
        if rotate_after_percent > 0 && self.since_rotation >= after_bytes.max(1) && grown >= share {
            return Some(Due::Rotate);
        }
        (after_bytes > 0 && self.since_open >= after_bytes && self.cheap()).then_some(Due::Reopen)
    }

    /// How long a lull must last for a reopen to run in it, when one may.
    pub(super) fn lull(&self) -> Option<Duration> {
        let after_bytes = self.policy.after_bytes;
        let may = after_bytes > 0 && !self.rotating && self.cheap() && self.since_open >= after_bytes / 2;
        may.then_some(self.idle)
    }

    /// sled has just opened again, after a reopen that paused `paused`
    /// (none for a recovery, which keeps the lull as it was).
    pub(super) fn opened(&mut self, paused: Option<Duration>) {
        self.since_open = 0;
        if let Some(paused) = paused {
            self.idle = paused.max(IDLE);
            self.open_took = paused;
        }
    }

    /// Whether sled's files should be measured again: every
    /// [`MEASURE_EVERY`] journaled.
    pub(super) fn measure_due(&self) -> bool {
        self.policy.rotate_after_percent > 0 && self.since_rotation >= self.measured_at + MEASURE_EVERY
    }

    /// sled's files take `bytes` now.
    pub(super) fn measured(&mut self, bytes: u64) {
        self.files_now = bytes;
        self.measured_at = self.since_rotation;
    }

    /// A rotation started.
    pub(super) fn rotation_started(&mut self) {
        self.rotating = true;
    }

    /// A rotation was swapped in: the new sled's files, and how long its
    /// first open took, are what the schedule goes on from.
    pub(super) fn rotation_swapped(&mut self, store_bytes: u64, open_took: Duration) {
        self.rotating = false;
        self.since_rotation = 0;
        self.measured_at = 0;
        self.since_open = 0;
        self.store_bytes = store_bytes;
        self.files_now = store_bytes;
        self.open_took = open_took;
        self.fallen_back = false;
    }

    /// A rotation was abandoned, or could not start, with sled's files at
    /// `files_bytes`: sled is reopened from now on, and the next rotation
    /// waits for the files to grow by the share from that size.
    pub(super) fn rotation_abandoned(&mut self, files_bytes: u64) {
        self.rotating = false;
        self.since_rotation = 0;
        self.measured_at = 0;
        self.store_bytes = files_bytes;
        self.files_now = files_bytes;
        self.fallen_back = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(after_bytes: u64, rotate_after_percent: u64) -> Reopen {
        Reopen {
            after_bytes,
            rotate_after_percent,
            reserve_bytes: 0,
        }
    }

    #[test]
    fn a_small_sled_is_reopened_in_a_lull_from_half_the_bytes_and_at_all_of_them() {
        let mut schedule = Schedule::new(0, Duration::ZERO);
        schedule.journaled(1 << 30);
        assert!(
            schedule.due().is_none() && schedule.lull().is_none(),
            "never, until set"
        );
        schedule.set(policy(1000, 0));
        schedule.opened(None);
        schedule.journaled(499);
        assert_eq!((schedule.due(), schedule.lull()), (None, None));
        schedule.journaled(1);
        assert_eq!((schedule.due(), schedule.lull()), (None, Some(IDLE)));
        schedule.journaled(500);
        assert_eq!(schedule.due(), Some(Due::Reopen));
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

    #[test]
    fn a_large_sled_is_rotated_once_its_files_grew_by_a_share_and_never_reopened() {
        // A store of 10,000 bytes whose open took longer than a cheap one.
        let mut schedule = Schedule::new(10_000, CHEAP_OPEN * 2);
        schedule.set(policy(1000, 50));
        schedule.journaled(MEASURE_EVERY);
        assert!(schedule.measure_due());
        schedule.measured(14_999);
        assert!(!schedule.measure_due());
        assert_eq!(
            (schedule.due(), schedule.lull()),
            (None, None),
            "no reopen of a slow sled"
        );
        schedule.measured(15_000);
        assert_eq!(schedule.due(), Some(Due::Rotate));
        schedule.rotation_started();
        schedule.journaled(1 << 20);
        assert_eq!(
            (schedule.due(), schedule.lull()),
            (None, None),
            "nothing while one runs"
        );
        // Abandoned, the files grown to 16,000 meanwhile: reopened from
        // now on, as a small sled is, at once (a restart would scan all
        // that was journaled since it opened), and in lulls; tried again
        // once the files grew by the share from 16,000.
        schedule.rotation_abandoned(16_000);
        assert_eq!(schedule.due(), Some(Due::Reopen));
        schedule.opened(Some(CHEAP_OPEN * 2));
        assert_eq!(schedule.due(), None);
        schedule.journaled(500);
        assert_eq!(schedule.lull(), Some(CHEAP_OPEN * 2));
        schedule.journaled(500);
        assert_eq!(schedule.due(), Some(Due::Reopen));
        schedule.opened(Some(CHEAP_OPEN * 2));
        schedule.measured(23_999);
        assert_eq!(schedule.due(), None, "not grown by half of 16,000 yet");
        schedule.measured(24_000);
        assert_eq!(schedule.due(), Some(Due::Rotate));
        // Swapped in: the new store's size is what growth is measured
        // from, and its cheap open allows reopens again.
        schedule.rotation_started();
        schedule.rotation_swapped(2_000, Duration::ZERO);
        schedule.journaled(1000);
        schedule.measured(2_999);
        assert_eq!(schedule.due(), Some(Due::Reopen));
        schedule.measured(3_000);
        // Both are due, and the rotation wins.
        assert_eq!(schedule.due(), Some(Due::Rotate));
        // With rotations off, a slow sled is reopened as a small one is.
        let mut off = Schedule::new(10_000, CHEAP_OPEN * 2);
        off.set(policy(1000, 0));
        off.journaled(1000);
        assert_eq!(off.due(), Some(Due::Reopen));
        assert!(!off.measure_due());
    }
}
