//! Fair turns at the log: when writers of more than one uid wait, each
//! batch takes the jobs of the uids whose turn it is, by the bytes each has
//! journaled (deficit round robin, in the manner of Kubernetes' API
//! Priority and Fairness and of network fair queuing).
//!
//! Every round (a batch) each uid with jobs waiting earns [`QUANTUM`]
//! bytes; a uid in credit has all its waiting jobs taken, in their order,
//! and is charged what they journaled once planned. A uid that journaled
//! far more than the others (one Put of a 64 KiB image is about 130 KiB of
//! journal, a small create under 1 KiB) waits out its debt while the
//! others write, so its heavy writes cannot make every batch heavy, and
//! every checkpoint come sooner, for everyone. Nothing waits for nothing:
//! a uid alone is never held back (though it is charged, so a heavy writer
//! that was alone a moment ago waits when another comes), and when every
//! uid waiting is in debt they all earn at once what the first of them
//! needs. A debt is at most [`MAX_DEBT`], so no uid waits more than that
//! many bytes' worth of rounds.

use std::collections::HashMap;

use super::batch::Job;

/// Bytes of journal a uid earns each round it waits: more than any small
/// write costs, so small writers never wait a round.
pub const QUANTUM: i64 = 4096;

/// The most a uid owes: 128 rounds of others' writes.
pub const MAX_DEBT: i64 = 128 * QUANTUM;

/// Uids remembered with a debt; past this many the debts are forgiven.
const REMEMBERED: usize = 4096;

/// Each uid's credit (positive) or debt (negative), in journal bytes.
#[derive(Debug, Default)]
pub struct Turns {
    deficits: HashMap<u32, i64>,
}

impl Turns {
    /// Orders `pending` so that the jobs this round takes come first, each
    /// uid's in the order they came, and returns how many they are.
    pub fn choose(&mut self, pending: &mut Vec<Job>) -> usize {
        let mut flows: Vec<u32> = Vec::new();
        for job in pending.iter() {
            if !flows.contains(&job.flow()) {
                flows.push(job.flow());
            }
        }
        if self.deficits.len() > REMEMBERED {
            self.deficits.clear();
        }
        // Every uid earns its quantum; one with nothing waiting banks no
        // credit, but its debt runs down.
        self.deficits.retain(|flow, deficit| {
            *deficit += QUANTUM;
            flows.contains(flow) || *deficit < 0
        });
        if flows.len() <= 1 {
            // Alone, a writer is never held back.
            return pending.len();
        }
        for flow in &flows {
            let deficit = self.deficits.entry(*flow).or_insert(QUANTUM);
            *deficit = (*deficit).min(QUANTUM);
        }
        let best = flows.iter().map(|f| self.deficits[f]).max().unwrap_or(QUANTUM);
        if best <= 0 {
            // Everyone waiting is in debt: skip the rounds until one is not.
            let rounds = (-best) / QUANTUM + 1;
            for flow in &flows {
                *self.deficits.get_mut(flow).expect("every waiting flow") += rounds * QUANTUM;
            }
        }
        let turn = |job: &Job| self.deficits.get(&job.flow()).is_some_and(|d| *d > 0);
        // A stable partition: the chosen first, each in its order.
        let (chosen, deferred): (Vec<Job>, Vec<Job>) = pending.drain(..).partition(turn);
        let taken = chosen.len();
        pending.extend(chosen);
        pending.extend(deferred);
        taken
    }

    /// Charges `flow` the `bytes` one of its jobs journaled.
    pub fn charge(&mut self, flow: u32, bytes: u64) {
        let deficit = self.deficits.entry(flow).or_insert(0);
        *deficit = (*deficit - bytes.min(MAX_DEBT as u64) as i64).max(-MAX_DEBT);
    }
}

/// Each uid's pace of writing: the journal bytes its writes took, paid back
/// at the uid's rate. A uid other than an admin that owes waits, before its
/// next write reaches the log, until it owes nothing. A write always goes
/// once its turn comes, so no write is refused for its size; a uid that
/// writes faster than its rate is slowed to it, whoever else writes. The
/// waiting is the caller's, on the executor: the log never waits.
#[derive(Debug, Default)]
pub struct Pace {
    owed: std::sync::Mutex<HashMap<u32, Owed>>,
}

#[derive(Debug, Clone, Copy)]
struct Owed {
    bytes: f64,
    at: std::time::Instant,
}

impl Pace {
    /// What `uid` owes now at `rate` bytes a second, as the time to pay it
    /// back; `None` when it owes nothing.
    pub fn wait(&self, uid: u32, rate: u64) -> Option<std::time::Duration> {
        let now = std::time::Instant::now();
        let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        let entry = owed.get_mut(&uid)?;
        entry.bytes -= now.saturating_duration_since(entry.at).as_secs_f64() * rate as f64;
        entry.at = now;
        if entry.bytes <= 0.0 {
            owed.remove(&uid);
            return None;
        }
        Some(std::time::Duration::from_secs_f64(entry.bytes / rate as f64))
    }

    /// Adds `bytes` journaled to what `uid` owes.
    pub fn charge(&self, uid: u32, bytes: u64) {
        let now = std::time::Instant::now();
        let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        if owed.len() > REMEMBERED && !owed.contains_key(&uid) {
            owed.clear();
        }
        owed.entry(uid).or_insert(Owed { bytes: 0.0, at: now }).bytes += bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_that_writes_faster_than_its_rate_owes_the_difference() {
        let pace = Pace::default();
        assert_eq!(pace.wait(7, 1 << 20), None);
        pace.charge(7, 2 << 20);
        let wait = pace.wait(7, 1 << 20).expect("it owes");
        assert!(wait > std::time::Duration::from_millis(1900) && wait <= std::time::Duration::from_secs(2));
        // Another uid owes nothing.
        assert_eq!(pace.wait(8, 1 << 20), None);
    }
}
