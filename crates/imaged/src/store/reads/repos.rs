//! Lists of repositories: a query (namespace, filters, order by name), the
//! plan that answers it from the repository records, and keyset pages.
//!
//! Repositories are read from their records (`index::REPOSITORY`), which
//! every image write keeps in its batch: a page is one range read of at
//! most a page of records, whatever the number of images. `name==R` is one
//! point read and `name~=^literal…` the range of names starting with the
//! literal; anything else walks the namespace's records in name order, each
//! passing the whole filter.
//!
//! A page resumes after the last repository's name, so a walk sees every
//! repository that exists for its whole duration exactly once, in order,
//! with the figures its record held when its page was read.

use std::ops::Bound;
use std::sync::Arc;

use imaged_types::time::from_unix_nanos;
use imaged_types::{NamespaceName, Repository, ValidationError};

use super::order::{Order, OrderKey};
use super::query::{Position, clip, fingerprint, literal_prefix, upper};
use super::token::Tokens;
use super::{Page, Reads};
use crate::error::Error;
use crate::filter::{Field, Filter, Op, Subject};
use crate::store::engine::Backend;
use crate::store::layout::{TreeId, decode_repository, index, index_prefix, repository_key};

/// A query of a namespace's repositories.
#[derive(Debug, Clone)]
pub struct RepositoryQuery {
    ns: NamespaceName,
    filter: Filter,
    desc: bool,
    /// `name==` (exact) or the literal a `name~=^` starts with.
    plan: Option<(bool, String)>,
    fingerprint: [u8; 16],
}

impl RepositoryQuery {
    /// Parses the filters (on `name`, `tags`, `updated_at`) and the order
    /// (`name`, ascending or descending) of a query on namespace `ns`.
    pub fn new(ns: NamespaceName, filters: &[String], order_by: &str) -> Result<RepositoryQuery, ValidationError> {
        let filter = Filter::parse(Subject::Repository, "filters", filters)?;
        let refused = || {
            ValidationError::new(
                "order_by",
                order_by,
                "repositories are ordered by name only: name, name asc or name desc",
            )
        };
        let order = Order::parse(order_by).map_err(|_| refused())?;
        let [term] = order.terms.as_slice() else {
            return Err(refused());
        };
        debug_assert_eq!(term.key, OrderKey::Name);
        let fingerprint = fingerprint(b"imaged-repository-query-v1\0", &ns, filters, &order);
        let plan = match filter.alternatives() {
            [selectors] => selectors.iter().find_map(|s| match (&s.field, &s.op) {
                (Field::Name, Op::Equal(name)) => Some((true, name.clone())),
                (Field::Name, Op::Matches(re)) => literal_prefix(re.as_str()).map(|literal| (false, literal)),
                _ => None,
            }),
            _ => None,
        };
        Ok(RepositoryQuery {
            ns,
            filter,
            desc: term.desc,
            plan,
            fingerprint,
        })
    }
}

/// Reads the repositories of `query` after the name `after`, in order,
/// until `want` match or the records run out. Blocking.
pub fn collect(
    trees: &Backend,
    query: &RepositoryQuery,
    after: Option<&str>,
    want: usize,
) -> Result<Vec<Repository>, Error> {
    let ns = query.ns.as_str();
    let records = index_prefix(index::REPOSITORY, ns);
    let (start, end) = match &query.plan {
        Some((true, name)) => {
            let key = repository_key(ns, name);
            (Bound::Included(key.clone()), Bound::Included(key))
        }
        Some((false, literal)) => {
            let prefix = repository_key(ns, literal);
            let end = upper(&prefix);
            (Bound::Included(prefix), end)
        }
        None => (Bound::Included(records.clone()), upper(&records)),
    };
    let after = after.map(|name| repository_key(ns, name));
    let mut out = Vec::new();
    let Some((start, end)) = clip(start, end, after.as_deref(), query.desc) else {
        return Ok(out);
    };
    for entry in trees.scan(TreeId::Index, start, end, query.desc) {
        let (key, value) = entry?;
        let name = std::str::from_utf8(&key[records.len()..])
            .map_err(|_| Error::Storage(format!("malformed repository key {key:?}")))?;
        let record = decode_repository(name, &value).map_err(Error::Storage)?;
        let repository = Repository {
            name: name.to_owned(),
            tags: record.tags,
            newest: record.newest,
            newest_updated_at: from_unix_nanos(record.newest_updated_at),
            updated_at: from_unix_nanos(record.updated_at),
            mod_revision: record.mod_revision,
        };
        if query.filter.matches(&repository) {
            out.push(repository);
            if out.len() >= want {
                break;
            }
        }
    }
    Ok(out)
}

impl Reads {
    /// One page of `query`: up to `limit` repositories after the one
    /// `page_token` names (from the start when empty), and the token of the
    /// next page (empty after the last). Read on the blocking pool.
    pub async fn repositories(
        &self,
        query: Arc<RepositoryQuery>,
        page_token: &str,
        limit: usize,
    ) -> Result<Page<Vec<Repository>>, Error> {
        let tokens: Arc<Tokens> = self.tokens.clone();
        let after = match page_token {
            "" => None,
            token => Some(tokens.decode_for(&query.fingerprint, 0, token)?.name),
        };
        self.blocking(move |backend| {
            let mut found = collect(backend, &query, after.as_deref(), limit.saturating_add(1))?;
            let more = found.len() > limit;
            found.truncate(limit);
            let next_page_token = match found.last() {
                Some(last) if more => tokens.encode_for(
                    &query.fingerprint,
                    &Position {
                        numbers: Vec::new(),
                        name: last.name.clone(),
                    },
                ),
                _ => String::new(),
            };
            Ok(Page {
                count: found.len(),
                items: found,
                next_page_token,
            })
        })
        .await
    }
}
