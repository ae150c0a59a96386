//! Counting gRPC calls: a tower layer in front of every service (outside
//! the access layer, so refusals count too) that looks the method up in a
//! table made once at start, and counts the call's code and latency in
//! atomics of the calling thread's shard. No lock, no allocation and no
//! contended cache line on a call's path.
//!
//! A call is counted when its response starts: a unary call's code and
//! latency are the call's; a stream's are those it started with (an error
//! before the first message, or OK).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use prost::Message;
use tonic::codegen::http;

use crate::access::layer::Refused;
use crate::stats::{CALL_SHARDS, Histogram, LATENCY_NANOS, Sharded};

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
    counts: Sharded<Counts>,
    /// Time to the response, in nanoseconds.
    pub latency: Histogram,
}

/// One shard of a method's call counts.
#[derive(Debug, Default)]
struct Counts {
    /// By code.
    codes: [AtomicU64; 17],
    /// Refused by the access policy.
    refused: AtomicU64,
}

impl MethodStats {
    fn new(service: &str, method: &str) -> MethodStats {
        MethodStats {
            service: service.to_owned(),
            method: method.to_owned(),
            counts: Sharded::new(CALL_SHARDS),
            latency: Histogram::sharded(LATENCY_NANOS, CALL_SHARDS),
        }
    }

    /// Calls answered with each code, by the code's number.
    pub fn codes(&self) -> [u64; 17] {
        let mut codes = [0; 17];
        for shard in self.counts.iter() {
            for (total, n) in codes.iter_mut().zip(&shard.codes) {
                *total += n.load(Ordering::Relaxed);
            }
        }
        codes
    }

    /// Calls the access policy refused.
    pub fn refused(&self) -> u64 {
        self.counts.iter().map(|s| s.refused.load(Ordering::Relaxed)).sum()
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
                        if let std::collections::hash_map::Entry::Vacant(slot) = by_path.entry(path) {
                            slot.insert(methods.len());
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
    stats: Option<&'static GrpcStats>,
}

impl MetricsLayer {
    /// Counts into `stats`, or nothing when metrics are off. The stats live
    /// as long as the process (they are made once, at start), so a call
    /// holds them with no reference count to touch.
    pub fn new(stats: Option<&'static GrpcStats>) -> MetricsLayer {
        MetricsLayer { stats }
    }
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            stats: self.stats,
        }
    }
}

/// A service whose calls are counted.
#[derive(Debug, Clone)]
pub struct Measured<S> {
    inner: S,
    stats: Option<&'static GrpcStats>,
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
        let counting = self.stats.map(|stats| Counting {
            method: &stats.methods[stats.index(request.uri().path())],
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
    method: &'static MethodStats,
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
            let stats = counting.method;
            let counts = stats.counts.local();
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
            counts.codes[code].fetch_add(1, Ordering::Relaxed);
            if let Ok(response) = &output
                && response.extensions().get::<Refused>().is_some()
            {
                counts.refused.fetch_add(1, Ordering::Relaxed);
            }
            stats.latency.observe(counting.start.elapsed().as_nanos() as u64);
        }
        Poll::Ready(output)
    }
}
