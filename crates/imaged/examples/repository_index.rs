//! Times the build of the repository index on a stopped store: what the
//! first open of a store written before imaged kept repositories (format
//! 4) adds to its start. The build removes the index and makes it again
//! from the image records, exactly as that open does.
//!
//! `cargo run --release -p imaged --example repository_index -- DATA_DIR`
//!
//! The store must have been stopped cleanly (its journal empty), as a
//! daemon leaves it at SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Instant;

use imaged::store::layout::{Backend, TreeId};

imaged::global_allocator!();

/// The sled directory in use: the one `ENGINE` names, else `sled/`.
fn current_sled(root: &Path) -> PathBuf {
    match std::fs::read_to_string(root.join("ENGINE")) {
        Ok(name) => root.join(name.trim()),
        Err(_) => root.join("sled"),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args().nth(1).ok_or("usage: repository_index DATA_DIR")?;
    let backend = Backend::open(&current_sled(Path::new(&root)), 256 << 20)?;
    let images = backend.iter(TreeId::Images).count();
    let start = Instant::now();
    imaged::store::repositories::build(&backend, true)?;
    let built = start.elapsed();
    backend.flush()?;
    println!(
        "| {images} | {:.2} s | {:.0}/s |",
        built.as_secs_f64(),
        images as f64 / built.as_secs_f64()
    );
    Ok(())
}
