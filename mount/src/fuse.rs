//! The FUSE adapter: translates kernel requests (fuser 0.18) into calls on
//! [`BlobFs`], owns the inode table, and mounts the filesystem.
//!
//! Each request is answered from a task on the tokio runtime (fuser replies
//! are `Send`), so a slow storage request never holds one of the fuser
//! worker threads and many requests are served at once. Paths handed to
//! [`BlobFs`] are blob-style: no leading `/`, the root is `""`.

use crate::fs::{self, FileKind, FsError, OpenOptions};
use crate::shell::BlobFs;
use fuser::{
    Config, Errno, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, MountOption,
    Notifier, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, Session, SessionACL, SessionUnmounter, TimeOrNow,
    WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Inode number of the mount's root directory.
const ROOT_INO: u64 = 1;
/// Largest write the kernel may send in one request; 1 MiB is the kernel's
/// ceiling (256 pages).
const MAX_WRITE: u32 = 1 << 20;
/// Kernel read-ahead asked for in `init` and through the bdi setting.
const READ_AHEAD_BYTES: u32 = 1 << 20;
const READ_AHEAD_KB: u32 = READ_AHEAD_BYTES >> 10;
/// Background requests (reads, writes) the kernel keeps in flight.
const MAX_BACKGROUND: u16 = 64;
const CONGESTION_THRESHOLD: u16 = 48;
/// `st_blocks` counts 512-byte units.
const STAT_BLOCK_UNIT: u64 = 512;
const MIN_BLKSIZE: u32 = 4096;
const FILE_PERM: u16 = 0o644;
const DIR_PERM: u16 = 0o755;
/// Inode counts reported by statfs; blobs have no inode limit.
const STATFS_FILES: u64 = u32::MAX as u64;
/// Marks inode numbers handed out by readdir for names the kernel has not
/// looked up, so that they never collide with table numbers.
const SYNTHETIC_INO_BIT: u64 = 1 << 63;
/// The only generation ever used: inode numbers are never reused.
const GENERATION: Generation = Generation(0);

/// How the filesystem is presented to the kernel.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    pub attribute_timeout: Duration,
    pub entry_timeout: Duration,
    /// Zero disables negative entries.
    pub negative_entry_timeout: Duration,
    pub allow_other: bool,
    pub read_only: bool,
    /// Owner reported for every file.
    pub uid: u32,
    pub gid: u32,
    /// `st_blksize` reported for every file.
    pub blksize: u32,
    /// fuser threads reading requests from `/dev/fuse`.
    pub worker_threads: usize,
}

impl FuseOptions {
    /// `st_blksize` for a cache block size: large enough that tools read in
    /// big chunks, no larger than one kernel request.
    pub fn blksize_for(block_size: u64) -> u32 {
        let capped = block_size.min(u64::from(MAX_WRITE));
        u32::try_from(capped).unwrap_or(MAX_WRITE).max(MIN_BLKSIZE)
    }
}

struct Node {
    path: String,
    lookups: u64,
}

/// Inode numbers <-> paths. A number is handed out on the first lookup of a
/// path and dropped when the kernel has forgotten every lookup; numbers are
/// never reused. An unlinked or replaced node keeps its old path until it is
/// forgotten, but no longer owns that path.
struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next: u64,
}

impl InodeTable {
    fn new() -> InodeTable {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                path: String::new(),
                lookups: 1,
            },
        );
        let mut by_path = HashMap::new();
        by_path.insert(String::new(), ROOT_INO);
        InodeTable {
            nodes,
            by_path,
            next: ROOT_INO.saturating_add(1),
        }
    }

    fn path(&self, ino: u64) -> Result<String, FsError> {
        self.nodes
            .get(&ino)
            .map(|n| n.path.clone())
            .ok_or_else(|| FsError::NotFound(format!("inode {ino}")))
    }

    fn child_path(&self, parent: u64, name: &OsStr) -> Result<String, FsError> {
        let parent_path = self.path(parent)?;
        let name = name
            .to_str()
            .ok_or_else(|| FsError::InvalidName(name.to_string_lossy().into_owned()))?;
        if name.is_empty() || name.contains('/') {
            return Err(FsError::InvalidName(name.to_string()));
        }
        Ok(join(&parent_path, name))
    }

    /// The number of `path`, counting one more kernel reference to it.
    fn remember(&mut self, path: &str) -> Result<u64, FsError> {
        if let Some(&ino) = self.by_path.get(path) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.lookups = node.lookups.saturating_add(1);
                return Ok(ino);
            }
        }
        let ino = self.next;
        self.next = ino
            .checked_add(1)
            .filter(|n| *n < SYNTHETIC_INO_BIT)
            .ok_or_else(|| FsError::Io("out of inode numbers".to_string()))?;
        self.nodes.insert(
            ino,
            Node {
                path: path.to_string(),
                lookups: 1,
            },
        );
        self.by_path.insert(path.to_string(), ino);
        Ok(ino)
    }

    fn peek(&self, path: &str) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    fn forget(&mut self, ino: u64, count: u64) {
        if ino == ROOT_INO {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(count);
        if node.lookups == 0 {
            if let Some(node) = self.nodes.remove(&ino) {
                if self.by_path.get(&node.path) == Some(&ino) {
                    self.by_path.remove(&node.path);
                }
            }
        }
    }

    /// `path` no longer exists; its node (if any) lives on until forgotten.
    fn unlinked(&mut self, path: &str) {
        self.by_path.remove(path);
    }

    /// Moves `from` and everything below it to `to`; a node that `to` named
    /// before is detached.
    fn renamed(&mut self, from: &str, to: &str) {
        self.unlinked(to);
        let below = format!("{to}/");
        let displaced: Vec<String> = self.by_path.keys().filter(|p| p.starts_with(&below)).cloned().collect();
        for p in displaced {
            self.by_path.remove(&p);
        }
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&prefix))
            .map(|(p, ino)| (p.clone(), *ino))
            .collect();
        for (old, ino) in moved {
            self.by_path.remove(&old);
            let new = match old.strip_prefix(from) {
                Some(rest) => format!("{to}{rest}"),
                None => continue,
            };
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.path.clone_from(&new);
            }
            self.by_path.insert(new, ino);
        }
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

/// A number for a name listed by readdir but not looked up yet; stable for
/// a path, and outside the range of table numbers.
fn synthetic_ino(path: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    path.hash(&mut hasher);
    hasher.finish() | SYNTHETIC_INO_BIT
}

struct DirEntryOut {
    ino: u64,
    kind: FileType,
    name: String,
}

/// An open directory: the listing taken at offset 0, served by index so that
/// offsets stay valid while the directory changes.
struct OpenDir {
    path: String,
    entries: Option<Arc<Vec<DirEntryOut>>>,
}

struct Inner {
    fs: Arc<BlobFs>,
    runtime: Handle,
    options: FuseOptions,
    inodes: Mutex<InodeTable>,
    dirs: Mutex<HashMap<u64, OpenDir>>,
    next_dir_handle: AtomicU64,
    /// The size of each file as last told to the kernel, which trusts it for
    /// the attribute timeout and stops reads there. When a file turns out to
    /// have another size in storage (another client replaced it), the
    /// kernel must be told, or a reader gets the new content cut to the old
    /// length.
    told_sizes: Mutex<HashMap<u64, u64>>,
    /// Set once the session exists; notifications need its channel.
    notifier: Arc<OnceLock<Notifier>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the whole mount down with it.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn errno(error: &FsError) -> Errno {
    match error {
        FsError::NotFound(_) | FsError::Exists(_) | FsError::NotEmpty(_) => {
            tracing::trace!(%error, "request failed");
        }
        FsError::Io(_) | FsError::TimedOut(_) | FsError::Stale(_) => {
            tracing::warn!(%error, "request failed");
        }
        _ => tracing::debug!(%error, "request failed"),
    }
    Errno::from_i32(error.errno())
}

fn handle(fh: fuser::FileHandle) -> fs::FileHandle {
    fs::FileHandle(fh.0)
}

impl Inner {
    fn attr(&self, ino: u64, attr: &fs::FileAttr) -> fuser::FileAttr {
        if attr.kind == FileKind::File && ino != 0 {
            lock(&self.told_sizes).insert(ino, attr.size);
        }
        let (kind, perm, nlink) = match attr.kind {
            FileKind::File => (FileType::RegularFile, FILE_PERM, 1),
            FileKind::Directory => (FileType::Directory, DIR_PERM, 2),
        };
        fuser::FileAttr {
            ino: INodeNo(ino),
            size: attr.size,
            blocks: attr.size.div_ceil(STAT_BLOCK_UNIT),
            atime: attr.mtime,
            mtime: attr.mtime,
            ctime: attr.mtime,
            crtime: attr.mtime,
            kind,
            perm,
            nlink,
            uid: self.options.uid,
            gid: self.options.gid,
            rdev: 0,
            blksize: self.options.blksize,
            flags: 0,
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, path: &str, attr: &fs::FileAttr) {
        match lock(&self.inodes).remember(path) {
            Ok(ino) => reply.entry_with_ttls(
                &self.options.attribute_timeout,
                &self.options.entry_timeout,
                &self.attr(ino, attr),
                GENERATION,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn negative_entry(&self, reply: ReplyEntry) {
        // Inode 0 tells the kernel to cache the absence of the name.
        let absent = fs::FileAttr {
            kind: FileKind::File,
            size: 0,
            mtime: SystemTime::UNIX_EPOCH,
        };
        reply.entry_with_ttls(
            &Duration::ZERO,
            &self.options.negative_entry_timeout,
            &self.attr(0, &absent),
            GENERATION,
        );
    }

    async fn list(&self, path: &str) -> Result<Arc<Vec<DirEntryOut>>, FsError> {
        let listing = self.fs.readdir(path).await?;
        let table = lock(&self.inodes);
        let own = table.peek(path).unwrap_or_else(|| synthetic_ino(path));
        let parent = if path.is_empty() {
            ROOT_INO
        } else {
            let parent = parent_of(path);
            table.peek(parent).unwrap_or_else(|| synthetic_ino(parent))
        };
        let mut entries = Vec::with_capacity(listing.len().saturating_add(2));
        entries.push(DirEntryOut {
            ino: own,
            kind: FileType::Directory,
            name: ".".to_string(),
        });
        entries.push(DirEntryOut {
            ino: parent,
            kind: FileType::Directory,
            name: "..".to_string(),
        });
        for entry in listing {
            let child = join(path, &entry.name);
            entries.push(DirEntryOut {
                ino: table.peek(&child).unwrap_or_else(|| synthetic_ino(&child)),
                kind: match entry.attr.kind {
                    FileKind::File => FileType::RegularFile,
                    FileKind::Directory => FileType::Directory,
                },
                name: entry.name,
            });
        }
        Ok(Arc::new(entries))
    }

    /// Tells the kernel to drop its attributes of `ino` when the open file's
    /// size differs from the one it was told. Only attributes are dropped
    /// (offset -1): that takes no page lock, so it is safe while reads of
    /// the same file are in flight.
    fn reconcile_size(&self, ino: u64, path: &str) {
        let Some(size) = self.fs.open_file_size(path) else {
            return;
        };
        let told = lock(&self.told_sizes).insert(ino, size);
        if told.is_none_or(|told| told == size) {
            return;
        }
        tracing::debug!(
            path,
            ?told,
            size,
            "size changed in storage; kernel attributes invalidated"
        );
        if let Some(notifier) = self.notifier.get() {
            if let Err(error) = notifier.inval_inode(INodeNo(ino), -1, 0) {
                tracing::debug!(path, %error, "attribute invalidation refused");
            }
        }
    }

    /// The kernel extends its size of a file on writes past the end.
    fn wrote(&self, ino: u64, offset: u64, written: u32) {
        let end = offset.saturating_add(u64::from(written));
        let mut told = lock(&self.told_sizes);
        if let Some(size) = told.get_mut(&ino) {
            *size = (*size).max(end);
        }
    }

    async fn open_existing(&self, path: &str, flags: i32) -> Result<fs::FileHandle, FsError> {
        let access = OpenFlags(flags).acc_mode();
        let options = OpenOptions {
            read: access != OpenAccMode::O_WRONLY,
            write: access != OpenAccMode::O_RDONLY,
            truncate: flags & libc::O_TRUNC != 0,
        };
        self.fs.open(path, options).await
    }
}

/// The fuser filesystem over a [`BlobFs`].
pub struct BlobFuse {
    inner: Arc<Inner>,
}

impl BlobFuse {
    pub fn new(fs: Arc<BlobFs>, runtime: Handle, options: FuseOptions, notifier: Arc<OnceLock<Notifier>>) -> BlobFuse {
        BlobFuse {
            inner: Arc::new(Inner {
                fs,
                runtime,
                options,
                inodes: Mutex::new(InodeTable::new()),
                dirs: Mutex::new(HashMap::new()),
                next_dir_handle: AtomicU64::new(1),
                told_sizes: Mutex::new(HashMap::new()),
                notifier,
            }),
        }
    }

    /// Runs `task` on the runtime; it owns the reply and answers it.
    fn spawn<F, Fut>(&self, task: F)
    where
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.inner.runtime.spawn(task(self.inner.clone()));
    }

    fn path(&self, ino: INodeNo) -> Result<String, FsError> {
        lock(&self.inner.inodes).path(ino.0)
    }

    fn child_path(&self, parent: INodeNo, name: &OsStr) -> Result<String, FsError> {
        lock(&self.inner.inodes).child_path(parent.0, name)
    }
}

impl Filesystem for BlobFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Each of these is a preference; the kernel may refuse it, and the
        // mount works either way.
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(READ_AHEAD_BYTES) {
            let _ = config.set_max_readahead(nearest);
        }
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(CONGESTION_THRESHOLD);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let path = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(&e)),
        };
        self.spawn(|inner| async move {
            match inner.fs.getattr(&path).await {
                Ok(attr) => inner.reply_entry(reply, &path, &attr),
                Err(FsError::NotFound(_)) if !inner.options.negative_entry_timeout.is_zero() => {
                    inner.negative_entry(reply)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.inner.inodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<fuser::FileHandle>, reply: ReplyAttr) {
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(&e)),
        };
        self.spawn(|inner| async move {
            match inner.fs.getattr(&path).await {
                Ok(attr) => reply.attr(&inner.options.attribute_timeout, &inner.attr(ino.0, &attr)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<fuser::FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Mode, owner and times are not stored: the change is accepted and
        // the attributes are reported as they are.
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(&e)),
        };
        self.spawn(|inner| async move {
            let result = match size {
                Some(size) => inner.fs.truncate(&path, fh.map(handle), size).await,
                None => inner.fs.getattr(&path).await,
            };
            match result {
                Ok(attr) => reply.attr(&inner.options.attribute_timeout, &inner.attr(ino.0, &attr)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mkdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        let path = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(&e)),
        };
        self.spawn(|inner| async move {
            match inner.fs.mkdir(&path).await {
                Ok(attr) => inner.reply_entry(reply, &path, &attr),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let path = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(&e)),
        };
        self.spawn(|inner| async move {
            match inner.fs.unlink(&path).await {
                Ok(()) => {
                    lock(&inner.inodes).unlinked(&path);
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let path = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(&e)),
        };
        self.spawn(|inner| async move {
            match inner.fs.rmdir(&path).await {
                Ok(()) => {
                    lock(&inner.inodes).unlinked(&path);
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
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
        let paths = self
            .child_path(parent, name)
            .and_then(|from| Ok((from, self.child_path(newparent, newname)?)));
        let (from, to) = match paths {
            Ok(p) => p,
            Err(e) => return reply.error(errno(&e)),
        };
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        if !flags.difference(RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(errno(&FsError::InvalidName(format!(
                "rename flags {flags} are not supported ({from} -> {to})"
            ))));
        }
        self.spawn(|inner| async move {
            if no_replace {
                // Not atomic with the rename; storage has no conditional rename.
                match inner.fs.getattr(&to).await {
                    Ok(_) => return reply.error(errno(&FsError::Exists(to))),
                    Err(FsError::NotFound(_)) => {}
                    Err(e) => return reply.error(errno(&e)),
                }
            }
            match inner.fs.rename(&from, &to).await {
                Ok(()) => {
                    lock(&inner.inodes).renamed(&from, &to);
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(&e)),
        };
        self.spawn(|inner| async move {
            match inner.open_existing(&path, flags.0).await {
                Ok(fh) => {
                    inner.reconcile_size(ino.0, &path);
                    reply.opened(fuser::FileHandle(fh.0), FopenFlags::empty())
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: fuser::FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(|inner| async move {
            match inner.fs.read(handle(fh), offset, size).await {
                Ok(data) => {
                    // A read may have found a newer version in storage.
                    if let Ok(path) = lock(&inner.inodes).path(ino.0) {
                        inner.reconcile_size(ino.0, &path);
                    }
                    reply.data(&data)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: fuser::FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.spawn(|inner| async move {
            match inner.fs.write(handle(fh), offset, data).await {
                Ok(written) => {
                    inner.wrote(ino.0, offset, written);
                    reply.written(written)
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: fuser::FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        self.spawn(|inner| async move {
            match inner.fs.flush(handle(fh)).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: fuser::FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(|inner| async move {
            match inner.fs.release(handle(fh)).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: fuser::FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.spawn(|inner| async move {
            match inner.fs.fsync(handle(fh)).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(&e)),
        };
        let fh = self.inner.next_dir_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.dirs).insert(fh, OpenDir { path, entries: None });
        reply.opened(fuser::FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: fuser::FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let (path, cached) = match lock(&self.inner.dirs).get(&fh.0) {
            Some(dir) => (Ok(dir.path.clone()), dir.entries.clone()),
            None => (self.path(ino), None),
        };
        let path = match path {
            Ok(p) => p,
            Err(e) => return reply.error(errno(&e)),
        };
        self.spawn(|inner| async move {
            let entries = match cached {
                Some(entries) if offset > 0 => entries,
                _ => match inner.list(&path).await {
                    Ok(entries) => {
                        if let Some(dir) = lock(&inner.dirs).get_mut(&fh.0) {
                            dir.entries = Some(entries.clone());
                        }
                        entries
                    }
                    Err(e) => return reply.error(errno(&e)),
                },
            };
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            let mut next = offset;
            for entry in entries.iter().skip(start) {
                // The offset of an entry is where the next read resumes.
                next = next.saturating_add(1);
                if reply.add(INodeNo(entry.ino), next, entry.kind, &entry.name) {
                    break;
                }
            }
            reply.ok();
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: fuser::FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        lock(&self.inner.dirs).remove(&fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let stats = self.inner.fs.statfs();
        reply.statfs(
            stats.total_blocks,
            stats.free_blocks,
            stats.free_blocks,
            STATFS_FILES,
            STATFS_FILES,
            stats.block_size,
            stats.max_name_len,
            stats.block_size,
        );
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let path = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(errno(&e)),
        };
        let exclusive = flags & libc::O_EXCL != 0;
        self.spawn(|inner| async move {
            // The kernel sends create for O_CREAT when it does not know the
            // name; an existing file must then be opened as open(2) would,
            // honouring O_TRUNC and the access mode.
            let existing = if exclusive {
                None
            } else {
                match inner.fs.getattr(&path).await {
                    Ok(attr) if attr.kind == FileKind::Directory => {
                        return reply.error(errno(&FsError::IsDirectory(path)))
                    }
                    Ok(_) => Some(()),
                    Err(FsError::NotFound(_)) => None,
                    Err(e) => return reply.error(errno(&e)),
                }
            };
            let opened = match existing {
                Some(()) => match inner.open_existing(&path, flags).await {
                    Ok(fh) => inner.fs.getattr(&path).await.map(|attr| (fh, attr)),
                    Err(e) => Err(e),
                },
                None => inner.fs.create(&path, exclusive).await,
            };
            let (fh, attr) = match opened {
                Ok(o) => o,
                Err(e) => return reply.error(errno(&e)),
            };
            let remembered = lock(&inner.inodes).remember(&path);
            let ino = match remembered {
                Ok(ino) => ino,
                Err(e) => {
                    let _ = inner.fs.release(fh).await;
                    return reply.error(errno(&e));
                }
            };
            let ttl = inner.options.attribute_timeout.min(inner.options.entry_timeout);
            reply.created(
                &ttl,
                &inner.attr(ino, &attr),
                GENERATION,
                fuser::FileHandle(fh.0),
                FopenFlags::empty(),
            );
        });
    }
}

/// A live mount: the session runs on its own thread until the filesystem is
/// unmounted.
pub struct Mounted {
    unmounter: SessionUnmounter,
    /// Resolves when the session ends (after an unmount from anywhere).
    pub ended: oneshot::Receiver<io::Result<()>>,
    thread: std::thread::JoinHandle<()>,
    pub mountpoint: PathBuf,
}

impl Mounted {
    /// Unmounts (fails with `EBUSY` while files are open).
    pub fn unmount(&mut self) -> io::Result<()> {
        self.unmounter.unmount()
    }

    /// Waits for the session thread to finish.
    pub fn join(self) {
        if self.thread.join().is_err() {
            tracing::error!("the FUSE session thread panicked");
        }
    }
}

/// Mounts `fs` at `mountpoint` and starts serving requests. Returns once the
/// kernel handshake is done, so the mount is usable.
pub fn mount(fs: Arc<BlobFs>, runtime: Handle, options: FuseOptions, mountpoint: &Path) -> io::Result<Mounted> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("blobcache".to_string()),
        MountOption::Subtype("blobcache".to_string()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        if options.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(options.worker_threads.max(1));
    config.clone_fd = true;

    let notifier = Arc::new(OnceLock::new());
    let adapter = BlobFuse::new(fs, runtime, options, notifier.clone());
    let mut session = Session::new(adapter, mountpoint, &config)?;
    let _ = notifier.set(session.notifier());
    let unmounter = session.unmount_callable();
    let (done, ended) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("fuse-session".to_string())
        .spawn(move || {
            let result = session.run();
            let _ = done.send(result);
        })?;
    let mountpoint = mountpoint.canonicalize().unwrap_or_else(|_| mountpoint.to_path_buf());
    set_read_ahead(&mountpoint);
    Ok(Mounted {
        unmounter,
        ended,
        thread,
        mountpoint,
    })
}

/// Raises the mount's read-ahead: the kernel ignores larger values asked for
/// in `init`, but honours the bdi setting, and reads of 1 MiB instead of
/// 128 KiB cut the request count by eight.
fn set_read_ahead(mountpoint: &Path) {
    let entry = match crate::cli::mountinfo::find(mountpoint) {
        Ok(Some(entry)) => entry,
        Ok(None) => {
            tracing::warn!(mountpoint = %mountpoint.display(), "mount not found in mountinfo; read-ahead left as is");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read mountinfo; read-ahead left as is");
            return;
        }
    };
    let knob = format!("/sys/class/bdi/{}/read_ahead_kb", entry.major_minor);
    match std::fs::write(&knob, format!("{READ_AHEAD_KB}\n")) {
        Ok(()) => tracing::debug!(%knob, kb = READ_AHEAD_KB, "read-ahead set"),
        Err(e) => {
            tracing::info!(%knob, error = %e, "cannot set read-ahead; keeping the kernel default")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_table_lookup_and_forget() {
        let mut t = InodeTable::new();
        let a = t.remember("a").unwrap();
        assert_eq!(t.remember("a").unwrap(), a);
        let b = t.remember("a/b").unwrap();
        assert_ne!(a, b);
        assert_eq!(t.path(b).unwrap(), "a/b");
        assert_eq!(t.child_path(a, OsStr::new("c")).unwrap(), "a/c");
        assert_eq!(t.child_path(ROOT_INO, OsStr::new("c")).unwrap(), "c");
        t.forget(a, 1);
        assert_eq!(t.path(a).unwrap(), "a");
        t.forget(a, 1);
        assert!(t.path(a).is_err());
        assert!(t.peek("a").is_none());
        // A new lookup gets a new number: numbers are never reused.
        assert_ne!(t.remember("a").unwrap(), a);
        t.forget(ROOT_INO, 100);
        assert_eq!(t.path(ROOT_INO).unwrap(), "");
    }

    #[test]
    fn inode_table_rename_moves_subtree() {
        let mut t = InodeTable::new();
        let d = t.remember("d").unwrap();
        let f = t.remember("d/f").unwrap();
        let g = t.remember("d/e/g").unwrap();
        let other = t.remember("dx").unwrap();
        let target = t.remember("n").unwrap();
        t.renamed("d", "n");
        assert_eq!(t.path(d).unwrap(), "n");
        assert_eq!(t.path(f).unwrap(), "n/f");
        assert_eq!(t.path(g).unwrap(), "n/e/g");
        assert_eq!(t.path(other).unwrap(), "dx");
        assert_eq!(t.peek("n"), Some(d));
        assert!(t.peek("d/f").is_none());
        // The replaced node lives on until forgotten, without owning "n".
        assert_eq!(t.path(target).unwrap(), "n");
        t.forget(target, 1);
        assert_eq!(t.peek("n"), Some(d));
    }

    #[test]
    fn inode_table_unlink_keeps_node_until_forget() {
        let mut t = InodeTable::new();
        let a = t.remember("a").unwrap();
        t.unlinked("a");
        assert!(t.peek("a").is_none());
        let a2 = t.remember("a").unwrap();
        assert_ne!(a, a2);
        t.forget(a, 1);
        assert_eq!(t.peek("a"), Some(a2));
    }

    #[test]
    fn bad_names() {
        let t = InodeTable::new();
        assert!(t.child_path(ROOT_INO, OsStr::new("a/b")).is_err());
        assert!(t.child_path(99, OsStr::new("a")).is_err());
        use std::os::unix::ffi::OsStrExt;
        assert!(t.child_path(ROOT_INO, OsStr::from_bytes(b"\xff")).is_err());
    }

    #[test]
    fn synthetic_inodes_do_not_collide_with_table() {
        assert!(synthetic_ino("x") >= SYNTHETIC_INO_BIT);
        assert_eq!(synthetic_ino("x"), synthetic_ino("x"));
    }

    #[test]
    fn blksize() {
        assert_eq!(FuseOptions::blksize_for(16 << 20), 1 << 20);
        assert_eq!(FuseOptions::blksize_for(256 << 10), 256 << 10);
        assert_eq!(FuseOptions::blksize_for(100), 4096);
    }
}
