//! The sled-only server's writes: the sled calls imaged's writer makes for a
//! create and for a label update, and nothing else.
//!
//! The null server makes them when started with `--sled DIR` (see
//! [`crate::null`]), and answers creates and updates only once they are
//! made. It leaves out everything else imaged does for a write: no journal,
//! no `fdatasync`, no batching thread, no namespace count, no revision. Its
//! writes call sled one at a time, as imaged's one writer does, under a lock
//! and right on the executor, with no hand-off to another thread. sled is
//! opened as imaged opens it (`layout::Backend::open`, the same settings), flushed as
//! often as imaged checkpoints, and reopened as often as imaged reopens it,
//! with the cache imaged's default gives the store at that size. The flush
//! runs on a thread of its own while writes go on, where imaged's writer
//! waits for its checkpoint: the server is meant to be the faster. Its write
//! rates, its memory and its disk show what sled allows imaged's records
//! with no durability at all.
//!
//! The keys and records are imaged's own (`imaged::store::layout`), so the
//! server follows any change to the layout.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::SystemTime;

use imaged::store::layout::{
    Backend, Effect, EngineError, RepositoryRecord, TreeId, image_key, index, index_keys, number_index_key,
    repository_key, repository_tags_prefix,
};
use imaged::store::record::ImageRecord;
use imaged::store::{SledCache, StoreOptions};
use imaged_api::containerd::services::images::v1 as ctrd;
use imaged_types::repository_of;
use imaged_types::time::unix_nanos;
use prost::Message;
use tonic::Status;

/// The namespace the load generator writes to.
const NAMESPACE: &str = crate::load::NAMESPACE;

/// Bytes written between two flushes: imaged flushes sled at each checkpoint,
/// when its 4 MiB journal fills.
const FLUSH_EVERY: u64 = 4 << 20;

/// A flush in progress, on a thread of its own.
type Flush = JoinHandle<Result<(), EngineError>>;

/// A sled database holding images as imaged lays them out, opened and
/// reopened as imaged opens and reopens its own.
pub struct SledWrites {
    dir: PathBuf,
    /// imaged's default: the cache grows with the store at each reopen.
    cache: SledCache,
    /// Bytes written between flushes: [`FLUSH_EVERY`].
    flush_every: u64,
    /// Bytes written between reopens: imaged's default.
    reopen_every: u64,
    /// Held across each write's sled calls: one writer at a time, as in
    /// imaged.
    open: Mutex<Open>,
}

/// The open database and what was written since it opened.
struct Open {
    /// `None` only when a reopen failed.
    trees: Option<Backend>,
    /// Since the last flush started.
    unflushed: u64,
    /// The flush in progress, if any.
    flushing: Option<Flush>,
    /// How many flushes were started.
    flushes: u64,
    /// Since sled opened.
    written: u64,
    /// How many times sled was reopened.
    reopens: u64,
}

fn storage(e: EngineError) -> Status {
    Status::internal(format!("sled: {e}"))
}

impl Open {
    fn trees(&self) -> Result<&Backend, Status> {
        self.trees
            .as_ref()
            .ok_or_else(|| Status::unavailable("sled failed to reopen; restart the server"))
    }

    /// Whether no flush is in progress, after collecting the result of one
    /// that has finished; `wait` waits for one that has not.
    fn flush_done(&mut self, wait: bool) -> Result<bool, Status> {
        match self.flushing.take() {
            None => Ok(true),
            Some(flush) if wait || flush.is_finished() => {
                let result = flush.join().map_err(|_| Status::internal("sled's flush panicked"))?;
                result.map_err(storage)?;
                Ok(true)
            }
            Some(flush) => {
                self.flushing = Some(flush);
                Ok(false)
            }
        }
    }
}

impl SledWrites {
    /// Opens (creating) a database in `dir` with imaged's trees, settings and
    /// default cache.
    pub fn open(dir: &Path) -> Result<SledWrites, EngineError> {
        let defaults = StoreOptions::default();
        let trees = Backend::open(dir, defaults.sled_cache.for_dir(dir))?;
        Ok(SledWrites {
            dir: dir.to_owned(),
            cache: defaults.sled_cache,
            flush_every: FLUSH_EVERY,
            reopen_every: defaults.reopen_after_bytes,
            open: Mutex::new(Open {
                trees: Some(trees),
                unflushed: 0,
                flushing: None,
                flushes: 0,
                written: 0,
                reopens: 0,
            }),
        })
    }

    /// Counts `bytes` written; flushes and reopens sled when imaged would.
    /// A flush due while the last one still runs starts once it is done.
    fn wrote(&self, open: &mut Open, bytes: u64) -> Result<(), Status> {
        open.unflushed += bytes;
        open.written += bytes;
        if open.unflushed >= self.flush_every && open.flush_done(false)? {
            let backend = open.trees()?.clone();
            open.flushing = Some(thread::spawn(move || backend.flush()));
            open.unflushed = 0;
            open.flushes += 1;
        }
        if self.reopen_every > 0 && open.written >= self.reopen_every {
            // Closes sled (once the flush lets go of its handle, these are
            // the last ones) and opens it again, with the cache sized for
            // the store as it is now.
            open.flush_done(true)?;
            open.trees = None;
            open.trees = Some(Backend::open(&self.dir, self.cache.for_dir(&self.dir)).map_err(storage)?);
            open.written = 0;
            open.reopens += 1;
        }
        Ok(())
    }

    /// What imaged's writer does in sled for a create: read the name (is it
    /// taken?), then write the record and its index entries, and read and
    /// write its repository's record.
    pub fn create(&self, wire: ctrd::Image) -> Result<(), Status> {
        let mut image = imaged_types::wire::image_from_containerd(Some(wire))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let now = SystemTime::now();
        image.created_at = now;
        image.updated_at = now;
        let key = image_key(NAMESPACE, &image.name);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let trees = open.trees()?;
        if trees.get(TreeId::Images, &key).map_err(storage)?.is_some() {
            return Err(Status::already_exists(format!("image {:?}", image.name)));
        }
        let record = ImageRecord::from_image(&image, 1, 1).encode_to_vec();
        let mut bytes = (key.len() + record.len()) as u64;
        let mut writes = vec![write(TreeId::Images, key, Some(record))];
        for entry in index_keys(NAMESPACE, &image) {
            bytes += entry.len() as u64;
            writes.push(write(TreeId::Index, entry, Some(Vec::new())));
        }
        let repository = repository(trees, &image.name, unix_nanos(now), 1)?;
        bytes += repository.key.len() as u64;
        writes.push(repository);
        trees.apply(&writes, |_| {}).map_err(storage)?;
        self.wrote(&mut open, bytes)
    }

    /// What imaged's writer does in sled for an update of one label: read
    /// and decode the record, write it back changed, move the image's
    /// entries in the indexes by update time, and read and write its
    /// repository's record.
    pub fn set_label(&self, name: &str, key: &str, value: &str) -> Result<(), Status> {
        let record_key = image_key(NAMESPACE, name);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let trees = open.trees()?;
        let stored = trees
            .get(TreeId::Images, &record_key)
            .map_err(storage)?
            .ok_or_else(|| Status::not_found(format!("image {name:?}")))?;
        let mut record = ImageRecord::decode(stored.as_ref()).map_err(|e| Status::data_loss(e.to_string()))?;
        let old = number_index_key(index::UPDATED, NAMESPACE, record.updated_unix_nanos, name);
        record.labels.insert(key.to_owned(), value.to_owned());
        record.updated_unix_nanos = unix_nanos(SystemTime::now());
        let new = number_index_key(index::UPDATED, NAMESPACE, record.updated_unix_nanos, name);
        // The update-time entry's key after its prefix: time, then name.
        let old_prefix = number_index_key(index::UPDATED, NAMESPACE, 0, "").len() - 8;
        let updated = record.updated_unix_nanos;
        let record = record.encode_to_vec();
        let mut bytes = (record_key.len() + record.len()) as u64;
        let mut writes = vec![write(TreeId::Images, record_key, Some(record))];
        if old != new {
            let tags = repository_tags_prefix(NAMESPACE, repository_of(name));
            let [old_tag, new_tag] = [&old, &new].map(|key| [&tags[..], &key[old_prefix..]].concat());
            bytes += (old.len() + new.len() + old_tag.len() + new_tag.len()) as u64;
            writes.push(write(TreeId::Index, old, None));
            writes.push(write(TreeId::Index, new, Some(Vec::new())));
            writes.push(write(TreeId::Index, old_tag, None));
            writes.push(write(TreeId::Index, new_tag, Some(Vec::new())));
        }
        let repository = repository(trees, name, updated, 0)?;
        bytes += repository.key.len() as u64;
        writes.push(repository);
        trees.apply(&writes, |_| {}).map_err(storage)?;
        self.wrote(&mut open, bytes)
    }
}

/// The write of `name`'s repository record after a write of `name` at
/// `at`, which adds `added` images to it: read, changed, written back, as
/// imaged's rules do when the image written is the newest.
fn repository(trees: &Backend, name: &str, at: i64, added: u64) -> Result<Effect, Status> {
    let key = repository_key(NAMESPACE, repository_of(name));
    let stored = trees.get(TreeId::Index, &key).map_err(storage)?;
    let mut record = stored
        .and_then(|bytes| RepositoryRecord::decode(bytes.as_ref()).ok())
        .unwrap_or_default();
    record.tags += added;
    (record.newest, record.newest_updated_at) = (name.to_owned(), at);
    record.updated_at = at;
    record.mod_revision += 1;
    Ok(write(TreeId::Index, key, Some(record.encode_to_vec())))
}

/// One write of `key` in `tree`.
fn write(tree: TreeId, key: Vec<u8>, value: Option<Vec<u8>>) -> Effect {
    Effect { tree, key, value }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imaged::store::layout::IMAGE_INDEX_ENTRIES;

    /// Index entries per image: its own, and its repository's record (each
    /// image the bench writes is a repository of its own).
    const PER_IMAGE: usize = IMAGE_INDEX_ENTRIES + 1;

    fn count(writes: &SledWrites) -> (usize, usize) {
        let open = writes.open.lock().unwrap();
        let trees = open.trees().unwrap();
        (trees.len(TreeId::Images), trees.len(TreeId::Index))
    }

    fn record(writes: &SledWrites, name: &str) -> ImageRecord {
        let open = writes.open.lock().unwrap();
        let stored = open
            .trees()
            .unwrap()
            .get(TreeId::Images, &image_key(NAMESPACE, name))
            .unwrap()
            .unwrap();
        ImageRecord::decode(stored.as_ref()).unwrap()
    }

    fn indexed(writes: &SledWrites, key: Vec<u8>) -> bool {
        let open = writes.open.lock().unwrap();
        open.trees().unwrap().get(TreeId::Index, &key).unwrap().is_some()
    }

    #[test]
    fn the_sled_only_server_keeps_imaged_records_and_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let writes = SledWrites::open(dir.path()).unwrap();
        for n in 0..50 {
            writes.create(crate::load::image(n)).unwrap();
        }
        let again = writes.create(crate::load::image(7)).unwrap_err();
        assert_eq!(again.code(), tonic::Code::AlreadyExists);
        assert_eq!(count(&writes), (50, PER_IMAGE * 50));

        let name = crate::load::name(7);
        let before = record(&writes, &name);
        std::thread::sleep(std::time::Duration::from_millis(2));
        writes.set_label(&name, "org.example/updated", "1").unwrap();
        let after = record(&writes, &name);
        assert_eq!(after.labels.get("org.example/updated").map(String::as_str), Some("1"));
        assert!(after.updated_unix_nanos > before.updated_unix_nanos);
        // The update-time entry moved; the index holds as many entries.
        assert_eq!(count(&writes), (50, PER_IMAGE * 50));
        assert!(indexed(
            &writes,
            number_index_key(index::UPDATED, NAMESPACE, after.updated_unix_nanos, &name)
        ));
        assert!(!indexed(
            &writes,
            number_index_key(index::UPDATED, NAMESPACE, before.updated_unix_nanos, &name)
        ));

        let missing = writes.set_label("registry.example/none:1", "a", "b").unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
    }

    #[test]
    fn sled_is_reopened_as_imaged_reopens_it_and_keeps_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut writes = SledWrites::open(dir.path()).unwrap();
        writes.flush_every = 4 << 10;
        writes.reopen_every = 32 << 10;
        for n in 0..600 {
            writes.create(crate::load::image(n)).unwrap();
        }
        for n in 0..600 {
            writes
                .set_label(&crate::load::name(n), "org.example/updated", "1")
                .unwrap();
        }
        let open = writes.open.lock().unwrap();
        assert!(open.reopens >= 4 && open.flushes > open.reopens);
        drop(open);
        assert_eq!(count(&writes), (600, PER_IMAGE * 600));
        let last = record(&writes, &crate::load::name(599));
        assert_eq!(last.labels.get("org.example/updated").map(String::as_str), Some("1"));
    }
}
