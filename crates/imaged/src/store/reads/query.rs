//! Listing: a query (namespace, filters, order), the plan that answers it
//! from a key range or an index, keyset pages, and page tokens.
//!
//! # Plans
//! A query with one filter (no OR) is answered from an index or key range
//! when one of its selectors allows:
//! - `name==X`: one point read;
//! - `target.digest==D`: the digest index, which lists the names pointing at
//!   `D` in name order;
//! - `name~=^literal…`: the key range of names starting with the literal;
//! - `repository==R`: the names of repository `R`, which are `R` itself and
//!   the key ranges of `R:…` and `R@…`.
//!
//! Otherwise the namespace is walked in the requested order: the `images`
//! tree itself for name order, or the index of the first order key
//! (`created_at`, `updated_at`, `target.size`). Every candidate still passes
//! the whole filter, so a plan only narrows where to look.
//!
//! # Pages and tokens
//! A page is the first `limit` matches after a position in the order. A
//! position is the last item's value for every order term, ending with its
//! name, which is unique; a page resumes by seeking to it, so the cost of a
//! page does not depend on how far into the list it is, and a deleted last
//! item does not matter. A token carries the position, a fingerprint of the
//! query (namespace, filters, order), and an HMAC-SHA256 tag under a secret
//! kept in the store, so an altered or foreign token is refused.
//!
//! For orders on name and created_at, which never change for an image, a
//! walk sees every image that exists for its whole duration exactly once and
//! in order, whatever else changes between pages. An image whose updated_at or
//! target.size changes during a walk ordered by that key moves in the order;
//! it may then be seen at both places or at neither. Either way, an image is
//! only ever shown where the record shown belongs: an index entry whose
//! record changed since is passed over.

use std::cmp::Ordering;
use std::ops::Bound;

use imaged_types::{Image, NamespaceName, ValidationError};
use sha2::{Digest as _, Sha256};

pub use super::order::{Order, OrderKey, Position};
use crate::error::Error;
use crate::filter::{Field, Filter, Op, Subject};
use crate::store::engine::{Backend, Bytes, KeyValue};
use crate::store::layout::{
    TreeId, digest_index_prefix, image_key, index_prefix, namespace_prefix, number_index_seek, prefix_end,
    split_image_key, split_number_index_key,
};
use crate::store::record::decode_image;

/// The largest page.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Where a query's candidates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// One name.
    Point(String),
    /// The names pointing at a digest.
    Digest(String),
    /// The names starting with a literal.
    Prefix(String),
    /// The names of a repository.
    Repository(String),
    /// The whole namespace, in the order's first key.
    Walk,
}

/// A list query: namespace, filters and order, with its plan and fingerprint.
#[derive(Debug, Clone)]
pub struct Query {
    ns: NamespaceName,
    filter: Filter,
    pub(super) order: Order,
    plan: Plan,
    pub(super) fingerprint: [u8; 16],
}

impl Query {
    /// Parses the filters and the order of a query on namespace `ns`.
    pub fn new(ns: NamespaceName, filters: &[String], order_by: &str) -> Result<Query, ValidationError> {
        let filter = Filter::parse(Subject::Image, "filters", filters)?;
        let order = Order::parse(order_by)?;
        let fingerprint = fingerprint(b"imaged-list-query-v1\0", &ns, filters, &order);
        let plan = plan(&filter);
        Ok(Query {
            ns,
            filter,
            order,
            plan,
            fingerprint,
        })
    }

    /// Every image of `ns`, by name.
    pub fn all(ns: NamespaceName) -> Query {
        Query::new(ns, &[], "").expect("the empty query is valid")
    }

    /// The query's order.
    pub fn order(&self) -> &Order {
        &self.order
    }
}

/// What binds a page token to its query: a hash of what the query is
/// (`domain` says of what), its namespace, filters and order.
pub(super) fn fingerprint(domain: &[u8], ns: &NamespaceName, filters: &[String], order: &Order) -> [u8; 16] {
    let mut hash = Sha256::new();
    hash.update(domain);
    hash.update(ns.as_str().as_bytes());
    for f in filters {
        hash.update([0]);
        hash.update(f.as_bytes());
    }
    hash.update([0xff]);
    hash.update(order.canonical().as_bytes());
    let mut fingerprint = [0; 16];
    fingerprint.copy_from_slice(&hash.finalize()[..16]);
    fingerprint
}

/// Chooses the plan: an index or key range when the one filter allows.
fn plan(filter: &Filter) -> Plan {
    let [selectors] = filter.alternatives() else {
        return Plan::Walk;
    };
    let equal = |field: &Field| {
        selectors.iter().find_map(|s| match (&s.field, &s.op) {
            (f, Op::Equal(v)) if f == field => Some(v.clone()),
            _ => None,
        })
    };
    if let Some(name) = equal(&Field::Name) {
        return Plan::Point(name);
    }
    if let Some(digest) = equal(&Field::TargetDigest) {
        return Plan::Digest(digest);
    }
    if let Some(repository) = equal(&Field::Repository) {
        return Plan::Repository(repository);
    }
    selectors
        .iter()
        .find_map(|s| match (&s.field, &s.op) {
            (Field::Name, Op::Matches(re)) => literal_prefix(re.as_str()).map(Plan::Prefix),
            _ => None,
        })
        .unwrap_or(Plan::Walk)
}

/// The literal every match of an anchored pattern starts with, if there is
/// one that can be known safely: `^docker\.io/library/` gives
/// `docker.io/library/`. Anything unusual (alternation, flags, classes) gives
/// no prefix, which only costs a wider scan.
pub fn literal_prefix(pattern: &str) -> Option<String> {
    let rest = pattern.strip_prefix('^')?;
    if rest.contains('|') {
        return None;
    }
    let mut prefix = String::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        let literal = match c {
            '\\' => match chars.next() {
                Some(e) if e.is_ascii_punctuation() => e,
                _ => break,
            },
            '.' | '+' | '*' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '^' | '$' => break,
            c => c,
        };
        // A quantifier after a literal makes it optional or repeatable.
        if matches!(chars.peek(), Some('?' | '*' | '{')) {
            break;
        }
        prefix.push(literal);
    }
    (!prefix.is_empty()).then_some(prefix)
}

/// A key range of a tree in a direction.
fn range(
    backend: &Backend,
    tree: TreeId,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    desc: bool,
) -> Box<dyn Iterator<Item = KeyValue>> {
    backend.scan(tree, start, end, desc)
}

/// The end of the range of keys starting with `prefix`.
pub(super) fn upper(prefix: &[u8]) -> Bound<Vec<u8>> {
    prefix_end(prefix).map_or(Bound::Unbounded, Bound::Excluded)
}

/// An image a scan found, not yet decoded: its key in the images tree and
/// its stored record. Pages are read as these, so an answer can be encoded
/// straight from the stored bytes (see `encode`).
#[derive(Debug, Clone)]
pub struct Found {
    key: Bytes,
    name_at: usize,
    record: Bytes,
}

impl Found {
    /// An image's entry, if `key` is a well-formed image key.
    pub(crate) fn new(key: Bytes, record: Bytes) -> Result<Found, Error> {
        let (_, name) = split_image_key(&key).ok_or_else(|| bad_key(&key))?;
        let name_at = key.len() - name.len();
        Ok(Found { key, name_at, record })
    }

    /// The image's name.
    pub fn name(&self) -> &str {
        // Checked to be UTF-8 from `name_at` on in `Found::new`.
        std::str::from_utf8(&self.key[self.name_at..]).unwrap_or_default()
    }

    /// The stored record (an `ImageRecord`).
    pub fn record(&self) -> &[u8] {
        &self.record
    }

    /// The image, decoded.
    pub fn image(&self) -> Result<Image, Error> {
        decode_image(self.name(), &self.record).map_err(Error::Storage)
    }
}

/// Reads the matches of `query` after `after`, in order, until `want` are
/// found or the candidates run out. Blocking: runs on the blocking pool.
///
/// Records are decoded only where the filter or the order needs them: a scan
/// by name with no filter (the commonest list) decodes nothing.
pub fn collect(trees: &Backend, query: &Query, after: Option<&Position>, want: usize) -> Result<Vec<Found>, Error> {
    let ns = query.ns.as_str();
    let order = &query.order;
    let first = order.terms[0];
    let mut out = Vec::new();
    let is_after = |image: &Image| after.is_none_or(|a| order.compare_image(image, a) == Ordering::Greater);
    // In scans by name, the range already starts after `after` (names are
    // unique, so nothing after the name term can decide), and only the
    // filter is left to test.
    let filtered = |found: &Found| -> Result<bool, Error> {
        Ok(query.filter.matches_everything() || query.filter.matches(&found.image()?))
    };
    match (&query.plan, first.key) {
        (Plan::Point(name), _) => {
            let key = image_key(ns, name);
            if let Some(bytes) = trees.get(TreeId::Images, &key)? {
                let found = Found::new(key.into(), bytes)?;
                let image = found.image()?;
                if query.filter.matches(&image) && is_after(&image) {
                    out.push(found);
                }
            }
        }
        (Plan::Digest(digest), OrderKey::Name) => {
            let prefix = digest_index_prefix(ns, digest);
            let (start, end) = name_bounds(&prefix, after.map(|a| a.name.as_str()), first.desc);
            for entry in range(trees, TreeId::Index, start, end, first.desc) {
                let (key, _) = entry?;
                let name = std::str::from_utf8(&key[prefix.len()..]).map_err(|_| bad_key(&key))?;
                if let Some(found) = load(trees, ns, name)?
                    && filtered(&found)?
                {
                    out.push(found);
                    if out.len() >= want {
                        break;
                    }
                }
            }
        }
        (Plan::Digest(digest), _) => digest_sorted(trees, query, digest, after, want, &mut out)?,
        (plan, OrderKey::Name) => {
            let after = after.map(|a| image_key(ns, &a.name));
            let mut ranges = name_ranges(ns, plan);
            if first.desc {
                ranges.reverse();
            }
            'ranges: for (start, end) in ranges {
                let Some((start, end)) = clip(start, end, after.as_deref(), first.desc) else {
                    continue;
                };
                for entry in range(trees, TreeId::Images, start, end, first.desc) {
                    let (key, value) = entry?;
                    let found = Found::new(key, value)?;
                    if filtered(&found)? {
                        out.push(found);
                        if out.len() >= want {
                            break 'ranges;
                        }
                    }
                }
            }
        }
        (_, key) => walk_index(trees, query, key, first.desc, after, want, &mut out)?,
    }
    Ok(out)
}

/// A range of keys: its start and its end.
type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The key ranges of the images tree that a walk by name under `plan`
/// reads, in name order.
fn name_ranges(ns: &str, plan: &Plan) -> Vec<KeyRange> {
    let prefixed = |literal: &str| {
        let mut prefix = namespace_prefix(ns);
        prefix.extend_from_slice(literal.as_bytes());
        let end = upper(&prefix);
        (Bound::Included(prefix), end)
    };
    match plan {
        // A repository's names are itself, then `R:…`, then `R@…` (`:`
        // sorts before `@`); a name in those ranges of another repository
        // (`R:5000/x`) is left to the filter.
        Plan::Repository(repository) => {
            let exact = image_key(ns, repository);
            vec![
                (Bound::Included(exact.clone()), Bound::Included(exact)),
                prefixed(&format!("{repository}:")),
                prefixed(&format!("{repository}@")),
            ]
        }
        Plan::Prefix(literal) => vec![prefixed(literal)],
        _ => vec![prefixed("")],
    }
}

/// The part of the range `start..end` after the key `after` in the
/// direction (before it when `desc`), or `None` when nothing is left.
pub(super) fn clip(start: Bound<Vec<u8>>, end: Bound<Vec<u8>>, after: Option<&[u8]>, desc: bool) -> Option<KeyRange> {
    let (start, end) = match after {
        None => (start, end),
        // Keep the tighter of the two lower bounds.
        Some(at) if !desc => match &start {
            Bound::Included(s) if s.as_slice() > at => (start, end),
            Bound::Excluded(s) if s.as_slice() >= at => (start, end),
            _ => (Bound::Excluded(at.to_vec()), end),
        },
        Some(at) => match &end {
            Bound::Included(e) if e.as_slice() < at => (start, end),
            Bound::Excluded(e) if e.as_slice() <= at => (start, end),
            _ => (start, Bound::Excluded(at.to_vec())),
        },
    };
    let empty = match (&start, &end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e)) | (Bound::Excluded(s), Bound::Included(e)) => {
            s >= e
        }
        _ => false,
    };
    (!empty).then_some((start, end))
}

/// The matches among the names pointing at `digest`, for an order by
/// another key than the name: the (usually few) names are loaded and sorted.
fn digest_sorted(
    trees: &Backend,
    query: &Query,
    digest: &str,
    after: Option<&Position>,
    want: usize,
    out: &mut Vec<Found>,
) -> Result<(), Error> {
    let ns = query.ns.as_str();
    let order = &query.order;
    let prefix = digest_index_prefix(ns, digest);
    let mut matches = Vec::new();
    for entry in trees.scan_prefix(TreeId::Index, &prefix) {
        let (key, _) = entry?;
        let name = std::str::from_utf8(&key[prefix.len()..]).map_err(|_| bad_key(&key))?;
        if let Some(found) = load(trees, ns, name)? {
            let image = found.image()?;
            let is_after = after.is_none_or(|a| order.compare_image(&image, a) == Ordering::Greater);
            if query.filter.matches(&image) && is_after {
                matches.push((image, found));
            }
        }
    }
    matches.sort_by(|a, b| order.compare_images(&a.0, &b.0));
    out.extend(matches.into_iter().take(want).map(|(_, found)| found));
    Ok(())
}

/// Bounds of the keys starting with `prefix` (followed by a name), after the
/// name `after` in the direction.
fn name_bounds(prefix: &[u8], after: Option<&str>, desc: bool) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let cursor = after.map(|name| {
        let mut key = prefix.to_vec();
        key.extend_from_slice(name.as_bytes());
        Bound::Excluded(key)
    });
    match (desc, cursor) {
        (false, Some(c)) => (c, upper(prefix)),
        (true, Some(c)) => (Bound::Included(prefix.to_vec()), c),
        (_, None) => (Bound::Included(prefix.to_vec()), upper(prefix)),
    }
}

/// Walks the numeric index of `key` in groups of equal values, each group
/// sorted by the remaining terms.
fn walk_index(
    trees: &Backend,
    query: &Query,
    key: OrderKey,
    desc: bool,
    after: Option<&Position>,
    want: usize,
    out: &mut Vec<Found>,
) -> Result<(), Error> {
    let ns = query.ns.as_str();
    let order = &query.order;
    // The revision the page begins at: an image made after it is left to
    // the next page (see below).
    let begun = crate::store::recovery::revision_of(trees).map_err(Error::Storage)?;
    let kind = key.index_kind().expect("numeric order key");
    let prefix = index_prefix(kind, ns);
    let start_value = after.map(|a| a.numbers[0]);
    let (start, end) = match (desc, start_value) {
        (false, Some(v)) => (Bound::Included(number_index_seek(kind, ns, v)), upper(&prefix)),
        (true, Some(v)) => (
            Bound::Included(prefix.clone()),
            v.checked_add(1).map_or(upper(&prefix), |next| {
                Bound::Excluded(number_index_seek(kind, ns, next))
            }),
        ),
        (_, None) => (Bound::Included(prefix.clone()), upper(&prefix)),
    };
    // Within a group the index yields names ascending (descending when walked
    // backwards); when that is the order's tie-break, no group is buffered.
    let streams = order.terms.len() == 2 && order.terms[1].desc == desc;
    let mut group: Vec<(Image, Found)> = Vec::new();
    let mut group_value = None;
    let flush = |group: &mut Vec<(Image, Found)>, out: &mut Vec<Found>| {
        group.sort_by(|a, b| order.compare_images(&a.0, &b.0));
        out.extend(
            group
                .drain(..)
                .filter(|(image, _)| after.is_none_or(|a| order.compare_image(image, a) == Ordering::Greater))
                .map(|(_, found)| found),
        );
    };
    for entry in range(trees, TreeId::Index, start, end, desc) {
        let (k, _) = entry?;
        let (value, name) = split_number_index_key(&k[prefix.len()..]).ok_or_else(|| bad_key(&k))?;
        if group_value != Some(value) {
            flush(&mut group, out);
            if out.len() >= want {
                break;
            }
            group_value = Some(value);
        }
        // The record is read after its index entry, and a writer may have
        // come between: an image deleted and made again, or updated, has a
        // new entry elsewhere in the index. Shown here, it would be out of
        // its order (and met again at its new place), so an entry whose
        // record no longer says the same is passed over. And an image made
        // since the page began is not shown in it: the page may have shown
        // the image of that name it replaced.
        if let Some(found) = load(trees, ns, name)?
            && let image = found.image()?
            && key.number(&image) == value
            && image.create_revision <= begun
            && query.filter.matches(&image)
        {
            group.push((image, found));
            if streams {
                flush(&mut group, out);
                if out.len() >= want {
                    break;
                }
            }
        }
    }
    flush(&mut group, out);
    out.truncate(want);
    Ok(())
}

fn load(trees: &Backend, ns: &str, name: &str) -> Result<Option<Found>, Error> {
    let key = image_key(ns, name);
    match trees.get(TreeId::Images, &key)? {
        Some(bytes) => Found::new(key.into(), bytes).map(Some),
        None => {
            // The record was deleted after its index entry was read (or the
            // writer is between the two in a batch): it is gone, skip it.
            // Lasting damage is what `imaged check` reports.
            tracing::trace!(namespace = ns, name, "index entry without a record");
            Ok(None)
        }
    }
}

fn bad_key(key: &[u8]) -> Error {
    Error::Storage(format!("malformed key {key:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A walk by creation time over a store caught between two batches'
    /// effects (a batch's records and index entries are applied before its
    /// revision): an image made after the revision read at the page's
    /// start is not shown, and an index entry its record no longer matches
    /// is passed over.
    #[test]
    fn a_walk_shows_only_images_made_by_its_revision_where_their_records_belong() {
        use std::time::{Duration, UNIX_EPOCH};

        use crate::store::layout::{Effect, index_keys, meta};
        use crate::store::record::ImageRecord;
        use prost::Message;

        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::open(dir.path(), 1 << 20).unwrap();
        let put = |name: &str, second: u64, create_revision: u64| {
            let mut image = crate::store::tests::image(name, second, &[]);
            image.created_at = UNIX_EPOCH + Duration::from_secs(second);
            let record = ImageRecord::from_image(&image, create_revision, create_revision).encode_to_vec();
            let mut effects = vec![Effect {
                tree: TreeId::Images,
                key: image_key("default", name),
                value: Some(record),
            }];
            for key in index_keys("default", &image) {
                effects.push(Effect {
                    tree: TreeId::Index,
                    key,
                    value: Some(Vec::new()),
                });
            }
            backend.apply(&effects, |_| {}).unwrap();
        };
        put("a", 1, 1);
        put("old", 2, 2);
        put("b", 3, 3);
        // The store is at revision 3; a batch at 4 has made "new" and is
        // not yet done (its revision not yet written).
        let revision = |r: u64| Effect {
            tree: TreeId::Meta,
            key: meta::REVISION.to_vec(),
            value: Some(r.to_be_bytes().to_vec()),
        };
        backend.apply(&[revision(3)], |_| {}).unwrap();
        put("new", 4, 4);
        // "old" made again by the same batch, at a later time: its record
        // now says second 5, while its entry at second 2 is not yet gone.
        put("old", 5, 4);
        let names = |backend: &Backend| -> Vec<String> {
            let query = Query::new(NamespaceName::default_namespace(), &[], "created_at").unwrap();
            collect(backend, &query, None, 100)
                .unwrap()
                .iter()
                .map(|f| f.name().to_owned())
                .collect()
        };
        assert_eq!(names(&backend), ["a", "b"]);
        // The batch done: both in their places.
        backend.apply(&[revision(4)], |_| {}).unwrap();
        assert_eq!(names(&backend), ["a", "b", "new", "old"]);
    }

    #[test]
    fn clipping_a_range_keeps_what_lies_beyond_the_position() {
        use Bound::{Excluded, Included, Unbounded};
        let k = |s: &str| s.as_bytes().to_vec();
        let whole = || (Included(k("b")), Excluded(k("d")));
        assert_eq!(clip(whole().0, whole().1, None, false), Some(whole()));
        assert_eq!(clip(whole().0, whole().1, Some(b"a"), false), Some(whole()));
        assert_eq!(
            clip(whole().0, whole().1, Some(b"c"), false),
            Some((Excluded(k("c")), Excluded(k("d"))))
        );
        assert_eq!(clip(whole().0, whole().1, Some(b"d"), false), None);
        assert_eq!(clip(whole().0, whole().1, Some(b"b"), true), None);
        assert_eq!(
            clip(whole().0, whole().1, Some(b"c"), true),
            Some((Included(k("b")), Excluded(k("c"))))
        );
        assert_eq!(clip(Included(k("x")), Included(k("x")), Some(b"x"), false), None);
        assert_eq!(
            clip(Included(k("x")), Unbounded, Some(b"y"), false),
            Some((Excluded(k("y")), Unbounded))
        );
    }

    #[test]
    fn literal_prefixes() {
        assert_eq!(
            literal_prefix("^docker\\.io/library/").as_deref(),
            Some("docker.io/library/")
        );
        assert_eq!(literal_prefix("^docker.io").as_deref(), Some("docker"));
        assert_eq!(literal_prefix("^redis:7?").as_deref(), Some("redis:"));
        assert_eq!(literal_prefix("^ab*").as_deref(), Some("a"));
        assert_eq!(literal_prefix("^a|^b"), None);
        assert_eq!(literal_prefix("docker"), None);
        assert_eq!(literal_prefix("^(?i)docker"), None);
        assert_eq!(literal_prefix("^\\d"), None);
    }

    #[test]
    fn plans() {
        let q = |filters: &[&str]| {
            let filters: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
            Query::new(NamespaceName::default_namespace(), &filters, "")
                .unwrap()
                .plan
        };
        assert_eq!(q(&["name==a,labels.x"]), Plan::Point("a".into()));
        assert_eq!(
            q(&["labels.x,target.digest==sha256:x"]),
            Plan::Digest("sha256:x".into())
        );
        assert_eq!(q(&["name~=^docker\\.io/"]), Plan::Prefix("docker.io/".into()));
        assert_eq!(
            q(&["repository==docker.io/x,labels.a"]),
            Plan::Repository("docker.io/x".into())
        );
        assert_eq!(q(&["name==a", "name==b"]), Plan::Walk);
        assert_eq!(q(&["labels.x==y"]), Plan::Walk);
        assert_eq!(q(&[]), Plan::Walk);
    }
}
