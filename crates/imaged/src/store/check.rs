//! `imaged check`: verifies that the indexes, the repository records and
//! the namespace counters agree with the records, both ways.

use std::collections::BTreeMap;

use prost::Message;

use super::engine::Backend;
use imaged_types::repository_of;
use imaged_types::time::unix_nanos;

use super::layout::{
    NamespaceRecord, RepositoryRecord, TreeId, image_key, index, index_keys, meta, repository_key, split_image_key,
    split_number_index_key,
};
use super::record::{ImageRecord, image_bytes};
use crate::error::Error;

/// Most problems described one by one; the rest are only counted.
const MAX_DESCRIBED: usize = 100;

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    /// Image records read.
    pub images: u64,
    /// Index entries read.
    pub index_entries: u64,
    /// Namespaces read.
    pub namespaces: u64,
    /// How many problems were found.
    pub problem_count: u64,
    /// The first problems, described.
    pub problems: Vec<String>,
}

impl Report {
    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_DESCRIBED {
            self.problems.push(text);
        }
    }
}

/// Reads every record, index entry and namespace and reports disagreements.
pub fn run(trees: &Backend) -> Result<Report, Error> {
    let mut report = Report::default();
    // Images and their bytes, by namespace.
    let mut counts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    // What each repository's record must say: its count and its newest.
    let mut repositories: BTreeMap<Vec<u8>, (u64, (i64, String))> = BTreeMap::new();

    for entry in trees.iter(TreeId::Images) {
        let (key, value) = entry?;
        report.images += 1;
        let Some((ns, name)) = split_image_key(&key) else {
            report.problem(format!("malformed image key {key:?}"));
            continue;
        };
        let count = counts.entry(ns.to_owned()).or_default();
        count.0 += 1;
        count.1 += image_bytes(&key, &value);
        let image = match ImageRecord::decode(&*value)
            .map_err(|e| e.to_string())
            .and_then(|r| r.into_image(name))
        {
            Ok(image) => image,
            Err(e) => {
                report.problem(format!("record {ns}/{name:?} does not decode: {e}"));
                continue;
            }
        };
        for key in index_keys(ns, &image) {
            if trees.get(TreeId::Index, &key)?.is_none() {
                report.problem(format!("record {ns}/{name:?} is missing index entry {key:?}"));
            }
        }
        let repository = repositories.entry(repository_key(ns, repository_of(name))).or_default();
        repository.0 += 1;
        repository.1 = repository
            .1
            .clone()
            .max((unix_nanos(image.updated_at).max(0), name.to_owned()));
    }

    // A store not yet opened by an imaged that keeps repositories has none
    // to check; its next open builds them.
    let indexed = trees.get(TreeId::Meta, meta::REPOSITORIES_INDEXED)?.is_some();
    for entry in trees.iter(TreeId::Index) {
        let (key, value) = entry?;
        report.index_entries += 1;
        let checked = match key.first() {
            Some(&index::REPOSITORY) if !indexed => Ok(()),
            Some(&index::REPOSITORY) => check_repository(&key, &value, repositories.remove(&*key)),
            _ => check_index_entry(trees, &key),
        };
        if let Err(problem) = checked {
            report.problem(problem);
        }
    }
    if indexed {
        for (key, (tags, _)) in repositories {
            report.problem(format!("repository {key:?} holds {tags} images but has no record"));
        }
    }

    for entry in trees.iter(TreeId::Namespaces) {
        let (key, value) = entry?;
        report.namespaces += 1;
        let ns = String::from_utf8_lossy(&key).into_owned();
        match NamespaceRecord::decode(&*value) {
            Ok(record) => {
                let (actual, bytes) = counts.remove(&ns).unwrap_or((0, 0));
                if record.images != actual {
                    report.problem(format!(
                        "namespace {ns:?} counts {} images but holds {actual}",
                        record.images
                    ));
                }
                // A record from before the count was kept has none yet;
                // the next open counts it.
                if record.bytes.is_some_and(|counted| counted != bytes) {
                    report.problem(format!(
                        "namespace {ns:?} counts {} bytes of images but holds {bytes}",
                        record.bytes.unwrap_or(0)
                    ));
                }
            }
            Err(e) => report.problem(format!("namespace {ns:?} does not decode: {e}")),
        }
    }
    for (ns, (count, _)) in counts {
        report.problem(format!(
            "namespace {ns:?} holds {count} images but has no namespace record"
        ));
    }
    Ok(report)
}

/// Checks a repository's record against what its images say: their count
/// and the newest of them (`expected`, `None` when it holds none).
fn check_repository(key: &[u8], value: &[u8], expected: Option<(u64, (i64, String))>) -> Result<(), String> {
    let record =
        RepositoryRecord::decode(value).map_err(|e| format!("repository record {key:?} does not decode: {e}"))?;
    let Some((tags, (at, newest))) = expected else {
        return Err(format!(
            "repository record {key:?} counts {} images but none exist",
            record.tags
        ));
    };
    if record.tags != tags {
        return Err(format!(
            "repository record {key:?} counts {} images but holds {tags}",
            record.tags
        ));
    }
    if (record.newest_updated_at, record.newest.as_str()) != (at, newest.as_str()) {
        return Err(format!(
            "repository record {key:?} names {:?} its newest image, but {newest:?} is",
            record.newest
        ));
    }
    Ok(())
}

/// Checks that an index entry points at a record whose own index entries
/// include it (so the indexed value is the record's).
fn check_index_entry(trees: &Backend, key: &[u8]) -> Result<(), String> {
    let malformed = || format!("malformed index key {key:?}");
    let (&kind, rest) = key.split_first().ok_or_else(malformed)?;
    let sep = rest.iter().position(|b| *b == 0).ok_or_else(malformed)?;
    let ns = std::str::from_utf8(&rest[..sep]).map_err(|_| malformed())?;
    let rest = &rest[sep + 1..];
    let name = match kind {
        index::DIGEST => {
            let at = rest.iter().position(|b| *b == 0).ok_or_else(malformed)?;
            std::str::from_utf8(&rest[at + 1..]).map_err(|_| malformed())?
        }
        index::CREATED | index::UPDATED | index::SIZE => split_number_index_key(rest).ok_or_else(malformed)?.1,
        index::REPOSITORY_TAGS => {
            let at = rest.iter().position(|b| *b == 0).ok_or_else(malformed)?;
            split_number_index_key(&rest[at + 1..]).ok_or_else(malformed)?.1
        }
        _ => return Err(format!("index entry of unknown kind {kind}: {key:?}")),
    };
    let record = trees
        .get(TreeId::Images, &image_key(ns, name))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("index entry {key:?} points at {ns}/{name:?}, which does not exist"))?;
    let image = ImageRecord::decode(&*record)
        .map_err(|e| e.to_string())
        .and_then(|r| r.into_image(name))
        .map_err(|e| format!("record {ns}/{name:?} does not decode: {e}"))?;
    if !index_keys(ns, &image).iter().any(|k| k.as_slice() == key) {
        return Err(format!("index entry {key:?} disagrees with record {ns}/{name:?}"));
    }
    Ok(())
}
