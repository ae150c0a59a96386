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
use crate::store::{Retention, SledCache, StoreOptions};

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
    /// The log filter, checked.
    pub log_level: String,
    /// Where logs go.
    pub log_target: LogTarget,
    /// The access policy's grants, checked.
    pub grants: Vec<Grant>,
    /// Where metrics are served, if anywhere.
    pub metrics: Option<crate::metrics::http::Address>,
}

impl Config {
    /// The values worked out for this host where no source gave one, by
    /// key, for `imaged config`.
    pub fn host_defaults(&self) -> Vec<(&'static str, toml::Value)> {
        vec![
            ("socket", toml::Value::String(self.socket.display().to_string())),
            ("root", toml::Value::String(self.root.display().to_string())),
            ("reader_threads", toml::Value::Integer(self.store.reader_threads as i64)),
        ]
    }

    /// The bounds in force, by configuration key, in the key's own unit:
    /// what `imagectl status` shows.
    pub fn limits_table(&self) -> Vec<(String, String)> {
        let mib = |bytes: u64| (bytes >> 20).to_string();
        let table = [
            ("max_connections", self.limits.max_connections.to_string()),
            ("max_streams", self.limits.max_streams.to_string()),
            ("shutdown_grace", self.limits.shutdown_grace.as_secs().to_string()),
            ("backup_stall_timeout", self.limits.backup_stall.as_secs().to_string()),
            ("max_watchers", self.feed.max_watchers.to_string()),
            ("watch_window_events", self.feed.window_events.to_string()),
            ("watch_window_mb", mib(self.feed.window_bytes as u64)),
            ("watch_batch_ms", self.feed.batch_interval.as_millis().to_string()),
            ("keep_changes", self.store.retention.keep.to_string()),
            ("keep_changes_for", self.store.retention.keep_for.as_secs().to_string()),
            ("min_free_mb", mib(self.store.min_free_bytes)),
            ("record_cache_mb", mib(self.store.record_cache_bytes as u64)),
            ("sled_snapshot_mb", mib(self.store.reopen_after_bytes)),
            ("reader_threads", self.store.reader_threads.to_string()),
        ];
        table.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
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
        reader_threads,
        min_free_bytes: num("min_free_mb", s.min_free_mb, 0..=1_048_576)? << 20,
        retention: Retention {
            keep: num("keep_changes", s.keep_changes, 0..=1_000_000_000)?,
            keep_for: Duration::from_secs(num("keep_changes_for", s.keep_changes_for, 0..=31_536_000)?),
        },
    };
    let limits = Limits {
        max_connections: num("max_connections", s.max_connections, 1..=1_048_576)? as usize,
        max_streams: num("max_streams", s.max_streams, 1..=1_048_576)? as usize,
        shutdown_grace: Duration::from_secs(num("shutdown_grace", s.shutdown_grace, 0..=3600)?),
        backup_stall: Duration::from_secs(num("backup_stall_timeout", s.backup_stall_timeout, 1..=86400)?),
    };
    let feed = FeedLimits {
        max_watchers: num("max_watchers", s.max_watchers, 1..=1_048_576)? as usize,
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
