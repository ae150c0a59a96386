//! Test-only fault injection, for windows too narrow to hit by chance.
//!
//! `IMAGED_TEST_STALL=POINT:MS` makes the daemon log `stalling` with the
//! point's name and sleep `MS` milliseconds each time it passes `POINT`, so
//! that a test can SIGKILL it inside that window. The points:
//! - `checkpoint`: sled has been synced and the journal not yet reset;
//! - `reopen`: sled is closed and not yet opened again;
//! - `replay`: start-up has replayed one journal entry and not the next;
//! - `journal`: a batch is about to be journaled (a stuck disk, as the
//!   watchdog must notice);
//! - `backup-chunk`: a backup's copy has read one chunk of records and
//!   not the next (writers run on meanwhile);
//! - `restore-staged`: a restore has staged and synced the new store and
//!   not yet committed it;
//! - `restore-committed`: a restore is committed and not yet in place;
//! - `restore-settle`: a restore is putting the staged files in place,
//!   between two of them;
//! - `rotation-copy`: a rotation has copied one chunk and not the next;
//! - `rotation-built`: a rotation's copy is durable and not yet swapped in;
//! - `rotation-switch`: the new generation's pointer is written and synced
//!   under its temporary name, and not yet renamed;
//! - `rotation-removal`: a rotation is swapped in and the old sled closed,
//!   and its directory not yet removed.
//!
//! `IMAGED_TEST_FAIL=POINT:N` makes the `N`th pass of `POINT` and every
//! later one fail with EIO, as a dying disk would. The one point is
//! `journal` (the journal's write).
//!
//! Unset, as it always is outside the crash tests, a point costs one load of
//! a static. It never changes what the daemon writes, only when.
//!
//! Every `fsync`, `fdatasync` and directory sync the daemon relies on goes
//! through [`sync`] under a name of its own, listed in [`SYNC_SITES`] and in
//! docs/RELIABILITY.md with the test that fails without it. Only a build
//! with the `sync-mutations` feature (never a release) can skip one, named
//! by `IMAGED_SKIP_SYNC`: `.ci/sync-mutations` removes each in turn.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

static STALL: LazyLock<Option<(String, Duration)>> = LazyLock::new(|| {
    let value = std::env::var("IMAGED_TEST_STALL").ok()?;
    let (point, ms) = value.split_once(':')?;
    Some((point.to_owned(), Duration::from_millis(ms.parse().ok()?)))
});

/// Stalls here when `IMAGED_TEST_STALL` names `point`.
pub fn point(point: &str) {
    if let Some((stalled, pause)) = &*STALL
        && stalled == point
    {
        tracing::warn!(point, "stalling (IMAGED_TEST_STALL)");
        std::thread::sleep(*pause);
    }
}

static FAIL: LazyLock<Option<(String, u64)>> = LazyLock::new(|| {
    let value = std::env::var("IMAGED_TEST_FAIL").ok()?;
    let (point, n) = value.split_once(':')?;
    Some((point.to_owned(), n.parse().ok()?))
});

static PASSES: AtomicU64 = AtomicU64::new(0);

/// Fails with EIO here when `IMAGED_TEST_FAIL` names `point` and this is
/// its `N`th pass or later.
pub fn fail(point: &str) -> std::io::Result<()> {
    if let Some((failing, from)) = &*FAIL
        && failing == point
        && PASSES.fetch_add(1, Ordering::SeqCst) + 1 >= *from
    {
        tracing::warn!(point, "failing (IMAGED_TEST_FAIL)");
        return Err(std::io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

/// Every sync site's name, as [`sync`] is called with it: the list
/// docs/RELIABILITY.md's table of syncs must cover (a unit test checks both
/// ways, and that no sync in the daemon's source bypasses [`sync`]).
pub const SYNC_SITES: &[&str] = &[
    "journal-append",
    "journal-create-dir",
    "journal-erase",
    "checkpoint-log",
    "checkpoint-blob",
    "checkpoint-blobs-dir",
    "before-open-log",
    "sled-conf",
    "sled-dir",
    "created-dir-parent",
    "format-file",
    "format-dir",
    "restore-staging-dir",
    "restore-mark-dir",
    "rotation-dir",
    "rotation-pointer-file",
    "rotation-pointer-dir",
];

/// Runs the sync `f` at the named site. In a build with the
/// `sync-mutations` feature, a site named by `IMAGED_SKIP_SYNC` is skipped
/// (logged once per pass), so that a test can show what that sync guards.
pub fn sync(site: &'static str, f: impl FnOnce() -> std::io::Result<()>) -> std::io::Result<()> {
    debug_assert!(SYNC_SITES.contains(&site), "sync site {site} is not in SYNC_SITES");
    #[cfg(feature = "sync-mutations")]
    if SKIP_SYNC.as_deref() == Some(site) {
        tracing::warn!(site, "skipping a sync (IMAGED_SKIP_SYNC)");
        return Ok(());
    }
    f()
}

#[cfg(feature = "sync-mutations")]
static SKIP_SYNC: LazyLock<Option<String>> = LazyLock::new(|| std::env::var("IMAGED_SKIP_SYNC").ok());

#[cfg(test)]
mod tests {
    use super::SYNC_SITES;

    /// Every sync in the daemon's source goes through `fault::sync` under a
    /// listed name, and the reliability document's table names each site.
    #[test]
    fn every_sync_is_a_named_site_listed_in_the_reliability_document() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut named = Vec::new();
        let mut stack = vec![src];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") || path.ends_with("fault.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                // Unit tests' own files are not the daemon's durability.
                let code = text.split("#[cfg(test)]").next().unwrap();
                let lines: Vec<&str> = code.lines().collect();
                for (n, line) in lines.iter().enumerate() {
                    let bare = ["sync_all()", "sync_data()", "sync_dir("]
                        .iter()
                        .any(|call| line.contains(call));
                    // The call may sit a few lines into the site's closure,
                    // and `sync_dir`'s own body is its callers' site.
                    let site = lines[n.saturating_sub(3)..=n]
                        .iter()
                        .any(|l| l.contains("fault::sync(") || l.contains("fn sync_dir("));
                    assert!(
                        !bare || site,
                        "{}:{}: a sync outside fault::sync: {line}",
                        path.display(),
                        n + 1
                    );
                }
                let mut rest = code;
                while let Some(at) = rest.find("fault::sync(\"") {
                    rest = &rest[at + "fault::sync(\"".len()..];
                    named.push(rest[..rest.find('"').unwrap()].to_string());
                }
            }
        }
        named.sort();
        let mut listed: Vec<String> = SYNC_SITES.iter().map(|s| s.to_string()).collect();
        listed.sort();
        assert_eq!(named, listed, "the sync sites in the source and in SYNC_SITES differ");
        let doc =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/RELIABILITY.md"))
                .unwrap();
        for site in SYNC_SITES {
            assert!(
                doc.contains(&format!("| `{site}` |")),
                "docs/RELIABILITY.md's table lacks `{site}`"
            );
        }
    }
}
