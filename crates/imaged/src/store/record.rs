//! The image record: the one owner of an image's stored bytes.
//!
//! An image is stored as an [`ImageRecord`] (protobuf, written by prost)
//! under its key (`layout::image_key`). Everything that reads those bytes
//! goes through here: [`decode_image`] decodes them into an [`Image`], and
//! [`View::read`] reads them in place, without a copy, for the wire
//! encoders that copy a record's fields straight into an answer. No other
//! module knows the record's field numbers.
//!
//! The view reads every field the record has, or declines the record (the
//! caller then decodes it): a unit test names every field of the record in
//! a pattern with no `..`, so a field added to [`ImageRecord`] fails to
//! build until the view reads it.

use imaged_types::time::{from_unix_nanos, unix_nanos};
use imaged_types::{Descriptor, Digest, Image, Labels, PROTECTED_LABEL, PROTECTED_VALUE};
use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint, key_len};

/// An image as stored: everything of [`Image`] but its name, plus the store
/// revisions at which it was created and last changed.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageRecord {
    /// Labels on the image.
    #[prost(btree_map = "string, string", tag = "1")]
    pub labels: Labels,
    /// Target media type.
    #[prost(string, tag = "2")]
    pub media_type: String,
    /// Target digest, `algorithm:encoded`.
    #[prost(string, tag = "3")]
    pub digest: String,
    /// Target size in bytes.
    #[prost(int64, tag = "4")]
    pub size: i64,
    /// Target annotations.
    #[prost(btree_map = "string, string", tag = "5")]
    pub annotations: Labels,
    /// Creation time, nanoseconds since the Unix epoch.
    #[prost(int64, tag = "6")]
    pub created_unix_nanos: i64,
    /// Last change time, nanoseconds since the Unix epoch.
    #[prost(int64, tag = "7")]
    pub updated_unix_nanos: i64,
    /// Store revision of the change that created the image.
    #[prost(uint64, tag = "8")]
    pub create_revision: u64,
    /// Store revision of the image's last change.
    #[prost(uint64, tag = "9")]
    pub revision: u64,
}

/// Field numbers of [`ImageRecord`], for [`View::read`]. A unit test holds
/// them to prost's tags.
mod fields {
    /// `labels`.
    pub const LABELS: u32 = 1;
    /// `media_type`.
    pub const MEDIA_TYPE: u32 = 2;
    /// `digest`.
    pub const DIGEST: u32 = 3;
    /// `size`.
    pub const SIZE: u32 = 4;
    /// `annotations`.
    pub const ANNOTATIONS: u32 = 5;
    /// `created_unix_nanos`.
    pub const CREATED: u32 = 6;
    /// `updated_unix_nanos`.
    pub const UPDATED: u32 = 7;
    /// `create_revision`.
    pub const CREATE_REVISION: u32 = 8;
    /// `revision`.
    pub const REVISION: u32 = 9;
}

/// What an image takes against its namespace's quota: its key and its
/// stored record.
pub fn image_bytes(key: &[u8], record: &[u8]) -> u64 {
    (key.len() + record.len()) as u64
}

impl ImageRecord {
    /// The stored form of `image` at `revision`, created at `create_revision`.
    pub fn from_image(image: &Image, create_revision: u64, revision: u64) -> Self {
        ImageRecord {
            labels: image.labels.clone(),
            media_type: image.target.media_type.clone(),
            digest: image.target.digest.as_str().to_owned(),
            size: image.target.size,
            annotations: image.target.annotations.clone(),
            created_unix_nanos: unix_nanos(image.created_at),
            updated_unix_nanos: unix_nanos(image.updated_at),
            create_revision,
            revision,
        }
    }

    /// The image named `name` that this record describes.
    pub fn into_image(self, name: &str) -> Result<Image, String> {
        let digest =
            Digest::from_string(self.digest).map_err(|e| format!("stored digest of {name:?} is invalid: {e}"))?;
        Ok(Image {
            name: name.to_owned(),
            labels: self.labels,
            target: Descriptor {
                media_type: self.media_type,
                digest,
                size: self.size,
                annotations: self.annotations,
            },
            created_at: from_unix_nanos(self.created_unix_nanos),
            updated_at: from_unix_nanos(self.updated_unix_nanos),
            create_revision: self.create_revision,
            mod_revision: self.revision,
        })
    }
}

/// The image named `name` whose stored record is `bytes`; damage is a
/// storage error naming the image.
pub fn decode_image(name: &str, bytes: &[u8]) -> Result<Image, String> {
    ImageRecord::decode(bytes)
        .map_err(|e| format!("record of {name:?} does not decode: {e}"))?
        .into_image(name)
}

/// A map's entries as stored: each the map's field key, a length and the
/// entry, back to back, in prost's canonical form and in key order.
#[derive(Debug, Default, Clone, Copy)]
pub struct Entries<'a> {
    /// The entries, framed under the record's field number.
    bytes: &'a [u8],
    /// How many there are.
    count: usize,
    /// The record's field number they are framed under.
    field: u32,
}

impl Entries<'_> {
    /// Their length framed under field `to` of another message.
    pub fn len_as(&self, to: u32) -> usize {
        self.bytes.len() - self.count * key_len(self.field) + self.count * key_len(to)
    }

    /// Writes them framed under field `to` of another message: a map's
    /// entries are the same message whatever the map's field number.
    pub fn write_as(&self, to: u32, out: &mut Vec<u8>) {
        let mut buf = self.bytes;
        while !buf.is_empty() {
            // Checked when the record was read.
            let (Ok(_), Ok(len)) = (decode_key(&mut buf), decode_varint(&mut buf)) else {
                return;
            };
            let (entry, rest) = buf.split_at(len as usize);
            encode_key(to, WireType::LengthDelimited, out);
            encode_varint(len, out);
            out.extend_from_slice(entry);
            buf = rest;
        }
    }
}

/// Where a map's entries lie in a record, while it is read.
#[derive(Debug, Default)]
struct MapSpan<'a> {
    start: usize,
    end: usize,
    count: usize,
    last_key: Option<&'a [u8]>,
}

impl<'a> MapSpan<'a> {
    /// Adds the entry at `at..end` with `key`; `None` unless it directly
    /// follows the previous entry and its key is greater.
    fn add(&mut self, at: usize, end: usize, key: &'a [u8]) -> Option<()> {
        if self.count == 0 {
            self.start = at;
        } else if self.end != at || self.last_key.is_some_and(|last| last >= key) {
            return None;
        }
        self.end = end;
        self.count += 1;
        self.last_key = Some(key);
        Some(())
    }

    fn entries(&self, record: &'a [u8], field: u32) -> Entries<'a> {
        Entries {
            bytes: &record[self.start..self.end],
            count: self.count,
            field,
        }
    }
}

/// A stored record read in place: every field of [`ImageRecord`], with
/// the labels' and annotations' entries as stored.
#[derive(Debug, Default)]
pub struct View<'a> {
    /// The labels' entries.
    pub labels: Entries<'a>,
    /// Whether a label protects the image ([`Image::protected`]).
    pub protected: bool,
    /// The target's media type.
    pub media_type: &'a str,
    /// The target's digest, checked.
    pub digest: &'a str,
    /// The target's size.
    pub size: i64,
    /// The target's annotations' entries.
    pub annotations: Entries<'a>,
    /// Creation time, nanoseconds since the Unix epoch.
    pub created: i64,
    /// Last change time, nanoseconds since the Unix epoch.
    pub updated: i64,
    /// Store revision of the image's creation.
    pub create_revision: u64,
    /// Store revision of the image's last change.
    pub revision: u64,
}

impl<'a> View<'a> {
    /// Reads `record` in place, or `None` when it must be decoded instead:
    /// maps out of order or interleaved with other fields, entries not in
    /// prost's canonical form, a field this view does not know, anything
    /// malformed. [`decode_image`] then reports damage as a Get does.
    pub fn read(record: &'a [u8]) -> Option<View<'a>> {
        let mut view = View::default();
        let (mut labels, mut annotations) = (MapSpan::default(), MapSpan::default());
        let mut buf = record;
        while !buf.is_empty() {
            let at = record.len() - buf.len();
            let (tag, wire_type) = decode_key(&mut buf).ok()?;
            match (tag, wire_type) {
                (fields::LABELS | fields::ANNOTATIONS, WireType::LengthDelimited) => {
                    let entry = length_delimited(&mut buf)?;
                    let span = if tag == fields::LABELS {
                        &mut labels
                    } else {
                        &mut annotations
                    };
                    let (key, value) = canonical_entry(entry)?;
                    span.add(at, record.len() - buf.len(), key)?;
                    if tag == fields::LABELS && key == PROTECTED_LABEL.as_bytes() && value == PROTECTED_VALUE.as_bytes()
                    {
                        view.protected = true;
                    }
                }
                (fields::MEDIA_TYPE, WireType::LengthDelimited) => {
                    view.media_type = std::str::from_utf8(length_delimited(&mut buf)?).ok()?;
                }
                (fields::DIGEST, WireType::LengthDelimited) => {
                    view.digest = std::str::from_utf8(length_delimited(&mut buf)?).ok()?;
                }
                (fields::SIZE, WireType::Varint) => view.size = decode_varint(&mut buf).ok()? as i64,
                (fields::CREATED, WireType::Varint) => view.created = decode_varint(&mut buf).ok()? as i64,
                (fields::UPDATED, WireType::Varint) => view.updated = decode_varint(&mut buf).ok()? as i64,
                (fields::CREATE_REVISION, WireType::Varint) => view.create_revision = decode_varint(&mut buf).ok()?,
                (fields::REVISION, WireType::Varint) => view.revision = decode_varint(&mut buf).ok()?,
                // A field of the wrong type, or one this view does not know
                // (written by a newer imaged): decoded instead, so that no
                // answer shows less of a record than another.
                _ => return None,
            }
        }
        Digest::validate(view.digest).ok()?;
        view.labels = labels.entries(record, fields::LABELS);
        view.annotations = annotations.entries(record, fields::ANNOTATIONS);
        Some(view)
    }
}

/// Takes one length-delimited value off `buf`.
fn length_delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
    let (value, rest) = buf.split_at_checked(len)?;
    *buf = rest;
    Some(value)
}

/// Checks that a map entry is as prost writes one, a non-empty UTF-8 key
/// (field 1) then a non-empty UTF-8 value (field 2), each left out when
/// empty, and returns its key and value.
fn canonical_entry(mut entry: &[u8]) -> Option<(&[u8], &[u8])> {
    let key = canonical_string(&mut entry, 1)?;
    let value = canonical_string(&mut entry, 2)?;
    entry.is_empty().then_some((key, value))
}

/// Takes string field `number` off the front of `buf`: empty when it is not
/// there, `None` when it is there but empty or not UTF-8.
fn canonical_string<'a>(buf: &mut &'a [u8], number: u32) -> Option<&'a [u8]> {
    if buf.first() != Some(&(((number << 3) | WireType::LengthDelimited as u32) as u8)) {
        return Some(&[]);
    }
    *buf = &buf[1..];
    let value = length_delimited(buf)?;
    (!value.is_empty() && std::str::from_utf8(value).is_ok()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_fields_are_the_records_tags() {
        let image = ImageRecord {
            labels: [("l".to_string(), "v".to_string())].into_iter().collect(),
            media_type: "m".into(),
            digest: "d".into(),
            size: 1,
            annotations: [("a".to_string(), "v".to_string())].into_iter().collect(),
            created_unix_nanos: 2,
            updated_unix_nanos: 3,
            create_revision: 4,
            revision: 5,
        };
        let bytes = image.encode_to_vec();
        let mut buf = &bytes[..];
        let mut tags = Vec::new();
        while !buf.is_empty() {
            let (tag, wire) = prost::encoding::decode_key(&mut buf).unwrap();
            tags.push(tag);
            prost::encoding::skip_field(wire, tag, &mut buf, Default::default()).unwrap();
        }
        use fields::*;
        assert_eq!(
            tags,
            [
                LABELS,
                MEDIA_TYPE,
                DIGEST,
                SIZE,
                ANNOTATIONS,
                CREATED,
                UPDATED,
                CREATE_REVISION,
                REVISION
            ]
        );
    }

    /// The view reads every field of the record: the pattern below names
    /// each with no `..`, so a field added to [`ImageRecord`] fails to
    /// build here until the view reads it and this test checks it.
    #[test]
    fn the_view_reads_every_field_of_the_record() {
        let record = ImageRecord {
            labels: [
                ("l".to_string(), "v".to_string()),
                (PROTECTED_LABEL.into(), PROTECTED_VALUE.into()),
            ]
            .into(),
            media_type: "m/t".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: 7,
            annotations: [("a".to_string(), "w".to_string())].into(),
            created_unix_nanos: 11,
            updated_unix_nanos: 12,
            create_revision: 13,
            revision: 14,
        };
        let bytes = record.encode_to_vec();
        let view = View::read(&bytes).expect("a canonical record is read in place");
        let ImageRecord {
            labels,
            media_type,
            digest,
            size,
            annotations,
            created_unix_nanos,
            updated_unix_nanos,
            create_revision,
            revision,
        } = record;
        let entries = |map: Labels| map.into_iter().collect::<Vec<_>>();
        let read = |e: Entries, field| {
            let mut out = Vec::new();
            e.write_as(field, &mut out);
            ImageRecord::decode(&out[..]).unwrap()
        };
        assert_eq!(entries(read(view.labels, fields::LABELS).labels), entries(labels));
        assert!(view.protected);
        assert_eq!(view.media_type, media_type);
        assert_eq!(view.digest, digest);
        assert_eq!(view.size, size);
        assert_eq!(
            entries(read(view.annotations, fields::ANNOTATIONS).annotations),
            entries(annotations)
        );
        assert_eq!(view.created, created_unix_nanos);
        assert_eq!(view.updated, updated_unix_nanos);
        assert_eq!(view.create_revision, create_revision);
        assert_eq!(view.revision, revision);
        // A field it does not know: declined, to be decoded.
        assert!(View::read(&[bytes.clone(), vec![10 << 3, 1]].concat()).is_none());
    }
}
