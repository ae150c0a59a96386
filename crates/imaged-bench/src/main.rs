//! `imaged-bench`: a load generator for image-metadata services, and a
//! comparison of imaged with containerd, a null server and a sled-only
//! server in one run.
//!
//! ```text
//! imaged-bench run --address SOCK --workload get --calls 50000 --concurrency 16 --connections 1
//! imaged-bench compare [--smoke] [--images 100000] [--out docs/benchmarks/compare.md]
//! imaged-bench watch [--smoke] [--writers-only] [--out docs/benchmarks/watch.md]
//! imaged-bench neighbours [--smoke] [--out docs/benchmarks/fairness.md]   (as root)
//! imaged-bench hog --attack watchers --address SOCK   (what neighbours runs as another uid)
//! ```
//!
//! Absolute times on a shared machine are noise; the ratios measured side by
//! side in one run are the result.

mod giveback;
mod hostile;
mod load;
mod maintenance;
mod neighbours;
mod null;
mod ops;
mod servers;
mod sled_only;
mod watch;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use load::{Report, Workload};
use servers::Server;

// The client and the null and sled-only servers allocate as the daemon does.
imaged::global_allocator!();

/// Load generator and comparison for imaged.
#[derive(Debug, Parser)]
#[command(name = "imaged-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one workload against a server on a socket.
    Run {
        /// The server's socket (containerd's images API).
        #[arg(long)]
        address: PathBuf,
        /// What to call.
        #[arg(long, value_enum)]
        workload: Kind,
        /// How many calls.
        #[arg(long, default_value_t = 10_000)]
        calls: u64,
        /// Concurrent callers.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Connections the callers share.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// First image number (create, delete) or how many exist (get, update).
        #[arg(long, default_value_t = 0)]
        images: u64,
    },
    /// Serve the null images API on a socket until killed (`compare` runs it
    /// as its own process, like the daemons it measures).
    Null {
        /// Where to listen.
        #[arg(long)]
        socket: PathBuf,
        /// How many images its List answers with.
        #[arg(long, default_value_t = 4_000)]
        list_size: u64,
        /// Be the sled-only server: store creates and label updates in a sled
        /// database here, as imaged lays them out, before answering.
        #[arg(long)]
        sled: Option<PathBuf>,
    },
    /// Run the same workloads against containerd, imaged and a null server in
    /// one run, print a table of ratios and write it to a file.
    Compare {
        /// A short run that only proves the benchmark works (for CI).
        #[arg(long)]
        smoke: bool,
        /// How many images to fill each store to.
        #[arg(long, default_value_t = 100_000)]
        images: u64,
        /// The imaged binary [default: next to this one]
        #[arg(long)]
        imaged: Option<PathBuf>,
        /// Where to write the results (Markdown).
        #[arg(long, default_value = "docs/benchmarks/compare.md")]
        out: PathBuf,
        /// How many times to measure all three servers, each time from
        /// fresh: the report gives every round's ratios and their median,
        /// and the details of the last round.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
        rounds: u64,
    },
    /// Run the watch workloads against imaged and containerd in one run:
    /// writers with watchers, fan-out, and a subscriber that never reads.
    Watch {
        /// A short run that only proves the workloads work (for CI).
        #[arg(long)]
        smoke: bool,
        /// The imaged binary [default: next to this one]
        #[arg(long)]
        imaged: Option<PathBuf>,
        /// Where to write the results (Markdown).
        #[arg(long, default_value = "docs/benchmarks/watch.md")]
        out: PathBuf,
        /// Only the writers with watchers (no containerd, no fan-out):
        /// quick enough to profile the daemon under.
        #[arg(long)]
        writers_only: bool,
    },
    /// Take one bound of a daemon as a hostile local caller would, hold it
    /// until killed, and say what was got (`ready` once in place).
    Hog {
        /// What to attack.
        #[arg(long, value_enum)]
        attack: hostile::Attack,
        /// The daemon's socket.
        #[arg(long)]
        address: PathBuf,
        /// The daemon's metrics socket (for metrics-idle).
        #[arg(long)]
        metrics: Option<PathBuf>,
        /// The namespace the attack acts in.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// How many connections, streams, leases, calls or rounds.
        #[arg(long, default_value_t = 1000)]
        count: u64,
    },
    /// Make Gets and creates in a namespace for a while and print their
    /// latencies and errors as JSON: the victim of a hog.
    Victim {
        /// The daemon's socket.
        #[arg(long)]
        address: PathBuf,
        /// The victim's namespace (it needs a writer grant there).
        #[arg(long, default_value = "victim")]
        namespace: String,
        /// How long to run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Calls in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Every hog against imaged, each beside a victim of another uid: the
    /// victim's latencies with and without it, side by side; and what the
    /// share machinery costs (fairness on and off). Needs root (setpriv).
    Neighbours {
        /// A short run that only proves it works (for CI).
        #[arg(long)]
        smoke: bool,
        /// The imaged binary [default: next to this one]
        #[arg(long)]
        imaged: Option<PathBuf>,
        /// Where to write the results (Markdown).
        #[arg(long, default_value = "docs/benchmarks/fairness.md")]
        out: PathBuf,
        /// Only these attacks (and no cost comparison), to measure one again.
        #[arg(long, value_enum)]
        only: Vec<hostile::Attack>,
    },
    /// Latency through the engine's maintenance: fill a store, then creates
    /// and Gets of random images together while sled is kept up; p99, max,
    /// and the reopens that fell in the window.
    Maintenance {
        /// A short run that only proves it works (for CI).
        #[arg(long)]
        smoke: bool,
        /// Images the store is filled to.
        #[arg(long, default_value_t = 300_000)]
        images: u64,
        /// About how long the creates and Gets run together, in seconds.
        #[arg(long, default_value_t = 90)]
        seconds: u64,
        /// The imaged binary [default: next to this one]
        #[arg(long)]
        imaged: Option<PathBuf>,
        /// Where to write the results (Markdown).
        #[arg(long, default_value = "docs/benchmarks/maintenance.md")]
        out: PathBuf,
        /// Extra flags for the daemon, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Disk given back: a store filled, mostly deleted and churned, then
    /// one rotation (`Admin/Compact`); its size before and after beside a
    /// fresh store holding the same live images.
    Giveback {
        /// A short run that only proves it works (for CI).
        #[arg(long)]
        smoke: bool,
        /// Images the churned store is filled to (a tenth of them stay).
        #[arg(long, default_value_t = 200_000)]
        images: u64,
        /// The imaged binary [default: next to this one]
        #[arg(long)]
        imaged: Option<PathBuf>,
        /// Where to write the results (Markdown).
        #[arg(long, default_value = "docs/benchmarks/giveback.md")]
        out: PathBuf,
    },
    /// What metrics cost (imaged with metrics off and on, side by side), and
    /// an online backup and restore of a filled store.
    Ops {
        /// A short run that only proves it works (for CI).
        #[arg(long)]
        smoke: bool,
        /// Images the backup's store is filled to; 0 skips the backup.
        #[arg(long, default_value_t = 1_000_000)]
        images: u64,
        /// The imaged binary [default: next to this one]
        #[arg(long)]
        imaged: Option<PathBuf>,
        /// Where to write the results (Markdown).
        #[arg(long, default_value = "docs/benchmarks/ops.md")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Create,
    Get,
    Update,
    Delete,
    List,
    /// A paginated walk of everything over the seed API, pages of 1000.
    Walk,
    /// One ListStream of everything over the seed API.
    Stream,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    match Cli::parse().command {
        Command::Run {
            address,
            workload,
            calls,
            concurrency,
            connections,
            images,
        } => {
            let channels = load::connect(&address, connections).await.map_err(|e| e.to_string())?;
            if let Kind::Walk | Kind::Stream = workload {
                for _ in 0..calls {
                    let (seen, took) = match workload {
                        Kind::Walk => load::walk(channels[0].clone(), 1000).await?,
                        _ => load::stream(channels[0].clone()).await?,
                    };
                    println!("{seen} images in {}", ms(took));
                }
                return Ok(());
            }
            let workload = match workload {
                Kind::Create => Workload::Create { start: images },
                Kind::Get => Workload::Get {
                    existing: images.max(1),
                },
                Kind::Update => Workload::Update {
                    existing: images.max(1),
                },
                Kind::Delete => Workload::Delete { start: images },
                Kind::List => Workload::List,
                Kind::Walk | Kind::Stream => unreachable!("answered above"),
            };
            let report = load::run(&channels, workload, calls, concurrency).await?;
            println!(
                "{} calls in {:.2} s: {:.0}/s, p50 {}, p99 {}, max {}",
                report.calls,
                report.elapsed.as_secs_f64(),
                report.rate(),
                ms(report.p50),
                ms(report.p99),
                ms(report.max)
            );
            Ok(())
        }
        Command::Null {
            socket,
            list_size,
            sled,
        } => {
            let sled = match sled {
                Some(dir) => Some(
                    sled_only::SledWrites::open(&dir).map_err(|e| format!("opening sled in {}: {e}", dir.display()))?,
                ),
                None => None,
            };
            null::spawn(&socket, list_size, sled)
                .map_err(|e| format!("listening on {}: {e}", socket.display()))?
                .await
                .map_err(|e| e.to_string())
        }
        Command::Compare {
            smoke,
            images,
            imaged,
            out,
            rounds,
        } => {
            let (images, rounds) = if smoke { (6_000, 1) } else { (images, rounds) };
            compare(smoke, images, imaged, out, rounds).await
        }
        Command::Hog {
            attack,
            address,
            metrics,
            namespace,
            count,
        } => {
            let hog = hostile::Hog {
                address,
                metrics,
                namespace,
                count,
            };
            hostile::run(attack, hog).await
        }
        Command::Victim {
            address,
            namespace,
            seconds,
            concurrency,
        } => hostile::victim(&address, &namespace, seconds, concurrency).await,
        Command::Neighbours {
            smoke,
            imaged,
            out,
            only,
        } => {
            let imaged = imaged_binary(imaged)?;
            let report = neighbours::run(smoke, &imaged, &only).await?;
            publish(&out, &report)
        }
        Command::Maintenance {
            smoke,
            images,
            seconds,
            imaged,
            out,
            args,
        } => {
            let imaged = imaged_binary(imaged)?;
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let plan = maintenance::Plan::new(smoke, images, seconds, args);
            let report = maintenance::run(&plan, &imaged, dir.path()).await;
            if std::env::var_os("IMAGED_BENCH_KEEP").is_some() {
                // The daemon's log and store, for a look after the run.
                eprintln!("kept {}", dir.keep().display());
            }
            let report = report?;
            publish(&out, &report)
        }
        Command::Giveback {
            smoke,
            images,
            imaged,
            out,
        } => {
            let imaged = imaged_binary(imaged)?;
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let report = giveback::run(&giveback::Plan::new(smoke, images), &imaged, dir.path()).await?;
            publish(&out, &report)
        }
        Command::Ops {
            smoke,
            images,
            imaged,
            out,
        } => {
            let imaged = imaged_binary(imaged)?;
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let report = ops::run(&ops::Plan::new(smoke, images), &imaged, dir.path()).await?;
            publish(&out, &report)
        }
        Command::Watch {
            smoke,
            imaged,
            out,
            writers_only,
        } => {
            let imaged = imaged_binary(imaged)?;
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let plan = watch::Plan {
                writers_only,
                ..watch::Plan::new(smoke)
            };
            let report = watch::compare(&plan, &imaged, dir.path()).await?;
            publish(&out, &report)
        }
    }
}

/// The imaged binary: `given`, or the one built next to this one.
fn imaged_binary(given: Option<PathBuf>) -> Result<PathBuf, String> {
    match given {
        Some(path) => Ok(path),
        None => Ok(std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("imaged")),
    }
}

/// Prints `report` and writes it to `out`.
fn publish(out: &std::path::Path, report: &str) -> Result<(), String> {
    println!("{report}");
    std::fs::write(out, report).map_err(|e| format!("writing {}: {e}", out.display()))?;
    eprintln!("written to {}", out.display());
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Sizes of a comparison run.
struct Plan {
    create_c1: u64,
    create_c16: u64,
    updates: u64,
    gets: u64,
    lists: u64,
    fill_to: u64,
}

/// One server's results.
#[derive(Default)]
struct Results {
    create_c1: Option<Report>,
    create_c16: Option<Report>,
    update_c16: Option<Report>,
    get_c16_1: Option<Report>,
    get_c32_4: Option<Report>,
    /// Gets spread over the whole filled store: few are recently used.
    get_filled: Option<Report>,
    list_4000: Option<Report>,
    fill: Vec<(u64, Report)>,
    list_full: Option<Result<Report, String>>,
    walk: Option<(u64, Duration)>,
    stream: Option<(u64, Duration)>,
    rss_mib: Option<f64>,
    disk_mib: Option<f64>,
    startup: Option<Duration>,
}

/// What a measured server keeps, so which workloads mean something on it.
#[derive(Clone, Copy, PartialEq)]
enum Keeps {
    /// Nothing: the null server.
    Nothing,
    /// Writes only: the sled-only server, whose reads are the null server's.
    Writes,
    /// Everything: a daemon.
    Everything,
}

async fn measure(socket: &std::path::Path, plan: &Plan, keeps: Keeps) -> Result<Results, String> {
    let one = load::connect(socket, 1).await.map_err(|e| e.to_string())?;
    let four = load::connect(socket, 4).await.map_err(|e| e.to_string())?;
    let mut r = Results {
        create_c1: Some(load::run(&one, Workload::Create { start: 0 }, plan.create_c1, 1).await?),
        create_c16: Some(load::run(&one, Workload::Create { start: plan.create_c1 }, plan.create_c16, 16).await?),
        ..Results::default()
    };
    let existing = plan.create_c1 + plan.create_c16;
    // The sled-only server's reads are the null server's: not worth a run.
    let reads = keeps != Keeps::Writes;
    if reads {
        r.list_4000 = Some(load::run(&one, Workload::List, plan.lists, 1).await?);
    }
    r.update_c16 = Some(load::run(&one, Workload::Update { existing }, plan.updates, 16).await?);
    if reads {
        r.get_c16_1 = Some(load::run(&one, Workload::Get { existing }, plan.gets, 16).await?);
        r.get_c32_4 = Some(load::run(&four, Workload::Get { existing }, plan.gets, 32).await?);
    }
    if keeps != Keeps::Nothing {
        let step = (plan.fill_to - existing) / 10;
        r.fill = load::fill(&one, existing, plan.fill_to, step.max(1), 16).await?;
    }
    if keeps == Keeps::Everything {
        r.get_filled = Some(load::run(&one, Workload::Get { existing: plan.fill_to }, plan.gets, 16).await?);
        r.list_full = Some(load::run(&one, Workload::List, 1, 1).await);
    }
    Ok(r)
}

/// Each server's results in one round: the null server, the sled-only server,
/// containerd, imaged.
type Round = Vec<(&'static str, Results)>;

async fn compare(smoke: bool, fill_to: u64, imaged: Option<PathBuf>, out: PathBuf, rounds: u64) -> Result<(), String> {
    let plan = if smoke {
        Plan {
            create_c1: 200,
            create_c16: 3_800,
            updates: 400,
            gets: 2_000,
            lists: 3,
            fill_to,
        }
    } else {
        Plan {
            create_c1: 1_000,
            create_c16: 3_000,
            updates: 8_000,
            gets: 50_000,
            lists: 20,
            fill_to,
        }
    };
    let imaged = imaged_binary(imaged)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut measured: Vec<Round> = Vec::new();
    for round in 1..=rounds {
        eprintln!("round {round} of {rounds}");
        let round_dir = dir.path().join(format!("round-{round}"));
        std::fs::create_dir_all(&round_dir).map_err(|e| e.to_string())?;
        measured.push(compare_round(&plan, &imaged, &round_dir).await?);
        // The round's stores are no longer needed; the next round starts from
        // an empty disk as this one did.
        let _ = std::fs::remove_dir_all(&round_dir);
    }

    let floors = Floors {
        sync: durable_write_floor(dir.path()).map_err(|e| format!("measuring the disk's sync latency: {e}"))?,
        sled: sled_floor(&dir.path().join("sled-floor"), plan.fill_to)
            .map_err(|e| format!("measuring sled's footprint: {e}"))?,
    };
    let report = render(&plan, &measured, smoke, &floors);
    publish(&out, &report)
}

/// Measures the null server, containerd and imaged once each, one after the
/// other, each from an empty store under `dir`.
async fn compare_round(plan: &Plan, imaged: &std::path::Path, dir: &std::path::Path) -> Result<Round, String> {
    let mut all: Round = Vec::new();
    eprintln!("null server…");
    // A process of its own, as the daemons are: in this process it would
    // share the client's runtime and skip the cross-process wake-ups every
    // real server pays.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let list_size = plan.create_c1 + plan.create_c16;
    let null = Server::null(&exe, dir, list_size, None)?;
    all.push(("null server", measure(&null.socket, plan, Keeps::Nothing).await?));
    null.stop();

    eprintln!("sled-only server…");
    nix::unistd::sync();
    let sled_only = Server::null(&exe, dir, list_size, Some(dir.join("sled-only")))?;
    let mut results = measure(&sled_only.socket, plan, Keeps::Writes).await?;
    results.rss_mib = Some(sled_only.rss_mib());
    results.disk_mib = Some(sled_only.disk_mib());
    all.push(("sled-only server", results));
    sled_only.stop();

    for which in ["containerd", "imaged"] {
        eprintln!("{which}…");
        let sub = dir.join(which);
        std::fs::create_dir_all(&sub).map_err(|e| e.to_string())?;
        // Each daemon starts on a quiet disk: the previous one's writes,
        // still being written back, would otherwise slow this one's syncs.
        nix::unistd::sync();
        let server = match which {
            "containerd" => Server::containerd(&sub)?,
            _ => Server::imaged(imaged, &sub)?,
        };
        let mut results = measure(&server.socket, plan, Keeps::Everything).await?;
        results.rss_mib = Some(server.rss_mib());
        results.disk_mib = Some(server.disk_mib());
        if which == "imaged" {
            let channel = load::connect(&server.socket, 1)
                .await
                .map_err(|e| e.to_string())?
                .remove(0);
            results.walk = Some(load::walk(channel.clone(), 1000).await?);
            results.stream = Some(load::stream(channel).await?);
            // Start-up with the filled store.
            let socket = server.socket.clone();
            let data = server.data.clone();
            server.stop();
            let restarted = Server::imaged(imaged, &sub)?;
            assert_eq!((restarted.socket.clone(), restarted.data.clone()), (socket, data));
            results.startup = Some(restarted.startup);
        }
        all.push((which, results));
    }
    Ok(all)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0))
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cores} cores ({cpu}), {:.0} GiB memory, Linux {}",
        mem as f64 / 1048576.0,
        kernel.trim()
    )
}

/// The latency of the smallest durable write on this disk: a 512-byte
/// `pwrite` to a preallocated file and an `fdatasync`, median of 1000. No
/// durable write can be acknowledged faster.
/// What this machine and imaged's storage engine allow, measured in the run.
struct Floors {
    /// A durable write's latency: see [`durable_write_floor`].
    sync: Duration,
    /// sled's footprint for the images alone: see [`sled_floor`].
    sled: SledFloor,
}

/// sled's footprint for a store's images alone.
struct SledFloor {
    images: u64,
    /// Bytes of keys and values written.
    raw_bytes: u64,
    disk_mib: f64,
}

/// The disk space sled (imaged's storage engine, with imaged's default
/// cache) takes for the images of a fill alone: one key per image, its
/// namespace and name, holding containerd's protobuf encoding of it. No
/// index, journal, revision or namespace record, and sled is flushed only
/// every 4 MiB, as imaged's checkpoints do. Whatever imaged stores beyond
/// this only adds to it.
fn sled_floor(dir: &std::path::Path, images: u64) -> Result<SledFloor, sled::Error> {
    use prost::Message;
    let db = sled::Config::new().path(dir).cache_capacity(32 << 20).open()?;
    let tree = db.open_tree("images")?;
    let (mut raw_bytes, mut unflushed) = (0, 0);
    for n in 0..images {
        let image = load::image(n);
        let key = format!("default\0{}", image.name);
        let value = image.encode_to_vec();
        let bytes = (key.len() + value.len()) as u64;
        tree.insert(key.as_bytes(), value)?;
        raw_bytes += bytes;
        unflushed += bytes;
        if unflushed > 4 << 20 {
            db.flush()?;
            unflushed = 0;
        }
    }
    db.flush()?;
    let floor = SledFloor {
        images,
        raw_bytes,
        disk_mib: servers::disk_mib(dir),
    };
    drop(tree);
    drop(db);
    let _ = std::fs::remove_dir_all(dir);
    Ok(floor)
}

fn durable_write_floor(dir: &std::path::Path) -> std::io::Result<Duration> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("floor");
    let file = std::fs::File::create(&path)?;
    file.write_all_at(&vec![0; 1 << 20], 0)?;
    file.sync_all()?;
    let mut times = Vec::with_capacity(1000);
    for n in 0..1000u64 {
        let start = std::time::Instant::now();
        file.write_all_at(&[n as u8; 512], n * 512 % (1 << 20))?;
        file.sync_data()?;
        times.push(start.elapsed());
    }
    std::fs::remove_file(&path)?;
    times.sort();
    Ok(times[times.len() / 2])
}

/// The null server's, containerd's and imaged's results in `round`.
fn servers(round: &Round) -> (&Results, &Results, &Results) {
    let find = |name: &str| &round.iter().find(|(n, _)| *n == name).expect("server").1;
    (find("null server"), find("containerd"), find("imaged"))
}

/// The sled-only server's results in `round`.
fn sled_only_of(round: &Round) -> &Results {
    &round
        .iter()
        .find(|(n, _)| *n == "sled-only server")
        .expect("the sled-only server")
        .1
}

/// A fill's last batch rate over its first's, and its worst p99 over its
/// first's.
fn fill_trend(fill: &[(u64, Report)]) -> Option<(f64, f64)> {
    let ((_, first), (_, last)) = (fill.first()?, fill.last()?);
    let worst = fill.iter().map(|(_, r)| r.p99).max()?;
    Some((
        last.rate() / first.rate(),
        worst.as_secs_f64() / first.p99.as_secs_f64().max(1e-9),
    ))
}

/// One of the issue's targets, as read off a round.
struct Target {
    /// What is measured.
    label: &'static str,
    /// The bound the issue sets.
    goal: Goal,
    /// What the value counts.
    unit: Unit,
    /// The fill size the issue sets the target at, when it names one.
    at: Option<u64>,
    /// Whether the sled-only server's value, taken in imaged's place, bounds
    /// imaged's: true for the write rates and the footprint, as it does part
    /// of imaged's work for a write and keeps the same records in sled;
    /// false for reads and lists, which it answers as the null server does,
    /// and for the fill's trends, ratios that a slower start would raise.
    sled_only: bool,
    /// The value in a round, from (null, containerd, imaged); given the
    /// sled-only server in imaged's place, the bound it sets.
    value: fn(&Results, &Results, &Results) -> Option<f64>,
}

/// A target's bound.
#[derive(Clone, Copy)]
enum Goal {
    /// The value must be at least this.
    AtLeast(f64),
    /// The value must be at most this.
    AtMost(f64),
}

/// What a target's value counts.
#[derive(Clone, Copy)]
enum Unit {
    /// A ratio.
    Times,
    /// A time in milliseconds.
    Millis,
}

impl Unit {
    fn show(self, value: f64) -> String {
        match self {
            Unit::Times => format!("{value:.2}×"),
            Unit::Millis => format!("{value:.0} ms"),
        }
    }
}

impl Target {
    fn meets(&self, value: f64) -> bool {
        match self.goal {
            Goal::AtLeast(bound) => value >= bound,
            Goal::AtMost(bound) => value <= bound,
        }
    }

    /// The target as the issue states it, e.g. `≥ 10× (at 1M)`.
    fn goal_text(&self) -> String {
        let (sign, bound) = match self.goal {
            Goal::AtLeast(b) => ("≥", b),
            Goal::AtMost(b) => ("≤", b),
        };
        let bound = match self.unit {
            Unit::Times => format!("{bound}×"),
            Unit::Millis => format!("{bound} ms"),
        };
        let at = match self.at {
            Some(n) if n >= 1_000_000 => format!(" (at {}M)", n / 1_000_000),
            Some(n) => format!(" (at {}k)", n / 1000),
            None => String::new(),
        };
        format!("{sign} {bound}{at}")
    }
}

fn targets() -> Vec<Target> {
    fn rate(r: &Option<Report>) -> Option<f64> {
        r.as_ref().map(Report::rate)
    }
    fn over(a: Option<f64>, b: Option<f64>) -> Option<f64> {
        Some(a? / b.filter(|b| *b > 0.0)?)
    }
    fn p50_ms(r: &Option<Report>) -> Option<f64> {
        r.as_ref().map(|r| r.p50.as_secs_f64() * 1000.0)
    }
    use Goal::{AtLeast, AtMost};
    use Unit::{Millis, Times};
    let target = |label, goal, unit, at, value| Target {
        label,
        goal,
        unit,
        at,
        sled_only: false,
        value,
    };
    let bounded = |label, goal, unit, at, value| Target {
        sled_only: true,
        ..target(label, goal, unit, at, value)
    };
    vec![
        bounded("create c16 ÷ containerd", AtLeast(10.0), Times, None, |_, c, i| {
            over(rate(&i.create_c16), rate(&c.create_c16))
        }),
        bounded("create c16 ÷ null", AtLeast(0.85), Times, None, |n, _, i| {
            over(rate(&i.create_c16), rate(&n.create_c16))
        }),
        bounded("update c16 ÷ containerd", AtLeast(10.0), Times, None, |_, c, i| {
            over(rate(&i.update_c16), rate(&c.update_c16))
        }),
        bounded("update c16 ÷ null", AtLeast(0.85), Times, None, |n, _, i| {
            over(rate(&i.update_c16), rate(&n.update_c16))
        }),
        bounded("create c1 ÷ containerd", AtLeast(5.0), Times, None, |_, c, i| {
            over(rate(&i.create_c1), rate(&c.create_c1))
        }),
        target("get c16, 1 connection ÷ null", AtLeast(0.9), Times, None, |n, _, i| {
            over(rate(&i.get_c16_1), rate(&n.get_c16_1))
        }),
        target(
            "get c32, 4 connections ÷ null",
            AtLeast(0.9),
            Times,
            None,
            |n, _, i| over(rate(&i.get_c32_4), rate(&n.get_c32_4)),
        ),
        target(
            "list: containerd's time ÷ imaged's",
            AtLeast(10.0),
            Times,
            None,
            |_, c, i| over(p50_ms(&c.list_4000), p50_ms(&i.list_4000)),
        ),
        target(
            "fill: imaged's last batch rate ÷ first's",
            AtLeast(0.9),
            Times,
            Some(1_000_000),
            |_, _, i| fill_trend(&i.fill).map(|t| t.0),
        ),
        target(
            "fill: imaged's worst p99 ÷ first's",
            AtMost(5.0),
            Times,
            Some(1_000_000),
            |_, _, i| fill_trend(&i.fill).map(|t| t.1),
        ),
        // The issue's footprint target is after 104k images; the comparison
        // measures at its fill size, 100k by default.
        bounded(
            "RSS after the fill ÷ containerd",
            AtMost(0.1),
            Times,
            Some(100_000),
            |_, c, i| over(i.rss_mib, c.rss_mib),
        ),
        bounded(
            "disk after the fill ÷ containerd",
            AtMost(0.1),
            Times,
            Some(100_000),
            |_, c, i| over(i.disk_mib, c.disk_mib),
        ),
        target(
            "ListStream of everything",
            AtMost(300.0),
            Millis,
            Some(100_000),
            |_, _, i| i.stream.map(|(_, d)| d.as_secs_f64() * 1000.0),
        ),
        target(
            "start-up with the filled store",
            AtMost(1000.0),
            Millis,
            Some(1_000_000),
            |_, _, i| i.startup.map(|d| d.as_secs_f64() * 1000.0),
        ),
    ]
}

/// The median of `values` (the mean of the middle two of an even count);
/// `None` when there are none.
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[mid]),
        _ => Some((sorted[mid - 1] + sorted[mid]) / 2.0),
    }
}

/// The targets' values in every round and their medians, and the sled-only
/// server's where it bounds them. A target the issue sets at another fill
/// size than `fill_to` is shown but not judged.
fn render_targets(rounds: &[Round], fill_to: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| measure | target | median of {} | median meets it | each round | the sled-only server: median (each round) |",
        match rounds.len() {
            1 => "1 round".to_string(),
            n => format!("{n} rounds"),
        }
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for target in targets() {
        let values: Vec<f64> = rounds
            .iter()
            .filter_map(|round| {
                let (n, c, i) = servers(round);
                (target.value)(n, c, i)
            })
            .collect();
        let bounds: Vec<f64> = rounds
            .iter()
            .filter(|_| target.sled_only)
            .filter_map(|round| {
                let (n, c, _) = servers(round);
                (target.value)(n, c, sled_only_of(round))
            })
            .collect();
        let bound = match median(&bounds) {
            Some(mid) => format!(
                "{} ({})",
                target.unit.show(mid),
                bounds
                    .iter()
                    .map(|v| target.unit.show(*v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "–".into(),
        };
        let Some(mid) = median(&values) else {
            let _ = writeln!(s, "| {} | {} | – | – | – | {bound} |", target.label, target.goal_text());
            continue;
        };
        let each: Vec<String> = values.iter().map(|v| target.unit.show(*v)).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {bound} |",
            target.label,
            target.goal_text(),
            target.unit.show(mid),
            match target.at {
                Some(at) if at != fill_to => "(set at another size)",
                _ if target.meets(mid) => "yes",
                _ => "no",
            },
            each.join(", ")
        );
    }
    s
}

fn render(plan: &Plan, rounds: &[Round], smoke: bool, floors: &Floors) -> String {
    let floor = floors.sync;
    let last = rounds.last().expect("at least one round");
    let (null, ctd, img) = servers(last);
    let sled_only = sled_only_of(last);
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let mut flags = String::new();
    if smoke {
        flags.push_str(" --smoke");
    } else {
        if plan.fill_to != 100_000 {
            let _ = write!(flags, " --images {}", plan.fill_to);
        }
        if rounds.len() != 3 {
            let _ = write!(flags, " --rounds {}", rounds.len());
        }
    }
    let _ = writeln!(
        s,
        "Generated by `cargo run --release -p imaged-bench -- compare{flags}` on {}.\n",
        machine()
    );
    let _ = writeln!(
        s,
        "containerd is Debian's ({}), started on temporary paths with the CRI plugin disabled; imaged is the release build with its defaults \
         (every write durable: journaled and fdatasync'ed before the answer); the null server answers containerd's images API from tonic \
         with no storage, in a process of its own. All three are driven by the same client, in the same run, one after the other. Absolute times on a shared \
         machine are noise: **the ratios are the result.** {}{}\n",
        containerd_version(),
        match rounds.len() {
            1 => "The first table gives the issue's targets as measured; the rest give the details.".to_string(),
            n => format!(
                "The comparison ran {n} times, each round measuring all three servers again from empty stores: the \
                 first table gives every round's value of each target and their median, the rest give the last round \
                 in detail."
            ),
        },
        if smoke {
            " This was a smoke run: sizes are too small to mean anything."
        } else {
            ""
        }
    );
    let _ = writeln!(s, "## The issue's targets, round by round\n");
    s.push_str(&render_targets(rounds, plan.fill_to));
    let _ = writeln!(s, "\n## Round {} in detail\n", rounds.len());
    let _ = writeln!(
        s,
        "| workload | containerd | imaged | null server | sled-only server | imaged ÷ containerd | imaged ÷ null |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let rate = |r: &Option<Report>| r.as_ref().map(|r| r.rate());
    let mut row = |label: String, c: &Option<Report>, i: &Option<Report>, n: &Option<Report>, f: &Option<Report>| {
        let show = |r: &Option<Report>| {
            r.as_ref().map_or("–".to_string(), |r| {
                format!("{:.0}/s (p50 {}, p99 {})", r.rate(), ms(r.p50), ms(r.p99))
            })
        };
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {} | {} | {} |",
            show(c),
            show(i),
            show(n),
            show(f),
            ratio(rate(i), rate(c)),
            ratio(rate(i), rate(n))
        );
    };
    row(
        format!("create, concurrency 1 ({} images)", plan.create_c1),
        &ctd.create_c1,
        &img.create_c1,
        &null.create_c1,
        &sled_only.create_c1,
    );
    row(
        format!("create, concurrency 16 ({} images)", plan.create_c16),
        &ctd.create_c16,
        &img.create_c16,
        &null.create_c16,
        &sled_only.create_c16,
    );
    row(
        format!("update labels, concurrency 16 ({} calls)", plan.updates),
        &ctd.update_c16,
        &img.update_c16,
        &null.update_c16,
        &sled_only.update_c16,
    );
    row(
        format!("get, concurrency 16, 1 connection ({} calls)", plan.gets),
        &ctd.get_c16_1,
        &img.get_c16_1,
        &null.get_c16_1,
        &None,
    );
    row(
        format!("get, concurrency 32, 4 connections ({} calls)", plan.gets),
        &ctd.get_c32_4,
        &img.get_c32_4,
        &null.get_c32_4,
        &None,
    );
    row(
        format!(
            "get, concurrency 16, 1 connection, spread over all {} images after the fill ({} calls)",
            plan.fill_to, plan.gets
        ),
        &ctd.get_filled,
        &img.get_filled,
        &None,
        &None,
    );
    let existing = plan.create_c1 + plan.create_c16;
    let lists = |r: &Results| r.list_4000.as_ref().map_or("–".into(), |r| ms(r.p50));
    let faster = |slow: &Option<Report>, fast: &Option<Report>| match (slow, fast) {
        (Some(s), Some(f)) if f.p50 > Duration::ZERO => {
            format!("{:.1}× faster", s.p50.as_secs_f64() / f.p50.as_secs_f64())
        }
        _ => "–".into(),
    };
    let _ = writeln!(
        s,
        "| list of {existing} images, one call (median of {}) | {} | {} | {} | – | {} | {} |",
        plan.lists,
        lists(ctd),
        lists(img),
        lists(null),
        faster(&ctd.list_4000, &img.list_4000),
        match (&img.list_4000, &null.list_4000) {
            (Some(i), Some(n)) if n.p50 > Duration::ZERO => {
                format!("{:.2}× the null's time", i.p50.as_secs_f64() / n.p50.as_secs_f64())
            }
            _ => "–".into(),
        },
    );

    let _ = writeln!(
        s,
        "\n## Filling to {} images (create, concurrency 16, durable)\n",
        plan.fill_to
    );
    let _ = writeln!(
        s,
        "| images | containerd rate | containerd p99 | imaged rate | imaged p99 | sled-only rate | sled-only p99 |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for (((at, c), (_, i)), (_, f)) in ctd.fill.iter().zip(&img.fill).zip(&sled_only.fill) {
        let _ = writeln!(
            s,
            "| {at} | {:.0}/s | {} | {:.0}/s | {} | {:.0}/s | {} |",
            c.rate(),
            ms(c.p99),
            i.rate(),
            ms(i.p99),
            f.rate(),
            ms(f.p99)
        );
    }
    let trend = |fill: &[(u64, Report)]| match fill_trend(fill) {
        Some((rate, p99)) => format!(
            "last batch {:.0}% of the first's rate; worst p99 {p99:.1}× the first's",
            100.0 * rate
        ),
        None => "–".into(),
    };
    let _ = writeln!(
        s,
        "\ncontainerd: {}. imaged: {}. The sled-only server: {}.",
        trend(&ctd.fill),
        trend(&img.fill),
        trend(&sled_only.fill)
    );

    let _ = writeln!(s, "\n## Floors on this machine\n");
    let _ = writeln!(
        s,
        "- A durable write (512-byte `pwrite` to a preallocated file, then `fdatasync`; median of 1000): {}.",
        ms(floor)
    );
    if let (Some(n), Some(c)) = (&null.create_c1, &ctd.create_c1) {
        let ceiling = 1.0 / (n.p50 + floor).as_secs_f64();
        let _ = writeln!(
            s,
            "- So a durable create at concurrency 1 takes at least the null server's create (p50 {}) plus that \
             sync: at most {ceiling:.0}/s here, {:.1}× containerd's rate in this run.",
            ms(n.p50),
            ceiling / c.rate()
        );
    }
    if let (Some(n), Some(c)) = (&null.list_4000, &ctd.list_4000) {
        let _ = writeln!(
            s,
            "- Listing {existing} images in one call takes the null server {} (encoding, transport and the client's \
             decoding, with no storage): no server can lead containerd's {} by more than {:.1}× with this client.",
            ms(n.p50),
            ms(c.p50),
            c.p50.as_secs_f64() / n.p50.as_secs_f64().max(1e-9)
        );
    }
    let sled = &floors.sled;
    let _ = write!(
        s,
        "- sled alone, given only the {} images themselves (one key each, holding containerd's protobuf of the image: \
         {:.1} MiB of keys and values; no indexes, no journal) and flushed every 4 MiB as imaged's checkpoints do, \
         takes {:.0} MiB of disk",
        sled.images,
        sled.raw_bytes as f64 / (1 << 20) as f64,
        sled.disk_mib
    );
    match ctd.disk_mib {
        Some(c) => {
            let _ = writeln!(
                s,
                ": {:.2}× containerd's files, where a tenth of them is {:.0} MiB.",
                sled.disk_mib / c,
                c / 10.0
            );
        }
        None => {
            let _ = writeln!(s, ".");
        }
    }

    let rate = |r: &Option<Report>| r.as_ref().map(Report::rate);
    let of = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "–".into(),
    };
    let _ = writeln!(
        s,
        "- The sled-only server is the null server made to store each create and label update in sled as imaged's writer \
         does before it answers: the existence check or the record read, then the record and its index entries, with \
         imaged's own keys and encodings. It does nothing else imaged does for a write: no journal, no sync, no batching \
         thread, no namespace count, no revision; each write takes one lock and calls sled right on the executor, and sled is \
         flushed (as often as imaged checkpoints) on a thread of its own, which no write waits for. Each of its writes \
         is a part of one of imaged's, on the same records in sled with the same cache. So where it misses a \
         footprint target (the last column of the first table), imaged cannot meet that target without storing less, \
         or storing it other than in sled; where it misses a write target, sled's calls for these records, made one \
         write at a time, already take more than the target leaves (imaged makes them in batches on its writer \
         thread, so for writes the bound is close, not strict). In this round: create at concurrency 16 {} of the null \
         server's rate, update {}; after the fill it held {} resident and {} on disk ({} and {} of containerd's).",
        of(rate(&sled_only.create_c16), rate(&null.create_c16)),
        of(rate(&sled_only.update_c16), rate(&null.update_c16)),
        sled_only.rss_mib.map_or("–".into(), |m| format!("{m:.0} MiB")),
        sled_only.disk_mib.map_or("–".into(), |m| format!("{m:.0} MiB")),
        of(sled_only.rss_mib, ctd.rss_mib),
        of(sled_only.disk_mib, ctd.disk_mib),
    );
    if let (Some((_, first)), Some((_, last))) = (img.fill.first(), sled_only.fill.last()) {
        let needed = 0.9 * first.rate();
        let _ = writeln!(
            s,
            "- The fill: imaged's first tenth ran at {:.0}/s, so holding 90% of its rate means {needed:.0}/s in the last \
             tenth; the sled-only server's last tenth ran at {:.0}/s ({}). {}",
            first.rate(),
            last.rate(),
            trend(&sled_only.fill),
            if needed > last.rate() {
                "So imaged would have to write faster at the end of the fill than a server making no durable write \
                 at all: here the fill target asks for a slower start, not a faster end."
            } else {
                "So sled does not rule the fill target out here."
            }
        );
    }

    let _ = writeln!(s, "\n## At {} images\n", plan.fill_to);
    let _ = writeln!(s, "| measure | containerd | imaged | imaged ÷ containerd |");
    let _ = writeln!(s, "|---|---|---|---|");
    let list_full = |r: &Results| match &r.list_full {
        Some(Ok(report)) => ms(report.p50),
        Some(Err(e)) => format!("fails: {}", e.chars().take(90).collect::<String>()),
        None => "–".into(),
    };
    let _ = writeln!(
        s,
        "| containerd API List of everything | {} | {} | |",
        list_full(ctd),
        list_full(img)
    );
    let pair = |c: Option<f64>, i: Option<f64>, unit: &str| match (c, i) {
        (Some(c), Some(i)) => format!("{c:.0} {unit} | {i:.0} {unit} | {:.2}", i / c),
        _ => "– | – | –".into(),
    };
    let _ = writeln!(s, "| RSS after the fill | {} |", pair(ctd.rss_mib, img.rss_mib, "MiB"));
    let _ = writeln!(
        s,
        "| on-disk size after the fill | {} |",
        pair(ctd.disk_mib, img.disk_mib, "MiB")
    );
    if let Some((n, d)) = img.walk {
        let _ = writeln!(
            s,
            "| paginated walk, pages of 1000 (seed API) | – | {n} images in {} | |",
            ms(d)
        );
    }
    if let Some((n, d)) = img.stream {
        let _ = writeln!(
            s,
            "| ListStream of everything (seed API) | – | {n} images in {} | |",
            ms(d)
        );
    }
    if let Some(d) = img.startup {
        let _ = writeln!(
            s,
            "| start-up with the filled store (socket accepting) | – | {} | |",
            ms(d)
        );
    }
    s
}

fn containerd_version() -> String {
    std::process::Command::new("containerd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.split_whitespace().nth(2).map(str::to_owned))
        .unwrap_or_else(|| "unknown version".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(calls: u64, millis: u64) -> Option<Report> {
        Some(Report {
            calls,
            elapsed: Duration::from_millis(millis),
            p50: Duration::from_millis(1),
            p99: Duration::from_millis(2),
            max: Duration::from_millis(3),
            slow: Vec::new(),
        })
    }

    /// A round where imaged creates at concurrency 16 at `imaged` per second
    /// against containerd's 1000, the null server's 20,000 and the sled-only
    /// server's 15,000.
    fn round(imaged: u64) -> Round {
        let with = |create: u64| Results {
            create_c16: report(create, 1000),
            ..Results::default()
        };
        vec![
            ("null server", with(20_000)),
            ("sled-only server", with(15_000)),
            ("containerd", with(1000)),
            ("imaged", with(imaged)),
        ]
    }

    #[test]
    fn targets_are_judged_by_the_median_of_the_rounds() {
        let table = render_targets(&[round(12_000), round(8_000), round(9_000)], 100_000);
        let row = |label: &str| {
            table
                .lines()
                .find(|l| l.starts_with(&format!("| {label} |")))
                .unwrap_or_else(|| panic!("no row {label} in\n{table}"))
                .to_owned()
        };
        // 12×, 8×, 9×: the median, 9×, is below the 10× target, though one
        // round alone would meet it.
        assert_eq!(
            row("create c16 ÷ containerd"),
            "| create c16 ÷ containerd | ≥ 10× | 9.00× | no | 12.00×, 8.00×, 9.00× | 15.00× (15.00×, 15.00×, 15.00×) |"
        );
        // The sled-only server's 0.75 of the null server's rate says the
        // 0.85 target is out of reach for anything storing these records.
        assert_eq!(
            row("create c16 ÷ null"),
            "| create c16 ÷ null | ≥ 0.85× | 0.45× | no | 0.60×, 0.40×, 0.45× | 0.75× (0.75×, 0.75×, 0.75×) |"
        );
        // Nothing measured: no value, no verdict.
        assert_eq!(
            row("update c16 ÷ containerd"),
            "| update c16 ÷ containerd | ≥ 10× | – | – | – | – |"
        );
        // Reads are the null server's on the sled-only server: no bound.
        assert_eq!(
            row("get c16, 1 connection ÷ null"),
            "| get c16, 1 connection ÷ null | ≥ 0.9× | – | – | – | – |"
        );
        let table = render_targets(&[round(12_000), round(11_000)], 100_000);
        assert!(
            table.contains("| ≥ 10× | 11.50× | yes | 12.00×, 11.00× | 15.00× (15.00×, 15.00×) |"),
            "{table}"
        );
    }

    #[test]
    fn a_target_set_at_another_size_is_shown_but_not_judged() {
        let mut r = round(10_000);
        let imaged = r.iter_mut().find(|(name, _)| *name == "imaged").expect("imaged");
        imaged.1.startup = Some(Duration::from_millis(200));
        let row = |fill_to| {
            render_targets(std::slice::from_ref(&r), fill_to)
                .lines()
                .find(|l| l.starts_with("| start-up"))
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            row(6_000),
            "| start-up with the filled store | ≤ 1000 ms (at 1M) | 200 ms | (set at another size) | 200 ms | – |"
        );
        assert_eq!(
            row(1_000_000),
            "| start-up with the filled store | ≤ 1000 ms (at 1M) | 200 ms | yes | 200 ms | – |"
        );
    }
}
