//! The in-memory file tree and its durability rules: what a power cut keeps.
//!
//! Every file holds two contents: what has been written (what reads see) and
//! what was last synced. Every directory holds two entry tables in the same
//! way. The rules are POSIX's, strictly:
//! - `fsync`/`fdatasync` of a file makes its contents and size durable, and
//!   nothing else: not its name in its directory;
//! - `fsync` of a directory makes its entries durable: creations, removals
//!   and renames in it;
//! - nothing else is durable. `sync_file_range` never reaches a FUSE file
//!   system, so it makes nothing durable either, which is the worst a disk
//!   with a volatile write cache can do.
//!
//! A [`Tree::cut`] puts every file and directory back to what was synced.
//! Modes, owners and times are kept as they are (a simplification: the
//! store under test never depends on them surviving).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};

/// The root directory's inode number, as FUSE requires.
pub const ROOT: u64 = 1;

/// Past this many separate dirty ranges a file tracks one range covering
/// them all, so a file written all over costs one copy at its next sync.
const MAX_RANGES: usize = 256;

/// What an inode is.
#[derive(Debug)]
pub enum Body {
    /// A regular file.
    File {
        /// What reads see.
        data: Vec<u8>,
        /// What survives a cut.
        synced: Vec<u8>,
        /// Byte ranges of `data` written since the last sync.
        dirty: Vec<(usize, usize)>,
    },
    /// A directory.
    Dir {
        /// Name → inode, as lookups see it.
        entries: BTreeMap<OsString, u64>,
        /// Name → inode, as a cut leaves it.
        synced: BTreeMap<OsString, u64>,
    },
}

/// One inode.
#[derive(Debug)]
pub struct Node {
    /// File or directory, with its contents.
    pub body: Body,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// The name it was last given, for matching stall patterns.
    pub name: OsString,
    /// Its directory when it was last given a name.
    pub parent: u64,
}

/// Why an operation on the tree failed, as an errno.
pub type Errno = i32;

/// The whole file system. Inodes are never freed: a cut may bring back an
/// entry for an inode that was unlinked since its directory's last sync.
#[derive(Debug)]
pub struct Tree {
    nodes: Vec<Node>,
}

/// What a cut threw away.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lost {
    /// Files whose contents went back to an older version.
    pub files: usize,
    /// Directories whose entries went back to an older version.
    pub dirs: usize,
}

impl Tree {
    /// A tree holding one empty root directory, owned by `uid`:`gid`, whose
    /// (empty) entries count as synced.
    pub fn new(uid: u32, gid: u32) -> Tree {
        let placeholder = Node::dir(0o755, 0, 0, OsString::new(), 0);
        let root = Node::dir(0o755, uid, gid, OsString::from("/"), ROOT);
        Tree {
            nodes: vec![placeholder, root],
        }
    }

    /// The inode `ino`.
    pub fn node(&self, ino: u64) -> Result<&Node, Errno> {
        match self.nodes.get(ino as usize) {
            Some(node) if ino != 0 => Ok(node),
            _ => Err(libc::ENOENT),
        }
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        match self.nodes.get_mut(ino as usize) {
            Some(node) if ino != 0 => Ok(node),
            _ => Err(libc::ENOENT),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match &mut self.node_mut(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            Body::File { .. } => Err(libc::ENOTDIR),
        }
    }

    /// The entries of directory `dir`.
    pub fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match &self.node(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            Body::File { .. } => Err(libc::ENOTDIR),
        }
    }

    /// The inode named `name` in `dir`.
    pub fn lookup(&self, dir: u64, name: &OsStr) -> Result<u64, Errno> {
        self.entries(dir)?.get(name).copied().ok_or(libc::ENOENT)
    }

    /// Makes a new file (`dir == false`) or directory named `name` in
    /// `parent`; EEXIST if the name is taken.
    pub fn make(&mut self, parent: u64, name: &OsStr, dir: bool, mode: u32, uid: u32, gid: u32) -> Result<u64, Errno> {
        if self.entries(parent)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.nodes.len() as u64;
        let node = if dir {
            Node::dir(mode, uid, gid, name.to_owned(), parent)
        } else {
            Node::file(mode, uid, gid, name.to_owned(), parent)
        };
        self.nodes.push(node);
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Removes `name` from `parent`: a file when `dir` is false, an empty
    /// directory when it is true.
    pub fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        match (&self.node(ino)?.body, dir) {
            (Body::Dir { entries, .. }, true) if !entries.is_empty() => return Err(libc::ENOTEMPTY),
            (Body::Dir { .. }, false) => return Err(libc::EISDIR),
            (Body::File { .. }, true) => return Err(libc::ENOTDIR),
            _ => {}
        }
        self.entries_mut(parent)?.remove(name);
        Ok(())
    }

    /// Renames `from/name` to `to/new_name`, replacing a file there (or an
    /// empty directory, for a directory) unless `no_replace`.
    pub fn rename(
        &mut self,
        from: u64,
        name: &OsStr,
        to: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(from, name)?;
        if let Ok(existing) = self.lookup(to, new_name) {
            if no_replace {
                return Err(libc::EEXIST);
            }
            if existing == ino {
                return Ok(());
            }
            let moving_dir = matches!(self.node(ino)?.body, Body::Dir { .. });
            match &self.node(existing)?.body {
                Body::Dir { entries, .. } if !moving_dir || !entries.is_empty() => {
                    return Err(if moving_dir { libc::ENOTEMPTY } else { libc::EISDIR });
                }
                Body::File { .. } if moving_dir => return Err(libc::ENOTDIR),
                _ => {}
            }
        }
        self.entries(to)?;
        self.entries_mut(from)?.remove(name);
        self.entries_mut(to)?.insert(new_name.to_owned(), ino);
        let node = self.node_mut(ino)?;
        node.name = new_name.to_owned();
        node.parent = to;
        Ok(())
    }

    /// Reads up to `size` bytes of file `ino` from `offset`.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> Result<&[u8], Errno> {
        match &self.node(ino)?.body {
            Body::File { data, .. } => {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                Ok(&data[start..end])
            }
            Body::Dir { .. } => Err(libc::EISDIR),
        }
    }

    /// Writes `bytes` into file `ino` at `offset`, zero-filling any gap.
    pub fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> Result<(), Errno> {
        let Body::File { data, dirty, .. } = &mut self.node_mut(ino)?.body else {
            return Err(libc::EISDIR);
        };
        let start = usize::try_from(offset).map_err(|_| libc::EFBIG)?;
        let end = start.checked_add(bytes.len()).ok_or(libc::EFBIG)?;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(bytes);
        mark(dirty, start, end);
        Ok(())
    }

    /// Sets file `ino`'s size, as `ftruncate` does.
    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let Body::File { data, dirty, .. } = &mut self.node_mut(ino)?.body else {
            return Err(libc::EISDIR);
        };
        let size = usize::try_from(size).map_err(|_| libc::EFBIG)?;
        let old = data.len();
        data.resize(size, 0);
        mark(dirty, old.min(size), old.max(size));
        Ok(())
    }

    /// Sets the mode bits and owner of `ino` where given.
    pub fn set_meta(&mut self, ino: u64, mode: Option<u32>, uid: Option<u32>, gid: Option<u32>) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        if let Some(mode) = mode {
            node.mode = mode & 0o7777;
        }
        node.uid = uid.unwrap_or(node.uid);
        node.gid = gid.unwrap_or(node.gid);
        Ok(())
    }

    /// `fsync` of `ino`: a file's contents, or a directory's entries,
    /// become what a cut keeps.
    pub fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        match &mut self.node_mut(ino)?.body {
            Body::File { data, synced, dirty } => {
                synced.resize(data.len(), 0);
                for (start, end) in dirty.drain(..) {
                    let end = end.min(data.len());
                    if start < end {
                        synced[start..end].copy_from_slice(&data[start..end]);
                    }
                }
            }
            Body::Dir { entries, synced } => synced.clone_from(entries),
        }
        Ok(())
    }

    /// The power cut: everything not synced is lost.
    pub fn cut(&mut self) -> Lost {
        let mut lost = Lost::default();
        for node in &mut self.nodes {
            match &mut node.body {
                Body::File { data, synced, dirty } => {
                    if !dirty.is_empty() || data.len() != synced.len() {
                        lost.files += 1;
                        data.clone_from(synced);
                        dirty.clear();
                    }
                }
                Body::Dir { entries, synced } => {
                    if entries != synced {
                        lost.dirs += 1;
                        entries.clone_from(synced);
                    }
                }
            }
        }
        lost
    }
}

impl Node {
    fn new(body: Body, mode: u32, uid: u32, gid: u32, name: OsString, parent: u64) -> Node {
        Node {
            body,
            mode: mode & 0o7777,
            uid,
            gid,
            name,
            parent,
        }
    }

    fn dir(mode: u32, uid: u32, gid: u32, name: OsString, parent: u64) -> Node {
        let body = Body::Dir {
            entries: BTreeMap::new(),
            synced: BTreeMap::new(),
        };
        Node::new(body, mode, uid, gid, name, parent)
    }

    fn file(mode: u32, uid: u32, gid: u32, name: OsString, parent: u64) -> Node {
        let body = Body::File {
            data: Vec::new(),
            synced: Vec::new(),
            dirty: Vec::new(),
        };
        Node::new(body, mode, uid, gid, name, parent)
    }

    /// The size `stat` reports.
    pub fn size(&self) -> u64 {
        match &self.body {
            Body::File { data, .. } => data.len() as u64,
            Body::Dir { entries, .. } => entries.len() as u64,
        }
    }
}

/// Records `start..end` as written since the last sync.
fn mark(dirty: &mut Vec<(usize, usize)>, start: usize, end: usize) {
    if let Some(last) = dirty.last_mut()
        && start <= last.1
        && end >= last.0
    {
        *last = (last.0.min(start), last.1.max(end));
        return;
    }
    dirty.push((start, end));
    if dirty.len() > MAX_RANGES {
        let low = dirty.iter().map(|r| r.0).min().unwrap_or(0);
        let high = dirty.iter().map(|r| r.1).max().unwrap_or(0);
        *dirty = vec![(low, high)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn a_cut_keeps_synced_contents_and_entries_only() {
        let mut tree = Tree::new(0, 0);
        let file = tree.make(ROOT, name("journal"), false, 0o600, 0, 0).unwrap();
        tree.write(file, 0, b"acked").unwrap();
        tree.sync(file).unwrap();
        // The file's own sync does not make its name durable.
        assert_eq!(tree.cut(), Lost { files: 0, dirs: 1 });
        assert!(tree.lookup(ROOT, name("journal")).is_err());

        let file = tree.make(ROOT, name("journal"), false, 0o600, 0, 0).unwrap();
        tree.write(file, 0, b"acked").unwrap();
        tree.sync(file).unwrap();
        tree.sync(ROOT).unwrap();
        tree.write(file, 5, b" and lost").unwrap();
        tree.write(file, 0, b"ACK").unwrap();
        assert_eq!(tree.cut(), Lost { files: 1, dirs: 0 });
        assert_eq!(tree.read(file, 0, 100).unwrap(), b"acked");
    }

    #[test]
    fn renames_and_removals_are_undone_until_the_directory_is_synced() {
        let mut tree = Tree::new(0, 0);
        let old = tree.make(ROOT, name("snap.1"), false, 0o644, 0, 0).unwrap();
        tree.sync(ROOT).unwrap();
        let new = tree.make(ROOT, name("snap.2.generating"), false, 0o644, 0, 0).unwrap();
        tree.write(new, 0, b"snapshot").unwrap();
        tree.sync(new).unwrap();
        tree.rename(ROOT, name("snap.2.generating"), ROOT, name("snap.2"), false)
            .unwrap();
        tree.remove(ROOT, name("snap.1"), false).unwrap();
        assert_eq!(tree.node(new).unwrap().name, "snap.2");
        tree.cut();
        let names: Vec<_> = tree.entries(ROOT).unwrap().keys().cloned().collect();
        assert_eq!(names, [OsString::from("snap.1")]);
        assert_eq!(tree.lookup(ROOT, name("snap.1")), Ok(old));
    }

    #[test]
    fn truncation_and_many_scattered_writes_sync_whole() {
        let mut tree = Tree::new(0, 0);
        let file = tree.make(ROOT, name("db"), false, 0o644, 0, 0).unwrap();
        for i in 0..1000u64 {
            tree.write(file, i * 10, &[i as u8]).unwrap();
        }
        tree.sync(file).unwrap();
        tree.truncate(file, 5).unwrap();
        tree.cut();
        let data = tree.read(file, 0, 20_000).unwrap();
        assert_eq!(data.len(), 9991);
        assert_eq!(data[9990], (999u64 as u8));
        assert_eq!(data[10], 1);
    }

    #[test]
    fn directories_refuse_what_posix_refuses() {
        let mut tree = Tree::new(0, 0);
        let dir = tree.make(ROOT, name("sled"), true, 0o700, 0, 0).unwrap();
        tree.make(dir, name("db"), false, 0o644, 0, 0).unwrap();
        assert_eq!(tree.remove(ROOT, name("sled"), true), Err(libc::ENOTEMPTY));
        assert_eq!(tree.remove(ROOT, name("sled"), false), Err(libc::EISDIR));
        assert_eq!(tree.make(dir, name("db"), false, 0o644, 0, 0), Err(libc::EEXIST));
        tree.make(ROOT, name("x"), false, 0o644, 0, 0).unwrap();
        assert_eq!(
            tree.rename(ROOT, name("x"), ROOT, name("sled"), false),
            Err(libc::EISDIR)
        );
        assert_eq!(tree.rename(ROOT, name("x"), dir, name("db"), true), Err(libc::EEXIST));
        tree.rename(ROOT, name("x"), dir, name("db"), false).unwrap();
        assert!(tree.lookup(ROOT, name("x")).is_err());
    }
}
