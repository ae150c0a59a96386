//! The rule that keeps each repository's record: written in the batch of
//! every write of one of its images, so a list of repositories is a range
//! read of their records, never a scan of the images.
//!
//! The record counts the repository's images, names the one updated last,
//! and says when and at which revision one of them last changed. The
//! newest is the last of the repository's `REPOSITORY_TAGS` index entries;
//! it is looked up there only when the newest itself goes or moves back in
//! time, so most writes read one record and write it back.

use imaged_types::time::unix_nanos;
use imaged_types::{Image, repository_of};
use prost::Message;

use super::Records;
use crate::store::engine::EngineError;
use crate::store::layout::{RepositoryRecord, TreeId, repository_key, repository_tags_prefix, split_number_index_key};

/// Accounts a write of an image of `ns` from `before` to `after` (either
/// absent for a creation or a deletion), made at `now` (nanoseconds since
/// the epoch) as revision `rev`, in its repository's record. The image's
/// index entries must already be written in `records`.
pub(super) fn account(
    records: &mut impl Records,
    ns: &str,
    before: Option<&Image>,
    after: Option<&Image>,
    now: i64,
    rev: u64,
) -> Result<(), EngineError> {
    let Some(name) = after.or(before).map(|image| image.name.as_str()) else {
        return Ok(());
    };
    let repository = repository_of(name);
    let key = repository_key(ns, repository);
    // A record that does not decode is rebuilt from this write on; `imaged
    // check` reports a count that is then wrong.
    let mut record = records
        .get(TreeId::Index, &key)?
        .and_then(|bytes| RepositoryRecord::decode(&*bytes).ok())
        .unwrap_or_default();
    match (before, after) {
        (None, Some(_)) => record.tags += 1,
        (Some(_), None) => record.tags = record.tags.saturating_sub(1),
        _ => {}
    }
    if record.tags == 0 {
        records.put(TreeId::Index, &key, None);
        return Ok(());
    }
    let newest = (record.newest_updated_at, record.newest.as_str());
    let written = after.map(|image| (unix_nanos(image.updated_at).max(0), image.name.as_str()));
    match written {
        Some(position) if record.newest.is_empty() || position >= newest => {
            (record.newest_updated_at, record.newest) = (position.0, position.1.to_owned());
        }
        // The newest went, or moved back in time: the index says which
        // image is newest now.
        _ if record.newest == name => {
            let prefix = repository_tags_prefix(ns, repository);
            let last = records.last_with_prefix(TreeId::Index, &prefix)?;
            let found = last
                .as_deref()
                .and_then(|key| split_number_index_key(&key[prefix.len()..]));
            let (at, newest) = found.unwrap_or_default();
            (record.newest_updated_at, record.newest) = (at, newest.to_owned());
        }
        _ => {}
    }
    record.updated_at = now;
    record.mod_revision = rev;
    records.put(TreeId::Index, &key, Some(record.encode_to_vec()));
    Ok(())
}
