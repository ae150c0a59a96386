//! The operator's calls: the daemon's health (`grpc.health.v1`), its
//! status, online backups and compaction (`imaged.admin.v1.Admin`).

use std::time::Duration;

use futures_util::StreamExt;
use imaged_api::imaged::admin::v1::admin_client::AdminClient;
use imaged_api::imaged::admin::v1::{BackupRequest, CompactRequest, StatusRequest};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::{Client, Error, MAX_MESSAGE_BYTES};

/// What [`Client::status`] answers: what the daemon is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonStatus {
    /// Its version.
    pub version: String,
    /// The git revision it was built from.
    pub git_revision: String,
    /// How long it has served.
    pub uptime: Duration,
    /// The store-wide revision.
    pub revision: u64,
    /// The oldest revision a watch can start after.
    pub compacted_revision: u64,
    /// Every namespace, by name, with how many images it holds.
    pub namespaces: Vec<(String, u64)>,
    /// Images over every namespace.
    pub images: u64,
    /// Bytes of the journal's file.
    pub journal_bytes: u64,
    /// Bytes of sled's files.
    pub engine_bytes: u64,
    /// Watches and event subscriptions open.
    pub watchers: u64,
    /// The store's UUID.
    pub uuid: String,
    /// The limits in force, by configuration key.
    pub limits: Vec<(String, String)>,
    /// Whether the store takes writes.
    pub writable: bool,
    /// Whether a rotation of sled is running now.
    pub rotating: bool,
    /// Rotations swapped in since the daemon started.
    pub rotations: u64,
    /// Rotations abandoned since the daemon started.
    pub rotations_abandoned: u64,
    /// Why the last abandoned rotation was; empty when none was.
    pub last_rotation_abandoned: String,
}

/// What [`Client::compact`] answers: what the rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// Bytes of sled's files before.
    pub before_bytes: u64,
    /// Bytes of the fresh copy's files.
    pub after_bytes: u64,
    /// Entries copied.
    pub keys: u64,
    /// The copy, catch-up included.
    pub copy: Duration,
    /// The fresh copy's first open.
    pub open: Duration,
    /// The swap, during which writes waited.
    pub paused: Duration,
    /// From start to swap.
    pub took: Duration,
}

impl Client {
    /// Whether the daemon serves `service` (the empty name: the daemon as
    /// a whole), by the gRPC health protocol. `Ok(false)` when it answers
    /// NOT_SERVING (shutting down, or refusing writes after a storage
    /// failure); an error when it cannot be asked.
    pub async fn health(&self, service: &str) -> Result<bool, Error> {
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        let answer = self
            .write(move |channel| async move { HealthClient::new(channel).check(request).await })
            .await?;
        Ok(answer.status == ServingStatus::Serving as i32)
    }

    /// What the daemon is doing (needs a reader's grant over every
    /// namespace).
    pub async fn status(&self) -> Result<DaemonStatus, Error> {
        let s = self
            .read(|channel| async move {
                AdminClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .status(StatusRequest {})
                    .await
            })
            .await?;
        Ok(DaemonStatus {
            version: s.version,
            git_revision: s.git_revision,
            uptime: Duration::from_secs(s.uptime_seconds),
            revision: s.revision,
            compacted_revision: s.compacted_revision,
            namespaces: s.namespaces.into_iter().map(|n| (n.name, n.images)).collect(),
            images: s.images,
            journal_bytes: s.journal_bytes,
            engine_bytes: s.engine_bytes,
            watchers: s.watchers,
            uuid: s.uuid,
            limits: s.limits.into_iter().map(|l| (l.name, l.value)).collect(),
            writable: s.writable,
            rotating: s.rotating,
            rotations: s.rotations,
            rotations_abandoned: s.rotations_abandoned,
            last_rotation_abandoned: s.last_rotation_abandoned,
        })
    }

    /// Compacts the store: sled is copied to a fresh one in the background
    /// and swapped in, giving back the disk churn left; answers once the
    /// copy is in use. Needs admin. It runs as long as the store is large,
    /// so no per-call timeout applies.
    pub async fn compact(&self) -> Result<Compacted, Error> {
        let r = self
            .unbounded(|channel| async move { AdminClient::new(channel).compact(CompactRequest {}).await })
            .await?;
        let ms = Duration::from_millis;
        Ok(Compacted {
            before_bytes: r.before_bytes,
            after_bytes: r.after_bytes,
            keys: r.keys,
            copy: ms(r.copy_ms),
            open: ms(r.open_ms),
            paused: ms(r.paused_ms),
            took: ms(r.took_ms),
        })
    }

    /// Takes an online backup of the whole store and writes the backup
    /// file to `out`; returns its size in bytes. The daemon checks nothing
    /// here that restore does not check again: an error midway leaves a
    /// partial file, which `imaged restore` refuses. Needs admin.
    pub async fn backup(&self, out: &mut (impl AsyncWrite + Unpin)) -> Result<u64, Error> {
        // The stream runs as long as the store is large: the client's
        // per-call timeout, if any, would cut every large backup short.
        let mut chunks = self
            .unbounded(|channel| async move {
                AdminClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .backup(BackupRequest {})
                    .await
            })
            .await?;
        let mut written = 0;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|status| self.error(status))?;
            out.write_all(&chunk.data)
                .await
                .map_err(|e| Error::Transport(format!("writing the backup: {e}")))?;
            written += chunk.data.len() as u64;
        }
        out.flush()
            .await
            .map_err(|e| Error::Transport(format!("writing the backup: {e}")))?;
        Ok(written)
    }
}
