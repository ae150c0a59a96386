//! The rules of image writes: put, create, update (with containerd's field
//! masks) and delete, their preconditions, and what each writes besides the
//! record: its index entries, its repository's record and its namespace's
//! image count.

use std::time::SystemTime;

use imaged_types::{
    Descriptor, Image, ImageUpdate, NamespaceName, PROTECTED_LABEL, PROTECTED_VALUE, Precondition, ValidationError,
};
use prost::Message;

use imaged_types::time::unix_nanos;

use super::{Change, Changed, ImageOp, Records, Ruled, log_change, set_or_remove};
use crate::error::Error;
use crate::store::Quotas;
use crate::store::layout::{ChangeRecord, NamespaceRecord, TreeId, image_key, index_changes};
use crate::store::record::{ImageRecord, decode_image, image_bytes};

impl ImageOp {
    /// The namespace and name of the image the op changes.
    fn target(&self) -> (&NamespaceName, &str) {
        match self {
            ImageOp::Put { ns, image, .. } | ImageOp::Create { ns, image, .. } => (ns, &image.name),
            ImageOp::Update { ns, update, .. } => (ns, &update.name),
            ImageOp::Delete { ns, name, .. } => (ns, name),
        }
    }
}

/// What an image op does, once its rules hold.
#[derive(Debug)]
pub enum Planned {
    /// Writes `after`, over `before` when the image exists.
    Write {
        /// The image as it was.
        before: Option<Image>,
        /// The image as it will be.
        after: Image,
    },
    /// Deletes the image, which was `before`.
    Delete {
        /// The image as it was.
        before: Image,
    },
}

impl Planned {
    fn before(&self) -> Option<&Image> {
        match self {
            Planned::Write { before, .. } => before.as_ref(),
            Planned::Delete { before } => Some(before),
        }
    }

    fn after(&self) -> Option<&Image> {
        match self {
            Planned::Write { after, .. } => Some(after),
            Planned::Delete { .. } => None,
        }
    }

    /// The image the op answers with: after a write, as it was before a
    /// delete.
    fn into_answer(self) -> Image {
        match self {
            Planned::Write { after, .. } => after,
            Planned::Delete { before } => before,
        }
    }
}

/// What an image op answers: the image after a write, or as it was before a
/// delete, and that image as stored, for the encoder that copies records
/// into answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The image.
    pub image: Image,
    /// `image` as stored (`store::record`).
    pub record: Vec<u8>,
}

/// Applies `op` at `now` to `records`, taking the next revision from `rev`
/// when it changes anything, logging it in the change log, and pushing what
/// changed to `changes` when given. All reads and checks come before the first write, so a refused op
/// writes nothing. Answers with the image as stored after the change, or as
/// it was before a delete, with its record.
pub fn apply(
    records: &mut impl Records,
    op: &ImageOp,
    rev: &mut u64,
    now: SystemTime,
    changes: Option<&mut Vec<Change>>,
) -> Ruled<Written> {
    let (ns, name) = op.target();
    let key = image_key(ns.as_str(), name);
    let old = match read_image(records, &key, name)? {
        Ok(old) => old,
        Err(e) => return Ok(Err(e)),
    };
    let (old, old_record) = match old {
        Some(Stored { image, record }) => (Some(image), Some(record)),
        None => (None, None),
    };
    let mut planned = match plan(op, old, now) {
        Ok(planned) => planned,
        Err(e) => return Ok(Err(e)),
    };
    let ns_key = ns.as_str().as_bytes();
    // A namespace record that does not decode is rebuilt from scratch rather
    // than failing every write to the namespace.
    let stored_ns = records
        .get(TreeId::Namespaces, ns_key)?
        .and_then(|bytes| NamespaceRecord::decode(&*bytes).ok());
    let ns_stored = stored_ns.is_some();
    let mut ns_record = stored_ns.unwrap_or_default();
    let ns_before = ns_record.clone();
    let next = match super::next_revision(*rev) {
        Ok(next) => next,
        Err(e) => return Ok(Err(e)),
    };
    // The record is made before anything is written, so the namespace's
    // quota can refuse it with nothing written.
    let new_record = match &mut planned {
        Planned::Write { before, after } => {
            after.create_revision = before.as_ref().map_or(next, |b| b.create_revision);
            after.mod_revision = next;
            Some(ImageRecord::from_image(after, after.create_revision, next).encode_to_vec())
        }
        Planned::Delete { .. } => None,
    };
    let old_bytes = old_record.as_deref().map_or(0, |r| image_bytes(&key, r));
    let new_bytes = new_record.as_deref().map_or(0, |r| image_bytes(&key, r));
    let ns_bytes = ns_record.bytes.unwrap_or(0);
    if let Err(e) = check_quotas(
        records.quotas(),
        ns,
        &ns_record,
        planned.before().is_none(),
        old_bytes,
        new_bytes,
    ) {
        return Ok(Err(e));
    }
    *rev = next;
    // Index entries change with the record, in the same batch: stale ones
    // go, fresh ones come, unchanged ones are not rewritten.
    for (key, value) in index_changes(ns.as_str(), planned.before(), planned.after()) {
        records.put(TreeId::Index, &key, value);
    }
    super::repository::account(
        records,
        ns.as_str(),
        planned.before(),
        planned.after(),
        unix_nanos(now),
        next,
    )?;
    records.put(TreeId::Images, &key, new_record.clone());
    match &planned {
        Planned::Write { before: None, .. } => ns_record.images += 1,
        Planned::Write { .. } => {}
        Planned::Delete { .. } => ns_record.images = ns_record.images.saturating_sub(1),
    }
    ns_record.bytes = Some((ns_bytes + new_bytes).saturating_sub(old_bytes));
    let entry = ChangeRecord {
        namespace: ns.as_str().to_owned(),
        name: name.to_owned(),
        before: old_record,
        after: new_record,
        unix_nanos: unix_nanos(now),
        namespace_change: false,
    };
    log_change(records, *rev, &entry);
    // The first image creates its namespace, as in containerd; it stays until
    // deleted. A change that keeps the count and the bytes leaves the record
    // as it is.
    if !ns_stored || ns_record != ns_before {
        records.put(TreeId::Namespaces, ns_key, Some(ns_record.encode_to_vec()));
    }
    // The answer's record: the image after a write, before a delete.
    let record = entry
        .after
        .as_ref()
        .or(entry.before.as_ref())
        .cloned()
        .unwrap_or_default();
    if let Some(changes) = changes {
        changes.push(Change {
            revision: *rev,
            at: now,
            namespace: ns.clone(),
            changed: Changed::Image {
                before: planned.before().cloned(),
                after: planned.after().cloned(),
                // The records as logged, for the encoder.
                before_record: entry.before,
                after_record: entry.after,
            },
        });
    }
    Ok(Ok(Written {
        image: planned.into_answer(),
        record,
    }))
}

/// Refuses a write that would take namespace `ns` past a quota of
/// `quotas`: a new image past its count, or more bytes past its size. A
/// write that shrinks the namespace or keeps its size is never refused, so
/// a namespace over a lowered quota can still be cleaned up.
fn check_quotas(
    quotas: Quotas,
    ns: &NamespaceName,
    record: &NamespaceRecord,
    creates: bool,
    old_bytes: u64,
    new_bytes: u64,
) -> Result<(), Error> {
    if creates && new_bytes > 0 && quotas.max_images > 0 && record.images >= quotas.max_images {
        return Err(Error::ResourceExhausted(format!(
            "namespace {:?} holds {} images, its quota (max_images_per_namespace = {}); delete some first, or \
             ask the operator to raise max_images_per_namespace",
            ns.as_str(),
            record.images,
            quotas.max_images
        )));
    }
    let held = record.bytes.unwrap_or(0);
    if quotas.max_bytes > 0 && new_bytes > old_bytes && held - old_bytes.min(held) + new_bytes > quotas.max_bytes {
        return Err(Error::ResourceExhausted(format!(
            "namespace {:?} holds {held} bytes of images, and this write would take it past its quota of {} \
             (max_namespace_mb); delete some images first, or ask the operator to raise max_namespace_mb",
            ns.as_str(),
            quotas.max_bytes
        )));
    }
    Ok(())
}

/// A stored image, decoded (revisions included) and as stored.
struct Stored {
    image: Image,
    record: Vec<u8>,
}

fn read_image(records: &impl Records, key: &[u8], name: &str) -> Ruled<Option<Stored>> {
    let Some(bytes) = records.get(TreeId::Images, key)? else {
        return Ok(Ok(None));
    };
    let decoded = decode_image(name, &bytes).map(|image| Stored {
        image,
        record: bytes.to_vec(),
    });
    Ok(decoded.map(Some).map_err(Error::Storage))
}

/// Decides what `op` makes of the current image `old`. Pure, so every rule
/// of every image write is here.
pub fn plan(op: &ImageOp, old: Option<Image>, now: SystemTime) -> Result<Planned, Error> {
    let mut new = match op {
        ImageOp::Put {
            ns,
            image,
            precondition,
            protect,
        } => {
            check(ns, &image.name, old.as_ref(), precondition)?;
            let mut new = image.clone();
            new.updated_at = now;
            match &old {
                Some(old) => {
                    // A put that carries no labels keeps the stored ones.
                    if new.labels.is_empty() {
                        new.labels = old.labels.clone();
                    }
                    new.created_at = old.created_at;
                }
                None => new.created_at = now,
            }
            // Only a put that says so changes the protection: a client that
            // knows nothing of it cannot drop it by replacing the labels.
            match protect {
                Some(protect) => new.set_protected(*protect),
                None if old.as_ref().is_some_and(Image::protected) => new.set_protected(true),
                None => {}
            }
            new
        }
        ImageOp::Create { ns, image, at } => {
            if old.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "image {:?} already exists in namespace {:?}",
                    image.name,
                    ns.as_str()
                )));
            }
            let at = at.unwrap_or(now);
            Image {
                created_at: at,
                updated_at: at,
                ..image.clone()
            }
        }
        ImageOp::Update { ns, update, mask, at } => {
            let old = old
                .as_ref()
                .ok_or_else(|| Error::image_not_found(ns.as_str(), &update.name))?;
            let mut new = apply_mask(old, update, mask)?;
            new.created_at = old.created_at;
            new.updated_at = at.unwrap_or(now);
            new
        }
        ImageOp::Delete { ns, name, precondition } => {
            let Some(before) = old else {
                return Err(Error::image_not_found(ns.as_str(), name));
            };
            check(ns, name, Some(&before), precondition)?;
            if before.protected() {
                return Err(protected(ns, name, "deleted"));
            }
            return Ok(Planned::Delete { before });
        }
    };
    new.normalize();
    new.validate()?;
    if let Some(old) = &old
        && old.protected()
        && !same_content(&old.target, &new.target)
    {
        return Err(protected(op.target().0, &old.name, "pointed at other content"));
    }
    Ok(Planned::Write {
        before: old,
        after: new,
    })
}

/// Whether two targets name the same content: media type, digest and size.
/// Their annotations may differ, as labels may: protection keeps what an
/// image points at, not what is said of it.
fn same_content(a: &Descriptor, b: &Descriptor) -> bool {
    a.media_type == b.media_type && a.digest == b.digest && a.size == b.size
}

/// The refusal of a change a protected image does not take: FAILED_PRECONDITION,
/// naming the image and the ways to unprotect it.
fn protected(ns: &NamespaceName, name: &str, would_be: &str) -> Error {
    Error::FailedPrecondition(format!(
        "image {name:?} in namespace {ns:?} is protected (label {PROTECTED_LABEL}={PROTECTED_VALUE}), so it cannot \
         be {would_be}; unprotect it first: `imagectl images unprotect {name}`, `ctr images label {name} \
         {PROTECTED_LABEL}=`, or a Put with protected=false",
        ns = ns.as_str(),
    ))
}

/// The paths an image update mask may name.
const MASK_PATHS: &str = "labels, labels.<key>, annotations, annotations.<key>, target";

/// Applies containerd's update semantics: without a mask the request replaces
/// the image; with one, each path copies that part of the request.
fn apply_mask(old: &Image, update: &ImageUpdate, mask: &[String]) -> Result<Image, Error> {
    let target = || update.target.clone().map_err(Error::from);
    if mask.is_empty() {
        return Ok(Image {
            name: update.name.clone(),
            labels: update.labels.clone(),
            target: target()?,
            created_at: old.created_at,
            updated_at: old.updated_at,
            create_revision: old.create_revision,
            mod_revision: old.mod_revision,
        });
    }
    let mut new = old.clone();
    for path in mask {
        if let Some(key) = path.strip_prefix("labels.") {
            set_or_remove(&mut new.labels, key, update.labels.get(key));
        } else if let Some(key) = path.strip_prefix("annotations.") {
            set_or_remove(&mut new.target.annotations, key, update.annotations.get(key));
        } else {
            match path.as_str() {
                "labels" => new.labels = update.labels.clone(),
                "annotations" => new.target.annotations = update.annotations.clone(),
                "target" => new.target = target()?,
                _ => {
                    return Err(ValidationError::new(
                        "update_mask",
                        path,
                        format!("cannot update this field of an image; allowed paths: {MASK_PATHS}"),
                    )
                    .into());
                }
            }
        }
    }
    Ok(new)
}

/// Tests a precondition against the current image.
fn check(ns: &NamespaceName, name: &str, current: Option<&Image>, precondition: &Precondition) -> Result<(), Error> {
    let ns = ns.as_str();
    match (precondition, current) {
        (Precondition::None, _) => Ok(()),
        (Precondition::Absent, None) => Ok(()),
        (Precondition::Absent, Some(cur)) => Err(Error::Conflict(format!(
            "image {name:?} already exists in namespace {ns:?}, pointing at {}",
            cur.target.digest
        ))),
        (Precondition::Digest(want), None) => Err(Error::Conflict(format!(
            "image {name:?} does not exist in namespace {ns:?}, so it does not point at {want}"
        ))),
        (Precondition::Digest(want), Some(cur)) if cur.target.digest != *want => Err(Error::Conflict(format!(
            "image {name:?} in namespace {ns:?} points at {}, not {want}",
            cur.target.digest
        ))),
        (Precondition::Digest(_), Some(_)) => Ok(()),
    }
}
