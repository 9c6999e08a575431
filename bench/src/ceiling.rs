//! The FUSE ceiling: a filesystem that answers every read from one buffer in
//! memory, mounted with the same fuser settings as blobcache
//! (`mount/src/fuse.rs`), so that the time left is the kernel's and fuser's.
//! The script raises its read-ahead through the bdi knob, as blobcache does.

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    Request, Session, SessionACL,
};
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The values blobcache asks for in `init` (see `mount/src/fuse.rs`).
const MAX_WRITE: u32 = 1 << 20;
const READ_AHEAD_BYTES: u32 = 1 << 20;
const MAX_BACKGROUND: u16 = 64;
const CONGESTION_THRESHOLD: u16 = 48;
const ROOT: u64 = 1;
const FILE: u64 = 2;
const FILE_NAME: &str = "blob";
const TTL: Duration = Duration::from_secs(120);

struct Ceiling {
    data: Vec<u8>,
    started: SystemTime,
}

impl Ceiling {
    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, perm, nlink, size) = if ino == ROOT {
            (FileType::Directory, 0o755, 2, 0)
        } else {
            (FileType::RegularFile, 0o644, 1, self.data.len() as u64)
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: MAX_WRITE,
            flags: 0,
        }
    }
}

impl Filesystem for Ceiling {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(nearest) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_readahead(READ_AHEAD_BYTES) {
            let _ = config.set_max_readahead(nearest);
        }
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(CONGESTION_THRESHOLD);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == ROOT && name == FILE_NAME {
            reply.entry(&TTL, &self.attr(FILE), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            ROOT | FILE => reply.attr(&TTL, &self.attr(ino.0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No FOPEN_KEEP_CACHE, like blobcache: every open starts with an
        // empty page cache, so re-reads reach the filesystem.
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.data.len());
        let end = start.saturating_add(size as usize).min(self.data.len());
        reply.data(self.data.get(start..end).unwrap_or_default());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino.0 != ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (ROOT, FileType::Directory, "."),
            (ROOT, FileType::Directory, ".."),
            (FILE, FileType::RegularFile, FILE_NAME),
        ];
        for (index, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), index as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

pub fn run(mountpoint: &Path, size: u64) -> Result<(), String> {
    let len = usize::try_from(size).map_err(|e| e.to_string())?;
    // Bytes that are not all zeros, cheaply.
    let data: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("ceiling".to_string()),
        MountOption::Subtype("ceiling".to_string()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::RO,
    ];
    config.acl = SessionACL::Owner;
    config.n_threads = Some(blobcache::cli::FUSE_WORKER_THREADS);
    config.clone_fd = true;
    let fs = Ceiling {
        data,
        started: SystemTime::now(),
    };
    let session = Session::new(fs, mountpoint, &config).map_err(|e| format!("mount: {e}"))?;
    eprintln!("ceiling: mounted at {}", mountpoint.display());
    session.run().map_err(|e| format!("session: {e}"))
}
