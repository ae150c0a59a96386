//! Conversions between the domain types and the generated wire messages,
//! written once and used by the daemon's adapters and by the client.
//!
//! Converting from the wire parses the digest (the one rule a [`Digest`]
//! enforces by construction); every other rule is checked by the store through
//! [`Image::validate`], so both wire APIs refuse the same inputs the same way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imaged_api::containerd::services::images::v1 as ctrd;
use imaged_api::containerd::services::namespaces::v1 as ctrd_ns;
use imaged_api::containerd::{types as wire, v1 as seed};

use crate::{
    Descriptor, Digest, Image, ImageUpdate, Labels, Namespace, NamespaceName, Precondition, Repository, ValidationError,
};

/// Reads a wire descriptor; `field` is its path, e.g. `image.target`.
pub fn descriptor_from_wire(field: &str, d: wire::Descriptor) -> Result<Descriptor, ValidationError> {
    let digest =
        Digest::parse(&d.digest).map_err(|e| ValidationError::new(format!("{field}.digest"), &d.digest, e.reason))?;
    Ok(Descriptor {
        media_type: d.media_type,
        digest,
        size: d.size,
        annotations: d.annotations,
    })
}

/// Writes a descriptor as its wire message.
pub fn descriptor_to_wire(d: Descriptor) -> wire::Descriptor {
    wire::Descriptor {
        media_type: d.media_type,
        digest: d.digest.into_string(),
        size: d.size,
        annotations: d.annotations,
    }
}

/// A time as a protobuf Timestamp (times before 1970 are clamped to it).
pub fn timestamp_from_time(t: SystemTime) -> prost_types::Timestamp {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

/// A protobuf Timestamp as a time; out-of-range parts are refused.
pub fn time_from_timestamp(field: &str, ts: &prost_types::Timestamp) -> Result<SystemTime, ValidationError> {
    // Times are stored as nanoseconds in an i64: up to 2262-04-11.
    const LAST_STORED_SECOND: i64 = i64::MAX / 1_000_000_000 - 1;
    if !(0..=LAST_STORED_SECOND).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(ValidationError::new(
            field,
            &format!("{}s {}ns", ts.seconds, ts.nanos),
            format!(
                "must be a time from 1970-01-01T00:00:00Z to {} (the last second imaged stores), with nanos in 0..1e9",
                crate::time::format_rfc3339(UNIX_EPOCH + Duration::from_secs(LAST_STORED_SECOND as u64))
            ),
        ));
    }
    Ok(UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos as u32))
}

/// An image from the fields both wire APIs' images share. Request times are
/// passed as `None` (the store sets them); answer times are kept.
fn image_from_parts(
    name: String,
    labels: Labels,
    target: Option<wire::Descriptor>,
    created_at: Option<prost_types::Timestamp>,
    updated_at: Option<prost_types::Timestamp>,
) -> Result<Image, ValidationError> {
    let time = |field: &str, t: Option<prost_types::Timestamp>| {
        t.map(|t| time_from_timestamp(field, &t))
            .transpose()
            .map(|t| t.unwrap_or(UNIX_EPOCH))
    };
    Ok(Image {
        target: descriptor_from_wire("image.target", target.unwrap_or_default())?,
        name,
        labels,
        created_at: time("image.created_at", created_at)?,
        updated_at: time("image.updated_at", updated_at)?,
        create_revision: 0,
        mod_revision: 0,
    })
}

/// Reads the seed API's image (`containerd.v1.Image`) in a request. A
/// missing image or target reads as empty, as the seed's non-nullable fields
/// do, and so fails validation on the first empty field. Times are ignored:
/// the store sets them.
pub fn image_from_seed(image: Option<seed::Image>) -> Result<Image, ValidationError> {
    let image = image.unwrap_or_default();
    image_from_parts(image.name, image.labels, image.target, None, None)
}

/// Reads an image the seed API answered with, keeping its times and
/// revisions.
pub fn stored_image_from_seed(image: seed::Image) -> Result<Image, ValidationError> {
    let (create_revision, mod_revision) = (image.create_revision, image.mod_revision);
    Ok(Image {
        create_revision,
        mod_revision,
        ..image_from_parts(
            image.name,
            image.labels,
            image.target,
            image.created_at,
            image.updated_at,
        )?
    })
}

/// Writes an image as the seed API's message.
pub fn image_to_seed(image: Image) -> seed::Image {
    let protected = image.protected().then_some(true);
    seed::Image {
        name: image.name,
        target: Some(descriptor_to_wire(image.target)),
        labels: image.labels,
        created_at: Some(timestamp_from_time(image.created_at)),
        updated_at: Some(timestamp_from_time(image.updated_at)),
        protected,
        mod_revision: image.mod_revision,
        create_revision: image.create_revision,
    }
}

/// Writes a repository as the seed API's message.
pub fn repository_to_seed(repository: Repository) -> seed::Repository {
    seed::Repository {
        name: repository.name,
        tags: repository.tags,
        newest: repository.newest,
        newest_updated_at: Some(timestamp_from_time(repository.newest_updated_at)),
        updated_at: Some(timestamp_from_time(repository.updated_at)),
        mod_revision: repository.mod_revision,
    }
}

/// Reads the seed API's repository, as a server sent it; a bad time names
/// its field.
pub fn repository_from_seed(repository: seed::Repository) -> Result<Repository, ValidationError> {
    let time = |field: &str, ts: Option<prost_types::Timestamp>| {
        ts.map_or(Ok(UNIX_EPOCH), |ts| time_from_timestamp(field, &ts))
    };
    Ok(Repository {
        newest_updated_at: time("repository.newest_updated_at", repository.newest_updated_at)?,
        updated_at: time("repository.updated_at", repository.updated_at)?,
        name: repository.name,
        tags: repository.tags,
        newest: repository.newest,
        mod_revision: repository.mod_revision,
    })
}

/// Reads the seed API's precondition; a bad digest names
/// `precondition.digest`.
pub fn precondition_from_seed(precondition: Option<seed::Precondition>) -> Result<Precondition, ValidationError> {
    use seed::precondition::Condition as Wire;
    Ok(match precondition.and_then(|p| p.condition) {
        None => Precondition::None,
        Some(Wire::Absent(())) => Precondition::Absent,
        Some(Wire::Digest(d)) => Precondition::Digest(
            Digest::parse(&d).map_err(|e| ValidationError::new("precondition.digest", &d, e.reason))?,
        ),
    })
}

/// Writes a precondition as the seed API's.
pub fn precondition_to_seed(precondition: &Precondition) -> Option<seed::Precondition> {
    use seed::precondition::Condition as Wire;
    let condition = match precondition {
        Precondition::None => return None,
        Precondition::Absent => Wire::Absent(()),
        Precondition::Digest(d) => Wire::Digest(d.as_str().to_owned()),
    };
    Some(seed::Precondition {
        condition: Some(condition),
    })
}

/// Reads containerd's image (`containerd.services.images.v1.Image`) for a
/// create. The timestamps of the request are ignored: the store sets them.
pub fn image_from_containerd(image: Option<ctrd::Image>) -> Result<Image, ValidationError> {
    let image = image.unwrap_or_default();
    image_from_parts(image.name, image.labels, image.target, None, None)
}

/// Reads an image containerd's API answered with, keeping its times.
pub fn stored_image_from_containerd(image: ctrd::Image) -> Result<Image, ValidationError> {
    image_from_parts(
        image.name,
        image.labels,
        image.target,
        image.created_at,
        image.updated_at,
    )
}

/// Reads containerd's image for an update, where the target may be absent.
pub fn image_update_from_containerd(image: Option<ctrd::Image>) -> ImageUpdate {
    let image = image.unwrap_or_default();
    let target = image.target.unwrap_or_default();
    ImageUpdate {
        name: image.name,
        labels: image.labels,
        annotations: target.annotations.clone(),
        target: descriptor_from_wire("image.target", target),
    }
}

/// Writes an image as containerd's message.
pub fn image_to_containerd(image: Image) -> ctrd::Image {
    ctrd::Image {
        name: image.name,
        labels: image.labels,
        target: Some(descriptor_to_wire(image.target)),
        created_at: Some(timestamp_from_time(image.created_at)),
        updated_at: Some(timestamp_from_time(image.updated_at)),
    }
}

/// Reads containerd's namespace message; the name must follow the identifier
/// rule.
pub fn namespace_from_containerd(namespace: Option<ctrd_ns::Namespace>) -> Result<Namespace, ValidationError> {
    let namespace = namespace.unwrap_or_default();
    Ok(Namespace {
        name: NamespaceName::parse("namespace.name", &namespace.name)?,
        labels: namespace.labels,
    })
}

/// Writes a namespace as containerd's message.
pub fn namespace_to_containerd(namespace: &Namespace) -> ctrd_ns::Namespace {
    ctrd_ns::Namespace {
        name: namespace.name.as_str().to_owned(),
        labels: namespace.labels.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_image_round_trips() {
        let wire_image = seed::Image {
            name: "docker.io/library/redis:7".into(),
            target: Some(wire::Descriptor {
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                digest: format!("sha256:{}", "b".repeat(64)),
                size: 42,
                annotations: [("a".to_string(), "b".to_string())].into_iter().collect(),
            }),
            labels: [("k", "v"), (crate::PROTECTED_LABEL, crate::PROTECTED_VALUE)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created_at: Some(prost_types::Timestamp { seconds: 0, nanos: 0 }),
            updated_at: Some(prost_types::Timestamp { seconds: 0, nanos: 0 }),
            create_revision: 0,
            mod_revision: 0,
            protected: Some(true),
        };
        let image = image_from_seed(Some(wire_image.clone())).unwrap();
        assert!(image.protected());
        assert_eq!(image_to_seed(image), wire_image);
    }

    #[test]
    fn containerd_image_round_trips_with_times() {
        let image = image_from_seed(Some(seed::Image {
            name: "n".into(),
            target: Some(wire::Descriptor {
                media_type: "a/b".into(),
                digest: format!("sha256:{}", "c".repeat(64)),
                size: 3,
                annotations: Default::default(),
            }),
            ..Default::default()
        }))
        .unwrap();
        let mut image = Image {
            labels: [("k".to_string(), "v".to_string())].into_iter().collect(),
            created_at: UNIX_EPOCH + Duration::new(5, 6),
            updated_at: UNIX_EPOCH + Duration::new(7, 8),
            ..image
        };
        let wire_image = image_to_containerd(image.clone());
        assert_eq!(wire_image.created_at.unwrap().seconds, 5);
        let back = image_from_containerd(Some(wire_image)).unwrap();
        image.created_at = UNIX_EPOCH;
        image.updated_at = UNIX_EPOCH;
        assert_eq!(back, image);
    }

    #[test]
    fn an_update_without_target_keeps_its_labels() {
        let update = image_update_from_containerd(Some(ctrd::Image {
            name: "n".into(),
            labels: [("k".to_string(), String::new())].into_iter().collect(),
            ..Default::default()
        }));
        assert_eq!(update.labels.get("k").map(String::as_str), Some(""));
        assert_eq!(update.target.unwrap_err().field, "image.target.digest");
    }

    #[test]
    fn missing_target_names_the_digest_field() {
        let err = image_from_seed(Some(seed::Image {
            name: "x".into(),
            ..Default::default()
        }))
        .unwrap_err();
        assert_eq!(err.field, "image.target.digest");
    }

    #[test]
    fn timestamps_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        assert_eq!(time_from_timestamp("t", &timestamp_from_time(t)).unwrap(), t);
        assert!(time_from_timestamp("t", &prost_types::Timestamp { seconds: 1, nanos: -1 }).is_err());
    }
}
