//! The daemon's settings, and where each one came from.
//!
//! Every setting is one field of [`Settings`], which is at once the flags
//! (clap, with an `IMAGED_*` environment variable each) and the
//! configuration file (serde, TOML). Settings come from, in rising
//! precedence: built-in defaults, the file (`/etc/imaged/config.toml` or
//! `--config`), the environment, and flags. [`load`] merges them key by key,
//! remembering each key's [`Source`], and [`resolve`](resolve::resolve)
//! checks every value once, whatever its source, into a [`Config`]. An
//! unknown key, a bad value or an unreadable file is an error that names the
//! file, the key and the value.

pub mod resolve;
pub mod trusted;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::access::Grant;
use crate::feed::FeedLimits;
use crate::server::Limits;
use crate::shares::defaults;
use crate::store::Retention;

pub use resolve::{Config, LogTarget, resolve};

/// The configuration file read when `--config` is not given, if it exists.
pub const DEFAULT_FILE: &str = "/etc/imaged/config.toml";

/// Every setting of the daemon: each field is a flag, an `IMAGED_*`
/// variable and a key of the configuration file. `None` is "not given
/// here"; defaults that depend on the host (the socket, the data directory,
/// caches) are worked out by [`resolve()`].
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Unix socket to serve on: a path or unix://PATH [default:
    /// /run/imaged/imaged.sock as root, else under $XDG_RUNTIME_DIR].
    /// Ignored when systemd passes a socket
    #[arg(long, env = "IMAGED_SOCKET", value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,

    /// Mode of the socket imaged binds, in octal. A mode that lets every
    /// local user connect (others' write bit, as 0666) needs an access
    /// policy that grants everyone reading at most
    #[arg(long, env = "IMAGED_SOCKET_MODE", value_name = "OCTAL", default_value = "0660")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<String>,

    /// Group of the socket imaged binds, a name or a gid; its members are
    /// admins [default: imaged's own group]
    #[arg(long, env = "IMAGED_SOCKET_GROUP", value_name = "GROUP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,

    /// Data directory [default: /var/lib/imaged as root, else
    /// $XDG_DATA_HOME/imaged]
    #[arg(long, env = "IMAGED_ROOT", value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,

    /// sled page cache size, in MiB [default: 32, growing with the store to
    /// at most 256, a twelfth of sled's files, each time sled opens]. Given,
    /// the cache keeps this size
    #[arg(long, env = "IMAGED_CACHE_MB", value_name = "MIB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_mb: Option<u64>,

    /// Record cache size, in MiB: recently read and written images, answered
    /// by Get without a trip to sled (0 disables it)
    #[arg(long, env = "IMAGED_RECORD_CACHE_MB", value_name = "MIB", default_value = "8")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_cache_mb: Option<u64>,

    /// After this many MiB of journaled writes, close and reopen sled so it
    /// writes a snapshot: a restart (after a crash too) then scans at most
    /// this much log. A reopen waits for a lull from half this, and pauses
    /// reads that miss the record cache and writes while sled closes and
    /// opens (docs/PERFORMANCE.md) (0 never reopens)
    #[arg(long, env = "IMAGED_SLED_SNAPSHOT_MB", value_name = "MIB", default_value = "64")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sled_snapshot_mb: Option<u64>,

    /// Rotate sled (copy it to a fresh one in the background and swap it
    /// in, which also gives back the disk that churn left) once its files
    /// have grown by this percent of their size after the last rotation,
    /// and at least --sled-snapshot-mb has been journaled. A sled whose
    /// open takes longer than 50 ms is then never reopened under callers
    /// (docs/ARCHITECTURE.md) (0 never rotates: every sled is reopened
    /// instead)
    #[arg(
        long,
        env = "IMAGED_ROTATE_AFTER_PERCENT",
        value_name = "PERCENT",
        default_value = "50"
    )]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotate_after_percent: Option<u64>,

    /// Threads that read single records from sled for Gets the record cache
    /// cannot answer [default: one per core, 2 to 8]
    #[arg(long, env = "IMAGED_READER_THREADS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reader_threads: Option<u64>,

    /// Refuse writes (RESOURCE_EXHAUSTED) while the file system holding the
    /// data directory has less than this many MiB free, so sled's own
    /// writes always find room; reads go on (0 keeps no reserve)
    #[arg(long, env = "IMAGED_MIN_FREE_MB", value_name = "MIB", default_value = "64")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_free_mb: Option<u64>,

    /// Connections served at once, by everyone; past it a new connection
    /// is closed at once with a GOAWAY saying why. SIGHUP reloads it
    #[arg(long, env = "IMAGED_MAX_CONNECTIONS", value_name = "N", default_value = defaults::MAX_CONNECTIONS.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,

    /// Connections one uid other than an admin may have open at once.
    /// SIGHUP reloads it
    #[arg(long, env = "IMAGED_MAX_CONNECTIONS_PER_UID", value_name = "N",
          default_value = defaults::MAX_CONNECTIONS_PER_UID.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_uid: Option<u64>,

    /// Percent of every shared bound (connections, streams, watchers,
    /// leases, ...) kept for the admins: root, imaged's user and the
    /// socket's group. Every other uid together stops short of it. SIGHUP
    /// reloads it
    #[arg(long, env = "IMAGED_ADMIN_RESERVE_PERCENT", value_name = "PERCENT",
          default_value = defaults::ADMIN_RESERVE_PERCENT.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_reserve_percent: Option<u64>,

    /// Seconds a new connection has to send HTTP/2's preface and first
    /// SETTINGS before it is closed. SIGHUP reloads it
    #[arg(long, env = "IMAGED_HANDSHAKE_TIMEOUT", value_name = "SECS",
          default_value = defaults::HANDSHAKE_TIMEOUT.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<u64>,

    /// Calls in flight on one connection (HTTP/2's
    /// SETTINGS_MAX_CONCURRENT_STREAMS); a client waits for one to end
    /// before it starts another
    #[arg(long, env = "IMAGED_MAX_CALLS_PER_CONNECTION", value_name = "N",
          default_value = defaults::MAX_CALLS_PER_CONNECTION.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_calls_per_connection: Option<u64>,

    /// ListStreams open at once; more are refused with RESOURCE_EXHAUSTED.
    /// SIGHUP reloads it
    #[arg(long, env = "IMAGED_MAX_STREAMS", value_name = "N", default_value = defaults::MAX_STREAMS.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_streams: Option<u64>,

    /// ListStreams one uid other than an admin may have open at once.
    /// SIGHUP reloads it
    #[arg(long, env = "IMAGED_MAX_STREAMS_PER_UID", value_name = "N",
          default_value = defaults::MAX_STREAMS_PER_UID.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_streams_per_uid: Option<u64>,

    /// Seconds a ListStream's or a Subscribe's client may take nothing
    /// that is ready for it before the stream is ended with
    /// RESOURCE_EXHAUSTED saying so. SIGHUP reloads it
    #[arg(long, env = "IMAGED_STREAM_STALL_TIMEOUT", value_name = "SECS",
          default_value = defaults::STREAM_STALL_TIMEOUT.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_stall_timeout: Option<u64>,

    /// Backups running at once. SIGHUP reloads it
    #[arg(long, env = "IMAGED_MAX_BACKUPS", value_name = "N", default_value = defaults::MAX_BACKUPS.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backups: Option<u64>,

    /// Backups one uid other than an admin may run at once. SIGHUP reloads
    /// it
    #[arg(long, env = "IMAGED_MAX_BACKUPS_PER_UID", value_name = "N",
          default_value = defaults::MAX_BACKUPS_PER_UID.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_backups_per_uid: Option<u64>,

    /// On SIGTERM, how many seconds to wait for calls in flight and for
    /// clients to close their connections before closing them; streams end
    /// at once with UNAVAILABLE
    #[arg(long, env = "IMAGED_SHUTDOWN_GRACE", value_name = "SECS",
          default_value = (Limits::default().shutdown_grace.as_secs()).to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<u64>,

    /// How many seconds a backup's client may take no data before the
    /// backup is ended with ABORTED (a running backup holds the change
    /// log's compaction back)
    #[arg(long, env = "IMAGED_BACKUP_STALL_TIMEOUT", value_name = "SECS",
          default_value = (Limits::default().backup_stall.as_secs()).to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_stall_timeout: Option<u64>,

    /// Changes the change log keeps for watches that start in the past,
    /// whatever their age
    #[arg(long, env = "IMAGED_KEEP_CHANGES", value_name = "N", default_value = (Retention::default().keep).to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_changes: Option<u64>,

    /// Seconds the change log keeps every change, whatever their number
    #[arg(long, env = "IMAGED_KEEP_CHANGES_FOR", value_name = "SECS",
          default_value = (Retention::default().keep_for.as_secs()).to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_changes_for: Option<u64>,

    /// MiB the change log may hold, whatever keep_changes and
    /// keep_changes_for say: past it the oldest changes are compacted, so
    /// churn cannot fill the disk. SIGHUP reloads it
    #[arg(long, env = "IMAGED_KEEP_CHANGES_MB", value_name = "MIB",
          default_value = (Retention::default().max_bytes >> 20).to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_changes_mb: Option<u64>,

    /// Images one namespace may hold; a write that would create more is
    /// refused with RESOURCE_EXHAUSTED (0: no quota). SIGHUP reloads it
    #[arg(long, env = "IMAGED_MAX_IMAGES_PER_NAMESPACE", value_name = "N", default_value = "0")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_images_per_namespace: Option<u64>,

    /// MiB of image records one namespace may hold; a write that would grow
    /// it past this is refused with RESOURCE_EXHAUSTED (0: no quota).
    /// SIGHUP reloads it
    #[arg(long, env = "IMAGED_MAX_NAMESPACE_MB", value_name = "MIB",
          default_value = defaults::MAX_NAMESPACE_MB.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_namespace_mb: Option<u64>,

    /// MiB of journal a second one uid other than an admin may write; a
    /// uid writing faster has its writes wait, so its heavy writes cannot
    /// slow everyone's (0: no pace). SIGHUP reloads it
    #[arg(long, env = "IMAGED_WRITE_MB_PER_UID", value_name = "MIB",
          default_value = defaults::WRITE_MB_PER_UID.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_mb_per_uid: Option<u64>,

    /// Watchers (Watch and Subscribe calls) attached at once; more are
    /// refused with RESOURCE_EXHAUSTED. SIGHUP reloads it
    #[arg(long, env = "IMAGED_MAX_WATCHERS", value_name = "N", default_value = defaults::MAX_WATCHERS.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_watchers: Option<u64>,

    /// Watchers one uid other than an admin may have attached at once.
    /// SIGHUP reloads it
    #[arg(long, env = "IMAGED_MAX_WATCHERS_PER_UID", value_name = "N",
          default_value = defaults::MAX_WATCHERS_PER_UID.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_watchers_per_uid: Option<u64>,

    /// grpc.health.v1 Watch streams open at once. SIGHUP reloads it
    #[arg(long, env = "IMAGED_MAX_HEALTH_WATCHES", value_name = "N",
          default_value = defaults::MAX_HEALTH_WATCHES.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_health_watches: Option<u64>,

    /// Health Watch streams one uid other than an admin may have open at
    /// once. SIGHUP reloads it
    #[arg(long, env = "IMAGED_MAX_HEALTH_WATCHES_PER_UID", value_name = "N",
          default_value = defaults::MAX_HEALTH_WATCHES_PER_UID.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_health_watches_per_uid: Option<u64>,

    /// MiB of compiled regular expressions the filters of every attached
    /// watcher may hold together. SIGHUP reloads it
    #[arg(long, env = "IMAGED_WATCH_FILTER_MB", value_name = "MIB",
          default_value = defaults::WATCH_FILTER_MB.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_filter_mb: Option<u64>,

    /// MiB of compiled regular expressions the watchers of one uid other
    /// than an admin may hold. SIGHUP reloads it
    #[arg(long, env = "IMAGED_WATCH_FILTER_MB_PER_UID", value_name = "MIB",
          default_value = defaults::WATCH_FILTER_MB_PER_UID.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_filter_mb_per_uid: Option<u64>,

    /// Regular-expression selectors (`~=`) one request's filters may hold.
    /// SIGHUP reloads it
    #[arg(long, env = "IMAGED_MAX_REGEX_FILTERS", value_name = "N",
          default_value = defaults::MAX_REGEX_FILTERS.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_regex_filters: Option<u64>,

    /// KiB one request's regular expressions may take compiled, with their
    /// matching caches, all of them together. SIGHUP reloads it
    #[arg(long, env = "IMAGED_REGEX_BUDGET_KB", value_name = "KIB",
          default_value = defaults::REGEX_BUDGET_KB.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex_budget_kb: Option<u64>,

    /// Expensive requests (lists with regular expressions, whole lists,
    /// pages over 100) served at once; the others queue, a queue per uid,
    /// served in turn [default: half the cores, at least 1]. SIGHUP
    /// reloads it
    #[arg(long, env = "IMAGED_LIST_SEATS", value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_seats: Option<u64>,

    /// Expensive requests one uid other than an admin may have queued or
    /// running at once. SIGHUP reloads it
    #[arg(long, env = "IMAGED_LIST_QUEUE_PER_UID", value_name = "N",
          default_value = defaults::LIST_QUEUE_PER_UID.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_queue_per_uid: Option<u64>,

    /// Expensive requests queued at once, every uid together. SIGHUP
    /// reloads it
    #[arg(long, env = "IMAGED_LIST_QUEUE", value_name = "N", default_value = defaults::LIST_QUEUE.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_queue: Option<u64>,

    /// Leases held at once (they live in memory). SIGHUP reloads it
    #[arg(long, env = "IMAGED_MAX_LEASES", value_name = "N", default_value = defaults::MAX_LEASES.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_leases: Option<u64>,

    /// Leases one uid other than an admin may hold. SIGHUP reloads it
    #[arg(long, env = "IMAGED_MAX_LEASES_PER_UID", value_name = "N",
          default_value = defaults::MAX_LEASES_PER_UID.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_leases_per_uid: Option<u64>,

    /// MiB of lease ids, labels and resources held at once. SIGHUP reloads
    /// it
    #[arg(long, env = "IMAGED_LEASE_MB", value_name = "MIB", default_value = defaults::LEASE_MB.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_mb: Option<u64>,

    /// MiB of leases one uid other than an admin may hold. SIGHUP reloads
    /// it
    #[arg(long, env = "IMAGED_LEASE_MB_PER_UID", value_name = "MIB",
          default_value = defaults::LEASE_MB_PER_UID.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_mb_per_uid: Option<u64>,

    /// Events clients Publish (or Forward) kept for subscribers that have
    /// not read them yet; a subscriber further behind is ended
    #[arg(long, env = "IMAGED_PUBLISHED_QUEUE_EVENTS", value_name = "N",
          default_value = defaults::PUBLISHED_QUEUE_EVENTS.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_queue_events: Option<u64>,

    /// MiB of published events kept for subscribers (as for
    /// --published-queue-events)
    #[arg(long, env = "IMAGED_PUBLISHED_QUEUE_MB", value_name = "MIB",
          default_value = defaults::PUBLISHED_QUEUE_MB.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_queue_mb: Option<u64>,

    /// Events of recent changes kept for live watchers: a watcher that falls
    /// further behind the writers is ended with RESOURCE_EXHAUSTED and the
    /// revision to resume from
    #[arg(long, env = "IMAGED_WATCH_WINDOW_EVENTS", value_name = "N",
          default_value = (FeedLimits::default().window_events as u64).to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_window_events: Option<u64>,

    /// MiB of recent changes kept for live watchers (as for
    /// --watch-window-events)
    #[arg(long, env = "IMAGED_WATCH_WINDOW_MB", value_name = "MIB",
          default_value = ((FeedLimits::default().window_bytes >> 20) as u64).to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_window_mb: Option<u64>,

    /// Milliseconds a watcher that has caught up waits after an answer
    /// before the next while changes keep coming, so that the commits of
    /// that time go in one answer; the first change after a quiet spell goes
    /// at once. 0 sends every commit as it lands
    #[arg(long, env = "IMAGED_WATCH_BATCH_MS", value_name = "MS",
          default_value = (FeedLimits::default().batch_interval.as_millis() as u64).to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch_batch_ms: Option<u64>,

    /// What to log, as RUST_LOG filters: a level (error, warn, info, debug,
    /// trace) or directives such as `info,imaged::store=debug`. SIGHUP
    /// reloads it
    #[arg(long, env = "IMAGED_LOG_LEVEL", value_name = "FILTER", default_value = "info")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,

    /// Log format on stderr
    #[arg(long, env = "IMAGED_LOG_FORMAT", value_enum, default_value = "text")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,

    /// Where logs go: journald, stderr, or auto (journald when systemd
    /// connected stderr to the journal, else stderr)
    #[arg(long, env = "IMAGED_LOG_TARGET", value_enum, default_value = "auto")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_target: Option<LogTargetSetting>,

    /// Serve Prometheus metrics at this address: a Unix socket path, or a
    /// loopback host:port such as 127.0.0.1:9090 [default: off]
    #[arg(long, env = "IMAGED_METRICS_ADDRESS", value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,

    /// Let metrics_address be an address other hosts can reach
    #[arg(long, env = "IMAGED_METRICS_ALLOW_REMOTE", value_name = "BOOL", default_value = "false",
          action = clap::ArgAction::Set)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_allow_remote: Option<bool>,

    /// Scrapers served at once on the metrics listener. SIGHUP reloads it
    #[arg(long, env = "IMAGED_METRICS_MAX_CONNECTIONS", value_name = "N",
          default_value = defaults::METRICS_MAX_CONNECTIONS.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_max_connections: Option<u64>,

    /// Metrics connections one uid other than an admin may have open at
    /// once. SIGHUP reloads it
    #[arg(long, env = "IMAGED_METRICS_MAX_CONNECTIONS_PER_UID", value_name = "N",
          default_value = defaults::METRICS_MAX_CONNECTIONS_PER_UID.to_string())]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_max_connections_per_uid: Option<u64>,

    /// Grants of the access policy (`[[access]]` tables): only in the
    /// configuration file. SIGHUP reloads them
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<Grant>,
}

/// Log line format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The `log_target` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTargetSetting {
    /// journald when `JOURNAL_STREAM` names stderr, else stderr.
    Auto,
    /// Human-readable or JSON lines on stderr.
    Stderr,
    /// The systemd journal, with structured fields.
    Journald,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Built in.
    Default,
    /// The configuration file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// A flag.
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Env(name) => write!(f, "environment {name}"),
            Source::Flag(name) => write!(f, "flag {name}"),
        }
    }
}

/// The merged settings, and where each key came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings in force.
    pub settings: Settings,
    /// Each key given anywhere (defaults included), by its TOML name.
    pub sources: BTreeMap<String, Source>,
    /// The file read, if one was.
    pub file: Option<PathBuf>,
}

impl Loaded {
    /// Says where `key`'s value came from and what it is, for messages:
    /// `flag --cache-mb`, `file /etc/imaged/config.toml, key cache_mb`.
    pub fn origin(&self, key: &str) -> String {
        match self.sources.get(key) {
            Some(Source::File(path)) => format!("{}, key {key}", path.display()),
            Some(source) => source.to_string(),
            None => format!("{key} (default)"),
        }
    }
}

/// Merges the built-in defaults, the configuration file, the environment
/// and the flags of `matches` (parsed into `cli`), key by key.
///
/// `file` is `--config` when given: then it must exist. Without it,
/// [`DEFAULT_FILE`] is read if it exists.
pub fn load(cli: &Settings, matches: &ArgMatches, file: Option<&Path>) -> Result<Loaded, String> {
    let (path, text) = match file {
        Some(path) => (
            Some(path.to_owned()),
            Some(trusted::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?),
        ),
        None => match trusted::read(Path::new(DEFAULT_FILE)) {
            Ok(text) => (Some(PathBuf::from(DEFAULT_FILE)), Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
            Err(e) => return Err(format!("cannot read {DEFAULT_FILE}: {e}")),
        },
    };
    let from_file = match (&path, &text) {
        (Some(path), Some(text)) => {
            let parsed: Settings =
                toml::from_str(text).map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))?;
            table(&parsed)?
        }
        _ => toml::Table::new(),
    };
    let from_cli = table(cli)?;
    // Each flag's id (its key), long name and variable, from clap's own
    // definitions.
    let args = Settings::augment_args(clap::Command::new("imaged"));
    let names: BTreeMap<String, (String, String)> = args
        .get_arguments()
        .map(|arg| {
            let long = arg.get_long().unwrap_or_default().to_string();
            let env = arg
                .get_env()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default();
            (arg.get_id().to_string(), (long, env))
        })
        .collect();
    let mut merged = toml::Table::new();
    let mut sources = BTreeMap::new();
    let keys: std::collections::BTreeSet<&String> = from_cli.keys().chain(from_file.keys()).collect();
    for key in keys {
        let given = names
            .get(key.as_str())
            .and_then(|(long, env)| match matches.value_source(key) {
                Some(ValueSource::CommandLine) => Some(Source::Flag(format!("--{long}"))),
                Some(ValueSource::EnvVariable) => Some(Source::Env(env.clone())),
                _ => None,
            });
        let (value, source) = match (given, from_file.get(key.as_str()), path.as_ref()) {
            (Some(source), _, _) => (from_cli[key.as_str()].clone(), source),
            (None, Some(value), Some(path)) => (value.clone(), Source::File(path.clone())),
            _ => (from_cli[key.as_str()].clone(), Source::Default),
        };
        merged.insert(key.clone(), value);
        sources.insert(key.clone(), source);
    }
    let settings = merged
        .try_into()
        .map_err(|e: toml::de::Error| format!("the merged settings: {}", e.to_string().trim_end()))?;
    Ok(Loaded {
        settings,
        sources,
        file: path,
    })
}

fn table(settings: &Settings) -> Result<toml::Table, String> {
    toml::Table::try_from(settings).map_err(|e| format!("cannot represent the settings: {e}"))
}

/// The effective configuration as TOML, each key followed by where its
/// value came from: what `imaged config` prints.
pub fn render(loaded: &Loaded, config: &Config) -> Result<String, String> {
    let mut effective = table(&loaded.settings)?;
    // Defaults worked out for this host, shown as the values in force.
    for (key, value) in config.host_defaults() {
        effective.entry(key.to_string()).or_insert(value);
    }
    let mut out = String::new();
    if let Some(file) = &loaded.file {
        out.push_str(&format!("# configuration file: {}\n", file.display()));
    } else {
        out.push_str(&format!("# configuration file: none ({DEFAULT_FILE} does not exist)\n"));
    }
    let access = effective.remove("access");
    for (key, value) in &effective {
        let source = loaded
            .sources
            .get(key)
            .map_or_else(|| "default, for this host".to_string(), Source::to_string);
        out.push_str(&format!("{key} = {value}  # {source}\n"));
    }
    // Settings with no value in force, so every key is on the page.
    let flags = Settings::augment_args(clap::Command::new("imaged"));
    for arg in flags.get_arguments() {
        let key = arg.get_id().as_str();
        if key != "access" && !effective.contains_key(key) {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let help = help.lines().next().unwrap_or_default();
            out.push_str(&format!("# {key} is unset: {help}\n"));
        }
    }
    match access {
        Some(access) => {
            let source = loaded.sources.get("access").map_or("default".into(), Source::to_string);
            out.push_str(&format!("\n# access grants: {source}\n"));
            let mut grants = toml::Table::new();
            grants.insert("access".into(), access);
            out.push_str(&toml::to_string(&grants).map_err(|e| e.to_string())?);
        }
        None => out.push_str(
            "\n# access grants: none; root, imaged's own user and the socket's group are admins, nobody else \
             is granted anything\n",
        ),
    }
    Ok(out)
}

/// `old` with the keys `reloadable` names taken from `new`: what is in
/// force after a reload.
pub fn merge_reloaded(old: &Settings, new: &Settings, reloadable: impl Fn(&str) -> bool) -> Result<Settings, String> {
    let (mut merged, new) = (table(old)?, table(new)?);
    let keys: Vec<String> = merged.keys().chain(new.keys()).cloned().collect();
    for key in keys.into_iter().filter(|k| reloadable(k)) {
        match new.get(&key) {
            Some(value) => merged.insert(key, value.clone()),
            None => merged.remove(&key),
        };
    }
    merged
        .try_into()
        .map_err(|e: toml::de::Error| format!("the reloaded settings: {}", e.to_string().trim_end()))
}

/// The keys whose values differ between `old` and `new`, with both values:
/// what a reload logs.
pub fn changes(old: &Settings, new: &Settings) -> Result<Vec<(String, String, String)>, String> {
    let (old, new) = (table(old)?, table(new)?);
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let show = |v: Option<&toml::Value>| v.map_or_else(|| "(unset)".to_string(), toml::Value::to_string);
    Ok(keys
        .into_iter()
        .filter(|key| old.get(key.as_str()) != new.get(key.as_str()))
        .map(|key| (key.clone(), show(old.get(key.as_str())), show(new.get(key.as_str()))))
        .collect())
}
