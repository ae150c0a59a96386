//! imaged's own service for operators, `imaged.admin.v1.Admin`: the
//! daemon's status, online backups streamed as the bytes of a backup
//! file, and compaction (a rotation of sled asked for now).
//!
//! A backup's copy runs on a thread of its own (it reads the whole store),
//! and hands chunks to the stream through a queue of [`CHUNKS_QUEUED`]
//! chunks of [`CHUNK_BYTES`]: a client that stops reading holds at most
//! that much, and the copy waits, holding nobody else up. A client that
//! takes no data for the configured stall timeout has its backup ended
//! with ABORTED, since a running copy holds compaction back. Backups are a
//! fair share ([`Resource::Backups`]). At shutdown the stream ends with
//! UNAVAILABLE.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use imaged_api::imaged::admin::v1::admin_server::{Admin, AdminServer};
use imaged_api::imaged::admin::v1::{
    BackupChunk, BackupRequest, CompactRequest, CompactResponse, NamespaceStatus, Setting, StatusRequest,
    StatusResponse,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::Streams;
use super::outbox::{self, Inbox, Stop};
use crate::build_info::{REVISION, VERSION};
use crate::error::Error;
use crate::feed::Feed;
use crate::shares::Resource;
use crate::store::Store;
use crate::transport::context;

/// Bytes of backup file one chunk carries.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Chunks queued for a backup stream before the copy waits.
pub const CHUNKS_QUEUED: usize = 4;

/// The admin service over `store`, reporting `limits` (configuration key
/// and value) as the ones in force, and ending a backup whose client takes
/// no data for `stall`.
pub fn service(
    store: Store,
    feed: Feed,
    streams: Streams,
    limits: Limits,
    stall: Duration,
) -> AdminServer<ImagedAdmin> {
    AdminServer::new(ImagedAdmin {
        store,
        feed,
        streams,
        limits,
        stall,
        started: Instant::now(),
    })
}

/// Answers the admin service.
pub struct ImagedAdmin {
    store: Store,
    feed: Feed,
    streams: Streams,
    limits: Limits,
    stall: Duration,
    started: Instant,
}

/// The limits in force, by configuration key and value, as Status reports
/// them; a reload puts new ones in. Cheap to clone.
pub type Limits = std::sync::Arc<std::sync::RwLock<Vec<(String, String)>>>;

/// A backup's stream of chunks.
type Chunked = Inbox<BackupChunk>;

#[tonic::async_trait]
impl Admin for ImagedAdmin {
    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        // sled and the file system block: off the executor.
        let store = self.store.clone();
        let read =
            tokio::task::spawn_blocking(move || Ok::<_, Error>((store.namespace_counts()?, store.bytes_on_disk())));
        let rotations = self.store.rotations().borrow().clone();
        let (namespaces, (journal_bytes, engine_bytes)) = read
            .await
            .map_err(|e| Error::Storage(format!("reading the status failed: {e}")))??;
        Ok(Response::new(StatusResponse {
            version: VERSION.to_owned(),
            git_revision: REVISION.to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
            revision: self.store.revision(),
            compacted_revision: self.store.compacted(),
            images: namespaces.iter().map(|(_, n)| n).sum(),
            namespaces: namespaces
                .into_iter()
                .map(|(name, images)| NamespaceStatus { name, images })
                .collect(),
            journal_bytes,
            engine_bytes,
            watchers: self.feed.watchers() as u64,
            uuid: self.store.uuid().to_owned(),
            limits: self
                .limits
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(name, value)| Setting {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            writable: self.store.writable(),
            rotating: rotations.running,
            rotations: rotations.done,
            rotations_abandoned: rotations.abandoned,
            last_rotation_abandoned: rotations.last_abandoned.unwrap_or_default(),
        }))
    }

    async fn compact(&self, _request: Request<CompactRequest>) -> Result<Response<CompactResponse>, Status> {
        let r = self.store.compact().await?;
        let ms = |d: Duration| d.as_millis() as u64;
        Ok(Response::new(CompactResponse {
            before_bytes: r.before_bytes,
            after_bytes: r.after_bytes,
            keys: r.keys,
            copy_ms: ms(r.copy),
            open_ms: ms(r.opened),
            paused_ms: ms(r.paused),
            took_ms: ms(r.took),
        }))
    }

    type BackupStream = Chunked;

    async fn backup(&self, request: Request<BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let caller = context::caller(&request);
        let share = self.streams.open(Resource::Backups, caller)?;
        let (chunks, from_copy) = mpsc::channel::<Result<BackupChunk, Status>>(CHUNKS_QUEUED);
        let store = self.store.clone();
        std::thread::Builder::new()
            .name("imaged-backup".into())
            .spawn(move || {
                yield_to_callers();
                let out = Chunks {
                    queue: chunks.clone(),
                    buffer: Vec::with_capacity(CHUNK_BYTES),
                };
                match crate::backup::write(&store, out) {
                    Ok(Some(revision)) => tracing::info!(revision, "backup sent"),
                    Ok(None) => tracing::info!("backup stopped: the client went away"),
                    Err(e) => {
                        tracing::warn!(error = %e, "backup failed");
                        let _ = chunks.blocking_send(Err(e.into()));
                    }
                }
            })
            .map_err(|e| Error::Unavailable(format!("cannot start the backup's thread: {e}")))?;
        let bounds = outbox::Bounds {
            items: 1,
            bytes: CHUNK_BYTES,
            size: |chunk: &BackupChunk| chunk.data.len(),
        };
        let (outbox, inbox) = outbox::outbox(bounds, self.stall, self.streams.clone());
        let streams = self.streams.clone();
        let stopping = || Status::unavailable("imaged is shutting down; the backup is incomplete, take it again");
        tokio::spawn(async move {
            let _share = share;
            let mut from_copy = from_copy;
            loop {
                let chunk = tokio::select! {
                    chunk = from_copy.recv() => chunk,
                    () = streams.stopping() => return outbox.end(stopping()),
                };
                let Some(chunk) = chunk else { return };
                let stalled = |stall: Duration| {
                    Status::aborted(format!(
                        "the backup's client took no data for {} s (--backup-stall-timeout): a running backup \
                         holds the change log's compaction back, so it was ended; take it again",
                        stall.as_secs()
                    ))
                };
                match outbox.send(chunk, stalled).await {
                    Ok(()) => {}
                    Err(Stop::Stalled) => {
                        tracing::warn!(uid = caller.uid, "backup ended: its client took no data");
                        return;
                    }
                    Err(Stop::Gone) => return,
                    Err(Stop::Stopping) => return outbox.end(stopping()),
                }
            }
        });
        Ok(Response::new(inbox))
    }
}

/// The backup file's bytes, cut into chunks and queued for the stream; a
/// write fails once the stream is gone, which stops the copy.
struct Chunks {
    queue: mpsc::Sender<Result<BackupChunk, Status>>,
    buffer: Vec<u8>,
}

impl Chunks {
    fn send(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_BYTES));
        self.queue
            .blocking_send(Ok(BackupChunk { data }))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the backup stream is gone"))
    }
}

impl Write for Chunks {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let room = CHUNK_BYTES - self.buffer.len();
        let take = bytes.len().min(room);
        self.buffer.extend_from_slice(&bytes[..take]);
        if self.buffer.len() == CHUNK_BYTES {
            self.send()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() { Ok(()) } else { self.send() }
    }
}

/// Lowers the calling thread's CPU priority (nice 10), so that a backup's
/// copy takes the CPU the calls beside it leave over. Best effort: a failure
/// leaves the priority as it was.
fn yield_to_callers() {
    // SAFETY: gettid and setpriority take plain integers and touch no
    // memory of ours; on Linux PRIO_PROCESS with a thread id sets that one
    // thread's nice value.
    let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
    if done != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot lower the backup thread's priority");
    }
}
