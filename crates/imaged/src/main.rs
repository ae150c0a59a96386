//! The `imaged` binary: flags, logging, start-up and signal-driven shutdown.
//! Everything else is in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use imaged::build_info::{REVISION, VERSION};
use imaged::feed::{Feed, FeedLimits};
use imaged::server::Limits;
use imaged::store::{Retention, SledCache, Store, StoreOptions};
use imaged::{listener, server};
use tokio::signal::unix::{SignalKind, signal};

imaged::global_allocator!();

const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("IMAGED_GIT_REVISION"), ")");

/// imaged: a local image-metadata daemon serving containerd's image APIs on a
/// Unix socket.
#[derive(Debug, Parser)]
#[command(name = "imaged", version = LONG_VERSION, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Unix socket to serve on: a path or unix://PATH [default:
    /// /run/imaged/imaged.sock as root, else under $XDG_RUNTIME_DIR]
    #[arg(long, env = "IMAGED_SOCKET", value_name = "PATH", value_parser = parse_socket)]
    socket: Option<PathBuf>,

    /// Data directory [default: /var/lib/imaged as root, else
    /// $XDG_DATA_HOME/imaged]
    #[arg(long, env = "IMAGED_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,

    /// sled page cache size, in MiB [default: 32, growing with the store to
    /// at most 256, a twelfth of sled's files, each time sled opens]. Given,
    /// the cache keeps this size
    #[arg(long, env = "IMAGED_CACHE_MB", value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    cache_mb: Option<u64>,

    /// Record cache size, in MiB: recently read and written images, answered
    /// by Get without a trip to sled (0 disables it)
    #[arg(long, env = "IMAGED_RECORD_CACHE_MB", default_value_t = 8, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(0..=65536))]
    record_cache_mb: u64,

    /// After this many MiB of journaled writes, close and reopen sled so it
    /// writes a snapshot: a restart (after a crash too) then scans at most
    /// this much log. Each reopen pauses reads and writes while sled closes
    /// and opens: about 0.2 s at 100,000 images, 0.5-1 s at a million
    /// (0 never reopens)
    #[arg(long, env = "IMAGED_SLED_SNAPSHOT_MB", default_value_t = 64, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(0..=1048576))]
    sled_snapshot_mb: u64,

    /// Threads that read single records from sled for Gets the record cache
    /// cannot answer [default: one per core, 2 to 8]
    #[arg(long, env = "IMAGED_READER_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=64))]
    reader_threads: Option<u64>,

    /// Refuse writes (RESOURCE_EXHAUSTED) while the file system holding the
    /// data directory has less than this many MiB free, so sled's own
    /// writes always find room; reads go on (0 keeps no reserve)
    #[arg(long, env = "IMAGED_MIN_FREE_MB", default_value_t = 64, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(0..=1048576))]
    min_free_mb: u64,

    /// Connections served at once; more wait in the socket's backlog until
    /// one closes
    #[arg(long, env = "IMAGED_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections as u64,
          value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1048576))]
    max_connections: u64,

    /// ListStreams open at once; more are refused with RESOURCE_EXHAUSTED
    #[arg(long, env = "IMAGED_MAX_STREAMS", default_value_t = Limits::default().max_streams as u64,
          value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1048576))]
    max_streams: u64,

    /// On SIGTERM, how many seconds to wait for calls in flight and for
    /// clients to close their connections before closing them; streams end
    /// at once with UNAVAILABLE
    #[arg(long, env = "IMAGED_SHUTDOWN_GRACE", default_value_t = Limits::default().shutdown_grace.as_secs(),
          value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=3600))]
    shutdown_grace: u64,

    /// Changes the change log keeps for watches that start in the past,
    /// whatever their age
    #[arg(long, env = "IMAGED_KEEP_CHANGES", default_value_t = Retention::default().keep,
          value_name = "N", value_parser = clap::value_parser!(u64).range(0..=1_000_000_000))]
    keep_changes: u64,

    /// Seconds the change log keeps every change, whatever their number
    #[arg(long, env = "IMAGED_KEEP_CHANGES_FOR", default_value_t = Retention::default().keep_for.as_secs(),
          value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
    keep_changes_for: u64,

    /// Watchers (Watch and Subscribe calls) attached at once; more are
    /// refused with RESOURCE_EXHAUSTED
    #[arg(long, env = "IMAGED_MAX_WATCHERS", default_value_t = FeedLimits::default().max_watchers as u64,
          value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1048576))]
    max_watchers: u64,

    /// Events of recent changes kept for live watchers: a watcher that falls
    /// further behind the writers is ended with RESOURCE_EXHAUSTED and the
    /// revision to resume from
    #[arg(long, env = "IMAGED_WATCH_WINDOW_EVENTS", default_value_t = FeedLimits::default().window_events as u64,
          value_name = "N", value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    watch_window_events: u64,

    /// MiB of recent changes kept for live watchers (as for
    /// --watch-window-events)
    #[arg(long, env = "IMAGED_WATCH_WINDOW_MB", default_value_t = (FeedLimits::default().window_bytes >> 20) as u64,
          value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=65536))]
    watch_window_mb: u64,

    /// Log format on stderr
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify the indexes and namespace counters of a stopped daemon's data
    /// directory against its records. Exits 1 when anything disagrees.
    Check {
        /// Data directory [default: as for the daemon]
        #[arg(long, env = "IMAGED_ROOT", value_name = "DIR")]
        root: Option<PathBuf>,
    },
    /// Inspect a stopped daemon's journal and say what a repair would keep
    /// and lose; with --yes, make it. Only a damaged journal is repaired:
    /// sled's own files can only be restored from a backup.
    Repair {
        /// Data directory [default: as for the daemon]
        #[arg(long, env = "IMAGED_ROOT", value_name = "DIR")]
        root: Option<PathBuf>,
        /// Make the repair, dropping the revisions it names as lost
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Some(Command::Check { root }) => {
            return check(root.unwrap_or_else(imaged_types::paths::default_root), cli.cache_mb);
        }
        Some(Command::Repair { root, yes }) => {
            return repair(
                root.unwrap_or_else(imaged_types::paths::default_root),
                cli.cache_mb,
                yes,
            );
        }
        None => {}
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logged once, on stderr, as every other line of the daemon's.
            tracing::error!("imaged: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `--socket` with the one address parser clients use too.
fn parse_socket(text: &str) -> Result<PathBuf, String> {
    imaged_types::paths::socket_address("--socket", text).map_err(|e| e.to_string())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMAGED_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let socket = cli.socket.unwrap_or_else(imaged_types::paths::default_socket);
    let root = cli.root.unwrap_or_else(imaged_types::paths::default_root);
    let options = StoreOptions {
        sled_cache: sled_cache(cli.cache_mb),
        record_cache_bytes: (cli.record_cache_mb * 1024 * 1024) as usize,
        reopen_after_bytes: cli.sled_snapshot_mb * 1024 * 1024,
        reader_threads: cli
            .reader_threads
            .map_or_else(|| StoreOptions::default().reader_threads, |n| n as usize),
        min_free_bytes: cli.min_free_mb << 20,
        retention: Retention {
            keep: cli.keep_changes,
            keep_for: std::time::Duration::from_secs(cli.keep_changes_for),
        },
    };
    let feed = Feed::new(FeedLimits {
        max_watchers: cli.max_watchers as usize,
        window_events: cli.watch_window_events as usize,
        window_bytes: (cli.watch_window_mb << 20) as usize,
    });

    // A start that will be refused creates nothing: the socket is probed
    // (without binding) before the data directory is opened or made, and the
    // store's lock, which says whether another daemon owns the data, is taken
    // before the socket is bound.
    raise_fd_limit();
    listener::probe(&socket)?;
    let store = Store::open_with_hook(&root, &options, Some(feed.hook())).map_err(|e| {
        let text = e.to_string();
        if text.contains("No space left") {
            format!(
                "{text}. The file system holding {} is full: free space and start imaged again; nothing \
                 acknowledged is lost, the journal keeps it",
                root.display()
            )
        } else {
            text
        }
    })?;
    feed.start(store.revision());
    let (listener, socket_file) = listener::bind(&socket)?;
    let images = store.image_count()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    // Before "ready": a SIGTERM from then on is a clean stop, never the
    // default action's kill.
    let shutdown = {
        let _context = runtime.enter();
        shutdown_signal()
    };
    tracing::info!(
        version = VERSION,
        revision = REVISION,
        socket = %socket.display(),
        root = %root.display(),
        images,
        sled_cache_mib = store.sled_cache_bytes() >> 20,
        "imaged ready"
    );

    runtime.block_on(async {
        let limits = Limits {
            max_connections: cli.max_connections as usize,
            max_streams: cli.max_streams as usize,
            shutdown_grace: std::time::Duration::from_secs(cli.shutdown_grace),
        };
        let result = server::serve(listener, store.clone(), feed, shutdown, limits).await;
        tracing::info!("stopped accepting; in-flight calls finished; flushing");
        store.close().await;
        result
    })?;
    drop(socket_file);
    tracing::info!("imaged stopped");
    Ok(())
}

/// Raises the soft limit on open files to the hard one: each connection
/// takes a descriptor, and the default soft limit (often 1024) is far below
/// what `--max-connections` allows.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the limit on open files");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the limit on open files"),
    }
}

/// sled's cache: `--cache-mb` when given, else the default that grows with
/// the store.
fn sled_cache(cache_mb: Option<u64>) -> SledCache {
    cache_mb.map_or(StoreOptions::default().sled_cache, |mb| SledCache::fixed(mb << 20))
}

/// `imaged check`: opens the store (taking its lock, so the daemon must be
/// stopped), verifies it and prints a report.
fn check(root: PathBuf, cache_mb: Option<u64>) -> ExitCode {
    let options = StoreOptions {
        sled_cache: sled_cache(cache_mb),
        ..StoreOptions::default()
    };
    let result = Store::open(&root, &options)
        .map_err(|e| e.to_string())
        .and_then(|store| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let report = store.check().await.map_err(|e| e.to_string());
                store.close().await;
                report
            })
        });
    match result {
        Ok(report) => {
            println!(
                "checked {} images, {} index entries, {} namespaces in {}",
                report.images,
                report.index_entries,
                report.namespaces,
                root.display()
            );
            for problem in &report.problems {
                println!("problem: {problem}");
            }
            if report.problem_count == 0 {
                println!("ok");
                ExitCode::SUCCESS
            } else {
                println!("{} problems", report.problem_count);
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("imaged check: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `imaged repair`: says what the journal's damage costs, and with `yes`
/// repairs it. Exits 0 when the store needs no repair or was repaired, 1 on
/// an error, and 2 when a repair is needed and was not made.
fn repair(root: PathBuf, cache_mb: Option<u64>, yes: bool) -> ExitCode {
    let options = StoreOptions {
        sled_cache: sled_cache(cache_mb),
        ..StoreOptions::default()
    };
    match imaged::store::repair(&root, &options, yes) {
        Ok(report) => match report.loses {
            None => {
                println!(
                    "the journal of {} is whole: nothing to repair (revision {})",
                    root.display(),
                    report.keeps
                );
                ExitCode::SUCCESS
            }
            Some((from, to)) if report.repaired => {
                println!(
                    "repaired {}: it holds revisions up to {}; revisions {from}..={to} were lost. Run `imaged check`",
                    root.display(),
                    report.keeps
                );
                ExitCode::SUCCESS
            }
            Some((from, to)) => {
                println!(
                    "the journal of {} is damaged. A repair keeps every revision up to {} and loses revisions \
                     {from}..={to}, acknowledged after the damage. Restore a backup instead if you have one; \
                     else run `imaged repair --root {} --yes` to make the repair",
                    root.display(),
                    report.keeps,
                    root.display()
                );
                ExitCode::from(2)
            }
        },
        Err(e) => {
            eprintln!("imaged repair: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
/// Installs the handlers of SIGTERM and SIGINT now (inside a runtime), and
/// returns what waits for either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop imaged with SIGKILL");
            return std::future::pending().await;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    }
}
