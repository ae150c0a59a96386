//! Restoring a data directory: a new store staged beside the old one, and a
//! switch that a crash cannot leave half made.
//!
//! The data directory's lock is held throughout, so no daemon runs on it.
//!
//! 1. **Stage.** A new store is built in `restore/` inside the data
//!    directory: sled's files, an empty journal and `FORMAT`. Each record
//!    is written as the rules would have stored it (record, index entries,
//!    namespace counters), with the file's times and revisions, and the
//!    store's revision and compaction mark set to the file's revision.
//!    Then the full barrier makes it durable.
//! 2. **Commit.** `restore/COMMITTED` is made and `restore/` synced: from
//!    this moment the restore has happened.
//! 3. **Settle.** A rotation's pointer `ENGINE` goes, each of `sled`,
//!    `journal` and `FORMAT` in place is replaced by its staged one, by
//!    rename, and `restore/` goes. None of this is synced: it is a redo of
//!    the commit. The next open removes the old `sled.N` generations.
//!
//! Every open of the data directory settles first (`staging::settle`): a staging
//! directory without `COMMITTED` is an unfinished restore, discarded (the
//! old data never changed); one with it is finished, each step being safe
//! to repeat. A crash or a power cut anywhere leaves the old data or the
//! new, never a mix.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use imaged_types::Labels;
use prost::Message;

use super::SledCache;
use super::copy::Item;
use super::engine::Engine;
use super::engine::barrier::sync_dir;
use super::format::{self, DataDir, OpenError, no_follow};
use super::layout::{Effect, MAX_REVISION, NamespaceRecord, TreeId, image_key, index_changes, meta};
use super::log::journal::Journal;
use super::record::{ImageRecord, decode_image, image_bytes};
use super::staging::{COMMITTED, STAGING, remove_any, settle};

/// What a restore made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The store's revision: the file's.
    pub revision: u64,
    /// The revision the copy began at; writes between it and `revision`
    /// came from the file's change records.
    pub began: u64,
    /// Namespaces restored.
    pub namespaces: u64,
    /// Images restored.
    pub images: u64,
}

/// A locked data directory about to be restored.
pub struct Stage {
    dir: DataDir,
    root: PathBuf,
    cache: SledCache,
    fresh: Fresh,
}

/// What opening an empty data directory made in it (`FORMAT`, `lock`),
/// removed again unless the restore commits: a failed restore into an
/// empty directory leaves it empty.
struct Fresh {
    root: Option<PathBuf>,
}

impl Fresh {
    fn keep(&mut self) {
        self.root = None;
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        let Some(root) = &self.root else { return };
        for name in ["FORMAT", "lock"] {
            let path = root.join(name);
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove what the failed restore made");
            }
        }
        // Not synced: a power cut that brings them back leaves an empty
        // store's files, which any later start or restore accepts.
    }
}

impl Stage {
    /// Opens and locks data directory `root` (making it when missing).
    pub fn begin(root: &Path, cache: SledCache) -> Result<Stage, OpenError> {
        let empty = fs::read_dir(root).map_or(true, |mut entries| entries.next().is_none());
        let mut fresh = Fresh {
            root: Some(root.to_owned()),
        };
        let dir = DataDir::open(root).inspect_err(|_| {
            if !empty {
                fresh.keep();
            }
        })?;
        if !empty {
            fresh.keep();
        }
        Ok(Stage {
            dir,
            root: root.to_owned(),
            cache,
            fresh,
        })
    }

    /// Whether the directory holds a store.
    pub fn holds_data(&self) -> bool {
        ["sled", "journal"]
            .iter()
            .any(|name| fs::symlink_metadata(self.root.join(name)).is_ok())
    }

    /// Makes the staging directory, empty, with a new engine in it.
    pub fn staging(self) -> Result<Staging, String> {
        let path = self.root.join(STAGING);
        remove_any(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
        // Its own entry is synced too: the commit mark inside it is no
        // commit if a power cut can take the directory away.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .and_then(|()| crate::fault::sync("restore-staging-dir", || sync_dir(&self.root)))
            .map_err(|e| format!("making {}: {e}", path.display()))?;
        let engine = Engine::open(&path.join("sled"), self.cache).map_err(|e| format!("staging sled: {e}"))?;
        Ok(Staging {
            _dir: self.dir,
            fresh: self.fresh,
            root: self.root,
            path,
            engine: Some(engine),
            namespaces: BTreeMap::new(),
            newest: 0,
            committed: false,
        })
    }
}

/// A namespace as the records so far leave it.
#[derive(Default)]
struct NamespaceState {
    labels: Labels,
    images: u64,
    bytes: u64,
}

/// A store being built in the staging directory. Dropped before
/// [`Staging::commit`], it is removed and the data directory is as it was.
pub struct Staging {
    _dir: DataDir,
    fresh: Fresh,
    root: PathBuf,
    path: PathBuf,
    engine: Option<Engine>,
    namespaces: BTreeMap<String, NamespaceState>,
    /// The newest revision any image carries.
    newest: u64,
    committed: bool,
}

impl Staging {
    /// Applies one record: a later record of the same namespace or image
    /// replaces an earlier one.
    pub fn apply(&mut self, item: Item) -> Result<(), String> {
        let engine = self.engine.as_ref().expect("open until commit");
        let mut effects = Vec::new();
        let mut put = |tree, key: &[u8], value: Option<Vec<u8>>| {
            effects.push(Effect {
                tree,
                key: key.to_vec(),
                value,
            })
        };
        match item {
            Item::Namespace(ns) => {
                self.namespaces.entry(ns.name.as_str().to_owned()).or_default().labels = ns.labels;
            }
            Item::NamespaceRemoved(ns) => {
                if let Some(state) = self.namespaces.remove(ns.as_str())
                    && state.images > 0
                {
                    return Err(format!(
                        "namespace {:?} is removed while it holds {} images",
                        ns.as_str(),
                        state.images
                    ));
                }
            }
            Item::Image(ns, image) => {
                let key = image_key(ns.as_str(), &image.name);
                let old = self.stored(engine, &key, &image.name)?;
                for (key, value) in index_changes(ns.as_str(), old.as_ref().map(|(i, _)| i), Some(&image)) {
                    put(TreeId::Index, &key, value);
                }
                self.newest = self.newest.max(image.mod_revision);
                let record = ImageRecord::from_image(&image, image.create_revision, image.mod_revision).encode_to_vec();
                let bytes = image_bytes(&key, &record);
                put(TreeId::Images, &key, Some(record));
                let state = self.namespaces.entry(ns.as_str().to_owned()).or_default();
                state.images += u64::from(old.is_none());
                state.bytes = state.bytes - old.map_or(0, |(_, b)| b) + bytes;
            }
            Item::ImageRemoved(ns, name) => {
                let key = image_key(ns.as_str(), &name);
                if let Some((old, bytes)) = self.stored(engine, &key, &name)? {
                    for (key, value) in index_changes(ns.as_str(), Some(&old), None) {
                        put(TreeId::Index, &key, value);
                    }
                    put(TreeId::Images, &key, None);
                    if let Some(state) = self.namespaces.get_mut(ns.as_str()) {
                        state.images = state.images.saturating_sub(1);
                        state.bytes = state.bytes.saturating_sub(bytes);
                    }
                }
            }
        }
        engine
            .with(|backend| backend.apply(&effects, |_| {}))
            .map_err(|e| format!("staging: {e}"))
    }

    /// The image staged at `key`, and what it takes against its namespace's
    /// quota.
    fn stored(&self, engine: &Engine, key: &[u8], name: &str) -> Result<Option<(imaged_types::Image, u64)>, String> {
        let bytes = engine
            .with(|backend| backend.get(TreeId::Images, key))
            .map_err(|e| format!("staging: {e}"))?;
        bytes
            .map(|b| decode_image(name, &b).map(|image| (image, image_bytes(key, &b))))
            .transpose()
    }

    /// Finishes the staged store at `revision` (of a copy that began at
    /// `began`), makes it durable, commits the restore, and puts it in
    /// place.
    pub fn commit(mut self, revision: u64, began: u64) -> Result<Restored, String> {
        if revision >= MAX_REVISION {
            return Err(format!(
                "the file's revision {revision} leaves no room for a write: a store's revision is at most \
                 {MAX_REVISION} (2^63); the file is not one imaged writes"
            ));
        }
        if self.newest > revision {
            return Err(format!(
                "an image carries revision {}, after the file's revision {revision}: the file is inconsistent",
                self.newest
            ));
        }
        let mut effects: Vec<Effect> = self
            .namespaces
            .iter()
            .map(|(name, state)| Effect {
                tree: TreeId::Namespaces,
                key: name.as_bytes().to_vec(),
                value: Some(
                    NamespaceRecord {
                        labels: state.labels.clone(),
                        images: state.images,
                        bytes: Some(state.bytes),
                    }
                    .encode_to_vec(),
                ),
            })
            .collect();
        for key in [meta::REVISION, meta::COMPACTED] {
            effects.push(Effect {
                tree: TreeId::Meta,
                key: key.to_vec(),
                value: Some(revision.to_be_bytes().to_vec()),
            });
        }
        let engine = self.engine.take().expect("open until commit");
        engine
            .with(|backend| backend.apply(&effects, |_| {}))
            .and_then(|()| {
                engine
                    .with(|backend| super::repositories::build(backend, true))
                    .map(drop)
            })
            .and_then(|()| engine.sync())
            .map_err(|e| format!("making the staged store durable: {e}"))?;
        drop(engine);
        Journal::open(&self.path.join("journal")).map_err(|e| format!("making the staged journal: {e}"))?;
        format::write_format(&self.path).map_err(|e| e.to_string())?;
        crate::fault::point("restore-staged");
        let mark = self.path.join(COMMITTED);
        no_follow()
            .write(true)
            .create_new(true)
            .open(&mark)
            // An empty file: its name is the commit, and its directory's
            // sync makes that durable.
            .and_then(|_| crate::fault::sync("restore-mark-dir", || sync_dir(&self.path)))
            .map_err(|e| format!("committing the restore ({}): {e}", mark.display()))?;
        self.committed = true;
        self.fresh.keep();
        crate::fault::point("restore-committed");
        settle(&self.root).map_err(|e| {
            format!(
                "the restore is committed but not yet in place ({e}); the next start of imaged on {} finishes it",
                self.root.display()
            )
        })?;
        let images = self.namespaces.values().map(|s| s.images).sum();
        Ok(Restored {
            revision,
            began,
            namespaces: self.namespaces.len() as u64,
            images,
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            drop(self.engine.take());
            if let Err(e) = remove_any(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "removing the staged restore failed");
            }
        }
    }
}
