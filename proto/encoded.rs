//! Answers whose images are already protobuf bytes, so a server can send
//! stored images without building a message struct per image:
//! - [`EncodedImageList`] is exactly the seed API's `ListResponse` and
//!   containerd's `ListImagesResponse` on the wire: field 1 is the repeated
//!   `Image`, field 2 the seed API's page token (never set in containerd's
//!   answer, so never encoded).
//! - [`EncodedImage`] is exactly the seed API's `GetResponse` and
//!   containerd's `GetImageResponse`: field 1 is the one `Image`.
//!
//! - [`EncodedWatchResponse`] is exactly the seed API's `WatchResponse`:
//!   events whose images were encoded once, for every watcher they go to.
//! - [`RawMessage`] is any message as its bytes: the events service's
//!   `Envelope`, encoded once for every subscriber.
//!
//! The daemon's servers are generated with these types in place of those
//! messages (see `build.rs`); clients keep the ordinary generated types.

// Hand-written, unlike the rest of the crate: the crate's allowances for
// generated code do not apply here.
#![warn(missing_docs, clippy::all)]

use prost::bytes::{Buf, BufMut};
use prost::encoding::{self, DecodeContext, WireType};

/// A list of images already encoded as the entries of field 1 (each a key,
/// a length and an `Image` message, back to back), and a page token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedImageList {
    /// Field 1's entries, exactly as they go on the wire.
    pub images: Vec<u8>,
    /// Field 2, the token of the next page; empty when there is none.
    pub next_page_token: String,
    /// Field 3, the seed API's revision the list was read at; never set in
    /// containerd's answer, so never encoded there.
    pub revision: u64,
}

/// The field number of the images in both list answers.
pub const IMAGES_FIELD: u32 = 1;

/// Field number of `ListResponse.revision`.
pub const LIST_REVISION_FIELD: u32 = 3;

impl EncodedImageList {
    /// Appends one image, given as its encoded `Image` message.
    pub fn push_encoded(&mut self, image: &[u8]) {
        put_message(IMAGES_FIELD, image, &mut self.images);
    }
}

/// Appends field `number` holding the encoded message `bytes`: its key, its
/// length, the bytes.
fn put_message(number: u32, bytes: &[u8], out: &mut Vec<u8>) {
    encoding::encode_key(number, WireType::LengthDelimited, out);
    encoding::encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// The length of [`put_message`]'s field.
fn message_len(number: u32, bytes: &[u8]) -> usize {
    encoding::key_len(number) + encoding::encoded_len_varint(bytes.len() as u64) + bytes.len()
}

/// Writes a proto3 `uint64` field, left out when 0, as prost does.
fn put_uint64(number: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        encoding::uint64::encode(number, &value, buf);
    }
}

/// The length of [`put_uint64`]'s field.
fn uint64_len(number: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        encoding::uint64::encoded_len(number, &value)
    }
}

/// A Get answer: its `Image` (field 1), already encoded.
///
/// The image is always present: an empty `image` is an `Image` with no field
/// set, not an absent one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedImage {
    /// The `Image` message's bytes, without field 1's key and length.
    pub image: Vec<u8>,
}

/// The field number of the image in both Get answers.
pub const IMAGE_FIELD: u32 = 1;

/// Takes a message field's bytes off `buf`.
fn message(wire_type: WireType, buf: &mut impl Buf, ctx: DecodeContext) -> Result<Vec<u8>, prost::DecodeError> {
    let mut bytes = Vec::new();
    encoding::bytes::merge(wire_type, &mut bytes, buf, ctx)?;
    Ok(bytes)
}

impl prost::Message for EncodedImage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encoding::encode_key(IMAGE_FIELD, WireType::LengthDelimited, buf);
        encoding::encode_varint(self.image.len() as u64, buf);
        buf.put_slice(&self.image);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            // A message field given twice is the merge of both, which is
            // what the concatenation of their bytes decodes to.
            IMAGE_FIELD => message(wire_type, buf, ctx).map(|image| self.image.extend(image)),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        message_len(IMAGE_FIELD, &self.image)
    }

    fn clear(&mut self) {
        self.image.clear();
    }
}

impl prost::Message for EncodedImageList {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.images);
        if !self.next_page_token.is_empty() {
            encoding::string::encode(2, &self.next_page_token, buf);
        }
        put_uint64(LIST_REVISION_FIELD, self.revision, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            IMAGES_FIELD => message(wire_type, buf, ctx).map(|image| self.push_encoded(&image)),
            2 => encoding::string::merge(wire_type, &mut self.next_page_token, buf, ctx),
            LIST_REVISION_FIELD => encoding::uint64::merge(wire_type, &mut self.revision, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let token = if self.next_page_token.is_empty() {
            0
        } else {
            encoding::string::encoded_len(2, &self.next_page_token)
        };
        self.images.len() + token + uint64_len(3, self.revision)
    }

    fn clear(&mut self) {
        self.images.clear();
        self.next_page_token.clear();
        self.revision = 0;
    }
}

/// A Watch answer whose events are already encoded: field 1's entries (each
/// a key, a length and a `WatchEvent`) and the revision reached (field 2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedWatchResponse {
    /// Field 1's entries, exactly as they go on the wire.
    pub events: Vec<u8>,
    /// Field 2: every change up to it has been sent.
    pub revision: u64,
}

/// The field number of the events in a Watch answer.
pub const EVENTS_FIELD: u32 = 1;

/// Field number of `WatchResponse.revision`.
pub const WATCH_REVISION_FIELD: u32 = 2;

/// The field numbers of `WatchEvent`.
mod watch_event {
    pub const TYPE: u32 = 1;
    pub const REVISION: u32 = 2;
    pub const IMAGE: u32 = 3;
    pub const PREV_IMAGE: u32 = 4;
}

impl EncodedWatchResponse {
    /// Appends one event: its type's number, its revision, and its images
    /// given as encoded `Image` messages.
    pub fn push_event(&mut self, event_type: i32, revision: u64, image: &[u8], prev_image: Option<&[u8]>) {
        use watch_event::*;
        let len = encoding::int32::encoded_len(TYPE, &event_type)
            + encoding::uint64::encoded_len(REVISION, &revision)
            + message_len(IMAGE, image)
            + prev_image.map_or(0, |prev| message_len(PREV_IMAGE, prev));
        let out = &mut self.events;
        encoding::encode_key(EVENTS_FIELD, WireType::LengthDelimited, out);
        encoding::encode_varint(len as u64, out);
        encoding::int32::encode(TYPE, &event_type, out);
        encoding::uint64::encode(REVISION, &revision, out);
        put_message(IMAGE, image, out);
        if let Some(prev) = prev_image {
            put_message(PREV_IMAGE, prev, out);
        }
    }
}

impl prost::Message for EncodedWatchResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.events);
        put_uint64(WATCH_REVISION_FIELD, self.revision, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            EVENTS_FIELD => {
                message(wire_type, buf, ctx).map(|event| put_message(EVENTS_FIELD, &event, &mut self.events))
            }
            WATCH_REVISION_FIELD => encoding::uint64::merge(wire_type, &mut self.revision, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        self.events.len() + uint64_len(2, self.revision)
    }

    fn clear(&mut self) {
        self.events.clear();
        self.revision = 0;
    }
}

/// Any message, kept as its encoded bytes: sent as they are, and read back
/// field by field into the same bytes (groups, which proto3 does not have,
/// are dropped).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawMessage {
    /// The message's bytes.
    pub bytes: Vec<u8>,
}

impl prost::Message for RawMessage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.bytes);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match wire_type {
            WireType::StartGroup | WireType::EndGroup => return encoding::skip_field(wire_type, tag, buf, ctx),
            _ => encoding::encode_key(tag, wire_type, &mut self.bytes),
        }
        match wire_type {
            WireType::Varint => {
                let value = encoding::decode_varint(buf)?;
                encoding::encode_varint(value, &mut self.bytes);
            }
            WireType::SixtyFourBit => {
                let mut value = 0u64;
                encoding::fixed64::merge(wire_type, &mut value, buf, ctx)?;
                self.bytes.extend_from_slice(&value.to_le_bytes());
            }
            WireType::ThirtyTwoBit => {
                let mut value = 0u32;
                encoding::fixed32::merge(wire_type, &mut value, buf, ctx)?;
                self.bytes.extend_from_slice(&value.to_le_bytes());
            }
            _ => {
                let value = message(wire_type, buf, ctx)?;
                encoding::encode_varint(value.len() as u64, &mut self.bytes);
                self.bytes.extend_from_slice(&value);
            }
        }
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    fn clear(&mut self) {
        self.bytes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containerd::services::images::v1 as ctrd;
    use crate::containerd::v1 as seed;
    use prost::Message;

    fn seed_image(name: &str) -> seed::Image {
        seed::Image {
            name: name.into(),
            target: Some(crate::containerd::types::Descriptor {
                media_type: "m".into(),
                digest: "sha256:00".into(),
                size: 7,
                annotations: [("a".to_string(), "b".to_string())].into(),
            }),
            labels: [("k".to_string(), "v".to_string())].into(),
            created_at: Some(prost_types::Timestamp { seconds: 1, nanos: 2 }),
            updated_at: None,
            mod_revision: 9,
            create_revision: 3,
            protected: Some(true),
        }
    }

    #[test]
    fn it_is_the_seed_list_answer_on_the_wire() {
        let answer = seed::ListResponse {
            images: vec![seed_image("a"), seed_image("b")],
            next_page_token: "tok".into(),
            revision: 12,
        };
        let mut encoded = EncodedImageList {
            next_page_token: "tok".into(),
            revision: 12,
            ..Default::default()
        };
        for image in &answer.images {
            encoded.push_encoded(&image.encode_to_vec());
        }
        assert_eq!(encoded.encode_to_vec(), answer.encode_to_vec());
        assert_eq!(encoded.encoded_len(), answer.encoded_len());
        assert_eq!(
            seed::ListResponse::decode(&encoded.encode_to_vec()[..]).unwrap(),
            answer
        );
        assert_eq!(EncodedImageList::decode(&answer.encode_to_vec()[..]).unwrap(), encoded);
    }

    #[test]
    fn the_get_answers_are_encoded_images_on_the_wire() {
        let image = seed_image("a");
        let answer = seed::GetResponse {
            image: Some(image.clone()),
        };
        let encoded = EncodedImage {
            image: image.encode_to_vec(),
        };
        assert_eq!(encoded.encode_to_vec(), answer.encode_to_vec());
        assert_eq!(encoded.encoded_len(), answer.encoded_len());
        assert_eq!(seed::GetResponse::decode(&encoded.encode_to_vec()[..]).unwrap(), answer);
        assert_eq!(EncodedImage::decode(&answer.encode_to_vec()[..]).unwrap(), encoded);

        // An image of no fields is still present, as prost sends one.
        let empty = ctrd::GetImageResponse {
            image: Some(ctrd::Image::default()),
        };
        let encoded = EncodedImage::default();
        assert_eq!(encoded.encode_to_vec(), empty.encode_to_vec());
        assert_eq!(
            ctrd::GetImageResponse::decode(&encoded.encode_to_vec()[..]).unwrap(),
            empty
        );

        // Field 1 given twice merges, as prost merges it.
        let (first, second) = (
            ctrd::Image {
                name: "a".into(),
                labels: [("k".to_string(), "v".to_string())].into(),
                ..Default::default()
            },
            ctrd::Image {
                labels: [("l".to_string(), "w".to_string())].into(),
                ..Default::default()
            },
        );
        let mut twice = ctrd::GetImageResponse { image: Some(first) }.encode_to_vec();
        twice.extend(ctrd::GetImageResponse { image: Some(second) }.encode_to_vec());
        let merged = ctrd::GetImageResponse::decode(&twice[..]).unwrap();
        let decoded = EncodedImage::decode(&twice[..]).unwrap();
        assert_eq!(ctrd::Image::decode(&decoded.image[..]).unwrap(), merged.image.unwrap());
    }

    #[test]
    fn it_is_containerds_list_answer_on_the_wire() {
        let image = ctrd::Image {
            name: "a".into(),
            ..Default::default()
        };
        let answer = ctrd::ListImagesResponse {
            images: vec![image.clone(), image.clone()],
        };
        let mut encoded = EncodedImageList::default();
        encoded.push_encoded(&image.encode_to_vec());
        encoded.push_encoded(&image.encode_to_vec());
        assert_eq!(encoded.encode_to_vec(), answer.encode_to_vec());
        assert_eq!(EncodedImageList::decode(&answer.encode_to_vec()[..]).unwrap(), encoded);
    }

    #[test]
    fn it_is_the_seed_watch_answer_on_the_wire() {
        use seed::watch_event::Type;
        let (image, prev) = (seed_image("a"), seed_image("b"));
        let answer = seed::WatchResponse {
            events: vec![
                seed::WatchEvent {
                    r#type: Type::Modified as i32,
                    revision: 7,
                    image: Some(image.clone()),
                    prev_image: Some(prev.clone()),
                },
                seed::WatchEvent {
                    r#type: Type::Added as i32,
                    revision: 300,
                    image: Some(image.clone()),
                    prev_image: None,
                },
            ],
            revision: 301,
        };
        let mut encoded = EncodedWatchResponse {
            revision: 301,
            ..Default::default()
        };
        encoded.push_event(
            Type::Modified as i32,
            7,
            &image.encode_to_vec(),
            Some(&prev.encode_to_vec()),
        );
        encoded.push_event(Type::Added as i32, 300, &image.encode_to_vec(), None);
        assert_eq!(encoded.encode_to_vec(), answer.encode_to_vec());
        assert_eq!(encoded.encoded_len(), answer.encoded_len());
        assert_eq!(
            EncodedWatchResponse::decode(&answer.encode_to_vec()[..]).unwrap(),
            encoded
        );
        let notice = seed::WatchResponse {
            events: vec![],
            revision: 5,
        };
        let encoded = EncodedWatchResponse {
            revision: 5,
            ..Default::default()
        };
        assert_eq!(encoded.encode_to_vec(), notice.encode_to_vec());
    }

    #[test]
    fn a_raw_message_is_the_message_on_the_wire() {
        let envelope = crate::containerd::services::events::v1::Envelope {
            timestamp: Some(prost_types::Timestamp { seconds: 1, nanos: 2 }),
            namespace: "default".into(),
            topic: "/images/create".into(),
            event: Some(prost_types::Any {
                type_url: "containerd.services.images.v1.ImageCreate".into(),
                value: vec![10, 1, b'a'],
            }),
        };
        let bytes = envelope.encode_to_vec();
        let raw = RawMessage::decode(&bytes[..]).unwrap();
        assert_eq!(raw.bytes, bytes);
        assert_eq!(raw.encode_to_vec(), bytes);
        let fixed = [0x09, 1, 2, 3, 4, 5, 6, 7, 8, 0x15, 1, 2, 3, 4];
        assert_eq!(RawMessage::decode(&fixed[..]).unwrap().bytes, fixed);
        assert!(RawMessage::decode(&fixed[..12]).is_err());
    }
}
