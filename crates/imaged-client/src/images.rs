//! [`Images`]: the image calls of one namespace, with builders for
//! conditional writes and lists.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;

use futures_util::stream::{self, Stream};
use imaged_api::containerd::services::images::v1 as ctrd;
use imaged_api::containerd::services::images::v1::images_client::ImagesClient as CtrdImagesClient;
use imaged_api::containerd::v1 as seed;
use imaged_api::containerd::v1::images_client::ImagesClient as SeedClient;
use imaged_types::wire::{image_to_seed, precondition_to_seed, stored_image_from_containerd, stored_image_from_seed};
use imaged_types::{Descriptor, Digest, Image, Labels, NamespaceName, PROTECTED_LABEL, PROTECTED_VALUE, Precondition};
use tonic::transport::Channel;

use crate::{Client, Error, MAX_MESSAGE_BYTES, in_namespace};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) fn seed_client(channel: Channel) -> SeedClient<Channel> {
    SeedClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The image calls of one namespace. Made by [`Client::namespace`]; cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Images {
    pub(crate) client: Client,
    pub(crate) ns: NamespaceName,
}

impl Images {
    pub(crate) fn new(client: Client, ns: NamespaceName) -> Images {
        Images { client, ns }
    }

    /// The namespace these calls carry.
    pub fn namespace(&self) -> &NamespaceName {
        &self.ns
    }

    /// The image `name`; [`Error::NotFound`] when absent.
    pub async fn get(&self, name: &str) -> Result<Image, Error> {
        let name = name.to_owned();
        let answer = self
            .client
            .read(|channel| {
                let request = in_namespace(&self.ns, seed::GetRequest { name: name.clone() });
                async move { seed_client(channel).get(request).await }
            })
            .await?;
        let image = answer
            .image
            .ok_or_else(|| Error::Transport("the daemon answered Get without an image".into()))?;
        Ok(stored_image_from_seed(image)?)
    }

    /// Assigns `name` to `target`: creates the image or replaces its target.
    /// Await it, or first add labels or a condition.
    pub fn put(&self, name: impl Into<String>, target: Descriptor) -> Put<'_> {
        Put {
            images: self,
            image: Image {
                name: name.into(),
                labels: Labels::new(),
                target,
                created_at: std::time::UNIX_EPOCH,
                updated_at: std::time::UNIX_EPOCH,
                create_revision: 0,
                mod_revision: 0,
            },
            precondition: Precondition::None,
        }
    }

    /// Deletes `name`; [`Error::NotFound`] when absent. Await it, or first add
    /// a condition.
    pub fn delete(&self, name: impl Into<String>) -> Delete<'_> {
        Delete {
            images: self,
            name: name.into(),
            precondition: Precondition::None,
        }
    }

    /// Changes labels of `name`, keeping the others and the target, in one
    /// atomic update. Returns the image as stored, but for its revisions:
    /// the change is made through containerd's Update, whose answer has
    /// none, so `create_revision` and `mod_revision` are 0 (a
    /// [`Images::get`] gives them).
    ///
    /// ```no_run
    /// # async fn run(images: imaged_client::Images) -> Result<(), imaged_client::Error> {
    /// use imaged_client::LabelChange;
    /// let image = images
    ///     .label("docker.io/library/redis:7", [LabelChange::set("env", "prod"), LabelChange::remove("team")])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn label(&self, name: &str, changes: impl IntoIterator<Item = LabelChange>) -> Result<Image, Error> {
        let mut labels = Labels::new();
        let mut paths = Vec::new();
        for change in changes {
            let key = match change {
                LabelChange::Set { key, value } => {
                    labels.insert(key.clone(), value);
                    key
                }
                LabelChange::Remove { key } => key,
            };
            paths.push(format!("labels.{key}"));
        }
        let request = in_namespace(
            &self.ns,
            ctrd::UpdateImageRequest {
                image: Some(ctrd::Image {
                    name: name.to_owned(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
                source_date_epoch: None,
            },
        );
        let answer = self
            .client
            .write(|channel| async move { CtrdImagesClient::new(channel).update(request).await })
            .await?;
        let image = answer
            .image
            .ok_or_else(|| Error::Transport("the daemon answered Update without an image".into()))?;
        Ok(stored_image_from_containerd(image)?)
    }

    /// Protects image `name`: until [`Images::unprotect`], imaged refuses to
    /// delete it or point it at other content, through any API
    /// (FAILED_PRECONDITION). Its labels may still change. Protection is
    /// the label `io.cri-containerd.pinned=pinned`, containerd's pin.
    /// Returns the image as stored.
    ///
    /// ```no_run
    /// # async fn run(images: imaged_client::Images) -> Result<(), imaged_client::Error> {
    /// let image = images.protect("docker.io/library/redis:7").await?;
    /// assert!(image.protected());
    /// # Ok(()) }
    /// ```
    pub async fn protect(&self, name: &str) -> Result<Image, Error> {
        self.label(name, [LabelChange::set(PROTECTED_LABEL, PROTECTED_VALUE)])
            .await
    }

    /// Unprotects image `name` (see [`Images::protect`]). Returns the image
    /// as stored.
    pub async fn unprotect(&self, name: &str) -> Result<Image, Error> {
        self.label(name, [LabelChange::remove(PROTECTED_LABEL)]).await
    }

    /// A list of this namespace's images: add filters, an order and a page
    /// size, then read one [`List::page`] or stream them all with
    /// [`List::all`].
    pub fn list(&self) -> List<'_> {
        List {
            images: self,
            request: seed::ListRequest::default(),
            repository: None,
        }
    }

    /// Every image of the namespace, by name, streamed lazily.
    pub fn list_all(&self) -> impl Stream<Item = Result<Image, Error>> + Send + 'static {
        self.list().all()
    }
}

/// A put being built; await it to send it.
#[must_use = "a put does nothing until awaited"]
pub struct Put<'a> {
    images: &'a Images,
    image: Image,
    precondition: Precondition,
}

impl Put<'_> {
    /// Sets the labels. A put with labels replaces the image's labels; one
    /// without keeps them.
    pub fn labels(mut self, labels: Labels) -> Self {
        self.image.labels = labels;
        self
    }

    /// Adds one label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.image.labels.insert(key.into(), value.into());
        self
    }

    /// Writes only if the name does not exist yet; otherwise
    /// [`Error::Aborted`] and nothing is written.
    pub fn if_absent(mut self) -> Self {
        self.precondition = Precondition::Absent;
        self
    }

    /// Writes only if the name points at `digest` now; otherwise
    /// [`Error::Aborted`] and nothing is written.
    pub fn if_digest(mut self, digest: &Digest) -> Self {
        self.precondition = Precondition::Digest(digest.clone());
        self
    }
}

impl<'a> IntoFuture for Put<'a> {
    type Output = Result<(), Error>;
    type IntoFuture = BoxFuture<'a, Result<(), Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let request = in_namespace(
                &self.images.ns,
                seed::PutRequest {
                    image: Some(image_to_seed(self.image.clone())),
                    precondition: precondition_to_seed(&self.precondition),
                },
            );
            self.images
                .client
                .write(|channel| async move { seed_client(channel).put(request).await })
                .await
        })
    }
}

/// A delete being built; await it to send it.
#[must_use = "a delete does nothing until awaited"]
pub struct Delete<'a> {
    images: &'a Images,
    name: String,
    precondition: Precondition,
}

impl Delete<'_> {
    /// Deletes only if the name points at `digest` now; otherwise
    /// [`Error::Aborted`] and nothing is deleted.
    pub fn if_digest(mut self, digest: &Digest) -> Self {
        self.precondition = Precondition::Digest(digest.clone());
        self
    }
}

impl<'a> IntoFuture for Delete<'a> {
    type Output = Result<(), Error>;
    type IntoFuture = BoxFuture<'a, Result<(), Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let request = in_namespace(
                &self.images.ns,
                seed::DeleteRequest {
                    name: self.name,
                    precondition: precondition_to_seed(&self.precondition),
                },
            );
            self.images
                .client
                .write(|channel| async move { seed_client(channel).delete(request).await })
                .await
        })
    }
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The images, in the list's order.
    pub images: Vec<Image>,
    /// The token of the next page, or `None` after the last.
    pub next_page_token: Option<String>,
    /// The store revision the page was read at: every change up to it is
    /// in the page (see [`Images::watch`]).
    pub revision: u64,
}

/// A list being built.
#[must_use = "a list does nothing until read with .page() or .all()"]
pub struct List<'a> {
    images: &'a Images,
    request: seed::ListRequest,
    repository: Option<String>,
}

impl List<'_> {
    /// Adds a filter (containerd's language, plus `<`, `<=`, `>`, `>=` on
    /// `target.size`, `created_at`, `updated_at`). Several filters are an OR;
    /// selectors joined by `,` within one are an AND.
    pub fn filter(mut self, filter: impl Into<String>) -> Self {
        self.request.filters.push(filter.into());
        self
    }

    /// Limits the list to the images of one repository (their names before
    /// the last `:tag` or `@digest`), read as a range of names, whatever
    /// the filters.
    pub fn repository(mut self, repository: impl Into<String>) -> Self {
        self.repository = Some(repository.into());
        self
    }

    /// The request to send: the filters limited to the repository, if any.
    fn request(&self) -> seed::ListRequest {
        let mut request = self.request.clone();
        if let Some(repository) = &self.repository {
            crate::limit_to_repository(&mut request.filters, repository);
        }
        request
    }

    /// Sets the order, e.g. `created_at desc, name`.
    pub fn order_by(mut self, order_by: impl Into<String>) -> Self {
        self.request.order_by = order_by.into();
        self
    }

    /// Sets the page size (1 to 1000), or the batch size of [`List::all`].
    pub fn page_size(mut self, size: u32) -> Self {
        self.request.page_size = size;
        self
    }

    /// Continues after a previous page of the same list.
    pub fn page_token(mut self, token: impl Into<String>) -> Self {
        self.request.page_token = token.into();
        self
    }

    /// Reads one page (of 100 images unless [`List::page_size`] says).
    pub async fn page(mut self) -> Result<Page, Error> {
        if self.request.page_size == 0 {
            self.request.page_size = 100;
        }
        let request = self.request();
        let answer = self
            .images
            .client
            .read(|channel| {
                let request = in_namespace(&self.images.ns, request.clone());
                async move { seed_client(channel).list(request).await }
            })
            .await?;
        Ok(Page {
            images: answer
                .images
                .into_iter()
                .map(stored_image_from_seed)
                .collect::<Result<_, _>>()?,
            next_page_token: Some(answer.next_page_token).filter(|t| !t.is_empty()),
            revision: answer.revision,
        })
    }

    /// Every matching image, streamed lazily in the list's order: nothing is
    /// sent until the stream is first polled, batches arrive as they are read,
    /// and dropping the stream stops the daemon's work.
    pub fn all(self) -> impl Stream<Item = Result<Image, Error>> + Send + 'static {
        let client = self.images.client.clone();
        let ns = self.images.ns.clone();
        let request = self.request();
        enum State {
            Start(Client, NamespaceName, seed::ListRequest),
            Streaming(tonic::Streaming<seed::ListResponse>, VecDeque<seed::Image>, Client),
            Done,
        }
        stream::unfold(State::Start(client, ns, request), |mut state| async move {
            loop {
                state = match state {
                    State::Done => return None,
                    State::Start(client, ns, request) => {
                        let call = client
                            .once(seed_client(client.inner.channel.clone()).list_stream(in_namespace(&ns, request)))
                            .await;
                        match call {
                            Ok(streaming) => State::Streaming(streaming, VecDeque::new(), client),
                            Err(e) => return Some((Err(e), State::Done)),
                        }
                    }
                    State::Streaming(mut streaming, mut batch, client) => {
                        if let Some(image) = batch.pop_front() {
                            let image = stored_image_from_seed(image).map_err(Error::from);
                            return Some((image, State::Streaming(streaming, batch, client)));
                        }
                        match streaming.message().await {
                            Ok(Some(answer)) => State::Streaming(streaming, answer.images.into(), client),
                            Ok(None) => return None,
                            Err(status) => {
                                let error = Error::from_status(status, client.socket());
                                return Some((Err(error), State::Done));
                            }
                        }
                    }
                }
            }
        })
    }
}

/// One change of [`Images::label`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    /// Sets `key` to `value` (an empty value removes it, as in containerd).
    Set {
        /// The label's key.
        key: String,
        /// Its new value.
        value: String,
    },
    /// Removes `key`, if the image has it.
    Remove {
        /// The label's key.
        key: String,
    },
}

impl LabelChange {
    /// Sets `key` to `value`.
    pub fn set(key: impl Into<String>, value: impl Into<String>) -> LabelChange {
        LabelChange::Set {
            key: key.into(),
            value: value.into(),
        }
    }

    /// Removes `key`.
    pub fn remove(key: impl Into<String>) -> LabelChange {
        LabelChange::Remove { key: key.into() }
    }
}
