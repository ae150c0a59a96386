//! Orders: the keys a list can be sorted by, how an order compares images
//! and positions, and what a position (the last image of a page) holds.

use std::cmp::Ordering;

use imaged_types::time::unix_nanos;
use imaged_types::{Image, ValidationError};

use crate::store::layout::index;

/// A key images can be ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderKey {
    /// The name, bytewise.
    Name,
    /// Creation time.
    CreatedAt,
    /// Last change time.
    UpdatedAt,
    /// Target size.
    Size,
}

impl OrderKey {
    fn parse(text: &str) -> Option<OrderKey> {
        Some(match text {
            "name" => OrderKey::Name,
            "created_at" => OrderKey::CreatedAt,
            "updated_at" => OrderKey::UpdatedAt,
            "target.size" => OrderKey::Size,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            OrderKey::Name => "name",
            OrderKey::CreatedAt => "created_at",
            OrderKey::UpdatedAt => "updated_at",
            OrderKey::Size => "target.size",
        }
    }

    /// The kind of the numeric index that orders by this key.
    pub(super) fn index_kind(self) -> Option<u8> {
        match self {
            OrderKey::Name => None,
            OrderKey::CreatedAt => Some(index::CREATED),
            OrderKey::UpdatedAt => Some(index::UPDATED),
            OrderKey::Size => Some(index::SIZE),
        }
    }

    /// The image's value of this key, as its index holds it.
    pub(super) fn number(self, image: &Image) -> i64 {
        match self {
            OrderKey::Name => 0,
            OrderKey::CreatedAt => unix_nanos(image.created_at),
            OrderKey::UpdatedAt => unix_nanos(image.updated_at),
            OrderKey::Size => image.target.size,
        }
    }
}

/// One term of an order: a key and its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderTerm {
    /// The key.
    pub key: OrderKey,
    /// Descending when true.
    pub desc: bool,
}

/// An order: terms compared in turn, always ending with the name (ascending
/// unless given), which is unique and so breaks every tie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub(super) terms: Vec<OrderTerm>,
}

/// Where an image stands in an order: its value for each numeric term, and
/// its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub(super) numbers: Vec<i64>,
    pub(super) name: String,
}

impl Order {
    /// Parses `order_by`: comma-separated keys (`name`, `created_at`,
    /// `updated_at`, `target.size`), each optionally followed by `asc` or
    /// `desc`. Empty means by name.
    pub fn parse(text: &str) -> Result<Order, ValidationError> {
        let fail = |reason: String| ValidationError::new("order_by", text, reason);
        let mut terms: Vec<OrderTerm> = Vec::new();
        for part in text.split(',') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let (key, desc) = match words.as_slice() {
                [] if text.trim().is_empty() => break,
                [] => return Err(fail("has an empty key".into())),
                [key] => (*key, false),
                [key, "asc"] => (*key, false),
                [key, "desc"] => (*key, true),
                [_, dir] => return Err(fail(format!("direction {dir:?} is not asc or desc"))),
                _ => return Err(fail(format!("{:?} is not `key [asc|desc]`", part.trim()))),
            };
            let key = OrderKey::parse(key).ok_or_else(|| {
                fail(format!(
                    "unknown key {key:?}; keys are name, created_at, updated_at, target.size"
                ))
            })?;
            if terms.iter().any(|t| t.key == key) {
                return Err(fail(format!("key {:?} is given twice", key.as_str())));
            }
            terms.push(OrderTerm { key, desc });
        }
        // Names are unique: nothing after the name can matter.
        if let Some(at) = terms.iter().position(|t| t.key == OrderKey::Name) {
            terms.truncate(at + 1);
        }
        if terms.last().is_none_or(|t| t.key != OrderKey::Name) {
            terms.push(OrderTerm {
                key: OrderKey::Name,
                desc: false,
            });
        }
        Ok(Order { terms })
    }

    /// By name, ascending.
    pub fn by_name() -> Order {
        Order {
            terms: vec![OrderTerm {
                key: OrderKey::Name,
                desc: false,
            }],
        }
    }

    /// The terms, ending with the name.
    pub fn terms(&self) -> &[OrderTerm] {
        &self.terms
    }

    pub(super) fn canonical(&self) -> String {
        let terms: Vec<String> = self
            .terms
            .iter()
            .map(|t| format!("{} {}", t.key.as_str(), if t.desc { "desc" } else { "asc" }))
            .collect();
        terms.join(",")
    }

    /// Where `image` stands in this order.
    pub fn position(&self, image: &Image) -> Position {
        Position {
            numbers: self
                .terms
                .iter()
                .filter(|t| t.key != OrderKey::Name)
                .map(|t| t.key.number(image))
                .collect(),
            name: image.name.clone(),
        }
    }

    /// Compares `image` with a position, as the image's own position would
    /// compare, without building it (a scan compares every candidate with
    /// its cursor).
    pub fn compare_image(&self, image: &Image, position: &Position) -> Ordering {
        self.compare_by(
            (|_, key: OrderKey| key.number(image), &image.name),
            (|n, _| position.numbers[n], &position.name),
        )
    }

    /// Compares two images in this order (for sorts).
    pub fn compare_images(&self, a: &Image, b: &Image) -> Ordering {
        self.compare_by(
            (|_, key: OrderKey| key.number(a), &a.name),
            (|_, key: OrderKey| key.number(b), &b.name),
        )
    }

    /// Compares two sides, each given as its name and its `n`th numeric
    /// term's value for a key.
    fn compare_by(
        &self,
        (a_number, a_name): (impl Fn(usize, OrderKey) -> i64, &str),
        (b_number, b_name): (impl Fn(usize, OrderKey) -> i64, &str),
    ) -> Ordering {
        let mut n = 0;
        for term in &self.terms {
            let ord = if term.key == OrderKey::Name {
                a_name.as_bytes().cmp(b_name.as_bytes())
            } else {
                n += 1;
                a_number(n - 1, term.key).cmp(&b_number(n - 1, term.key))
            };
            let ord = if term.desc { ord.reverse() } else { ord };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        Ordering::Equal
    }

    pub(super) fn numeric_terms(&self) -> usize {
        self.terms.iter().filter(|t| t.key != OrderKey::Name).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_parsing() {
        let terms = |s: &str| -> Vec<(OrderKey, bool)> {
            Order::parse(s)
                .unwrap()
                .terms()
                .iter()
                .map(|t| (t.key, t.desc))
                .collect()
        };
        assert_eq!(terms(""), [(OrderKey::Name, false)]);
        assert_eq!(terms("name desc"), [(OrderKey::Name, true)]);
        assert_eq!(
            terms("created_at desc, name"),
            [(OrderKey::CreatedAt, true), (OrderKey::Name, false)]
        );
        assert_eq!(
            terms(" target.size ,updated_at desc"),
            [
                (OrderKey::Size, false),
                (OrderKey::UpdatedAt, true),
                (OrderKey::Name, false)
            ]
        );
        assert_eq!(terms("name, created_at"), [(OrderKey::Name, false)]);
        for bad in ["size", "name up", "name,name", "created_at,", "a b c"] {
            let err = Order::parse(bad).unwrap_err();
            assert_eq!(err.field, "order_by", "{bad}");
        }
        assert!(
            Order::parse("nmae")
                .unwrap_err()
                .reason
                .contains("unknown key \"nmae\"")
        );
    }

    #[test]
    fn comparing_images_and_cursors_follows_the_order_term_by_term() {
        use imaged_types::{Descriptor, Digest};
        use std::time::{Duration, UNIX_EPOCH};
        // Names, times and sizes that tie and differ in every combination.
        let images: Vec<Image> = (0..27u64)
            .map(|n| Image {
                name: format!("r/{}", n % 3),
                labels: Default::default(),
                target: Descriptor {
                    media_type: "m".into(),
                    digest: Digest::parse(&format!("sha256:{n:064x}")).unwrap(),
                    size: (n / 3 % 3) as i64,
                    annotations: Default::default(),
                },
                created_at: UNIX_EPOCH + Duration::from_secs(n / 9),
                updated_at: UNIX_EPOCH + Duration::from_secs(n % 2),
                create_revision: 0,
                mod_revision: 0,
            })
            .collect();
        for text in [
            "",
            "name desc",
            "created_at desc",
            "target.size, updated_at desc",
            "updated_at, created_at desc",
        ] {
            let order = Order::parse(text).unwrap();
            for a in &images {
                for b in &images {
                    // Term by term, straight from the images: the first
                    // term that differs decides.
                    let expected = order
                        .terms()
                        .iter()
                        .map(|t| {
                            let ord = match t.key {
                                OrderKey::Name => a.name.cmp(&b.name),
                                key => key.number(a).cmp(&key.number(b)),
                            };
                            if t.desc { ord.reverse() } else { ord }
                        })
                        .find(|ord| ord.is_ne())
                        .unwrap_or(Ordering::Equal);
                    assert_eq!(order.compare_images(a, b), expected, "{text}");
                    assert_eq!(order.compare_image(a, &order.position(b)), expected, "{text}");
                }
            }
        }
    }
}
