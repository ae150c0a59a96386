//! Backups: the file an online copy of the store is written as, and the
//! restore that makes a data directory from one.
//!
//! - [`file`](mod@file): the framing, with a checksum per frame and for the whole.
//! - [`write()`]: a copy of a running store ([`Store::copy`]) as a file.
//! - [`restore()`]: a file into a data directory, all or nothing
//!   (the staging and the switch are the store's: `store::restore`).
//!
//! docs/BACKUP.md specifies the file and the guarantees.

pub mod file;

use std::io::{Read, Write};
use std::path::Path;
use std::time::SystemTime;

use imaged_api::imaged::admin::v1::backup_record::Record;
use imaged_api::imaged::admin::v1::{BackupHeader, BackupImage, BackupNamespace, BackupRecord, BackupRemoval};
use imaged_types::image::{validate_label_set, validate_name};
use imaged_types::time::unix_nanos;
use imaged_types::wire::{image_to_seed, stored_image_from_seed};
use imaged_types::{Namespace, NamespaceName};

use crate::error::Error;
use crate::store::copy::{Item, Stopped};
use crate::store::restore::{Restored, Stage};
use crate::store::{OpenError, SledCache, Store};

/// Writes a consistent copy of `store` to `out` as a backup file. Returns
/// the revision it is consistent at, or `None` when writing to `out` failed
/// (the reader went away): the copy then stopped.
pub fn write<W: Write>(store: &Store, out: W) -> Result<Option<u64>, Error> {
    let header = BackupHeader {
        start_revision: store.revision(),
        created_unix_nanos: unix_nanos(SystemTime::now()),
        store_uuid: store.uuid().to_owned(),
        imaged_version: crate::build_info::VERSION.to_owned(),
    };
    let Ok(mut writer) = file::Writer::new(out, &header) else {
        return Ok(None);
    };
    let copied = store.copy(|item| writer.record(&to_record(item)).map_err(|_| Stopped))?;
    let Some((_, end)) = copied else { return Ok(None) };
    Ok(writer.finish(end).ok().map(|_| end))
}

/// An item of a copy as a record of the file.
fn to_record(item: Item) -> BackupRecord {
    let removal = |namespace: &NamespaceName, name: String| BackupRemoval {
        namespace: namespace.as_str().to_owned(),
        name,
    };
    let record = match item {
        Item::Namespace(ns) => Record::Namespace(BackupNamespace {
            name: ns.name.as_str().to_owned(),
            labels: ns.labels,
        }),
        Item::Image(ns, image) => Record::Image(BackupImage {
            namespace: ns.as_str().to_owned(),
            image: Some(image_to_seed(image)),
        }),
        Item::NamespaceRemoved(ns) => Record::NamespaceRemoved(removal(&ns, String::new())),
        Item::ImageRemoved(ns, name) => Record::ImageRemoved(removal(&ns, name)),
    };
    BackupRecord { record: Some(record) }
}

/// A record of the file as an item, checked by the rules every write meets.
fn from_record(record: BackupRecord) -> Result<Item, String> {
    let ns = |name: &str| NamespaceName::parse("namespace", name).map_err(|e| e.to_string());
    match record.record {
        Some(Record::Namespace(n)) => {
            validate_label_set("labels", &n.labels).map_err(|e| e.to_string())?;
            Ok(Item::Namespace(Namespace {
                name: ns(&n.name)?,
                labels: n.labels,
            }))
        }
        Some(Record::Image(i)) => {
            let ns = ns(&i.namespace)?;
            let image = stored_image_from_seed(i.image.unwrap_or_default()).map_err(|e| e.to_string())?;
            image.validate().map_err(|e| e.to_string())?;
            Ok(Item::Image(ns, image))
        }
        Some(Record::NamespaceRemoved(r)) => Ok(Item::NamespaceRemoved(ns(&r.namespace)?)),
        Some(Record::ImageRemoved(r)) => {
            validate_name("name", &r.name).map_err(|e| e.to_string())?;
            Ok(Item::ImageRemoved(ns(&r.namespace)?, r.name))
        }
        None => Err("a record with nothing in it".into()),
    }
}

/// Why a restore did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The data directory could not be opened or locked.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// It holds a store, and `--force` was not given.
    #[error(
        "{0} holds a store already; nothing was changed. Pass --force to replace it (the old data is kept until \
         the new is whole)"
    )]
    HoldsData(String),
    /// The file was refused; nothing was restored.
    #[error("{0}; nothing was restored")]
    File(#[from] file::FileError),
    /// Staging or switching failed; the old data, if any, is in place.
    #[error("{0}")]
    Staging(String),
}

/// Restores the backup read from `input` into data directory `root`: into a
/// staging directory inside it first, and, once the whole file is checked
/// and every record applied and made durable, in place of what `root`
/// held, in one step a crash cannot split (`store::restore`). Refuses a
/// `root` that holds a store unless `force`.
pub fn restore(root: &Path, input: impl Read, force: bool, cache: SledCache) -> Result<Restored, RestoreError> {
    let stage = Stage::begin(root, cache)?;
    if stage.holds_data() && !force {
        return Err(RestoreError::HoldsData(root.display().to_string()));
    }
    let mut stage = stage.staging().map_err(RestoreError::Staging)?;
    let summary = file::read(input, |record| stage.apply(from_record(record)?))?;
    stage
        .commit(summary.revision, summary.header.start_revision)
        .map_err(RestoreError::Staging)
}

impl From<Error> for RestoreError {
    fn from(e: Error) -> Self {
        RestoreError::Staging(e.to_string())
    }
}
