//! Fair shares: how much of each resource one caller may hold, on top of
//! what the access policy lets it do (docs/FAIRNESS.md).
//!
//! Every resource a caller can hold (connections, streams, watchers, health
//! watches, backups, leases, the memory of long-lived filters) is a
//! [`Pool`] with three numbers ([`Bound`]):
//! - **total**: the daemon-wide bound;
//! - **per uid**: the most one uid other than an admin may hold;
//! - **reserve**: the part of the total only admins (root, imaged's own
//!   user, the socket's group) may take, in the manner of PostgreSQL's
//!   `superuser_reserved_connections`: every other uid together stops at
//!   `total - reserve`.
//!
//! A caller takes what it holds as a [`Held`], given back when dropped, so
//! no path can forget to return it. Work a caller does rather than holds
//! (expensive lists) goes through the fair queue of [`queue`]; refusals are
//! logged through the per-uid token buckets of [`logs`] (the access
//! policy's [`SharedPolicy`](crate::access::layer::SharedPolicy) keeps
//! them, for every refusal, of a call or of a connection).
//!
//! Past a bound, the caller gets a [`Refusal`]: RESOURCE_EXHAUSTED naming
//! the resource, the caller's uid, what it holds, and the setting that
//! raises the bound.

pub mod flow;
pub mod logs;
pub mod queue;

/// The default of every fairness setting (docs/CONFIGURATION.md says why
/// each is what it is).
pub mod defaults {
    /// `max_connections`.
    pub const MAX_CONNECTIONS: u64 = 4096;
    /// `max_connections_per_uid`.
    pub const MAX_CONNECTIONS_PER_UID: u64 = 256;
    /// `admin_reserve_percent`.
    pub const ADMIN_RESERVE_PERCENT: u64 = 10;
    /// `handshake_timeout`, seconds.
    pub const HANDSHAKE_TIMEOUT: u64 = 5;
    /// `max_calls_per_connection`.
    pub const MAX_CALLS_PER_CONNECTION: u64 = 256;
    /// `max_streams`.
    pub const MAX_STREAMS: u64 = 256;
    /// `max_streams_per_uid`.
    pub const MAX_STREAMS_PER_UID: u64 = 32;
    /// `stream_stall_timeout`, seconds.
    pub const STREAM_STALL_TIMEOUT: u64 = 60;
    /// `max_backups`.
    pub const MAX_BACKUPS: u64 = 2;
    /// `max_backups_per_uid`.
    pub const MAX_BACKUPS_PER_UID: u64 = 1;
    /// `max_watchers`.
    pub const MAX_WATCHERS: u64 = 1024;
    /// `max_watchers_per_uid`.
    pub const MAX_WATCHERS_PER_UID: u64 = 128;
    /// `max_health_watches`.
    pub const MAX_HEALTH_WATCHES: u64 = 1024;
    /// `max_health_watches_per_uid`.
    pub const MAX_HEALTH_WATCHES_PER_UID: u64 = 16;
    /// `watch_filter_mb`.
    pub const WATCH_FILTER_MB: u64 = 256;
    /// `watch_filter_mb_per_uid`.
    pub const WATCH_FILTER_MB_PER_UID: u64 = 32;
    /// `max_regex_filters`.
    pub const MAX_REGEX_FILTERS: u64 = 16;
    /// `regex_budget_kb`.
    pub const REGEX_BUDGET_KB: u64 = 8192;
    /// `list_queue_per_uid`.
    pub const LIST_QUEUE_PER_UID: u64 = 8;
    /// `list_queue`.
    pub const LIST_QUEUE: u64 = 1024;
    /// `max_leases`.
    pub const MAX_LEASES: u64 = 65_536;
    /// `max_leases_per_uid`.
    pub const MAX_LEASES_PER_UID: u64 = 8192;
    /// `lease_mb`.
    pub const LEASE_MB: u64 = 64;
    /// `lease_mb_per_uid`.
    pub const LEASE_MB_PER_UID: u64 = 8;
    /// `published_queue_events`.
    pub const PUBLISHED_QUEUE_EVENTS: u64 = 1024;
    /// `published_queue_mb`.
    pub const PUBLISHED_QUEUE_MB: u64 = 16;
    /// `max_namespace_mb`.
    pub const MAX_NAMESPACE_MB: u64 = 1024;
    /// `write_mb_per_uid`, MiB of journal a second.
    pub const WRITE_MB_PER_UID: u64 = 8;
    /// `metrics_max_connections`.
    pub const METRICS_MAX_CONNECTIONS: u64 = 64;
    /// `metrics_max_connections_per_uid`.
    pub const METRICS_MAX_CONNECTIONS_PER_UID: u64 = 4;
}

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::Error;

/// Set in the environment of `imaged`, this turns the share machinery off
/// ([`Shares::off`]). It is for `imaged-bench neighbours` alone.
pub const NO_SHARES: &str = "IMAGED_BENCH_NO_SHARES";

/// Who is calling, as fairness sees it: the uid the kernel gave at
/// connect, and whether it is one of the built-in admins, who keep the
/// reserve and have no per-uid share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The peer's uid.
    pub uid: u32,
    /// root, imaged's own user, or a member of the socket's group.
    pub admin: bool,
}

impl Caller {
    /// The daemon itself, for work no peer asked for: an admin.
    pub const DAEMON: Caller = Caller { uid: 0, admin: true };
}

/// A resource callers hold, with the settings that bound it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Connections on the API socket.
    Connections,
    /// Connections on the metrics listener.
    MetricsConnections,
    /// ListStreams open.
    Streams,
    /// Watch and Subscribe calls attached.
    Watchers,
    /// `grpc.health.v1.Health/Watch` streams open.
    HealthWatches,
    /// Backups running.
    Backups,
    /// Leases held.
    Leases,
    /// Bytes of lease ids, labels and resources held.
    LeaseBytes,
    /// Bytes of compiled regular expressions held by watchers' filters.
    FilterMemory,
}

impl Resource {
    /// Every resource, in the order status and docs list them.
    pub const ALL: [Resource; 9] = [
        Resource::Connections,
        Resource::MetricsConnections,
        Resource::Streams,
        Resource::Watchers,
        Resource::HealthWatches,
        Resource::Backups,
        Resource::Leases,
        Resource::LeaseBytes,
        Resource::FilterMemory,
    ];

    /// What is held, as messages say it after a count (plural; for bytes,
    /// after "N bytes").
    pub fn what(self) -> &'static str {
        match self {
            Resource::Connections => "connections",
            Resource::MetricsConnections => "metrics connections",
            Resource::Streams => "ListStreams",
            Resource::Watchers => "watchers (Watch and Subscribe)",
            Resource::HealthWatches => "health Watch streams",
            Resource::Backups => "backups",
            Resource::Leases => "leases",
            Resource::LeaseBytes => "of leases",
            Resource::FilterMemory => "of watchers' compiled filters",
        }
    }

    /// The settings of the total and of the per-uid share.
    pub fn settings(self) -> (&'static str, &'static str) {
        match self {
            Resource::Connections => ("max_connections", "max_connections_per_uid"),
            Resource::MetricsConnections => ("metrics_max_connections", "metrics_max_connections_per_uid"),
            Resource::Streams => ("max_streams", "max_streams_per_uid"),
            Resource::Watchers => ("max_watchers", "max_watchers_per_uid"),
            Resource::HealthWatches => ("max_health_watches", "max_health_watches_per_uid"),
            Resource::Backups => ("max_backups", "max_backups_per_uid"),
            Resource::Leases => ("max_leases", "max_leases_per_uid"),
            Resource::LeaseBytes => ("lease_mb", "lease_mb_per_uid"),
            Resource::FilterMemory => ("watch_filter_mb", "watch_filter_mb_per_uid"),
        }
    }

    /// Whether the settings count MiB rather than units.
    fn in_mib(self) -> bool {
        matches!(self, Resource::LeaseBytes | Resource::FilterMemory)
    }

    /// `amount` of the resource in the unit of its settings, for messages.
    fn show(self, amount: u64) -> String {
        if self.in_mib() {
            format!("{amount} bytes")
        } else {
            amount.to_string()
        }
    }
}

/// One resource's bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The most held at once, by everyone.
    pub total: u64,
    /// The most one uid other than an admin holds.
    pub per_uid: u64,
    /// The part of `total` only admins may take.
    pub reserve: u64,
}

impl Bound {
    /// `total` and `per_uid`, with `reserve_percent` of the total (at
    /// least 1) kept for admins.
    pub fn new(total: u64, per_uid: u64, reserve_percent: u64) -> Bound {
        let reserve = if reserve_percent == 0 {
            0
        } else {
            (total * reserve_percent / 100).clamp(1, total)
        };
        Bound {
            total,
            per_uid: per_uid.min(total),
            reserve,
        }
    }

    /// No bound at all, for callers that are not peers (tests, tools).
    pub const UNBOUNDED: Bound = Bound {
        total: u64::MAX,
        per_uid: u64::MAX,
        reserve: 0,
    };
}

/// Which part of a bound a refused take would have passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The caller's own share.
    PerUid,
    /// What every non-admin together may hold: the total less the admins'
    /// reserve.
    Others,
    /// The total.
    Total,
}

/// Why a caller may not take more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Of what.
    pub resource: Resource,
    /// Who asked.
    pub caller: Caller,
    /// How much it asked for.
    pub amount: u64,
    /// What it (or everyone, for [`Limit::Others`] and [`Limit::Total`])
    /// held then.
    pub held: u64,
    /// The part of the bound passed.
    pub limit: Limit,
    /// The bound.
    pub bound: Bound,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.resource;
        let (total_key, per_uid_key) = r.settings();
        let uid = self.caller.uid;
        match self.limit {
            Limit::PerUid => write!(
                f,
                "uid {uid} holds {} {} already, and {} more would pass its share of {} ({per_uid_key}); end some \
                 first, or ask the operator to raise {per_uid_key}",
                r.show(self.held),
                r.what(),
                r.show(self.amount),
                r.show(self.bound.per_uid),
            ),
            Limit::Others => write!(
                f,
                "{} {} are held by uids other than the admins, the most they may hold together ({total_key} = {} \
                 less {} kept for admins); uid {uid} may retry later, or the operator may raise {total_key}",
                r.show(self.held),
                r.what(),
                r.show(self.bound.total),
                r.show(self.bound.reserve),
            ),
            Limit::Total => write!(
                f,
                "{} {} are held, and {} more for uid {uid} would pass the {} imaged allows ({total_key}); retry \
                 later, or ask the operator to raise {total_key}",
                r.show(self.held),
                r.what(),
                r.show(self.amount),
                r.show(self.bound.total),
            ),
        }
    }
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Error {
        Error::ResourceExhausted(refusal.to_string())
    }
}

impl From<Refusal> for tonic::Status {
    fn from(refusal: Refusal) -> tonic::Status {
        Error::from(refusal).into()
    }
}

#[derive(Debug)]
struct State {
    bound: Bound,
    /// Held by everyone.
    held: u64,
    /// Held by callers other than admins.
    others: u64,
    /// Held by each uid other than an admin; a uid holding nothing has no
    /// entry, so the map is as large as the uids holding something.
    by_uid: HashMap<u32, u64>,
    /// Refusals, for the metrics.
    refused: u64,
}

/// One resource's holdings and bound. Cheap to share; the bound can be
/// changed while callers hold (SIGHUP): holdings above a lowered bound stay
/// until given back, and new takes are measured against the new one.
#[derive(Debug)]
pub struct Pool {
    resource: Resource,
    state: Mutex<State>,
}

impl Pool {
    /// An empty pool of `resource` bounded by `bound`.
    pub fn new(resource: Resource, bound: Bound) -> Arc<Pool> {
        Arc::new(Pool {
            resource,
            state: Mutex::new(State {
                bound,
                held: 0,
                others: 0,
                by_uid: HashMap::new(),
                refused: 0,
            }),
        })
    }

    /// Which resource.
    pub fn resource(&self) -> Resource {
        self.resource
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `amount` for `caller`, or refuses, naming the part of the
    /// bound it would pass.
    pub fn take(self: &Arc<Self>, caller: Caller, amount: u64) -> Result<Held, Refusal> {
        self.add(caller, amount)?;
        Ok(Held {
            pool: Some(self.clone()),
            caller,
            amount,
        })
    }

    fn add(&self, caller: Caller, amount: u64) -> Result<(), Refusal> {
        let mut state = self.lock();
        let bound = state.bound;
        let refuse = |state: &mut State, held, limit| {
            state.refused += 1;
            Err(Refusal {
                resource: self.resource,
                caller,
                amount,
                held,
                limit,
                bound,
            })
        };
        if state.held.saturating_add(amount) > bound.total {
            let held = state.held;
            return refuse(&mut state, held, Limit::Total);
        }
        if !caller.admin {
            let mine = state.by_uid.get(&caller.uid).copied().unwrap_or(0);
            if mine.saturating_add(amount) > bound.per_uid {
                return refuse(&mut state, mine, Limit::PerUid);
            }
            if state.others.saturating_add(amount) > bound.total - bound.reserve {
                let others = state.others;
                return refuse(&mut state, others, Limit::Others);
            }
            state.others += amount;
            *state.by_uid.entry(caller.uid).or_insert(0) += amount;
        }
        state.held += amount;
        Ok(())
    }

    fn remove(&self, caller: Caller, amount: u64) {
        let mut state = self.lock();
        state.held = state.held.saturating_sub(amount);
        if !caller.admin {
            state.others = state.others.saturating_sub(amount);
            if let std::collections::hash_map::Entry::Occupied(mut mine) = state.by_uid.entry(caller.uid) {
                *mine.get_mut() = mine.get().saturating_sub(amount);
                if *mine.get() == 0 {
                    mine.remove();
                }
            }
        }
    }

    /// Puts `bound` in force for every take from now on.
    pub fn set_bound(&self, bound: Bound) {
        self.lock().bound = bound;
    }

    /// The bound in force.
    pub fn bound(&self) -> Bound {
        self.lock().bound
    }

    /// What is held now, by everyone.
    pub fn held(&self) -> u64 {
        self.lock().held
    }

    /// What `uid` (not an admin) holds now.
    pub fn held_by(&self, uid: u32) -> u64 {
        self.lock().by_uid.get(&uid).copied().unwrap_or(0)
    }

    /// How many takes were refused since the start.
    pub fn refused(&self) -> u64 {
        self.lock().refused
    }
}

/// Something a caller holds of a pool, given back when dropped. It can grow
/// and shrink while held (a lease's bytes as resources come and go).
#[derive(Debug)]
pub struct Held {
    /// `None` when shares are off: nothing is counted.
    pool: Option<Arc<Pool>>,
    caller: Caller,
    amount: u64,
}

impl Held {
    /// Takes `more` for the same caller, or refuses and leaves what is held
    /// as it was.
    pub fn grow(&mut self, more: u64) -> Result<(), Refusal> {
        if let Some(pool) = &self.pool {
            pool.add(self.caller, more)?;
        }
        self.amount += more;
        Ok(())
    }

    /// Gives back `less` (at most what is held).
    pub fn shrink(&mut self, less: u64) {
        let less = less.min(self.amount);
        if let Some(pool) = &self.pool {
            pool.remove(self.caller, less);
        }
        self.amount -= less;
    }

    /// How much is held.
    pub fn amount(&self) -> u64 {
        self.amount
    }

    /// Who holds it.
    pub fn caller(&self) -> Caller {
        self.caller
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.remove(self.caller, self.amount);
        }
    }
}

/// The bounds of every pool, of the fair queue and of a request's
/// regular expressions, and the timeouts that keep a caller from holding
/// what it does not use, as configured. All of it can change while the
/// daemon runs (SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareLimits {
    /// Each resource's bound, in the order of [`Resource::ALL`].
    pub bounds: Vec<(Resource, Bound)>,
    /// The fair queue's bounds.
    pub queue: queue::QueueLimits,
    /// One request's regular expressions.
    pub regex: crate::filter::RegexLimits,
    /// How long a new connection has for HTTP/2's preface and first
    /// SETTINGS.
    pub handshake: Duration,
    /// How long a ListStream's or Subscribe's client may take nothing ready
    /// for it.
    pub stall: Duration,
}

impl ShareLimits {
    /// No bound anywhere: for tools and tests that are not the daemon.
    pub fn unbounded() -> ShareLimits {
        ShareLimits {
            bounds: Resource::ALL.iter().map(|r| (*r, Bound::UNBOUNDED)).collect(),
            queue: queue::QueueLimits::unbounded(),
            regex: crate::filter::RegexLimits::default(),
            handshake: Duration::from_secs(defaults::HANDSHAKE_TIMEOUT),
            stall: Duration::from_secs(defaults::STREAM_STALL_TIMEOUT),
        }
    }

    fn bound(&self, resource: Resource) -> Bound {
        self.bounds
            .iter()
            .find(|(r, _)| *r == resource)
            .map_or(Bound::UNBOUNDED, |(_, b)| *b)
    }
}

/// Every pool and the fair queue: what the server, the feed, the leases and
/// the metrics listener take from. Cheap to clone; every clone the same.
#[derive(Debug, Clone)]
pub struct Shares {
    pools: Arc<Vec<Arc<Pool>>>,
    queue: Arc<queue::Seats>,
    timeouts: Arc<Mutex<(Duration, Duration)>>,
    /// False when the machinery is off: nothing is counted or queued.
    on: bool,
}

impl Shares {
    /// Pools and a queue bounded by `limits`.
    pub fn new(limits: &ShareLimits) -> Shares {
        Shares {
            pools: Arc::new(Resource::ALL.iter().map(|r| Pool::new(*r, limits.bound(*r))).collect()),
            queue: queue::Seats::new(limits.queue),
            timeouts: Arc::new(Mutex::new((limits.handshake, limits.stall))),
            on: true,
        }
    }

    /// No bound anywhere.
    pub fn unbounded() -> Shares {
        Shares::new(&ShareLimits::unbounded())
    }

    /// The machinery off: nothing is counted, nothing queues, every take
    /// succeeds at no cost; the timeouts of `limits` still hold. For
    /// measuring what the machinery costs (`imaged-bench neighbours`).
    pub fn off(limits: &ShareLimits) -> Shares {
        Shares {
            queue: queue::Seats::off(),
            on: false,
            ..Shares::new(limits)
        }
    }

    /// The pool of `resource`.
    pub fn pool(&self, resource: Resource) -> &Arc<Pool> {
        let at = Resource::ALL
            .iter()
            .position(|r| *r == resource)
            .expect("every resource has a pool");
        &self.pools[at]
    }

    /// Takes `amount` of `resource` for `caller`.
    pub fn take(&self, resource: Resource, caller: Caller, amount: u64) -> Result<Held, Refusal> {
        if !self.on {
            return Ok(Held {
                pool: None,
                caller,
                amount,
            });
        }
        self.pool(resource).take(caller, amount)
    }

    /// The fair queue for expensive requests.
    pub fn queue(&self) -> &Arc<queue::Seats> {
        &self.queue
    }

    /// How long a new connection has for its handshake.
    pub fn handshake_timeout(&self) -> Duration {
        self.timeouts.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// How long a stream's client may take nothing ready for it.
    pub fn stall_timeout(&self) -> Duration {
        self.timeouts.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// Puts `limits` in force from now on (SIGHUP). The regular-expression
    /// bounds are the process's (filters are parsed everywhere), so the
    /// daemon sets them with [`crate::filter::set_regex_limits`].
    pub fn reconfigure(&self, limits: &ShareLimits) {
        *self.timeouts.lock().unwrap_or_else(|e| e.into_inner()) = (limits.handshake, limits.stall);
        if !self.on {
            return;
        }
        for pool in self.pools.iter() {
            pool.set_bound(limits.bound(pool.resource()));
        }
        self.queue.set_limits(limits.queue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Caller = Caller {
        uid: 1000,
        admin: false,
    };
    const BOB: Caller = Caller {
        uid: 1001,
        admin: false,
    };
    const ROOT: Caller = Caller { uid: 0, admin: true };

    #[test]
    fn a_uid_stops_at_its_share_and_others_at_the_reserve() {
        let pool = Pool::new(Resource::Streams, Bound::new(10, 4, 20));
        assert_eq!(pool.bound().reserve, 2);
        let alice: Vec<Held> = (0..4).map(|_| pool.take(ALICE, 1).unwrap()).collect();
        let refused = pool.take(ALICE, 1).unwrap_err();
        assert_eq!(refused.limit, Limit::PerUid);
        let text = refused.to_string();
        assert!(
            text.contains("uid 1000") && text.contains("max_streams_per_uid"),
            "{text}"
        );
        // Bob gets his own share, up to what non-admins may hold together.
        let bob: Vec<Held> = (0..4).map(|_| pool.take(BOB, 1).unwrap()).collect();
        let third = Caller {
            uid: 1002,
            admin: false,
        };
        assert_eq!(pool.take(third, 1).unwrap_err().limit, Limit::Others);
        // The admins' reserve is theirs.
        let root: Vec<Held> = (0..2).map(|_| pool.take(ROOT, 1).unwrap()).collect();
        assert_eq!(pool.take(ROOT, 1).unwrap_err().limit, Limit::Total);
        assert_eq!(pool.held(), 10);
        drop(alice);
        assert_eq!(pool.held_by(1000), 0);
        assert_eq!(pool.held(), 6);
        drop((bob, root));
        assert_eq!(pool.held(), 0);
        assert_eq!(pool.refused(), 3);
    }

    #[test]
    fn a_holding_grows_and_shrinks_within_the_share() {
        let pool = Pool::new(Resource::LeaseBytes, Bound::new(1000, 100, 10));
        let mut held = pool.take(ALICE, 60).unwrap();
        let refused = held.grow(50).unwrap_err();
        assert!(refused.to_string().contains("lease_mb_per_uid"), "{refused}");
        assert_eq!(held.amount(), 60);
        held.grow(40).unwrap();
        held.shrink(30);
        assert_eq!(pool.held_by(1000), 70);
        drop(held);
        assert_eq!(pool.held(), 0);
    }

    #[test]
    fn a_lowered_bound_refuses_new_takes_and_keeps_what_is_held() {
        let pool = Pool::new(Resource::Watchers, Bound::new(10, 5, 0));
        let held = pool.take(ALICE, 5).unwrap();
        pool.set_bound(Bound::new(10, 2, 0));
        assert_eq!(pool.take(ALICE, 1).unwrap_err().limit, Limit::PerUid);
        drop(held);
        pool.take(ALICE, 2).unwrap();
    }
}
