//! The rules of namespace writes: create, update (by field mask) and delete,
//! which containerd allows only for an empty namespace.

use imaged_types::image::validate_label_set;
use imaged_types::{Namespace, NamespaceName, ValidationError};
use prost::Message;

use std::time::SystemTime;

use imaged_types::time::unix_nanos;

use super::{Change, Changed, NamespaceOp, Records, Ruled, log_change, set_or_remove};
use crate::error::Error;
use crate::store::layout::{ChangeRecord, NamespaceRecord, TreeId, decode_namespace};

impl NamespaceOp {
    fn name(&self) -> &NamespaceName {
        match self {
            NamespaceOp::Create { namespace } | NamespaceOp::Update { namespace, .. } => &namespace.name,
            NamespaceOp::Delete { name } => name,
        }
    }
}

/// Applies `op` at `now` to `records`, taking the next revision from `rev`
/// when it changes anything, logging it in the change log, and pushing what
/// changed to `changes` when given.
/// Answers with the namespace as stored after the change, or as it was
/// before a delete.
pub fn apply(
    records: &mut impl Records,
    op: &NamespaceOp,
    rev: &mut u64,
    now: SystemTime,
    changes: Option<&mut Vec<Change>>,
) -> Ruled<Namespace> {
    let name = op.name();
    let key = name.as_str().as_bytes();
    let stored = records.get(TreeId::Namespaces, key)?;
    let current = match &stored {
        Some(bytes) => match decode_namespace(name.as_str(), bytes) {
            Ok(record) => Some(record),
            Err(e) => return Ok(Err(Error::Storage(e))),
        },
        None => None,
    };
    let new = match plan(op, current.as_ref()) {
        Ok(new) => new,
        Err(e) => return Ok(Err(e)),
    };
    *rev = match super::next_revision(*rev) {
        Ok(next) => next,
        Err(e) => return Ok(Err(e)),
    };
    let written = new.as_ref().map(Message::encode_to_vec);
    records.put(TreeId::Namespaces, key, written.clone());
    log_change(
        records,
        *rev,
        &ChangeRecord {
            namespace: name.as_str().to_owned(),
            name: String::new(),
            before: stored.map(|bytes| bytes.to_vec()),
            after: written,
            unix_nanos: unix_nanos(now),
            namespace_change: true,
        },
    );
    let before = current.map(|record| record.labels);
    let after = new.map(|record| record.labels);
    let answer = Namespace {
        name: name.clone(),
        labels: after.clone().or_else(|| before.clone()).unwrap_or_default(),
    };
    if let Some(changes) = changes {
        changes.push(Change {
            revision: *rev,
            at: now,
            namespace: name.clone(),
            changed: Changed::Namespace { before, after },
        });
    }
    Ok(Ok(answer))
}

/// Decides what `op` makes of the current record: the new record, or `None`
/// to delete it.
pub fn plan(op: &NamespaceOp, current: Option<&NamespaceRecord>) -> Result<Option<NamespaceRecord>, Error> {
    let not_found = |name: &NamespaceName| Error::NotFound(format!("namespace {:?} not found", name.as_str()));
    let mut record = match (op, current) {
        (NamespaceOp::Create { namespace }, None) => NamespaceRecord {
            labels: namespace.labels.clone(),
            images: 0,
            bytes: Some(0),
        },
        (NamespaceOp::Create { namespace }, Some(_)) => {
            return Err(Error::AlreadyExists(format!(
                "namespace {:?} already exists",
                namespace.name.as_str()
            )));
        }
        (NamespaceOp::Update { namespace, .. }, None) => return Err(not_found(&namespace.name)),
        (NamespaceOp::Update { namespace, mask }, Some(current)) => {
            let mut record = current.clone();
            if mask.is_empty() {
                record.labels = namespace.labels.clone();
            }
            for path in mask {
                match (path.as_str(), path.strip_prefix("labels.")) {
                    (_, Some(key)) => set_or_remove(&mut record.labels, key, namespace.labels.get(key)),
                    ("labels", None) => record.labels = namespace.labels.clone(),
                    _ => {
                        return Err(ValidationError::new(
                            "update_mask",
                            path,
                            "cannot update this field of a namespace; allowed paths: labels, labels.<key>",
                        )
                        .into());
                    }
                }
            }
            record
        }
        (NamespaceOp::Delete { name }, None) => return Err(not_found(name)),
        (NamespaceOp::Delete { name }, Some(current)) => {
            if current.images > 0 {
                // A protected image is one of them, and its delete is refused
                // until it is unprotected: the message says so for both.
                return Err(Error::FailedPrecondition(format!(
                    "namespace {:?} must be empty, but it still holds {}: delete them first (a protected \
                     image must be unprotected before it can be deleted: imagectl images unprotect NAME)",
                    name.as_str(),
                    imaged_types::words::counted(current.images, "image", "images")
                )));
            }
            return Ok(None);
        }
    };
    record.labels.retain(|_, v| !v.is_empty());
    validate_label_set("namespace.labels", &record.labels)?;
    Ok(Some(record))
}
