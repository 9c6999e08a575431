//! The shell: owns the engine, executes its effects on the runtime, and
//! exposes the filesystem API.

use crate::fs::{DirEntry, FileAttr, FileHandle, FsError, FsResult, FsStats, OpenOptions};
use crate::storage::BlobStore;
use std::sync::Arc;
use std::time::Duration;

/// Tuning of the cache, derived from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheOptions {
    /// Size of one block in bytes (`block-size-mb`).
    pub block_size: u64,
    /// Memory budget for block buffers in bytes (`mem-size-mb`).
    pub memory_bytes: u64,
    /// Blocks read ahead of a sequential reader (`prefetch`).
    pub prefetch_blocks: u32,
    /// Storage requests in flight at once (`parallelism`).
    pub parallelism: u32,
    /// How long attributes and listings are trusted (`attribute-expiration-sec`).
    pub attribute_timeout: Duration,
    /// Time limit of one storage request before it is abandoned and retried.
    pub request_timeout: Duration,
    /// Attempts for a request that fails with a transient error.
    pub max_attempts: u32,
    /// Seed of the random numbers used for retry jitter and block id nonces.
    pub seed: u64,
}

impl Default for CacheOptions {
    fn default() -> Self {
        CacheOptions {
            block_size: 16 << 20,
            memory_bytes: 1 << 30,
            prefetch_blocks: 11,
            parallelism: 32,
            attribute_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(60),
            max_attempts: 5,
            seed: 0,
        }
    }
}

/// A mounted container.
pub struct BlobFs {
    store: Arc<dyn BlobStore>,
    options: CacheOptions,
}

fn unsupported<T>() -> FsResult<T> {
    Err(FsError::NotSupported("not built yet".into()))
}

impl BlobFs {
    pub fn new(store: Arc<dyn BlobStore>, options: CacheOptions) -> Result<BlobFs, FsError> {
        Ok(BlobFs { store, options })
    }
    pub fn options(&self) -> &CacheOptions {
        &self.options
    }
    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }
    pub async fn getattr(&self, _path: &str) -> FsResult<FileAttr> {
        unsupported()
    }
    pub async fn readdir(&self, _path: &str) -> FsResult<Vec<DirEntry>> {
        unsupported()
    }
    pub async fn open(&self, _path: &str, _options: OpenOptions) -> FsResult<FileHandle> {
        unsupported()
    }
    pub async fn create(&self, _path: &str, _exclusive: bool) -> FsResult<(FileHandle, FileAttr)> {
        unsupported()
    }
    pub async fn read(&self, _handle: FileHandle, _offset: u64, _size: u32) -> FsResult<Vec<u8>> {
        unsupported()
    }
    pub async fn write(&self, _handle: FileHandle, _offset: u64, _data: Vec<u8>) -> FsResult<u32> {
        unsupported()
    }
    pub async fn flush(&self, _handle: FileHandle) -> FsResult<()> {
        unsupported()
    }
    pub async fn fsync(&self, _handle: FileHandle) -> FsResult<()> {
        unsupported()
    }
    pub async fn release(&self, _handle: FileHandle) -> FsResult<()> {
        unsupported()
    }
    pub async fn truncate(
        &self,
        _path: &str,
        _handle: Option<FileHandle>,
        _size: u64,
    ) -> FsResult<FileAttr> {
        unsupported()
    }
    pub async fn mkdir(&self, _path: &str) -> FsResult<FileAttr> {
        unsupported()
    }
    pub async fn rmdir(&self, _path: &str) -> FsResult<()> {
        unsupported()
    }
    pub async fn unlink(&self, _path: &str) -> FsResult<()> {
        unsupported()
    }
    pub async fn rename(&self, _from: &str, _to: &str) -> FsResult<()> {
        unsupported()
    }
    pub fn statfs(&self) -> FsStats {
        FsStats {
            block_size: 4096,
            total_blocks: 1 << 40,
            free_blocks: 1 << 40,
            max_name_len: 1024,
        }
    }
    /// Flushes what is dirty, cancels the rest and stops every task.
    pub async fn shutdown(&self) -> FsResult<()> {
        unsupported()
    }
}
