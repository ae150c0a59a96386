//! The FUSE adapter: each kernel request becomes one operation on the
//! [`Tree`], and a write, rename or unlink matching the armed [`Trap`] is
//! held until the test releases it.
//!
//! Entries and attributes are never cached by the kernel (a zero TTL), and
//! every file is opened with direct I/O, so that after a cut the kernel holds
//! nothing the tree no longer has.

use std::ffi::OsStr;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::model::{Body, Node, Tree};

const TTL: Duration = Duration::ZERO;

/// The operations a trap can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A write to a file with a matching name.
    Write,
    /// A rename whose old name matches.
    Rename,
    /// An unlink of a matching name.
    Unlink,
}

/// Which next operation to hold: `op` on a name matching `prefix*suffix`.
#[derive(Clone, Debug)]
pub struct Trap {
    /// The operation.
    pub op: Op,
    /// What the name starts with.
    pub prefix: String,
    /// What the name ends with.
    pub suffix: String,
}

impl Trap {
    fn matches(&self, op: Op, name: &OsStr) -> bool {
        let name = name.to_string_lossy();
        op == self.op
            && name.len() >= self.prefix.len() + self.suffix.len()
            && name.starts_with(&self.prefix)
            && name.ends_with(&self.suffix)
    }
}

/// The trap, and the hold it puts on one operation.
#[derive(Default)]
pub struct Stall {
    state: Mutex<StallState>,
    released: Condvar,
}

#[derive(Default)]
struct StallState {
    armed: Option<Trap>,
    holding: bool,
}

impl Stall {
    /// Arms `trap` (or disarms, for `None`) for the next matching operation.
    pub fn arm(&self, trap: Option<Trap>) {
        self.state.lock().unwrap().armed = trap;
    }

    /// Lets the held operation go on; it fails with EIO, as if the process
    /// making it had died first.
    pub fn release(&self) {
        self.state.lock().unwrap().holding = false;
        self.released.notify_all();
    }

    /// If the armed trap matches, disarms it, runs `first` (what lands
    /// before the crash), says so on standard output and waits for
    /// [`Stall::release`]. True when the operation was held.
    fn hold(&self, op: Op, name: &OsStr, first: impl FnOnce()) -> bool {
        let mut state = self.state.lock().unwrap();
        if !state.armed.as_ref().is_some_and(|t| t.matches(op, name)) {
            return false;
        }
        state.armed = None;
        state.holding = true;
        first();
        say(&format!("stalled {op:?} {}", name.to_string_lossy()));
        while state.holding {
            state = self.released.wait(state).unwrap();
        }
        true
    }
}

/// Writes one line to standard output, where the test reads it.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The file system the kernel talks to.
pub struct CutFs {
    tree: Arc<Mutex<Tree>>,
    stall: Arc<Stall>,
}

impl CutFs {
    /// A file system over `tree`, held by `stall`.
    pub fn new(tree: Arc<Mutex<Tree>>, stall: Arc<Stall>) -> CutFs {
        CutFs { tree, stall }
    }

    fn tree(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock().unwrap()
    }

    fn entry(&self, result: Result<u64, i32>, reply: ReplyEntry) {
        match result.and_then(|ino| attr(&self.tree(), ino)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }
}

fn attr(tree: &Tree, ino: u64) -> Result<FileAttr, i32> {
    Ok(to_attr(ino, tree.node(ino)?))
}

fn to_attr(ino: u64, node: &Node) -> FileAttr {
    let (kind, nlink) = match node.body {
        Body::File { .. } => (FileType::RegularFile, 1),
        Body::Dir { .. } => (FileType::Directory, 2),
    };
    let size = node.size();
    let now = SystemTime::now();
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        kind,
        perm: node.mode as u16,
        nlink,
        uid: node.uid,
        gid: node.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn answer_attr(result: Result<FileAttr, i32>, reply: ReplyAttr) {
    match result {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(e) => reply.error(Errno::from_i32(e)),
    }
}

fn done(result: Result<(), i32>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(Errno::from_i32(e)),
    }
}

impl Filesystem for CutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.tree().lookup(parent.0, name);
        self.entry(found, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        answer_attr(attr(&self.tree(), ino.0), reply);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut tree = self.tree();
        let result = size
            .map_or(Ok(()), |size| tree.truncate(ino.0, size))
            .and_then(|()| tree.set_meta(ino.0, mode, uid, gid))
            .and_then(|()| attr(&tree, ino.0));
        answer_attr(result, reply);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::from_i32(libc::EPERM));
        }
        let made = self
            .tree()
            .make(parent.0, name, false, mode & !umask, req.uid(), req.gid());
        self.entry(made, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let made = self
            .tree()
            .make(parent.0, name, true, mode & !umask, req.uid(), req.gid());
        self.entry(made, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if self.stall.hold(Op::Unlink, name, || ()) {
            return reply.error(Errno::EIO);
        }
        done(self.tree().remove(parent.0, name, false), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        done(self.tree().remove(parent.0, name, true), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::from_i32(libc::EINVAL));
        }
        if self.stall.hold(Op::Rename, name, || ()) {
            return reply.error(Errno::EIO);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        done(
            self.tree().rename(parent.0, name, newparent.0, newname, no_replace),
            reply,
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.tree().node(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut tree = self.tree();
        let made = tree
            .make(parent.0, name, false, mode & !umask, req.uid(), req.gid())
            .and_then(|ino| attr(&tree, ino));
        match made {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.tree().read(ino.0, offset, size) {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let name = match self.tree().node(ino.0) {
            Ok(node) => node.name.clone(),
            Err(e) => return reply.error(Errno::from_i32(e)),
        };
        // A held write lands in part, as a write torn by a crash does; it
        // lands before the hold, so that a cut during the hold drops it.
        let torn = || {
            let _ = self.tree().write(ino.0, offset, &data[..data.len() / 2]);
        };
        if self.stall.hold(Op::Write, &name, torn) {
            return reply.error(Errno::EIO);
        }
        match self.tree().write(ino.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(Errno::from_i32(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        done(self.tree().sync(ino.0), reply);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let tree = self.tree();
        let (parent, entries) = match (tree.node(ino.0), tree.entries(ino.0)) {
            (Ok(node), Ok(entries)) => (node.parent, entries),
            (Err(e), _) | (_, Err(e)) => return reply.error(Errno::from_i32(e)),
        };
        let dots = [(ino.0, OsStr::new(".")), (parent, OsStr::new(".."))];
        let named = entries.iter().map(|(name, &ino)| (ino, name.as_os_str()));
        for (index, (child, name)) in dots.into_iter().chain(named).enumerate().skip(offset as usize) {
            let kind = match tree.node(child).map(|n| &n.body) {
                Ok(Body::File { .. }) => FileType::RegularFile,
                _ => FileType::Directory,
            };
            if reply.add(INodeNo(child), index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        done(self.tree().sync(ino.0), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // 64 GiB, all free: the store's free-space reserve never refuses.
        let blocks = 1 << 24;
        reply.statfs(blocks, blocks, blocks, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        let mut tree = self.tree();
        let end = offset.saturating_add(length);
        let result = match tree.node(ino.0) {
            Ok(node) if node.size() < end => tree.truncate(ino.0, end),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        done(result, reply);
    }
}
