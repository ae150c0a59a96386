//! [`Image`] and [`Descriptor`]: the record imaged keeps for every name, and
//! the rules every write must pass, with their bounds in [`limits`].
//!
//! The record follows containerd's image: a name, labels, a target descriptor
//! with annotations, and creation and update times. Both wire APIs read and
//! write this one record.

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::digest::Digest;
use crate::error::ValidationError;

/// Labels or annotations: ordered key → value. Empty values are never stored.
pub type Labels = BTreeMap<String, String>;

/// The bounds every stored image respects.
pub mod limits {
    /// Longest image name, in bytes.
    pub const MAX_NAME_BYTES: usize = 4096;
    /// Longest media type, in bytes.
    pub const MAX_MEDIA_TYPE_BYTES: usize = 255;
    /// Longest label or annotation, key plus value, in bytes (containerd's
    /// bound).
    pub const MAX_LABEL_BYTES: usize = 4096;
    /// Largest whole image: name, media type, digest, and every label and
    /// annotation key and value, added up, in bytes. It keeps one record well
    /// below what the store writes inline, and a page of 1000 well below a
    /// gRPC message.
    pub const MAX_IMAGE_BYTES: usize = 64 * 1024;
    /// Most bytes of labels, keys and values added up, on one namespace or
    /// one lease: as an image's whole record is bounded, so that no single
    /// record can outgrow what one journal entry holds.
    pub const MAX_LABELS_BYTES: usize = 64 * 1024;
}

/// The label that protects an image: containerd's CRI plugin pins images
/// with it (`io.cri-containerd.pinned=pinned`). In imaged a protected image
/// cannot be deleted, nor its target replaced, through any API, until the
/// label is removed.
pub const PROTECTED_LABEL: &str = "io.cri-containerd.pinned";
/// The value of [`PROTECTED_LABEL`] that protects; any other value does not.
pub const PROTECTED_VALUE: &str = "pinned";

/// The descriptor of an image's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Media type, `type/subtype`.
    pub media_type: String,
    /// Content digest.
    pub digest: Digest,
    /// Content size in bytes, greater than 0.
    pub size: i64,
    /// Annotations on the descriptor.
    pub annotations: Labels,
}

/// An image record: a name mapped to the descriptor of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The image name, e.g. `docker.io/library/redis:7`.
    pub name: String,
    /// Labels on the image.
    pub labels: Labels,
    /// What the name points at.
    pub target: Descriptor,
    /// When the name was first created. Set by the store.
    pub created_at: SystemTime,
    /// When the record last changed. Set by the store.
    pub updated_at: SystemTime,
    /// Store revision of the change that created the image. Set by the
    /// store; 0 on an image that was not read from it (a write's input).
    pub create_revision: u64,
    /// Store revision of the image's last change. Set by the store; 0 on an
    /// image that was not read from it.
    pub mod_revision: u64,
}

/// A condition a write tests atomically before it writes (a test-and-set).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Precondition {
    /// Write unconditionally.
    #[default]
    None,
    /// The name must not exist: create, never replace.
    Absent,
    /// The name must exist and point at this digest.
    Digest(Digest),
}

/// What an update request carries: a name, labels, and a target that may be
/// missing or invalid. Which parts count is decided by the update's field mask
/// in the store, so an update of labels alone needs no valid target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUpdate {
    /// The image to update.
    pub name: String,
    /// Labels as the request gives them.
    pub labels: Labels,
    /// The request target's annotations, used by `annotations` mask paths.
    pub annotations: Labels,
    /// The request's target, or why it is not a valid one.
    pub target: Result<Descriptor, ValidationError>,
}

impl Image {
    /// Checks every rule of a stored image, naming fields as the wire does
    /// (`image.name`, `image.target.media_type`, …).
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("image.name", &self.name)?;
        self.target.validate("image.target")?;
        validate_labels("image.labels", &self.labels)?;
        let total = self.bytes();
        if total > limits::MAX_IMAGE_BYTES {
            return Err(ValidationError::new(
                "image",
                &self.name,
                format!(
                    "record is {total} bytes, more than the {} allowed for name, media type, digest, labels and annotations together",
                    limits::MAX_IMAGE_BYTES
                ),
            ));
        }
        Ok(())
    }

    /// The image's variable bytes: name, media type, digest, and every
    /// label and annotation key and value. [`limits::MAX_IMAGE_BYTES`]
    /// bounds them; what holds an image in memory counts them.
    pub fn bytes(&self) -> usize {
        self.name.len()
            + self.target.media_type.len()
            + self.target.digest.as_str().len()
            + labels_bytes(&self.labels)
            + labels_bytes(&self.target.annotations)
    }

    /// Whether the image is protected: it carries [`PROTECTED_LABEL`] with
    /// [`PROTECTED_VALUE`].
    pub fn protected(&self) -> bool {
        self.labels.get(PROTECTED_LABEL).is_some_and(|v| v == PROTECTED_VALUE)
    }

    /// Protects the image, or unprotects it, by its label.
    pub fn set_protected(&mut self, protected: bool) {
        match protected {
            true => self
                .labels
                .insert(PROTECTED_LABEL.to_owned(), PROTECTED_VALUE.to_owned()),
            false => self.labels.remove(PROTECTED_LABEL),
        };
    }

    /// Drops labels and annotations whose value is empty: they are not stored.
    pub fn normalize(&mut self) {
        self.labels.retain(|_, v| !v.is_empty());
        self.target.annotations.retain(|_, v| !v.is_empty());
    }
}

impl Descriptor {
    /// Checks the descriptor's rules; `field` is its path, e.g. `image.target`.
    pub fn validate(&self, field: &str) -> Result<(), ValidationError> {
        validate_media_type(&format!("{field}.media_type"), &self.media_type)?;
        if self.size <= 0 {
            return Err(ValidationError::new(
                format!("{field}.size"),
                &self.size.to_string(),
                "must be greater than 0",
            ));
        }
        validate_labels(&format!("{field}.annotations"), &self.annotations)
    }
}

/// Checks an image name: non-empty, at most [`limits::MAX_NAME_BYTES`], no
/// control characters.
pub fn validate_name(field: &str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(ValidationError::new(field, name, "must not be empty"));
    }
    if name.len() > limits::MAX_NAME_BYTES {
        return Err(ValidationError::new(
            field,
            name,
            format!("is {} bytes, more than {}", name.len(), limits::MAX_NAME_BYTES),
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(ValidationError::new(
            field,
            name,
            format!("must not contain control characters (found {c:?})"),
        ));
    }
    Ok(())
}

/// Checks a media type: `type/subtype` per RFC 6838's restricted names, at
/// most [`limits::MAX_MEDIA_TYPE_BYTES`].
pub fn validate_media_type(field: &str, media_type: &str) -> Result<(), ValidationError> {
    if media_type.is_empty() {
        return Err(ValidationError::new(field, media_type, "must not be empty"));
    }
    if media_type.len() > limits::MAX_MEDIA_TYPE_BYTES {
        return Err(ValidationError::new(
            field,
            media_type,
            format!(
                "is {} bytes, more than {}",
                media_type.len(),
                limits::MAX_MEDIA_TYPE_BYTES
            ),
        ));
    }
    let restricted_name = |part: &str| {
        let mut bytes = part.bytes();
        matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
            && part.len() <= 127
            && bytes.all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match media_type.split_once('/') {
        Some((kind, subtype)) if restricted_name(kind) && restricted_name(subtype) => Ok(()),
        _ => Err(ValidationError::new(
            field,
            media_type,
            "must be type/subtype, e.g. application/vnd.oci.image.manifest.v1+json",
        )),
    }
}

/// Checks labels or annotations: non-empty keys without control characters
/// (values may hold any UTF-8), key plus value at most
/// [`limits::MAX_LABEL_BYTES`]. `field` is the map's path.
pub fn validate_labels(field: &str, labels: &Labels) -> Result<(), ValidationError> {
    for (key, value) in labels {
        if key.is_empty() {
            return Err(ValidationError::new(
                format!("{field}[\"\"]"),
                value,
                "key must not be empty",
            ));
        }
        if key.chars().any(char::is_control) {
            return Err(ValidationError::new(
                format!("{field}[{}]", crate::error::show_value(key)),
                value,
                "key must not hold control characters",
            ));
        }
        let len = key.len() + value.len();
        if len > limits::MAX_LABEL_BYTES {
            return Err(ValidationError::new(
                format!("{field}[{}]", crate::error::show_value(key)),
                value,
                format!("key plus value is {len} bytes, more than {}", limits::MAX_LABEL_BYTES),
            ));
        }
    }
    Ok(())
}

/// Checks labels as [`validate_labels`] does, and that all of them together
/// take at most [`limits::MAX_LABELS_BYTES`]: the rule for the labels of a
/// namespace or a lease.
pub fn validate_label_set(field: &str, labels: &Labels) -> Result<(), ValidationError> {
    validate_labels(field, labels)?;
    let total = labels_bytes(labels);
    if total > limits::MAX_LABELS_BYTES {
        return Err(ValidationError::new(
            field,
            &format!("{} labels", labels.len()),
            format!(
                "labels take {total} bytes, keys and values added up, more than the {} allowed",
                limits::MAX_LABELS_BYTES
            ),
        ));
    }
    Ok(())
}

/// The bytes of `labels`' keys and values, added up.
pub fn labels_bytes(labels: &Labels) -> usize {
    labels.iter().map(|(k, v)| k.len() + v.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Image {
        Image {
            name: "docker.io/library/redis:7".into(),
            labels: Labels::new(),
            target: Descriptor {
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                digest: Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap(),
                size: 1,
                annotations: Labels::new(),
            },
            created_at: SystemTime::UNIX_EPOCH,
            updated_at: SystemTime::UNIX_EPOCH,
            create_revision: 0,
            mod_revision: 0,
        }
    }

    #[test]
    fn a_plain_image_is_valid() {
        image().validate().unwrap();
    }

    #[test]
    fn each_rule_names_its_field() {
        type Mutate = Box<dyn Fn(&mut Image)>;
        let cases: Vec<(Mutate, &str)> = vec![
            (Box::new(|i| i.name.clear()), "image.name"),
            (Box::new(|i| i.name = "a\tb".into()), "image.name"),
            (Box::new(|i| i.name = "x".repeat(4097)), "image.name"),
            (Box::new(|i| i.target.size = 0), "image.target.size"),
            (
                Box::new(|i| i.target.media_type = "json".into()),
                "image.target.media_type",
            ),
            (
                Box::new(|i| i.target.media_type = "a/".into()),
                "image.target.media_type",
            ),
            (
                Box::new(|i| i.target.media_type = format!("a/{}", "b".repeat(300))),
                "image.target.media_type",
            ),
            (
                Box::new(|i| {
                    i.labels.insert("k".into(), "v".repeat(4096));
                }),
                "image.labels[\"k\"]",
            ),
            (
                Box::new(|i| {
                    i.labels.insert(String::new(), "v".into());
                }),
                "image.labels[\"\"]",
            ),
            (
                Box::new(|i| {
                    i.target.annotations.insert("a".into(), "v".repeat(4096));
                }),
                "image.target.annotations[\"a\"]",
            ),
            (
                Box::new(|i| {
                    for n in 0..20 {
                        i.labels.insert(format!("k{n}"), "v".repeat(4000));
                    }
                }),
                "image",
            ),
        ];
        for (mutate, field) in cases {
            let mut img = image();
            mutate(&mut img);
            let err = img.validate().unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn largest_allowed_label_passes() {
        let mut img = image();
        img.labels.insert("k".into(), "v".repeat(4095));
        img.validate().unwrap();
    }
}
