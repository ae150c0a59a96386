//! Which of sled's directories is the store's: its generations, and the
//! one durable decision that switches from one to the next.
//!
//! sled opens its blob files by path for as long as it is open, so an open
//! sled cannot be moved. A rotation (`rotation`) therefore builds the next
//! sled in a directory of its own, `sled.N`, and switches to it by
//! rewriting the pointer file `ENGINE`, which names the current directory:
//! written to `ENGINE.tmp`, synced, renamed over `ENGINE`, and the data
//! directory synced. Before that rename the old directory is the store;
//! after it, the new one. With no `ENGINE`, the store is `sled` (every store
//! made before rotations, and every restored one).
//!
//! Every open of the data directory ([`settle`]) removes the directories
//! the pointer does not name: a rotation a crash interrupted before its
//! switch, or an old generation a crash left behind after it. Neither holds
//! anything the current one lacks.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::barrier::sync_dir;

/// The pointer file, in the data directory.
pub const POINTER: &str = "ENGINE";
/// Its temporary name while it is rewritten.
const POINTER_TMP: &str = "ENGINE.tmp";
/// The first generation's directory, and the stem of the later ones.
pub const FIRST: &str = "sled";
/// Longest pointer file read: a directory name and a newline.
const POINTER_MAX: u64 = 64;

/// The generation number of directory name `name`: 0 for `sled`, N for
/// `sled.N`; `None` for any other name.
fn number(name: &str) -> Option<u64> {
    if name == FIRST {
        return Some(0);
    }
    let n = name.strip_prefix(FIRST)?.strip_prefix('.')?;
    // Only the canonical spelling: `sled.01` is no generation of ours.
    n.parse::<u64>().ok().filter(|v| v.to_string() == n && *v > 0)
}

/// The name of generation `n`.
fn name(n: u64) -> String {
    if n == 0 {
        FIRST.to_owned()
    } else {
        format!("{FIRST}.{n}")
    }
}

/// The name of the current generation's directory in data directory
/// `root`, as its pointer file says.
pub fn current_name(root: &Path) -> io::Result<String> {
    let path = root.join(POINTER);
    let mut text = String::new();
    match crate::store::files::no_follow().read(true).open(&path) {
        Ok(file) => {
            file.take(POINTER_MAX).read_to_string(&mut text)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FIRST.to_owned()),
        Err(e) => return Err(e),
    }
    let named = text.trim();
    match number(named) {
        Some(_) => Ok(named.to_owned()),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} holds {named:?}, not the name of a sled directory (\"{FIRST}\" or \"{FIRST}.N\"); \
                 restore the data directory from a backup",
                path.display()
            ),
        )),
    }
}

/// The current generation's directory in `root`.
pub fn current(root: &Path) -> io::Result<PathBuf> {
    Ok(root.join(current_name(root)?))
}

/// The directory the next generation is built in: one past the current.
pub fn next(root: &Path) -> io::Result<PathBuf> {
    let now = number(&current_name(root)?).unwrap_or(0);
    Ok(root.join(name(now + 1)))
}

/// Makes `dir`, a directory of `root`, the current generation: the one
/// durable decision of a rotation. The caller has made everything in `dir`
/// durable first.
pub fn switch(root: &Path, dir: &Path) -> io::Result<()> {
    let named = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| number(n).is_some() && dir.parent() == Some(root))
        .ok_or_else(|| io::Error::other(format!("{} is no sled generation of {}", dir.display(), root.display())))?;
    let tmp = root.join(POINTER_TMP);
    remove_file(&tmp)?;
    let mut file = crate::store::files::no_follow()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(format!("{named}\n").as_bytes())?;
    crate::fault::sync("rotation-pointer-file", || file.sync_all())?;
    crate::fault::point("rotation-switch");
    fs::rename(&tmp, root.join(POINTER))?;
    crate::fault::sync("rotation-pointer-dir", || sync_dir(root))
}

/// Removes every sled directory of `root` but the current one, and a
/// pointer file a crash left half written. Called on every open of the
/// data directory, with its lock held. Not synced: a power cut that brings
/// one back has it removed again at the next open.
pub fn settle(root: &Path) -> io::Result<()> {
    remove_file(&root.join(POINTER_TMP))?;
    let current = current_name(root)?;
    if current != FIRST && fs::symlink_metadata(root.join(&current)).is_err() {
        // Opening it would make an empty sled and lose the store: refused.
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} names {current}, which is missing; restore the data directory from a backup",
                root.join(POINTER).display()
            ),
        ));
    }
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let Some(found) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if found == current || number(&found).is_none() {
            continue;
        }
        tracing::warn!(
            dir = %entry.path().display(),
            current,
            "removing a sled directory that is not the store's (an unfinished rotation, or one a crash left behind)"
        );
        remove_dir(&entry.path())?;
    }
    Ok(())
}

/// Removes directory `dir` and all in it; a link in its place is removed,
/// never followed; nothing there is fine.
pub fn remove_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(dir),
        Ok(_) => fs::remove_file(dir),
    }
}

fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pointer_names_the_generation_and_settling_keeps_only_it() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        assert_eq!(current(root).unwrap(), root.join("sled"));
        assert_eq!(next(root).unwrap(), root.join("sled.1"));
        for dir in ["sled", "sled.1", "sled.2", "sledge", "sled.01"] {
            fs::create_dir(root.join(dir)).unwrap();
        }
        switch(root, &root.join("sled.1")).unwrap();
        assert_eq!(current(root).unwrap(), root.join("sled.1"));
        assert_eq!(next(root).unwrap(), root.join("sled.2"));
        fs::write(root.join(POINTER_TMP), "sled.2\n").unwrap();
        settle(root).unwrap();
        let mut left: Vec<String> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        // Names that are no generation of ours are left alone.
        assert_eq!(left, ["ENGINE", "sled.01", "sled.1", "sledge"]);
        // Only a generation of `root` can be switched to.
        assert!(switch(root, Path::new("/tmp/sled.3")).is_err());
        assert!(switch(root, &root.join("sledge")).is_err());
        // A pointer that names a missing generation is refused.
        fs::remove_dir(root.join("sled.1")).unwrap();
        let err = settle(root).unwrap_err().to_string();
        assert!(err.contains("names sled.1, which is missing"), "{err}");
        // A pointer that names nothing of ours is refused, naming it.
        fs::write(root.join(POINTER), "../etc\n").unwrap();
        let err = current(root).unwrap_err().to_string();
        assert!(err.contains("\"../etc\"") && err.contains("ENGINE"), "{err}");
    }
}
