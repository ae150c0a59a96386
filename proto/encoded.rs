//! [`EncodedImageList`]: a list answer whose images are already protobuf
//! bytes, so a server can send stored images without building a message
//! struct per image.
//!
//! On the wire it is exactly the seed API's `ListResponse` and containerd's
//! `ListImagesResponse`: field 1 is the repeated `Image`, field 2 the seed
//! API's page token (never set in containerd's answer, so never encoded).
//! The daemon's servers are generated with this type in place of those two
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
}

/// The field number of the images in both list answers.
pub const IMAGES_FIELD: u32 = 1;

impl EncodedImageList {
    /// Appends one image, given as its encoded `Image` message.
    pub fn push_encoded(&mut self, image: &[u8]) {
        encoding::encode_key(IMAGES_FIELD, WireType::LengthDelimited, &mut self.images);
        encoding::encode_varint(image.len() as u64, &mut self.images);
        self.images.extend_from_slice(image);
    }
}

impl prost::Message for EncodedImageList {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.images);
        if !self.next_page_token.is_empty() {
            encoding::string::encode(2, &self.next_page_token, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            IMAGES_FIELD => {
                let mut image = Vec::new();
                encoding::bytes::merge(wire_type, &mut image, buf, ctx)?;
                self.push_encoded(&image);
                Ok(())
            }
            2 => encoding::string::merge(wire_type, &mut self.next_page_token, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let token = if self.next_page_token.is_empty() {
            0
        } else {
            encoding::string::encoded_len(2, &self.next_page_token)
        };
        self.images.len() + token
    }

    fn clear(&mut self) {
        self.images.clear();
        self.next_page_token.clear();
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
        }
    }

    #[test]
    fn it_is_the_seed_list_answer_on_the_wire() {
        let answer = seed::ListResponse {
            images: vec![seed_image("a"), seed_image("b")],
            next_page_token: "tok".into(),
        };
        let mut encoded = EncodedImageList {
            next_page_token: "tok".into(),
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
}
