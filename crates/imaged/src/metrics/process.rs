//! The process metrics, with the names Prometheus' own clients use: read
//! from `/proc/self` at each scrape.

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Unit;

use super::gauge;

/// Encodes the process's memory, descriptors, threads and CPU time; a
/// figure `/proc` does not give is left out.
pub fn encode(encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096);
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let bytes = Unit::Bytes;
    let seconds = Unit::Seconds;
    if let Some(rss) = statm_field(1) {
        gauge(
            encoder,
            "process_resident_memory",
            "Resident memory size",
            Some(&bytes),
            rss * page,
        )?;
    }
    if let Some(vsize) = statm_field(0) {
        gauge(
            encoder,
            "process_virtual_memory",
            "Virtual memory size",
            Some(&bytes),
            vsize * page,
        )?;
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            encoder,
            "process_open_fds",
            "Open file descriptors",
            None,
            fds.count() as i64,
        )?;
    }
    if let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let max = i64::try_from(hard).unwrap_or(i64::MAX);
        gauge(
            encoder,
            "process_max_fds",
            "Most open file descriptors allowed",
            None,
            max,
        )?;
    }
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold
    // spaces: field 3 (state) is the first.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    if let Some(threads) = field(20) {
        gauge(encoder, "process_threads", "OS threads", None, threads as i64)?;
    }
    if let (Some(user), Some(system)) = (field(14), field(15)) {
        let metric = encoder.encode_descriptor(
            "process_cpu",
            "User and system CPU time spent",
            Some(&seconds),
            prometheus_client::metrics::MetricType::Counter,
        )?;
        prometheus_client::encoding::EncodeMetric::encode(
            &prometheus_client::metrics::counter::ConstCounter::new((user + system) as f64 / ticks),
            metric,
        )?;
    }
    if let (Some(start), Some(boot)) = (field(22), boot_time()) {
        let at = boot + (start as f64 / ticks) as i64;
        gauge(
            encoder,
            "process_start_time",
            "When the process started, since the Unix epoch",
            Some(&seconds),
            at,
        )?;
    }
    Ok(())
}

/// Field `n` of `/proc/self/statm`, in pages.
fn statm_field(n: usize) -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    statm.split_whitespace().nth(n)?.parse().ok()
}

/// When the system booted, in seconds since the Unix epoch.
fn boot_time() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}
