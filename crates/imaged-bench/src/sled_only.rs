//! The sled-only server's writes: the sled calls imaged's writer makes for a
//! create and for a label update, and nothing else.
//!
//! The null server makes them when started with `--sled DIR` (see
//! [`crate::null`]), and answers creates and updates only once they are
//! made. It leaves out everything else imaged does for a write: no journal,
//! no `fdatasync`, no batching thread, no namespace count, no revision. Its
//! writes call sled one at a time, as imaged's one writer does, under a lock
//! and right on the executor, with no hand-off to another thread. Its write
//! rates, its memory and its disk show what sled allows imaged's records
//! with no durability at all.
//!
//! The keys and records are imaged's own (`imaged::store::record`), so the
//! server follows any change to the layout.

use std::path::Path;
use std::time::SystemTime;

use imaged::store::record::{ImageRecord, image_key, index, index_keys, number_index_key, unix_nanos};
use imaged_api::containerd::services::images::v1 as ctrd;
use prost::Message;
use tonic::Status;

/// The namespace the load generator writes to.
const NAMESPACE: &str = crate::load::NAMESPACE;

/// A sled database holding images as imaged lays them out.
pub struct SledWrites {
    /// Held across each write's sled calls: one writer at a time, as in
    /// imaged.
    writer: std::sync::Mutex<()>,
    // Kept open for the trees.
    _db: sled::Db,
    images: sled::Tree,
    index: sled::Tree,
}

fn storage(e: sled::Error) -> Status {
    Status::internal(format!("sled: {e}"))
}

impl SledWrites {
    /// Opens (creating) a database in `dir` with imaged's default cache.
    pub fn open(dir: &Path) -> sled::Result<SledWrites> {
        let db = sled::Config::new().path(dir).cache_capacity(32 << 20).open()?;
        Ok(SledWrites {
            writer: std::sync::Mutex::new(()),
            images: db.open_tree("images")?,
            index: db.open_tree("index")?,
            _db: db,
        })
    }

    /// What imaged's writer does in sled for a create: read the name (is it
    /// taken?), then write the record and its four index entries.
    pub fn create(&self, wire: ctrd::Image) -> Result<(), Status> {
        let mut image = imaged_types::wire::image_from_containerd(Some(wire))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let now = SystemTime::now();
        image.created_at = now;
        image.updated_at = now;
        let key = image_key(NAMESPACE, &image.name);
        let _writer = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.images.get(&key).map_err(storage)?.is_some() {
            return Err(Status::already_exists(format!("image {:?}", image.name)));
        }
        self.images
            .insert(key, ImageRecord::from_image(&image, 1, 1).encode_to_vec())
            .map_err(storage)?;
        for entry in index_keys(NAMESPACE, &image) {
            self.index.insert(entry, &[]).map_err(storage)?;
        }
        Ok(())
    }

    /// What imaged's writer does in sled for an update of one label: read
    /// and decode the record, write it back changed, and move the image's
    /// entry in the index by update time.
    pub fn set_label(&self, name: &str, key: &str, value: &str) -> Result<(), Status> {
        let record_key = image_key(NAMESPACE, name);
        let _writer = self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stored = self
            .images
            .get(&record_key)
            .map_err(storage)?
            .ok_or_else(|| Status::not_found(format!("image {name:?}")))?;
        let mut record = ImageRecord::decode(stored.as_ref()).map_err(|e| Status::data_loss(e.to_string()))?;
        let old = number_index_key(index::UPDATED, NAMESPACE, record.updated_unix_nanos, name);
        record.labels.insert(key.to_owned(), value.to_owned());
        record.updated_unix_nanos = unix_nanos(SystemTime::now());
        let new = number_index_key(index::UPDATED, NAMESPACE, record.updated_unix_nanos, name);
        self.images
            .insert(record_key, record.encode_to_vec())
            .map_err(storage)?;
        if old != new {
            self.index.remove(old).map_err(storage)?;
            self.index.insert(new, &[]).map_err(storage)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sled_only_server_keeps_imaged_records_and_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let writes = SledWrites::open(dir.path()).unwrap();
        for n in 0..50 {
            writes.create(crate::load::image(n)).unwrap();
        }
        let again = writes.create(crate::load::image(7)).unwrap_err();
        assert_eq!(again.code(), tonic::Code::AlreadyExists);
        assert_eq!(writes.images.len(), 50);
        assert_eq!(writes.index.len(), 4 * 50);

        let name = crate::load::name(7);
        let before = writes.images.get(image_key(NAMESPACE, &name)).unwrap().unwrap();
        let before = ImageRecord::decode(before.as_ref()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        writes.set_label(&name, "org.example/updated", "1").unwrap();
        let after = writes.images.get(image_key(NAMESPACE, &name)).unwrap().unwrap();
        let after = ImageRecord::decode(after.as_ref()).unwrap();
        assert_eq!(after.labels.get("org.example/updated").map(String::as_str), Some("1"));
        assert!(after.updated_unix_nanos > before.updated_unix_nanos);
        // The update-time entry moved; the index holds as many entries.
        assert_eq!(writes.index.len(), 4 * 50);
        let moved = number_index_key(index::UPDATED, NAMESPACE, after.updated_unix_nanos, &name);
        assert!(writes.index.contains_key(moved).unwrap());
        let stale = number_index_key(index::UPDATED, NAMESPACE, before.updated_unix_nanos, &name);
        assert!(!writes.index.contains_key(stale).unwrap());

        let missing = writes.set_label("registry.example/none:1", "a", "b").unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
    }
}
