//! Counting gRPC calls: a tower layer in front of every service (outside
//! the access layer, so refusals count too) that looks the method up in a
//! table made once at start, and counts the call's code and latency in
//! atomics. No lock, and no allocation, on a call's path.
//!
//! A call is counted when its response starts: a unary call's code and
//! latency are the call's; a stream's are those it started with (an error
//! before the first message, or OK).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use prost::Message;
use tonic::codegen::http;

use crate::access::layer::Refused;
use crate::stats::{Histogram, LATENCY_NANOS};

/// gRPC's status codes, by number.
pub const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// One method's counts.
#[derive(Debug)]
pub struct MethodStats {
    /// Its service, e.g. `containerd.v1.Images`.
    pub service: String,
    /// Its name, e.g. `Put`.
    pub method: String,
    /// Calls by code.
    pub codes: [AtomicU64; 17],
    /// Calls the access policy refused.
    pub refused: AtomicU64,
    /// Time to the response, in nanoseconds.
    pub latency: Histogram,
}

impl MethodStats {
    fn new(service: &str, method: &str) -> MethodStats {
        MethodStats {
            service: service.to_owned(),
            method: method.to_owned(),
            codes: Default::default(),
            refused: AtomicU64::new(0),
            latency: Histogram::new(LATENCY_NANOS),
        }
    }
}

/// Every served method's counts, made once from the descriptor sets of what
/// is served; calls to anything else count under one `unknown` entry.
#[derive(Debug)]
pub struct GrpcStats {
    methods: Vec<MethodStats>,
    by_path: HashMap<String, usize>,
}

impl GrpcStats {
    /// The table of every method the encoded `FileDescriptorSet`s describe.
    pub fn new(descriptor_sets: &[&[u8]]) -> GrpcStats {
        let mut methods = Vec::new();
        let mut by_path = HashMap::new();
        for set in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    let full = format!("{}.{}", file.package(), service.name());
                    for method in &service.method {
                        let path = format!("/{full}/{}", method.name());
                        if !by_path.contains_key(&path) {
                            by_path.insert(path, methods.len());
                            methods.push(MethodStats::new(&full, method.name()));
                        }
                    }
                }
            }
        }
        methods.push(MethodStats::new("unknown", "unknown"));
        GrpcStats { methods, by_path }
    }

    /// Every method's counts, the `unknown` entry last.
    pub fn methods(&self) -> &[MethodStats] {
        &self.methods
    }

    fn index(&self, path: &str) -> usize {
        self.by_path.get(path).copied().unwrap_or(self.methods.len() - 1)
    }
}

/// The layer that counts calls; with no stats, it counts nothing.
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    stats: Option<Arc<GrpcStats>>,
}

impl MetricsLayer {
    /// Counts into `stats`, or nothing when metrics are off.
    pub fn new(stats: Option<Arc<GrpcStats>>) -> MetricsLayer {
        MetricsLayer { stats }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            stats: self.stats.clone(),
        }
    }
}

/// A service whose calls are counted.
#[derive(Debug, Clone)]
pub struct Measured<S> {
    inner: S,
    stats: Option<Arc<GrpcStats>>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Measured<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = MeasuredCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let counting = self.stats.as_ref().map(|stats| Counting {
            index: stats.index(request.uri().path()),
            stats: stats.clone(),
            start: Instant::now(),
        });
        MeasuredCall {
            inner: self.inner.call(request),
            counting,
        }
    }
}

/// What a call being counted needs at its end.
struct Counting {
    stats: Arc<GrpcStats>,
    index: usize,
    start: Instant,
}

pin_project_lite::pin_project! {
    /// A call whose response is counted when it comes.
    pub struct MeasuredCall<F> {
        #[pin]
        inner: F,
        counting: Option<Counting>,
    }
}

impl<F, R, E> Future for MeasuredCall<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = std::task::ready!(this.inner.poll(cx));
        if let Some(counting) = this.counting.take() {
            let stats = &counting.stats.methods[counting.index];
            let code = match &output {
                // A status in the headers is a trailers-only answer: an
                // error, or an empty stream's end.
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|code| *code < CODES.len())
                    .unwrap_or(0),
                Err(_) => 2,
            };
            stats.codes[code].fetch_add(1, Ordering::Relaxed);
            if let Ok(response) = &output
                && response.extensions().get::<Refused>().is_some()
            {
                stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            stats.latency.observe(counting.start.elapsed().as_nanos() as u64);
        }
        Poll::Ready(output)
    }
}
