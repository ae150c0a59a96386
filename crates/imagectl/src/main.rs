//! `imagectl`: the command line of imaged, over `imaged-client`.
//!
//! Exit codes, one rule: 0 success; 1 the daemon refused or failed the call,
//! or could not be reached; 2 the command line itself is wrong (an unknown
//! flag, a missing argument, or a value imagectl can check itself, such as a
//! malformed digest, size or address), found before any call is made. Either
//! error is one line on stderr, starting `imagectl: ` (clap's own usage
//! errors keep clap's form).
//!
//! Output: commands that change something print the name of what they
//! changed, one per line (`put`, `rm`, `ns create`, `ns rm`); `label` prints
//! the image's labels after the change. Tables shorten digests to 12 hex
//! characters unless `--no-trunc` is given; JSON never shortens.

mod ops;
mod output;
mod reach;
mod repos;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use futures_util::{StreamExt, TryStreamExt};
use imaged_client::{Client, Descriptor, Digest, Error, Images, LabelChange, Labels};

use output::{Format, Printer};

/// Command line for imaged, the local image-metadata daemon.
#[derive(Debug, Parser)]
#[command(name = "imagectl", version, about)]
struct Cli {
    // The two variables are read by imagectl, not by clap, whose usage line
    // would show a variable's value as a flag the user typed.
    /// imaged's socket: a path or unix://PATH [default: $IMAGED_ADDRESS,
    /// else the daemon's default for this user, else the system daemon's]
    #[arg(long, global = true, value_name = "ADDR", value_parser = parse_address)]
    address: Option<PathBuf>,

    /// Namespace of the images [default: $IMAGED_NAMESPACE, else default]
    #[arg(short, long, global = true, value_name = "NS", value_parser = parse_namespace)]
    namespace: Option<String>,

    /// Give up on a call after this long (e.g. 500ms, 5s, 1m)
    #[arg(long, global = true, value_parser = parse_duration, value_name = "DUR")]
    timeout: Option<Duration>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with images
    #[command(subcommand, visible_alias = "i")]
    Images(ImagesCommand),
    /// Work with namespaces
    #[command(subcommand, visible_alias = "ns")]
    Namespaces(NamespacesCommand),
    /// Work with repositories: images grouped by their name before the last
    /// :tag or @digest
    #[command(subcommand, name = "repos", visible_alias = "repositories")]
    Repos(ReposCommand),
    /// Exit 0 when the daemon is serving, 1 otherwise (an exec probe);
    /// prints SERVING or NOT_SERVING
    Health {
        /// A service to ask about [default: the daemon as a whole]
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Show what the daemon is doing: version, uptime, revision, images per
    /// namespace, bytes on disk, watchers, limits
    Status {
        /// Output format
        #[arg(short, long, value_enum, default_value_t = GetFormat::Table)]
        output: GetFormat,
    },
    /// Write an online, consistent backup of the whole store (restore it
    /// with `imaged restore`)
    Backup {
        /// Write it to FILE (made whole or not at all) instead of standard
        /// output
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Compact the store: copy sled to a fresh one in the background and
    /// swap it in, giving back the disk churn and deletions left; prints
    /// the bytes before and after. Serving goes on meanwhile. Needs admin
    Compact {
        /// Output format
        #[arg(short, long, value_enum, default_value_t = GetFormat::Table)]
        output: GetFormat,
    },
    /// Print a shell completion script
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum ImagesCommand {
    /// List images (every page; never truncated)
    #[command(visible_alias = "list")]
    Ls {
        /// Filter (repeat for OR), e.g. labels.env==prod,target.size>1000
        /// or protected==true
        #[arg(long = "filter", value_name = "F")]
        filters: Vec<String>,
        /// Order, e.g. "created_at desc, name"
        #[arg(long, value_name = "KEYS")]
        order_by: Option<String>,
        /// Only the images of repository R (their names before the last
        /// :tag or @digest), read as a range of names
        #[arg(long, value_name = "R")]
        repository: Option<String>,
        /// Read in pages of N (1-1000) instead of one stream
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: Option<u32>,
        /// Print names only
        #[arg(short, long)]
        quiet: bool,
        /// Print whole digests in the table (it shortens them to 12 hex
        /// characters)
        #[arg(long)]
        no_trunc: bool,
        /// Output format
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
    /// Show one image
    Get {
        /// Image name
        name: String,
        /// Output format
        #[arg(short, long, value_enum, default_value_t = GetFormat::Table)]
        output: GetFormat,
    },
    /// Create an image or point it at a new target
    Put {
        /// Image name
        name: String,
        /// Target digest, e.g. sha256:…
        #[arg(long, value_parser = parse_digest)]
        digest: Digest,
        /// Target size in bytes (at least 1)
        #[arg(long, allow_negative_numbers = true,
              value_parser = clap::value_parser!(i64).range(1..))]
        size: i64,
        /// Target media type
        #[arg(long)]
        media_type: String,
        /// Label (repeatable); a put with labels replaces the image's labels
        #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Only create: fail if the name exists
        #[arg(long, conflicts_with = "if_digest")]
        if_absent: bool,
        /// Only replace while the name points at this digest
        #[arg(long, value_name = "D", value_parser = parse_digest)]
        if_digest: Option<Digest>,
    },
    /// Delete images
    #[command(visible_alias = "remove")]
    Rm {
        /// Image names
        #[arg(required = true)]
        names: Vec<String>,
        /// Only delete while the name points at this digest
        #[arg(long, value_name = "D", value_parser = parse_digest)]
        if_digest: Option<Digest>,
    },
    /// Protect images: until unprotected, imaged refuses to delete them or
    /// point them at other content, through any API (the label
    /// io.cri-containerd.pinned=pinned)
    Protect {
        /// Image names
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Unprotect images, so they can be deleted or retargeted again
    Unprotect {
        /// Image names
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Set labels (k=v) or remove them (k=)
    Label {
        /// Image name
        name: String,
        /// Labels to set (k=v) or remove (k=)
        #[arg(required = true, value_name = "K=V", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Print each change to the namespace's images as it happens (type,
    /// revision, name, digest), resuming by itself if imaged restarts
    Watch {
        /// Filter (repeat for OR), as for ls: an image is shown while it
        /// matches, and once more (DELETED) when it stops matching
        #[arg(long = "filter", value_name = "F")]
        filters: Vec<String>,
        /// Start after this revision (an ls --output json shows revisions);
        /// without it, start now
        #[arg(long, value_name = "REVISION")]
        since: Option<u64>,
        /// Output format
        #[arg(short, long, value_enum, default_value_t = WatchFormat::Table)]
        output: WatchFormat,
    },
}

#[derive(Debug, Subcommand)]
enum ReposCommand {
    /// List repositories with their image count, newest image and last
    /// change (every page; never truncated)
    #[command(visible_alias = "list")]
    Ls {
        /// Filter (repeat for OR) on name, tags and updated_at, e.g.
        /// tags>=2 or name~=^docker\.io/
        #[arg(long = "filter", value_name = "F")]
        filters: Vec<String>,
        /// Order: name (the default) or "name desc"
        #[arg(long, value_name = "KEYS")]
        order_by: Option<String>,
        /// Read in pages of N (1-1000)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        page_size: Option<u32>,
        /// Print names only
        #[arg(short, long)]
        quiet: bool,
        /// Output format
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
}

#[derive(Debug, Subcommand)]
enum NamespacesCommand {
    /// List namespaces
    #[command(visible_alias = "list")]
    Ls,
    /// Create a namespace
    Create {
        /// Name
        name: String,
    },
    /// Delete an empty namespace
    #[command(visible_alias = "remove")]
    Rm {
        /// Name
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ListFormat {
    Table,
    Json,
    Jsonl,
}

impl ListFormat {
    /// How a list is printed: names only when `quiet`.
    fn format(self, quiet: bool) -> Format {
        match (quiet, self) {
            (true, _) => Format::Names,
            (false, ListFormat::Table) => Format::Table,
            (false, ListFormat::Json) => Format::Json,
            (false, ListFormat::Jsonl) => Format::Jsonl,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum WatchFormat {
    Table,
    Jsonl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GetFormat {
    Table,
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 5s or 1m"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" | "" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Parses a digest flag; clap names the flag and the value in a refusal.
fn parse_digest(text: &str) -> Result<Digest, String> {
    Digest::parse(text).map_err(|e| e.reason)
}

/// Checks `--namespace` with containerd's rule, as the daemon will.
fn parse_namespace(text: &str) -> Result<String, String> {
    imaged_client::NamespaceName::parse("--namespace", text)
        .map(|ns| ns.as_str().to_owned())
        .map_err(|e| e.to_string())
}

/// The namespace: `--namespace`, else `$IMAGED_NAMESPACE`, else
/// `default`; a bad variable is refused naming it.
fn namespace(flag: Option<String>) -> Result<String, String> {
    if let Some(ns) = flag {
        return Ok(ns);
    }
    match std::env::var("IMAGED_NAMESPACE") {
        Ok(text) if !text.is_empty() => imaged_client::NamespaceName::parse("$IMAGED_NAMESPACE", &text)
            .map(|ns| ns.as_str().to_owned())
            .map_err(|e| e.to_string()),
        _ => Ok("default".to_owned()),
    }
}

/// Parses `--address` with the daemon's and the client's own parser.
fn parse_address(text: &str) -> Result<PathBuf, String> {
    imaged_client::paths::socket_address("--address", text).map_err(|e| e.to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut cli = Cli::parse();
    cli.namespace = match namespace(cli.namespace.take()) {
        Ok(ns) => Some(ns),
        Err(e) => {
            eprintln!("imagectl: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Health { service } = &cli.command {
        let socket = cli.address.clone().unwrap_or_else(imaged_client::default_address);
        let client = Client::builder(&socket)
            .timeout(cli.timeout.unwrap_or(ops::HEALTH_TIMEOUT))
            .build();
        let serving = match client {
            Ok(client) => ops::health(&client, service).await,
            Err(e) => {
                eprintln!("imagectl: {e}");
                false
            }
        };
        return if serving { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = match &e {
                Error::Unavailable {
                    socket, reached: false, ..
                } => format!("{e}; {}", reach::hint(socket)),
                e => e.to_string(),
            };
            let _ = writeln!(std::io::stderr(), "imagectl: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "imagectl", &mut std::io::stdout());
        return Ok(());
    }
    let socket = cli.address.clone().unwrap_or_else(imaged_client::default_address);
    let mut builder = Client::builder(&socket);
    if let Some(timeout) = cli.timeout {
        builder = builder.timeout(timeout);
    }
    let client = builder.build()?;
    let ns = cli.namespace.as_deref().unwrap_or("default");
    match cli.command {
        Command::Images(command) => images(client.namespace(ns)?, command).await,
        Command::Namespaces(command) => namespaces(&client, command).await,
        Command::Repos(ReposCommand::Ls {
            filters,
            order_by,
            page_size,
            quiet,
            output,
        }) => {
            repos::list(
                &client.namespace(ns)?,
                filters,
                order_by,
                page_size,
                Printer::new(output.format(quiet)),
            )
            .await
        }
        Command::Status { output } => ops::status(&client, matches!(output, GetFormat::Json)).await,
        Command::Backup { output } => ops::backup(&client, output).await,
        Command::Compact { output } => ops::compact(&client, matches!(output, GetFormat::Json)).await,
        Command::Completions { .. } | Command::Health { .. } => unreachable!("handled above"),
    }
}

async fn images(images: Images, command: ImagesCommand) -> Result<(), Error> {
    match command {
        ImagesCommand::Ls {
            filters,
            order_by,
            repository,
            page_size,
            quiet,
            no_trunc,
            output,
        } => {
            let printer = Printer::new(output.format(quiet)).no_trunc(no_trunc);
            let selection = Selection {
                filters: &filters,
                order_by: order_by.as_deref(),
                repository: repository.as_deref(),
            };
            list(&images, selection, page_size, printer).await?;
        }
        ImagesCommand::Get { name, output } => {
            let image = images.get(&name).await?;
            let mut printer = Printer::new(match output {
                GetFormat::Table => Format::Table,
                GetFormat::Json => Format::JsonObject,
            });
            printer.print(&image);
            printer.finish();
        }
        ImagesCommand::Put {
            name,
            digest,
            size,
            media_type,
            labels,
            if_absent,
            if_digest,
        } => {
            let target = Descriptor {
                media_type,
                digest,
                size,
                annotations: Labels::new(),
            };
            let mut put = images.put(name.clone(), target).labels(labels.into_iter().collect());
            if if_absent {
                put = put.if_absent();
            }
            if let Some(expected) = &if_digest {
                put = put.if_digest(expected);
            }
            put.await?;
            println!("{name}");
        }
        ImagesCommand::Watch { filters, since, output } => {
            let mut watch = images.watch();
            for filter in filters {
                watch = watch.filter(filter);
            }
            if let Some(revision) = since {
                watch = watch.since(revision);
            }
            let mut updates = std::pin::pin!(watch.stream());
            while let Some(update) = updates.try_next().await? {
                for event in &update.events {
                    output::watch_event(event, output == WatchFormat::Jsonl);
                }
            }
        }
        ImagesCommand::Rm { names, if_digest } => {
            for name in names {
                let mut delete = images.delete(name.clone());
                if let Some(expected) = &if_digest {
                    delete = delete.if_digest(expected);
                }
                delete.await?;
                println!("{name}");
            }
        }
        ImagesCommand::Protect { names } => {
            for name in names {
                images.protect(&name).await?;
                println!("{name}");
            }
        }
        ImagesCommand::Unprotect { names } => {
            for name in names {
                images.unprotect(&name).await?;
                println!("{name}");
            }
        }
        ImagesCommand::Label { name, labels } => {
            let changes = labels.into_iter().map(|(key, value)| match value.is_empty() {
                true => LabelChange::remove(key),
                false => LabelChange::set(key, value),
            });
            let image = images.label(&name, changes).await?;
            println!("{}", output::labels_text(&image.labels));
        }
    }
    Ok(())
}

/// What `images ls` lists: its filters, order and repository.
struct Selection<'a> {
    filters: &'a [String],
    order_by: Option<&'a str>,
    repository: Option<&'a str>,
}

/// `images ls`: every image of `selection`, in one stream, or page by
/// page with `page_size`, printed as they come.
async fn list(
    images: &Images,
    selection: Selection<'_>,
    page_size: Option<u32>,
    mut printer: Printer<imaged_client::Image>,
) -> Result<(), Error> {
    let list = |token: Option<String>| {
        let mut list = images.list();
        for f in selection.filters {
            list = list.filter(f.clone());
        }
        if let Some(order) = selection.order_by {
            list = list.order_by(order.to_owned());
        }
        if let Some(repository) = selection.repository {
            list = list.repository(repository);
        }
        if let Some(size) = page_size {
            list = list.page_size(size);
        }
        if let Some(token) = token {
            list = list.page_token(token);
        }
        list
    };
    if page_size.is_some() {
        let mut token = None;
        loop {
            let page = list(token).page().await?;
            for image in &page.images {
                printer.print(image);
            }
            match page.next_page_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
    } else {
        let mut stream = std::pin::pin!(list(None).all());
        while let Some(image) = stream.next().await {
            printer.print(&image?);
        }
    }
    printer.finish();
    Ok(())
}

async fn namespaces(client: &Client, command: NamespacesCommand) -> Result<(), Error> {
    match command {
        NamespacesCommand::Ls => {
            let namespaces = client.namespaces().await?;
            let rows: Vec<Vec<String>> = namespaces
                .iter()
                .map(|n| vec![n.name.to_string(), output::labels_text(&n.labels)])
                .collect();
            output::print_table(&["NAME", "LABELS"], &rows);
        }
        NamespacesCommand::Create { name } => {
            client.create_namespace(&name, Labels::new()).await?;
            println!("{name}");
        }
        NamespacesCommand::Rm { name } => {
            client.delete_namespace(&name).await?;
            println!("{name}");
        }
    }
    Ok(())
}
