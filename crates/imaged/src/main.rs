//! The `imaged` binary: settings, logging, start-up, reload and
//! signal-driven shutdown. Everything else is in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use imaged::access::Policy;
use imaged::access::layer::SharedPolicy;
use imaged::build_info::{REVISION, VERSION};
use imaged::config::{self, Config, Loaded, LogFormat, LogTarget, Settings};
use imaged::feed::Feed;
use imaged::shares::Shares;
use imaged::store::Store;
use imaged::{listener, server, systemd};
use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::{EnvFilter, Registry, reload};

mod offline;

imaged::global_allocator!();

const LONG_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("IMAGED_GIT_REVISION"), ")");

/// imaged: a local image-metadata daemon serving containerd's image APIs on a
/// Unix socket.
///
/// Settings come from, in rising precedence: built-in defaults, the
/// configuration file, IMAGED_* environment variables, and flags. `imaged
/// config` prints the settings in force and where each came from. SIGHUP
/// reloads the access policy and the log filter from the file.
#[derive(Debug, Parser)]
#[command(name = "imaged", version = LONG_VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Configuration file (TOML) [default: /etc/imaged/config.toml, when it
    /// exists]
    #[arg(long, env = "IMAGED_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,

    #[command(flatten)]
    settings: Settings,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify the indexes and namespace counters of a stopped daemon's data
    /// directory against its records. Exits 1 when anything disagrees.
    Check,
    /// Inspect a stopped daemon's journal and say what a repair would keep
    /// and lose; with --yes, make it. Only a damaged journal is repaired:
    /// sled's own files can only be restored from a backup.
    Repair {
        /// Make the repair, dropping the revisions it names as lost
        #[arg(long)]
        yes: bool,
    },
    /// Restore a backup file (from `imagectl backup`) into a data
    /// directory: an empty one, or with --force one that holds a store,
    /// which is replaced whole once the file is checked and staged. The
    /// daemon must be stopped.
    Restore {
        /// Replace the store the directory holds
        #[arg(long)]
        force: bool,
        /// The backup file; `-` reads standard input
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the configuration in force, as TOML, with where each value
    /// came from; exits 1, naming the problem, when it is not valid.
    Config,
}

/// How the daemon's settings were read, kept to read them again on SIGHUP.
#[derive(Clone)]
struct Origin {
    settings: Settings,
    matches: ArgMatches,
    file: Option<PathBuf>,
}

impl Origin {
    fn load(&self) -> Result<(Loaded, Config), String> {
        let loaded = config::load(&self.settings, &self.matches, self.file.as_deref())?;
        let config = config::resolve(&loaded)?;
        Ok((loaded, config))
    }
}

/// The command line's definition: every setting is global, so it may
/// follow a subcommand (`imaged config --max-streams 9`, `imaged check
/// --root DIR`).
fn command() -> clap::Command {
    Cli::command().mut_args(|arg| match arg.get_id().as_str() {
        "help" | "version" => arg,
        _ => arg.global(true),
    })
}

/// Parses the command line. A bad value that came from an `IMAGED_*`
/// variable is named as that variable, not as the flag it stands for.
fn parse() -> ArgMatches {
    let command = command();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match command.clone().try_get_matches_from(&args) {
        Ok(matches) => matches,
        Err(e) => {
            if let Some(message) = from_environment(&command, &args, &e) {
                eprintln!("{message}");
                std::process::exit(2);
            }
            e.exit()
        }
    }
}

/// clap's refusal of `e`, reworded when its value came from the
/// environment rather than from `args`.
fn from_environment(command: &clap::Command, args: &[std::ffi::OsString], e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(shown)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = shown.split_whitespace().next()?.strip_prefix("--")?;
    let flag = format!("--{long}");
    let on_line = args
        .iter()
        .filter_map(|a| a.to_str())
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    let arg = command.get_arguments().find(|a| a.get_long() == Some(long))?;
    let var = arg.get_env()?.to_str()?;
    if on_line || std::env::var_os(var).is_none() {
        return None;
    }
    let first = e.render().to_string();
    let first = first.lines().next()?;
    Some(first.replace(&format!("'{shown}'"), &format!("${var} (the variable for {flag})")))
}

fn main() -> ExitCode {
    let matches = parse();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let origin = Origin {
        settings: cli.settings,
        matches,
        file: cli.config,
    };
    let (loaded, config) = match origin.load() {
        Ok(both) => both,
        Err(e) => {
            eprintln!("imaged: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Config) => {
            return match config::render(&loaded, &config) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("imaged config: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Check) => {
            init_logging(&config);
            return offline::check(config.root, config.cache_mb);
        }
        Some(Command::Repair { yes }) => {
            init_logging(&config);
            return offline::repair(config.root, config.cache_mb, yes);
        }
        Some(Command::Restore { force, file }) => {
            init_logging(&config);
            return offline::restore(config.root, config.cache_mb, &file, force);
        }
        None => {}
    }
    let log = init_logging(&config);
    match run(config, loaded, origin, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logged once, where every other line of the daemon's goes;
            // the log line names imaged already.
            tracing::error!("cannot start: {e}");
            systemd::status(&format!("failed: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// Reloads the log filter while the daemon runs.
type LogReload = reload::Handle<EnvFilter, Registry>;

/// Sends logs where `config` says, filtered by its `log_level`.
fn init_logging(config: &Config) -> LogReload {
    use tracing_subscriber::prelude::*;
    let (filter, handle) = reload::Layer::new(EnvFilter::new(&config.log_level));
    let registry = tracing_subscriber::registry().with(filter);
    let stderr = |format| {
        let lines = tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        match format {
            LogFormat::Text => lines.boxed(),
            LogFormat::Json => lines.json().boxed(),
        }
    };
    match config.log_target {
        LogTarget::Stderr(format) => registry.with(stderr(format)).init(),
        LogTarget::Journald => match tracing_journald::layer() {
            Ok(journald) => registry.with(journald.with_syslog_identifier("imaged".into())).init(),
            Err(e) => {
                registry.with(stderr(LogFormat::Text)).init();
                tracing::warn!(error = %e, "cannot reach journald; logging to stderr");
            }
        },
    }
    handle
}

fn run(
    config: Config,
    loaded: Loaded,
    origin: Origin,
    log: LogReload,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let feed = Feed::new(config.feed);
    let root = &config.root;

    // A start that will be refused creates nothing: the socket is probed
    // (without binding) before the data directory is opened or made, and the
    // store's lock, which says whether another daemon owns the data, is taken
    // before the socket is bound. A socket systemd passed is used as it is.
    raise_fd_limit();
    let passed = systemd::passed_socket()?;
    if passed.is_none() {
        listener::probe(&config.socket)?;
    }
    let opened = systemd::extending("opening the store (replaying the journal)", || {
        Store::open_with_hook(root, &config.store, Some(feed.hook()))
    });
    let store = opened.map_err(|e| {
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
    // Before the socket is bound, since a client may connect and signal as
    // soon as it is: a SIGTERM from then on is a clean stop and a SIGHUP a
    // reload, never the default action's kill.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (shutdown, hangups) = {
        let _context = runtime.enter();
        (shutdown_signal(), signal(SignalKind::hangup())?)
    };
    let (listener, socket_file, socket) = match passed {
        Some(passed) => (passed.listener, None, passed.path),
        None => {
            let (listener, file) = listener::bind(&config.socket, config.socket_mode, config.socket_group)?;
            (listener, Some(file), config.socket.clone())
        }
    };
    // The socket as it is, whoever made it: its mode decides who can
    // connect, and its group who is admin.
    let (mode, gid) = listener::mode_and_group(&socket)?;
    config::resolve::check_exposure(mode, &config.grants).map_err(|e| format!("{}: {e}", socket.display()))?;
    let policy = SharedPolicy::new(Policy::new(config.grants.clone(), Some(gid)));
    imaged::filter::set_regex_limits(config.shares.regex);
    let shares = if std::env::var_os(NO_SHARES).is_some() {
        tracing::warn!("{NO_SHARES} is set: no share is counted or bounded; for imaged-bench alone");
        Shares::off(&config.shares)
    } else {
        Shares::new(&config.shares)
    };
    let counts = store.counts()?;
    let metrics = match &config.metrics {
        Some(address) => Some(runtime.block_on(imaged::metrics::http::Listener::bind(
            address,
            config.socket_mode,
            config.socket_group,
        ))?),
        None => None,
    };
    tracing::info!(
        version = VERSION,
        revision = REVISION,
        socket = %socket.display(),
        socket_mode = format!("{mode:04o}"),
        root = %root.display(),
        images = counts.images,
        namespaces = counts.namespaces,
        sled_cache_mib = store.sled_cache_bytes() >> 20,
        "imaged ready"
    );
    let serving = systemd::serving_status(counts.images, counts.namespaces);
    systemd::notify(&[NotifyState::Ready, NotifyState::Status(&serving)]);

    let limits: server::admin::Limits = std::sync::Arc::new(std::sync::RwLock::new(config.limits_table()));
    runtime.block_on(async {
        let keep_alive = tokio::spawn(systemd::keep_alive(store.clone()));
        let reloads = Reloads {
            origin,
            loaded,
            policy: policy.clone(),
            shares: shares.clone(),
            store: store.clone(),
            limits: limits.clone(),
            socket_mode: mode,
            socket_gid: gid,
            log,
        };
        let reloading = tokio::spawn(reloads.run(hangups));
        let stopping = async {
            shutdown.await;
            systemd::notify(&[
                NotifyState::Stopping,
                NotifyState::Status("stopping: finishing calls in flight"),
            ]);
        };
        let served = server::Served {
            store: store.clone(),
            feed,
            policy,
            limits: config.limits,
            shares,
            published: config.published,
            settings: limits,
            metrics,
        };
        let result = server::serve(listener, served, stopping).await;
        keep_alive.abort();
        reloading.abort();
        tracing::info!("stopped accepting; in-flight calls finished; flushing");
        systemd::status("stopping: flushing the store");
        store.close().await;
        result
    })?;
    drop(socket_file);
    tracing::info!("imaged stopped");
    Ok(())
}

/// What a SIGHUP reloads, and from where.
struct Reloads {
    origin: Origin,
    loaded: Loaded,
    policy: SharedPolicy,
    shares: Shares,
    store: Store,
    /// What Status reports as in force.
    limits: server::admin::Limits,
    socket_mode: u32,
    socket_gid: u32,
    log: LogReload,
}

/// Settings a reload puts in force; a change to any other waits for a
/// restart.
const RELOADABLE: &[&str] = &[
    "access",
    "log_level",
    "admin_reserve_percent",
    "handshake_timeout",
    "stream_stall_timeout",
    "max_regex_filters",
    "regex_budget_kb",
    "list_seats",
    "list_queue_per_uid",
    "list_queue",
    "keep_changes_mb",
    "keep_changes",
    "keep_changes_for",
    "max_images_per_namespace",
    "max_namespace_mb",
    "write_mb_per_uid",
];

/// Whether a reload puts `key` in force: the listed ones, and every fair
/// share's total and per-uid keys.
fn reloadable(key: &str) -> bool {
    RELOADABLE.contains(&key)
        || imaged::shares::Resource::ALL.iter().any(|r| {
            let (total, per_uid) = r.settings();
            key == total || key == per_uid
        })
}

/// Set in the environment, this turns the share machinery off: nothing is
/// counted, bounded or queued. It is for `imaged-bench neighbours` alone,
/// which measures what the machinery costs against a daemon without it.
const NO_SHARES: &str = imaged::shares::NO_SHARES;

impl Reloads {
    /// On each SIGHUP, reads the settings again. A bad file is refused and
    /// the settings in force stay; a good one puts the access policy and
    /// the log filter in force, and says what changed.
    async fn run(mut self, mut hangups: tokio::signal::unix::Signal) {
        while hangups.recv().await.is_some() {
            systemd::notify(&[NotifyState::Status("reloading the configuration")]);
            match self.reload() {
                Ok(()) => {}
                Err(e) => tracing::error!("reload refused; the settings in force stay: {e}"),
            }
            systemd::notify(&[NotifyState::Status("serving")]);
        }
    }

    fn reload(&mut self) -> Result<(), String> {
        let (loaded, config) = self.origin.load()?;
        config::resolve::check_exposure(self.socket_mode, &config.grants)?;
        let changes = config::changes(&self.loaded.settings, &loaded.settings)?;
        self.policy.replace(Policy::new(config.grants, Some(self.socket_gid)));
        self.shares.reconfigure(&config.shares);
        imaged::filter::set_regex_limits(config.shares.regex);
        self.store.retune(&config.store);
        // Keys that wait for a restart keep their old values, so Status
        // shows what is in force, and the next reload says again that they
        // differ.
        let kept = Loaded {
            settings: config::merge_reloaded(&self.loaded.settings, &loaded.settings, reloadable)?,
            ..loaded
        };
        *self.limits.write().unwrap_or_else(|e| e.into_inner()) = config::resolve(&kept)?.limits_table();
        self.log
            .reload(EnvFilter::new(&config.log_level))
            .map_err(|e| format!("cannot set the log filter: {e}"))?;
        if changes.is_empty() {
            tracing::info!("configuration reloaded: nothing changed");
        }
        for (key, old, new) in changes {
            if reloadable(&key) {
                tracing::info!(key, old, new, "configuration reloaded: in force now");
            } else {
                tracing::warn!(
                    key,
                    old,
                    new,
                    "configuration changed; it takes effect at the next restart"
                );
            }
        }
        self.loaded = kept;
        Ok(())
    }
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
