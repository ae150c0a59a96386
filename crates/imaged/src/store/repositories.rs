//! The repository index built whole from the image records: once for a
//! store written before imaged kept it (at its first open by this imaged),
//! and for every restored store. From then on the rules keep it in every
//! write's batch ([`super::rules::repository`]).
//!
//! The build removes whatever repository entries exist, writes each
//! image's `REPOSITORY_TAGS` entry and each repository's record, and only
//! then marks the store indexed (`meta::REPOSITORIES_INDEXED`). Everything
//! it writes is derived from the records, so a build cut short by a kill
//! is simply made again by the next open.
//!
//! It is public for one other user: the `repository_index` example, which
//! times it on a stopped store.

use std::collections::BTreeMap;

use imaged_types::repository_of;
use imaged_types::time::unix_nanos;
use prost::Message;

use super::engine::{Backend, EngineError};
use super::layout::{
    Effect, RepositoryRecord, TreeId, index, meta, repository_key, repository_tags_key, split_image_key,
};
use super::record::decode_image;

/// Effects applied at a time, so the build's memory stays bounded by the
/// repositories, not the images.
const CHUNK: usize = 10_000;

/// Builds the repository index unless the store has one (always when
/// `rebuild`). Returns whether it wrote anything; the caller then syncs.
/// A record that does not decode is left out (and `imaged check` reports
/// it).
pub fn build(backend: &Backend, rebuild: bool) -> Result<bool, EngineError> {
    if !rebuild && backend.get(TreeId::Meta, meta::REPOSITORIES_INDEXED)?.is_some() {
        return Ok(false);
    }
    // Said first, so an operator watching a slow first start after an
    // upgrade knows what it waits for.
    if !rebuild && backend.iter(TreeId::Images).next().is_some() {
        tracing::info!("building the repository index from the image records, once after an upgrade to this format");
    }
    let mut effects = Vec::new();
    let flush = |effects: &mut Vec<Effect>, force: bool| -> Result<(), EngineError> {
        if force || effects.len() >= CHUNK {
            backend.apply(effects, |_| {})?;
            effects.clear();
        }
        Ok(())
    };
    for kind in [index::REPOSITORY, index::REPOSITORY_TAGS] {
        for entry in backend.scan_prefix(TreeId::Index, &[kind]) {
            let (key, _) = entry?;
            effects.push(Effect {
                tree: TreeId::Index,
                key: key.to_vec(),
                value: None,
            });
            flush(&mut effects, false)?;
        }
    }
    let mut repositories: BTreeMap<Vec<u8>, RepositoryRecord> = BTreeMap::new();
    let mut images = 0u64;
    for entry in backend.iter(TreeId::Images) {
        let (key, value) = entry?;
        let Some((ns, name)) = split_image_key(&key) else {
            continue;
        };
        let Ok(image) = decode_image(name, &value) else {
            continue;
        };
        images += 1;
        effects.push(Effect {
            tree: TreeId::Index,
            key: repository_tags_key(ns, &image),
            value: Some(Vec::new()),
        });
        flush(&mut effects, false)?;
        let record = repositories.entry(repository_key(ns, repository_of(name))).or_default();
        record.tags += 1;
        let updated = unix_nanos(image.updated_at).max(0);
        if (updated, name) >= (record.newest_updated_at, record.newest.as_str()) {
            (record.newest_updated_at, record.newest) = (updated, name.to_owned());
        }
        // What a change of the repository was is not kept for an older
        // store: its newest image's change is the best known.
        record.updated_at = record.newest_updated_at;
        record.mod_revision = record.mod_revision.max(image.mod_revision);
    }
    let count = repositories.len();
    for (key, record) in repositories {
        effects.push(Effect {
            tree: TreeId::Index,
            key,
            value: Some(record.encode_to_vec()),
        });
        flush(&mut effects, false)?;
    }
    effects.push(Effect {
        tree: TreeId::Meta,
        key: meta::REPOSITORIES_INDEXED.to_vec(),
        value: Some(Vec::new()),
    });
    flush(&mut effects, true)?;
    if images > 0 {
        tracing::info!(
            images,
            repositories = count,
            "built the repository index from the image records"
        );
    }
    Ok(true)
}
