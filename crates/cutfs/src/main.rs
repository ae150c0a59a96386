//! `cutfs MOUNTPOINT`: mounts an empty in-memory file system that models a
//! disk losing power, for the power-loss tests (in the manner of Jepsen's
//! LazyFS). What it keeps across a cut is in [`model`]; how kernel requests
//! reach it is in [`fs`].
//!
//! It takes one command per line on standard input and answers each with a
//! line starting `ok` (or `error`) on standard output:
//! - `cut`: drop everything not synced; says how many files and
//!   directories went back;
//! - `cut subset SEED`, `cut prefix SEED`, `cut torn SEED`, `cut metadata
//!   SEED`: the same, but keep a random subset of each file's unsynced
//!   writes, a random in-order prefix of them, a prefix and a torn part of
//!   the next one, or a prefix of the unsynced entry changes (see
//!   [`model::Cut`]);
//! - `arm OP PATTERN`: hold the next `write`, `rename` or `unlink` of a
//!   name matching `PATTERN` (one `*` allowed). When it comes, `stalled OP
//!   NAME` is printed and every request waits behind it. A held write lands
//!   half its bytes first, as a torn write does;
//! - `disarm`; `release`: the held operation fails with EIO;
//! - `quit`, or the end of input: unmount and exit.

mod fs;
mod model;

use std::io::BufRead;
use std::sync::{Arc, Mutex};

use fs::{CutFs, Op, Stall, Trap, say};
use fuser::{Config, MountOption};
use model::{Cut, Tree};

fn main() {
    let Some(mountpoint) = std::env::args_os().nth(1) else {
        eprintln!("usage: cutfs MOUNTPOINT");
        std::process::exit(2);
    };
    let uid = unsafe { libc::getuid() };
    let gid = unsafe { libc::getgid() };
    let tree = Arc::new(Mutex::new(Tree::new(uid, gid)));
    let stall = Arc::new(Stall::default());
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("cutfs".into()), MountOption::DefaultPermissions];
    let session = match fuser::spawn_mount(CutFs::new(tree.clone(), stall.clone()), &mountpoint, &config) {
        Ok(session) => session,
        Err(e) => {
            eprintln!("cutfs: mounting {}: {e}", mountpoint.to_string_lossy());
            std::process::exit(1);
        }
    };
    say("ok mounted");
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["cut", rest @ ..] => match cut_mode(rest) {
                Some(mode) => {
                    let lost = tree.lock().unwrap().cut(mode);
                    say(&format!("ok cut files={} dirs={}", lost.files, lost.dirs));
                }
                None => say(&format!("error: unknown cut {line:?}")),
            },
            ["arm", op, pattern] => match trap(op, pattern) {
                Some(trap) => {
                    stall.arm(Some(trap));
                    say("ok armed");
                }
                None => say(&format!("error: cannot arm {op} {pattern}")),
            },
            ["disarm"] => {
                stall.arm(None);
                say("ok disarmed");
            }
            ["release"] => {
                stall.release();
                say("ok released");
            }
            ["quit"] => break,
            _ => say(&format!("error: unknown command {line:?}")),
        }
    }
    stall.arm(None);
    stall.release();
    drop(session);
}

/// `cut`'s arguments as a mode.
fn cut_mode(words: &[&str]) -> Option<Cut> {
    let seed = |s: &str| s.parse::<u64>().ok();
    Some(match words {
        [] => Cut::All,
        ["subset", s] => Cut::Subset(seed(s)?),
        ["prefix", s] => Cut::Prefix(seed(s)?),
        ["torn", s] => Cut::Torn(seed(s)?),
        ["metadata", s] => Cut::Metadata(seed(s)?),
        _ => return None,
    })
}

/// `arm`'s arguments as a trap.
fn trap(op: &str, pattern: &str) -> Option<Trap> {
    let op = match op {
        "write" => Op::Write,
        "rename" => Op::Rename,
        "unlink" => Op::Unlink,
        _ => return None,
    };
    let (prefix, suffix) = pattern.split_once('*').unwrap_or((pattern, ""));
    if suffix.contains('*') {
        return None;
    }
    Some(Trap {
        op,
        prefix: prefix.into(),
        suffix: suffix.into(),
    })
}
