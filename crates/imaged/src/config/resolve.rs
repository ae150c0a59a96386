//! From merged [`Settings`] to a checked [`Config`]: every bound and rule a
//! setting has is checked here, once, whatever the value's source, and a
//! refusal names the source, the key and the value.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use super::{Loaded, LogFormat, LogTargetSetting, Settings};
use crate::access::{Grant, Role};
use crate::feed::FeedLimits;
use crate::server::Limits;
use crate::server::events::PublishedLimits;
use crate::shares::queue::QueueLimits;
use crate::shares::{Bound, Resource, ShareLimits};
use crate::store::{Quotas, Retention, SledCache, StoreOptions};

/// Where logs go, once `auto` is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Lines on stderr.
    Stderr(LogFormat),
    /// The systemd journal.
    Journald,
}

/// The daemon's checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The socket to bind when systemd passes none.
    pub socket: PathBuf,
    /// The mode of a socket imaged binds.
    pub socket_mode: u32,
    /// The group of a socket imaged binds, when set.
    pub socket_group: Option<u32>,
    /// The data directory.
    pub root: PathBuf,
    /// `cache_mb`, as given.
    pub cache_mb: Option<u64>,
    /// The store's options.
    pub store: StoreOptions,
    /// The server's bounds.
    pub limits: Limits,
    /// The change feed's bounds.
    pub feed: FeedLimits,
    /// What each caller may hold and how its expensive work queues.
    pub shares: ShareLimits,
    /// The queue of published events.
    pub published: PublishedLimits,
    /// The log filter, checked.
    pub log_level: String,
    /// Where logs go.
    pub log_target: LogTarget,
    /// The access policy's grants, checked.
    pub grants: Vec<Grant>,
    /// Where metrics are served, if anywhere.
    pub metrics: Option<crate::metrics::http::Address>,
    /// `admin_reserve_percent`, as given.
    pub admin_reserve_percent: u64,
}

impl Config {
    /// The values worked out for this host where no source gave one, by
    /// key, for `imaged config`.
    pub fn host_defaults(&self) -> Vec<(&'static str, toml::Value)> {
        vec![
            ("socket", toml::Value::String(self.socket.display().to_string())),
            ("root", toml::Value::String(self.root.display().to_string())),
            ("reader_threads", toml::Value::Integer(self.store.reader_threads as i64)),
            ("list_seats", toml::Value::Integer(self.shares.queue.seats as i64)),
        ]
    }

    /// The bounds in force, by configuration key, in the key's own unit:
    /// what `imagectl status` shows.
    pub fn limits_table(&self) -> Vec<(String, String)> {
        let mib = |bytes: u64| (bytes >> 20).to_string();
        let mut table = vec![
            (
                "max_calls_per_connection",
                self.limits.max_calls_per_connection.to_string(),
            ),
            ("handshake_timeout", self.shares.handshake.as_secs().to_string()),
            ("admin_reserve_percent", self.admin_reserve_percent.to_string()),
            ("stream_stall_timeout", self.shares.stall.as_secs().to_string()),
            ("shutdown_grace", self.limits.shutdown_grace.as_secs().to_string()),
            ("backup_stall_timeout", self.limits.backup_stall.as_secs().to_string()),
            ("max_regex_filters", self.shares.regex.max_regexes.to_string()),
            ("regex_budget_kb", (self.shares.regex.budget_bytes >> 10).to_string()),
            ("list_seats", self.shares.queue.seats.to_string()),
            ("list_queue_per_uid", self.shares.queue.per_uid.to_string()),
            ("list_queue", self.shares.queue.total.to_string()),
            ("watch_window_events", self.feed.window_events.to_string()),
            ("watch_window_mb", mib(self.feed.window_bytes as u64)),
            ("watch_batch_ms", self.feed.batch_interval.as_millis().to_string()),
            ("published_queue_events", self.published.events.to_string()),
            ("published_queue_mb", mib(self.published.bytes as u64)),
            ("keep_changes", self.store.retention.keep.to_string()),
            ("keep_changes_for", self.store.retention.keep_for.as_secs().to_string()),
            ("keep_changes_mb", mib(self.store.retention.max_bytes)),
            ("max_images_per_namespace", self.store.quotas.max_images.to_string()),
            ("max_namespace_mb", mib(self.store.quotas.max_bytes)),
            ("write_mb_per_uid", mib(self.store.write_rate_per_uid)),
            ("min_free_mb", mib(self.store.min_free_bytes)),
            ("record_cache_mb", mib(self.store.record_cache_bytes as u64)),
            ("sled_snapshot_mb", mib(self.store.reopen_after_bytes)),
            ("rotate_after_percent", self.store.rotate_after_percent.to_string()),
            ("reader_threads", self.store.reader_threads.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect::<Vec<_>>();
        for (resource, bound) in &self.shares.bounds {
            let (total, per_uid) = resource.settings();
            let show = |n: u64| if total.ends_with("_mb") { mib(n) } else { n.to_string() };
            table.push((total.to_owned(), show(bound.total)));
            table.push((per_uid.to_owned(), show(bound.per_uid)));
        }
        table
    }
}

/// Checks every value of `loaded` and works out the host's defaults.
pub fn resolve(loaded: &Loaded) -> Result<Config, String> {
    let s: &Settings = &loaded.settings;
    let num = |key: &str, value: Option<u64>, range: RangeInclusive<u64>| -> Result<u64, String> {
        let value = value.unwrap_or(*range.start());
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(format!(
                "{} = {value}: must be from {} to {}",
                loaded.origin(key),
                range.start(),
                range.end()
            ))
        }
    };
    let cache_mb = match s.cache_mb {
        Some(mb) => Some(num("cache_mb", Some(mb), 1..=65536)?),
        None => None,
    };
    let reader_threads = match s.reader_threads {
        Some(n) => num("reader_threads", Some(n), 1..=64)? as usize,
        None => StoreOptions::default().reader_threads,
    };
    let store = StoreOptions {
        sled_cache: cache_mb.map_or(StoreOptions::default().sled_cache, |mb| SledCache::fixed(mb << 20)),
        record_cache_bytes: (num("record_cache_mb", s.record_cache_mb, 0..=65536)? << 20) as usize,
        reopen_after_bytes: num("sled_snapshot_mb", s.sled_snapshot_mb, 0..=1_048_576)? << 20,
        rotate_after_percent: num("rotate_after_percent", s.rotate_after_percent, 0..=10_000)?,
        reader_threads,
        min_free_bytes: num("min_free_mb", s.min_free_mb, 0..=1_048_576)? << 20,
        retention: Retention {
            keep: num("keep_changes", s.keep_changes, 0..=1_000_000_000)?,
            keep_for: Duration::from_secs(num("keep_changes_for", s.keep_changes_for, 0..=31_536_000)?),
            max_bytes: num("keep_changes_mb", s.keep_changes_mb, 1..=1_048_576)? << 20,
        },
        quotas: Quotas {
            max_images: num(
                "max_images_per_namespace",
                s.max_images_per_namespace,
                0..=u32::MAX as u64,
            )?,
            max_bytes: num("max_namespace_mb", s.max_namespace_mb, 0..=1_048_576)? << 20,
        },
        write_rate_per_uid: num("write_mb_per_uid", s.write_mb_per_uid, 0..=65536)? << 20,
    };
    let limits = Limits {
        max_calls_per_connection: num("max_calls_per_connection", s.max_calls_per_connection, 1..=65_536)? as u32,
        shutdown_grace: Duration::from_secs(num("shutdown_grace", s.shutdown_grace, 0..=3600)?),
        backup_stall: Duration::from_secs(num("backup_stall_timeout", s.backup_stall_timeout, 1..=86400)?),
    };
    let admin_reserve_percent = num("admin_reserve_percent", s.admin_reserve_percent, 0..=50)?;
    let shares = shares(loaded, &num, admin_reserve_percent)?;
    let published = PublishedLimits {
        events: num("published_queue_events", s.published_queue_events, 1..=1_048_576)? as usize,
        bytes: (num("published_queue_mb", s.published_queue_mb, 1..=65536)? << 20) as usize,
    };
    let feed = FeedLimits {
        window_events: num("watch_window_events", s.watch_window_events, 1..=16_777_216)? as usize,
        window_bytes: (num("watch_window_mb", s.watch_window_mb, 1..=65536)? << 20) as usize,
        batch_interval: Duration::from_millis(num("watch_batch_ms", s.watch_batch_ms, 0..=1000)?),
    };
    let socket = match &s.socket {
        Some(text) => imaged_types::paths::socket_address("socket", text)
            .map_err(|e| format!("{}: {e}", loaded.origin("socket")))?,
        None => imaged_types::paths::default_socket(),
    };
    let metrics = s
        .metrics_address
        .as_deref()
        .filter(|a| !a.is_empty())
        .map(|a| crate::metrics::http::Address::parse(a, s.metrics_allow_remote.unwrap_or(false)))
        .transpose()
        .map_err(|e| format!("{}: {e}", loaded.origin("metrics_address")))?;
    let socket_mode = socket_mode(loaded, s.socket_mode.as_deref().unwrap_or("0660"))?;
    let socket_group = s.socket_group.as_deref().map(|g| group(loaded, g)).transpose()?;
    let log_level = s.log_level.clone().unwrap_or_else(|| "info".into());
    tracing_subscriber::EnvFilter::try_new(&log_level)
        .map_err(|e| format!("{} = {log_level:?}: not a log filter: {e}", loaded.origin("log_level")))?;
    for (i, grant) in s.access.iter().enumerate() {
        grant.validate(&format!("{}[{i}]", loaded.origin("access")))?;
    }
    check_exposure(socket_mode, &s.access).map_err(|e| format!("{}: {e}", loaded.origin("socket_mode")))?;
    Ok(Config {
        shares,
        published,
        socket,
        socket_mode,
        socket_group,
        root: s.root.clone().unwrap_or_else(imaged_types::paths::default_root),
        cache_mb,
        store,
        limits,
        feed,
        log_level,
        log_target: log_target(
            s.log_target.unwrap_or(LogTargetSetting::Auto),
            s.log_format.unwrap_or(LogFormat::Text),
        ),
        grants: s.access.clone(),
        metrics,
        admin_reserve_percent,
    })
}

/// Checks a numeric setting: its key, its value, and the range it must be
/// in.
type Checked<'a> = dyn Fn(&str, Option<u64>, RangeInclusive<u64>) -> Result<u64, String> + 'a;

/// The fairness settings: each shared resource's total and per-uid share
/// (at most the total), the fair queue, the regular
/// expressions' budget and the timeouts.
fn shares(loaded: &Loaded, num: &Checked<'_>, reserve_percent: u64) -> Result<ShareLimits, String> {
    let s = &loaded.settings;
    let given = |resource: Resource| -> (Option<u64>, Option<u64>) {
        match resource {
            Resource::Connections => (s.max_connections, s.max_connections_per_uid),
            Resource::MetricsConnections => (s.metrics_max_connections, s.metrics_max_connections_per_uid),
            Resource::Streams => (s.max_streams, s.max_streams_per_uid),
            Resource::Watchers => (s.max_watchers, s.max_watchers_per_uid),
            Resource::HealthWatches => (s.max_health_watches, s.max_health_watches_per_uid),
            Resource::Backups => (s.max_backups, s.max_backups_per_uid),
            Resource::Leases => (s.max_leases, s.max_leases_per_uid),
            Resource::LeaseBytes => (s.lease_mb, s.lease_mb_per_uid),
            Resource::FilterMemory => (s.watch_filter_mb, s.watch_filter_mb_per_uid),
        }
    };
    let mut bounds = Vec::new();
    for resource in Resource::ALL {
        let (total_key, per_uid_key) = resource.settings();
        let (total, per_uid) = given(resource);
        let scale = if total_key.ends_with("_mb") { 20 } else { 0 };
        let total = num(total_key, total, 1..=1_048_576)?;
        // A share larger than its total (a default, with a small total) is
        // the total.
        let per_uid = num(per_uid_key, per_uid, 1..=1_048_576)?.min(total);
        bounds.push((resource, Bound::new(total << scale, per_uid << scale, reserve_percent)));
    }
    let host = QueueLimits::default_for_host();
    let queue = QueueLimits {
        seats: match s.list_seats {
            Some(n) => num("list_seats", Some(n), 1..=1024)? as usize,
            None => host.seats,
        },
        per_uid: num("list_queue_per_uid", s.list_queue_per_uid, 1..=65_536)? as usize,
        total: num("list_queue", s.list_queue, 1..=1_048_576)? as usize,
    };
    Ok(ShareLimits {
        bounds,
        queue,
        regex: crate::filter::RegexLimits {
            max_regexes: num(
                "max_regex_filters",
                s.max_regex_filters,
                0..=crate::filter::MAX_FILTERS as u64 * 64,
            )? as usize,
            budget_bytes: (num("regex_budget_kb", s.regex_budget_kb, 64..=1_048_576)? << 10) as usize,
        },
        handshake: Duration::from_secs(num("handshake_timeout", s.handshake_timeout, 1..=300)?),
        stall: Duration::from_secs(num("stream_stall_timeout", s.stream_stall_timeout, 1..=86400)?),
    })
}

/// Refuses a socket `mode` that lets every local user connect (others'
/// write bit) while the grants give everyone more than reading: anyone on
/// the host could then write.
pub fn check_exposure(mode: u32, grants: &[Grant]) -> Result<(), String> {
    let widest = grants.iter().filter(|g| g.everyone).map(|g| g.role).max();
    match widest {
        Some(role) if mode & 0o002 != 0 && role > Role::Reader => Err(format!(
            "socket mode {mode:04o} lets every local user connect, and the access policy grants everyone {}; \
             grant everyone reader at most, or use a mode such as 0660",
            role.name()
        )),
        _ => Ok(()),
    }
}

fn socket_mode(loaded: &Loaded, text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 && mode & 0o600 == 0o600 => Ok(mode),
        Ok(_) => Err(format!(
            "{} = {text:?}: a socket mode is octal permission bits up to 0777 that let imaged's own user \
             connect (0600 at least)",
            loaded.origin("socket_mode")
        )),
        Err(_) => Err(format!(
            "{} = {text:?}: not an octal mode such as 0660",
            loaded.origin("socket_mode")
        )),
    }
}

fn group(loaded: &Loaded, text: &str) -> Result<u32, String> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(text) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("{} = {text:?}: no such group", loaded.origin("socket_group"))),
        Err(e) => Err(format!("{} = {text:?}: {e}", loaded.origin("socket_group"))),
    }
}

/// `auto` is journald when systemd connected stderr to the journal:
/// `JOURNAL_STREAM` names stderr's device and inode.
fn log_target(setting: LogTargetSetting, format: LogFormat) -> LogTarget {
    match setting {
        LogTargetSetting::Journald => LogTarget::Journald,
        LogTargetSetting::Stderr => LogTarget::Stderr(format),
        LogTargetSetting::Auto if stderr_is_journal() => LogTarget::Journald,
        LogTargetSetting::Auto => LogTarget::Stderr(format),
    }
}

fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}
