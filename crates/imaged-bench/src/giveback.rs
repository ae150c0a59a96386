//! The disk-given-back benchmark: whether one rotation returns what churn
//! left in sled's files. A store is filled, most of it deleted and the rest
//! rewritten; one `Admin/Compact` rotates it. Its data directory before and
//! after is set beside a fresh store holding the same live images, written
//! the same way (created, then each rewritten once). Both daemons keep few
//! changes in the change log (`--keep-changes`, `--keep-changes-for 0`), so
//! that what they hold is the live images, and rotate only when asked
//! (`--rotate-after-percent 0`), so that exactly one rotation is measured.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::load::{self, Workload};
use crate::servers::Server;

/// Sizes of a run.
pub struct Plan {
    /// Images the churned store is filled to.
    pub fill_to: u64,
    /// Percent of them that stay; the rest are deleted.
    pub keep_percent: u64,
    /// How many times each image that stays is rewritten.
    pub rewrites: u64,
}

impl Plan {
    /// The run for `fill_to` images, or a short one that only proves it works.
    pub fn new(smoke: bool, fill_to: u64) -> Plan {
        Plan {
            fill_to: if smoke { 3_000 } else { fill_to },
            keep_percent: 10,
            rewrites: 3,
        }
    }

    fn live(&self) -> u64 {
        self.fill_to * self.keep_percent / 100
    }
}

/// The flags of both daemons.
const FLAGS: [&str; 6] = [
    "--rotate-after-percent",
    "0",
    "--keep-changes",
    "1000",
    "--keep-changes-for",
    "0",
];

/// What the run measured.
struct Measured {
    /// The churned store's data directory before and after the rotation.
    before: u64,
    after: u64,
    compacted: imaged_client::Compacted,
    /// The fresh store's data directory, and after a rotation of its own.
    fresh: u64,
    fresh_compacted: u64,
}

/// Runs the plan against the daemon at `binary`, in directories under
/// `dir`; returns the report (Markdown).
pub async fn run(plan: &Plan, binary: &Path, dir: &Path) -> Result<String, String> {
    let live = plan.live();
    let churned_dir = dir.join("churned");
    std::fs::create_dir_all(&churned_dir).map_err(|e| e.to_string())?;
    let server = Server::imaged_with(binary, &churned_dir, &FLAGS)?;
    let channels = load::connect(&server.socket, 4).await.map_err(|e| e.to_string())?;
    eprintln!("imaged (churned): filling {} images…", plan.fill_to);
    load::run(&channels, Workload::Create { start: 0 }, plan.fill_to, 16).await?;
    eprintln!("imaged (churned): deleting {} of them…", plan.fill_to - live);
    load::run(&channels, Workload::Delete { start: live }, plan.fill_to - live, 16).await?;
    eprintln!("imaged (churned): rewriting the {live} left {} times…", plan.rewrites);
    load::run(&channels, Workload::Update { existing: live }, live * plan.rewrites, 16).await?;
    let client = imaged_client::Client::connect(&server.socket).map_err(|e| e.to_string())?;
    settled(&client).await?;
    let before = imaged::store::files_bytes(&server.data);
    eprintln!("imaged (churned): compacting…");
    let compacted = client.compact().await.map_err(|e| e.to_string())?;
    let after = one_generation(&server.data).await?;
    server.stop();

    let fresh_dir = dir.join("fresh");
    std::fs::create_dir_all(&fresh_dir).map_err(|e| e.to_string())?;
    let server = Server::imaged_with(binary, &fresh_dir, &FLAGS)?;
    let channels = load::connect(&server.socket, 4).await.map_err(|e| e.to_string())?;
    eprintln!("imaged (fresh): {live} images, each rewritten once…");
    load::run(&channels, Workload::Create { start: 0 }, live, 16).await?;
    load::run(&channels, Workload::Update { existing: live }, live, 16).await?;
    let client = imaged_client::Client::connect(&server.socket).map_err(|e| e.to_string())?;
    settled(&client).await?;
    let fresh = imaged::store::files_bytes(&server.data);
    // The floor: the fresh store rotated too.
    client.compact().await.map_err(|e| e.to_string())?;
    let fresh_compacted = one_generation(&server.data).await?;
    server.stop();
    Ok(report(
        plan,
        &Measured {
            before,
            after,
            compacted,
            fresh,
            fresh_compacted,
        },
    ))
}

/// Waits until the change log has been compacted down to its few kept
/// changes, so that the deleted images' history is gone from both stores.
async fn settled(client: &imaged_client::Client) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let status = client.status().await.map_err(|e| e.to_string())?;
        if status.compacted_revision + 1000 + 100 >= status.revision {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the change log was not compacted within 300 s: revision {}, compacted {}",
                status.revision, status.compacted_revision
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The data directory's bytes once the old sled directory is removed (its
/// removal runs after the swap, on a thread of its own).
async fn one_generation(data: &Path) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sleds = std::fs::read_dir(data)
            .map_err(|e| e.to_string())?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("sled"))
            .count();
        if sleds == 1 {
            return Ok(imaged::store::files_bytes(data));
        }
        if Instant::now() > deadline {
            return Err(format!("{sleds} sled directories in {} after 60 s", data.display()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1 << 20) as f64)
}

fn report(plan: &Plan, m: &Measured) -> String {
    let live = plan.live();
    let mut out = String::new();
    let _ = writeln!(out, "# Disk given back by a rotation\n");
    let _ = writeln!(
        out,
        "{} images created, {} of them deleted, the {live} left rewritten {} times each; then one \
         `Admin/Compact`. Beside it, a fresh store: the same {live} images created and each rewritten \
         once. Flags of both: `{}`. Generated by `imaged-bench giveback`; docs/PERFORMANCE.md explains it.\n",
        plan.fill_to,
        plan.fill_to - live,
        plan.rewrites,
        FLAGS.join(" ")
    );
    let _ = writeln!(out, "| store | data directory MiB | ÷ fresh |");
    let _ = writeln!(out, "|---|---|---|");
    let ratio = |bytes: u64| bytes as f64 / m.fresh.max(1) as f64;
    for (name, bytes) in [
        ("churned, before the rotation", m.before),
        ("churned, after the rotation", m.after),
        ("fresh", m.fresh),
        ("fresh, after a rotation of its own", m.fresh_compacted),
    ] {
        let _ = writeln!(out, "| {name} | {} | {:.2} |", mib(bytes), ratio(bytes));
    }
    let c = &m.compacted;
    let _ = writeln!(
        out,
        "\nThe rotation: sled {} → {} MiB, {} entries copied in {} ms, first open {} ms, writes paused {} ms.",
        mib(c.before_bytes),
        mib(c.after_bytes),
        c.keys,
        c.copy.as_millis(),
        c.open.as_millis(),
        c.paused.as_millis()
    );
    let _ = writeln!(
        out,
        "\nAfter the rotation ÷ fresh: **{:.2}** (target ≤ 1.5); ÷ the fresh store rotated: {:.2}.",
        ratio(m.after),
        m.after as f64 / m.fresh_compacted.max(1) as f64
    );
    out
}
