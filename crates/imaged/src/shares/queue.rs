//! The fair queue for expensive requests: lists with regular expressions,
//! whole lists and big pages. It is a few seats (by default half the
//! cores), in the manner of Kubernetes' API Priority and Fairness: each uid
//! has its own first-in, first-out queue, and a seat that frees goes to the
//! next uid in turn (round robin by uid), so one uid's heavy lists wait
//! behind each other, never in front of another uid's. Cheap calls (Gets,
//! writes, small pages) never queue, so no list stalls them: the seats
//! leave them the other cores.
//!
//! A uid may have at most `per_uid` requests queued or seated, and all
//! uids together at most `total` queued; past either, RESOURCE_EXHAUSTED
//! naming the setting. An admin has no per-uid cap but queues like anyone.
//! A request dropped while it waits (its caller gone) leaves the queue,
//! and a seat granted to it passes on.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::Caller;
use crate::error::Error;

/// The queue's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Expensive requests served at once.
    pub seats: usize,
    /// Requests of one uid (not an admin) queued or seated at once.
    pub per_uid: usize,
    /// Requests queued at once, all uids together.
    pub total: usize,
}

impl QueueLimits {
    /// Seats for half the cores (at least one), 8 requests per uid, 1,024 in
    /// all.
    pub fn default_for_host() -> QueueLimits {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        QueueLimits {
            seats: (cores / 2).max(1),
            per_uid: 8,
            total: 1024,
        }
    }

    /// No queueing at all.
    pub fn unbounded() -> QueueLimits {
        QueueLimits {
            seats: usize::MAX,
            per_uid: usize::MAX,
            total: usize::MAX,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    limits: Option<QueueLimits>,
    busy: usize,
    /// Each uid's waiting tickets, oldest first.
    waiting: BTreeMap<u32, VecDeque<u64>>,
    queued: usize,
    /// Each non-admin uid's requests queued or seated.
    per_uid: HashMap<u32, usize>,
    /// Tickets given a seat whose request has not yet seen it.
    granted: HashSet<u64>,
    /// The uid served last: the next seat goes to the one after it.
    last: u32,
    next_ticket: u64,
    waited: u64,
    refused: u64,
}

impl State {
    fn limits(&self) -> QueueLimits {
        self.limits.unwrap_or_else(QueueLimits::unbounded)
    }

    /// Gives free seats to the next uids in turn.
    fn dispatch(&mut self) -> bool {
        let mut granted = false;
        while self.busy < self.limits().seats && self.queued > 0 {
            let uid = *self
                .waiting
                .range(self.last.wrapping_add(1)..)
                .next()
                .or_else(|| self.waiting.iter().next())
                .expect("queued requests have a uid")
                .0;
            let tickets = self.waiting.get_mut(&uid).expect("the uid just found");
            let ticket = tickets.pop_front().expect("a uid in the map waits");
            if tickets.is_empty() {
                self.waiting.remove(&uid);
            }
            self.queued -= 1;
            self.busy += 1;
            self.last = uid;
            self.granted.insert(ticket);
            granted = true;
        }
        granted
    }

    fn leave(&mut self, caller: Caller) {
        if caller.admin {
            return;
        }
        if let std::collections::hash_map::Entry::Occupied(mut n) = self.per_uid.entry(caller.uid) {
            *n.get_mut() -= 1;
            if *n.get() == 0 {
                n.remove();
            }
        }
    }
}

/// The seats and their queues.
#[derive(Debug)]
pub struct Seats {
    state: Mutex<State>,
    wake: Notify,
    /// False when fairness is off: every request is seated at once, with
    /// nothing counted.
    on: bool,
}

/// A seat, held while an expensive request works; freed when dropped.
#[derive(Debug)]
pub struct Seat {
    seats: Arc<Seats>,
    caller: Caller,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if !self.seats.on {
            return;
        }
        let granted = {
            let mut state = self.seats.lock();
            state.busy -= 1;
            state.leave(self.caller);
            state.dispatch()
        };
        if granted {
            self.seats.wake.notify_waiters();
        }
    }
}

/// A request waiting for a seat; if dropped first, it leaves the queue (or
/// passes on a seat it was granted).
struct Waiting<'a> {
    seats: &'a Arc<Seats>,
    caller: Caller,
    ticket: u64,
    seated: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.seated {
            return;
        }
        let granted = {
            let mut state = self.seats.lock();
            if state.granted.remove(&self.ticket) {
                state.busy -= 1;
            } else if let Some(tickets) = state.waiting.get_mut(&self.caller.uid) {
                tickets.retain(|t| *t != self.ticket);
                if tickets.is_empty() {
                    state.waiting.remove(&self.caller.uid);
                }
                state.queued -= 1;
            }
            state.leave(self.caller);
            state.dispatch()
        };
        if granted {
            self.seats.wake.notify_waiters();
        }
    }
}

impl Seats {
    /// Seats and queues bounded by `limits`.
    pub fn new(limits: QueueLimits) -> Arc<Seats> {
        Arc::new(Seats {
            state: Mutex::new(State {
                limits: Some(limits),
                ..State::default()
            }),
            wake: Notify::new(),
            on: true,
        })
    }

    /// Seats for everyone at once, counting nothing (fairness off).
    pub fn off() -> Arc<Seats> {
        Arc::new(Seats {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            on: false,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `limits` in force; more seats are handed out at once.
    pub fn set_limits(&self, limits: QueueLimits) {
        let granted = {
            let mut state = self.lock();
            state.limits = Some(limits);
            state.dispatch()
        };
        if granted {
            self.wake.notify_waiters();
        }
    }

    /// (requests that had to wait, requests refused) since the start.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.lock();
        (state.waited, state.refused)
    }

    /// Requests seated and waiting now.
    pub fn occupancy(&self) -> (usize, usize) {
        let state = self.lock();
        (state.busy, state.queued)
    }

    /// A seat for `caller`'s expensive request, after the requests queued
    /// before it in its uid's queue, and in turn with the other uids.
    /// RESOURCE_EXHAUSTED past the queue's bounds.
    pub async fn enter(self: &Arc<Self>, caller: Caller) -> Result<Seat, Error> {
        if !self.on {
            return Ok(Seat {
                seats: self.clone(),
                caller,
            });
        }
        let ticket = {
            let mut state = self.lock();
            let limits = state.limits();
            let mine = state.per_uid.get(&caller.uid).copied().unwrap_or(0);
            if !caller.admin && mine >= limits.per_uid {
                state.refused += 1;
                return Err(Error::ResourceExhausted(format!(
                    "uid {} has {mine} expensive requests (lists with regular expressions, whole lists, big pages) \
                     queued or running, the most one uid may (list_queue_per_uid = {}); wait for them, or ask the \
                     operator to raise list_queue_per_uid",
                    caller.uid, limits.per_uid
                )));
            }
            if state.busy < limits.seats && state.queued == 0 {
                state.busy += 1;
                state.last = caller.uid;
                if !caller.admin {
                    *state.per_uid.entry(caller.uid).or_insert(0) += 1;
                }
                return Ok(Seat {
                    seats: self.clone(),
                    caller,
                });
            }
            if state.queued >= limits.total {
                state.refused += 1;
                return Err(Error::ResourceExhausted(format!(
                    "{} expensive requests are queued, the most imaged queues (list_queue = {}); uid {} may retry \
                     later, or the operator may raise list_queue",
                    state.queued, limits.total, caller.uid
                )));
            }
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state.waiting.entry(caller.uid).or_default().push_back(ticket);
            state.queued += 1;
            state.waited += 1;
            if !caller.admin {
                *state.per_uid.entry(caller.uid).or_insert(0) += 1;
            }
            ticket
        };
        let mut waiting = Waiting {
            seats: self,
            caller,
            ticket,
            seated: false,
        };
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            // Registered before the look, so a grant between the look and
            // the wait still wakes it.
            notified.as_mut().enable();
            if self.lock().granted.remove(&ticket) {
                waiting.seated = true;
                return Ok(Seat {
                    seats: self.clone(),
                    caller,
                });
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32) -> Caller {
        Caller { uid, admin: false }
    }

    #[tokio::test]
    async fn a_freed_seat_goes_to_the_next_uid_in_turn_not_to_the_busiest() {
        let seats = Seats::new(QueueLimits {
            seats: 1,
            per_uid: 8,
            total: 64,
        });
        let first = seats.enter(caller(1)).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // uid 1 queues three, then uid 2 one: uid 2 goes second.
        for uid in [1, 1, 1, 2] {
            let (seats, order) = (seats.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _seat = seats.enter(caller(uid)).await.unwrap();
                order.lock().unwrap().push(uid);
                tokio::task::yield_now().await;
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(seats.occupancy(), (1, 4));
        drop(first);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![2, 1, 1, 1]);
        assert_eq!(seats.occupancy(), (0, 0));
    }

    #[tokio::test]
    async fn a_uid_is_refused_past_its_queue_and_a_dropped_waiter_leaves() {
        let seats = Seats::new(QueueLimits {
            seats: 1,
            per_uid: 2,
            total: 64,
        });
        let held = seats.enter(caller(1)).await.unwrap();
        let waiter = {
            let seats = seats.clone();
            tokio::spawn(async move { seats.enter(caller(1)).await.map(drop) })
        };
        tokio::task::yield_now().await;
        let refused = seats.enter(caller(1)).await.unwrap_err().to_string();
        assert!(
            refused.contains("uid 1") && refused.contains("list_queue_per_uid"),
            "{refused}"
        );
        // An admin is not capped, and another uid queues.
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(seats.occupancy(), (1, 0));
        drop(held);
        let again = seats.enter(caller(1)).await.unwrap();
        drop(again);
        assert_eq!(seats.occupancy(), (0, 0));
    }
}
