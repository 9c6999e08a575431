//! blobcache: a FUSE filesystem that mounts a blob container through a block
//! cache. This crate holds everything that touches the outside world: the
//! shell that executes the engine's effects, the storage backends, the FUSE
//! adapter, configuration and the command line.

pub mod cli;
pub mod config;
pub mod fs;
#[cfg(feature = "fuse")]
pub mod fuse;
pub mod shell;
pub mod storage;

pub use fs::{DirEntry, FileAttr, FileHandle, FileKind, FsError, FsResult, FsStats, OpenOptions};
pub use shell::{BlobFs, CacheOptions};
