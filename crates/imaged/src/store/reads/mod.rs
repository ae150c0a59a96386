//! Reads: Gets, list pages and namespaces, and where each runs.
//!
//! # Layout
//! - [`cache`]: recently read and written image records, for Gets.
//! - [`readers`]: the threads that make point reads in the engine.
//! - [`query`]: list queries, plans and keyset pages.
//! - [`order`]: orders, and the positions pages resume from.
//! - [`repos`]: lists of repositories, from their records.
//! - [`token`]: page tokens.
//!
//! Gets answered from the record cache run on the async executor, with no
//! engine call at all, so they go on while sled is being reopened. Other
//! point reads (a Get that misses, a namespace) run on the reader threads,
//! and scans (list pages, counts, checks) on tokio's blocking pool. No
//! engine call ever runs on the async executor.
//!
//! Reads hand out stored records ([`Record`], [`query::Found`]), never wire
//! messages: the server's adapters encode them.

pub mod cache;
pub mod order;
pub mod query;
pub mod readers;
pub mod repos;
pub mod token;

use std::ops::Deref;
use std::sync::Arc;

use imaged_types::image::validate_name;
use imaged_types::{Image, Namespace, NamespaceName};

use super::engine::{Backend, Bytes, Engine};
use super::layout::{TreeId, decode_namespace, image_key};
use super::record::decode_image;
use crate::error::Error;
use crate::filter::{Filter, NamespaceFields};
use cache::RecordCache;
use query::{Found, Position, Query};
use readers::Readers;
use token::Tokens;

/// A stored image record, from the record cache or from the engine.
#[derive(Debug, Clone)]
pub enum Record {
    /// Held by the record cache.
    Cached(Arc<[u8]>),
    /// Read from the engine.
    Stored(Bytes),
}

impl Deref for Record {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Record::Cached(bytes) => bytes,
            Record::Stored(bytes) => bytes,
        }
    }
}

/// One page of a list: what the caller made of its images, how many it
/// took, and the token of the next page (empty after the last).
#[derive(Debug, Default)]
pub struct Page<T> {
    /// What the caller made of the images it took.
    pub items: T,
    /// How many images it took.
    pub count: usize,
    /// Resumes after the last image taken; empty when none follow.
    pub next_page_token: String,
}

/// The read side of the store.
pub struct Reads {
    engine: Arc<Engine>,
    cache: Arc<RecordCache>,
    readers: Readers,
    tokens: Arc<Tokens>,
}

impl Reads {
    /// Reads of `engine` through `cache` on `readers`, with page tokens
    /// under `tokens`.
    pub fn new(engine: Arc<Engine>, cache: Arc<RecordCache>, readers: Readers, tokens: Tokens) -> Reads {
        Reads {
            engine,
            cache,
            readers,
            tokens: Arc::new(tokens),
        }
    }

    /// The stored record of image `name` of namespace `ns`, from the record
    /// cache, or else from the engine on the reader pool.
    pub async fn image_record(&self, ns: &NamespaceName, name: &str) -> Result<Record, Error> {
        validate_name("name", name)?;
        let key = image_key(ns.as_str(), name);
        if let Some(bytes) = self.cache.get(&key) {
            return Ok(Record::Cached(bytes));
        }
        let cache = self.cache.clone();
        let seen = cache.generation(&key);
        let found = self
            .point_read(move |backend| {
                let found = backend.get(TreeId::Images, &key)?;
                if let Some(bytes) = &found {
                    cache.fill(&key, bytes, seen);
                }
                Ok(found)
            })
            .await?;
        found
            .map(Record::Stored)
            .ok_or_else(|| Error::image_not_found(ns.as_str(), name))
    }

    /// Image `name` of namespace `ns`, decoded.
    pub async fn image(&self, ns: &NamespaceName, name: String) -> Result<Image, Error> {
        let record = self.image_record(ns, &name).await?;
        decode_image(&name, &record).map_err(Error::Storage)
    }

    /// One page of `query`: the matches after the position `page_token`
    /// names (the start when empty), up to `limit`, handed to `take` on the
    /// blocking pool. `take` answers with what it made of them and how many
    /// it took (it may stop short, say at a byte budget); the next page
    /// resumes after the last one taken. The cost depends on `limit`, and on
    /// how many non-matching images lie between matches, never on the
    /// position.
    pub async fn page<T: Send + 'static>(
        &self,
        query: Arc<Query>,
        page_token: &str,
        limit: usize,
        take: impl FnOnce(&[Found]) -> Result<(T, usize), Error> + Send + 'static,
    ) -> Result<Page<T>, Error> {
        let after = self.position(&query, page_token)?;
        let tokens = self.tokens.clone();
        self.blocking(move |backend| {
            let found = query::collect(backend, &query, after.as_ref(), limit.saturating_add(1))?;
            let shown = &found[..found.len().min(limit)];
            let (items, count) = take(shown)?;
            let count = count.min(shown.len());
            // More matched than the page took: resume after its last image
            // (a page of none, `limit` 0, has no position to resume from).
            let next_page_token = match shown[..count].last() {
                Some(last) if count < found.len() => tokens.encode(&query, &query.order().position(&last.image()?)),
                _ => String::new(),
            };
            Ok(Page {
                items,
                count,
                next_page_token,
            })
        })
        .await
    }

    /// The position a page token names, or the start for an empty token.
    fn position(&self, query: &Query, page_token: &str) -> Result<Option<Position>, Error> {
        if page_token.is_empty() {
            Ok(None)
        } else {
            Ok(Some(self.tokens.decode(query, page_token)?))
        }
    }

    /// Namespace `name`.
    pub async fn namespace(&self, name: NamespaceName) -> Result<Namespace, Error> {
        self.point_read(
            move |backend| match backend.get(TreeId::Namespaces, name.as_str().as_bytes())? {
                Some(bytes) => Ok(Namespace {
                    labels: decode_namespace(name.as_str(), &bytes).map_err(Error::Storage)?.labels,
                    name,
                }),
                None => Err(Error::NotFound(format!("namespace {:?} not found", name.as_str()))),
            },
        )
        .await
    }

    /// The namespaces matching `filter`, ordered by name.
    pub async fn namespaces(&self, filter: Filter) -> Result<Vec<Namespace>, Error> {
        self.blocking(move |backend| {
            let mut namespaces = Vec::new();
            for entry in backend.iter(TreeId::Namespaces) {
                let (key, value) = entry?;
                let name = std::str::from_utf8(&key)
                    .ok()
                    .and_then(|n| NamespaceName::parse("namespace", n).ok())
                    .ok_or_else(|| Error::Storage(format!("malformed namespace key {key:?}")))?;
                let record = decode_namespace(name.as_str(), &value).map_err(Error::Storage)?;
                if filter.matches(&NamespaceFields {
                    name: name.as_str(),
                    labels: &record.labels,
                }) {
                    namespaces.push(Namespace {
                        name,
                        labels: record.labels,
                    });
                }
            }
            Ok(namespaces)
        })
        .await
    }

    /// How many namespaces and images the store holds, from the namespace
    /// counters.
    pub fn counts(&self) -> Result<Counts, Error> {
        let namespaces = self.namespace_counts()?;
        Ok(Counts {
            namespaces: namespaces.len() as u64,
            images: namespaces.iter().map(|(_, images)| images).sum(),
        })
    }

    /// Every namespace, by name, with how many images it holds, from the
    /// namespace counters: one short scan, cheap at any number of images.
    pub fn namespace_counts(&self) -> Result<Vec<(String, u64)>, Error> {
        self.engine.with(|backend| {
            let mut counts = Vec::new();
            for entry in backend.iter(TreeId::Namespaces) {
                let (key, value) = entry?;
                let name = String::from_utf8_lossy(&key).into_owned();
                let images = decode_namespace(&name, &value).map_err(Error::Storage)?.images;
                counts.push((name, images));
            }
            Ok(counts)
        })
    }

    /// Runs a scan of the engine on tokio's blocking pool, where a long one
    /// holds up nothing else.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Backend) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.with(f))
            .await
            .map_err(|e| Error::Storage(format!("read task failed: {e}")))?
    }

    /// Runs a point read of the engine (a key or two) on the reader pool.
    async fn point_read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Backend) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let engine = self.engine.clone();
        self.readers
            .run(move || engine.with(f))
            .await
            .map_err(|_| Error::Storage("read task failed: the reader panicked or the store closed".into()))?
    }
}

/// How much the store holds, from the namespace counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Namespaces.
    pub namespaces: u64,
    /// Images, over every namespace.
    pub images: u64,
}
