//! The `imaged` binary's offline commands, run on a stopped daemon's data
//! directory: `check`, `repair` and `restore`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use imaged::store::{SledCache, Store, StoreOptions};
use imaged_types::words::counted;

/// sled's cache: `cache_mb` when given, else the default that grows with
/// the store.
fn sled_cache(cache_mb: Option<u64>) -> SledCache {
    cache_mb.map_or(StoreOptions::default().sled_cache, |mb| SledCache::fixed(mb << 20))
}

/// `imaged check`: opens the store (taking its lock, so the daemon must be
/// stopped), verifies it and prints a report.
pub fn check(root: PathBuf, cache_mb: Option<u64>) -> ExitCode {
    let options = StoreOptions {
        sled_cache: sled_cache(cache_mb),
        ..StoreOptions::default()
    };
    let result = Store::open(&root, &options)
        .map_err(|e| e.to_string())
        .and_then(|store| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let report = store.check().await.map_err(|e| e.to_string());
                store.close().await;
                report
            })
        });
    match result {
        Ok(report) => {
            println!(
                "checked {}, {}, {} in {}",
                counted(report.images, "image", "images"),
                counted(report.index_entries, "index entry", "index entries"),
                counted(report.namespaces, "namespace", "namespaces"),
                root.display()
            );
            for problem in &report.problems {
                println!("problem: {problem}");
            }
            if report.problem_count == 0 {
                println!("ok");
                ExitCode::SUCCESS
            } else {
                println!("{}", counted(report.problem_count, "problem", "problems"));
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("imaged check: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `imaged repair`: says what the journal's damage costs, and with `yes`
/// repairs it. Exits 0 when the store needs no repair or was repaired, 1 on
/// an error, and 2 when a repair is needed and was not made.
pub fn repair(root: PathBuf, cache_mb: Option<u64>, yes: bool) -> ExitCode {
    let options = StoreOptions {
        sled_cache: sled_cache(cache_mb),
        ..StoreOptions::default()
    };
    match imaged::store::repair(&root, &options, yes) {
        Ok(report) => match report.loses {
            None => {
                println!(
                    "the journal of {} is whole: nothing to repair (revision {})",
                    root.display(),
                    report.keeps
                );
                ExitCode::SUCCESS
            }
            Some((from, to)) if report.repaired => {
                println!(
                    "repaired {}: it holds revisions up to {}; revisions {from}..={to} were lost. Run `imaged check`",
                    root.display(),
                    report.keeps
                );
                ExitCode::SUCCESS
            }
            Some((from, to)) => {
                println!(
                    "the journal of {} is damaged. A repair keeps every revision up to {} and loses revisions \
                     {from}..={to}, acknowledged after the damage. Restore a backup instead if you have one; \
                     else run `imaged repair --root {} --yes` to make the repair",
                    root.display(),
                    report.keeps,
                    root.display()
                );
                ExitCode::from(2)
            }
        },
        Err(e) => {
            eprintln!("imaged repair: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `imaged restore`: restores backup `file` into `root`, all or nothing.
pub fn restore(root: PathBuf, cache_mb: Option<u64>, file: &Path, force: bool) -> ExitCode {
    let input: Box<dyn std::io::Read> = if file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        match std::fs::File::open(file) {
            Ok(f) => Box::new(std::io::BufReader::with_capacity(1 << 20, f)),
            Err(e) => {
                eprintln!("imaged restore: opening {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        }
    };
    // The store is written whole: a page cache at the daemon's largest
    // keeps sled from re-reading what it just wrote.
    let cache = cache_mb.map_or(SledCache::fixed(StoreOptions::default().sled_cache.max_bytes), |mb| {
        SledCache::fixed(mb << 20)
    });
    match imaged::backup::restore(&root, input, force, cache) {
        Ok(restored) => {
            println!(
                "restored {} in {} into {} (the copy began at revision {}), at revision {}",
                counted(restored.images, "image", "images"),
                counted(restored.namespaces, "namespace", "namespaces"),
                root.display(),
                restored.began,
                restored.revision
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imaged restore: {e}");
            ExitCode::FAILURE
        }
    }
}
