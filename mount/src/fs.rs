//! The filesystem API of a mounted container: path-based async operations.
//!
//! The FUSE adapter translates kernel requests into these calls, and the
//! simulation's clients call the very same functions. Paths are blob-style:
//! no leading `/`, components separated by `/`, the root is `""`.

use std::time::SystemTime;

/// What a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Directory,
}

/// Attributes of a file or directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileAttr {
    pub kind: FileKind,
    pub size: u64,
    pub mtime: SystemTime,
}

/// One entry of a directory listing (without `.` and `..`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub attr: FileAttr,
}

/// An open file, as returned by [`crate::BlobFs::open`] and [`crate::BlobFs::create`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileHandle(pub u64);

/// How a file is opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    pub read: bool,
    pub write: bool,
    /// `O_TRUNC`: the file is emptied at open.
    pub truncate: bool,
}

/// Capacity figures for `statfs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStats {
    pub block_size: u32,
    pub total_blocks: u64,
    pub free_blocks: u64,
    pub max_name_len: u32,
}

/// Errors of filesystem operations; [`FsError::errno`] is the one place
/// where they become error numbers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    Exists(String),
    #[error("not a directory: {0}")]
    NotDirectory(String),
    #[error("is a directory: {0}")]
    IsDirectory(String),
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    #[error("invalid name: {0}")]
    InvalidName(String),
    #[error("file too large: {0}")]
    FileTooLarge(String),
    #[error("bad file handle {0}")]
    BadHandle(u64),
    #[error("permission denied by storage: {0}")]
    PermissionDenied(String),
    #[error("the blob changed in storage while open: {0}")]
    Stale(String),
    #[error("timed out: {0}")]
    TimedOut(String),
    #[error("operation not supported: {0}")]
    NotSupported(String),
    #[error("the filesystem is shutting down")]
    ShuttingDown,
    #[error("I/O error: {0}")]
    Io(String),
}

impl FsError {
    /// The errno reported to the kernel for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound(_) => libc::ENOENT,
            FsError::Exists(_) => libc::EEXIST,
            FsError::NotDirectory(_) => libc::ENOTDIR,
            FsError::IsDirectory(_) => libc::EISDIR,
            FsError::NotEmpty(_) => libc::ENOTEMPTY,
            FsError::InvalidName(_) => libc::EINVAL,
            FsError::FileTooLarge(_) => libc::EFBIG,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::PermissionDenied(_) => libc::EACCES,
            FsError::Stale(_) => libc::ESTALE,
            FsError::TimedOut(_) => libc::ETIMEDOUT,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::ShuttingDown => libc::ESHUTDOWN,
            FsError::Io(_) => libc::EIO,
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;
