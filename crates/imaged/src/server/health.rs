//! `grpc.health.v1.Health`, served by `tonic-health`: what the daemon
//! reports, and when it changes.
//!
//! - Every service on the socket, and the empty name (the daemon as a
//!   whole), is SERVING once the store is open and the socket bound.
//! - After a storage failure the store refuses writes (reads go on): the
//!   daemon as a whole and every service that writes turn NOT_SERVING; the
//!   read-only services (version, introspection, reflection, health) stay
//!   SERVING, since they still answer.
//! - At shutdown everything turns NOT_SERVING, so that probes and `Watch`
//!   streams hear it before the socket closes; the `Watch` streams then end.
//!
//! Each `Watch` stream holds its caller's share of
//! [`Resource::HealthWatches`]: they cost little, but nothing a caller can
//! hold is unbounded.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

use crate::shares::Resource;
use crate::store::Store;
use crate::transport::context;
use crate::transport::incoming::Streams;

/// How often the store's state is looked at: a storage failure is reported
/// within this.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The services that write through the store: NOT_SERVING once it refuses
/// writes.
const WRITERS: &[&str] = &[
    "containerd.v1.Images",
    "containerd.services.images.v1.Images",
    "containerd.services.namespaces.v1.Namespaces",
    "containerd.services.leases.v1.Leases",
    "containerd.services.events.v1.Events",
];

/// The services that only describe or read: SERVING until shutdown.
const READERS: &[&str] = &[
    "containerd.services.version.v1.Version",
    "containerd.services.introspection.v1.Introspection",
    "imaged.admin.v1.Admin",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.health.v1.Health",
];

/// The health service and the reporter that sets its statuses.
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// The reporter and its service, every status SERVING; its Watch
    /// streams take their shares from `streams`.
    pub async fn new(streams: Streams) -> (Health, HealthServer<SharedHealth>) {
        let reporter = HealthReporter::new();
        for name in WRITERS.iter().chain(READERS) {
            reporter.set_service_status(name, ServingStatus::Serving).await;
        }
        let service = SharedHealth {
            inner: HealthService::from_health_reporter(reporter.clone()),
            streams,
        };
        (Health { reporter }, HealthServer::new(service))
    }

    /// Follows `store`: the writers (and the daemon as a whole) turn
    /// NOT_SERVING once it refuses writes. Runs until the task is dropped.
    pub async fn follow(self, store: Store) {
        let mut writable = true;
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let now = store.writable();
            if now != writable {
                writable = now;
                let status = if now {
                    ServingStatus::Serving
                } else {
                    tracing::warn!("health: NOT_SERVING, the store refuses writes after a storage failure");
                    ServingStatus::NotServing
                };
                for name in WRITERS.iter().chain(&[""]) {
                    self.reporter.set_service_status(name, status).await;
                }
            }
        }
    }

    /// A handle to report the shutdown with.
    pub fn reporter(&self) -> HealthReporter {
        self.reporter.clone()
    }
}

/// Turns every status NOT_SERVING, then ends the `Watch` streams (each one
/// has heard NOT_SERVING first), so that none holds the shutdown up.
pub async fn shutting_down(mut reporter: HealthReporter) {
    for name in WRITERS.iter().chain(READERS).chain(&[""]) {
        reporter.set_service_status(name, ServingStatus::NotServing).await;
    }
    // Give each Watch stream a moment to send NOT_SERVING before its
    // sender goes and the stream ends.
    tokio::task::yield_now().await;
    for name in WRITERS.iter().chain(READERS).chain(&[""]) {
        reporter.clear_service_status(name).await;
    }
}

/// `tonic-health`'s service, with a fair share for each Watch stream.
pub struct SharedHealth {
    inner: HealthService,
    streams: Streams,
}

/// A health Watch stream.
type HealthWatch = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl HealthApi for SharedHealth {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = HealthWatch;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthWatch>, Status> {
        let share = self.streams.open(Resource::HealthWatches, context::caller(&request))?;
        let statuses = self.inner.watch(request).await?.into_inner();
        // The share goes back when the stream is dropped.
        let held = statuses.map(move |status| {
            let _ = &share;
            status
        });
        Ok(Response::new(Box::pin(held)))
    }
}
