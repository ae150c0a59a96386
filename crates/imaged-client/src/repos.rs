//! [`Repositories`]: the repositories of one namespace (an image's name
//! before its last `:tag` or `@digest`), read a page at a time, and the
//! filter that limits a list of images to one of them.

use futures_util::stream::{self, Stream};
use imaged_api::containerd::v1 as seed;
use imaged_types::Repository;
use imaged_types::wire::repository_from_seed;

use crate::images::seed_client;
use crate::{Error, Images, in_namespace};

/// One page of repositories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryPage {
    /// The repositories, in name order (reversed for `name desc`).
    pub repositories: Vec<Repository>,
    /// The token of the next page, or `None` after the last.
    pub next_page_token: Option<String>,
    /// The store revision read before the page: every change up to it is
    /// in it.
    pub revision: u64,
}

/// A list of repositories being built. Made by [`Images::repositories`].
#[must_use = "a list does nothing until read with .page() or .all()"]
pub struct Repositories<'a> {
    images: &'a Images,
    request: seed::ListRepositoriesRequest,
}

impl Images {
    /// The repositories of this namespace, each with how many images it
    /// holds, the newest of them and its last change: add filters (on
    /// `name`, `tags`, `updated_at`) and an order, then read a
    /// [`Repositories::page`] or all of them with [`Repositories::all`].
    pub fn repositories(&self) -> Repositories<'_> {
        Repositories {
            images: self,
            request: seed::ListRepositoriesRequest::default(),
        }
    }
}

impl Repositories<'_> {
    /// Adds a filter, e.g. `tags>=2` or `name~=^docker\.io/`. Several
    /// filters are an OR.
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.request.filters.push(filter.into());
        self
    }

    /// Sets the order: `name` (the default) or `name desc`.
    pub fn order_by(mut self, order_by: impl Into<String>) -> Self {
        self.request.order_by = order_by.into();
        self
    }

    /// Sets the page size, 1 to 1000 (1000 when unset).
    pub fn page_size(mut self, size: u32) -> Self {
        self.request.page_size = size;
        self
    }

    /// Continues after a previous page of the same list.
    pub fn page_token(mut self, token: impl Into<String>) -> Self {
        self.request.page_token = token.into();
        self
    }

    /// Reads one page.
    pub async fn page(self) -> Result<RepositoryPage, Error> {
        read_page(self.images, self.request).await
    }

    /// Every matching repository, page after page, in order; the next page
    /// is read only when the stream gets to it.
    pub fn all(self) -> impl Stream<Item = Result<Repository, Error>> + Send + 'static {
        let images = self.images.clone();
        let start = (Some(self.request), Vec::new().into_iter());
        stream::unfold(start, move |(mut next, mut page)| {
            let images = images.clone();
            async move {
                loop {
                    if let Some(repository) = page.next() {
                        return Some((Ok(repository), (next, page)));
                    }
                    let mut request = next.take()?;
                    match read_page(&images, request.clone()).await {
                        Ok(answer) => {
                            if let Some(token) = answer.next_page_token {
                                request.page_token = token;
                                next = Some(request);
                            }
                            page = answer.repositories.into_iter();
                        }
                        Err(e) => return Some((Err(e), (None, page))),
                    }
                }
            }
        })
    }
}

async fn read_page(images: &Images, request: seed::ListRepositoriesRequest) -> Result<RepositoryPage, Error> {
    let answer = images
        .client
        .read(|channel| {
            let request = in_namespace(&images.ns, request.clone());
            async move { seed_client(channel).list_repositories(request).await }
        })
        .await?;
    Ok(RepositoryPage {
        repositories: answer
            .repositories
            .into_iter()
            .map(repository_from_seed)
            .collect::<Result<_, _>>()?,
        next_page_token: Some(answer.next_page_token).filter(|t| !t.is_empty()),
        revision: answer.revision,
    })
}

/// The selector that holds the images of `repository`: its name quoted in
/// the filter language, so that any name is taken as it is.
pub fn repository_selector(repository: &str) -> String {
    let mut quoted = String::with_capacity(repository.len() + 16);
    quoted.push_str("repository==\"");
    for c in repository.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// `filters` limited to `repository`: the selector joined to each filter
/// (they are an OR), or alone when there are none.
pub fn limit_to_repository(filters: &mut Vec<String>, repository: &str) {
    let selector = repository_selector(repository);
    if filters.is_empty() {
        filters.push(selector);
    } else {
        for filter in filters.iter_mut() {
            filter.push(',');
            filter.push_str(&selector);
        }
    }
}
