//! cutfs through the kernel: the real binary mounted on a temporary
//! directory, files written and synced with ordinary system calls, then a
//! cut; and a trap holding a write until it is released. Needs root and
//! `/dev/fuse` (CI has both, and fails without them).
//!
//! This suite is also why `cargo test --workspace` builds the `cutfs`
//! binary that `tests/power_loss.rs` mounts.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use cutfs::{Mount, can_mount};

/// How long a held write may take to be reported.
const HOLD: Duration = Duration::from_secs(10);

fn mount(dir: &Path) -> Mount {
    Mount::start(Path::new(env!("CARGO_BIN_EXE_cutfs")), dir)
}

fn sync_dir(dir: &Path) {
    File::open(dir).unwrap().sync_all().unwrap();
}

#[test]
fn a_cut_keeps_what_was_synced_and_drops_the_rest() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut fs = mount(dir.path());
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    sync_dir(dir.path());
    let kept = data.join("kept");
    fs::write(&kept, b"synced").unwrap();
    File::open(&kept).unwrap().sync_data().unwrap();
    sync_dir(&data);
    // Written after the syncs: lost at the cut.
    OpenOptions::new()
        .write(true)
        .open(&kept)
        .unwrap()
        .write_all_at(b"SYNC", 0)
        .unwrap();
    fs::write(data.join("never-synced"), b"gone").unwrap();
    let synced_file_only = data.join("name-not-synced");
    fs::write(&synced_file_only, b"data synced, name not").unwrap();
    File::open(&synced_file_only).unwrap().sync_all().unwrap();
    assert_eq!(fs::read(&kept).unwrap(), b"SYNCed");

    assert_eq!(fs.command("cut"), "ok cut files=2 dirs=1");
    assert_eq!(fs::read(&kept).unwrap(), b"synced");
    let mut names: Vec<_> = fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["kept"]);
}

#[test]
fn an_armed_write_is_held_torn_and_then_fails() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut fs = mount(dir.path());
    let file = dir.path().join("snap.1.generating");
    fs::write(&file, b"").unwrap();
    assert_eq!(fs.command("arm write snap.*.generating"), "ok armed");
    let path = file.clone();
    let writer = std::thread::spawn(move || fs::write(path, b"0123456789"));
    assert_eq!(fs.line(HOLD).as_deref(), Some("stalled Write snap.1.generating"));
    assert_eq!(fs.command("release"), "ok released");
    let written = writer.join().unwrap();
    assert_eq!(written.unwrap_err().raw_os_error(), Some(libc::EIO));
    // Half of it landed before the hold, as a torn write does.
    assert_eq!(fs::read(&file).unwrap(), b"01234");
    assert!(fs.command("arm chmod x").starts_with("error"));
}
