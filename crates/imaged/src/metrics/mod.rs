//! Prometheus metrics: what the daemon counts ([`crate::stats`], and
//! [`grpc`] for calls) and what it reads at each scrape (images per
//! namespace, bytes on disk, revisions, watchers, the process), encoded
//! with `prometheus-client`, and served by [`http`] on the optional
//! `metrics_address`.
//!
//! The exposition is OpenMetrics when the scraper asks for it (Prometheus
//! does), and Prometheus' text format 0.0.4 otherwise (what `promtool check
//! metrics` and curl get). docs/OPERATIONS.md lists every metric.

pub mod grpc;
pub mod http;
mod process;

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::feed::Feed;
use crate::shares::{Resource, Shares};
use crate::stats::{Histogram, Snapshot};
use crate::store::Store;
use grpc::{CODES, GrpcStats};

/// Everything the metrics read.
struct Sources {
    grpc: &'static GrpcStats,
    store: Store,
    feed: Feed,
    shares: Shares,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

/// The daemon's metrics, ready to encode.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// The metrics of `store`, `feed`, `shares` and the calls counted in
    /// `grpc`.
    pub fn new(grpc: &'static GrpcStats, store: Store, feed: Feed, shares: Shares) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Sources {
            grpc,
            store,
            feed,
            shares,
        }));
        Metrics { registry }
    }

    /// The exposition: OpenMetrics when `openmetrics`, else Prometheus'
    /// text format 0.0.4. Blocking: it reads the store's counters.
    pub fn render(&self, openmetrics: bool) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(error = %e, "encoding the metrics failed");
        }
        if openmetrics { text } else { to_prometheus_text(&text) }
    }
}

/// OpenMetrics text as Prometheus' 0.0.4 format: the same samples, with a
/// counter's HELP and TYPE named as its `_total` samples, and without the
/// `# UNIT` and `# EOF` lines that format does not have.
fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let lines: Vec<&str> = openmetrics.lines().collect();
    let counters: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    for line in lines {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(&name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(&line),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_calls(&mut encoder)?;
        self.encode_store(&mut encoder)?;
        self.encode_feed(&mut encoder)?;
        self.encode_shares(&mut encoder)?;
        process::encode(&mut encoder)
    }
}

impl Sources {
    fn encode_calls(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let methods = self.grpc.methods();
        let mut calls = encoder.encode_descriptor(
            "imaged_grpc_requests",
            "gRPC calls answered, by service, method and status code",
            None,
            MetricType::Counter,
        )?;
        for m in methods {
            for (code, n) in CODES.iter().zip(m.codes()) {
                if n > 0 {
                    let labels = [("service", m.service.as_str()), ("method", &m.method), ("code", code)];
                    ConstCounter::new(n).encode(calls.encode_family(&labels)?)?;
                }
            }
        }
        let seconds = Unit::Seconds;
        let mut latency = encoder.encode_descriptor(
            "imaged_grpc_request_duration",
            "Time from a gRPC call's arrival to its response, by service and method",
            Some(&seconds),
            MetricType::Histogram,
        )?;
        for m in methods.iter().filter(|m| m.latency.snapshot().count > 0) {
            let labels = [("service", m.service.as_str()), ("method", &m.method)];
            encode_histogram(latency.encode_family(&labels)?, &m.latency, 1e-9)?;
        }
        let mut refused = encoder.encode_descriptor(
            "imaged_access_refusals",
            "Calls the access policy refused, by service and method",
            None,
            MetricType::Counter,
        )?;
        for m in methods {
            let n = m.refused();
            if n > 0 {
                let labels = [("service", m.service.as_str()), ("method", &m.method)];
                ConstCounter::new(n).encode(refused.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn encode_store(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.store.stats();
        let seconds = Unit::Seconds;
        let bytes = Unit::Bytes;
        let histograms = [
            (
                "imaged_commit_batch_jobs",
                "Writes made durable together by one group commit (one journal entry)",
                None,
                &stats.batch_jobs,
                1.0,
            ),
            (
                "imaged_journal_sync_duration",
                "Time to append one entry to the journal and fdatasync it",
                Some(&seconds),
                &stats.journal_sync,
                1e-9,
            ),
            (
                "imaged_checkpoint_duration",
                "Time of one checkpoint: sled's full durability barrier",
                Some(&seconds),
                &stats.checkpoint,
                1e-9,
            ),
        ];
        for (name, help, unit, histogram, scale) in histograms {
            let metric = encoder.encode_descriptor(name, help, unit, MetricType::Histogram)?;
            encode_histogram(metric, histogram, scale)?;
        }
        let mut images =
            encoder.encode_descriptor("imaged_images", "Images held, by namespace", None, MetricType::Gauge)?;
        match self.store.namespace_counts() {
            Ok(counts) => {
                for (namespace, n) in &counts {
                    let labels = [("namespace", namespace.as_str())];
                    ConstGauge::new(*n as i64).encode(images.encode_family(&labels)?)?;
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read the namespace counters"),
        }
        let (journal, engine) = self.store.bytes_on_disk();
        let mut disk = encoder.encode_descriptor(
            "imaged_store_disk",
            "Bytes the store's files take on disk, by part: the journal and sled's files",
            Some(&bytes),
            MetricType::Gauge,
        )?;
        for (part, n) in [("journal", journal), ("sled", engine)] {
            ConstGauge::new(n as i64).encode(disk.encode_family(&[("part", part)])?)?;
        }
        let rotations = self.store.rotations().borrow().clone();
        let mut rotated = encoder.encode_descriptor(
            "imaged_engine_rotations",
            "Rotations of sled (a fresh copy built in the background and swapped in), by result: done, or \
             abandoned (a full disk, an I/O error; serving went on)",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [("done", rotations.done), ("abandoned", rotations.abandoned)] {
            ConstCounter::new(n).encode(rotated.encode_family(&[("result", result)])?)?;
        }
        gauge(
            encoder,
            "imaged_engine_rotating",
            "1 while a rotation of sled runs",
            None,
            i64::from(rotations.running),
        )?;
        gauge(
            encoder,
            "imaged_change_log",
            "Bytes the change log holds (keys and entries), as its compactor last counted",
            Some(&bytes),
            self.store.change_log_bytes() as i64,
        )?;
        let gauges = [
            (
                "imaged_revision",
                "The store-wide revision: every change up to it is applied",
                self.store.revision(),
            ),
            (
                "imaged_change_log_compacted_revision",
                "The change log's compaction mark: a watch can start from it or later",
                self.store.compacted(),
            ),
            (
                "imaged_store_writable",
                "1 while the store takes writes, 0 after a storage failure",
                u64::from(self.store.writable()),
            ),
        ];
        for (name, help, value) in gauges {
            gauge(encoder, name, help, None, value as i64)?;
        }
        Ok(())
    }

    fn encode_shares(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let families = [
            (
                "imaged_share_held",
                "What callers hold of each shared resource, all uids together",
                MetricType::Gauge,
            ),
            (
                "imaged_share_limit",
                "Each shared resource's daemon-wide bound",
                MetricType::Gauge,
            ),
            (
                "imaged_share_refusals",
                "Takes of a shared resource refused at a bound (a uid's share, the admins' reserve or the total)",
                MetricType::Counter,
            ),
        ];
        for (i, (name, help, kind)) in families.into_iter().enumerate() {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for resource in Resource::ALL {
                let pool = self.shares.pool(resource);
                let labels = [("resource", resource.settings().0)];
                let value = [pool.held(), pool.bound().total, pool.refused()][i];
                match kind {
                    MetricType::Counter => ConstCounter::new(value).encode(family.encode_family(&labels)?)?,
                    _ => ConstGauge::new(value.min(i64::MAX as u64) as i64).encode(family.encode_family(&labels)?)?,
                }
            }
        }
        let (waited, refused) = self.shares.queue().counts();
        let (seated, queued) = self.shares.queue().occupancy();
        for (name, help, value) in [
            (
                "imaged_list_queue_waited",
                "Expensive requests that waited for a seat of the fair queue",
                waited,
            ),
            (
                "imaged_list_queue_refusals",
                "Expensive requests the fair queue refused at a bound",
                refused,
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        gauge(
            encoder,
            "imaged_list_queue_seated",
            "Expensive requests holding a seat now",
            None,
            seated as i64,
        )?;
        gauge(
            encoder,
            "imaged_list_queue_waiting",
            "Expensive requests waiting for a seat now",
            None,
            queued as i64,
        )?;
        Ok(())
    }

    fn encode_feed(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.feed.stats();
        let mut attached = encoder.encode_descriptor(
            "imaged_watchers",
            "Change-feed readers attached: seed API watches and containerd event subscriptions",
            None,
            MetricType::Gauge,
        )?;
        for (api, n) in [("watch", &stats.watches), ("subscribe", &stats.subscriptions)] {
            ConstGauge::new(n.load(Ordering::Relaxed) as i64).encode(attached.encode_family(&[("api", api)])?)?;
        }
        let counters = [
            (
                "imaged_watch_events_delivered",
                "Change events handed to watchers and subscribers (before each one's filter)",
                &stats.delivered,
            ),
            (
                "imaged_watchers_ended_slow",
                "Watchers and subscribers ended for falling too far behind the writers",
                &stats.ended_slow,
            ),
        ];
        for (name, help, n) in counters {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(n.load(Ordering::Relaxed)).encode(metric)?;
        }
        Ok(())
    }
}

/// Encodes one gauge without labels.
fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, value: i64) -> std::fmt::Result {
    let metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

/// Encodes `histogram`, whose observations times `scale` are in the
/// metric's unit.
fn encode_histogram(
    mut metric: prometheus_client::encoding::MetricEncoder<'_>,
    histogram: &Histogram,
    scale: f64,
) -> std::fmt::Result {
    let Snapshot { sum, count, buckets } = histogram.snapshot();
    let buckets: Vec<(f64, u64)> = buckets
        .into_iter()
        .map(|(bound, n)| (bound.map_or(f64::INFINITY, |b| b as f64 * scale), n))
        .collect();
    metric.encode_histogram::<NoLabelSet>(sum as f64 * scale, count, &buckets, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_samples_in_the_prometheus_text() {
        let openmetrics = "# HELP a_x Things.\n# TYPE a_x counter\na_x_total 3\n# HELP b_y Time.\n# TYPE b_y_seconds gauge\n# UNIT b_y_seconds seconds\nb_y_seconds 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(openmetrics),
            "# HELP a_x_total Things.\n# TYPE a_x_total counter\na_x_total 3\n# HELP b_y Time.\n# TYPE b_y_seconds gauge\nb_y_seconds 1\n"
        );
    }
}
