//! Start-up recovery and its repair: what the engine and the journal hold
//! when the store opens, the replay that brings the engine up to every
//! acknowledged batch, and `imaged repair` for a journal that is damaged
//! rather than torn.
//!
//! A journal is only ever torn at its last entry (each append is synced
//! before the next), and a torn entry was never acknowledged. A damaged
//! entry with acknowledged entries after it is another matter: replaying up
//! to it would silently drop those. So the store refuses to start, naming
//! the offset, and `imaged repair` says what it can keep and what would be
//! lost before it changes anything.

use std::path::Path;

use super::engine::{Backend, Engine};
use super::format::{DataDir, OpenError, named_open_error};
use super::layout::{TreeId, meta};
use super::log;
use super::log::journal::{Beyond, Chain, Journal};
use super::{SledCache, StoreOptions};

/// What to do about a damaged journal.
const REPAIR_HINT: &str = "Restore the data directory from a backup, or stop imaged and run `imaged repair \
     --root DIR` to see what it can recover and what would be lost";

/// The store's state at open, before the replay changes anything.
struct Found {
    journal: Journal,
    chain: Chain,
    /// The revision the engine recovered on its own.
    engine_revision: u64,
    /// Where a whole replay of the chain would leave the store.
    replayed: u64,
}

fn inspect(engine: &Engine, dir: &DataDir) -> Result<Found, OpenError> {
    let path = dir.journal_path();
    let (journal, chain) = Journal::open(&path).map_err(named_open_error("opening the journal", &path))?;
    // A failure here is sled's (it cannot read its own pages), not the
    // journal's: it is named as such.
    let engine_revision = engine.with(revision_of).map_err(|e| sled_error(&dir.sled_dir(), e))?;
    let replayed = chain
        .entries
        .last()
        .map_or(engine_revision, |e| e.last.max(engine_revision));
    Ok(Found {
        journal,
        chain,
        engine_revision,
        replayed,
    })
}

fn journal_error(dir: &DataDir, problem: String) -> OpenError {
    OpenError::Journal {
        path: dir.journal_path(),
        problem,
    }
}

/// What damage the journal holds, in words.
fn describe(chain: &Chain, damage: Beyond) -> String {
    format!(
        "the entry at offset {} is damaged, and a whole entry after it, at offset {}, holds acknowledged revisions \
         {}..={} that the store does not have",
        chain.end, damage.offset, damage.first, damage.last
    )
}

/// Brings the engine up to every acknowledged batch: those after the last
/// checkpoint are in the journal, and the engine has those it wrote out
/// before stopping. Returns the journal, to be written from its start once
/// the engine is checkpointed, and the revision reached. A damaged journal
/// is refused before the replay writes anything, so a refused start leaves
/// the store as it found it.
pub(super) fn recover(engine: &Engine, dir: &DataDir) -> Result<(Journal, u64), OpenError> {
    let found = inspect(engine, dir)?;
    if let Some(damage) = found.chain.damage(found.replayed) {
        return Err(journal_error(
            dir,
            format!(
                "{}; starting would lose them. {REPAIR_HINT}",
                describe(&found.chain, damage)
            ),
        ));
    }
    let revision = engine
        .with(|backend| log::replay(backend, &found.chain.entries, found.engine_revision))
        .map_err(|e| {
            journal_error(
                dir,
                format!(
                    "{e}: sled's files in {} hold less than the journal needs to follow on (damaged or \
                     replaced), so acknowledged writes are missing. Restore the data directory from a backup",
                    dir.sled_dir().display()
                ),
            )
        })?;
    if revision != found.engine_revision {
        tracing::info!(
            from = found.engine_revision + 1,
            to = revision,
            "replayed acknowledged writes from the journal"
        );
    }
    Ok((found.journal, revision))
}

/// The store-wide revision the engine holds.
pub(super) fn revision_of(backend: &Backend) -> Result<u64, String> {
    Ok(backend
        .get(TreeId::Meta, meta::REVISION)
        .map_err(|e| e.to_string())?
        .and_then(|v| <[u8; 8]>::try_from(&*v).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// What `imaged repair` found, and did when told to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The revision the store holds whole: what the engine wrote out, and
    /// the journal's entries before any damage.
    pub keeps: u64,
    /// Revisions acknowledged after the damage, which cannot be recovered:
    /// `None` when the journal is whole.
    pub loses: Option<(u64, u64)>,
    /// Whether the repair was made: the store was brought to `keeps` and the
    /// journal emptied.
    pub repaired: bool,
}

/// Inspects the stopped store in `root` (taking its lock) and says what a
/// repair keeps and loses; when `apply`, and only if the journal is
/// damaged, makes it: replays the entries before the damage, makes them
/// durable, and empties the journal, so that the store opens again.
pub fn repair(root: &Path, options: &StoreOptions, apply: bool) -> Result<Repair, OpenError> {
    let dir = DataDir::open_existing(root)?;
    let sled_dir = dir.sled_dir();
    let engine = open_engine(&dir, options.sled_cache)?;
    let mut found = inspect(&engine, &dir)?;
    let Some(damage) = found.chain.damage(found.replayed) else {
        return Ok(Repair {
            keeps: found.replayed,
            loses: None,
            repaired: false,
        });
    };
    tracing::warn!("{}", describe(&found.chain, damage));
    let mut report = Repair {
        keeps: found.replayed,
        loses: Some((found.replayed + 1, damage.last)),
        repaired: false,
    };
    if apply {
        let io = |what: &'static str| {
            let path = sled_dir.clone();
            move |e: String| OpenError::Io {
                what,
                path,
                source: std::io::Error::other(e),
            }
        };
        engine
            .with(|backend| log::replay(backend, &found.chain.entries, found.engine_revision))
            .map_err(io("replaying the journal into"))?;
        engine.sync().map_err(|e| io("checkpointing")(e.to_string()))?;
        found
            .journal
            .erase()
            .map_err(|e| journal_error(&dir, format!("emptying it: {e}")))?;
        report.repaired = true;
    }
    Ok(report)
}

/// Opens the engine of the data directory's current sled, able to rotate
/// it, naming it when sled refuses.
pub(super) fn open_engine(dir: &DataDir, cache: SledCache) -> Result<Engine, OpenError> {
    Engine::open_generations(dir.root(), cache).map_err(|e| sled_error(&dir.sled_dir(), e.to_string()))
}

/// sled's failure in `sled_dir`, with what to do when it found its files
/// damaged.
fn sled_error(sled_dir: &Path, mut problem: String) -> OpenError {
    if problem.contains("corrupt") {
        // The journal holds only what came after the last checkpoint, so
        // sled's files cannot be rebuilt from it.
        problem.push_str(
            "; sled's files are damaged and imaged cannot rebuild them: restore the data directory from a backup",
        );
    }
    OpenError::Sled {
        path: sled_dir.to_owned(),
        problem,
    }
}

/// Counts the bytes of every namespace whose record has no count yet (one
/// written before imaged kept it), from its image records, and stores the
/// count. Returns whether it wrote anything; the caller then syncs. Safe
/// to run again after a crash: the count is derived from the records.
pub fn count_namespace_bytes(backend: &Backend) -> Result<bool, super::engine::EngineError> {
    use prost::Message;

    use super::layout::{Effect, NamespaceRecord};
    use super::record::image_bytes;

    let mut effects = Vec::new();
    for entry in backend.iter(TreeId::Namespaces) {
        let (name, value) = entry?;
        let Ok(mut record) = NamespaceRecord::decode(&*value) else {
            continue;
        };
        if record.bytes.is_some() {
            continue;
        }
        let mut prefix = name.to_vec();
        prefix.push(0);
        let mut bytes = 0;
        for image in backend.scan_prefix(TreeId::Images, &prefix) {
            let (key, value) = image?;
            bytes += image_bytes(&key, &value);
        }
        record.bytes = Some(bytes);
        tracing::info!(namespace = %String::from_utf8_lossy(&name), bytes, "counted the bytes of a namespace's images");
        effects.push(Effect {
            tree: TreeId::Namespaces,
            key: name.to_vec(),
            value: Some(record.encode_to_vec()),
        });
    }
    if effects.is_empty() {
        return Ok(false);
    }
    backend.apply(&effects, |_| {})?;
    Ok(true)
}
