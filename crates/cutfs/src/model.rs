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
//! A [`Tree::cut`] puts every file and directory back to what was synced,
//! or, in the harsher [`Cut`] modes, keeps some of what was not, as a real
//! disk may: a random subset of each file's unsynced writes, a random
//! in-order prefix of them, a prefix with the next write torn part-way, or
//! a prefix of the unsynced renames, creations and removals (which a
//! journaling file system commits in order, on a timer of its own). So each
//! file keeps its unsynced writes in order, and the tree its unsynced
//! entry changes. Modes, owners and times are kept as they are (a
//! simplification: the store under test never depends on them surviving).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};

/// The root directory's inode number, as FUSE requires.
pub const ROOT: u64 = 1;

/// A change to a file's contents not yet synced, in the order made.
#[derive(Debug, Clone)]
pub enum Unsynced {
    /// Bytes written at an offset.
    Write(usize, Vec<u8>),
    /// The size set.
    Truncate(usize),
}

/// A change to a directory's entries not yet synced: `name` in `dir` now
/// names `ino` (or nothing). The two halves of a rename share a `group`, so
/// a cut keeps both or neither.
#[derive(Debug, Clone)]
struct EntryChange {
    dir: u64,
    name: OsString,
    ino: Option<u64>,
    group: u64,
}

/// What a cut keeps of what was not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing.
    All,
    /// Each unsynced write of each file, or not, at random.
    Subset(u64),
    /// A random in-order prefix of each file's unsynced writes.
    Prefix(u64),
    /// A random prefix of each file's unsynced writes and part of the next
    /// one: a sync cut part-way, leaving a torn block.
    Torn(u64),
    /// No unsynced write, but a random in-order prefix of the unsynced
    /// renames, creations and removals.
    Metadata(u64),
}

/// What an inode is.
#[derive(Debug)]
pub enum Body {
    /// A regular file.
    File {
        /// What reads see.
        data: Vec<u8>,
        /// What survives a cut.
        synced: Vec<u8>,
        /// What was changed since the last sync, in order.
        unsynced: Vec<Unsynced>,
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
    /// Entry changes not yet made durable by their directory's sync, in the
    /// order made.
    entry_log: Vec<EntryChange>,
    next_group: u64,
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
            entry_log: Vec::new(),
            next_group: 0,
        }
    }

    /// Notes that `name` in `dir` now names `ino` (or nothing), as part of
    /// change `group`.
    fn log_entry(&mut self, dir: u64, name: &OsStr, ino: Option<u64>, group: u64) {
        self.entry_log.push(EntryChange {
            dir,
            name: name.to_owned(),
            ino,
            group,
        });
    }

    fn group(&mut self) -> u64 {
        self.next_group += 1;
        self.next_group
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
        let group = self.group();
        self.log_entry(parent, name, Some(ino), group);
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
        let group = self.group();
        self.log_entry(parent, name, None, group);
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
        let group = self.group();
        self.log_entry(from, name, None, group);
        self.log_entry(to, new_name, Some(ino), group);
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
        let Body::File { data, unsynced, .. } = &mut self.node_mut(ino)?.body else {
            return Err(libc::EISDIR);
        };
        let start = usize::try_from(offset).map_err(|_| libc::EFBIG)?;
        start.checked_add(bytes.len()).ok_or(libc::EFBIG)?;
        let change = Unsynced::Write(start, bytes.to_vec());
        change.apply(data);
        unsynced.push(change);
        Ok(())
    }

    /// Sets file `ino`'s size, as `ftruncate` does.
    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let Body::File { data, unsynced, .. } = &mut self.node_mut(ino)?.body else {
            return Err(libc::EISDIR);
        };
        let change = Unsynced::Truncate(usize::try_from(size).map_err(|_| libc::EFBIG)?);
        change.apply(data);
        unsynced.push(change);
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
            Body::File { synced, unsynced, .. } => {
                for change in unsynced.drain(..) {
                    change.apply(synced);
                }
            }
            Body::Dir { entries, synced } => {
                synced.clone_from(entries);
                self.entry_log.retain(|change| change.dir != ino);
            }
        }
        Ok(())
    }

    /// The power cut: everything not synced is lost, but what `mode` keeps.
    pub fn cut(&mut self, mode: Cut) -> Lost {
        let mut rng = match mode {
            Cut::All => Rng(1),
            Cut::Subset(seed) | Cut::Prefix(seed) | Cut::Torn(seed) | Cut::Metadata(seed) => Rng(seed | 1),
        };
        let mut lost = Lost::default();
        for node in &mut self.nodes {
            if let Body::File { data, synced, unsynced } = &mut node.body {
                if unsynced.is_empty() {
                    continue;
                }
                lost.files += 1;
                let kept = match mode {
                    Cut::Subset(_) => unsynced.iter().filter(|_| rng.next() % 2 == 0).cloned().collect(),
                    Cut::Prefix(_) => unsynced[..rng.below(unsynced.len() + 1)].to_vec(),
                    Cut::Torn(_) => {
                        let whole = rng.below(unsynced.len());
                        let mut kept = unsynced[..whole].to_vec();
                        kept.push(unsynced[whole].torn(&mut rng));
                        kept
                    }
                    Cut::All | Cut::Metadata(_) => Vec::new(),
                };
                for change in kept {
                    change.apply(synced);
                }
                data.clone_from(synced);
                unsynced.clear();
            }
        }
        // A journaling file system commits entry changes in order: a prefix
        // of them, never half a rename.
        let mut entry_log = std::mem::take(&mut self.entry_log);
        if let Cut::Metadata(_) = mode {
            let mut keep = rng.below(entry_log.len() + 1);
            while keep > 0 && keep < entry_log.len() && entry_log[keep].group == entry_log[keep - 1].group {
                keep -= 1;
            }
            entry_log.truncate(keep);
        } else {
            entry_log.clear();
        }
        for node in &mut self.nodes {
            if let Body::Dir { entries, synced } = &mut node.body
                && entries != synced
            {
                lost.dirs += 1;
                entries.clone_from(synced);
            }
        }
        for change in entry_log {
            if let Ok(Body::Dir { entries, synced }) = self.node_mut(change.dir).map(|n| &mut n.body) {
                match change.ino {
                    Some(ino) => {
                        entries.insert(change.name.clone(), ino);
                        synced.insert(change.name, ino);
                    }
                    None => {
                        entries.remove(&change.name);
                        synced.remove(&change.name);
                    }
                }
            }
        }
        lost
    }
}

impl Unsynced {
    fn apply(&self, file: &mut Vec<u8>) {
        match self {
            Unsynced::Write(start, bytes) => {
                let end = start + bytes.len();
                if file.len() < end {
                    file.resize(end, 0);
                }
                file[*start..end].copy_from_slice(bytes);
            }
            Unsynced::Truncate(size) => file.resize(*size, 0),
        }
    }

    /// This change, torn: a write that landed only its first part (at least
    /// a byte short of whole, so the block it ends in is torn), or a
    /// truncation that did not happen.
    fn torn(&self, rng: &mut Rng) -> Unsynced {
        match self {
            Unsynced::Write(start, bytes) if !bytes.is_empty() => {
                let landed = rng.below(bytes.len());
                Unsynced::Write(*start, bytes[..landed].to_vec())
            }
            _ => Unsynced::Write(0, Vec::new()),
        }
    }
}

/// A small deterministic generator, so a cut can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
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
            unsynced: Vec::new(),
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
        assert_eq!(tree.cut(Cut::All), Lost { files: 0, dirs: 1 });
        assert!(tree.lookup(ROOT, name("journal")).is_err());

        let file = tree.make(ROOT, name("journal"), false, 0o600, 0, 0).unwrap();
        tree.write(file, 0, b"acked").unwrap();
        tree.sync(file).unwrap();
        tree.sync(ROOT).unwrap();
        tree.write(file, 5, b" and lost").unwrap();
        tree.write(file, 0, b"ACK").unwrap();
        assert_eq!(tree.cut(Cut::All), Lost { files: 1, dirs: 0 });
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
        tree.cut(Cut::All);
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
        tree.cut(Cut::All);
        let data = tree.read(file, 0, 20_000).unwrap();
        assert_eq!(data.len(), 9991);
        assert_eq!(data[9990], (999u64 as u8));
        assert_eq!(data[10], 1);
    }

    #[test]
    fn the_harsher_cuts_keep_part_of_what_was_not_synced() {
        let setup = || {
            let mut tree = Tree::new(0, 0);
            let file = tree.make(ROOT, name("journal"), false, 0o600, 0, 0).unwrap();
            tree.write(file, 0, b"synced.").unwrap();
            tree.sync(file).unwrap();
            tree.sync(ROOT).unwrap();
            for (i, part) in [b"aaaa", b"bbbb", b"cccc", b"dddd"].iter().enumerate() {
                tree.write(file, 7 + 4 * i as u64, *part).unwrap();
            }
            (tree, file)
        };
        let mut seen_prefixes = std::collections::BTreeSet::new();
        let mut seen_subsets = std::collections::BTreeSet::new();
        let mut torn = false;
        for seed in 0..200 {
            let (mut tree, file) = setup();
            tree.cut(Cut::Prefix(seed));
            let kept = tree.read(file, 0, 100).unwrap().to_vec();
            // A prefix: the writes kept are the first ones, in order.
            assert!(
                b"synced.aaaabbbbccccdddd".starts_with(&kept),
                "{:?}",
                String::from_utf8_lossy(&kept)
            );
            seen_prefixes.insert(kept.len());
            let (mut tree, file) = setup();
            tree.cut(Cut::Subset(seed));
            seen_subsets.insert(tree.read(file, 0, 100).unwrap().to_vec());
            let (mut tree, file) = setup();
            tree.cut(Cut::Torn(seed));
            let kept = tree.read(file, 0, 100).unwrap().to_vec();
            assert!(b"synced.aaaabbbbccccdddd".starts_with(&kept));
            torn |= (kept.len() - 7) % 4 != 0;
        }
        assert_eq!(seen_prefixes.len(), 5, "{seen_prefixes:?}");
        // Some subsets are not prefixes: a later write kept, an earlier lost.
        assert!(seen_subsets.iter().any(|k| k.len() == 23 && &k[7..11] == b"\0\0\0\0"));
        assert!(torn, "no write was torn");
    }

    #[test]
    fn a_metadata_cut_keeps_a_prefix_of_entry_changes_and_never_half_a_rename() {
        let mut kept_rename = false;
        for seed in 0..100 {
            let mut tree = Tree::new(0, 0);
            let staging = tree.make(ROOT, name("restore"), true, 0o700, 0, 0).unwrap();
            let file = tree.make(staging, name("db"), false, 0o600, 0, 0).unwrap();
            tree.sync(ROOT).unwrap();
            tree.sync(staging).unwrap();
            tree.rename(staging, name("db"), ROOT, name("db"), false).unwrap();
            tree.make(ROOT, name("after"), false, 0o600, 0, 0).unwrap();
            tree.cut(Cut::Metadata(seed));
            let in_root = tree.lookup(ROOT, name("db")).is_ok();
            let in_staging = tree.lookup(staging, name("db")).is_ok();
            assert!(in_root != in_staging, "half a rename at seed {seed}");
            assert_eq!(
                tree.lookup(ROOT, name("db"))
                    .ok()
                    .or(tree.lookup(staging, name("db")).ok()),
                Some(file)
            );
            // In order: the later creation only with the rename before it.
            if tree.lookup(ROOT, name("after")).is_ok() {
                assert!(in_root);
            }
            kept_rename |= in_root;
        }
        assert!(kept_rename);
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
