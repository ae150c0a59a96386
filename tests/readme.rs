//! The README's tour, run as pasted: every `sh` block of its "Tour"
//! section, in order, in one bash with `set -euo pipefail`, with the built
//! `imaged` and `imagectl` first on `PATH`. The `ctr` block needs Debian's
//! `ctr`: without it the block is skipped, except under `CI=true`, where
//! the test fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{binary, have_ctr};

/// Where the tour keeps its socket and data, as the README says.
const TOUR_DIR: &str = "/tmp/imaged-tour";

/// The `sh` blocks of the README section headed `## Tour`, in order.
fn tour_blocks(readme: &str) -> Vec<String> {
    let start = readme.find("\n## Tour\n").expect("the README has a Tour section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |at| at + 3);
    let section = &rest[..end];
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        if line.trim_end() == "```sh" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim_end() != "```").collect();
            blocks.push(block.join("\n"));
        }
    }
    blocks
}

/// Stops a daemon the tour left running (it stops its own when it passes).
fn stop_leftover(root: &Path) {
    let Ok(pid) = std::fs::read_to_string(root.join("lock")) else {
        return;
    };
    if let Ok(pid) = pid.trim().parse::<i32>() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

#[test]
fn the_readme_tour_runs_as_pasted() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let blocks = tour_blocks(&readme);
    assert!(blocks.len() >= 4, "the tour has {} sh blocks", blocks.len());
    let with_ctr = have_ctr();
    let mut script = String::from("set -euo pipefail\n");
    let mut ran = 0;
    for block in &blocks {
        if block.contains("ctr --address") && !with_ctr {
            continue;
        }
        script.push_str(block);
        script.push('\n');
        ran += 1;
    }

    let imaged = binary(None, "imaged");
    let imagectl = binary(option_env!("CARGO_BIN_EXE_imagectl"), "imagectl");
    let bin_dirs: Vec<PathBuf> = [imaged, imagectl]
        .iter()
        .map(|b| b.parent().unwrap().to_owned())
        .collect();
    let path = std::env::join_paths(
        bin_dirs
            .into_iter()
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();

    // "From a fresh start".
    let tour = Path::new(TOUR_DIR);
    stop_leftover(&tour.join("data"));
    let _ = std::fs::remove_dir_all(tour);
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("PATH", path)
        .env_remove("IMAGED_ADDRESS")
        .env_remove("IMAGED_NAMESPACE")
        .output()
        .unwrap();
    stop_leftover(&tour.join("data"));
    let log = std::fs::read_to_string(tour.join("log")).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the tour failed ({:?}) after {ran} blocks:\n--- stdout\n{stdout}\n--- stderr\n{}\n--- daemon log\n{log}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    // What the tour shows is what it says it shows.
    assert!(stdout.contains("docker.io/library/redis:7"), "{stdout}");
    assert!(stdout.contains("\"env\": \"prod\""), "{stdout}");
    assert!(stdout.lines().any(|l| l.trim() == "team=a"), "{stdout}");
    if with_ctr {
        assert!(stdout.contains("docker.io/library/redis:latest"), "{stdout}");
        assert!(stdout.contains("owner=alice,tier=1"), "{stdout}");
    }
    // The daemon stopped cleanly at the end of the tour.
    assert!(log.contains("imaged stopped"), "{log}");
    let _ = std::fs::remove_dir_all(tour);
}

/// The README's Rust program is the client's `readme` example, word for
/// word from its `use` lines: `cargo test` builds the example, so the
/// README's program compiles, and the client's tests run it.
#[test]
fn the_readme_rust_program_is_the_built_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme.find("\n```rust\n").expect("the README shows a Rust program") + "\n```rust\n".len();
    let shown = &readme[start..start + readme[start..].find("```\n").unwrap()];
    let example = std::fs::read_to_string(root.join("crates/imaged-client/examples/readme.rs")).unwrap();
    let body = &example[example.find("use ").unwrap()..];
    assert_eq!(shown, body, "README.md's Rust program differs from examples/readme.rs");
}
