//! Encodes stored image records straight into a wire API's `Image` message,
//! without decoding them into an [`Image`] first: the path of every list
//! and Get answer, and of every image a Watch answer carries.
//!
//! Both wire APIs' images hold the same fields under different numbers: a
//! name, a `containerd.types.Descriptor` target, a labels map and two
//! `google.protobuf.Timestamp`s. A [`WireImage`] gives the numbers. The
//! stored [`ImageRecord`](crate::store::record::ImageRecord) keeps labels and
//! annotations as protobuf map entries, which are copied under the wire's
//! field numbers; the other fields are read in place and written again.
//!
//! The result is byte for byte what prost writes for the same image converted
//! to the wire's message; the tests hold it to that. A record this path
//! cannot copy exactly (maps out of order or interleaved with other fields,
//! entries not in prost's canonical form, a field the record's view does not
//! know, anything malformed: [`View::read`]) takes the general path:
//! decoded, converted and encoded by prost, which also reports damage
//! exactly as a Get does.

use imaged_api::encoded::EncodedImageList;
use imaged_types::Image;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::error::Error;
use crate::store::Found;
use crate::store::record::{View, decode_image};

/// The field numbers of a wire API's `Image` message.
#[derive(Debug)]
pub struct ImageFields {
    /// `string name`.
    pub name: u32,
    /// `containerd.types.Descriptor target`.
    pub target: u32,
    /// `map<string, string> labels`.
    pub labels: u32,
    /// `google.protobuf.Timestamp created_at`.
    pub created_at: u32,
    /// `google.protobuf.Timestamp updated_at`.
    pub updated_at: u32,
    /// `uint64 mod_revision` and `uint64 create_revision`, when the message
    /// has them (the seed API's does; containerd's does not).
    pub revisions: Option<(u32, u32)>,
    /// `optional bool protected`, set only on a protected image, when the
    /// message has it (the seed API's does; containerd's shows the label).
    pub protected: Option<u32>,
}

/// A wire API's `Image` message: its field numbers, the parts the direct
/// path writes in their order, and its general encoder.
#[derive(Debug)]
pub struct WireImage {
    /// The field numbers.
    pub fields: ImageFields,
    /// The image as this message, encoded by prost: the general path.
    pub encode: fn(Image) -> Vec<u8>,
    /// Each part under its number, in number order (as prost writes
    /// fields): sorted once, when the program is built, not per image.
    parts: [(u32, Part); 8],
}

impl WireImage {
    /// The message with field numbers `fields`, encoded by `encode` on the
    /// general path.
    pub const fn new(fields: ImageFields, encode: fn(Image) -> Vec<u8>) -> WireImage {
        let (mod_revision, create_revision) = match fields.revisions {
            Some((m, c)) => ((m, Part::ModRevision), (c, Part::CreateRevision)),
            None => ((0, Part::Skip), (0, Part::Skip)),
        };
        let protected = match fields.protected {
            Some(number) => (number, Part::Protected),
            None => (0, Part::Skip),
        };
        let mut parts = [
            (fields.name, Part::Name),
            (fields.target, Part::Target),
            (fields.labels, Part::Labels),
            (fields.created_at, Part::Created),
            (fields.updated_at, Part::Updated),
            mod_revision,
            create_revision,
            protected,
        ];
        // An insertion sort: what a const fn can run.
        let mut i = 1;
        while i < parts.len() {
            let mut j = i;
            while j > 0 && parts[j - 1].0 > parts[j].0 {
                let swap = parts[j - 1];
                parts[j - 1] = parts[j];
                parts[j] = swap;
                j -= 1;
            }
            i += 1;
        }
        WireImage { fields, encode, parts }
    }
}

/// Field numbers of `containerd.types.Descriptor`, the same in both APIs.
mod descriptor {
    pub const MEDIA_TYPE: u32 = 1;
    pub const DIGEST: u32 = 2;
    pub const SIZE: u32 = 3;
    pub const ANNOTATIONS: u32 = 5;
}

/// Appends the image `found` holds to `out`, as one more of its images.
pub fn push_image(out: &mut EncodedImageList, found: &Found, wire: &WireImage) -> Result<(), Error> {
    match View::read(found.record()) {
        Some(view) => write(&view, found.name(), wire, Frame::ListEntry, &mut out.images),
        None => out.push_encoded(&(wire.encode)(found.image()?)),
    }
    Ok(())
}

/// The image named `name` whose stored record is `record`, as `wire`'s
/// `Image` message: what a Get answers.
pub fn encode_image(name: &str, record: &[u8], wire: &WireImage) -> Result<Vec<u8>, Error> {
    match View::read(record) {
        Some(view) => {
            let mut out = Vec::new();
            write(&view, name, wire, Frame::Bare, &mut out);
            Ok(out)
        }
        None => Ok((wire.encode)(decode_image(name, record).map_err(Error::Storage)?)),
    }
}

/// `image`, stored as `record`, as `wire`'s message: what a watch event
/// carries. The record is read in place, as for a Get; one the view
/// declines (or none) takes the general path from the image, which was
/// decoded from it.
pub fn encode_stored(image: &Image, record: Option<&[u8]>, wire: &WireImage) -> Vec<u8> {
    match record.and_then(View::read) {
        Some(view) => {
            let mut out = Vec::new();
            write(&view, &image.name, wire, Frame::Bare, &mut out);
            out
        }
        None => (wire.encode)(image.clone()),
    }
}

/// How a written image is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// As one of a list answer's images: field 1's key and the length first.
    ListEntry,
    /// The message alone.
    Bare,
}

/// Writes the image `view` reads, named `name`, as `wire`'s message,
/// framed as `frame` says.
fn write(view: &View, name: &str, wire: &WireImage, frame: Frame, out: &mut Vec<u8>) {
    let descriptor_len = string_len(descriptor::MEDIA_TYPE, view.media_type)
        + string_len(descriptor::DIGEST, view.digest)
        + varint_len(descriptor::SIZE, view.size as u64)
        + view.annotations.len_as(descriptor::ANNOTATIONS);
    let (created, updated) = (Timestamp::of(view.created), Timestamp::of(view.updated));
    let parts = &wire.parts;
    let part_len = |(number, part): &(u32, Part)| match part {
        Part::Name => string_len(*number, name),
        Part::Target => message_len(*number, descriptor_len),
        Part::Labels => view.labels.len_as(*number),
        Part::Created => message_len(*number, created.len()),
        Part::Updated => message_len(*number, updated.len()),
        Part::ModRevision => varint_len(*number, view.revision),
        Part::CreateRevision => varint_len(*number, view.create_revision),
        // An optional field is written when set, and only a protected
        // image sets it.
        Part::Protected if view.protected => key_len(*number) + 1,
        Part::Protected => 0,
        Part::Skip => 0,
    };
    let image_len: usize = parts.iter().map(part_len).sum();
    if frame == Frame::ListEntry {
        encode_key(imaged_api::encoded::IMAGES_FIELD, WireType::LengthDelimited, out);
        encode_varint(image_len as u64, out);
    }
    out.reserve(image_len);
    for &(number, part) in parts {
        match part {
            Part::Name => write_string(number, name, out),
            Part::Target => {
                write_message_key(number, descriptor_len, out);
                write_string(descriptor::MEDIA_TYPE, view.media_type, out);
                write_string(descriptor::DIGEST, view.digest, out);
                write_varint(descriptor::SIZE, view.size as u64, out);
                view.annotations.write_as(descriptor::ANNOTATIONS, out);
            }
            Part::Labels => view.labels.write_as(number, out),
            Part::Created => created.write(number, out),
            Part::Updated => updated.write(number, out),
            Part::ModRevision => write_varint(number, view.revision, out),
            Part::CreateRevision => write_varint(number, view.create_revision, out),
            // `true` is 1.
            Part::Protected if view.protected => {
                encode_key(number, WireType::Varint, out);
                out.push(1);
            }
            Part::Protected => {}
            Part::Skip => {}
        }
    }
}

/// The parts of a wire image, to write in field-number order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Name,
    Target,
    Labels,
    Created,
    Updated,
    ModRevision,
    CreateRevision,
    Protected,
    /// A field the wire's message does not have.
    Skip,
}

/// A `google.protobuf.Timestamp` of a stored time, as the general path makes
/// it: nanoseconds since the epoch, clamped at the epoch.
#[derive(Debug, Clone, Copy)]
struct Timestamp {
    seconds: u64,
    nanos: u64,
}

impl Timestamp {
    fn of(unix_nanos: i64) -> Timestamp {
        let t = unix_nanos.max(0) as u64;
        Timestamp {
            seconds: t / 1_000_000_000,
            nanos: t % 1_000_000_000,
        }
    }

    fn len(&self) -> usize {
        varint_len(1, self.seconds) + varint_len(2, self.nanos)
    }

    fn write(&self, number: u32, out: &mut Vec<u8>) {
        write_message_key(number, self.len(), out);
        write_varint(1, self.seconds, out);
        write_varint(2, self.nanos, out);
    }
}

fn string_len(number: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        key_len(number) + encoded_len_varint(value.len() as u64) + value.len()
    }
}

fn varint_len(number: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(number) + encoded_len_varint(value)
    }
}

fn message_len(number: u32, len: usize) -> usize {
    key_len(number) + encoded_len_varint(len as u64) + len
}

fn write_string(number: u32, value: &str, out: &mut Vec<u8>) {
    if !value.is_empty() {
        encode_key(number, WireType::LengthDelimited, out);
        encode_varint(value.len() as u64, out);
        out.extend_from_slice(value.as_bytes());
    }
}

fn write_varint(number: u32, value: u64, out: &mut Vec<u8>) {
    if value != 0 {
        encode_key(number, WireType::Varint, out);
        encode_varint(value, out);
    }
}

fn write_message_key(number: u32, len: usize, out: &mut Vec<u8>) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use imaged_types::{Descriptor, Digest, Labels, PROTECTED_LABEL, PROTECTED_VALUE};
    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::server::images::CONTAINERD_IMAGE;
    use crate::server::seed::SEED_IMAGE;
    use crate::store::layout::image_key;
    use crate::store::record::ImageRecord;

    fn found(name: &str, record: Vec<u8>) -> Found {
        Found::new(image_key("default", name).into(), record.into()).unwrap()
    }

    /// What the general path writes: decoded, converted, encoded by prost.
    fn general(found: &Found, wire: &WireImage) -> Result<Vec<u8>, Error> {
        let mut out = EncodedImageList::default();
        out.push_encoded(&(wire.encode)(found.image()?));
        Ok(out.images)
    }

    fn direct(found: &Found, wire: &WireImage) -> Result<Vec<u8>, Error> {
        let mut out = EncodedImageList::default();
        push_image(&mut out, found, wire)?;
        Ok(out.images)
    }

    /// A Get's answer on the general path: the image alone, unframed.
    fn general_get(found: &Found, wire: &WireImage) -> Result<Vec<u8>, Error> {
        Ok((wire.encode)(found.image()?))
    }

    fn direct_get(found: &Found, wire: &WireImage) -> Result<Vec<u8>, Error> {
        encode_image(found.name(), found.record(), wire)
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z0-9./:_-]{0,12}", "\\PC{0,6}", Just(String::new())]
    }

    fn map() -> impl Strategy<Value = Labels> {
        proptest::collection::btree_map(text(), text(), 0..5)
    }

    /// Labels, protecting the image or not: the protection label with its
    /// value, with another value, or left out.
    fn labels() -> impl Strategy<Value = Labels> {
        let pin = prop_oneof![Just(None), Just(Some(PROTECTED_VALUE)), Just(Some("no"))];
        (map(), pin).prop_map(|(mut labels, pin)| {
            if let Some(value) = pin {
                labels.insert(PROTECTED_LABEL.into(), value.into());
            }
            labels
        })
    }

    fn image() -> impl Strategy<Value = (String, Image)> {
        (
            "[a-z0-9./:@-]{1,40}",
            labels(),
            text(),
            "[0-9a-f]{64}",
            any::<i64>(),
            map(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(name, labels, media_type, hex, size, annotations, created, updated)| {
                let image = Image {
                    name: name.clone(),
                    labels,
                    target: Descriptor {
                        media_type,
                        digest: Digest::parse(&format!("sha256:{hex}")).unwrap(),
                        size,
                        annotations,
                    },
                    created_at: UNIX_EPOCH + Duration::from_nanos(created >> 1),
                    updated_at: UNIX_EPOCH + Duration::from_nanos(updated >> 1),
                    create_revision: 0,
                    mod_revision: 0,
                };
                (name, image)
            })
    }

    proptest! {
        /// Any stored image comes out byte for byte as the general path
        /// writes it, in both wire APIs, and without taking that path.
        #[test]
        fn stored_images_encode_exactly_as_prost_encodes_them((name, image) in image(), revision in any::<u64>()) {
            let record = ImageRecord::from_image(&image, revision / 2, revision).encode_to_vec();
            prop_assert!(View::read(&record).is_some(), "the direct path refused {image:?}");
            let found = found(&name, record);
            let stored = found.image().unwrap();
            for wire in [&SEED_IMAGE, &CONTAINERD_IMAGE] {
                prop_assert_eq!(direct(&found, wire).unwrap(), general(&found, wire).unwrap());
                prop_assert_eq!(direct_get(&found, wire).unwrap(), general_get(&found, wire).unwrap());
                // A watch event's image, from the same record.
                prop_assert_eq!(
                    encode_stored(&stored, Some(found.record()), wire),
                    general_get(&found, wire).unwrap()
                );
            }
        }
    }

    /// The fields of message `full_name` in the descriptor set `build.rs`
    /// made from the protos: number → name.
    fn declared(full_name: &str) -> std::collections::BTreeMap<u32, String> {
        let set = prost_types::FileDescriptorSet::decode(imaged_api::FILE_DESCRIPTOR_SET).unwrap();
        let (package, name) = full_name.rsplit_once('.').unwrap();
        let message = set
            .file
            .iter()
            .filter(|f| f.package() == package)
            .flat_map(|f| &f.message_type)
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("{full_name} is not in the descriptor set"));
        message
            .field
            .iter()
            .map(|f| (f.number() as u32, f.name().to_owned()))
            .collect()
    }

    /// Every field of each wire API's image message, and of their target
    /// descriptor, is one the direct path writes, under the number the
    /// protos give it: a field added to a proto fails here until the
    /// encoder writes it, rather than showing in some answers and not in
    /// others.
    #[test]
    fn the_direct_path_writes_every_field_the_protos_declare() {
        for (message, wire) in [
            ("containerd.v1.Image", &SEED_IMAGE),
            ("containerd.services.images.v1.Image", &CONTAINERD_IMAGE),
        ] {
            let fields = &wire.fields;
            let mut written: std::collections::BTreeMap<u32, String> = [
                (fields.name, "name"),
                (fields.target, "target"),
                (fields.labels, "labels"),
                (fields.created_at, "created_at"),
                (fields.updated_at, "updated_at"),
            ]
            .into_iter()
            .map(|(n, f)| (n, f.to_owned()))
            .collect();
            if let Some((m, c)) = fields.revisions {
                written.insert(m, "mod_revision".into());
                written.insert(c, "create_revision".into());
            }
            if let Some(p) = fields.protected {
                written.insert(p, "protected".into());
            }
            assert_eq!(declared(message), written, "{message}");
        }
        let written: std::collections::BTreeMap<u32, String> = [
            (descriptor::MEDIA_TYPE, "media_type"),
            (descriptor::DIGEST, "digest"),
            (descriptor::SIZE, "size"),
            (descriptor::ANNOTATIONS, "annotations"),
        ]
        .into_iter()
        .map(|(n, f)| (n, f.to_owned()))
        .collect();
        assert_eq!(declared("containerd.types.Descriptor"), written);
    }

    fn record(labels: &[(&str, &str)]) -> ImageRecord {
        ImageRecord {
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: 42,
            created_unix_nanos: 1_700_000_000_123_456_789,
            updated_unix_nanos: 1_700_000_001_000_000_000,
            ..Default::default()
        }
    }

    /// A labels entry (field 1) holding `key` and `value`: a record with
    /// nothing else.
    fn label_entry(key: &str, value: &str) -> Vec<u8> {
        ImageRecord {
            labels: [(key.to_string(), value.to_string())].into(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn records_not_in_canonical_form_take_the_general_path_to_the_same_bytes() {
        let canonical = record(&[("a", "1")]).encode_to_vec();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            // Maps are merged entry by entry: an entry after other fields...
            (
                "a label after the other fields",
                [canonical.clone(), label_entry("b", "2")].concat(),
            ),
            // ...or out of key order, or repeated, is merged (last wins).
            (
                "labels out of order",
                [label_entry("b", "2"), canonical.clone()].concat(),
            ),
            ("a label twice", [canonical.clone(), label_entry("a", "3")].concat()),
            // An entry that writes its default key explicitly.
            (
                "an explicit empty key",
                [canonical.clone(), vec![0x0a, 0x05, 0x0a, 0x00, 0x12, 0x01, b'x']].concat(),
            ),
        ];
        for (what, bytes) in cases {
            assert!(View::read(&bytes).is_none(), "{what}: should take the general path");
            let found = found("n", bytes);
            for wire in [&SEED_IMAGE, &CONTAINERD_IMAGE] {
                assert_eq!(direct(&found, wire).unwrap(), general(&found, wire).unwrap(), "{what}");
                assert_eq!(
                    direct_get(&found, wire).unwrap(),
                    general_get(&found, wire).unwrap(),
                    "{what}"
                );
            }
        }
        // A field the record's view does not know (a newer store's) takes
        // the general path, so no answer shows less of it than another.
        let newer = [canonical.clone(), vec![0xa0, 0x01, 0x07]].concat();
        assert!(View::read(&newer).is_none());
        let found = found("n", newer);
        assert_eq!(
            direct(&found, &SEED_IMAGE).unwrap(),
            general(&found, &SEED_IMAGE).unwrap()
        );
        assert_eq!(
            direct_get(&found, &SEED_IMAGE).unwrap(),
            general_get(&found, &SEED_IMAGE).unwrap()
        );
    }

    #[test]
    fn damaged_records_are_storage_errors_as_in_a_get() {
        let mut bad_digest = record(&[]);
        bad_digest.digest = "sha256:xyz".into();
        let mut bad_utf8 = record(&[]).encode_to_vec();
        let at = bad_utf8.windows(5).position(|w| w == b"appli").unwrap();
        bad_utf8[at] = 0xff;
        let canonical = record(&[("a", "1")]).encode_to_vec();
        let cases = [
            ("invalid digest", bad_digest.encode_to_vec()),
            ("no digest", ImageRecord::default().encode_to_vec()),
            ("media type not UTF-8", bad_utf8),
            ("truncated", canonical[..canonical.len() - 3].to_vec()),
            (
                "a known field of the wrong wire type",
                [canonical.clone(), vec![0x20 | 2, 0]].concat(),
            ),
        ];
        for (what, bytes) in cases {
            let found = found("n", bytes);
            let general = general(&found, &SEED_IMAGE).expect_err(what).to_string();
            let direct = direct(&found, &SEED_IMAGE).expect_err(what).to_string();
            assert_eq!(direct, general, "{what}");
            assert!(direct.contains("\"n\""), "{what}: {direct}");
            let get = direct_get(&found, &SEED_IMAGE).expect_err(what).to_string();
            assert_eq!(get, general, "{what}");
        }
    }
}
