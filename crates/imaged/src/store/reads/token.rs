//! Page tokens: a position in a query's order, bound to the query by a
//! fingerprint and made tamper-evident by an HMAC-SHA256 tag under a secret
//! kept in the store (see `query` for what a position is).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use imaged_types::ValidationError;
use prost::Message;
use sha2::Sha256;

use super::query::{Position, Query};

/// The body of a page token, before its tag.
#[derive(Clone, PartialEq, prost::Message)]
struct TokenBody {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(bytes = "vec", tag = "2")]
    fingerprint: Vec<u8>,
    #[prost(sint64, repeated, tag = "3")]
    numbers: Vec<i64>,
    #[prost(string, tag = "4")]
    name: String,
}

const TOKEN_VERSION: u32 = 1;
const TAG_BYTES: usize = 16;

/// Makes and checks page tokens with the store's secret.
pub struct Tokens {
    key: [u8; 32],
}

impl Tokens {
    /// Tokens under `key`.
    pub fn new(key: [u8; 32]) -> Tokens {
        Tokens { key }
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(body);
        let mut tag = [0; TAG_BYTES];
        tag.copy_from_slice(&mac.finalize().into_bytes()[..TAG_BYTES]);
        tag
    }

    /// The token that resumes `query` after `position`.
    pub fn encode(&self, query: &Query, position: &Position) -> String {
        self.encode_for(&query.fingerprint, position)
    }

    /// The token that resumes the query with `fingerprint` after `position`.
    pub fn encode_for(&self, fingerprint: &[u8; 16], position: &Position) -> String {
        let mut bytes = TokenBody {
            version: TOKEN_VERSION,
            fingerprint: fingerprint.to_vec(),
            numbers: position.numbers.clone(),
            name: position.name.clone(),
        }
        .encode_to_vec();
        let tag = self.tag(&bytes);
        bytes.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The position a token of `query` resumes after.
    pub fn decode(&self, query: &Query, token: &str) -> Result<Position, ValidationError> {
        self.decode_for(&query.fingerprint, query.order.numeric_terms(), token)
    }

    /// The position a token of the query with `fingerprint`, whose order
    /// has `numbers` numeric terms, resumes after.
    pub fn decode_for(&self, fingerprint: &[u8; 16], numbers: usize, token: &str) -> Result<Position, ValidationError> {
        let refuse = |reason: &str| ValidationError::new("page_token", token, reason);
        let altered = || refuse("is not a page token of this server, or was altered");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| altered())?;
        let split = bytes.len().checked_sub(TAG_BYTES).ok_or_else(altered)?;
        let (body, tag) = bytes.split_at(split);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(body);
        mac.verify_truncated_left(tag).map_err(|_| altered())?;
        let body = TokenBody::decode(body).map_err(|_| altered())?;
        if body.version != TOKEN_VERSION {
            return Err(refuse("comes from another version of imaged; start the listing again"));
        }
        if body.fingerprint != fingerprint || body.numbers.len() != numbers {
            return Err(refuse(
                "was issued for another query; the namespace, filters and order_by must stay the same across pages",
            ));
        }
        Ok(Position {
            numbers: body.numbers,
            name: body.name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imaged_types::NamespaceName;

    #[test]
    fn tokens_are_bound_to_their_query_and_tamper_evident() {
        let tokens = Tokens::new([7; 32]);
        let ns = NamespaceName::default_namespace();
        let query = Query::new(ns.clone(), &["labels.a".into()], "created_at desc").unwrap();
        let position = Position {
            numbers: vec![42],
            name: "x".into(),
        };
        let token = tokens.encode(&query, &position);
        assert_eq!(tokens.decode(&query, &token).unwrap(), position);

        let other_filter = Query::new(ns.clone(), &["labels.b".into()], "created_at desc").unwrap();
        let other_order = Query::new(ns, &["labels.a".into()], "created_at").unwrap();
        let other_ns = Query::new(
            NamespaceName::parse("n", "k8s.io").unwrap(),
            &["labels.a".into()],
            "created_at desc",
        )
        .unwrap();
        for other in [other_filter, other_order, other_ns] {
            assert!(
                tokens
                    .decode(&other, &token)
                    .unwrap_err()
                    .reason
                    .contains("another query")
            );
        }
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[3] ^= 1;
        let tampered = URL_SAFE_NO_PAD.encode(bytes);
        assert!(tokens.decode(&query, &tampered).unwrap_err().reason.contains("altered"));
        assert!(tokens.decode(&query, "garbage!").is_err());
        assert!(tokens.decode(&query, "").is_err());
        assert!(
            Tokens::new([8; 32]).decode(&query, &token).is_err(),
            "another store's token"
        );
    }
}
